//! Area: TLS listeners.
//!
//! TLS listeners end to end, with certificates made at test time (rcgen):
//! handshake, versions, ALPN, HTTP/2 over TLS in and out of maintenance,
//! X-Forwarded-Proto, certificate rotation and refused broken renewals, SNI,
//! `gatekeeper check` on bad pairs, `redirect_http`, and h2c upstreams.
mod common;
use common::*;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SignatureAlgorithm};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

const P256: &SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf: full chain PEM (leaf then CA), key PEM, leaf DER.
#[derive(Clone)]
struct Leaf {
    chain: String,
    key: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate_for(P256).unwrap()).unwrap(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    fn issue(&self, names: &[&str], alg: &'static SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &*self.issuer)
            .unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.issuer.pem()),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn try_handshake(
    from: IpAddr,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(from, addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

async fn handshake(addr: SocketAddr, ca: &Ca, sni: &str) -> TlsStream<TcpStream> {
    try_handshake(LOCALHOST, addr, client_config(ca.roots(), H2_H1, BOTH), sni)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {sni:?}: {e}"))
}

fn leaf_of(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("server certificates")[0].clone()
}

fn alpn_of(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/2 connection over an established TLS stream.
async fn h2_over(tls: TlsStream<TcpStream>) -> http2::SendRequest<Body> {
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("h2 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

/// An HTTP/1.1 connection over an established TLS stream.
async fn h1_over(tls: TlsStream<TcpStream>) -> http1::SendRequest<Body> {
    let (tx, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

async fn collect(r: http::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = r.into_parts();
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

fn h2_req(method: &str, target: &str, headers: &[(&str, &str)], body: Body) -> http::Request<Body> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{target}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

async fn h2_send(tx: &mut http2::SendRequest<Body>, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tx.send_request(h2_req(method, target, headers, empty())),
    )
    .await
    .expect("h2 response within 10 s")
    .unwrap_or_else(|e| panic!("h2 {method} {target}: {e:?}"));
    collect(r).await
}

async fn h1_send(tx: &mut http1::SendRequest<Body>, target: &str, headers: &[(&str, &str)]) -> Resp {
    tx.ready().await.expect("h1 connection ready");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tx.send_request(build_request("GET", target, headers, empty())),
    )
    .await
    .expect("h1 response within 10 s")
    .unwrap_or_else(|e| panic!("h1 GET {target}: {e:?}"));
    collect(r).await
}

// ---------------------------------------------------------------------------
// Daemon with TLS
// ---------------------------------------------------------------------------

struct Site {
    fx: Fixture,
    ca: Ca,
    leaf: Leaf,
    cert: PathBuf,
    key: PathBuf,
}

impl Site {
    /// A CA and a "localhost" leaf written as tls/fullchain.pem + tls/privkey.pem.
    fn new() -> Site {
        let fx = Fixture::new();
        let ca = Ca::new("gatekeeper test CA");
        let leaf = ca.issue(&["localhost", "127.0.0.1"], P256);
        let cert = fx.write("tls/fullchain.pem", &leaf.chain);
        let key = fx.write("tls/privkey.pem", &leaf.key);
        Site {
            fx,
            ca,
            leaf,
            cert,
            key,
        }
    }

    fn config(&self, upstream: &str) -> Config {
        let mut c = self.fx.config(upstream);
        c.set("tls.listen", &arr(&["127.0.0.1:0"]));
        c.set("tls.cert", &q(self.cert.to_str().unwrap()));
        c.set("tls.key", &q(self.key.to_str().unwrap()));
        c
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_versions_and_alpn() {
    let site = Site::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&site.fx, &site.config(&up.url()));
    let addr = gk.listener("https");
    assert_ne!(addr, gk.addr);

    // Default client: TLS 1.3, h2 chosen, full chain sent, verified for "localhost".
    let tls = handshake(addr, &site.ca, "localhost").await;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"h2"[..]));
    let chain = conn.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2, "leaf + CA, as in fullchain.pem");
    assert_eq!(chain[0], site.leaf.der);

    // Server preference: h2 even when listed last.
    let c = client_config(site.ca.roots(), &[b"http/1.1", b"h2"], BOTH);
    let tls = try_handshake(LOCALHOST, addr, c, "localhost").await.unwrap();
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"h2"[..]));

    // http/1.1 only, and no ALPN at all: HTTP/1.1 is spoken.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let c = client_config(site.ca.roots(), alpn, BOTH);
        let tls = try_handshake(LOCALHOST, addr, c, "localhost").await.unwrap();
        let want: Option<&[u8]> = alpn.first().copied();
        assert_eq!(alpn_of(&tls).as_deref(), want);
        let mut tx = h1_over(tls).await;
        let r = h1_send(&mut tx, "/h1", &[]).await;
        assert_eq!(
            (r.status, r.version, r.text().as_str()),
            (200, http::Version::HTTP_11, "upstream:/h1")
        );
        let r = h1_send(&mut tx, "/h1-again", &[]).await;
        assert_eq!(r.status, 200, "kept alive over TLS");
    }

    // TLS 1.2 only: accepted, still h2.
    let c = client_config(site.ca.roots(), H2_H1, &[&rustls::version::TLS12]);
    let tls = try_handshake(LOCALHOST, addr, c, "localhost").await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"h2"[..]));
    let mut tx = h2_over(tls).await;
    assert_eq!(h2_send(&mut tx, "GET", "/tls12", &[]).await.status, 200);

    // Only unknown ALPN protocols: refused (RFC 7301 no_application_protocol).
    let c = client_config(site.ca.roots(), &[b"spdy/3"], BOTH);
    assert!(try_handshake(LOCALHOST, addr, c, "localhost").await.is_err());
    // A client that trusts another CA refuses the certificate.
    let other = Ca::new("someone else");
    let c = client_config(other.roots(), H2_H1, BOTH);
    assert!(try_handshake(LOCALHOST, addr, c, "localhost").await.is_err());
    // Plain HTTP on the TLS port is not served.
    let s = raw(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!s.starts_with("HTTP/1.1 200"), "{s:?}");
    // The daemon is fine after all that.
    let mut tx = h2_over(handshake(addr, &site.ca, "localhost").await).await;
    assert_eq!(h2_send(&mut tx, "GET", "/after", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_is_proxied_with_forwarded_proto_https() {
    let site = Site::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&site.fx, &site.config(&up.url()));
    let addr = gk.listener("https");

    let mut tx = h2_over(handshake(addr, &site.ca, "localhost").await).await;
    // A spoofed X-Forwarded-Proto from an untrusted client is replaced.
    let r = h2_send(&mut tx, "GET", "/echo?x=1", &[("x-forwarded-proto", "http")]).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    let e = r.echo();
    assert_eq!(e.uri, "/echo?x=1");
    assert_eq!(e.one("x-forwarded-proto"), Some("https"), "{:?}", e.headers);
    assert_eq!(e.one("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(e.one("x-forwarded-host"), Some("localhost"), "{:?}", e.headers);

    // A body over h2, and many concurrent streams on the one connection.
    let req = h2_req("POST", "/echo", &[], pattern_body(300_000));
    let r = collect(tx.send_request(req).await.unwrap()).await;
    let e = r.echo();
    assert_eq!(
        (e.body_len, e.body_fnv.as_str()),
        (300_000, pattern_fnv(300_000).as_str())
    );
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            h2_send(&mut tx, "GET", &format!("/s/{i}"), &[]).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text()), (200, format!("upstream:/s/{i}")));
    }

    // HTTP/1.1 over TLS: https too.
    let c = client_config(site.ca.roots(), &[b"http/1.1"], BOTH);
    let mut h1 = h1_over(try_handshake(LOCALHOST, addr, c, "localhost").await.unwrap()).await;
    let e = h1_send(&mut h1, "/echo", &[]).await.echo();
    assert_eq!(e.one("x-forwarded-proto"), Some("https"));
    // The plain listener says http, over HTTP/1.1 and h2c alike.
    let e = get(LOCALHOST, gk.addr, "/echo", &[]).await.echo();
    assert_eq!(e.one("x-forwarded-proto"), Some("http"));
    let r = h2_request(gk.addr, h2_req("GET", "/echo", &[], empty())).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.echo().one("x-forwarded-proto"), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_during_maintenance_page_assets_and_bypass() {
    let site = Site::new();
    site.fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = site.config(&up.url());
    cfg.set("clients.allow", &arr(&["127.0.0.2"]));
    let gk = Gatekeeper::start(&site.fx, &cfg);
    let addr = gk.listener("https");
    let mut tx = h2_over(handshake(addr, &site.ca, "localhost").await).await;

    let r = h2_send(&mut tx, "GET", "/some/page", &[]).await;
    assert_eq!((r.status, r.version), (503, http::Version::HTTP_2));
    assert_eq!(r.header("retry-after"), Some("600"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("content-type").is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(
        r.text().contains("<html") || r.text().contains("<!DOCTYPE"),
        "{}",
        r.text()
    );
    let css = h2_send(&mut tx, "GET", "/style.css", &[]).await;
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type").is_some_and(|t| t.starts_with("text/css")),
        "{:?}",
        css.headers
    );
    assert_eq!(css.body.as_ref(), std::fs::read("static/style.css").unwrap().as_slice());
    let svg = h2_send(&mut tx, "GET", "/maintenance.svg", &[]).await;
    assert_eq!(svg.status, 200);
    let head = h2_send(&mut tx, "HEAD", "/", &[]).await;
    assert_eq!((head.status, head.body.len()), (503, 0));
    let j = h2_send(&mut tx, "GET", "/api", &[("accept", "application/json")]).await;
    assert_eq!(j.status, 503);
    assert_eq!(j.json()["status"], "maintenance");
    assert!(up.hits().is_empty(), "nothing may reach the app: {:?}", up.uris());

    // An allowed client over TLS is proxied.
    let c = client_config(site.ca.roots(), H2_H1, BOTH);
    let mut tx2 = h2_over(try_handshake(IP2, addr, c, "localhost").await.unwrap()).await;
    let r = h2_send(&mut tx2, "GET", "/echo", &[]).await;
    assert_eq!(r.header("x-maintenance-mode"), Some("bypass"));
    assert_eq!(r.echo().one("x-forwarded-proto"), Some("https"));

    // Maintenance off: the same connection is proxied at once.
    site.fx.toggle_off();
    let t0 = Instant::now();
    loop {
        let r = h2_send(&mut tx, "GET", "/back", &[]).await;
        if r.status == 200 {
            assert_eq!(r.text(), "upstream:/back");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{}", gk.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Renewal by rename: the next handshake presents the new leaf; connections
/// opened before keep working on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_rename() {
    let site = Site::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&site.fx, &site.config(&up.url()));
    let addr = gk.listener("https");
    let tls = handshake(addr, &site.ca, "localhost").await;
    assert_eq!(leaf_of(&tls), site.leaf.der);
    let mut old_h2 = h2_over(tls).await;
    assert_eq!(h2_send(&mut old_h2, "GET", "/before", &[]).await.status, 200);
    let c = client_config(site.ca.roots(), &[b"http/1.1"], BOTH);
    let mut old_h1 = h1_over(try_handshake(LOCALHOST, addr, c, "localhost").await.unwrap()).await;
    assert_eq!(h1_send(&mut old_h1, "/before", &[]).await.status, 200);

    // A new key of another type, as a renewal may bring.
    let new = site.ca.issue(&["localhost"], &rcgen::PKCS_ECDSA_P384_SHA384);
    replace(&site.key, &new.key);
    replace(&site.cert, &new.chain);
    assert!(
        gk.wait_for_log("TLS certificates reloaded", Duration::from_secs(5))
            .is_some(),
        "no certificate reload\n{}",
        gk.log()
    );
    let t0 = Instant::now();
    loop {
        let got = leaf_of(&handshake(addr, &site.ca, "localhost").await);
        if got == new.der {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "new handshakes still get the old leaf\n{}",
            gk.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gk.log().contains("ERROR"), "{}", gk.log());
    // Existing connections continue.
    for i in 0..3 {
        assert_eq!(
            h2_send(&mut old_h2, "GET", &format!("/after/{i}"), &[]).await.status,
            200
        );
        assert_eq!(h1_send(&mut old_h1, &format!("/after/{i}"), &[]).await.status, 200);
    }
    let mut tx = h2_over(handshake(addr, &site.ca, "localhost").await).await;
    assert_eq!(h2_send(&mut tx, "GET", "/new", &[]).await.text(), "upstream:/new");
}

/// A broken renewal (key of another certificate, garbage PEM, a missing key)
/// is refused with the file named; the running certificate stays; the fixed
/// pair is then taken. SIGHUP re-reads the certificates too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_is_refused_on_reload() {
    let site = Site::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&site.fx, &site.config(&up.url()));
    let addr = gk.listener("https");
    let mut established = h2_over(handshake(addr, &site.ca, "localhost").await).await;
    let key = site.key.display().to_string();
    let cert = site.cert.display().to_string();
    let refused = "TLS certificate reload failed, keeping the current certificates: ";
    let still_old = |what: &'static str| {
        let ca = &site.ca;
        let old = site.leaf.der.clone();
        async move {
            for _ in 0..3 {
                let tls = handshake(addr, ca, "localhost").await;
                assert_eq!(leaf_of(&tls), old, "{what}: the old certificate must stay");
                let mut tx = h2_over(tls).await;
                assert_eq!(h2_send(&mut tx, "GET", "/", &[]).await.status, 200);
            }
        }
    };

    // Half-done renewal: new certificate, old key.
    let new = site.ca.issue(&["localhost"], P256);
    replace(&site.cert, &new.chain);
    let want = format!("{refused}{key}: private key does not match certificate {cert}");
    assert!(
        gk.wait_for_log(&regex::escape(&want), Duration::from_secs(5)).is_some(),
        "want {want:?}\n{}",
        gk.log()
    );
    still_old("mismatch").await;

    // SIGHUP tries again and refuses again.
    gk.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || gk.log().matches(&want).count() >= 2),
        "{}",
        gk.log()
    );
    still_old("mismatch after SIGHUP").await;

    // Garbage instead of a certificate.
    replace(&site.cert, "this is not PEM\n");
    let want = format!("{refused}{cert}: no certificate found");
    assert!(
        gk.wait_for_log(&regex::escape(&want), Duration::from_secs(5)).is_some(),
        "want {want:?}\n{}",
        gk.log()
    );
    still_old("garbage").await;

    // The new certificate back, its key missing for a moment.
    std::fs::remove_file(&site.key).unwrap();
    replace(&site.cert, &new.chain);
    let want = format!("{refused}{key}: ");
    assert!(
        eventually(Duration::from_secs(5), || gk
            .log()
            .lines()
            .any(|l| l.contains(&want) && !l.contains("does not match"))),
        "missing key not reported with its path\n{}",
        gk.log()
    );
    still_old("missing key").await;

    // The key arrives: the new pair is served.
    replace(&site.key, &new.key);
    assert!(
        gk.wait_for_log("TLS certificates reloaded", Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    let t0 = Instant::now();
    while leaf_of(&handshake(addr, &site.ca, "localhost").await) != new.der {
        assert!(t0.elapsed() < Duration::from_secs(3), "{}", gk.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h2_send(&mut established, "GET", "/still", &[]).await.status, 200);
}

#[test]
fn check_and_run_name_the_file_of_a_bad_pair() {
    let site = Site::new();
    let cfg = site.config("http://127.0.0.1:9");
    let path = cfg.write(&site.fx);
    let conf = path.to_str().unwrap();
    let o = gk(&["check", "-c", conf]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // Missing key file.
    let gone = site.fx.path("tls/missing-key.pem");
    let mut c = cfg.clone();
    c.set("tls.key", &q(gone.to_str().unwrap()));
    c.write(&site.fx);
    let o = gk(&["check", "-c", conf]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(err.contains(&format!("{}: ", gone.display())), "{}", show(&o));
    assert!(err.contains("No such file"), "{}", show(&o));
    let o = gk(&["run", "-c", conf]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&gone.display().to_string()),
        "{}",
        show(&o)
    );

    // Key of another certificate.
    let other = site.ca.issue(&["localhost"], P256);
    let wrong = site.fx.write("tls/other-key.pem", &other.key);
    c.set("tls.key", &q(wrong.to_str().unwrap()));
    c.write(&site.fx);
    let o = gk(&["check", "-c", conf]);
    let want = format!(
        "{}: private key does not match certificate {}",
        wrong.display(),
        site.cert.display()
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&want),
        "want {want:?}\n{}",
        show(&o)
    );
    let o = gk(&["run", "-c", conf]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&want), "{}", show(&o));

    // Missing certificate, and an SNI pair with a bad key: named as well.
    let mut c = cfg.clone();
    let nocert = site.fx.path("tls/nope.pem");
    c.set("tls.cert", &q(nocert.to_str().unwrap()));
    c.write(&site.fx);
    let o = gk(&["check", "-c", conf]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&nocert.display().to_string()),
        "{}",
        show(&o)
    );

    let a = site.ca.issue(&["a.test"], P256);
    let a_cert = site.fx.write("tls/a.pem", &a.chain);
    let text = format!(
        "{}\n[[tls.certs]]\nnames = [\"a.test\"]\ncert = {}\nkey = {}\n",
        cfg.render(),
        q(a_cert.to_str().unwrap()),
        q(site.key.to_str().unwrap())
    );
    std::fs::write(&path, text).unwrap();
    let o = gk(&["check", "-c", conf]);
    let want = format!(
        "{}: private key does not match certificate {}",
        site.key.display(),
        a_cert.display()
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&want),
        "want {want:?}\n{}",
        show(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_among_tls_certs() {
    let site = Site::new();
    let a = site.ca.issue(&["a.test"], P256);
    let b = site.ca.issue(&["b.test", "*.b.test"], &rcgen::PKCS_ED25519);
    let default = site.ca.issue(&["localhost", "other.test", "127.0.0.1"], P256);
    replace(&site.cert, &default.chain);
    replace(&site.key, &default.key);
    let fx = &site.fx;
    let pair = |n: &str, l: &Leaf| {
        (
            fx.write(&format!("tls/{n}.crt"), &l.chain),
            fx.write(&format!("tls/{n}.key"), &l.key),
        )
    };
    let (a_crt, a_key) = pair("a", &a);
    let (b_crt, b_key) = pair("b", &b);
    let up = Upstream::start();
    let mut text = site.config(&up.url()).render();
    for (names, crt, key) in [
        (r#"["a.test"]"#, &a_crt, &a_key),
        (r#"["B.test", "*.b.test"]"#, &b_crt, &b_key),
    ] {
        text.push_str(&format!(
            "\n[[tls.certs]]\nnames = {names}\ncert = {}\nkey = {}\n",
            q(crt.to_str().unwrap()),
            q(key.to_str().unwrap())
        ));
    }
    let path = fx.write("gatekeeper.toml", &text);
    let gk = Gatekeeper::start_with_path(&path);
    let addr = gk.listener("https");
    for (sni, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("www.b.test", &b),
        ("localhost", &default),
        ("other.test", &default),
    ] {
        let tls = handshake(addr, &site.ca, sni).await;
        assert_eq!(leaf_of(&tls), want.der, "SNI {sni}");
        let mut tx = h2_over(tls).await;
        let r = h2_send(&mut tx, "GET", "/echo", &[]).await;
        assert_eq!(r.echo().one("x-forwarded-proto"), Some("https"), "SNI {sni}");
    }
    // No SNI at all (connecting by IP address): the default.
    let tls = handshake(addr, &site.ca, "127.0.0.1").await;
    assert_eq!(leaf_of(&tls), default.der);

    // Rotation of one SNI pair leaves the others alone.
    let a2 = site.ca.issue(&["a.test"], P256);
    replace(&a_key, &a2.key);
    replace(&a_crt, &a2.chain);
    assert!(
        gk.wait_for_log("TLS certificates reloaded", Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    let t0 = Instant::now();
    while leaf_of(&handshake(addr, &site.ca, "a.test").await) != a2.der {
        assert!(t0.elapsed() < Duration::from_secs(3), "{}", gk.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leaf_of(&handshake(addr, &site.ca, "b.test").await), b.der);
    assert_eq!(leaf_of(&handshake(addr, &site.ca, "localhost").await), default.der);
}

fn location(r: &RawResp) -> &str {
    r.header("location").unwrap_or_else(|| panic!("no Location: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_sends_308_to_the_tls_port() {
    let site = Site::new();
    let up = Upstream::start();
    let mut cfg = site.config(&up.url());
    cfg.set("tls.listen", &arr(&["127.0.0.1:0"]));
    cfg.set("tls.redirect_http", "true");
    cfg.set("maintenance.bypass_paths", &arr(&["/healthz"]));
    let gk = Gatekeeper::start(&site.fx, &cfg);
    // The port the TLS listener really got, not 0.
    let tls_port = gk.listener("https").port();
    assert_ne!(tls_port, 0);

    for (host, want_host) in [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
    ] {
        let req = format!("GET /some/path?x=1&y=%2F HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let r = raw_response(gk.addr, req.as_bytes()).await;
        assert_eq!(r.status, 308, "{host}: {r:?}");
        assert_eq!(
            location(&r),
            format!("https://{want_host}:{tls_port}/some/path?x=1&y=%2F"),
            "{host}"
        );
    }
    // POST is redirected with 308 (method and body kept by the client).
    let r = raw_response(
        gk.addr,
        b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(
        (r.status, location(&r)),
        (308, format!("https://example.com:{tls_port}/form").as_str())
    );
    // Bypass paths are proxied over plain HTTP (health checks).
    let r = get(LOCALHOST, gk.addr, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "upstream:/healthz"));
    assert!(up.uris().iter().all(|u| u == "/healthz"), "{:?}", up.uris());
    // During maintenance too: the page is for https.
    site.fx.toggle_on();
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            let mut tx = h2_over(handshake(gk.listener("https"), &site.ca, "localhost").await).await;
            h2_send(&mut tx, "GET", "/", &[]).await.status == 503
        })
        .await
    );
    let r = raw_response(gk.addr, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(
        (r.status, location(&r)),
        (308, format!("https://example.com:{tls_port}/").as_str())
    );
    site.fx.toggle_off();
    // The TLS listener itself is not redirected.
    let mut tx = h2_over(handshake(gk.listener("https"), &site.ca, "localhost").await).await;
    assert!(
        eventually_async(Duration::from_secs(3), || {
            let mut tx = tx.clone();
            async move { h2_send(&mut tx, "GET", "/x", &[]).await.status == 200 }
        })
        .await
    );
    assert_eq!(h2_send(&mut tx, "GET", "/x", &[]).await.text(), "upstream:/x");
}

/// `upstream.url = "h2c://…"`: HTTP/2 with prior knowledge to the app, whatever the client speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_behind_tls_and_plain_listeners() {
    let site = Site::new();
    let up = Upstream::start();
    let cfg = site.config(&format!("h2c://{}", up.addr));
    let gk = Gatekeeper::start(&site.fx, &cfg);
    let mut tx = h2_over(handshake(gk.listener("https"), &site.ca, "localhost").await).await;
    let e = h2_send(&mut tx, "GET", "/echo/tls", &[]).await.echo();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.one("x-forwarded-proto"), Some("https"));
    let req = h2_req("POST", "/echo/body", &[], pattern_body(200_000));
    let e = collect(tx.send_request(req).await.unwrap()).await.echo();
    assert_eq!((e.body_len, e.body_fnv.clone()), (200_000, pattern_fnv(200_000)));
    let e = get(LOCALHOST, gk.addr, "/echo/plain", &[]).await.echo();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.one("x-forwarded-proto"), Some("http"));
    let r = get(LOCALHOST, gk.addr, "/status/404", &[]).await;
    assert_eq!((r.status, r.header("x-upstream")), (404, Some("yes")));
}
