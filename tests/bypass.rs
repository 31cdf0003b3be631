//! Area: bypass credentials (secret link, signed cookie, bypass header).
//!
//! Letting the team in without an IP, end to end:
//! `gatekeeper on --secret` (generated or given) and `status`, the bypass link
//! (303, signed cookie, `next` kept on site, no open redirect), the cookie and
//! the bypass header (proxied with `X-Maintenance-Mode: bypass`, stripped before
//! the app), refused tampered / expired / old-secret cookies, custom `[bypass]`
//! names, `Secure` on TLS listeners and with `redirect_http`.
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const LINK: &str = "/.gatekeeper/bypass/";
const COOKIE: &str = "gatekeeper_bypass";
const HEADER: &str = "x-gatekeeper-bypass";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The cookie value gatekeeper documents: `<expiry>.<hex HMAC-SHA256(expiry) keyed by the token>`.
fn sign(secret: &str, expiry: i64) -> String {
    format!("{expiry}.{}", mac_hex(secret, &expiry.to_string()))
}

fn mac_hex(secret: &str, msg: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `name=value; attrs` of the single Set-Cookie header.
fn set_cookie(r: &Resp) -> (String, String, String) {
    let all = r.header_all("set-cookie");
    assert_eq!(all.len(), 1, "exactly one Set-Cookie: {all:?}");
    let (pair, attrs) = all[0].split_once("; ").unwrap_or((all[0], ""));
    let (name, value) = pair.split_once('=').expect("name=value");
    (name.to_string(), value.to_string(), attrs.to_string())
}

/// Checks a fresh bypass cookie: attributes, expiry (issued between `t0` and
/// `t1` with `ttl` seconds to live), HMAC by `secret`. Returns its value.
fn check_cookie(r: &Resp, name: &str, secret: &str, ttl: u64, secure: bool, t0: f64, t1: f64) -> String {
    let (n, value, attrs) = set_cookie(r);
    assert_eq!(n, name, "cookie name");
    let want = format!(
        "Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    assert_eq!(attrs, want, "cookie attributes");
    let (exp, sig) = value.split_once('.').expect("<expiry>.<signature>");
    let exp: i64 = exp.parse().expect("numeric expiry");
    let (lo, hi) = (t0.floor() as i64 + ttl as i64, t1.floor() as i64 + ttl as i64);
    assert!((lo..=hi).contains(&exp), "expiry {exp} not in {lo}..={hi}");
    assert_eq!(sig.len(), 64, "64 hex digits");
    assert_eq!(value, sign(secret, exp), "HMAC-SHA256(expiry) keyed by the token");
    value
}

fn assert_redirect(r: &Resp, location: &str, what: &str) {
    assert_eq!(r.status, 303, "{what}: {}", r.text());
    assert_eq!(r.header_all("location"), vec![location], "{what}");
}

/// The ordinary maintenance answer: no cookie, no redirect, no bypass mark.
fn assert_page(r: &Resp, page: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {:?} {}", r.headers, r.text());
    assert!(r.header("set-cookie").is_none(), "{what}: Set-Cookie on a refusal");
    assert!(r.header("location").is_none(), "{what}: Location on a refusal");
    assert!(r.header("x-maintenance-mode").is_none(), "{what}");
    assert_eq!(r.header("content-type"), page.header("content-type"), "{what}");
    assert_eq!(r.body, page.body, "{what}: not the ordinary page");
}

/// Proxied as a bypass; returns what the upstream saw.
fn assert_bypassed(r: &Resp, what: &str) -> Echo {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(r.header("x-maintenance-mode"), Some("bypass"), "{what}");
    r.echo()
}

/// The upstream never learns of gatekeeper's credentials.
fn assert_clean(e: &Echo, cookie: &str, header: &str, token: &str, what: &str) {
    assert!(
        e.all(header).is_empty(),
        "{what}: upstream saw {header}: {:?}",
        e.headers
    );
    for c in e.all("cookie") {
        assert!(
            !c.split(';').any(|p| p.trim().starts_with(&format!("{cookie}="))),
            "{what}: upstream saw the bypass cookie: {c:?}"
        );
    }
    for (k, v) in &e.headers {
        assert!(!v.contains(token), "{what}: upstream saw the token in {k}: {v}");
    }
}

// ---------------------------------------------------------------------------
// The secret, the link, the cookie, the header
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secret_link_cookie_and_header() {
    let env = CliEnv::new(|_, _| {});
    let link_re =
        regex::Regex::new(r"(?m)^bypass link: http://<your-site>/\.gatekeeper/bypass/([0-9a-f]{32})\b").unwrap();
    let header_re = regex::Regex::new(r"(?m)^bypass header: x-gatekeeper-bypass: ([0-9a-f]{32})$").unwrap();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let out = env.on(&["--secret"]);
        let link = &link_re
            .captures(&out)
            .unwrap_or_else(|| panic!("no bypass link line:\n{out}"))[1];
        let hdr = &header_re
            .captures(&out)
            .unwrap_or_else(|| panic!("no bypass header line:\n{out}"))[1];
        assert_eq!(link, hdr, "link and header carry the same token:\n{out}");
        assert!(
            env.toggle_text().contains(&format!("secret = \"{link}\"")),
            "toggle file holds the secret:\n{}",
            env.toggle_text()
        );
        tokens.push(link.to_string());
    }
    assert_ne!(tokens[0], tokens[1], "a fresh token every time");
    let token = tokens[1].clone();

    let st = env.status(false);
    assert!(first_line(&st).starts_with("maintenance: on since"), "{st}");
    assert!(st.lines().any(|l| l == "secret: set (--show-secret prints it)"), "{st}");
    assert!(!st.contains(&token), "plain status must not print the secret:\n{st}");
    let st = env.status(true);
    assert!(st.lines().any(|l| l == format!("secret: {token}")), "{st}");

    let gk = env.start();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let page = c.get("/").await;
    assert_eq!(page.status, 503, "maintenance is on: {}", page.text());

    // The link: 303 to "/", a signed cookie for 12 h.
    let t0 = wall();
    let r = c.get(&format!("{LINK}{token}")).await;
    let t1 = wall();
    assert_redirect(&r, "/", "bypass link");
    let cookie = check_cookie(&r, COOKIE, &token, 43200, false, t0, t1);
    // The token is a credential: the access log must not carry it.
    gk.wait_for_log(r"decision=\S*bypass-link", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no access log line for the link:\n{}", gk.log()));
    assert!(!gk.log().contains(&token), "token in the log:\n{}", gk.log());

    // The cookie lets its holder in; the app keeps its own cookies and never sees ours.
    let r = c
        .get_with("/echo", &[("cookie", &format!("a=1; {COOKIE}={cookie}; b=2"))])
        .await;
    let e = assert_bypassed(&r, "cookie among others");
    assert_eq!(e.all("cookie"), vec!["a=1; b=2"], "the app's cookies are kept");
    assert_clean(&e, COOKIE, HEADER, &token, "cookie among others");

    let r = c.get_with("/echo", &[("cookie", &format!("{COOKIE}={cookie}"))]).await;
    let e = assert_bypassed(&r, "cookie alone");
    assert!(e.all("cookie").is_empty(), "nothing left to send: {:?}", e.headers);
    assert_clean(&e, COOKIE, HEADER, &token, "cookie alone");

    // Split over two Cookie headers.
    let r = c
        .get_with(
            "/echo",
            &[("cookie", "sid=xyz"), ("cookie", &format!("{COOKIE}={cookie}"))],
        )
        .await;
    let e = assert_bypassed(&r, "two Cookie headers");
    assert_eq!(e.all("cookie"), vec!["sid=xyz"]);
    assert_clean(&e, COOKIE, HEADER, &token, "two Cookie headers");

    // The header, for scripts.
    let r = c
        .get_with("/echo?x=1", &[("X-Gatekeeper-Bypass", &token), ("x-other", "kept")])
        .await;
    let e = assert_bypassed(&r, "bypass header");
    assert_eq!(e.uri, "/echo?x=1");
    assert_eq!(e.one("x-other"), Some("kept"));
    assert_clean(&e, COOKIE, HEADER, &token, "bypass header");
    let r = c.send("POST", "/echo", &[(HEADER, &token)], full("body")).await;
    let e = assert_bypassed(&r, "POST with the header");
    assert_eq!((e.method.as_str(), e.body_len), ("POST", 4));

    // Without a credential, with a wrong one: the ordinary page.
    let page = c.get("/echo").await;
    assert_eq!(page.status, 503);
    assert!(page.header("x-maintenance-mode").is_none());
    let wrong_header = [
        token[..31].to_string(),
        format!("{token}0"),
        token.to_uppercase(),
        tokens[0].clone(),
        String::new(),
    ];
    for w in &wrong_header {
        let r = c.get_with("/echo", &[(HEADER, w)]).await;
        assert_page(&r, &page, &format!("header {w:?}"));
    }
    let r = c.get_with("/echo", &[("cookie", &format!("{COOKIE}={token}"))]).await;
    assert_page(&r, &page, "the token itself as the cookie");
    let r = c.get_with("/echo", &[("cookie", &format!("other={cookie}"))]).await;
    assert_page(&r, &page, "a valid value under another cookie name");
    assert!(
        env.up.uris().iter().all(|u| u.starts_with("/echo")),
        "{:?}",
        env.up.uris()
    );

    // Wrong tokens on the link: the ordinary page, no hint that the path exists.
    let page = c.get("/").await;
    for w in [
        token[..31].to_string(),
        format!("{token}0"),
        token.to_uppercase(),
        format!("{token}/"),
        format!("{token}%00"),
        tokens[0].clone(),
        "x".to_string(),
        String::new(),
    ] {
        let r = c.get(&format!("{LINK}{w}")).await;
        assert_page(&r, &page, &format!("link with {w:?}"));
    }
    let r = c.get(&format!("{}{token}", &LINK[..LINK.len() - 1])).await;
    assert_page(&r, &page, "the link's prefix without a slash");
    assert!(
        !env.up.uris().iter().any(|u| u.starts_with("/.gatekeeper")),
        "link requests never reach the app: {:?}",
        env.up.uris()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_parameter_stays_on_site() {
    const TOKEN: &str = "team-token-4711";
    let env = CliEnv::new(|_, _| {});
    env.on(&["--secret", TOKEN]);
    let gk = env.start();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let link = format!("{LINK}{TOKEN}");

    for (query, want) in [
        ("", "/"),
        ("?other=1", "/"),
        ("?next=/admin/login", "/admin/login"),
        ("?next=/admin/login?x=1", "/admin/login?x=1"),
        ("?a=b&next=%2Fadmin%2Flogin%3Fx%3D1%26y%3D2", "/admin/login?x=1&y=2"),
        // Percent-decoded exactly once.
        ("?next=/docs/a%2520b", "/docs/a%20b"),
        ("?next=/", "/"),
    ] {
        let r = c.get(&format!("{link}{query}")).await;
        assert_redirect(&r, want, query);
        assert_eq!(set_cookie(&r).0, COOKIE, "{query}");
    }

    // Every attempt to send the visitor elsewhere ends at "/".
    for evil in [
        "//evil.example",
        "//evil.example/path",
        "https://evil.example",
        "https:/evil.example",
        "http%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2f%2fevil.example",
        "/%2Fevil.example",
        "%2F/evil.example",
        "/%5Cevil.example",
        "/%5cevil.example",
        "%5C%5Cevil.example",
        "%5Cevil.example",
        "%2F%5Cevil.example",
        "javascript:alert(1)",
        "javascript%3Aalert(1)",
        "evil.example",
        "%252F%252Fevil.example",
        "/%09/evil.example",
        "%2F%09%2Fevil.example",
        "+//evil.example",
        "/a%0d%0aSet-Cookie:%20x=1",
        "/a%0d%0aLocation:%20https://evil.example",
        "/%E2%80%AE",
        "/%FF",
        "",
    ] {
        let r = c.get(&format!("{link}?next={evil}")).await;
        assert_redirect(&r, "/", &format!("next={evil}"));
        assert_eq!(set_cookie(&r).0, COOKIE, "next={evil}");
    }

    // Raw backslashes, exactly as a browser-hostile link would carry them.
    for evil in [
        r"/\evil.example",
        r"\\evil.example",
        r"/\/evil.example",
        r"\/evil.example",
    ] {
        let req = format!("GET {link}?next={evil} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = raw_response(gk.addr, req.as_bytes()).await;
        assert_eq!(r.status, 303, "raw next={evil}: {:?} {}", r.headers, r.text());
        assert_eq!(r.all("location"), vec!["/"], "raw next={evil}");
        assert!(r.header("set-cookie").is_some(), "raw next={evil}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_forged_and_expired_cookies_are_refused() {
    const TOKEN: &str = "s3cr3t-for-cookies";
    let env = CliEnv::new(|_, c| {
        c.set("bypass.cookie_ttl", &q("1s"));
    });
    env.on(&["--secret", TOKEN]);
    let gk = env.start();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let page = c.get("/echo").await;
    assert_eq!(page.status, 503);
    let with = |v: &str| format!("{COOKIE}={v}");

    // The documented scheme: a cookie signed with the token for a future expiry is honoured…
    let exp = wall() as i64 + 3600;
    let good = sign(TOKEN, exp);
    assert_bypassed(
        &c.get_with("/echo", &[("cookie", &with(&good))]).await,
        "self-signed cookie",
    );
    let sig = good.split_once('.').unwrap().1.to_string();
    let flipped = {
        let mut s = sig.clone();
        let last = if s.ends_with('0') { "1" } else { "0" };
        s.replace_range(63..64, last);
        s
    };
    // …and any change to it is not.
    for (what, v) in [
        ("later expiry, old signature", format!("{}.{sig}", exp + 1)),
        ("far expiry, old signature", format!("{}.{sig}", exp + 86400 * 365)),
        ("leading zero in expiry", format!("0{exp}.{sig}")),
        ("plus sign in expiry", format!("+{exp}.{sig}")),
        ("one signature digit changed", format!("{exp}.{flipped}")),
        ("signature truncated", format!("{exp}.{}", &sig[..62])),
        ("signature extended", format!("{exp}.{sig}00")),
        ("signature missing", format!("{exp}.")),
        ("expiry missing", format!(".{sig}")),
        ("no dot", format!("{exp}{sig}")),
        ("signed with another key", sign("another-secret", exp)),
        ("signed with the token's prefix", sign(&TOKEN[..TOKEN.len() - 1], exp)),
        ("correctly signed, expired", sign(TOKEN, wall() as i64 - 5)),
        ("correctly signed, expired a second ago", sign(TOKEN, wall() as i64 - 1)),
        ("correctly signed, expires this second", sign(TOKEN, wall() as i64)),
        ("correctly signed, negative expiry", sign(TOKEN, -1)),
        ("empty", String::new()),
        ("junk", "x.y".to_string()),
    ] {
        let r = c.get_with("/echo", &[("cookie", &with(&v))]).await;
        assert_page(&r, &page, what);
    }

    // A link-issued cookie with a 1 s life: honoured at once, refused from its expiry on.
    // Issue it early in a second so that it has most of that second to live.
    assert!(eventually(Duration::from_secs(2), || wall().fract() < 0.2));
    let t0 = wall();
    let r = c.get(&format!("{LINK}{TOKEN}")).await;
    let t1 = wall();
    assert_redirect(&r, "/", "link");
    let cookie = check_cookie(&r, COOKIE, TOKEN, 1, false, t0, t1);
    let expiry = cookie.split_once('.').unwrap().0.parse::<i64>().unwrap() as f64;
    let hdr = [("cookie", with(&cookie))];
    let hdr: Vec<(&str, &str)> = hdr.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut probes = Vec::new();
    let refused = loop {
        let sent = wall();
        let r = c.get_with("/echo", &hdr).await;
        let recv = wall();
        if r.status == 503 {
            assert_page(&r, &page, "expired link cookie");
            break recv;
        }
        assert_bypassed(&r, "link cookie before its expiry");
        probes.push((sent, recv));
        assert!(recv < expiry + 2.0, "cookie still honoured at {recv}, expiry {expiry}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(!probes.is_empty(), "the fresh cookie was never honoured");
    assert!(refused >= expiry, "refused {:.3} s before its expiry", expiry - refused);
    assert!(
        refused < expiry + 0.5,
        "refused only {:.3} s after its expiry",
        refused - expiry
    );
    assert_page(&c.get_with("/echo", &hdr).await, &page, "expired link cookie, again");
    assert!(env.up.uris().iter().all(|u| u == "/echo"), "{:?}", env.up.uris());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secret_invalidates_old_cookies_and_tokens() {
    let env = CliEnv::new(|_, _| {});
    env.on(&["--secret", "first-token"]);
    let gk = env.start();
    let addr = gk.addr;
    let mut c = Conn::open(LOCALHOST, addr).await;
    let page = c.get("/echo").await;
    assert_eq!(page.status, 503);
    let t0 = wall();
    let r = c.get(&format!("{LINK}first-token")).await;
    let c1 = check_cookie(&r, COOKIE, "first-token", 43200, false, t0, wall());
    let c1h = format!("{COOKIE}={c1}");
    assert_bypassed(&c.get_with("/echo", &[("cookie", &c1h)]).await, "first cookie");

    // `gatekeeper on --secret <new>` while the daemon runs.
    let out = env.on(&["--secret", "second-token"]);
    assert!(
        out.lines()
            .any(|l| l == "bypass link: http://<your-site>/.gatekeeper/bypass/second-token"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "bypass header: x-gatekeeper-bypass: second-token"),
        "{out}"
    );
    wait_until("the new token is accepted", Duration::from_secs(5), || {
        Box::pin(async move { get(LOCALHOST, addr, "/echo", &[(HEADER, "second-token")]).await.status == 200 })
    })
    .await;
    assert_page(
        &c.get_with("/echo", &[("cookie", &c1h)]).await,
        &page,
        "cookie of the old secret",
    );
    assert_page(
        &c.get_with("/echo", &[(HEADER, "first-token")]).await,
        &page,
        "old token as header",
    );
    let home = c.get("/").await;
    assert_page(&c.get(&format!("{LINK}first-token")).await, &home, "old link");
    let t0 = wall();
    let r = c.get(&format!("{LINK}second-token?next=/back")).await;
    assert_redirect(&r, "/back", "new link");
    let c2 = check_cookie(&r, COOKIE, "second-token", 43200, false, t0, wall());
    let c2h = format!("{COOKIE}={c2}");
    assert_bypassed(&c.get_with("/echo", &[("cookie", &c2h)]).await, "new cookie");
    assert_ne!(c1, c2);

    // `gatekeeper on` without --secret removes it: no credential works any more.
    let out = env.on(&[]);
    assert!(!out.contains("bypass"), "{out}");
    assert!(!env.toggle_text().contains("secret"), "{}", env.toggle_text());
    assert!(!env.status(true).contains("secret"), "{}", env.status(true));
    wait_until(
        "the token is refused after `on` without a secret",
        Duration::from_secs(5),
        || Box::pin(async move { get(LOCALHOST, addr, "/echo", &[(HEADER, "second-token")]).await.status == 503 }),
    )
    .await;
    assert_page(
        &c.get_with("/echo", &[("cookie", &c2h)]).await,
        &page,
        "cookie, secret removed",
    );
    assert_page(
        &c.get(&format!("{LINK}second-token")).await,
        &home,
        "link, secret removed",
    );

    // Off: everything is proxied, unmarked, and the stale cookie still stays with gatekeeper.
    cli_ok(&env.cfg, &["off"]);
    wait_until("maintenance off", Duration::from_secs(5), || {
        Box::pin(async move { get(LOCALHOST, addr, "/echo", &[]).await.status == 200 })
    })
    .await;
    let r = c.get_with("/echo", &[("cookie", &format!("a=1; {c2h}"))]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-maintenance-mode").is_none(), "{:?}", r.headers);
    let e = r.echo();
    assert_eq!(e.all("cookie"), vec!["a=1"]);
    assert_clean(&e, COOKIE, HEADER, "second-token", "maintenance off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_path_cookie_name_ttl_and_header() {
    const TOKEN: &str = "custom-7f3a";
    let env = CliEnv::new(|_, c| {
        c.set("bypass.path", &q("/let-me-in"));
        c.set("bypass.cookie_name", &q("team_pass"));
        c.set("bypass.cookie_ttl", &q("90m"));
        c.set("bypass.header", &q("X-Team-Key"));
    });
    let out = env.on(&["--secret", TOKEN]);
    assert!(
        out.lines()
            .any(|l| l == format!("bypass link: http://<your-site>/let-me-in/{TOKEN}")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("bypass header: x-team-key: {TOKEN}"))),
        "{out}"
    );
    let gk = env.start();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let home = c.get("/").await;
    assert_eq!(home.status, 503);
    let page = c.get("/echo").await;

    // The default path is an ordinary path now.
    assert_page(&c.get(&format!("{LINK}{TOKEN}")).await, &home, "default link path");
    let t0 = wall();
    let r = c.get(&format!("/let-me-in/{TOKEN}?next=/dash")).await;
    assert_redirect(&r, "/dash", "custom link");
    let v = check_cookie(&r, "team_pass", TOKEN, 5400, false, t0, wall());
    assert_page(&c.get("/let-me-in/wrong").await, &home, "custom link, wrong token");

    let r = c
        .get_with("/echo", &[("cookie", &format!("team_pass={v}; theme=dark"))])
        .await;
    let e = assert_bypassed(&r, "custom cookie");
    assert_eq!(e.all("cookie"), vec!["theme=dark"]);
    assert_clean(&e, "team_pass", "x-team-key", TOKEN, "custom cookie");
    let r = c.get_with("/echo", &[("X-Team-Key", TOKEN)]).await;
    let e = assert_bypassed(&r, "custom header");
    assert_clean(&e, "team_pass", "x-team-key", TOKEN, "custom header");

    // The default names no longer count.
    assert_page(
        &c.get_with("/echo", &[("cookie", &format!("{COOKIE}={v}"))]).await,
        &page,
        "value under the default cookie name",
    );
    assert_page(&c.get_with("/echo", &[(HEADER, TOKEN)]).await, &page, "default header");
}

// ---------------------------------------------------------------------------
// TLS: the cookie is Secure there, and only there
// ---------------------------------------------------------------------------

mod tls_client {
    use super::*;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};

    pub struct Pki {
        pub roots: RootCertStore,
        pub chain: String,
        pub key: String,
    }

    /// A CA and a "localhost" leaf signed by it.
    pub fn pki() -> Pki {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "bypass test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate_for(alg).unwrap()).unwrap();
        let key = KeyPair::generate_for(alg).unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &*ca)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki {
            roots,
            chain: format!("{}{}", leaf.pem(), ca.pem()),
            key: key.serialize_pem(),
        }
    }

    /// One HTTP/1.1 GET over TLS.
    pub async fn get(addr: SocketAddr, roots: RootCertStore, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = connect_from(LOCALHOST, addr).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls))
            .await
            .expect("h1 over TLS");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tx.send_request(build_request("GET", target, headers, empty())),
        )
        .await
        .expect("response within 10 s")
        .expect("request over TLS");
        let (parts, body) = r.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_is_secure_on_tls_listeners() {
    const TOKEN: &str = "tls-token-99";
    let pki = tls_client::pki();
    let env = CliEnv::new(|fx, c| {
        let cert = fx.write("tls/fullchain.pem", &pki.chain);
        let key = fx.write("tls/privkey.pem", &pki.key);
        c.set("tls.listen", &arr(&["127.0.0.1:0"]));
        c.set("tls.cert", &q(cert.to_str().unwrap()));
        c.set("tls.key", &q(key.to_str().unwrap()));
    });
    env.on(&["--secret", TOKEN]);
    let gk = env.start();
    let https = gk.listener("https");
    let plain = gk.listener("http");

    let t0 = wall();
    let r = tls_client::get(https, pki.roots.clone(), &format!("{LINK}{TOKEN}"), &[]).await;
    assert_redirect(&r, "/", "link over TLS");
    let v = check_cookie(&r, COOKIE, TOKEN, 43200, true, t0, wall());
    let ck = format!("{COOKIE}={v}");
    let r = tls_client::get(https, pki.roots.clone(), "/echo", &[("cookie", &ck)]).await;
    let e = assert_bypassed(&r, "cookie over TLS");
    assert_clean(&e, COOKIE, HEADER, TOKEN, "cookie over TLS");
    let r = tls_client::get(https, pki.roots.clone(), "/echo", &[]).await;
    assert_eq!(r.status, 503, "no credential over TLS");

    let t0 = wall();
    let r = get(LOCALHOST, plain, &format!("{LINK}{TOKEN}"), &[]).await;
    assert_redirect(&r, "/", "link over plain HTTP");
    let v = check_cookie(&r, COOKIE, TOKEN, 43200, false, t0, wall());
    assert_bypassed(
        &get(LOCALHOST, plain, "/echo", &[("cookie", &format!("{COOKIE}={v}"))]).await,
        "plain",
    );
}

/// With `tls.redirect_http`, plain HTTP is only a way to reach https: the link
/// is redirected there too (same path and query), so the credential cookie is
/// only ever set with `Secure`, never over cleartext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_over_plain_http_follows_redirect_http() {
    const TOKEN: &str = "tls-redirect-token";
    let pki = tls_client::pki();
    let env = CliEnv::new(|fx, c| {
        let cert = fx.write("tls/fullchain.pem", &pki.chain);
        let key = fx.write("tls/privkey.pem", &pki.key);
        c.set("tls.listen", &arr(&["127.0.0.1:0"]));
        c.set("tls.cert", &q(cert.to_str().unwrap()));
        c.set("tls.key", &q(key.to_str().unwrap()));
        c.set("tls.redirect_http", "true");
    });
    env.on(&["--secret", TOKEN]);
    let gk = env.start();
    let https = gk.listener("https");
    let plain = gk.listener("http");

    let r = get(LOCALHOST, plain, "/echo", &[]).await;
    assert_eq!(r.status, 308, "redirect_http applies: {:?}", r.headers);
    let target = format!("{LINK}{TOKEN}?next=/x");
    let r = get(LOCALHOST, plain, &target, &[]).await;
    assert_eq!(
        (r.status, r.header("location")),
        (
            308,
            Some(format!("https://localhost:{}{target}", https.port()).as_str())
        ),
        "link over plain HTTP with redirect_http; Set-Cookie: {:?}",
        r.header("set-cookie")
    );
    assert!(r.header("set-cookie").is_none(), "{:?}", r.header("set-cookie"));
    let t0 = wall();
    let r = tls_client::get(https, pki.roots.clone(), &target, &[]).await;
    assert_redirect(&r, "/x", "link over TLS");
    check_cookie(&r, COOKIE, TOKEN, 43200, true, t0, wall());
}
