//! `gatekeeper explain` and `/.gatekeeper/whoami` tell what the daemon does:
//! every client-IP case of the suite (tests/client_ip.rs and the table in
//! src/client_ip.rs) is sent to a running daemon and given to `explain`, and
//! both must name the same client and the same decision.
//!
//! The unit table's peers are not loopback; here its trusted peer 10.0.0.1 is
//! 127.0.0.2, its untrusted 203.0.113.9 is 127.0.0.3, its IPv6 peer is ::1,
//! and its IPv4-mapped peers (no socket connects from one) their IPv4 forms.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

const V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// One request: its peer and its headers, in order.
type Case = (IpAddr, Vec<(&'static str, &'static str)>);

/// The unit table's header lines as one header's lines.
fn lines(peer: IpAddr, name: &'static str, values: &[&'static str]) -> Case {
    (peer, values.iter().map(|v| (name, *v)).collect())
}

const XFF: &str = "x-forwarded-for";
const FWD: &str = "forwarded";
const REAL: &str = "x-real-ip";

/// src/client_ip.rs's table, for the header it was written for.
fn unit_table(mode: &str) -> Vec<Case> {
    let (t, u) = (IP2, IP3);
    match mode {
        XFF => vec![
            lines(u, XFF, &["1.1.1.1"]),
            lines(u, XFF, &["foo"]),
            lines(t, XFF, &[]),
            lines(t, XFF, &["1.2.3.4"]),
            lines(t, XFF, &["1.2.3.4, 192.168.1.1, 10.9.9.9"]),
            lines(t, XFF, &["6.6.6.6, 1.2.3.4, 10.9.9.9"]),
            lines(t, XFF, &["foo, 1.2.3.4"]),
            lines(t, XFF, &["10.1.1.1, 192.168.0.1"]),
            lines(t, XFF, &["6.6.6.6, 1.2.3.4", "10.2.2.2", "10.3.3.3"]),
            lines(t, XFF, &["10.2.2.2", "1.2.3.4"]),
            lines(t, XFF, &["1.2.3.4:5678"]),
            lines(t, XFF, &["[2001:db8::1]:443"]),
            lines(t, XFF, &["[2001:db8::1]"]),
            lines(t, XFF, &["2001:db8::1, 2001:db8:ffff::2"]),
            lines(V6, XFF, &["1.2.3.4"]),
            lines(u, XFF, &["1.2.3.4"]),
            lines(t, XFF, &["::ffff:1.2.3.4, [::ffff:10.0.0.2]:80"]),
            lines(t, XFF, &["foo"]),
            lines(t, XFF, &["1.2.3"]),
            lines(t, XFF, &["999.1.1.1"]),
            lines(t, XFF, &["1.2.3.4:99999"]),
            lines(t, XFF, &["1.2.3.4:000080"]),
            lines(t, XFF, &["1.2.3.4:"]),
            lines(t, XFF, &["[::1"]),
            lines(t, XFF, &["[1.2.3.4]"]),
            lines(t, XFF, &["unknown"]),
            lines(t, XFF, &["1.2.3.4, bogus, 10.5.5.5"]),
            lines(t, XFF, &["1.2.3.4,,10.5.5.5,", ","]),
            lines(t, XFF, &[" \t1.2.3.4 ,\t10.5.5.5  "]),
            lines(t, XFF, &[""]),
            lines(t, XFF, &[" , ,", ""]),
        ],
        FWD => vec![
            lines(u, FWD, &["for=1.1.1.1"]),
            lines(t, FWD, &["for=1.2.3.4"]),
            lines(t, FWD, &["for=\"[2001:db8::1]:443\""]),
            lines(t, FWD, &["for=\"2001:db8::1\""]),
            lines(t, FWD, &["for=\"1.2.3.4:8080\""]),
            lines(t, FWD, &["for=\"1.2.3.4:_p1\""]),
            lines(t, FWD, &["for=unknown"]),
            lines(t, FWD, &["for=_hidden, for=10.4.4.4"]),
            lines(t, FWD, &["for=_hidden, for=1.2.3.4"]),
            lines(t, FWD, &["For=1.2.3.4;PROTO=https"]),
            lines(
                t,
                FWD,
                &["proto=https;by=\"[2001:db8::9]\";for=1.2.3.4;host=example.com"],
            ),
            lines(t, FWD, &["for=6.6.6.6, for=1.2.3.4;proto=http, for=10.7.7.7;by=_gw"]),
            lines(t, FWD, &[r#"for="1.2\.3.4";by="a\"b,c;d""#]),
            lines(t, FWD, &["for=6.6.6.6", "for=1.2.3.4", "for=10.8.8.8"]),
            lines(t, FWD, &["for=1.2.3.4, proto=https"]),
            lines(t, FWD, &["for=1.2.3.4, ;"]),
            lines(t, FWD, &[", for=1.2.3.4 ,, for=10.1.1.1 ,"]),
            lines(t, FWD, &["for=\"1.2.3.4"]),
            lines(t, FWD, &["for=[2001:db8::1]"]),
            lines(t, FWD, &["for = 1.2.3.4"]),
            lines(t, FWD, &["for=1.2.3.4;for=5.6.7.8"]),
            lines(t, FWD, &["for=\"", "for=1.2.3.4"]),
            lines(t, FWD, &[" , "]),
            lines(t, FWD, &[]),
            // xff_ignored_when_forwarded_configured
            lines(t, XFF, &["1.2.3.4"]),
        ],
        _ => vec![
            lines(t, REAL, &["1.2.3.4"]),
            lines(t, REAL, &[" [2001:db8::1]:443 "]),
            lines(t, REAL, &["10.6.6.6"]),
            lines(t, REAL, &[]),
            lines(t, REAL, &["1.2.3.4, 5.6.7.8"]),
            lines(t, REAL, &[""]),
            lines(t, REAL, &["1.2.3.4", "1.2.3.4"]),
            lines(u, REAL, &["1.2.3.4"]),
        ],
    }
}

/// src/client_ip.rs's `hop_cap`: exactly 64 trusted hops, one more, a long list.
fn hop_cap() -> Vec<(IpAddr, Vec<(&'static str, String)>)> {
    let hops = |n: usize| {
        (0..n)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect::<Vec<_>>()
    };
    let exact = hops(64).join(", ");
    vec![
        (IP2, vec![(XFF, exact.clone())]),
        (IP2, vec![(XFF, format!("10.9.9.9, {exact}"))]),
        (IP2, vec![(XFF, format!("1.2.3.4, {exact}"))]),
        (IP2, vec![(XFF, format!("{}, 1.2.3.4, 10.0.0.7", hops(500).join(",")))]),
    ]
}

/// tests/client_ip.rs's requests, by the config they were sent under.
fn suite_xff() -> Vec<Case> {
    let x = |peer, v| (peer, vec![(XFF, v)]);
    vec![
        x(IP3, "203.0.113.7"),
        x(IP3, "10.1.1.1"),
        x(IP3, "203.0.113.7, 127.0.0.2"),
        (IP3, vec![(REAL, "203.0.113.7")]),
        (IP3, vec![(FWD, "for=203.0.113.7")]),
        x(LOCALHOST, "203.0.113.7"),
        (IP2, vec![]),
        x(IP2, "203.0.113.7"),
        x(IP2, "198.51.100.1, 203.0.113.7"),
        x(IP2, "203.0.113.7, 198.51.100.1"),
        x(IP2, "203.0.113.7, 10.9.9.9"),
        x(IP2, "203.0.113.7,10.9.9.9,10.8.8.8"),
        x(IP2, "10.1.1.1, 10.2.2.2"),
        x(IP2, "10.2.2.2, 10.1.1.1"),
        x(IP2, "203.0.113.8"),
        x(IP2, "2001:db8::1"),
        x(IP2, "2001:db9::1"),
        (IP2, vec![(XFF, "203.0.113.7"), (XFF, "10.9.9.9")]),
        (IP2, vec![(XFF, "198.51.100.1"), (XFF, "203.0.113.7")]),
        (IP2, vec![(XFF, "203.0.113.7"), (XFF, "198.51.100.1")]),
        (IP2, vec![(XFF, "203.0.113.7, 10.9.9.9"), (XFF, "10.8.8.8")]),
        x(IP2, "203.0.113.7:5678"),
        x(IP2, "[2001:db8::1]:443"),
        x(IP2, "203.0.113.7:5678, 10.9.9.9:80"),
        x(IP2, "::ffff:203.0.113.7"),
        x(IP2, "203.0.113.7, ::ffff:10.9.9.9"),
        x(IP2, "::ffff:198.51.100.1"),
        x(IP2, "not-an-ip"),
        x(IP2, "203.0.113.7, garbage"),
        x(IP2, "203.0.113.7, 10.9.9.9, 999.1.1.1"),
        x(IP2, "203.0.113.7/32"),
        x(IP2, "203.0.113.7 10.9.9.9"),
        (IP2, vec![(XFF, "203.0.113.7"), (XFF, "bogus")]),
        x(IP2, "garbage, 203.0.113.7"),
        // allow_file_entries_let_clients_through
        (IP3, vec![]),
        x(IP2, "198.51.100.200"),
        x(IP2, "198.51.101.1"),
        (LOCALHOST, vec![]),
        // ipv6_peer_and_listener
        (V6, vec![]),
        x(V6, "2001:db8::7"),
        x(LOCALHOST, "2001:db8::7"),
    ]
}

fn suite_forwarded() -> Vec<Case> {
    let f = |v| (IP2, vec![(FWD, v)]);
    vec![
        f("for=203.0.113.7"),
        f("for=203.0.113.7;proto=https;by=127.0.0.2"),
        f("proto=https;For=203.0.113.7"),
        f("for=\"203.0.113.7:8080\""),
        f("for=\"[2001:db8::1]\""),
        f("for=\"[2001:db8::1]:443\""),
        f("for=198.51.100.1, for=203.0.113.7"),
        f("for=203.0.113.7, for=10.9.9.9"),
        f("for=203.0.113.7, for=198.51.100.1"),
        (IP2, vec![(FWD, "for=198.51.100.1"), (FWD, "for=203.0.113.7")]),
        (IP2, vec![(FWD, "for=203.0.113.7"), (FWD, "for=198.51.100.1")]),
        f("for=unknown"),
        f("for=_hidden"),
        f("for=\"_gazonk\""),
        f("for=203.0.113.7, for=unknown"),
        f("for=203.0.113.7, for=_proxy1"),
        f("for=\"[2001:db8::1\""),
        f("for=203.0.113.7, for=999.0.0.1"),
        (IP2, vec![(XFF, "203.0.113.7")]),
        (IP3, vec![(FWD, "for=203.0.113.7")]),
    ]
}

fn suite_single(name: &'static str) -> Vec<Case> {
    let r = |peer, v| (peer, vec![(name, v)]);
    vec![
        r(IP2, "203.0.113.7"),
        r(IP2, "::ffff:203.0.113.7"),
        r(IP2, "198.51.100.1"),
        r(IP2, "garbage"),
        r(IP2, "203.0.113.7, 10.0.0.1"),
        (IP2, vec![(XFF, "203.0.113.7")]),
        (IP2, vec![(REAL, "203.0.113.7")]),
        r(IP3, "203.0.113.7"),
    ]
}

fn suite_untrusted() -> Vec<Case> {
    vec![
        (IP2, vec![(XFF, "203.0.113.7")]),
        (IP2, vec![(FWD, "for=203.0.113.7")]),
        (IP2, vec![(REAL, "203.0.113.7")]),
        (IP3, vec![(XFF, "198.51.100.1")]),
        (LOCALHOST, vec![]),
    ]
}

/// The union of the suite's configs for one header: its trusted proxies (the
/// unit table's and tests/client_ip.rs's) and allowlists (inline and a file).
fn start(fx: &Fixture, up: &Upstream, header: Option<&str>) -> Gatekeeper {
    fx.toggle_on();
    let mut c = fx.config(&up.url());
    c.set("listen", r#"["127.0.0.1:0", "[::1]:0"]"#);
    c.set("log.format", &q("json"));
    match header {
        Some(h) => {
            let file = fx.write("allowlist", "# office\n127.0.0.3\n\n# vpn\n198.51.100.0/24\n");
            c.set("clients.allow_file", &q(file.to_str().unwrap()));
            c.set(
                "clients.allow",
                &arr(&["203.0.113.7", "2001:db8::/32", "10.1.1.1", "1.2.3.4"]),
            );
            c.set(
                "clients.trusted_proxies",
                &arr(&["127.0.0.2", "::1", "10.0.0.0/8", "192.168.0.0/16", "2001:db8:ffff::/48"]),
            );
            c.set("clients.header", &q(h));
        }
        None => {
            c.set("clients.allow", &arr(&["203.0.113.7", "127.0.0.0/31", "127.0.0.3"]));
        }
    }
    let gk = Gatekeeper::start(fx, &c);
    assert_eq!(gk.listeners.len(), 2, "{}", gk.log());
    gk
}

static N: AtomicUsize = AtomicUsize::new(0);

/// The daemon's (client, decision) for one request, from its access line.
async fn daemon(gk: &Gatekeeper, peer: IpAddr, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let addr = if peer.is_ipv6() { gk.listeners[1].0 } else { gk.addr };
    let r = get(peer, addr, path, headers).await;
    assert!(matches!(r.status, 200 | 503), "{path}: {} {}", r.status, r.text());
    let pattern = format!(r#"(?m)^.*"path":"{}".*$"#, regex::escape(path));
    let line = gk
        .wait_for_log(&pattern, std::time::Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no access line for {path}:\n{}", gk.log()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let peer_seen: SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer_seen.ip(), peer, "{line}");
    (
        v["client"].as_str().unwrap().to_string(),
        v["decision"].as_str().unwrap().to_string(),
    )
}

/// `gatekeeper explain --json` for the same request.
fn explain(gk: &Gatekeeper, peer: IpAddr, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let config = gk.config.to_str().unwrap().to_string();
    let peer = peer.to_string();
    let mut args: Vec<String> = [
        "explain",
        "-c",
        &config,
        "--peer",
        &peer,
        "--host",
        "localhost",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(headers.iter().map(|(k, v)| format!("--header={k}: {v}")));
    args.push(path.to_string());
    let o = gk_args(&args);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&o)))
}

fn gk_args(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    gk(&refs)
}

/// Sends every case both ways; returns the decisions and clients seen.
async fn compare(gk: &Gatekeeper, cases: &[(IpAddr, Vec<(&str, String)>)]) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for (peer, headers) in cases {
        let path = format!("/echo/explain-{}", N.fetch_add(1, Ordering::Relaxed));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (client, decision) = daemon(gk, *peer, &path, &headers).await;
        let e = explain(gk, *peer, &path, &headers);
        let what = format!("from {peer} with {headers:?}");
        let explained_client = e["client"].as_str().unwrap_or("unknown");
        assert_eq!(explained_client, client, "{what}: client\n{e:#}");
        assert_eq!(e["decision"]["decision"], decision, "{what}: decision\n{e:#}");
        seen.insert((client, decision));
    }
    seen
}

fn owned(cases: Vec<Case>) -> Vec<(IpAddr, Vec<(&'static str, String)>)> {
    cases
        .into_iter()
        .map(|(p, h)| (p, h.into_iter().map(|(k, v)| (k, v.to_string())).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_cases_agree() {
    let (fx, up) = (Fixture::new(), Upstream::start());
    let gk = start(&fx, &up, Some("X-Forwarded-For"));
    let mut cases = owned(unit_table(XFF));
    cases.extend(owned(suite_xff()));
    cases.extend(hop_cap());
    let seen = compare(&gk, &cases).await;
    let decisions: BTreeSet<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(decisions, BTreeSet::from(["bypass", "page"]), "{seen:?}");
    assert!(seen.iter().any(|(c, _)| c == "unknown"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_cases_agree() {
    let (fx, up) = (Fixture::new(), Upstream::start());
    let gk = start(&fx, &up, Some("Forwarded"));
    let mut cases = owned(unit_table(FWD));
    cases.extend(owned(suite_forwarded()));
    let seen = compare(&gk, &cases).await;
    assert!(seen.iter().any(|(c, d)| c == "unknown" && d == "page"), "{seen:?}");
    assert!(seen.iter().any(|(_, d)| d == "bypass"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_header_cases_agree() {
    for header in ["X-Real-IP", "CF-Connecting-IP"] {
        let (fx, up) = (Fixture::new(), Upstream::start());
        let gk = start(&fx, &up, Some(header));
        let mut cases = owned(unit_table(REAL));
        let name: &'static str = if header == "X-Real-IP" {
            REAL
        } else {
            "cf-connecting-ip"
        };
        cases.extend(owned(suite_single(name)));
        let seen = compare(&gk, &cases).await;
        assert!(seen.iter().any(|(_, d)| d == "bypass"), "{header}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trusted_proxy_cases_agree() {
    let (fx, up) = (Fixture::new(), Upstream::start());
    let gk = start(&fx, &up, None);
    let mut cases = owned(suite_untrusted());
    // The unit table, every peer untrusted now.
    cases.extend(owned(unit_table(XFF)));
    let seen = compare(&gk, &cases).await;
    assert!(
        !seen.iter().any(|(c, _)| c == "unknown"),
        "headers are never read: {seen:?}"
    );
}

/// The brief's example, as people read it.
#[test]
fn explain_prints_each_step() {
    let fx = Fixture::new();
    std::fs::write(fx.toggle(), "message = \"Upgrading\"\npaths = [\"/checkout\"]\n").unwrap();
    let mut c = fx.config("http://127.0.0.1:9");
    c.set("clients.allow", &arr(&["198.51.100.0/24"]));
    c.set("clients.trusted_proxies", &arr(&["10.0.0.0/8"]));
    let path = c.write(&fx);
    let o = gk(&[
        "explain",
        "-c",
        path.to_str().unwrap(),
        "--peer",
        "10.0.0.5",
        "--header",
        "X-Forwarded-For: 1.2.3.4, 10.0.0.9",
        "--method",
        "POST",
        "--host",
        "shop.example.com",
        "/checkout",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for want in [
        "request:     POST shop.example.com /checkout (plain HTTP)",
        "1. peer:      10.0.0.5, a trusted proxy (clients.trusted_proxies: 10.0.0.0/8): X-Forwarded-For is read",
        "2. X-Forwarded-For: 1.2.3.4, 10.0.0.9",
        "     10.0.0.9  trusted proxy (10.0.0.0/8): skipped",
        "     1.2.3.4   not a trusted proxy: the client",
        "3. client:    1.2.3.4 (the app gets X-Forwarded-For: 1.2.3.4, 10.0.0.9, 10.0.0.5)",
        "4. allowlist: 1.2.3.4 matches no entry",
        "   scope: paths /checkout; this request is inside it",
        "6. credential: none (maintenance has no bypass secret)",
        "7. decision:  page: 503 with the maintenance page",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Outside the scope, from an allowed client behind the proxy.
    let o = gk(&[
        "explain",
        "-c",
        path.to_str().unwrap(),
        "--peer",
        "10.0.0.5",
        "-H",
        "X-Forwarded-For: 198.51.100.9",
        "/",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("4. allowlist: 198.51.100.9 matches 198.51.100.0/24"),
        "{out}"
    );
    assert!(
        out.contains("7. decision:  proxy: to the app: this path or host is outside"),
        "{out}"
    );
    // Bad arguments are said, exit 1.
    let o = gk(&[
        "explain",
        "-c",
        path.to_str().unwrap(),
        "--peer",
        "10.0.0.5",
        "-H",
        "nocolon",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not 'Name: value'"),
        "{}",
        show(&o)
    );
    let o = gk(&["explain", "--help"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("gatekeeper explain --peer"),
        "{}",
        show(&o)
    );
}
