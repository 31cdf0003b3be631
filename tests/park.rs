//! Area: parking idle keep-alive connections.
//!
//! Idle keep-alive connections are parked without hyper's buffers and served
//! again when the client comes back — and never parked while hyper still
//! holds something of the client's (a partial head, a body, a response being
//! written, an HTTP/2 session, an upgraded stream).
mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Longer than a connection needs to park (20–40 ms): the client's pause is
/// the input under test, not a wait for something to happen.
const PAUSE: Duration = Duration::from_millis(150);

fn start_with(edit: impl FnOnce(&mut Config)) -> Env {
    Env::start(|_, c| {
        with_admin(c);
        edit(c);
    })
}

async fn idle_becomes(admin: SocketAddr, n: f64) -> bool {
    eventually_async(Duration::from_secs(5), || async move {
        metric(admin, "gatekeeper_idle_connections").await == n
    })
    .await
}

/// Reads `n` responses off `s`, in order, and nothing after them.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<RawResp> {
    let (rs, rest) = read_raw_responses(s, n, false).await;
    assert!(
        rest.is_empty(),
        "bytes after the responses: {:?}",
        String::from_utf8_lossy(&rest)
    );
    rs
}

fn echoed_uri(r: &RawResp) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    Echo::parse(&r.body).uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_parks_and_serves_again() {
    let env = start_with(|_| {});
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = c.get("/echo/one").await;
    assert_eq!(r.echo().uri, "/echo/one");
    assert!(
        idle_becomes(env.gk.admin(), 1.0).await,
        "the idle connection never parked"
    );
    assert_eq!(metric(env.gk.admin(), "gatekeeper_open_connections").await, 1.0);
    // The same connection, served again by a fresh hyper connection.
    let r = c.get("/echo/two").await;
    assert_eq!(r.echo().uri, "/echo/two");
    assert!(!c.is_closed());
    assert!(idle_becomes(env.gk.admin(), 1.0).await);
    // Maintenance answers on it too.
    env.fx.toggle_on();
    assert!(
        wait_status(&mut c, "/", 503, Duration::from_secs(3)).await.is_some(),
        "no 503 on the parked connection"
    );
    assert!(idle_becomes(env.gk.admin(), 1.0).await);
    let r = c.get("/").await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    drop(c);
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(env.gk.admin(), "gatekeeper_open_connections").await == 0.0
                && metric(env.gk.admin(), "gatekeeper_idle_connections").await == 0.0
        })
        .await,
        "a parked connection closed by its client is still counted"
    );
}

/// Three requests in one write, the third cut mid-head; after a pause longer
/// than the parking delay, the rest of it. Parking then would lose "GET /echo/c".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_pipelined_head_is_not_lost_across_a_pause() {
    let env = start_with(|_| {});
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(
        b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/b HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/c HTTP/1.1\r\nHo",
    )
    .await
    .unwrap();
    let rs = read_responses(&mut s, 2).await;
    assert_eq!(rs.iter().map(echoed_uri).collect::<Vec<_>>(), ["/echo/a", "/echo/b"]);
    tokio::time::sleep(PAUSE).await;
    assert_eq!(metric(env.gk.admin(), "gatekeeper_idle_connections").await, 0.0);
    // A head cut right inside its final blank line, too.
    s.write_all(b"st: x\r\n\r\nGET /echo/d HTTP/1.1\r\nHost: x\r\n\r")
        .await
        .unwrap();
    let rs = read_responses(&mut s, 1).await;
    assert_eq!(echoed_uri(&rs[0]), "/echo/c");
    tokio::time::sleep(PAUSE).await;
    s.write_all(b"\n").await.unwrap();
    let rs = read_responses(&mut s, 1).await;
    assert_eq!(echoed_uri(&rs[0]), "/echo/d");
    // Now it is idle after a whole head: it parks, and still serves.
    assert!(
        idle_becomes(env.gk.admin(), 1.0).await,
        "never parked after a complete request"
    );
    s.write_all(b"GET /echo/e HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let rs = read_responses(&mut s, 1).await;
    assert_eq!(echoed_uri(&rs[0]), "/echo/e");
}

