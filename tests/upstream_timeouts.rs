//! An upstream that stalls mid-exchange (`upstream.read_timeout`,
//! `upstream.send_timeout`) and one that is briefly down (`upstream.wait`).
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: usize = 1 << 20;

/// Reads one request head (and no body). False on EOF or error.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => buf.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// What the stalling upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    /// Stalled connections that gatekeeper then closed.
    closed_by_peer: AtomicU64,
}

/// `/stall`: `Content-Length: 1 MiB`, 1,000 bytes, then silence (spooled path);
/// `/stall-unbuffered`: the same with `X-Accel-Buffering: no` (streamed path);
/// `/swallow` (a POST): reads the head, never the body; anything else: `200 ok`.
async fn stalling_upstream(l: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        seen.connections.fetch_add(1, Relaxed);
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(head) = read_head(&mut s).await {
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                match path.as_str() {
                    "/stall" | "/stall-unbuffered" => {
                        let extra = if path == "/stall" {
                            ""
                        } else {
                            "X-Accel-Buffering: no\r\n"
                        };
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n{extra}\r\n");
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(&[b'x'; 1000]).await;
                        // Silent from now on; gatekeeper is to close the connection.
                        let mut sink = [0u8; 1024];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        seen.closed_by_peer.fetch_add(1, Relaxed);
                        return;
                    }
                    "/swallow" => {
                        // Never reads the body: gatekeeper's writes fill the socket buffers and stop.
                        std::future::pending::<()>().await;
                    }
                    _ => {
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Sends a raw GET and reads until the connection ends: (bytes, elapsed, ended by what).
async fn raw_get(addr: SocketAddr, path: &str, limit: Duration) -> (Vec<u8>, Duration, &'static str) {
    let mut s = connect_from(LOCALHOST, addr).await.unwrap();
    let t = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: stall.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let ended = loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => break "hang",
            Ok(Ok(0)) => break "eof",
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break "reset",
        }
    };
    (out, t.elapsed(), ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_silent_mid_answer_is_cut_off_after_read_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    tokio::spawn(stalling_upstream(l, seen.clone()));

    let fx = Fixture::new();
    let mut cfg = fx.config(&format!("http://{up}"));
    cfg.set("upstream.read_timeout", &q("500ms"));
    cfg.set("upstream.timeout", &q("5s"));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();

    for (i, path) in ["/stall", "/stall-unbuffered"].into_iter().enumerate() {
        let (got, took, ended) = raw_get(gk.addr, path, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{path}: {:?}",
            &text[..text.len().min(200)]
        );
        let body = got.len() - text.find("\r\n\r\n").unwrap() - 4;
        // The client can tell: fewer bytes than Content-Length, then the connection ends.
        assert_ne!(ended, "hang", "{path}: the answer was never cut off");
        assert!(body < MIB, "{path}: {body} body bytes");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(4),
            "{path}: cut off after {took:?} (read_timeout 500ms)"
        );
        eprintln!("{path}: {body} body bytes, then {ended} after {took:?}");
        let counted = metric(admin, "gatekeeper_upstream_errors_total{kind=\"read_timeout\"}").await;
        assert_eq!(counted, (i + 1) as f64, "{path}");
        // gatekeeper let go of the silent upstream connection.
        assert!(
            eventually(Duration::from_secs(5), || seen.closed_by_peer.load(Relaxed)
                == (i + 1) as u64),
            "{path}: the stalled upstream connection was kept open"
        );
    }
    // Over HTTP/2 the stream is reset; the connection stays.
    let s = connect_from(LOCALHOST, gk.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://stall.test/stall-unbuffered")
        .body(empty())
        .unwrap();
    let t = Instant::now();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => break format!("{e:?}"),
            Ok(None) => break "end of stream".to_string(),
            Err(_) => break "hang".to_string(),
        }
    };
    let took = t.elapsed();
    eprintln!("h2 /stall-unbuffered: {got} body bytes, then {end:?} after {took:?}");
    assert!(end.contains("Reset"), "not an RST_STREAM: {end}");
    assert!(got < MIB && took < Duration::from_secs(4), "{got} bytes, {took:?}");
    assert_eq!(
        metric(admin, "gatekeeper_upstream_errors_total{kind=\"read_timeout\"}").await,
        3.0
    );
    assert!(gk.log().contains("upstream answer cut off"), "{}", gk.log());

    // The next request gets a working connection (the stalled ones are gone).
    let before = seen.connections.load(Relaxed);
    let r = get(LOCALHOST, gk.addr, "/ok", &[]).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(
        seen.connections.load(Relaxed),
        before + 1,
        "a fresh upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_meets_send_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stalling_upstream(l, Arc::default()));

    let fx = Fixture::new();
    let mut cfg = fx.config(&format!("http://{up}"));
    cfg.set("upstream.send_timeout", &q("500ms"));
    cfg.set("upstream.timeout", &q("30s"));
    cfg.set("buffering.max_body", &q("64MiB"));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();

    // Far more than the socket buffers between gatekeeper and the upstream hold.
    let body = vec![b'p'; 32 * MIB];
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let t = Instant::now();
    let r = c.send("POST", "/swallow", &[], full(body)).await;
    let took = t.elapsed();
    eprintln!(
        "POST 32 MiB to an upstream that reads none of it: {} after {took:?}",
        r.status
    );
    assert_eq!(r.status, 504);
    assert!(
        took < Duration::from_secs(20),
        "{took:?}: upstream.timeout (30s) answered, not send_timeout"
    );
    assert_eq!(
        metric(admin, "gatekeeper_upstream_errors_total{kind=\"send_timeout\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "gatekeeper_upstream_errors_total{kind=\"timeout\"}").await,
        0.0
    );
    assert!(
        gk.log().contains("upstream took none of the request body"),
        "{}",
        gk.log()
    );
}

/// Answers every request `200 up` on `l` (TCP or Unix).
async fn serve_ok<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut s: S) {
    while read_head(&mut s).await.is_some() {
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nup")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// GET `/` through a gatekeeper whose upstream comes up `after`; (status, elapsed).
async fn get_while_upstream_starts(gk: &Gatekeeper, after: Duration, start: impl FnOnce()) -> (u16, Duration) {
    let t = Instant::now();
    let starter = async {
        tokio::time::sleep(after).await;
        start();
    };
    let (r, ()) = tokio::join!(get(LOCALHOST, gk.addr, "/", &[]), starter);
    (r.status, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_held_while_the_upstream_restarts() {
    // TCP: nothing listens on the port for a second (held, so nobody else takes it).
    let held = std::sync::Arc::new(HeldPort::new());
    let fx = Fixture::new();
    let mut cfg = fx.config(&held.url());
    cfg.set("upstream.wait", &q("3s"));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    let (status, took) = get_while_upstream_starts(&gk, Duration::from_secs(1), move || {
        let l = held.listen();
        l.set_nonblocking(true).unwrap();
        let l = TcpListener::from_std(l).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_ok(s));
            }
        });
    })
    .await;
    eprintln!("TCP upstream down for 1 s, upstream.wait 3s: {status} after {took:?}");
    assert_eq!(status, 200, "held until the upstream came back");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        metric(admin, "gatekeeper_upstream_waits_total{result=\"connected\"}").await,
        1.0
    );
    drop(gk);

    // Unix socket: the socket file is missing for a second.
    let sock = fx.path("app.sock");
    let mut cfg = fx.config(&format!("unix:{}", sock.display()));
    cfg.set("upstream.wait", &q("3s"));
    let gk = Gatekeeper::start(&fx, &cfg);
    let (status, took) = get_while_upstream_starts(&gk, Duration::from_secs(1), move || {
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_ok(s));
            }
        });
    })
    .await;
    eprintln!("Unix socket missing for 1 s, upstream.wait 3s: {status} after {took:?}");
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(gk);

    // Without upstream.wait: 502 at once.
    let nobody = HeldPort::new();
    let cfg = fx.config(&nobody.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let t = Instant::now();
    let r = get(LOCALHOST, gk.addr, "/", &[]).await;
    eprintln!("upstream down, no upstream.wait: {} after {:?}", r.status, t.elapsed());
    assert_eq!(r.status, 502);
    assert!(t.elapsed() < Duration::from_millis(800), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_ends_in_a_502_when_the_upstream_stays_down() {
    let fx = Fixture::new();
    let nobody = HeldPort::new();
    let mut cfg = fx.config(&nobody.url());
    cfg.set("upstream.wait", &q("1s"));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    let t = Instant::now();
    let r = get(LOCALHOST, gk.addr, "/", &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 502);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        metric(admin, "gatekeeper_upstream_waits_total{result=\"gave_up\"}").await,
        1.0
    );
}

#[test]
fn the_new_upstream_keys_are_checked() {
    let fx = Fixture::new();
    for (key, value, says) in [
        ("upstream.wait", "10s", "must be shorter than upstream.timeout"),
        ("upstream.read_timeout", "0s", "must be more than 0s"),
        ("upstream.send_timeout", "0s", "must be more than 0s"),
        ("upstream.read_timeout", "soon", "upstream.read_timeout"),
    ] {
        let mut c = fx.config("http://127.0.0.1:9");
        c.set("upstream.timeout", &q("10s"));
        c.set(key, &q(value));
        let p = c.write(&fx);
        let o = gk(&["check", "-c", p.to_str().unwrap()]);
        let text = show(&o);
        assert_ne!(o.status.code(), Some(0), "{key} = {value:?} accepted: {text}");
        assert!(text.contains(key) && text.contains(says), "{key} = {value:?}: {text}");
    }
    let mut c = fx.config("http://127.0.0.1:9");
    c.set("upstream.wait", &q("9s"));
    c.set("upstream.read_timeout", &q("2m"));
    c.set("upstream.send_timeout", &q("1s"));
    let p = c.write(&fx);
    let o = gk(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_a_get_whose_new_connection_closes_unanswered_is_sent_again() {
    // The first connection is closed unanswered (an app going away drops what
    // it accepted); the next ones are answered.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            if n.fetch_add(1, Relaxed) == 0 {
                let _ = read_head(&mut s).await;
                drop(s);
            } else {
                tokio::spawn(serve_ok(s));
            }
        }
    });
    let fx = Fixture::new();
    let mut cfg = fx.config(&format!("http://{up}"));
    cfg.set("upstream.wait", &q("3s"));
    let gk = Gatekeeper::start(&fx, &cfg);
    let r = get(LOCALHOST, gk.addr, "/", &[]).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"up"[..]));
    assert_eq!(accepted.load(Relaxed), 2);
}
