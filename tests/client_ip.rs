//! Area: client address resolution and allowlist matching.
//!
//! Client address resolution: trusted vs untrusted peers (127.0.0.2 trusted,
//! 127.0.0.3 not), X-Forwarded-For walk, Forwarded (RFC 7239), single-IP
//! headers, allowlist matching, and what the upstream is told.
mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn start(maintenance: bool, edit: impl FnOnce(&Fixture, &mut Config)) -> Env {
    Env::start(|fx, c| {
        if maintenance {
            fx.toggle_on();
        }
        edit(fx, c);
    })
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// One request from `from` with `headers` during maintenance. `want_ip`:
/// Some(ip) = must be let through (bypass) and the upstream must see
/// `X-Real-IP: ip`; None = must get the 503 page and never reach the upstream.
async fn case(env: &Env, from: std::net::IpAddr, headers: &[(&str, &str)], want_ip: Option<&str>) -> Option<Echo> {
    let n = CASE.fetch_add(1, Ordering::Relaxed);
    let path = format!("/echo/case-{n}");
    let r = get(from, env.gk.addr, &path, headers).await;
    let what = format!("from {from} with {headers:?}");
    match want_ip {
        Some(ip) => {
            assert_eq!(
                r.status,
                200,
                "{what}: should be let through; got {} {}",
                r.status,
                r.text()
            );
            assert_eq!(r.header("x-maintenance-mode"), Some("bypass"), "{what}");
            let e = r.echo();
            assert_eq!(e.uri, path);
            assert_eq!(e.one("x-real-ip"), Some(ip), "{what}: X-Real-IP toward upstream");
            Some(e)
        }
        None => {
            assert_eq!(
                r.status,
                503,
                "{what}: must get the maintenance page; got {} {}",
                r.status,
                r.text()
            );
            assert_eq!(r.header("x-maintenance-mode"), None, "{what}");
            assert!(!env.up.uris().contains(&path), "{what}: reached the upstream");
            None
        }
    }
}

fn xff_config(_: &Fixture, c: &mut Config) {
    c.set("clients.allow", &arr(&["203.0.113.7", "2001:db8::/32", "10.1.1.1"]));
    c.set("clients.trusted_proxies", &arr(&["127.0.0.2", "10.0.0.0/8"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_xff_from_untrusted_peer_is_refused() {
    let env = start(true, xff_config);
    case(&env, IP3, &[("x-forwarded-for", "203.0.113.7")], None).await;
    case(&env, IP3, &[("x-forwarded-for", "10.1.1.1")], None).await;
    case(&env, IP3, &[("x-forwarded-for", "203.0.113.7, 127.0.0.2")], None).await;
    case(&env, IP3, &[("x-real-ip", "203.0.113.7")], None).await;
    case(&env, IP3, &[("forwarded", "for=203.0.113.7")], None).await;
    case(&env, LOCALHOST, &[("x-forwarded-for", "203.0.113.7")], None).await;
    // the trusted proxy itself is not on the allowlist
    case(&env, IP2, &[], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peer_xff_walk() {
    let env = start(true, xff_config);
    // single entry
    let e = case(&env, IP2, &[("x-forwarded-for", "203.0.113.7")], Some("203.0.113.7"))
        .await
        .unwrap();
    assert_eq!(e.one("x-forwarded-for"), Some("203.0.113.7, 127.0.0.2"));
    // rightmost untrusted entry is the client
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
        Some("203.0.113.7"),
    )
    .await;
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")], None).await;
    // trusted entries are skipped
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7, 10.9.9.9")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7,10.9.9.9,10.8.8.8")],
        Some("203.0.113.7"),
    )
    .await;
    // every entry trusted: the leftmost is the client
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")],
        Some("10.1.1.1"),
    )
    .await;
    case(&env, IP2, &[("x-forwarded-for", "10.2.2.2, 10.1.1.1")], None).await;
    // exact address match only
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.8")], None).await;
    // IPv6 and CIDR
    case(&env, IP2, &[("x-forwarded-for", "2001:db8::1")], Some("2001:db8::1")).await;
    case(&env, IP2, &[("x-forwarded-for", "2001:db9::1")], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_xff_headers_are_joined_in_order() {
    let env = start(true, xff_config);
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.9.9.9")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.7")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "198.51.100.1")],
        None,
    )
    .await;
    case(
        &env,
        IP2,
        &[
            ("x-forwarded-for", "203.0.113.7, 10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
        ],
        Some("203.0.113.7"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_entries_with_ports_and_mapped_addresses() {
    let env = start(true, xff_config);
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7:5678")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "[2001:db8::1]:443")],
        Some("2001:db8::1"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7:5678, 10.9.9.9:80")],
        Some("203.0.113.7"),
    )
    .await;
    // IPv4-mapped IPv6 is the IPv4 address, for the allowlist and for trust
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "::ffff:203.0.113.7")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7, ::ffff:10.9.9.9")],
        Some("203.0.113.7"),
    )
    .await;
    case(&env, IP2, &[("x-forwarded-for", "::ffff:198.51.100.1")], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xff_makes_the_client_unknown() {
    let env = start(true, xff_config);
    case(&env, IP2, &[("x-forwarded-for", "not-an-ip")], None).await;
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7, garbage")], None).await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7, 10.9.9.9, 999.1.1.1")],
        None,
    )
    .await;
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7/32")], None).await;
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7 10.9.9.9")], None).await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "bogus")],
        None,
    )
    .await;
    // a malformed entry left of the client is never reached by the walk
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "garbage, 203.0.113.7")],
        Some("203.0.113.7"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_toward_upstream_maintenance_off() {
    let env = start(false, xff_config);
    // untrusted peer: its list is replaced by the peer alone, its X-Real-IP too
    let r = get(
        IP3,
        env.gk.addr,
        "/echo",
        &[
            ("host", "app.example:8443"),
            ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(r.header("x-maintenance-mode"), None);
    let e = r.echo();
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.3"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.3"]);
    assert_eq!(e.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(e.all("x-forwarded-host"), vec!["app.example:8443"]);

    // trusted peer: chain + peer
    let r = get(IP2, env.gk.addr, "/echo", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(r.header("x-maintenance-mode"), None);
    let e = r.echo();
    assert_eq!(e.all("x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.2"]);

    let r = get(
        IP2,
        env.gk.addr,
        "/echo",
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.9.9.9")],
    )
    .await;
    let e = r.echo();
    assert_eq!(e.all("x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["203.0.113.7, 10.9.9.9, 127.0.0.2"]);

    // no forwarding header at all
    let e = get(LOCALHOST, env.gk.addr, "/echo", &[]).await.echo();
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.1"]);
}

/// Entries left of the resolved client were claimed by the client itself
/// (untrusted): the "trusted chain" handed to the upstream starts at the
/// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_entries_left_of_the_client_are_not_forwarded() {
    let env = start(false, xff_config);
    let e = get(
        IP2,
        env.gk.addr,
        "/echo",
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.9.9.9")],
    )
    .await
    .echo();
    assert_eq!(e.all("x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["203.0.113.7, 10.9.9.9, 127.0.0.2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trusted_proxies_means_the_peer_is_the_client() {
    let env = start(true, |_, c| {
        c.set("clients.allow", &arr(&["203.0.113.7", "127.0.0.0/31", "127.0.0.3"]));
    });
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7")], None).await;
    case(&env, IP2, &[("forwarded", "for=203.0.113.7")], None).await;
    case(&env, IP2, &[("x-real-ip", "203.0.113.7")], None).await;
    let e = case(&env, IP3, &[("x-forwarded-for", "198.51.100.1")], Some("127.0.0.3"))
        .await
        .unwrap();
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.3"]);
    case(&env, LOCALHOST, &[], Some("127.0.0.1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_file_entries_let_clients_through() {
    let env = start(true, |fx, c| {
        let p = fx.write("allowlist", "# office\n127.0.0.3\n\n# vpn\n198.51.100.0/24\n");
        c.set("clients.allow_file", &q(p.to_str().unwrap()));
        c.set("clients.trusted_proxies", &arr(&["127.0.0.2"]));
    });
    case(&env, IP3, &[], Some("127.0.0.3")).await;
    case(
        &env,
        IP2,
        &[("x-forwarded-for", "198.51.100.200")],
        Some("198.51.100.200"),
    )
    .await;
    case(&env, IP2, &[("x-forwarded-for", "198.51.101.1")], None).await;
    case(&env, LOCALHOST, &[], None).await;
    let _ = &env.fx;
}

fn forwarded_config(_: &Fixture, c: &mut Config) {
    c.set("clients.allow", &arr(&["203.0.113.7", "2001:db8::/32"]));
    c.set("clients.trusted_proxies", &arr(&["127.0.0.2", "10.0.0.0/8"]));
    c.set("clients.header", &q("Forwarded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_mode() {
    let env = start(true, forwarded_config);
    let f = |v: &'static str| [("forwarded", v)];
    case(&env, IP2, &f("for=203.0.113.7"), Some("203.0.113.7")).await;
    case(
        &env,
        IP2,
        &f("for=203.0.113.7;proto=https;by=127.0.0.2"),
        Some("203.0.113.7"),
    )
    .await;
    case(&env, IP2, &f("proto=https;For=203.0.113.7"), Some("203.0.113.7")).await;
    case(&env, IP2, &f("for=\"203.0.113.7:8080\""), Some("203.0.113.7")).await;
    case(&env, IP2, &f("for=\"[2001:db8::1]\""), Some("2001:db8::1")).await;
    case(&env, IP2, &f("for=\"[2001:db8::1]:443\""), Some("2001:db8::1")).await;
    case(&env, IP2, &f("for=198.51.100.1, for=203.0.113.7"), Some("203.0.113.7")).await;
    case(&env, IP2, &f("for=203.0.113.7, for=10.9.9.9"), Some("203.0.113.7")).await;
    case(&env, IP2, &f("for=203.0.113.7, for=198.51.100.1"), None).await;
    case(
        &env,
        IP2,
        &[("forwarded", "for=198.51.100.1"), ("forwarded", "for=203.0.113.7")],
        Some("203.0.113.7"),
    )
    .await;
    case(
        &env,
        IP2,
        &[("forwarded", "for=203.0.113.7"), ("forwarded", "for=198.51.100.1")],
        None,
    )
    .await;
    // unknown and obfuscated identifiers: the client is unknown
    case(&env, IP2, &f("for=unknown"), None).await;
    case(&env, IP2, &f("for=_hidden"), None).await;
    case(&env, IP2, &f("for=\"_gazonk\""), None).await;
    case(&env, IP2, &f("for=203.0.113.7, for=unknown"), None).await;
    case(&env, IP2, &f("for=203.0.113.7, for=_proxy1"), None).await;
    // malformed
    case(&env, IP2, &f("for=\"[2001:db8::1\""), None).await;
    case(&env, IP2, &f("for=203.0.113.7, for=999.0.0.1"), None).await;
    // X-Forwarded-For is not the configured header
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7")], None).await;
    // untrusted peer
    case(&env, IP3, &f("for=203.0.113.7"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mode_headers_toward_upstream() {
    let env = start(false, forwarded_config);
    let e = get(
        IP2,
        env.gk.addr,
        "/echo",
        &[("forwarded", "for=203.0.113.7;proto=https")],
    )
    .await
    .echo();
    assert_eq!(e.all("x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.2"]);
    let e = get(IP3, env.gk.addr, "/echo", &[("forwarded", "for=203.0.113.7")])
        .await
        .echo();
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.3"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ip_header_mode() {
    let env = start(true, |_, c| {
        c.set("clients.allow", &arr(&["203.0.113.7"]));
        c.set("clients.trusted_proxies", &arr(&["127.0.0.2"]));
        c.set("clients.header", &q("X-Real-IP"));
    });
    let e = case(&env, IP2, &[("x-real-ip", "203.0.113.7")], Some("203.0.113.7"))
        .await
        .unwrap();
    assert_eq!(e.all("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.2"]);
    case(&env, IP2, &[("x-real-ip", "::ffff:203.0.113.7")], Some("203.0.113.7")).await;
    case(&env, IP2, &[("x-real-ip", "198.51.100.1")], None).await;
    case(&env, IP2, &[("x-real-ip", "garbage")], None).await;
    case(&env, IP2, &[("x-real-ip", "203.0.113.7, 10.0.0.1")], None).await;
    case(&env, IP2, &[("x-forwarded-for", "203.0.113.7")], None).await;
    case(&env, IP3, &[("x-real-ip", "203.0.113.7")], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_single_ip_header() {
    let env = start(true, |_, c| {
        c.set("clients.allow", &arr(&["203.0.113.7"]));
        c.set("clients.trusted_proxies", &arr(&["127.0.0.2"]));
        c.set("clients.header", &q("CF-Connecting-IP"));
    });
    case(&env, IP2, &[("cf-connecting-ip", "203.0.113.7")], Some("203.0.113.7")).await;
    case(&env, IP2, &[("x-real-ip", "203.0.113.7")], None).await;
    case(&env, IP3, &[("cf-connecting-ip", "203.0.113.7")], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_peer_and_listener() {
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    let env = start(true, |_, c| {
        c.set("listen", r#"["127.0.0.1:0", "[::1]:0"]"#);
        c.set("clients.allow", &arr(&["2001:db8::/32"]));
        c.set("clients.trusted_proxies", &arr(&["::1"]));
    });
    assert_eq!(env.gk.listeners.len(), 2, "{}", env.gk.log());
    let v6addr = env.gk.listeners[1].0;
    assert_eq!(v6addr.ip(), v6);
    // ::1 is a trusted proxy, not an allowed client
    let r = get(v6, v6addr, "/echo/v6-a", &[]).await;
    assert_eq!(r.status, 503);
    let r = get(v6, v6addr, "/echo/v6-b", &[("x-forwarded-for", "2001:db8::7")]).await;
    assert_eq!(r.header("x-maintenance-mode"), Some("bypass"));
    let e = r.echo();
    assert_eq!(e.all("x-real-ip"), vec!["2001:db8::7"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["2001:db8::7, ::1"]);
    // the same claim from an untrusted IPv4 peer
    let r = get(
        LOCALHOST,
        env.gk.addr,
        "/echo/v6-c",
        &[("x-forwarded-for", "2001:db8::7")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(!env.up.uris().contains(&"/echo/v6-c".to_string()));
    let _ = &env.fx;
}
