//! One switch for a fleet, through etcd (v3): watch one key, publish its state.
//!
//! Every instance reads the key once, then *watches* it from the revision right
//! after that read: a write reaches every instance as a pushed event, in
//! milliseconds, with no polling. Each change goes to `State::set_fleet` (the
//! request path only ever reads that in-memory snapshot) and then into
//! `<toggle>.fleet`, so an instance that restarts while etcd is unreachable
//! starts in the last state it knew.
//!
//! A lost connection (etcd down, a dead peer noticed by HTTP/2 keep-alive, a
//! watch canceled for want of a leader) is retried in the background with a
//! bounded, jittered backoff; serving never waits for it. Each new session
//! re-reads the key first — whatever happened meanwhile is seen at once — and
//! resumes the watch right after the revision of that read, so no change is
//! missed. A watch whose start revision was compacted away is simply re-read.
//! While etcd is unreachable `on_error` decides: keep the last known state,
//! or fail closed (`on`) or open (`off`).
//!
//! The CLI calls (`put`, `delete`, `get`) are bounded as a whole by
//! [`CLI_TIMEOUT`], so `gatekeeper on --fleet` fails clearly within seconds
//! when etcd is unreachable.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Client, ConnectOptions, EventType, Identity, TlsOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Fleet, OnError};
use crate::maint::{onoff, FleetView, Source};
use crate::state::{State, Via};
use crate::watch::Wake;

/// The whole of one CLI exchange with etcd (connect, authenticate, request).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP (and TLS) connect to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request of the daemon's session: connect + read, or creating the watch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keep-alive on the watch connection: a ping after this much silence…
/// (etcd's default `--grpc-keepalive-min-time` is 5 s; pinging more often than
/// that makes it close the connection with "too_many_pings" every few pings.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// …and the connection counts as dead when the ping is not answered in time.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: from this, doubling…
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// …up to this (each wait is jittered to 50–100 % of the step).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A watch that lived this long resets the backoff to its minimum.
const STABLE: Duration = Duration::from_secs(5);

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

/// Where the last known fleet state is kept: `<toggle>.fleet`.
pub fn persist_path(toggle: &Path) -> PathBuf {
    let mut p = toggle.as_os_str().to_owned();
    p.push(".fleet");
    PathBuf::from(p)
}

/// The last known fleet state from `<toggle>.fleet`, marked disconnected, with `on_error` applied.
pub fn restore(cfg: &Fleet, toggle: &Path) -> Option<FleetView> {
    let path = persist_path(toggle);
    let known = load_known(cfg, &path, true);
    if let Some(k) = &known {
        tracing::info!(
            source = "fleet",
            file = %path.display(),
            key = %cfg.key,
            revision = k.revision,
            "last known fleet state: {}",
            onoff(k.on)
        );
    }
    if known.is_none() && cfg.on_error == OnError::Keep {
        return None;
    }
    let known = known.unwrap_or_default();
    let now = SystemTime::now();
    let view = derive_view(
        cfg.on_error,
        &known,
        false,
        Some("not connected to etcd yet".to_string()),
        0,
        now,
    );
    if cfg.on_error != OnError::Keep && view.on != known.on {
        tracing::info!(
            source = "fleet",
            on_error = on_error_name(cfg.on_error),
            "until etcd answers, maintenance is {} (on_error)",
            onoff(view.on)
        );
    }
    Some(view)
}

