//! Listeners and connections: bind, accept (bounded by `max_connections`),
//! serve HTTP/1.1 and h2c on one socket (and h2 over TLS), park idle
//! keep-alive connections; every request goes to [`crate::pipeline::handle`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// What one worker's connections share: the daemon's state and a stop signal
/// of the worker's own (a child of the daemon's). Every request clones the
/// handle and every poll of a connection checks the signal: per worker, both
/// live on cache lines the other workers never write.
pub struct Local {
    pub state: Arc<State>,
    pub shutdown: CancellationToken,
}

impl Local {
    /// The handle for worker threads; `shutdown` is the daemon's.
    pub fn new(state: Arc<State>, shutdown: &CancellationToken) -> Arc<Local> {
        Arc::new(Local {
            state,
            shutdown: shutdown.child_token(),
        })
    }
}

/// Accepts on `listener` until the worker stops, serving each connection in `tracker`.
pub async fn accept_loop(
    listener: TcpListener,
    local: Arc<Local>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let shutdown = &local.shutdown;
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
        let local = local.clone();
        let tls = tls.clone();
        // Two spawns, not one future with two arms: a task is as large as its
        // future, and every plain connection would carry the TLS arm's size.
        match tls {
            None => {
                tracker.spawn(serve_plain(stream, peer, local, permit));
            }
            Some(acceptor) => {
                tracker.spawn(async move {
                    let (state, shutdown) = (&local.state, &local.shutdown);
                    // The handshake counts against the header timeout: a silent client is dropped.
                    let limit = state.snapshot().rt.config.server.header_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let _open = count_open(state);
                            // HTTP/2 ends its streams itself; an HTTP/1.1 connection
                            // may end with a body unread: kept for a lingering close.
                            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_h2(tls_stream, peer, &local, true, None).await;
                            } else {
                                let io = linger::Returning::new(tls_stream);
                                let slot = io.slot();
                                serve_connection(io, peer, &local, true, None, true).await;
                                if let Some(s) = linger::take(&slot) {
                                    let linger = state.snapshot().rt.config.server.linger;
                                    linger::drain(s, linger, &state.metrics, shutdown).await;
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
    open.inc();
    heap::activated();
    scopeguard(move || {
        open.dec();
        heap::deactivated();
    })
}

/// A plain-TCP connection: served by hyper while active, parked in between
/// (see [`park`]) so that an idle keep-alive connection holds no HTTP buffers.
///
/// This is the connection's task, and a task is as large as its largest
/// state: everything of the active phase is boxed ([`serve_active`]), so a
/// parked connection's task holds the socket, a few handles and
/// [`park::wait`]'s timer and shutdown waiter (docs/perf-idle.md). An
/// `async move` block, not an `async fn`: the latter keeps a second copy of
/// its arguments in every state.
#[allow(clippy::manual_async_fn)] // deliberate: see above
fn serve_plain(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: Arc<Local>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        // The permit is held (captured) until the connection ends.
        let _ = &permit;
        let _open = count_open(&local.state);
        let mut served = false;
        loop {
            let header_timeout = local.state.snapshot().rt.config.server.header_timeout;
            match Box::pin(serve_active(stream, peer, &local, served, header_timeout)).await {
                Some(s) => stream = s,
                None => return,
            }
            served = true;
            let woke = {
                // hyper's buffers are freed: this connection counts towards a
                // wave's end. Undone by a guard, should the task be dropped here.
                heap::deactivated();
                local.state.metrics.idle_connections.inc();
                let _idle = scopeguard(|| {
                    local.state.metrics.idle_connections.dec();
                    heap::activated();
                });
                // Idle keep-alive is bounded by header_timeout, as before parking.
                park::wait(&stream, header_timeout, &local.shutdown).await
            };
            if !woke {
                return;
            }
        }
    }
}

/// Serves a plain connection with hyper until it parks (returns the socket)
/// or ends (a lingering close first, if the client may still be sending).
/// `served`: it has served a request before, so it speaks HTTP/1.1; otherwise
/// its first bytes tell (see [`sniff`]).
async fn serve_active(
    stream: TcpStream,
    peer: SocketAddr,
    local: &Arc<Local>,
    served: bool,
    header_timeout: Duration,
) -> Option<TcpStream> {
    let (state, shutdown) = (&local.state, &local.shutdown);
    let started = tokio::time::Instant::now();
    let shared = Arc::new(park::Shared::new());
    shared.mark_waiting();
    let proto = if served {
        // Back from parking: HTTP/1.1 requests came before, so HTTP/1.1 it is.
        Proto::Http1
    } else {
        sniff(&stream, header_timeout, shutdown).await?
    };
    if proto == Proto::Http2 {
        // h2c never parks: hyper's HTTP/2 server, with the first request due
        // within what is left of the header timeout.
        let left = header_timeout.saturating_sub(started.elapsed());
        serve_h2(stream, peer, local, false, Some(left)).await;
        return None;
    }
    let io = park::Parkable::new(stream, shared.clone(), header_timeout);
    let clean = serve_connection(io, peer, local, false, Some(shared.clone()), proto == Proto::Auto).await;
    let parked = shared.take_parked();
    if let (true, Some(s)) = (clean, parked) {
        return Some(s);
    }
    if let Some(s) = shared.take_closing() {
        let linger = state.snapshot().rt.config.server.linger;
        linger::drain(s, linger, &state.metrics, shutdown).await;
    }
    None
}

/// gatekeeper's HTTP/1.1 settings, on hyper's builder or on hyper-util's view
/// of it (`Auto`): the two share no trait.
macro_rules! http1_settings {
    ($builder:expr, $limits:expr, $header_timeout:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($header_timeout)
            .max_buf_size($limits.max_header_size.max(8192))
            .max_headers($limits.max_headers)
    };
}

/// gatekeeper's HTTP/2 settings, likewise.
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from($limits.max_header_size).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
    };
}

/// Which of hyper's servers a connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): [`serve_h2`].
    Http2,
    /// hyper-util's: reads the first bytes itself (TLS, and a plain connection
    /// whose first bytes left it open).
    Auto,
}

/// HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells h2c from HTTP/1.1 by the first bytes of a new plain connection,
/// peeked (they stay for hyper): hyper-util's version sniffing would wrap every
/// later read and poll of the connection. None: nothing came within `limit`, or
/// the daemon stops.
async fn sniff(stream: &TcpStream, limit: Duration, shutdown: &CancellationToken) -> Option<Proto> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let n = tokio::select! {
        r = tokio::time::timeout(limit, stream.peek(&mut buf)) => match r {
            Ok(Ok(n)) => n,
            _ => return None,
        },
        _ = shutdown.cancelled() => return None,
    };
    Some(match buf.get(..n) {
        // The client closed: hyper ends cleanly on it.
        _ if n == 0 => Proto::Http1,
        Some(b) if b == H2_PREFACE => Proto::Http2,
        // Part of the preface so far (a client writing it piecewise): let hyper-util read on.
        Some(b) if H2_PREFACE.starts_with(b) => Proto::Auto,
        _ => Proto::Http1,
    })
}

