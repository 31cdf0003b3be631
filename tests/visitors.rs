//! What visitors, load balancers and front ends get from gatekeeper itself
//! (issue 23), from the real binary, each check over plain HTTP/1.1, h2c, and
//! TLS with HTTP/1.1 and HTTP/2: `/.gatekeeper/health` and `drain`/`undrain`,
//! the public `/.gatekeeper/status`, `refresh.js` and `banner.js`, the page's
//! assets under `/.gatekeeper/page/`, CORS on the maintenance answer and its
//! preflight, and the ACME challenge path during maintenance.
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const REFRESH_JS: &str = include_str!("../src/scripts/refresh.js");
const BANNER_JS: &str = include_str!("../src/scripts/banner.js");
const STYLE_CSS: &str = include_str!("../static/style.css");
const ORIGIN: &str = "https://app.example";

/// How a request reaches gatekeeper.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    H1,
    H2c,
    TlsH1,
    TlsH2,
}

const ALL: [Via; 4] = [Via::H1, Via::H2c, Via::TlsH1, Via::TlsH2];

/// gatekeeper with a plain and a TLS listener (a self-signed "localhost"
/// certificate), in front of the harness's upstream.
struct Site {
    fx: Fixture,
    up: Upstream,
    gk: Gatekeeper,
    https: SocketAddr,
    /// Offers h2 and http/1.1 (ALPN); `tls_h1` offers http/1.1 only.
    tls: Arc<ClientConfig>,
    tls_h1: Arc<ClientConfig>,
}