/// Starts watching the key; every change goes to `state.set_fleet` followed by `wake.notify_one()`.
pub fn spawn(cfg: Fleet, toggle: PathBuf, state: Arc<State>, wake: Wake, shutdown: CancellationToken) {
    let persist = persist_path(&toggle);
    // `restore` has already said what is wrong with the file, if anything.
    let known = load_known(&cfg, &persist, false).unwrap_or_default();
    let published = state.snapshot().fleet.clone();
    let runner = Runner {
        cfg,
        persist,
        state,
        wake,
        shutdown,
        known,
        connected: false,
        error: Some("not connected to etcd yet".to_string()),
        reconnects: 0,
        ever_connected: false,
        outage_logged: false,
        lost_at: SystemTime::now(),
        lost_instant: Instant::now(),
        persist_warned: false,
        published,
    };
    tokio::spawn(runner.run());
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

// ---------------------------------------------------------------------------
// Talking to etcd
// ---------------------------------------------------------------------------

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
async fn connect(cfg: &Fleet, watch: bool) -> Result<Client, FleetError> {
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
async fn explain(cfg: &Fleet, e: FleetError, deadline: tokio::time::Instant) -> FleetError {
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

fn unreachable(cfg: &Fleet, reason: String) -> FleetError {
    FleetError::Unreachable {
        endpoints: cfg.endpoints.join(","),
        reason,
    }
}

/// etcd's answer "no" (permissions, authentication, bad request) apart from "no answer".
fn classify(cfg: &Fleet, e: &etcd_client::Error) -> FleetError {
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

// ---------------------------------------------------------------------------
// The last known state, and what it means while etcd is unreachable
// ---------------------------------------------------------------------------

/// What etcd last said about the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    on: bool,
    value: Option<String>,
    /// The revision of the key's last change seen (its delete's, when off).
    revision: i64,
    last_change: Option<SystemTime>,
}

/// `<toggle>.fleet`, as written.
#[derive(Serialize, Deserialize)]
struct Persisted {
    key: String,
    on: bool,
    #[serde(default)]
    value: Option<String>,
    revision: i64,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    last_change_ms: Option<u64>,
}

fn load_known(cfg: &Fleet, path: &Path, log: bool) -> Option<Known> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            if log {
                tracing::warn!(source = "fleet", file = %path.display(), error = %e, "cannot read the last known fleet state");
            }
            return None;
        }
    };
    let p: Persisted = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            if log {
                tracing::warn!(source = "fleet", file = %path.display(), error = %e, "ignoring a malformed last known fleet state");
            }
            return None;
        }
    };
    if p.key != cfg.key {
        if log {
            tracing::info!(
                source = "fleet",
                file = %path.display(),
                "ignoring the last known fleet state: it is for key {:?}, the config says {:?}",
                p.key,
                cfg.key
            );
        }
        return None;
    }
    Some(Known {
        on: p.on,
        value: if p.on { p.value } else { None },
        revision: p.revision,
        last_change: p.last_change_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    })
}

