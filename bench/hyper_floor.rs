//! The floor of gatekeeper's stack: the least a reverse proxy built on the same
//! pieces (tokio current-thread runtimes, one per worker, SO_REUSEPORT
//! listeners, hyper's HTTP/1.1 server and client connections) can cost per
//! request. No decision, no allowlist, no timeouts, no pool: each client
//! connection gets one upstream connection of its own, requests go through
//! unchanged but for the three headers nginx's bench config adds. Not part of
//! gatekeeper; `bench/callgrind.sh` and `bench/run.sh` measure it beside
//! gatekeeper and nginx, to tell gatekeeper's own cost from hyper's.
//!
//! With `raw` as the fourth argument the upstream side is not hyper's client
//! but a few lines of hand-written HTTP/1.1 (httparse; bodiless requests and
//! Content-Length answers only, nothing else): a lower bound for what the
//! upstream side of a proxy on hyper's server could cost without hyper's client.
//!
//!   cargo run --release --example hyper_floor -- 127.0.0.1:8081 127.0.0.1:8080 [WORKERS] [raw]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        return Err("usage: hyper_floor LISTEN UPSTREAM [WORKERS] [raw]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let workers: usize = args.get(3).map(|w| w.parse()).transpose()?.unwrap_or(2);
    let raw = match args.get(4).map(String::as_str) {
        None => false,
        Some("raw") => true,
        Some(other) => return Err(format!("unknown mode {other:?} (raw or nothing)").into()),
    };
    // gatekeeper's own listeners: one SO_REUSEPORT socket per worker.
    let sets = gatekeeper::server::bind(&[listen], workers).map_err(|(addr, e)| format!("{addr}: {e}"))?;
    let mut threads = Vec::new();
    for listener in sets.into_iter().flatten() {
        threads.push(std::thread::spawn(move || worker(listener, upstream, raw)));
    }
    for t in threads {
        t.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

fn worker(listener: std::net::TcpListener, upstream: SocketAddr, raw: bool) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // Out of descriptors, most likely: let some close.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            // The client's address as X-Real-IP / X-Forwarded-For carry it, once per connection.
            let ip = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("-"));
            let io = TokioIo::new(stream);
            let server = hyper::server::conn::http1::Builder::new();
            if raw {
                let slot: RawSlot = Arc::new(Mutex::new(None));
                let svc = service_fn(move |req| forward_raw(req, ip.clone(), upstream, slot.clone()));
                tokio::spawn(async move { server.serve_connection(io, svc).await });
            } else {
                let slot: Slot = Arc::new(Mutex::new(None));
                let svc = service_fn(move |req| forward(req, ip.clone(), upstream, slot.clone()));
                tokio::spawn(async move { server.serve_connection(io, svc).with_upgrades().await });
            }
        }
    })
}

/// The upstream's body, or an empty one for a 502.
type Answer = Either<Incoming, Empty<Bytes>>;

type Slot = Arc<Mutex<Option<SendRequest<Incoming>>>>;

async fn forward(
    mut req: Request<Incoming>,
    ip: HeaderValue,
    upstream: SocketAddr,
    slot: Slot,
) -> Result<Response<Answer>, Infallible> {
    let h = req.headers_mut();
    h.insert(HeaderName::from_static("x-real-ip"), ip.clone());
    h.insert(HeaderName::from_static("x-forwarded-for"), ip);
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    let taken = slot.lock().ok().and_then(|mut s| s.take());
    let mut sender = match taken {
        Some(s) => s,
        None => match connect(upstream).await {
            Ok(s) => s,
            Err(_) => return Ok(bad_gateway(Answer::Right(Empty::new()))),
        },
    };
    if sender.ready().await.is_err() {
        return Ok(bad_gateway(Answer::Right(Empty::new())));
    }
    let resp = sender.send_request(req).await;
    if let Ok(mut s) = slot.lock() {
        *s = Some(sender);
    }
    Ok(resp.map_or_else(|_| bad_gateway(Answer::Right(Empty::new())), |r| r.map(Either::Left)))
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Incoming>, Error> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// A 502 with `body` (empty: there is no answer to relay).
fn bad_gateway<B>(body: B) -> Response<B> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// An upstream connection of the hand-written client, with its buffers.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    head: Vec<u8>,
}

type RawSlot = Arc<Mutex<Option<Raw>>>;

async fn forward_raw(
    req: Request<Incoming>,
    ip: HeaderValue,
    upstream: SocketAddr,
    slot: RawSlot,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let taken = slot.lock().ok().and_then(|mut s| s.take());
    let mut raw = match taken {
        Some(r) => r,
        None => match TcpStream::connect(upstream).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Raw {
                    stream,
                    buf: Vec::with_capacity(8192),
                    head: Vec::with_capacity(1024),
                }
            }
            Err(_) => return Ok(bad_gateway(Full::default())),
        },
    };
    let h = &mut raw.head;
    h.clear();
    h.extend_from_slice(req.method().as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            h.extend_from_slice(part);
        }
    }
    for name in ["x-real-ip: ", "x-forwarded-for: "] {
        for part in [name.as_bytes(), ip.as_bytes(), b"\r\n"] {
            h.extend_from_slice(part);
        }
    }
    h.extend_from_slice(b"x-forwarded-proto: http\r\n\r\n");
    if raw.stream.write_all(&raw.head).await.is_err() {
        return Ok(bad_gateway(Full::default()));
    }
    raw.buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut headers);
        match head.parse(&raw.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let len: usize = head
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                let mut out = Response::builder().status(head.code.unwrap_or(502));
                for h in head
                    .headers
                    .iter()
                    .filter(|h| !h.name.eq_ignore_ascii_case("connection"))
                {
                    out = out.header(h.name, h.value);
                }
                while raw.buf.len() < n + len {
                    if raw.stream.read_buf(&mut raw.buf).await.unwrap_or(0) == 0 {
                        return Ok(bad_gateway(Full::default()));
                    }
                }
                let body = Bytes::copy_from_slice(&raw.buf[n..n + len]);
                let answer = out
                    .body(Full::new(body))
                    .unwrap_or_else(|_| bad_gateway(Full::default()));
                if let Ok(mut s) = slot.lock() {
                    *s = Some(raw);
                }
                return Ok(answer);
            }
            Ok(httparse::Status::Partial) => {
                if raw.stream.read_buf(&mut raw.buf).await.unwrap_or(0) == 0 {
                    return Ok(bad_gateway(Full::default()));
                }
            }
            Err(_) => return Ok(bad_gateway(Full::default())),
        }
    }
}
