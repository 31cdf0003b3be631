//! `GET /.gatekeeper/whoami` (`clients.whoami = true`): a visitor sees how
//! their own request is decided — and nothing of the allowlist's other
//! entries, the bypass secret or the config's paths. Off by default: then the
//! path is an ordinary one.
mod common;
use common::*;

const SECRET: &str = "s3cret-token-4711";

fn start(whoami: bool, maintenance: bool) -> (Fixture, Upstream, Gatekeeper) {
    let fx = Fixture::new();
    if maintenance {
        std::fs::write(fx.toggle(), format!("message = \"Upgrading\"\nsecret = \"{SECRET}\"\n")).unwrap();
    }
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("clients.allow", &arr(&["203.0.113.7", "198.51.100.0/24"]));
    c.set("clients.trusted_proxies", &arr(&["127.0.0.2"]));
    if whoami {
        c.set("clients.whoami", "true");
    }
    let gk = Gatekeeper::start(&fx, &c);
    (fx, up, gk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_explains_the_visitors_own_request() {
    let (fx, _up, gk) = start(true, true);
    let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")];
    let r = get(IP2, gk.addr, "/.gatekeeper/whoami", &xff).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store, private"));
    let v = r.json();
    assert_eq!(v["client"], "203.0.113.7", "{v:#}");
    assert_eq!(v["peer"]["address"], "127.0.0.2");
    assert_eq!(v["peer"]["trusted"], true);
    assert_eq!(v["peer"]["trusted_entry"], "127.0.0.2");
    let verdicts: Vec<&str> = v["forwarding"]["walk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["client", "not-reached"], "{v:#}");
    assert_eq!(v["allowlist"]["entry"], "203.0.113.7");
    assert_eq!(v["maintenance"]["state"], "on");
    assert_eq!(v["request"]["path"], "/", "explained for / by default");
    assert_eq!(v["decision"]["decision"], "bypass", "{v:#}");
    // SECURITY: the allowlist's other entries, the secret, the paths on disk.
    let body = r.text();
    assert!(!body.contains("198.51.100"), "{body}");
    assert!(!body.contains(SECRET), "{body}");
    assert!(!body.contains(fx.root().to_str().unwrap()), "{body}");
    assert!(!body.contains("gatekeeper.toml"), "{body}");

    // For another path and method, as the daemon decides them.
    let r = get(IP3, gk.addr, "/.gatekeeper/whoami?path=%2Fecho%2Fw&method=post", &[]).await;
    let v = r.json();
    assert_eq!(
        (v["request"]["method"].as_str(), v["request"]["path"].as_str()),
        (Some("POST"), Some("/echo/w"))
    );
    assert_eq!(v["client"], "127.0.0.3");
    assert_eq!(v["allowlist"]["allowed"], false);
    assert_eq!(v["decision"]["decision"], "page");
    assert_eq!(v["credential"]["bypass_enabled"], true);
    let real = request(IP3, gk.addr, "POST", "/echo/w", &[], empty()).await;
    assert_eq!(real.status, 503, "the daemon agrees");

    // The bypass header counts, as for any request.
    let r = get(IP3, gk.addr, "/.gatekeeper/whoami", &[("x-gatekeeper-bypass", SECRET)]).await;
    let v = r.json();
    assert_eq!(
        (v["credential"]["valid"].as_bool(), v["decision"]["decision"].as_str()),
        (Some(true), Some("bypass"))
    );
    assert!(!r.text().contains(SECRET), "not even the visitor's own: {}", r.text());

    // An untrusted loopback peer that forwards: told so.
    let r = get(
        LOCALHOST,
        gk.addr,
        "/.gatekeeper/whoami",
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    let v = r.json();
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["forwarding"]["read"], false);
    assert!(
        v["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("every client it forwards looks like 127.0.0.1")),
        "{v:#}"
    );
    assert!(
        gk.wait_for_log(r#"decision="whoami""#, std::time::Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_is_an_ordinary_path_by_default() {
    let (_fx, up, gk) = start(false, false);
    let r = get(IP3, gk.addr, "/.gatekeeper/whoami", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        up.uris().contains(&"/.gatekeeper/whoami".to_string()),
        "reached the app"
    );
    let (_fx, up, gk) = start(false, true);
    let r = get(IP3, gk.addr, "/.gatekeeper/whoami", &[]).await;
    assert_eq!(r.status, 503, "maintenance: the page, as for any path");
    assert!(up.uris().is_empty());
}
