//! Early answers reach the client: an answer given before the request body was
//! read (413, the maintenance page) is followed by a lingering close, so a
//! client that sends its whole body before reading — Python's http.client here,
//! as many SDKs and form posts do — reads the answer instead of a broken pipe.
//! A small body is read and thrown away so the connection serves on; a client
//! that never stops sending is cut off after `server.linger`.

mod common;
use common::*;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `n` POSTs of `size` bytes, each on a new connection, by Python's
/// http.client (body sent whole before the answer is read); prints the count
/// of each outcome as JSON, e.g. {"413": 20}.
const SEND_FIRST: &str = r#"
import http.client, json, ssl, sys
size, n, port, tls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "tls"
body = b"x" * size
seen = {}
for _ in range(n):
    try:
        if tls:
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=ssl._create_unverified_context())
        else:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        c.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
        r = c.getresponse()
        r.read()
        k = str(r.status)
        c.close()
    except Exception as e:
        k = type(e).__name__
    seen[k] = seen.get(k, 0) + 1
print(json.dumps(seen))
"#;

fn send_first(addr: SocketAddr, size: usize, n: usize, tls: bool) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", SEND_FIRST])
        .args([size.to_string(), n.to_string(), addr.port().to_string()])
        .arg(if tls { "tls" } else { "plain" })
        .output()
        .expect("python3 (the tests need it)");
    assert!(out.status.success(), "{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

const MIB: usize = 1 << 20;

fn admin(gk: &Gatekeeper) -> SocketAddr {
    gk.listeners
        .iter()
        .find(|(_, kind)| kind == "admin")
        .map(|(a, _)| *a)
        .unwrap_or_else(|| panic!("no admin listener\n{}", gk.log()))
}

fn start(fx: &Fixture, up: &Upstream, linger: &str) -> Gatekeeper {
    let mut cfg = fx.config(&up.url());
    cfg.set("buffering.max_body", &q("1MiB"));
    cfg.set("server.linger", &q(linger));
    cfg.set("admin.listen", &q("127.0.0.1:0"));
    cfg.set("log.access", "false");
    Gatekeeper::start(fx, &cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_first_clients_read_the_early_answer() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = start(&fx, &up, "30s");
    // nginx with client_max_body_size 1m: 20 x 413. Before the lingering close: 20 broken pipes.
    assert_eq!(send_first(gk.addr, 2 * MIB, 20, false), serde_json::json!({"413": 20}));
    fx.toggle_on();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert!(wait_status(&mut c, "/", 503, Duration::from_secs(5)).await.is_some());
    for size in [MIB, 4 * MIB, 20 * MIB] {
        assert_eq!(
            send_first(gk.addr, size, 20, false),
            serde_json::json!({"503": 20}),
            "{size} bytes during maintenance"
        );
    }
    assert!(up.uris().iter().all(|u| u != "/upload"), "{:?}", up.uris());
    // Every lingering connection ended (the clients closed), and they were counted.
    let a = admin(&gk);
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            metric(a, "gatekeeper_lingering_connections").await == 0.0
        })
        .await
    );
    assert!(metric(a, "gatekeeper_lingering_closes_total").await >= 60.0);
}

/// A small body is read and thrown away: the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_body_keeps_the_connection() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = start(&fx, &up, "30s");
    fx.toggle_on();
    let mut probe = Conn::open(LOCALHOST, gk.addr).await;
    assert!(wait_status(&mut probe, "/", 503, Duration::from_secs(5))
        .await
        .is_some());
    let mut s = connect_from(LOCALHOST, gk.addr).await.unwrap();
    let body = "x".repeat(1000);
    let post = format!("POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{body}");
    for _ in 0..3 {
        s.write_all(post.as_bytes()).await.unwrap();
        let r = read_raw_response(&mut s, false).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("connection"), None, "kept alive");
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(read_raw_response(&mut s, false).await.status, 503);
    // A large declared body is not read: the answer says the connection ends.
    let big = "POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n";
    s.write_all(big.as_bytes()).await.unwrap();
    let r = read_raw_response(&mut s, false).await;
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
}

/// A client that never stops sending is cut off after `server.linger`, and
/// what it sent is never held in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_sender_is_cut_off_after_linger() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = start(&fx, &up, "2s");
    let a = admin(&gk);
    let mut s = connect_from(LOCALHOST, gk.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000000\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut head = vec![0u8; 64];
    let n = rd.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        // Bounded: 20 s of sending at most.
        while started.elapsed() < Duration::from_secs(20) {
            if wr.write_all(&chunk).await.is_err() {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    let rss_before = proc_status_kib(gk.pid(), "VmRSS");
    let cut = tokio::time::timeout(Duration::from_secs(25), writer)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(8),
        "cut off after {cut:?}"
    );
    let rss_after = proc_status_kib(gk.pid(), "VmRSS");
    assert!(rss_after < rss_before + 8 * 1024, "RSS {rss_before} -> {rss_after} KiB");
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(a, "gatekeeper_lingering_connections").await == 0.0
        })
        .await
    );
}

/// Over TLS the same: the answer is read, then the rest is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_first_over_tls() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = fx.write("tls/cert.pem", ck.cert.pem());
    let key = fx.write("tls/key.pem", ck.signing_key.serialize_pem());
    let mut cfg = fx.config(&up.url());
    cfg.set("buffering.max_body", &q("1MiB"));
    cfg.set("tls.listen", r#"["127.0.0.1:0"]"#);
    cfg.set("tls.cert", &q(cert.to_str().unwrap()));
    cfg.set("tls.key", &q(key.to_str().unwrap()));
    cfg.set("log.access", "false");
    let gk = Gatekeeper::start(&fx, &cfg);
    let tls = gk
        .listeners
        .iter()
        .find(|(_, kind)| kind == "https")
        .map(|(a, _)| *a)
        .unwrap_or_else(|| panic!("no https listener\n{}", gk.log()));
    assert_eq!(send_first(tls, 2 * MIB, 10, true), serde_json::json!({"413": 10}));
}

/// HTTP/2 ends the stream, not the connection: the answer arrives, the rest of
/// the body is refused on that stream only, and the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_early_answer_and_the_connection_serves_on() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = start(&fx, &up, "30s");
    fx.toggle_on();
    let mut probe = Conn::open(LOCALHOST, gk.addr).await;
    assert!(wait_status(&mut probe, "/", 503, Duration::from_secs(5))
        .await
        .is_some());
    let s = connect_from(LOCALHOST, gk.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        for _ in 0..64 {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let req = build_request("POST", "http://a/upload", &[], body);
    let r = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(r.status(), 503);
    let _ = feeder.await;
    let req = build_request("GET", "http://a/next", &[], empty());
    let r = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("the connection still serves");
    assert_eq!(r.status(), 503);
}
