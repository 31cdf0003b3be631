//! Forwarding to the upstream: a pooled keep-alive client over TCP or a Unix
//! socket, the header rewrite (X-Real-IP, X-Forwarded-*, hop-by-hop), the
//! response-head deadline (504), connection failures (502), and upgrade relay.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

use crate::buffer;
use crate::client_ip::{format_chain, Resolved};
use crate::config::{Config, Upstream, UpstreamTarget};
use crate::hop;
use crate::page;

// Parsed once: header names given as strings are parsed again on every use.
static X_MAINTENANCE_MODE: HeaderName = HeaderName::from_static("x-maintenance-mode");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
// `http` knows Forwarded as a standard header.
static FORWARDED: HeaderName = header::FORWARDED;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response gatekeeper sends and every request it forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Boxes a fixed response (page, asset, error) into the common body type.
pub fn boxed(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

/// Connects every request to one Unix socket, whatever the URI says.
#[derive(Clone)]
pub struct UnixConnector {
    path: Arc<PathBuf>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (path, timeout) = (self.path.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, UnixStream::connect(path.as_path())).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            }
        })
    }
}

/// A pooled client for the configured upstream. Cheap to clone (shares the pool).
#[derive(Clone)]
pub enum UpstreamClient {
    Tcp {
        client: Client<HttpConnector, Body>,
        authority: http::uri::Authority,
        connector: HttpConnector,
        h2: bool,
    },
    Unix {
        client: Client<UnixConnector, Body>,
        connector: UnixConnector,
    },
}

impl UpstreamClient {
    pub fn new(cfg: &Upstream) -> UpstreamClient {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024);
        match &cfg.target {
            UpstreamTarget::Http(authority) | UpstreamTarget::H2c(authority) => {
                if matches!(cfg.target, UpstreamTarget::H2c(_)) {
                    builder.http2_only(true);
                }
                let mut conn = HttpConnector::new();
                conn.set_nodelay(true);
                conn.set_connect_timeout(Some(cfg.connect_timeout));
                UpstreamClient::Tcp {
                    client: builder.build(conn.clone()),
                    authority: authority.clone(),
                    connector: conn,
                    h2: matches!(cfg.target, UpstreamTarget::H2c(_)),
                }
            }
            UpstreamTarget::Unix(path) => {
                let connector = UnixConnector {
                    path: Arc::new(path.clone()),
                    timeout: cfg.connect_timeout,
                };
                UpstreamClient::Unix {
                    client: builder.build(connector.clone()),
                    connector,
                }
            }
        }
    }

    /// The upstream URI for a request target, built from parts (no re-parse of the target).
    fn uri(&self, path_and_query: Option<&http::uri::PathAndQuery>) -> Result<Uri, http::Error> {
        let authority = match self {
            UpstreamClient::Tcp { authority, .. } => authority.clone(),
            UpstreamClient::Unix { .. } => http::uri::Authority::from_static("localhost"),
        };
        let pq = path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            UpstreamClient::Tcp { client, .. } => client.request(req).await,
            UpstreamClient::Unix { client, .. } => client.request(req).await,
        }
    }

    /// Sends on a new connection of its own, outside the pool: it cannot have
    /// gone stale. HTTP/1.1 only; `None` for h2c upstreams (multiplexed, not
    /// closed under a request the way idle HTTP/1.1 connections are).
    async fn send_fresh(&self, mut req: Request<Body>) -> Option<Result<Response<Incoming>, BoxError>> {
        // The pool's own connector (connect timeout, TCP_NODELAY), without the pool.
        let target = req.uri().clone();
        let io = match self {
            UpstreamClient::Tcp { h2: true, .. } => return None,
            UpstreamClient::Tcp { connector, .. } => tower_service::Service::call(&mut connector.clone(), target)
                .await
                .map(|io| Box::new(io) as Box<dyn FreshIo>)
                .map_err(BoxError::from),
            UpstreamClient::Unix { connector, .. } => tower_service::Service::call(&mut connector.clone(), target)
                .await
                .map(|io| Box::new(io) as Box<dyn FreshIo>)
                .map_err(BoxError::from),
        };
        // A bare connection sends the target as given: origin-form, as the pooled client does.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        Some(
            async {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io?).await?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(sender.send_request(req).await?)
            }
            .await,
        )
    }
}

