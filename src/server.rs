//! Listeners and connections: bind, accept (bounded by `max_connections`),
//! serve HTTP/1.1 and h2c on one socket (and h2 over TLS), park idle
//! keep-alive connections; every request goes to [`crate::pipeline::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::facts::Conn;
use crate::heap;
use crate::linger;
use crate::park;
use crate::pipeline;
use crate::state::State;

/// Binds every configured address once per worker, with SO_REUSEPORT so that
/// the kernel spreads new connections over the workers (nginx's `reuseport`).
/// Returns, per worker, its listeners in the order of `addrs`. IPv6 sockets are
/// IPv6-only, so `0.0.0.0:80` and `[::]:80` can both be listed (as nginx does).
pub fn bind(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, (SocketAddr, std::io::Error)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let one = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    let mut out: Vec<Vec<std::net::TcpListener>> = (0..workers.max(1)).map(|_| Vec::new()).collect();
    for &addr in addrs {
        let first = one(addr).map_err(|e| (addr, e))?;
        // Port 0 picks a port once; every worker binds that same port.
        let actual = first.local_addr().map_err(|e| (addr, e))?;
        for (i, set) in out.iter_mut().enumerate() {
            let l = if i == 0 { first.try_clone() } else { one(actual) };
            set.push(l.map_err(|e| (addr, e))?);
        }
    }
    Ok(out)
}

