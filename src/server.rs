//! Listeners and the per-request flow: accept (bounded by `max_connections`),
//! serve HTTP/1.1 and h2c on one socket, load one snapshot, resolve the
//! client, decide, answer or forward, log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bypass;
use crate::client_ip;
use crate::decision::{decide, under_bypass_path, Decision, Facts};
use crate::framing;
use crate::page;
use crate::park;
use crate::proxy::{self, boxed, Body, Origin};
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
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
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
                            serve_connection(tls_stream, peer, state.clone(), &shutdown, true, None).await;
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

fn count_open(state: &State) -> impl Drop + '_ {
    let open = &state.metrics.open_connections;
    open.inc();
    scopeguard(move || {
        open.dec();
    })
}

/// A plain-TCP connection: served by hyper while active, parked in between
/// (see [`park`]) so that an idle keep-alive connection holds no HTTP buffers.
async fn serve_plain(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>, shutdown: CancellationToken) {
    let _open = count_open(&state);
    let shared = Arc::new(park::Shared::default());
    loop {
        let header_timeout = state.snapshot().rt.config.server.header_timeout;
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
        let (true, Some(s)) = (clean, parked) else { return };
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
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
            let resp = handle(req, peer, &state, https).await;
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

/// One request, start to end. Never fails: every problem becomes a response.
pub async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &State, https: bool) -> Response<Body> {
    // SECURITY: before anything reads the request: what a proxy in front may frame otherwise is refused.
    if let Err(e) = framing::check(req.version(), req.headers()) {
        tracing::debug!(%peer, error = %e, "request refused: ambiguous framing");
        let mut r = boxed(page::error_response(e.status()));
        r.headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        return r;
    }
    let start = Instant::now();
    let snap = state.snapshot();
    let (rt, m) = (&snap.rt, &snap.maint);
    let cfg = &rt.config;

    let peer_ip = canonical(peer.ip());
    let resolved = client_ip::resolve(peer_ip, req.headers(), &rt.trusted, &cfg.clients.header);
    let allowed = resolved.client.is_some_and(|ip| rt.allow.contains(ip));
    let path = req.uri().path();
    let bp = &cfg.bypass;
    let on_bypass_path = under_bypass_path(path, &cfg.maintenance.bypass_paths);
    // First, so that nothing — the bypass link's cookie least of all — is handed out over plain HTTP.
    if !https {
        if let Some(tls) = cfg.tls.as_ref().filter(|t| t.redirect_http) {
            if !on_bypass_path {
                if let Some(r) = redirect_to_https(&req, tls, state.https_port()) {
                    return r;
                }
            }
        }
    }
    // The bypass link: a right token gets the cookie; a wrong one the ordinary answer.
    if let (true, Some(secret)) = (m.present, &m.secret) {
        if let Some(token) = path.strip_prefix(bp.path.as_str()) {
            if bypass::token_matches(secret, token) {
                return bypass_link(&req, secret, bp, https, state, peer, start);
            }
        }
    }
    let credential = m.active
        && m.secret.as_deref().is_some_and(|secret| {
            let header_ok = req
                .headers()
                .get(&bp.header)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| bypass::token_matches(secret, t));
            header_ok
                || bypass::cookie(req.headers(), &bp.cookie_name)
                    .is_some_and(|c| bypass::verify(secret, c, jiff::Timestamp::now().as_second()))
        });
    let get_or_head = matches!(*req.method(), Method::GET | Method::HEAD);
    let asset = if m.active && get_or_head {
        rt.pages.asset(path)
    } else {
        None
    };
    let decision = decide(Facts {
        maintenance: m.active,
        client_allowed: allowed,
        bypass_path: m.active && on_bypass_path,
        credential,
        asset: asset.is_some(),
    });

    let method = req.method().clone();
    let log_path = cfg.log.access.then(|| req.uri().path().to_string());
    let (resp, outcome) = match (decision, asset) {
        (Decision::Page, _) | (Decision::Asset, None) => {
            let accept = req.headers().get(http::header::ACCEPT);
            let retry = m.retry_after_now();
            let resp = if m.until.is_some() {
                // The countdown changes every second; the page is rendered for this moment.
                let r = crate::state::render_at(&rt.pages, &m.message, retry, m.until);
                page::maintenance_response(&r, &method, accept, retry)
            } else {
                page::maintenance_response(&m.rendered, &method, accept, retry)
            };
            (boxed(resp), None)
        }
        (Decision::Asset, Some(a)) => (boxed(page::asset_response(a, &method)), None),
        (Decision::Proxy { bypass }, _) => {
            let mut req = req;
            // SECURITY: bypass credentials are gatekeeper's business, never the app's.
            req.headers_mut().remove(&bp.header);
            bypass::strip_cookie(req.headers_mut(), &bp.cookie_name);
            let origin = Origin {
                peer_trusted: rt.trusted.contains(peer_ip),
                resolved: &resolved,
                https,
            };
            // Boxed: hyper keeps a slot the size of this future for every
            // connection; the forwarding state is large. Boxed in a statement of
            // its own: a temporary in the awaiting statement would keep its
            // space in this future's state even after it is moved into the box.
            let forward = Box::pin(proxy::forward(&rt.upstream, cfg, req, &origin, bypass));
            let (r, o) = forward.await;
            (r, Some(o))
        }
    };
    let elapsed = start.elapsed();
    state
        .metrics
        .request(decision, resp.status().as_u16(), outcome, elapsed.as_secs_f64());
    if let Some(path) = log_path {
        let client = resolved.client.map_or_else(|| "unknown".to_string(), |c| c.to_string());
        tracing::info!(
            target: "access",
            client = %client,
            peer = %peer,
            method = %method,
            path = %path,
            status = resp.status().as_u16(),
            decision = decision.label(),
            upstream = outcome.map_or("-", proxy::Outcome::label),
            ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        );
    }
    resp
}