/// A connected byte stream hyper can drive (TCP or Unix).
trait FreshIo: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static> FreshIo for T {}

thread_local! {
    /// This worker thread's pool for the current upstream. Each worker is a
    /// single-threaded runtime; a pool of its own keeps a request and its
    /// upstream connection on one thread (no cross-thread wake-ups), as nginx
    /// workers do.
    static LOCAL: std::cell::RefCell<Option<((UpstreamTarget, Duration), UpstreamClient)>> =
        const { std::cell::RefCell::new(None) };
}

/// The calling thread's client for `cfg`, created on first use or when the
/// upstream changed with a reload.
pub fn local_client(cfg: &Upstream) -> UpstreamClient {
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        match &*slot {
            Some(((target, connect), client)) if *target == cfg.target && *connect == cfg.connect_timeout => {
                client.clone()
            }
            _ => {
                let client = UpstreamClient::new(cfg);
                *slot = Some(((cfg.target.clone(), cfg.connect_timeout), client.clone()));
                client
            }
        }
    })
}

/// Who sent the request, as far as the proxy needs to know.
pub struct Origin<'a> {
    pub peer_trusted: bool,
    pub resolved: &'a Resolved,
    pub https: bool,
}

/// How the upstream exchange ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unreachable,
    Timeout,
    /// Answered by gatekeeper without contacting the upstream (413, 408, ...).
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
        }
    }
}