/// Writes `<toggle>.fleet` atomically: a temp file in the same directory, renamed into place.
fn save_known(key: &str, known: &Known, path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let p = Persisted {
        key: key.to_string(),
        on: known.on,
        value: known.value.clone(),
        revision: known.revision,
        last_change_ms: known
            .last_change
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut tmp = tempfile::Builder::new().prefix(".gatekeeper-fleet-").tempfile_in(dir)?;
    serde_json::to_writer(&mut tmp, &p)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    // The value may carry a bypass secret: only the daemon's user reads this file.
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The view published to the state: etcd's word while connected; `on_error` applied otherwise.
fn derive_view(
    on_error: OnError,
    known: &Known,
    connected: bool,
    error: Option<String>,
    reconnects: u64,
    lost_at: SystemTime,
) -> FleetView {
    let (on, value, last_change) = match (connected, on_error) {
        (true, _) | (false, OnError::Keep) => (known.on, known.value.clone(), known.last_change),
        (false, OnError::On) if known.on => (true, known.value.clone(), known.last_change),
        (false, OnError::On) => (true, None, Some(lost_at)),
        (false, OnError::Off) if known.on => (false, None, Some(lost_at)),
        (false, OnError::Off) => (false, None, known.last_change),
    };
    FleetView {
        on,
        value: if on { value } else { None },
        revision: known.revision,
        connected,
        last_change,
        reconnects,
        error: if connected { None } else { error },
    }
}

// ---------------------------------------------------------------------------
// The daemon's watcher
// ---------------------------------------------------------------------------

struct Runner {
    cfg: Fleet,
    persist: PathBuf,
    state: Arc<State>,
    wake: Wake,
    shutdown: CancellationToken,
    known: Known,
    connected: bool,
    error: Option<String>,
    reconnects: u64,
    ever_connected: bool,
    /// The current outage has been logged (once per outage, not per retry).
    outage_logged: bool,
    lost_at: SystemTime,
    lost_instant: Instant,
    persist_warned: bool,
    published: Option<FleetView>,
}

/// Why a session ended.
enum End {
    /// The watch's start revision was compacted (or a running watch fell behind
    /// compaction, when the flag says it had been established): read again right away.
    Compacted(i64, bool),
    /// Connection or request failed; with how long the watch had been running.
    Failed(String, Option<Duration>),
}

impl Runner {
    async fn run(mut self) {
        let shutdown = self.shutdown.clone();
        let mut backoff = BACKOFF_MIN;
        let mut compactions = 0u32;
        // Ends only at shutdown; every round either runs a session or waits a bounded backoff.
        loop {
            let end = tokio::select! {
                _ = shutdown.cancelled() => return,
                end = self.session() => end,
            };
            let (reason, watched) = match end {
                // A re-read fixes a compacted start revision; a second failed start in a
                // row waits like a failure.
                End::Compacted(rev, established) if established || compactions == 0 => {
                    compactions = if established { 0 } else { compactions + 1 };
                    tracing::info!(
                        source = "fleet",
                        compact_revision = rev,
                        "watch start revision was compacted; reading the key again"
                    );
                    continue;
                }
                End::Compacted(rev, _) => (format!("watch start revision compacted (at {rev})"), None),
                End::Failed(reason, watched) => (reason, watched),
            };
            compactions = 0;
            if watched.is_some_and(|w| w >= STABLE) {
                backoff = BACKOFF_MIN;
            }
            self.lost(reason);
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Connect, read, watch until something breaks. Never returns while the watch is healthy.
    async fn session(&mut self) -> End {
        let key = self.cfg.key.clone();
        let fail = |e: FleetError| End::Failed(e.reason().to_string(), None);
        let read = async {
            let mut client = connect(&self.cfg, true).await?;
            let r = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| classify(&self.cfg, &e))?;
            Ok::<_, FleetError>((client, r))
        };
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let (mut client, resp) = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return fail(explain(&self.cfg, e, deadline + Duration::from_millis(500)).await),
            Err(_) => {
                return fail(unreachable(
                    &self.cfg,
                    format!("no answer within {}", fmt_dur(REQUEST_TIMEOUT)),
                ))
            }
        };
        let rev = resp.header().map_or(0, |h| h.revision());
        let kv = resp.kvs().first();
        let value = kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        let changed_at = kv.map(|kv| kv.mod_revision());

        // Watch from right after the read: nothing between the two is missed.
        let watch = async {
            let mut stream = client
                .watch(key.as_str(), Some(WatchOptions::new().with_start_revision(rev + 1)))
                .await
                .map_err(|e| classify(&self.cfg, &e))?;
            loop {
                match stream.message().await {
                    Ok(Some(r)) if r.created() => return Ok(Ok(stream)),
                    Ok(Some(r)) if r.compact_revision() > 0 => return Ok(Err(r.compact_revision())),
                    Ok(Some(r)) if r.canceled() => {
                        return Err(unreachable(&self.cfg, format!("watch refused: {}", r.cancel_reason())))
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(unreachable(&self.cfg, "watch stream closed".into())),
                    Err(e) => return Err(classify(&self.cfg, &e)),
                }
            }
        };
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, watch).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(compacted))) => return End::Compacted(compacted, false),
            Ok(Err(e)) => return fail(e),
            Err(_) => return fail(unreachable(&self.cfg, "watch not established in time".into())),
        };
        self.connected_at(rev);
        self.learn(value, changed_at.unwrap_or(rev), "read", true);
        let since = Instant::now();

        loop {
            let msg = stream.message().await;
            let watched = Some(since.elapsed());
            match msg {
                Ok(Some(r)) => {
                    if r.compact_revision() > 0 {
                        return End::Compacted(r.compact_revision(), true);
                    }
                    if r.canceled() {
                        return End::Failed(format!("watch canceled by etcd: {}", r.cancel_reason()), watched);
                    }
                    for ev in r.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let value = match ev.event_type() {
                            EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
                            EventType::Delete => None,
                        };
                        self.learn(value, kv.mod_revision(), "watch", false);
                    }
                }
                Ok(None) => return End::Failed("watch stream closed by etcd".into(), watched),
                Err(e) => {
                    let reason = classify(&self.cfg, &e).reason().to_string();
                    return End::Failed(format!("watch connection broken: {reason}"), watched);
                }
            }
        }
    }

    /// The session is up: log it (the first time, or once after an outage) and publish.
    fn connected_at(&mut self, rev: i64) {
        if self.ever_connected && !self.connected {
            self.reconnects += 1;
        }
        if !self.ever_connected {
            tracing::info!(
                source = "fleet",
                key = %self.cfg.key,
                endpoints = %self.cfg.endpoints.join(","),
                revision = rev,
                "watching the fleet key in etcd"
            );
        } else if self.outage_logged {
            tracing::info!(
                source = "fleet",
                key = %self.cfg.key,
                revision = rev,
                down_for = %fmt_dur(round_ms(self.lost_instant.elapsed())),
                "connection to etcd regained"
            );
        }
        if self.known.revision > rev && rev > 0 {
            tracing::warn!(
                source = "fleet",
                last_seen = self.known.revision,
                revision = rev,
                "etcd's revision went backwards (restored from an older backup?); following it"
            );
        }
        self.ever_connected = true;
        self.outage_logged = false;
        self.connected = true;
        self.error = None;
    }

    /// The session broke: log once per outage, apply `on_error`.
    fn lost(&mut self, reason: String) {
        if self.connected || !self.outage_logged {
            self.lost_at = SystemTime::now();
            self.lost_instant = Instant::now();
            let policy = match self.cfg.on_error {
                OnError::Keep => format!("keeping the last known state ({})", onoff(self.known.on)),
                OnError::On => "on_error = \"on\": maintenance on until it is back".to_string(),
                OnError::Off => "on_error = \"off\": fleet maintenance off until it is back".to_string(),
            };
            let what = if self.ever_connected {
                "lost the connection to etcd"
            } else {
                "cannot reach etcd"
            };
            tracing::warn!(
                source = "fleet",
                key = %self.cfg.key,
                endpoints = %self.cfg.endpoints.join(","),
                error = %reason,
                "{what}; retrying in the background; {policy}"
            );
            self.outage_logged = true;
        } else {
            tracing::debug!(source = "fleet", error = %reason, "etcd still unreachable");
        }
        self.connected = false;
        self.error = Some(reason);
        self.publish("etcd unreachable");
    }

    /// etcd said the key is `value` (None: absent) as of revision `rev`.
    fn learn(&mut self, value: Option<String>, rev: i64, cause: &'static str, from_read: bool) {
        let on = value.is_some();
        let mut next = self.known.clone();
        if on != next.on || value != next.value {
            next = Known {
                on,
                value,
                revision: rev,
                last_change: Some(SystemTime::now()),
            };
        } else if !(from_read && !on && next.revision > 0) {
            // (A re-read of a still absent key keeps the revision of its delete.)
            next.revision = rev;
        }
        let changed = next != self.known;
        self.known = next;
        self.publish(cause);
        if changed {
            self.save();
        }
    }

    fn save(&mut self) {
        match save_known(&self.cfg.key, &self.known, &self.persist) {
            Ok(()) => self.persist_warned = false,
            Err(e) if !self.persist_warned => {
                self.persist_warned = true;
                tracing::warn!(
                    source = "fleet",
                    file = %self.persist.display(),
                    error = %e,
                    "cannot keep the last known fleet state; a restart during an etcd outage will not know it"
                );
            }
            Err(_) => {}
        }
    }

    /// Hands the current view to the state (when it differs from the last one) and logs a flip.
    fn publish(&mut self, cause: &'static str) {
        let view = derive_view(
            self.cfg.on_error,
            &self.known,
            self.connected,
            self.error.clone(),
            self.reconnects,
            self.lost_at,
        );
        if self.published.as_ref() == Some(&view) {
            return;
        }
        let prev = self.published.replace(view.clone());
        let flip = self.state.set_fleet(view.clone());
        self.wake.notify_one();
        let snap = self.state.snapshot();
        let from_fleet = snap.maint.source == Some(Source::Fleet);
        let settings_changed = from_fleet && prev.as_ref().is_some_and(|p| p.on && p.value != view.value);
        flip.log(
            Via::Fleet {
                key: &self.cfg.key,
                revision: view.revision,
            },
            cause,
            settings_changed,
        );
        if from_fleet && prev.as_ref().map(|p| &p.value) != Some(&view.value) {
            if let Some(w) = &snap.maint.warning {
                tracing::warn!(source = "fleet", key = %self.cfg.key, revision = view.revision, "{w}");
            }
        }
    }
}

