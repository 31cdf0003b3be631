//! Area: the test harness itself (no daemon involved).
//!
//! Self-checks of the test harness (no daemon involved): the in-process
//! upstream and the client helpers behave as the other test files assume.
mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

#[test]
fn fnv_known_vectors() {
    assert_eq!(fnv_hex(b""), "cbf29ce484222325");
    assert_eq!(fnv_hex(b"a"), "af63dc4c8601ec8c");
    assert_eq!(fnv_hex(b"foobar"), "85944171f73967e8");
}

#[test]
fn config_render_and_loc() {
    let fx = Fixture::new();
    let mut c = fx.config("http://127.0.0.1:9");
    c.set("clients.allow", &arr(&["203.0.113.7", "10.0.0.0/33"]));
    c.set("upstream.timeout", &q("300ms"));
    c.remove("log.access");
    let text = c.render();
    assert!(
        text.starts_with("listen = [\"127.0.0.1:0\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n"),
        "{text}"
    );
    assert!(text.contains("timeout = \"300ms\"\n"));
    assert!(!text.contains("access"));
    let (line, col) = loc(&text, "\"10.0.0.0/33\"");
    assert_eq!(
        text.lines().nth(line - 1).unwrap(),
        "allow = [\"203.0.113.7\", \"10.0.0.0/33\"]"
    );
    assert_eq!(col, 25);
    assert_eq!(q("a\"b\\c"), r#""a\"b\\c""#);
}

#[test]
fn raw_parser_handles_chunked_and_length() {
    let r = parse_raw(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.text().as_str(), r.header("x-a")),
        (200, "abcde", Some("1"))
    );
    let r = parse_raw("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nhi");
    assert_eq!(
        (r.status, r.reason.as_str(), r.text().as_str()),
        (503, "Service Unavailable", "hi")
    );
    assert_eq!(raw_status("HTTP/1.1 404 Not Found\r\n"), 404);
    assert_eq!(raw_status(""), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_echo_and_routes() {
    let up = Upstream::start();
    let mut c = Conn::open(IP2, up.addr).await;
    assert_eq!(c.local.ip(), IP2);
    let r = c
        .send(
            "POST",
            "/echo?x=1",
            &[("x-custom", "a"), ("x-custom", "b")],
            full("hello"),
        )
        .await;
    let e = r.echo();
    assert_eq!((e.method.as_str(), e.uri.as_str()), ("POST", "/echo?x=1"));
    assert_eq!(e.all("x-custom"), vec!["a", "b"]);
    assert_eq!(e.one("host"), Some("localhost"));
    assert_eq!((e.body_len, e.body_fnv.as_str()), (5, fnv_hex(b"hello").as_str()));
    let r = c.get("/anything/else").await;
    assert_eq!((r.status, r.text().as_str()), (200, "upstream:/anything/else"));
    let r = c.get("/status/404").await;
    assert_eq!(
        (r.status, r.header_all("set-cookie")),
        (404, vec!["a=1; Path=/", "b=2; Path=/"])
    );
    let r = c.get("/slow?ms=20").await;
    assert_eq!(r.text(), "slow");
    assert_eq!(
        up.uris(),
        vec!["/echo?x=1", "/anything/else", "/status/404", "/slow?ms=20"]
    );
    assert_eq!(up.hits()[0].headers.iter().filter(|(k, _)| k == "x-custom").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_streams_both_ways() {
    let up = Upstream::start();
    let mut c = Conn::open(LOCALHOST, up.addr).await;
    let n = 3 * CHUNK as u64 + 123;
    let (status, len, sum) = download(&mut c, &format!("/download?bytes={n}")).await;
    assert_eq!((status, len, sum), (200, n, pattern_fnv(n)));
    let r = c
        .send("PUT", "/echo", &[("content-length", &n.to_string())], pattern_body(n))
        .await;
    let e = r.echo();
    assert_eq!((e.body_len, e.body_fnv), (n, pattern_fnv(n)));
    let mut c = Conn::open(LOCALHOST, up.addr).await;
    stream_echo_rounds(&mut c, 10, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hop_by_hop_headers_are_really_sent() {
    let up = Upstream::start();
    let r = raw_response(up.addr, b"GET /headers-out HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("x-secret"));
    assert_eq!(r.header("x-secret"), Some("1"));
    assert_eq!(r.header("keep-alive"), Some("timeout=5"));
    assert_eq!(r.header("proxy-connection"), Some("keep-alive"));
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_websocket_unix_and_h2c() {
    let fx = Fixture::new();
    let up = Upstream::start_with_unix(&fx.path("app.sock"));
    let s = connect_from(LOCALHOST, up.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", up.addr), s)
        .await
        .expect("ws handshake");
    assert_eq!(resp.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let r = unix_get(up.unix_path.as_ref().unwrap(), "/unix-path").await;
    assert_eq!(r.text(), "upstream:/unix-path");
    let req = http::Request::builder()
        .uri("http://example.test/echo".to_string())
        .body(empty())
        .unwrap();
    let r = h2_request(up.addr, req).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.echo().version, "HTTP/2.0");
}

/// `downloads_done` really tells whether the client took the body: a client
/// that reads nothing holds the upstream back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_download_done_tracks_backpressure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start();
    let target = "/download?bytes=67108864";
    let mut s = connect_from(LOCALHOST, up.addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || up.uris().len() == 1));
    // absence check: a fixed window is unavoidable
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        up.downloads_done().is_empty(),
        "64 MiB handed over to a client that reads nothing"
    );
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    while total < 64 * 1024 * 1024 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        total += n;
    }
    assert!(eventually(Duration::from_secs(2), || up.downloads_done()
        == vec![target.to_string()]));
}

#[test]
fn held_port_refuses_keeps_its_port_and_listens_on_demand() {
    let p = HeldPort::new();
    assert!(refused(p.addr), "a held port must refuse connections");
    assert!(
        std::net::TcpListener::bind(p.addr).is_err(),
        "another socket could bind the held port"
    );
    let l = p.listen();
    let _c = std::net::TcpStream::connect(p.addr).expect("connect while listening");
    l.accept().expect("accept");
    drop(l);
    p.unlisten();
    assert!(refused(p.addr), "still accepting after unlisten");
    assert!(std::net::TcpListener::bind(p.addr).is_err(), "unlisten let the port go");
    let _l = p.listen();
    assert!(std::net::TcpStream::connect(p.addr).is_ok(), "listening again");
}
