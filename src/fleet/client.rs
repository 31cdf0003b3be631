//! Talking to etcd: the client's options, the CLI calls, and errors that say
//! what went wrong.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::fmt_dur;
use crate::config::Fleet;

/// The whole of one CLI exchange with etcd (connect, authenticate, request).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP (and TLS) connect to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive on the watch connection: a ping after this much silence…
/// (etcd's default `--grpc-keepalive-min-time` is 5 s; pinging more often than
/// that makes it close the connection with "too_many_pings" every few pings.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// …and the connection counts as dead when the ping is not answered in time.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No answer: connection refused, timed out, closed, no leader.
    #[error("etcd unreachable at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// etcd answered, and said no (authentication, permissions, bad request).
    #[error("etcd at {endpoints} refused the request: {reason}")]
    Refused { endpoints: String, reason: String },
    /// The client could not be set up (TLS files, endpoint URLs).
    #[error("cannot talk to etcd at {endpoints}: {reason}")]
    Setup { endpoints: String, reason: String },
}

impl FleetError {
    /// Why, without the "etcd unreachable at <endpoints>" framing.
    pub fn reason(&self) -> &str {
        match self {
            FleetError::Unreachable { reason, .. }
            | FleetError::Refused { reason, .. }
            | FleetError::Setup { reason, .. } => reason,
        }
    }
}

/// Writes the key (CLI `on --fleet`); returns the new revision.
pub async fn put(cfg: &Fleet, value: &str) -> Result<i64, FleetError> {
    let key = cfg.key.clone();
    let value = value.to_string();
    call(cfg, |mut c| async move {
        let r = c.put(key, value, None).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    })
    .await
}

/// Deletes the key (CLI `off --fleet`); returns the revision after the delete.
pub async fn delete(cfg: &Fleet) -> Result<i64, FleetError> {
    let key = cfg.key.clone();
    call(cfg, |mut c| async move {
        let r = c.delete(key, None).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    })
    .await
}

/// Reads the key: its value (None when absent) and the store's current revision.
pub async fn get(cfg: &Fleet) -> Result<(Option<String>, i64), FleetError> {
    let key = cfg.key.clone();
    call(cfg, |mut c| async move {
        let r = c.get(key, None).await?;
        let value = r
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        Ok((value, r.header().map_or(0, |h| h.revision())))
    })
    .await
}

/// Connect and run `f`, the whole of it within `CLI_TIMEOUT`.
async fn call<T, F, Fut>(cfg: &Fleet, f: F) -> Result<T, FleetError>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + CLI_TIMEOUT;
    let work = async {
        let client = connect(cfg, false).await?;
        f(client).await.map_err(|e| classify(cfg, &e))
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(explain(cfg, e, deadline).await),
        Err(_) => Err(unreachable(cfg, format!("no answer within {}", fmt_dur(CLI_TIMEOUT)))),
    }
}

/// A client for `cfg`. Its channel connects lazily: the first request does.
pub(super) async fn connect(cfg: &Fleet, watch: bool) -> Result<Client, FleetError> {
    let opts = options(cfg, watch)?;
    Client::connect(&cfg.endpoints, Some(opts))
        .await
        .map_err(|e| classify(cfg, &e))
}

/// gRPC says little about a failed connection ("tcp connect error"): ask the
/// endpoints directly (a plain TCP connect, before `deadline` and within
/// 500 ms) so that the error says "connection refused", "timed out", or
/// which name does not resolve. Only on the failure path: a probe of a live
/// TLS endpoint would make etcd log a rejected handshake.
pub(super) async fn explain(cfg: &Fleet, e: FleetError, deadline: tokio::time::Instant) -> FleetError {
    let FleetError::Unreachable { endpoints, reason } = e else {
        return e;
    };
    let bound = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
    match tokio::time::timeout_at(bound, probe(&cfg.endpoints)).await {
        Ok(Err(why)) => FleetError::Unreachable { endpoints, reason: why },
        _ => FleetError::Unreachable { endpoints, reason },
    }
}