/// 50–100 % of `d`, so that a fleet does not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    d.mul_f64(0.5 + 0.5 * r)
}

fn on_error_name(o: OnError) -> &'static str {
    match o {
        OnError::Keep => "keep",
        OnError::On => "on",
        OnError::Off => "off",
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(on_error: OnError) -> Fleet {
        Fleet {
            endpoints: vec!["http://127.0.0.1:1".into()],
            key: "/gatekeeper/maintenance".into(),
            on_error,
            username: None,
            password: None,
            ca: None,
            cert: None,
            client_key: None,
        }
    }

    fn known_on() -> Known {
        Known {
            on: true,
            value: Some("message = \"db upgrade\"\n".into()),
            revision: 42,
            last_change: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        }
    }

    #[test]
    fn persist_path_is_next_to_the_toggle() {
        assert_eq!(
            persist_path(Path::new("/var/lib/gatekeeper/maintenance-mode-on")),
            PathBuf::from("/var/lib/gatekeeper/maintenance-mode-on.fleet")
        );
    }

    #[test]
    fn persisted_state_round_trips_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let toggle = dir.path().join("maintenance-mode-on");
        let path = persist_path(&toggle);
        let c = cfg(OnError::Keep);
        save_known(&c.key, &known_on(), &path).unwrap();
        assert_eq!(load_known(&c, &path, true), Some(known_on()));
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("maintenance-mode-on.fleet")]);

        let v = restore(&c, &toggle).unwrap();
        assert!(v.on && !v.connected && v.error.is_some());
        assert_eq!((v.value.as_deref(), v.revision), (known_on().value.as_deref(), 42));
        assert_eq!(restore(&cfg(OnError::Off), &toggle).map(|v| v.on), Some(false));
        assert_eq!(restore(&cfg(OnError::On), &toggle).map(|v| v.on), Some(true));

        // Another key's state is not ours.
        let mut other = c.clone();
        other.key = "/other".into();
        assert_eq!(load_known(&other, &path, true), None);
        assert!(restore(&other, &toggle).is_none());
    }

    #[test]
    fn nothing_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let toggle = dir.path().join("t");
        assert!(restore(&cfg(OnError::Keep), &toggle).is_none());
        assert_eq!(
            restore(&cfg(OnError::On), &toggle).map(|v| (v.on, v.value)),
            Some((true, None))
        );
        assert_eq!(restore(&cfg(OnError::Off), &toggle).map(|v| v.on), Some(false));
        std::fs::write(persist_path(&toggle), "not json").unwrap();
        assert!(restore(&cfg(OnError::Keep), &toggle).is_none());
    }

    #[test]
    fn on_error_policies() {
        let lost = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let off = Known {
            revision: 7,
            ..Known::default()
        };
        for (policy, k, connected, want_on) in [
            (OnError::Keep, known_on(), true, true),
            (OnError::Keep, known_on(), false, true),
            (OnError::Keep, off.clone(), false, false),
            (OnError::On, off.clone(), true, false),
            (OnError::On, off.clone(), false, true),
            (OnError::On, known_on(), false, true),
            (OnError::Off, known_on(), true, true),
            (OnError::Off, known_on(), false, false),
            (OnError::Off, off.clone(), false, false),
        ] {
            let v = derive_view(policy, &k, connected, Some("down".into()), 3, lost);
            assert_eq!(v.on, want_on, "{policy:?} {k:?} connected={connected}");
            assert_eq!(v.connected, connected);
            assert_eq!(v.error.is_some(), !connected);
            assert_eq!(v.revision, k.revision);
            assert_eq!(v.value.is_some(), v.on && k.on, "value only when etcd said on");
        }
        // Failing closed from "off": the change happened when etcd was lost.
        let v = derive_view(OnError::On, &off, false, None, 0, lost);
        assert_eq!(v.last_change, Some(lost));
    }

    #[test]
    fn endpoints_to_probe() {
        assert_eq!(host_port("http://127.0.0.1:2379"), Some(("127.0.0.1".into(), 2379)));
        assert_eq!(host_port("https://[::1]:2379"), Some(("::1".into(), 2379)));
        assert_eq!(host_port("https://etcd.example"), Some(("etcd.example".into(), 443)));
        assert_eq!(host_port("not a url"), None);
    }

    #[test]
    fn backoff_jitter_stays_in_bounds() {
        for _ in 0..200 {
            let j = jitter(BACKOFF_MAX);
            assert!(j >= BACKOFF_MAX / 2 && j <= BACKOFF_MAX, "{j:?}");
        }
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