/// Serves an HTTP/2 connection (h2 by ALPN, or h2c by prior knowledge) until
/// hyper is done with it; true when it ended cleanly. Each stream is a task
/// of its own that hyper moves its service future into: boxed, so that what
/// is moved is a pointer, not the handler's whole state. `first_request`: the
/// connection is closed unless a request has begun by then.
async fn serve_h2<I>(
    stream: I,
    peer: SocketAddr,
    local: &Arc<Local>,
    https: bool,
    first_request: Option<Duration>,
) -> bool
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (state, shutdown) = (&local.state, &local.shutdown);
    let limits = state.snapshot().rt.config.server.clone();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2_settings!(builder, limits);
    let begun = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = {
        let (begun, local) = (begun.clone(), local.clone());
        let conn = Conn::new(peer, https, state.https_port());
        service_fn(move |req: Request<Incoming>| {
            begun.store(true, std::sync::atomic::Ordering::Relaxed);
            let (local, conn) = (local.clone(), conn.clone());
            Box::pin(async move {
                let resp = pipeline::handle(req, &conn, &local.state).await;
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

/// Serves `stream` with HTTP/1.1 (HTTP/2 has [`serve_h2`]) until hyper is done
/// with it; true when it ended cleanly. `auto`: hyper-util's server, which
/// reads the first bytes itself and may still find HTTP/2 (TLS without ALPN
/// h2, and a plain connection whose first bytes left it open).
async fn serve_connection<I>(
    stream: I,
    peer: SocketAddr,
    local: &Arc<Local>,
    https: bool,
    park: Option<Arc<park::Shared>>,
    auto: bool,
) -> bool
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (state, shutdown) = (&local.state, &local.shutdown);
    let limits = state.snapshot().rt.config.server.clone();
    // Plain connections have their header timeout enforced by the parking wrapper, cheaper.
    let header_timeout = park.is_none().then_some(limits.header_timeout);
    let local = local.clone();
    let conn = Conn::new(peer, https, state.https_port());
    let svc = service_fn(move |req: Request<Incoming>| {
        let guard = match &park {
            Some(p) => p.begin(&req),
            None => park::Guard::none(),
        };
        let (local, conn) = (local.clone(), conn.clone());
        async move {
            let resp = pipeline::handle(req, &conn, &local.state).await;
            guard.answered(&resp);
            Ok::<_, Infallible>(resp.map(|b| park::Tracked::new(b, guard)))
        }
    });
    let io = TokioIo::new(stream);
    let r = if auto {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        http1_settings!(builder.http1(), limits, header_timeout);
        http2_settings!(builder.http2(), limits);
        let conn = builder.serve_connection_with_upgrades(io, svc);
        drive(conn, shutdown, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        http1_settings!(builder, limits, header_timeout);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        drive(conn, shutdown, |c| c.graceful_shutdown())
            .await
            .map_err(Into::into)
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            false
        }
    }
}

/// Runs a connection to its end; when the daemon stops, asks it to finish
/// gracefully (answer what is in flight, take nothing new) and waits for that.
async fn drive<C, E>(conn: C, shutdown: &CancellationToken, graceful: fn(Pin<&mut C>)) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, C, D, Fut>(_: impl FnOnce(A, B, C, D) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// 10,000 idle connections are 10,000 of these tasks. tokio allocates a
    /// task as its future plus ~104 bytes (header, scheduler, id, trailer),
    /// rounded up to 128; `TaskTracker` adds 8: up to 400 bytes the task takes
    /// 512 (it took 896 before the parked state was made small).
    #[test]
    fn a_parked_connection_task_fits_in_512_bytes() {
        let plain = output_size(serve_plain);
        assert!(plain <= 400, "serve_plain's future is {plain} bytes");
        let wait =
            output_size(|a: &'static TcpStream, b: Duration, c: &'static CancellationToken, ()| park::wait(a, b, c));
        assert!(wait <= 248, "park::wait's future is {wait} bytes");
    }
}