fn options(cfg: &Fleet, watch: bool) -> Result<ConnectOptions, FleetError> {
    // No per-request `with_timeout`: it would also cut the long-lived watch.
    // Every call is bounded by a `tokio::time::timeout` around it instead.
    let mut o = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    if watch {
        o = o
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // A member cut off from its cluster cancels the watch instead of
            // keeping it open and silent.
            .with_require_leader(true);
    }
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        o = o.with_user(u.clone(), p.clone()).with_auto_token_refresh(true);
    }
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        let setup = |reason: String| FleetError::Setup {
            endpoints: cfg.endpoints.join(","),
            reason,
        };
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| setup(format!("cannot read fleet.tls.{what} {}: {e}", p.display())))
        };
        let mut t = TlsOptions::new();
        if let Some(ca) = &cfg.ca {
            t = t.ca_certificate(Certificate::from_pem(read("ca", ca)?));
        }
        if let (Some(c), Some(k)) = (&cfg.cert, &cfg.client_key) {
            t = t.identity(Identity::from_pem(read("cert", c)?, read("key", k)?));
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

/// Ok once any endpoint accepts a TCP connection; else every endpoint's error.
async fn probe(endpoints: &[String]) -> Result<(), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut pending: FuturesUnordered<_> = endpoints
        .iter()
        .map(|e| async move {
            let (host, port) = host_port(e).ok_or_else(|| format!("{e:?} is not an endpoint URL"))?;
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(format!("connect {host}:{port}: {err}")),
                Err(_) => Err(format!(
                    "connect {host}:{port}: timed out after {}",
                    fmt_dur(CONNECT_TIMEOUT)
                )),
            }
        })
        .collect();
    let mut errors = Vec::new();
    while let Some(r) = pending.next().await {
        match r {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// "http://[::1]:2379" → ("::1", 2379); the scheme's port when none is given.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    Some((host, port))
}

pub(super) fn unreachable(cfg: &Fleet, reason: String) -> FleetError {
    FleetError::Unreachable {
        endpoints: cfg.endpoints.join(","),
        reason,
    }
}

/// etcd's answer "no" (permissions, authentication, bad request) apart from "no answer".
pub(super) fn classify(cfg: &Fleet, e: &etcd_client::Error) -> FleetError {
    let endpoints = cfg.endpoints.join(",");
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            // gRPC codes: 1 cancelled, 2 unknown, 4 deadline exceeded, 10 aborted, 14 unavailable.
            let code = s.code() as i32;
            let reason = if s.message().is_empty() {
                s.code().to_string()
            } else {
                s.message().to_string()
            };
            if matches!(code, 1 | 2 | 4 | 10 | 14) {
                FleetError::Unreachable { endpoints, reason }
            } else {
                FleetError::Refused { endpoints, reason }
            }
        }
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::InvalidMetadataValue(_) => FleetError::Setup {
            endpoints,
            reason: e.to_string(),
        },
        _ => FleetError::Unreachable {
            endpoints,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::OnError;
    use crate::fleet::testing::cfg;

    #[test]
    fn endpoints_to_probe() {
        assert_eq!(host_port("http://127.0.0.1:2379"), Some(("127.0.0.1".into(), 2379)));
        assert_eq!(host_port("https://[::1]:2379"), Some(("::1".into(), 2379)));
        assert_eq!(host_port("https://etcd.example"), Some(("etcd.example".into(), 443)));
        assert_eq!(host_port("not a url"), None);
    }

    #[tokio::test]
    async fn cli_calls_fail_fast_when_nothing_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut c = cfg(OnError::Keep);
        c.endpoints = vec![format!("http://127.0.0.1:{port}")];
        let t0 = Instant::now();
        let e = get(&c).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let text = e.to_string();
        assert!(text.contains("unreachable") && text.contains("refused"), "{text}");
        assert!(put(&c, "").await.is_err() && delete(&c).await.is_err());
    }
}