/// Accepts on `listener` until `shutdown`, serving each connection in `tracker`.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut last_warning: Option<std::time::Instant> = None;
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and friends are transient: pause, don't die
                    // (and say so once a second, not ten times).
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed; pausing 100ms between attempts");
                        last_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // The slot is taken after accept: workers share one limit, and a worker
        // that waited for a slot before accepting would keep one reserved while
        // the connection that needs it sits in another worker's queue. Each
        // worker holds at most this one connection waiting; the rest wait in the
        // kernel's backlog.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Said at most once a minute: at capacity this would be every connection.
                if last_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("server.max_connections reached; new connections wait until one closes");
                    last_full = Some(std::time::Instant::now());
                }
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        // Two spawns, not one future with two arms: a task is as large as its
        // future, and every plain connection would carry the TLS arm's size.
        match tls {
            None => {
                tracker.spawn(async move {
                    serve_plain(stream, peer, state, shutdown).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                tracker.spawn(async move {
                    // The handshake counts against the header timeout: a silent client is dropped.
                    let limit = state.snapshot().rt.config.server.header_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let _open = count_open(&state);
                            // HTTP/2 ends its streams itself; an HTTP/1.1 connection
                            // may end with a body unread: kept for a lingering close.
                            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_h2(tls_stream, peer, state.clone(), &shutdown, true, None).await;
                            } else {
                                let io = linger::Returning::new(tls_stream);
                                let slot = io.slot();
                                serve_connection(io, peer, state.clone(), &shutdown, true, None).await;
                                if let Some(s) = linger::take(&slot) {
                                    let linger = state.snapshot().rt.config.server.linger;
                                    linger::drain(s, linger, &state.metrics, &shutdown).await;
                                }
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Counts the connection open until dropped; a wave of them ending gives the
/// allocator's free pages back ([`heap`]).
fn count_open(state: &State) -> impl Drop + '_ {
    let open = &state.metrics.open_connections;
    heap::opened(open.inc() + 1);
    scopeguard(move || {
        heap::closed(open.dec() - 1);
    })
}

/// A plain-TCP connection: served by hyper while active, parked in between
/// (see [`park`]) so that an idle keep-alive connection holds no HTTP buffers.
async fn serve_plain(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>, shutdown: CancellationToken) {
    let _open = count_open(&state);
    let started = tokio::time::Instant::now();
    let header_timeout = state.snapshot().rt.config.server.header_timeout;
    // h2c (prior knowledge) straight to hyper's HTTP/2 server: it never parks,
    // and its streams then skip the parking bookkeeping and the protocol sniffing.
    match starts_h2c(&stream, header_timeout, &shutdown).await {
        Some(true) => {
            let left = header_timeout.saturating_sub(started.elapsed());
            serve_h2(stream, peer, state.clone(), &shutdown, false, Some(left)).await;
            return;
        }
        Some(false) => {}
        None => return,
    }
    let shared = Arc::new(park::Shared::default());
    let mut first = true;
    loop {
        let mut header_timeout = state.snapshot().rt.config.server.header_timeout;
        if std::mem::take(&mut first) {
            // The first head's deadline counts from the connection's start:
            // the wait for its first bytes is part of it.
            header_timeout = header_timeout.saturating_sub(started.elapsed());
        }
        let io = park::Parkable::new(stream, shared.clone(), header_timeout);
        // Boxed: a parked connection's task then carries no hyper state.
        let clean = Box::pin(serve_connection(
            io,
            peer,
            state.clone(),
            &shutdown,
            false,
            Some(shared.clone()),
        ))
        .await;
        let parked = shared.take_parked();
        let (true, Some(s)) = (clean, parked) else {
            if let Some(s) = shared.take_closing() {
                let linger = state.snapshot().rt.config.server.linger;
                linger::drain(s, linger, &state.metrics, &shutdown).await;
            }
            return;
        };
        stream = s;
        // Idle keep-alive is bounded by header_timeout, as before parking.
        let idle = &state.metrics.idle_connections;
        idle.inc();
        let woke = tokio::select! {
            r = tokio::time::timeout(header_timeout, stream.readable()) => matches!(r, Ok(Ok(()))),
            _ = shutdown.cancelled() => false,
        };
        idle.dec();
        if !woke {
            return;
        }
    }
}

/// The client's first bytes, once they are in: whether they begin the HTTP/2
/// preface (`PRI `: no HTTP/1.1 method). `None`: nothing within `limit`, the
/// client left, or shutdown. Fewer than four bytes in (a prefix of the
/// preface) count as HTTP/1.1: hyper's own sniffing still tells h2c apart.
async fn starts_h2c(stream: &TcpStream, limit: Duration, shutdown: &CancellationToken) -> Option<bool> {
    let mut first = [0u8; 4];
    let n = tokio::select! {
        r = tokio::time::timeout(limit, stream.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        },
        _ = shutdown.cancelled() => return None,
    };
    Some(n == first.len() && first == *b"PRI ")
}

/// HTTP/2 settings, the same whichever builder serves the connection.
trait H2Settings {
    fn gatekeeper_h2(&mut self, limits: &crate::config::Server) -> &mut Self;
}

impl H2Settings for auto::Http2Builder<'_, TokioExecutor> {
    fn gatekeeper_h2(&mut self, limits: &crate::config::Server) -> &mut Self {
        self.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
    }
}

impl H2Settings for hyper::server::conn::http2::Builder<TokioExecutor> {
    fn gatekeeper_h2(&mut self, limits: &crate::config::Server) -> &mut Self {
        self.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
    }
}

/// Serves an HTTP/2 connection (h2 by ALPN, or h2c by prior knowledge) until
/// hyper is done with it; true when it ended cleanly. Each stream is a task
/// of its own that hyper moves its service future into: boxed, so that what
/// is moved is a pointer, not the handler's whole state. `first_request`: the
/// connection is closed unless a request has begun by then.
async fn serve_h2<I>(
    stream: I,
    peer: SocketAddr,
    state: Arc<State>,
    shutdown: &CancellationToken,
    https: bool,
    first_request: Option<Duration>,
) -> bool
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.snapshot().rt.config.server.clone();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.gatekeeper_h2(&limits);
    let begun = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = {
        let begun = begun.clone();
        service_fn(move |req: Request<Incoming>| {
            begun.store(true, std::sync::atomic::Ordering::Relaxed);
            let state = state.clone();
            Box::pin(async move {
                let conn = Conn {
                    peer,
                    https,
                    https_port: state.https_port(),
                };
                let resp = pipeline::handle(req, &conn, &state).await;
                Ok::<_, Infallible>(resp)
            })
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(first_request.unwrap_or_default());
    tokio::pin!(deadline);
    let mut waiting = first_request.is_some();
    let r = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = deadline.as_mut(), if waiting => {
                if !begun.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request within header_timeout on an h2c connection");
                    return false;
                }
                waiting = false;
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
        }
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            false
        }
    }
}

/// Serves `stream` until hyper is done with it; true when it ended cleanly.
async fn serve_connection<I>(
    stream: I,
    peer: SocketAddr,
    state: Arc<State>,
    shutdown: &CancellationToken,
    https: bool,
    park: Option<Arc<park::Shared>>,
) -> bool
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.snapshot().rt.config.server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Plain connections have theirs enforced by the parking wrapper, cheaper.
        .header_read_timeout(park.is_none().then_some(limits.header_timeout))
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers);
    builder.http2().gatekeeper_h2(&limits);
    if park.as_ref().is_some_and(|p| p.served()) {
        builder = builder.http1_only();
    }
    let svc = service_fn(move |req: Request<Incoming>| {
        let guard = match &park {
            Some(p) => p.begin(&req),
            None => park::Guard::none(),
        };
        let state = state.clone();
        async move {
            let conn = Conn {
                peer,
                https,
                https_port: state.https_port(),
            };
            let resp = pipeline::handle(req, &conn, &state).await;
            guard.answered(&resp);
            Ok::<_, Infallible>(resp.map(|b| park::Tracked::new(b, guard)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            false
        }
    }
}

/// Runs `f` when dropped: the connection gauge must go down however the connection ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
