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
use crate::client_ip::{format_chain_into, Resolved};
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

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per worker thread.
const POOL_MAX_IDLE: usize = 1024;

/// The client for the configured upstream. Cheap to clone. HTTP/1.1 upstreams
/// (TCP or Unix) use a pool of this worker thread's own (see [`LOCAL`]); h2c
/// upstreams one multiplexed connection through hyper-util's client.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Which pool answers for this client: a reload that changes the upstream
    /// starts a new pool, and connections leased from the old one are not returned to it.
    id: u64,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tcp {
        authority: http::uri::Authority,
        connector: HttpConnector,
    },
    Unix {
        connector: UnixConnector,
    },
    H2c {
        client: Box<Client<HttpConnector, Body>>,
        authority: http::uri::Authority,
    },
}

/// A connection lent out for one exchange, returned to its worker's pool when
/// the response has been read to the end.
pub struct Lease {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    pool: u64,
}

impl UpstreamClient {
    pub fn new(cfg: &Upstream) -> UpstreamClient {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http_connector = || {
            let mut conn = HttpConnector::new();
            conn.set_nodelay(true);
            conn.set_connect_timeout(Some(cfg.connect_timeout));
            conn
        };
        let kind = match &cfg.target {
            UpstreamTarget::Http(authority) => Kind::Tcp {
                authority: authority.clone(),
                connector: http_connector(),
            },
            UpstreamTarget::H2c(authority) => {
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_idle_timeout(POOL_IDLE_TIMEOUT).http2_only(true);
                Kind::H2c {
                    client: Box::new(builder.build(http_connector())),
                    authority: authority.clone(),
                }
            }
            UpstreamTarget::Unix(path) => Kind::Unix {
                connector: UnixConnector {
                    path: Arc::new(path.clone()),
                    timeout: cfg.connect_timeout,
                },
            },
        };
        UpstreamClient { id, kind }
    }

    /// The upstream URI for a request target. HTTP/1.1 connections are our
    /// own, so the target stays in origin form (as it goes on the wire); the
    /// h2c client wants the absolute form for its `:authority`.
    fn uri(&self, path_and_query: Option<&http::uri::PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        match &self.kind {
            Kind::H2c { authority, .. } => Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query(pq)
                .build(),
            _ => Ok(Uri::from(pq)),
        }
    }

    /// The Host for a request that came without one.
    fn default_host(&self) -> Option<HeaderValue> {
        match &self.kind {
            Kind::Tcp { authority, .. } | Kind::H2c { authority, .. } => HeaderValue::from_str(authority.as_str()).ok(),
            Kind::Unix { .. } => Some(HeaderValue::from_static("localhost")),
        }
    }

    /// Sends `req`, on an idle pooled connection when there is one. Returns the
    /// answer with the lease to hand back when its body is read (HTTP/1.1),
    /// and whether the connection had served before (only those can be stale).
    async fn send(&self, req: Request<Body>) -> (Result<(Response<Incoming>, Option<Lease>), BoxError>, bool) {
        if let Kind::H2c { client, .. } = &self.kind {
            return (
                client.request(req).await.map(|r| (r, None)).map_err(BoxError::from),
                false,
            );
        }
        let (mut sender, reused) = match checkout(self.id) {
            Some(s) => (s, true),
            // Boxed: the connecting state is rare and large; the exchange future stays small.
            None => match Box::pin(self.connect()).await {
                Ok(s) => (s, false),
                Err(e) => return (Err(e), false),
            },
        };
        let resp = sender.send_request(req).await.map_err(BoxError::from);
        (resp.map(|r| (r, Some(Lease { sender, pool: self.id }))), reused)
    }

    /// Sends on a new connection: it cannot have gone stale.
    async fn send_fresh(&self, req: Request<Body>) -> Result<(Response<Incoming>, Option<Lease>), BoxError> {
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, Some(Lease { sender, pool: self.id })))
    }

    /// A new HTTP/1.1 connection, driven by a task on this worker.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Body>, BoxError> {
        let io: Box<dyn FreshIo> = match &self.kind {
            Kind::Tcp { authority, connector } => {
                let target = Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()?;
                Box::new(tower_service::Service::call(&mut connector.clone(), target).await?)
            }
            Kind::Unix { connector } => {
                Box::new(tower_service::Service::call(&mut connector.clone(), Uri::from_static("/")).await?)
            }
            Kind::H2c { .. } => return Err("h2c upstreams use the multiplexed client".into()),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A connected byte stream hyper can drive (TCP or Unix).
trait FreshIo: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static> FreshIo for T {}

/// This worker thread's idle upstream connections. Each worker is a
/// single-threaded runtime; a pool of its own keeps a request and its upstream
/// connection on one thread (no locks, no cross-thread wake-ups), as nginx
/// workers do.
struct Local {
    /// The client whose connections these are.
    id: u64,
    /// Most recently used last: reuse takes the warmest connection.
    idle: Vec<(hyper::client::conn::http1::SendRequest<Body>, std::time::Instant)>,
}

thread_local! {
    static LOCAL: std::cell::RefCell<Local> = const { std::cell::RefCell::new(Local { id: 0, idle: Vec::new() }) };
}

/// An idle connection of pool `id` that can take a request now.
fn checkout(id: u64) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
    LOCAL
        .try_with(|cell| {
            let mut local = cell.borrow_mut();
            if local.id != id {
                // First use on this thread, or the upstream changed with a
                // reload (ids only grow): the old upstream's idle connections
                // close. A request still on the older config connects afresh.
                if id > local.id {
                    local.id = id;
                    local.idle.clear();
                }
                return None;
            }
            while let Some((sender, since)) = local.idle.pop() {
                // A connection the upstream closed has ended its task: not ready.
                if sender.is_ready() && since.elapsed() < POOL_IDLE_TIMEOUT {
                    return Some(sender);
                }
            }
            None
        })
        .ok()
        .flatten()
}