impl Site {
    /// `extra`: config keys (`section.name`, raw TOML) over the harness's base config.
    fn start(extra: &[(&str, &str)]) -> Site {
        let fx = Fixture::new();
        let up = Upstream::start();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = fx.write("tls/cert.pem", ck.cert.pem());
        let key = fx.write("tls/key.pem", ck.signing_key.serialize_pem());
        let mut cfg = fx.config(&up.url());
        cfg.set("tls.listen", &arr(&["127.0.0.1:0"]));
        cfg.set("tls.cert", &q(cert.to_str().unwrap()));
        cfg.set("tls.key", &q(key.to_str().unwrap()));
        cfg.set("clients.allow", &arr(&["127.0.0.2"]));
        for (k, v) in extra {
            cfg.set(k, v);
        }
        let gk = Gatekeeper::start(&fx, &cfg);
        let https = gk
            .listeners
            .iter()
            .find(|(_, kind)| kind == "https")
            .unwrap_or_else(|| panic!("no https listener: {:?}", gk.listeners))
            .0;
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ck.cert.der().to_vec())).unwrap();
        let mut tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // As browsers and curl do: offer h2 only when about to speak it (a
        // client that negotiates h2 must speak h2, RFC 7301 §3.2).
        let mut tls_h1 = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Site {
            fx,
            up,
            gk,
            https,
            tls: Arc::new(tls),
            tls_h1: Arc::new(tls_h1),
        }
    }

    /// Runs `gatekeeper <args> -c <config>`; it must succeed.
    fn cli(&self, args: &[&str]) {
        let mut all = args.to_vec();
        all.extend(["-c", self.gk.config.to_str().unwrap()]);
        let out = gk(&all);
        assert!(out.status.success(), "gatekeeper {args:?}: {}", show(&out));
    }

    /// One request on a fresh connection. A `host` header becomes the
    /// authority on HTTP/2; HTTP/1.1 gets `Host: localhost` unless given one.
    async fn send(&self, via: Via, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let req = match via {
            Via::H1 | Via::TlsH1 => build_request(method, path, headers, empty()),
            Via::H2c | Via::TlsH2 => {
                let host = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                    .map_or("localhost", |(_, v)| *v);
                let scheme = if via == Via::H2c { "http" } else { "https" };
                let mut b = http::Request::builder()
                    .method(method)
                    .uri(format!("{scheme}://{host}{path}"));
                for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("host")) {
                    b = b.header(*k, *v);
                }
                b.body(empty()).unwrap()
            }
        };
        if via == Via::H2c {
            return h2_request(self.gk.addr, req).await;
        }
        let to = if via == Via::H1 { self.gk.addr } else { self.https };
        let tcp = connect_from(LOCALHOST, to).await.expect("connect");
        let resp = if via == Via::H1 {
            let (mut tx, conn) = http1::handshake(TokioIo::new(tcp)).await.expect("h1 handshake");
            tokio::spawn(conn);
            tx.send_request(req).await
        } else {
            let name = ServerName::try_from("localhost").unwrap();
            let config = if via == Via::TlsH2 { &self.tls } else { &self.tls_h1 };
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            if via == Via::TlsH2 {
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let (mut tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
                tokio::spawn(conn);
                tx.send_request(req).await
            } else {
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                let (mut tx, conn) = http1::handshake(TokioIo::new(tls)).await.expect("h1 handshake");
                tokio::spawn(conn);
                tx.send_request(req).await
            }
        };
        let resp = resp.unwrap_or_else(|e| panic!("{via:?} {method} {path}: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("body within 10 s")
            .expect("body")
            .to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }

    async fn get(&self, via: Via, path: &str) -> Resp {
        self.send(via, "GET", path, &[]).await
    }

    /// Waits (bounded) until `path` answers `status` over plain HTTP/1.1: the
    /// daemon has seen a change made through the CLI or the toggle file.
    /// What reached the app, but the probes `until_status` sent while the
    /// daemon had not yet seen the toggle.
    fn app_saw(&self) -> Vec<String> {
        self.up.uris().into_iter().filter(|u| u != "/").collect()
    }

    async fn until_status(&self, path: &str, headers: &[(&str, &str)], status: u16) {
        let seen = eventually_async(Duration::from_secs(10), || async {
            self.send(Via::H1, "GET", path, headers).await.status == status
        })
        .await;
        assert!(seen, "{path} never answered {status}:\n{}", self.gk.log());
    }

    /// The public status for `host`, its headers checked on the way.
    async fn status(&self, via: Via, host: &str) -> serde_json::Value {
        let r = self.send(via, "GET", "/.gatekeeper/status", &[("host", host)]).await;
        assert_eq!(r.status, 200, "{via:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{via:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{via:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{via:?}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{via:?}");
        r.json()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_200_until_drained_whatever_the_maintenance() {
    let site = Site::start(&[]);
    site.fx.toggle_on();
    site.until_status("/", &[], 503).await;
    for via in ALL {
        let r = site.get(via, "/.gatekeeper/health").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{via:?}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let r = site.send(via, "HEAD", "/.gatekeeper/health", &[]).await;
        assert_eq!((r.status, r.body.len()), (200, 0), "{via:?}");
    }
    site.cli(&["drain"]);
    site.until_status("/.gatekeeper/health", &[], 503).await;
    for via in ALL {
        let r = site.get(via, "/.gatekeeper/health").await;
        assert_eq!((r.status, r.text().as_str()), (503, "draining\n"), "{via:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // Drained is the load balancer's business: visitors still get the page, not an error.
    assert_eq!(site.get(Via::H1, "/").await.status, 503);
    site.cli(&["undrain"]);
    site.until_status("/.gatekeeper/health", &[], 200).await;
    site.fx.toggle_off();
    site.until_status("/", &[], 200).await;
    for via in ALL {
        assert_eq!(site.get(via, "/.gatekeeper/health").await.status, 200, "{via:?}");
    }
    assert!(
        !site.up.uris().iter().any(|u| u.starts_with("/.gatekeeper/")),
        "never proxied: {:?}",
        site.up.uris()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_are_not_access_logged_unless_asked() {
    for (logged, extra) in [(false, vec![]), (true, vec![("log.health", "true")])] {
        let site = Site::start(&extra);
        assert_eq!(site.get(Via::H1, "/.gatekeeper/health").await.status, 200);
        // Logged after the health check's line, if that has one.
        assert_eq!(site.get(Via::H1, "/after-health").await.status, 200);
        let line = site.gk.wait_for_log("path=/after-health", Duration::from_secs(5));
        assert!(line.is_some(), "no access line:\n{}", site.gk.log());
        assert_eq!(
            site.gk.log().contains("path=/.gatekeeper/health"),
            logged,
            "log.health = {logged}:\n{}",
            site.gk.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_visitors_what_they_may_know() {
    let site = Site::start(&[("maintenance.announce", &q("1h"))]);
    for via in ALL {
        let v = site.status(via, "shop.example").await;
        let off = serde_json::json!({"maintenance": "off", "message": null, "from": null, "until": null,
            "retry_after": null, "paths": [], "announce": 3600});
        assert_eq!(v, off, "{via:?}");
    }
    site.cli(&[
        "on",
        "--message",
        "Upgrading the shop",
        "--retry-after",
        "15m",
        "--secret",
        "s3cret-token",
        "--host",
        "shop.example",
        "--path",
        "/api/",
    ]);
    site.until_status("/api/x", &[("host", "shop.example")], 503).await;
    for via in ALL {
        let v = site.status(via, "shop.example").await;
        assert_eq!(v["maintenance"], "on", "{via:?}: {v}");
        assert_eq!(v["message"], "Upgrading the shop");
        assert_eq!(v["retry_after"], 900);
        assert_eq!(v["paths"], serde_json::json!(["/api/"]));
        // SECURITY: nothing of the secret, the allowlist, the scope's hosts or the files.
        let text = v.to_string();
        for leak in [
            "s3cret",
            "127.0.0.2",
            "shop.example",
            "maintenance-mode-on",
            "gatekeeper.toml",
        ] {
            assert!(!text.contains(leak), "{via:?} leaks {leak}: {text}");
        }
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let documented = [
            "announce",
            "from",
            "maintenance",
            "message",
            "paths",
            "retry_after",
            "until",
        ];
        assert_eq!(keys, documented, "{via:?}");
        // A host outside the scope is not in maintenance, and learns nothing of it.
        let v = site.status(via, "blog.example").await;
        assert_eq!((v["maintenance"].as_str(), v["message"].as_str()), (Some("off"), None));
        assert_eq!(v["paths"], serde_json::json!([]));
        let r = site.send(via, "HEAD", "/.gatekeeper/status", &[]).await;
        assert_eq!((r.status, r.body.len()), (200, 0), "{via:?}");
    }

    // Scheduled: before `from` the app is served, and the status says when.
    let now = jiff::Timestamp::now();
    let from = (now + jiff::SignedDuration::from_mins(30))
        .round(jiff::Unit::Second)
        .unwrap();
    let until = from + jiff::SignedDuration::from_mins(30);
    let (from_s, until_s) = (from.to_string(), until.to_string());
    site.cli(&[
        "on",
        "--from",
        &from_s,
        "--until",
        &until_s,
        "--message",
        "Database upgrade",
    ]);
    site.until_status("/api/x", &[("host", "shop.example")], 200).await;
    for via in ALL {
        let v = site.status(via, "shop.example").await;
        assert_eq!(
            (v["maintenance"].as_str(), v["from"].as_str(), v["until"].as_str()),
            (Some("scheduled"), Some(from_s.as_str()), Some(until_s.as_str())),
            "{via:?}: {v}"
        );
        assert_eq!(
            (v["message"].as_str(), v["announce"].as_u64()),
            (Some("Database upgrade"), Some(3600))
        );
        assert_eq!(site.get(via, "/").await.status, 200, "{via:?}: the app before `from`");
    }

    site.cli(&["on", "--read-only"]);
    let seen = eventually_async(Duration::from_secs(10), || async {
        site.status(Via::H1, "localhost").await["maintenance"] == "read-only"
    })
    .await;
    assert!(seen, "read-only never showed:\n{}", site.gk.log());
    for via in ALL {
        assert_eq!(
            site.status(via, "localhost").await["maintenance"],
            "read-only",
            "{via:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_the_page_assets_are_served_whatever_the_scope() {
    let site = Site::start(&[]);
    assert!(BANNER_JS.len() < 4096, "banner.js is {} bytes", BANNER_JS.len());
    // Off, on for another host only, and on: the same answers.
    let states: [(&[&str], u16); 3] = [
        (&["off"], 200),
        (&["on", "--host", "elsewhere.example"], 200),
        (&["on"], 503),
    ];
    for (args, page) in states {
        site.cli(args);
        site.until_status("/", &[], page).await;
        for via in ALL {
            for (path, body) in [
                ("/.gatekeeper/refresh.js", REFRESH_JS),
                ("/.gatekeeper/banner.js", BANNER_JS),
            ] {
                let r = site.get(via, path).await;
                assert_eq!(r.status, 200, "{via:?} {path}");
                assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
                assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
                assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
                assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
                assert_eq!(r.text(), body, "{via:?} {path}");
            }
            let r = site.get(via, "/.gatekeeper/page/style.css").await;
            let css = (r.status, r.header("content-type"));
            assert_eq!(css, (200, Some("text/css; charset=utf-8")), "{via:?}");
            assert_eq!(r.text(), STYLE_CSS);
            let r = site.get(via, "/.gatekeeper/page/maintenance.svg").await;
            assert_eq!(
                (r.status, r.header("content-type")),
                (200, Some("image/svg+xml; charset=utf-8"))
            );
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
    }
    assert!(
        !site.up.uris().iter().any(|u| u.starts_with("/.gatekeeper/")),
        "never proxied: {:?}",
        site.up.uris()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_it_all_without_javascript() {
    let site = Site::start(&[]);
    site.cli(&["on", "--message", "Upgrading <the> database", "--for", "45m"]);
    site.until_status("/", &[], 503).await;
    // 45 minutes and the fraction of a second since `on`, rounded up.
    let retry = regex::Regex::new("<strong>about 4[56] minutes</strong>").unwrap();
    for via in ALL {
        let r = site.send(via, "GET", "/some/page", &[("accept", "text/html")]).await;
        assert_eq!(r.status, 503, "{via:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let html = r.text();
        // The message and the times are in the HTML; the script only adds to them.
        assert!(html.contains("Upgrading &lt;the&gt; database"), "{html}");
        assert!(retry.is_match(&html), "{html}");
        assert!(html.contains(" UTC on "), "until_human: {html}");
        assert!(html.contains("<script src=\"/.gatekeeper/refresh.js\" defer></script>"));
        assert!(html.contains("href=\"/.gatekeeper/page/style.css\""));
        assert!(html.contains("src=\"/.gatekeeper/page/maintenance.svg\""));
        // The promise of a reload is hidden unless the script runs.
        assert!(html.contains("data-gatekeeper-reloads hidden>"), "{html}");
        assert!(!html.contains("{{"), "{html}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_on_the_maintenance_answer_and_its_preflight() {
    let site = Site::start(&[]);
    site.fx.toggle_on();
    site.until_status("/", &[], 503).await;
    for via in ALL {
        for accept in ["application/json", "text/html"] {
            let r = site
                .send(via, "GET", "/api/cart", &[("origin", ORIGIN), ("accept", accept)])
                .await;
            assert_eq!(r.status, 503, "{via:?} {accept}");
            assert!(r.header("content-type").unwrap().starts_with(accept), "{via:?}");
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some(ORIGIN),
                "{via:?} {accept}"
            );
            assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
            assert!(r.header_all("vary").contains(&"Origin"), "{:?}", r.header_all("vary"));
            assert!(r.header("retry-after").is_some());
        }
        let preflight = [
            ("origin", ORIGIN),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "content-type, x-csrf-token"),
        ];
        let r = site.send(via, "OPTIONS", "/api/cart", &preflight).await;
        assert_eq!(r.status, 204, "{via:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type, x-csrf-token")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert!(r.body.is_empty());
        // Without an Origin, no CORS headers.
        let r = site.get(via, "/api/cart").await;
        assert_eq!((r.status, r.header("access-control-allow-origin")), (503, None));
    }
    assert!(site.app_saw().is_empty(), "{:?}", site.app_saw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_and_health_stay_reachable_over_plain_http() {
    // redirect_http sends everything else to https; the CA's challenge and the
    // load balancer's health check still work over plain HTTP, in maintenance.
    let site = Site::start(&[("tls.redirect_http", "true")]);
    site.fx.toggle_on();
    site.until_status("/", &[], 308).await;
    for via in ALL {
        let path = format!("/.well-known/acme-challenge/token-{via:?}");
        let r = site.get(via, &path).await;
        assert_eq!((r.status, r.text()), (200, format!("upstream:{path}")), "{via:?}");
        assert!(site.up.uris().contains(&path), "{via:?}");
        assert_eq!(site.get(via, "/.gatekeeper/health").await.status, 200, "{via:?}");
        assert_eq!(site.get(via, "/.gatekeeper/status").await.status, 200, "{via:?}");
    }
    assert_eq!(site.get(Via::TlsH1, "/").await.status, 503);

    let site = Site::start(&[("maintenance.acme", "false")]);
    site.fx.toggle_on();
    site.until_status("/", &[], 503).await;
    for via in ALL {
        let r = site.get(via, "/.well-known/acme-challenge/token").await;
        assert_eq!(r.status, 503, "{via:?}: maintenance.acme = false");
    }
    assert!(site.app_saw().is_empty(), "{:?}", site.app_saw());
}
