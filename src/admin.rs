//! The admin endpoint, on its own (loopback by default) listener:
//! `GET /metrics` (Prometheus text), `GET /status` (JSON), `GET /healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Serves the admin endpoint until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/status" => text(StatusCode::OK, "application/json", status_json(state).to_string()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// What the daemon sees right now; `gatekeeper status` reads this too.
pub fn status_json(state: &State) -> serde_json::Value {
    let snap = state.snapshot();
    let (rt, m) = (&snap.rt, &snap.maint);
    serde_json::json!({
        "maintenance": if m.active { "on" } else { "off" },
        "state": m.label(),
        "read_only": m.read_only,
        "paused": m.paused,
        "held": state.holds.count(),
        "scope": { "paths": m.paths, "hosts": m.hosts },
        "drained": snap.drained,
        "since": m.since.filter(|_| m.active).map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "message": m.message,
        "retry_after": m.retry_after,
        "toggle": rt.config.maintenance.toggle.display().to_string(),
        "config": rt.config.file.display().to_string(),
        "allowlist_entries": rt.allow.len(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "started": humantime::format_rfc3339_seconds(state.started_at).to_string(),
        "source": m.source.map(crate::maint::Source::label),
        "window": if m.present { Some(match m.window {
            crate::toggle::Window::Active => "active",
            crate::toggle::Window::Scheduled => "scheduled",
            crate::toggle::Window::Expired => "expired",
        }) } else { None },
        "until": m.until.map(|u| u.to_string()),
        "secret_set": m.secret.is_some(),
        "fleet": rt.config.fleet.as_ref().map(|f| {
            let v = snap.fleet.clone().unwrap_or_default();
            serde_json::json!({
                "key": f.key,
                "on": v.on,
                "connected": v.connected,
                "revision": v.revision,
                "last_change": v.last_change.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "reconnects": v.reconnects,
                "error": v.error,
            })
        }),
    })
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