/// A request with a body, a pause, then more: served whole, buffered or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_bodies_and_slow_bodies_survive_pauses() {
    for buffering in ["true", "false"] {
        let env = start_with(|c| {
            c.set("buffering.requests", buffering);
            c.set("buffering.responses", buffering);
        });
        let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
        s.write_all(b"POST /echo/p HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(PAUSE).await;
        s.write_all(b"cd").await.unwrap();
        let rs = read_responses(&mut s, 1).await;
        let e = Echo::parse(&rs[0].body);
        assert_eq!(
            (e.uri.as_str(), e.body_len, e.body_fnv),
            ("/echo/p", 8, fnv_hex(b"ab\r\n\r\ncd")),
            "buffering {buffering}"
        );
        tokio::time::sleep(PAUSE).await;
        s.write_all(b"GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let rs = read_responses(&mut s, 1).await;
        assert_eq!(echoed_uri(&rs[0]), "/echo/after", "buffering {buffering}");
    }
}

/// During maintenance the 503 goes out before the body has arrived; the rest
/// of the body, after a pause, must not be read as the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_after_its_503_is_not_taken_for_a_request() {
    let env = start_with(|_| {});
    env.fx.toggle_on();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert!(wait_status(&mut c, "/", 503, Duration::from_secs(3)).await.is_some());
    drop(c);
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 32\r\n\r\nGET /x HTTP/1.1\r\nHost: y\r\n\r\n")
        .await
        .unwrap();
    let rs = read_responses(&mut s, 1).await;
    assert_eq!(rs[0].status, 503);
    tokio::time::sleep(PAUSE).await;
    // gatekeeper may have closed already: then these writes fail.
    let _ = s.write_all(b"\r\n\r\n").await;
    let _ = s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Either the connection carries on (one 503 for /next) or it is closed;
    // never a response to the body's "GET /x".
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    let n = rest.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    assert!(
        n <= 1,
        "{n} responses after the body: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// A response that takes longer than the parking delay is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_is_not_cut_by_parking() {
    for buffering in ["true", "false"] {
        let env = start_with(|c| {
            c.set("buffering.responses", buffering);
        });
        let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
        let r = c.get("/slow?ms=300").await;
        assert_eq!((r.status, r.text().as_str()), (200, "slow"), "buffering {buffering}");
        let r = c.get("/slow?ms=0").await;
        assert_eq!((r.status, r.text().as_str()), (200, "slow"), "buffering {buffering}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connections_do_not_park() {
    let env = start_with(|_| {});
    let mut sender = h2c_sender(env.gk.addr).await;
    for path in ["/echo/h2-1", "/echo/h2-2"] {
        let req = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(empty())
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("h2 response within 10 s")
            .expect("h2 request");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(PAUSE).await;
        assert_eq!(metric(env.gk.admin(), "gatekeeper_idle_connections").await, 0.0);
    }
}

/// An upgrade on a connection that had been parked (served by a fresh hyper
/// connection), then pauses longer than the parking delay inside the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_a_parked_connection_flows_across_pauses() {
    let env = start_with(|_| {});
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(echoed_uri(&read_responses(&mut s, 1).await[0]), "/echo/first");
    assert!(idle_becomes(env.gk.admin(), 1.0).await, "never parked");
    let mut ws = ws_open(env.gk.addr, s).await;
    for i in 0..3 {
        tokio::time::sleep(PAUSE).await;
        let m = Message::text(format!("after pause {i}"));
        ws.send(m.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo within 5 s");
        assert_eq!(got.unwrap().unwrap(), m);
    }
    assert_eq!(metric(env.gk.admin(), "gatekeeper_idle_connections").await, 0.0);
}

/// A parked connection is still closed after `header_timeout` of silence,
/// and at once when the daemon stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_end_on_idle_timeout_and_on_stop() {
    let mut env = start_with(|c| {
        c.set("server.header_timeout", &q("1s"));
    });
    let mut timed = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(timed.get("/echo").await.status, 200);
    assert!(idle_becomes(env.gk.admin(), 1.0).await);
    assert!(
        eventually_async(Duration::from_secs(5), || {
            let closed = timed.is_closed();
            async move { closed }
        })
        .await,
        "a parked connection outlived header_timeout"
    );
    let mut parked = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(parked.get("/echo").await.status, 200);
    assert!(idle_becomes(env.gk.admin(), 1.0).await);
    let t0 = std::time::Instant::now();
    env.gk.sigterm();
    let status = env
        .gk
        .wait_exit(Duration::from_secs(5))
        .expect("exits with a parked connection open");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop waited {:?} for a parked connection",
        t0.elapsed()
    );
}

/// A connection that cannot park (its last request had a body) is still
/// closed once idle for `header_timeout`, and a half-sent head is dropped after
/// it: gatekeeper's own head deadline, which replaces hyper's on plain connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_applies_to_connections_that_cannot_park() {
    let env = start_with(|c| {
        c.set("server.header_timeout", &q("1s"));
    });
    for (what, second) in [
        ("idle after a POST", &b""[..]),
        ("half a head after a POST", b"GET /echo HTTP/1.1\r\nHo"),
    ] {
        let mut s = connect_from(LOCALHOST, env.gk.addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .expect("write");
        let r = read_raw_response(&mut s, false).await;
        assert_eq!(r.status, 200, "{what}");
        s.write_all(second).await.expect("write");
        let t0 = std::time::Instant::now();
        let mut tmp = [0u8; 1024];
        let end = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await;
        let waited = t0.elapsed();
        assert!(matches!(end, Ok(Ok(0))), "{what}: {end:?} after {waited:?}");
        assert!(waited >= Duration::from_millis(800), "{what}: closed after {waited:?}");
        assert!(waited < Duration::from_secs(3), "{what}: closed after {waited:?}");
        assert_eq!(
            metric(env.gk.admin(), "gatekeeper_idle_connections").await,
            0.0,
            "{what}"
        );
    }
}

/// Reads (and drops) whatever `s` sends until it closes; how long that took.
async fn closed_after(s: &mut TcpStream, t0: std::time::Instant) -> Duration {
    let mut tmp = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {:?}", t0.elapsed()),
        }
    }
}