/// An IPv4-mapped IPv6 peer (dual-stack socket) is the IPv4 address it carries.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
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

/// 308 to the same URL on https (the first TLS listener's port when it is not 443).
fn redirect_to_https(req: &Request<Incoming>, tls: &crate::config::Tls, bound: Option<u16>) -> Option<Response<Body>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let authority: http::uri::Authority = host.parse().ok()?;
    // The port actually bound (the config may say 0), else the configured one.
    let port = bound.or_else(|| tls.listen.first().map(|a| a.port())).unwrap_or(443);
    // `Authority::host` keeps an IPv6 address's brackets.
    let target_host = match port {
        443 => authority.host().to_string(),
        p => format!("{}:{p}", authority.host()),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = http::HeaderValue::from_str(&format!("https://{target_host}{pq}")).ok()?;
    let mut r = boxed(page::error_response(http::StatusCode::PERMANENT_REDIRECT));
    r.headers_mut().insert(http::header::LOCATION, location);
    Some(r)
}

/// 303 to `next` (same-site only) or "/", with a fresh signed bypass cookie.
fn bypass_link(
    req: &Request<Incoming>,
    secret: &str,
    bp: &crate::config::Bypass,
    https: bool,
    state: &State,
    peer: SocketAddr,
    start: Instant,
) -> Response<Body> {
    let ttl = bp.cookie_ttl.as_secs().max(1);
    let expires = jiff::Timestamp::now()
        .as_second()
        .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    let value = bypass::sign(secret, expires);
    let target = bypass::redirect_target(req.uri().query());
    let mut r = boxed(page::error_response(http::StatusCode::SEE_OTHER));
    if let Ok(loc) = http::HeaderValue::from_str(&target) {
        r.headers_mut().insert(http::header::LOCATION, loc);
    }
    if let Some(c) = bypass::set_cookie(&bp.cookie_name, &value, ttl, https) {
        r.headers_mut().insert(http::header::SET_COOKIE, c);
    }
    state.metrics.request(
        Decision::Proxy { bypass: true },
        303,
        None,
        start.elapsed().as_secs_f64(),
    );
    // The token is a credential: never log the path that carries it.
    tracing::info!(target: "access", peer = %peer, method = %req.method(), path = %bp.path, status = 303, decision = "bypass-link");
    r
}
