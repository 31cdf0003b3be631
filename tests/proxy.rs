//! Area: proxying with maintenance off.
//!
//! Proxying (maintenance off): headers toward the upstream, hop-by-hop
//! stripping both ways, large streaming bodies with bounded memory,
//! WebSocket, unix-socket upstream, 502/504, h2c.
mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;
/// Peak RSS allowed for the daemon while moving 100 MiB.
const RSS_LIMIT_KIB: u64 = 60 * 1024;

fn start_with(edit: impl FnOnce(&Fixture, &Upstream, &mut Config)) -> Env {
    let fx = Fixture::new();
    let up = Upstream::start_with_unix(&fx.path("app.sock"));
    Env::launch(fx, up, edit)
}

fn start() -> Env {
    start_with(|_, _, _| {})
}

fn streaming(_: &Fixture, _: &Upstream, c: &mut Config) {
    c.set("buffering.requests", "false");
    c.set("buffering.responses", "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_toward_upstream() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = c
        .send(
            "GET",
            "/echo?x=1&y=%20z",
            &[
                ("host", "example.test:8080"),
                ("user-agent", "itest/1.0"),
                ("x-custom", "a"),
                ("x-custom", "b"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.example"),
                ("cookie", "session=abc"),
            ],
            empty(),
        )
        .await;
    assert_eq!(r.header("x-maintenance-mode"), None);
    let e = r.echo();
    assert_eq!(e.method, "GET");
    assert_eq!(e.uri, "/echo?x=1&y=%20z");
    assert_eq!(e.all("host"), vec!["example.test:8080"], "Host is passed through");
    assert_eq!(e.all("user-agent"), vec!["itest/1.0"]);
    assert_eq!(e.all("x-custom"), vec!["a", "b"]);
    assert_eq!(e.all("cookie"), vec!["session=abc"]);
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(e.all("x-forwarded-host"), vec!["example.test:8080"]);
    // many requests on the same kept-alive connection
    for i in 0..50 {
        let r = c.get(&format!("/n/{i}")).await;
        assert_eq!((r.status, r.text()), (200, format!("upstream:/n/{i}")));
    }
    assert!(!c.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_target_is_passed_unchanged() {
    let env = start();
    for t in [
        "/echo/%2e%2e/a%2Fb?q=%20x&q=2",
        "/echo//double//slash",
        "/echo/./dot",
        "/echo?a=%7E&b=~",
    ] {
        let req = format!("GET {t} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = parse_raw(&raw(env.gk.addr, req.as_bytes()).await);
        assert_eq!(r.status, 200, "{t}: {}", r.text());
        let e = Echo::parse(&r.body);
        assert_eq!(e.uri, t, "request target changed on the way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_removed() {
    let env = start();
    let req = "GET /echo HTTP/1.1\r\n\
        Host: localhost\r\n\
        Connection: keep-alive, X-Drop-Me\r\n\
        X-Drop-Me: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: X-T\r\n\
        Proxy-Authorization: Basic dTpw\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: foo/1\r\n\
        X-Kept: 1\r\n\
        \r\n";
    let r = raw_response(env.gk.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = Echo::parse(&r.body);
    for h in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            e.all(h),
            Vec::<&str>::new(),
            "{h} reached the upstream: {:?}",
            e.headers
        );
    }
    assert_eq!(e.all("x-kept"), vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed() {
    let env = start();
    let r = raw_response(env.gk.addr, b"GET /headers-out HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!((r.status, r.text().as_str()), (200, "headers-out"));
    assert_eq!(
        r.all("x-secret"),
        Vec::<&str>::new(),
        "header named in Connection leaked: {:?}",
        r.headers
    );
    assert_eq!(r.all("keep-alive"), Vec::<&str>::new(), "{:?}", r.headers);
    assert_eq!(r.all("proxy-connection"), Vec::<&str>::new(), "{:?}", r.headers);
    for v in r.all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-secret"),
            "upstream's Connection leaked: {v}"
        );
    }
    assert_eq!(r.all("x-kept"), vec!["yes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_and_headers_are_relayed() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    for code in [201u16, 302, 404, 418, 500, 503] {
        let r = c.get(&format!("/status/{code}")).await;
        assert_eq!((r.status, r.text()), (code, format!("status {code}")));
        assert_eq!(r.header_all("set-cookie"), vec!["a=1; Path=/", "b=2; Path=/"]);
        assert_eq!(r.header("x-upstream"), Some("yes"));
        assert_eq!(r.header("x-maintenance-mode"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let e = c
        .send("POST", "/echo", &[("content-type", "text/plain")], full("hello world"))
        .await
        .echo();
    assert_eq!(
        (e.method.as_str(), e.body_len, e.body_fnv.as_str()),
        ("POST", 11, fnv_hex(b"hello world").as_str())
    );
    // chunked (no Content-Length)
    let (tx, body) = channel_body();
    let send = tokio::spawn(async move {
        for part in ["abc", "defg", "hij"] {
            tx.send(bytes::Bytes::from(part)).await.unwrap();
        }
    });
    let e = c.send("PUT", "/echo", &[], body).await.echo();
    send.await.unwrap();
    assert_eq!((e.body_len, e.body_fnv), (10, fnv_hex(b"abcdefghij")));
    // raw chunked upload
    let req = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = parse_raw(&raw(env.gk.addr, req.as_bytes()).await);
    let e = Echo::parse(&r.body);
    assert_eq!((e.body_len, e.body_fnv), (11, fnv_hex(b"hello world")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_100mib_streaming_intact_with_bounded_memory() {
    let env = start_with(streaming);
    let n = 100 * MIB;
    let expect = tokio::task::spawn_blocking(move || pattern_fnv(n));
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let t0 = Instant::now();
    let r = c
        .send(
            "PUT",
            "/echo",
            &[
                ("content-length", &n.to_string()),
                ("content-type", "application/octet-stream"),
            ],
            pattern_body(n),
        )
        .await;
    let took = t0.elapsed();
    let e = r.echo();
    assert_eq!(e.body_len, n);
    assert_eq!(e.body_fnv, expect.await.unwrap(), "upload corrupted");
    let hwm = env.gk.vm_hwm_kib();
    eprintln!("100 MiB upload through gatekeeper: {took:?}, daemon VmHWM {hwm} KiB");
    assert!(hwm < RSS_LIMIT_KIB, "daemon peak RSS {hwm} KiB >= {RSS_LIMIT_KIB} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_100mib_streaming_intact_with_bounded_memory() {
    let env = start_with(streaming);
    let n = 100 * MIB;
    let expect = tokio::task::spawn_blocking(move || pattern_fnv(n));
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let t0 = Instant::now();
    let (status, len, sum) = download(&mut c, &format!("/download?bytes={n}")).await;
    let took = t0.elapsed();
    assert_eq!((status, len), (200, n));
    assert_eq!(sum, expect.await.unwrap(), "download corrupted");
    let hwm = env.gk.vm_hwm_kib();
    eprintln!("100 MiB download through gatekeeper: {took:?}, daemon VmHWM {hwm} KiB");
    assert!(hwm < RSS_LIMIT_KIB, "daemon peak RSS {hwm} KiB >= {RSS_LIMIT_KIB} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_streaming_when_buffering_is_off() {
    let env = start_with(streaming);
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    stream_echo_rounds(&mut c, 10, Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.gk.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_relayed() {
    let env = start();
    let s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    let mut ws = ws_open(env.gk.addr, s).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Ping(bytes::Bytes::from_static(b"p"))).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).await.unwrap();
    let hit = env
        .up
        .hits()
        .into_iter()
        .find(|h| h.uri == "/ws")
        .expect("upstream saw /ws");
    let get = |n: &str| {
        hit.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    assert_eq!(get("upgrade").as_deref(), Some("websocket"));
    assert!(get("connection").unwrap_or_default().contains("upgrade"));
    assert_eq!(get("x-real-ip").as_deref(), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_during_maintenance_gets_503() {
    let env = start();
    env.fx.toggle_on();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert!(wait_status(&mut c, "/ping", 503, Duration::from_secs(3))
        .await
        .is_some());
    let s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{}/ws", env.gk.addr), s).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("websocket opened during maintenance"),
    }
    assert!(!env.up.uris().contains(&"/ws".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_upstream() {
    let env = start_with(|_, up, c| {
        c.set("upstream.url", &q(&up.unix_url()));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = c
        .send("POST", "/echo?via=unix", &[("host", "app.example")], full("payload"))
        .await;
    let e = r.echo();
    assert_eq!((e.uri.as_str(), e.body_len), ("/echo?via=unix", 7));
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-host"), vec!["app.example"]);
    let n = 3 * MIB + 17;
    let (status, len, sum) = download(&mut c, &format!("/download?bytes={n}")).await;
    assert_eq!((status, len, sum), (200, n, pattern_fnv(n)));
    let r = c.get("/plain").await;
    assert_eq!((r.status, r.text().as_str()), (200, "upstream:/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_when_nothing_listens() {
    let dead = HeldPort::new();
    let env = start_with(|_, _, c| {
        c.set("upstream.url", &q(&dead.url()));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    for _ in 0..2 {
        let r = c.get("/anything").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.header("content-type").unwrap_or("").starts_with("text/html"),
            "{:?}",
            r.headers
        );
        assert!(
            !r.body.is_empty() && r.body.len() < 16 * 1024,
            "short HTML page expected"
        );
        assert_eq!(r.header("x-maintenance-mode"), None);
    }
    assert!(!c.is_closed(), "connection must stay usable");
    let raw = raw(env.gk.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_for_missing_unix_socket() {
    let env = start_with(|fx, _, c| {
        c.set(
            "upstream.url",
            &q(&format!("unix:{}", fx.path("nobody.sock").display())),
        );
    });
    let r = get(LOCALHOST, env.gk.addr, "/x", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("content-type").unwrap_or("").starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_timeout_after_upstream_timeout() {
    let env = start_with(|_, _, c| {
        c.set("upstream.timeout", &q("300ms"));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let t0 = Instant::now();
    let r = c.get("/slow?ms=3000").await;
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "504 after {took:?}, want ~300ms"
    );
    let r = c.get("/slow?ms=20").await;
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    let env = start();
    let req = http::Request::builder()
        .method("GET")
        .uri("http://example.test/echo?h2=1")
        .header("x-custom", "h2")
        .body(empty())
        .unwrap();
    let r = h2_request(env.gk.addr, req).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.header("x-maintenance-mode"), None);
    let e = r.echo();
    assert_eq!((e.method.as_str(), e.uri.as_str()), ("GET", "/echo?h2=1"));
    assert_eq!(e.all("x-custom"), vec!["h2"]);
    assert_eq!(e.all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(e.all("x-forwarded-host"), vec!["example.test"]);

    let req = http::Request::builder()
        .method("POST")
        .uri("http://example.test/echo")
        .body(pattern_body(MIB + 5))
        .unwrap();
    let e = h2_request(env.gk.addr, req).await.echo();
    assert_eq!((e.body_len, e.body_fnv), (MIB + 5, pattern_fnv(MIB + 5)));

    // maintenance over h2 too
    env.fx.toggle_on();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert!(wait_status(&mut c, "/ping", 503, Duration::from_secs(3))
        .await
        .is_some());
    let req = http::Request::builder()
        .uri("http://example.test/")
        .body(empty())
        .unwrap();
    let r = h2_request(env.gk.addr, req).await;
    assert_eq!(
        (r.status, r.header("retry-after"), r.header("cache-control")),
        (503, Some("600"), Some("no-store"))
    );
}

/// An HTTP/1.0 app server (`python3 -m http.server`, old CGI gateways) answers
/// in HTTP/1.0 and closes. The client still talks to gatekeeper, an HTTP/1.1
/// server: it gets HTTP/1.1 answers on a connection that stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upstream_answers_are_relayed_as_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app_addr = app.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut tmp = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&tmp[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
                    .await;
            });
        }
    });
    let env = start_with(|_, _, c| {
        c.set("upstream.url", &q(&format!("http://{app_addr}")));
    });
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.expect("connect");
    for i in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut got = Vec::new();
        let mut tmp = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.ends_with(b"\r\n\r\nhello") {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&tmp[..n]),
                other => panic!(
                    "request {i}: connection ended or stalled ({other:?}): {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "request {i}: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "request {i}: {text}"
        );
    }
}

/// gatekeeper tells h2c from HTTP/1.1 by peeking at a new connection's first
/// bytes. A client whose first bytes are only the start of both ("P": PUT, or
/// HTTP/2's "PRI *" preface) is still served, whatever follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_that_could_be_either_protocol_are_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start();
    for (first, rest) in [("P", "UT /echo HTTP/1.1\r\n"), ("PRI", " /echo HTTP/1.1\r\n")] {
        let mut s = tokio::net::TcpStream::connect(env.gk.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(first.as_bytes()).await.expect("write");
        // The pause under test: the first bytes arrive alone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let head = format!("{rest}Host: example.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answered within 10 s")
            .expect("read");
        let text = String::from_utf8_lossy(&out);
        // (PRI is a method name like any other to HTTP/1.1.)
        assert!(text.starts_with("HTTP/1.1 200"), "{first}…: {text}");
    }
}