impl Lease {
    /// Back to the pool, if the connection can take another request and its
    /// pool is still this thread's current one; otherwise it closes.
    fn release(self) {
        if !self.sender.is_ready() {
            return;
        }
        let _ = LOCAL.try_with(|cell| {
            if let Ok(mut local) = cell.try_borrow_mut() {
                if local.id == self.pool {
                    if local.idle.len() >= POOL_MAX_IDLE {
                        local.idle.remove(0);
                    }
                    local.idle.push((self.sender, std::time::Instant::now()));
                }
            }
        });
    }
}

/// A response body that returns its connection to the pool once read to the end.
struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped unread (HEAD, 204, 304: nothing to read) or half read (the
        // client went away). Only a finished exchange leaves the connection reusable.
        if let Some(lease) = self.lease.take() {
            if self.inner.is_end_stream() {
                lease.release();
            }
        }
    }
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
        // Boxed: only requests with a body pay for the reading state's size.
        match Box::pin(buffer::read_request(
            body,
            b.memory,
            b.max_body,
            &dir,
            cfg.server.body_timeout,
        ))
        .await
        {
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
    parts.uri = uri;
    // The client picks the upstream's protocol (HTTP/1.1, or h2 for h2c://).
    parts.version = http::Version::HTTP_11;
    // A pooled connection the upstream is just closing loses the request written
    // to it. Resending is safe only for idempotent requests without a body.
    // Copied before the headers gatekeeper adds: fewer to copy, and a resend adds them again.
    let retry = (is_idempotent(&parts.method) && body.is_end_stream()).then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
            host.clone(),
        )
    });
    rewrite_request_headers(&mut parts.headers, upstream, origin, host, upgrade);
    let out = Request::from_parts(parts, body);
    // Pinned where it is: handing the future itself to `timeout` would copy it twice.
    let exchange = std::pin::pin!(async {
        match upstream.send(out).await {
            (Err(e), true) if retry.is_some() && stale_connection(&*e) => {
                // nginx's way: the pooled connection had been closed under the
                // request; resend once on a fresh connection, which cannot be stale.
                tracing::debug!(error = %error_chain(&*e), "stale upstream connection; resending on a new one");
                let Some((method, uri, mut headers, host)) = retry else {
                    return Err(e);
                };
                rewrite_request_headers(&mut headers, upstream, origin, host, upgrade);
                let mut again = Request::new(empty());
                *again.method_mut() = method;
                *again.uri_mut() = uri;
                *again.headers_mut() = headers;
                Box::pin(upstream.send_fresh(again)).await
            }
            (r, _) => r,
        }
    });

    let (mut resp, lease) = match tokio::time::timeout(cfg.upstream.timeout, exchange).await {
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

    // Our own HTTP/1.1 towards the client, whatever the upstream spoke (an
    // HTTP/1.0 app's version would make hyper answer in HTTP/1.0 and close).
    *resp.version_mut() = http::Version::HTTP_11;
    // The connection goes back to the pool once its answer has been read to
    // the end; an upgraded one belongs to the relay from now on.
    let lease = lease.filter(|_| resp.status() != StatusCode::SWITCHING_PROTOCOLS);
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
    let resp = resp.map(|inner| PooledBody { inner, lease });
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
fn stale_connection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
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

/// The client's request headers as the upstream gets them.
fn rewrite_request_headers(
    h: &mut http::HeaderMap,
    upstream: &UpstreamClient,
    origin: &Origin<'_>,
    host: Option<HeaderValue>,
    upgrade: bool,
) {
    hop::strip(h, upgrade);
    // Room for the headers added below at once, rather than a regrowth midway.
    h.reserve(4);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // SECURITY: address headers from the client are replaced, never extended:
    // the upstream sees only what gatekeeper verified. (`insert` replaces every
    // value the client sent; a removal costs a lookup, so only when needed.)
    let mut text = String::with_capacity(64);
    let real_ip = origin.resolved.client.and_then(|client| {
        crate::client_ip::push_ip(&mut text, client);
        HeaderValue::from_str(&text).ok()
    });
    let chain = &origin.resolved.chain;
    // Most often the chain is the client alone (no proxy in front): the same value, shared.
    let forwarded_for = match (&real_ip, origin.resolved.client) {
        (Some(v), Some(client)) if chain.len() == 1 && chain[0] == client => Some(v.clone()),
        _ => {
            text.clear();
            format_chain_into(&mut text, chain);
            HeaderValue::from_str(&text).ok()
        }
    };
    match real_ip {
        Some(v) => {
            h.insert(X_REAL_IP.clone(), v);
        }
        None => {
            h.remove(&X_REAL_IP);
        }
    }
    if h.contains_key(&FORWARDED) {
        h.remove(&FORWARDED);
    }
    if let Some(v) = forwarded_for {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    // A trusted proxy in front (a TLS-terminating balancer) knows the original
    // scheme and host better than we do; anyone else's claim is replaced.
    if !origin.peer_trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if origin.https { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !origin.peer_trusted || !h.contains_key(&X_FORWARDED_HOST) {
        match &host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
    match host {
        Some(host) => {
            h.insert(header::HOST, host);
        }
        // HTTP/1.0 without Host: HTTP/1.1 upstreams require one; name the upstream.
        None => {
            if let Some(v) = upstream.default_host() {
                h.insert(header::HOST, v);
            }
        }
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
