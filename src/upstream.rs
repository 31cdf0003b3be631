//! The upstream client: a keep-alive pool of this worker's own HTTP/1.1
//! connections (TCP or a Unix socket), or one multiplexed h2c client; a lease
//! returns a connection to the pool once its answer has been read to the end.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

use crate::body::{Body, BoxError};
use crate::config::{Upstream, UpstreamTarget};
use crate::metrics::{self, UpstreamError};
use crate::stall::{ReadTimeout, Silence};

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

/// The upstream's answer with the lease on its connection (HTTP/1.1), or why there is none.
pub type Answer = Result<(Response<Incoming>, Option<Lease>), BoxError>;

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
    pub fn uri(&self, path_and_query: Option<&http::uri::PathAndQuery>) -> Result<Uri, http::Error> {
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
    pub fn default_host(&self) -> Option<HeaderValue> {
        match &self.kind {
            Kind::Tcp { authority, .. } | Kind::H2c { authority, .. } => HeaderValue::from_str(authority.as_str()).ok(),
            Kind::Unix { .. } => Some(HeaderValue::from_static("localhost")),
        }
    }

    /// Sends `req`, on an idle pooled connection when there is one. Returns the
    /// answer with the lease to hand back when its body is read (HTTP/1.1),
    /// and whether the connection had served before (only those can be stale).
    /// A refused connection is tried again until `hold` (see [`Hold`]; h2c
    /// upstreams are not held: their client connects on its own).
    pub fn send<'a>(&'a self, req: Request<Body>, hold: Hold<'a>) -> impl Future<Output = (Answer, bool)> + 'a {
        use futures_util::future::{Either, FutureExt};
        // Handed to the connection before any await, so the returned future
        // does not keep the request as well (a request head is ~250 bytes, and
        // the exchange's state is moved and touched on every request).
        let pool = self.id;
        match &self.kind {
            Kind::H2c { client, .. } => Either::Left(Either::Left(
                client
                    .request(req)
                    .map(|r| (r.map(|r| (r, None)).map_err(BoxError::from), false)),
            )),
            _ => match checkout(pool) {
                Some(mut sender) => Either::Left(Either::Right(sender.send_request(req).map(move |r| {
                    (
                        r.map(|r| (r, Some(Lease { sender, pool }))).map_err(BoxError::from),
                        true,
                    )
                }))),
                // Boxed: the connecting state is rare and large; the exchange future stays small.
                None => Either::Right(Box::pin(async move { (self.send_fresh(req, hold).await, false) })),
            },
        }
    }

    /// Sends on a new connection: it cannot have gone stale.
    pub async fn send_fresh(&self, req: Request<Body>, hold: Hold<'_>) -> Answer {
        let mut sender = self.connect(hold).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, Some(Lease { sender, pool: self.id })))
    }

    /// A new HTTP/1.1 connection; while the upstream refuses it (an app
    /// restarting), tried again with a growing pause until `hold` ends.
    async fn connect(&self, hold: Hold<'_>) -> Result<hyper::client::conn::http1::SendRequest<Body>, BoxError> {
        let mut pause = HOLD_FIRST_PAUSE;
        let mut held = false;
        loop {
            match self.connect_once().await {
                Err(e) if refused(&*e) => {
                    let now = tokio::time::Instant::now();
                    if !hold.holds(now) {
                        if held {
                            metrics::upstream_wait(false);
                        }
                        return Err(e);
                    }
                    // A pause holds for as long as it lasts; `upstream.wait` until its end.
                    let until = hold.until.filter(|&u| u > now).unwrap_or(now + HOLD_MAX_PAUSE);
                    if !held {
                        // Per request, so not above debug: a restart holds many (they are counted).
                        tracing::debug!(error = %error_chain(&*e), "upstream refuses connections; holding the request");
                        held = true;
                    }
                    tokio::time::sleep(pause.min(until - now)).await;
                    pause = (pause * 2).min(HOLD_MAX_PAUSE);
                }
                r => {
                    if held {
                        metrics::upstream_wait(r.is_ok());
                    }
                    return r;
                }
            }
        }
    }

    /// One attempt at a new HTTP/1.1 connection, driven by a task on this worker.
    async fn connect_once(&self) -> Result<hyper::client::conn::http1::SendRequest<Body>, BoxError> {
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

/// Until when a request may be held while the upstream refuses connections
/// (`upstream.wait`; `None`: not at all), and — during a pause — for as long
/// as the pause lasts: a request already on its way when the app stopped is
/// held like those the pause queued (within `upstream.timeout`, as ever).
#[derive(Clone, Copy, Default)]
pub struct Hold<'a> {
    pub until: Option<tokio::time::Instant>,
    pub paused: Option<&'a AtomicBool>,
}

impl Hold<'_> {
    /// Whether a refused or lost exchange may wait for the app now.
    pub fn holds(&self, now: tokio::time::Instant) -> bool {
        self.until.is_some_and(|u| u > now) || self.paused.is_some_and(|p| p.load(Ordering::Relaxed))
    }
}

/// The first pause before trying a refusing upstream again; it doubles up to [`HOLD_MAX_PAUSE`].
const HOLD_FIRST_PAUSE: Duration = Duration::from_millis(50);
const HOLD_MAX_PAUSE: Duration = Duration::from_millis(500);

/// Nobody listens (TCP), or the socket is missing or unattended (Unix): the
/// request has not gone out, so holding and trying again is safe.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(io.kind(), K::ConnectionRefused | K::NotFound);
        }
        cur = c.source();
    }
    false
}

/// An error with its causes, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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

/// A response body that returns its connection to the pool once read to the
/// end, and ends in an error when the upstream goes silent for `upstream.read_timeout`.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
    silence: Silence,
    /// Cut off by the read timeout: whatever comes later is not passed on.
    cut: bool,
}

impl PooledBody {
    pub fn new(inner: Incoming, lease: Option<Lease>, read_timeout: Duration) -> PooledBody {
        PooledBody {
            inner,
            lease,
            silence: Silence::new(read_timeout),
            cut: false,
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Some(Err(ReadTimeout(this.silence.limit()).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.silence.progress();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.silence.poll_expired(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    // Mid-answer: the connection cannot be reused. The client's
                    // answer ends in an error, so it is cut off, never completed.
                    this.lease = None;
                    this.cut = true;
                    let e = ReadTimeout(this.silence.limit());
                    tracing::warn!(error = %e, "upstream answer cut off");
                    metrics::upstream_error(UpstreamError::ReadTimeout);
                    Poll::Ready(Some(Err(e.into())))
                }
            },
        }
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