/// The first request must begin within `header_timeout` of the connection's
/// start whatever the client speaks: silence, an h2c preface with nothing
/// after it, and a head begun late (the wait for its first bytes counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_counts_from_the_connections_start() {
    let env = start_with(|c| {
        c.set("server.header_timeout", &q("2s"));
    });
    // h2c: the preface and an empty SETTINGS frame, then nothing.
    let h2c = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for (what, delay, first) in [
        ("silent", Duration::ZERO, &b""[..]),
        ("h2c preface only", Duration::ZERO, &h2c[..]),
        (
            "half a head after 1.5 s",
            Duration::from_millis(1500),
            b"GET /echo HTTP/1.1\r\nHo",
        ),
    ] {
        let t0 = std::time::Instant::now();
        let mut s = connect_from(LOCALHOST, env.gk.addr).await.expect("connect");
        tokio::time::sleep(delay).await;
        s.write_all(first).await.expect("write");
        let waited = closed_after(&mut s, t0).await;
        assert!(waited >= Duration::from_millis(1700), "{what}: closed after {waited:?}");
        assert!(waited < Duration::from_millis(3000), "{what}: closed after {waited:?}");
    }
    // An h2c client that asks in time is served, on the connection it opened.
    let mut sender = h2c_sender(env.gk.addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let req = http::Request::builder()
        .uri("http://x/echo/late")
        .body(empty())
        .unwrap();
    // The first request came after header_timeout: the connection is gone.
    let late = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await;
    assert!(matches!(late, Ok(Err(_))), "{late:?}");
}