/// Forwards `req` and returns the upstream's answer (or a 4xx/5xx page).
pub async fn forward(
    upstream: &UpstreamClient,
    cfg: &Config,
    mut req: Request<Incoming>,
    origin: &Origin<'_>,
    bypass: bool,
) -> (Response<Body>, Outcome) {
    let upgrade = hop::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let head_only = parts.method == http::Method::HEAD;
    let b = &cfg.buffering;

    let declared = content_length(&parts.headers);
    if declared.is_some_and(|n| n > b.max_body) {
        // Refused before a byte of the body is read; the upstream never hears of it.
        return (
            boxed(page::error_response(StatusCode::PAYLOAD_TOO_LARGE)),
            Outcome::Refused,
        );
    }
    // We answer `Expect: 100-continue` ourselves (hyper does when the body is first read).
    parts.headers.remove(header::EXPECT);
    let body: Body = if body.is_end_stream() {
        empty()
    } else if b.requests && !upgrade {
        let dir = buffer::temp_dir(b.dir.as_deref());
        match buffer::read_request(body, b.memory, b.max_body, &dir, cfg.server.body_timeout).await {
            Ok(buffered) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(buffered.len()));
                buffered.into_body()
            }
            Err(e) => return (request_body_error(&e), Outcome::Refused),
        }
    } else {
        http_body_util::Limited::new(body, usize::try_from(b.max_body).unwrap_or(usize::MAX)).boxed()
    };

    let uri = match upstream.uri(parts.uri.path_and_query()) {
        Ok(u) => u,
        Err(_) => return (boxed(page::error_response(StatusCode::BAD_REQUEST)), Outcome::Ok),
    };
    // HTTP/2 requests carry the host in the URI; the upstream speaks HTTP/1.1 and wants Host.
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    rewrite_request_headers(&mut parts.headers, origin, host, upgrade);
    parts.uri = uri;
    // The client picks the upstream's protocol (HTTP/1.1, or h2 for h2c://).
    parts.version = http::Version::HTTP_11;
    // A pooled connection the upstream is just closing loses the request written
    // to it. Resending is safe only for idempotent requests without a body.
    let retry = (is_idempotent(&parts.method) && body.is_end_stream())
        .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
    let out = Request::from_parts(parts, body);
    let exchange = async {
        let first = upstream.send(out).await;
        match (first, &retry) {
            (Err(e), Some((method, uri, headers))) if stale_connection(&e) => {
                // nginx's way: the pooled connection had been closed under the
                // request; resend once on a fresh connection, which cannot be stale.
                tracing::debug!(error = %error_chain(&e), "stale upstream connection; resending on a new one");
                let mut again = Request::new(empty());
                *again.method_mut() = method.clone();
                *again.uri_mut() = uri.clone();
                *again.headers_mut() = headers.clone();
                match upstream.send_fresh(again).await {
                    Some(r) => r,
                    None => Err(Box::new(e) as BoxError),
                }
            }
            (first, _) => first.map_err(|e| Box::new(e) as BoxError),
        }
    };

    let mut resp = match tokio::time::timeout(cfg.upstream.timeout, exchange).await {
        Err(_) => {
            return (
                boxed(page::error_response(StatusCode::GATEWAY_TIMEOUT)),
                Outcome::Timeout,
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&*e), "upstream request failed");
            return (
                boxed(page::error_response(StatusCode::BAD_GATEWAY)),
                Outcome::Unreachable,
            );
        }
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match client_upgrade {
            Some(client_side) => {
                let upstream_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_side, upstream_side) {
                        Ok((c, u)) => {
                            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            // SECURITY: never switch protocols on a connection that did not ask to.
            None => {
                return (
                    boxed(page::error_response(StatusCode::BAD_GATEWAY)),
                    Outcome::Unreachable,
                )
            }
        }
        hop::strip(resp.headers_mut(), true);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        hop::strip(resp.headers_mut(), false);
    }
    if bypass {
        resp.headers_mut()
            .insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("bypass"));
    }
    // nginx's convention: the app asks for this answer to be relayed unbuffered.
    let unbuffered = resp
        .headers_mut()
        .remove(&X_ACCEL_BUFFERING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    let status = resp.status();
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A small answer of known length is already out of the app's hands (it sits in
    // socket buffers); spooling it would only add work.
    let small = resp.body().size_hint().exact().is_some_and(|n| n <= b.memory as u64);
    let resp = if no_body || unbuffered || !b.responses || small {
        resp.map(|body| body.map_err(BoxError::from).boxed())
    } else {
        let dir = buffer::temp_dir(b.dir.as_deref());
        resp.map(|body| buffer::spool_response(body, b.memory, dir))
    };
    (resp, Outcome::Ok)
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method as M;
    matches!(*m, M::GET | M::HEAD | M::OPTIONS | M::TRACE | M::PUT | M::DELETE)
}

fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

/// The upstream closed or reset the connection before any response head:
/// the request was lost with the connection, not refused by the app.
fn stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::UnexpectedEof
            ) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn request_body_error(e: &buffer::RequestBodyError) -> Response<Body> {
    use buffer::RequestBodyError as E;
    let status = match e {
        E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        E::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        E::Client(_) => StatusCode::BAD_REQUEST,
        E::Disk(_) => {
            tracing::error!(error = %e, "request refused");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let mut r = boxed(page::error_response(status));
    // The rest of the body is unread: this connection cannot carry another request.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn rewrite_request_headers(h: &mut http::HeaderMap, origin: &Origin<'_>, host: Option<HeaderValue>, upgrade: bool) {
    hop::strip(h, upgrade);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // SECURITY: address headers from the client are replaced, never extended:
    // the upstream sees only what gatekeeper verified.
    h.remove(&X_REAL_IP);
    h.remove(&FORWARDED);
    h.remove(&X_FORWARDED_FOR);
    if let Some(client) = origin.resolved.client {
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            h.insert(X_REAL_IP.clone(), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format_chain(&origin.resolved.chain)) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    // A trusted proxy in front (a TLS-terminating balancer) knows the original
    // scheme and host better than we do; anyone else's claim is replaced.
    if !origin.peer_trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if origin.https { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !origin.peer_trusted || !h.contains_key(&X_FORWARDED_HOST) {
        h.remove(&X_FORWARDED_HOST);
        if let Some(host) = &host {
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    if let Some(host) = host {
        h.insert(header::HOST, host);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
