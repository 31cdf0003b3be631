//! Misconfiguration said out loud: the squid story (an untrusted 127.0.0.1
//! peer forwarding for everyone) is logged once per peer however many
//! requests, and counted; `check` (and the daemon at start and reload) warns
//! about allowlists that let through more than they say.
mod common;
use common::*;
use std::time::Duration;

const SQUID_LINE: &str = "peer 127.0.0.1 sends X-Forwarded-For but is not in clients.trusted_proxies: \
                          every client it forwards looks like 127.0.0.1";

/// The story: squid on the same host, nobody told gatekeeper to trust it, and
/// 127.0.0.1 on the allowlist "for local testing" — everyone gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_story_is_said_once_per_peer() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("clients.allow", &arr(&["127.0.0.1"]));
    with_admin(&mut c);
    let gk = Gatekeeper::start(&fx, &c);
    let admin = gk.admin();
    let n = 40;
    for i in 0..n {
        let client = format!("203.0.113.{i}");
        let r = get(
            LOCALHOST,
            gk.addr,
            &format!("/echo/squid-{i}"),
            &[("x-forwarded-for", &client)],
        )
        .await;
        assert_eq!(r.status, 200, "everyone behind squid gets in: {}", r.text());
        assert_eq!(r.echo().one("x-real-ip"), Some("127.0.0.1"));
    }
    // A second peer that forwards (Forwarded this time) is said too; once.
    for _ in 0..3 {
        let r = get(IP3, gk.addr, "/", &[("forwarded", "for=198.51.100.1")]).await;
        assert_eq!(r.status, 503);
    }
    // Peers that do not forward: nothing.
    let r = get(IP2, gk.addr, "/", &[]).await;
    assert_eq!(r.status, 503);
    let ip3_line = "peer 127.0.0.3 sends Forwarded but is not in clients.trusted_proxies: \
                    every client it forwards looks like 127.0.0.3";
    assert!(
        gk.wait_for_log(&regex::escape(ip3_line), Duration::from_secs(10))
            .is_some(),
        "{}",
        gk.log()
    );
    let log = gk.log();
    assert_eq!(log.matches(SQUID_LINE).count(), 1, "{log}");
    assert_eq!(log.matches(ip3_line).count(), 1, "{log}");
    assert_eq!(log.matches("sends ").count(), 2, "{log}");
    assert!(log.contains("WARN"), "a warning: {log}");
    assert_eq!(
        metric(admin, "gatekeeper_untrusted_forwarding_total").await,
        f64::from(n + 3),
        "every such request is counted"
    );
}

/// A trusted proxy forwarding, or a loopback peer sending no forwarding header: quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_and_plain_requests_are_quiet() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("clients.trusted_proxies", &arr(&["127.0.0.2"]));
    c.set("clients.header", &q("X-Real-IP"));
    with_admin(&mut c);
    let gk = Gatekeeper::start(&fx, &c);
    let admin = gk.admin();
    for _ in 0..5 {
        get(IP2, gk.addr, "/echo/a", &[("x-real-ip", "203.0.113.7")]).await;
        get(LOCALHOST, gk.addr, "/echo/b", &[("user-agent", "curl")]).await;
    }
    // The configured single-IP header counts too, from an untrusted peer.
    get(IP3, gk.addr, "/echo/c", &[("x-real-ip", "203.0.113.7")]).await;
    let line = "peer 127.0.0.3 sends x-real-ip but is not in clients.trusted_proxies";
    assert!(
        gk.wait_for_log(&regex::escape(line), Duration::from_secs(10)).is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(
        gk.log().matches("but is not in clients.trusted_proxies").count(),
        1,
        "{}",
        gk.log()
    );
    assert_eq!(metric(admin, "gatekeeper_untrusted_forwarding_total").await, 1.0);
}

/// `check`'s exit code, and its stdout then stderr (where the warnings go).
fn check(fx: &Fixture, c: &Config) -> (i32, String) {
    let path = c.write(fx);
    let o = gk(&["check", "-c", path.to_str().unwrap()]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().count(), 1, "stdout is `config OK` alone: {out}");
    (o.status.code().unwrap_or(-1), format!("{out}{err}"))
}

#[test]
fn check_warns_and_exits_0() {
    let fx = Fixture::new();
    let base = fx.config("http://127.0.0.1:9");
    let with = |allow: &[&str], trusted: &[&str]| {
        let mut c = base.clone();
        c.set("clients.allow", &arr(allow));
        c.set("clients.trusted_proxies", &arr(trusted));
        c
    };
    let (code, out) = check(&fx, &with(&["203.0.113.7", "127.0.0.1"], &[]));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "loopback alone is not a warning: {out}");

    let (code, out) = check(&fx, &with(&["10.0.0.0/8"], &["10.0.0.5"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("config OK"), "{out}");
    assert!(
        out.contains(
            "warning: the allowlist entry 10.0.0.0/8 covers trusted proxy 10.0.0.5: a request it forwards \
             without X-Forwarded-For counts as its own, so everyone behind it is allowed"
        ),
        "{out}"
    );

    let (code, out) = check(&fx, &with(&["127.0.0.1"], &["10.0.0.5"]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: the allowlist entry 127.0.0.1 covers loopback while clients.trusted_proxies is set"),
        "{out}"
    );

    let (code, out) = check(&fx, &with(&["0.0.0.0/0"], &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: the allowlist covers every IPv4 address (0.0.0.0/0)"),
        "{out}"
    );

    // Entries of the allow file count as much as inline ones.
    let mut c = with(&[], &[]);
    let file = fx.write("allowlist", "# everyone, by mistake\n::/0\n");
    c.set("clients.allow_file", &q(file.to_str().unwrap()));
    let (code, out) = check(&fx, &c);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: the allowlist covers every IPv6 address (::/0)"),
        "{out}"
    );
}

/// The same warnings are logged when the daemon starts and on every reload.
#[test]
fn warnings_are_logged_at_start_and_reload() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("clients.allow", &arr(&["0.0.0.0/0"]));
    let gk = Gatekeeper::start(&fx, &c);
    let warning = "the allowlist covers every IPv4 address (0.0.0.0/0)";
    assert_eq!(gk.log().matches(warning).count(), 1, "{}", gk.log());
    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_for_log("config reloaded", Duration::from_secs(10)).is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(gk.log().matches(warning).count(), 2, "{}", gk.log());
}
