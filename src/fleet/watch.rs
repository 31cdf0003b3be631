//! The daemon's watcher: one session after another (connect, read, watch),
//! each change published to the state and kept in `<toggle>.fleet`.
//!
//! The change is applied first; the file is written afterwards, by a task of
//! its own: an fsync can take tens of milliseconds on a busy disk, and the
//! next event must not wait behind it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, WatchOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{classify, connect, explain, unreachable, FleetError};
use super::fmt_dur;
use super::persist::{derive_view, load_known, persist_path, save_known, Known};
use crate::config::{Fleet, OnError};
use crate::maint::{onoff, FleetView, Source};
use crate::state::{State, Via};
use crate::watch::Wake;

/// One request of the daemon's session: connect + read, or creating the watch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff: from this, doubling…
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// …up to this (each wait is jittered to 50–100 % of the step).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A watch that lived this long resets the backoff to its minimum.
const STABLE: Duration = Duration::from_secs(5);

/// Starts watching the key; every change goes to `state.set_fleet` followed by `wake.notify_one()`,
/// then to `<toggle>.fleet`. The handle ends once the watch has stopped (at `shutdown`) and the
/// last change it saw is on disk.
pub fn spawn(
    cfg: Fleet,
    toggle: PathBuf,
    state: Arc<State>,
    wake: Wake,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let path = persist_path(&toggle);
    // `restore` has already said what is wrong with the file, if anything.
    let known = load_known(&cfg, &path, false).unwrap_or_default();
    let (persist, pending) = tokio::sync::watch::channel(known.clone());
    let saved = tokio::spawn(keep(cfg.key.clone(), path, pending));
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
        published,
    };
    tokio::spawn(runner.run());
    saved
}

/// Writes each state `pending` receives to `path`, in order, off the watch's task; when
/// several arrive during one write, only the latest is written next. Ends when the
/// watch has stopped and the last state is written.
async fn keep(key: String, path: PathBuf, mut pending: tokio::sync::watch::Receiver<Known>) {
    let mut warned = false;
    while pending.changed().await.is_ok() {
        let known = pending.borrow_and_update().clone();
        let (k, p) = (key.clone(), path.clone());
        let result = match tokio::task::spawn_blocking(move || save_known(&k, &known, &p)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    source = "fleet",
                    file = %path.display(),
                    error = %e,
                    "cannot keep the last known fleet state; a restart during an etcd outage will not know it"
                );
            }
            Err(_) => {}
        }
    }
}

struct Runner {
    cfg: Fleet,
    /// To [`keep`]: the state to write to `<toggle>.fleet`.
    persist: tokio::sync::watch::Sender<Known>,
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
        // Applied first; written to disk afterwards, by `keep`.
        self.publish(cause);
        if changed {
            self.persist.send_replace(self.known.clone());
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
        self.state.applied(
            flip,
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

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keep_writes_the_latest_state_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.fleet");
        let cfg = crate::fleet::testing::cfg(OnError::Keep);
        let known = |revision| Known {
            on: revision % 2 == 1,
            value: (revision % 2 == 1).then(|| format!("message = \"{revision}\"")),
            revision,
            last_change: None,
        };

        // The state it starts from is on disk already: nothing to write.
        let (tx, rx) = tokio::sync::watch::channel(known(1));
        drop(tx);
        keep(cfg.key.clone(), path.clone(), rx).await;
        assert!(!path.exists());

        // Changes sent faster than they are written: the last one is on disk when it ends.
        let (tx, rx) = tokio::sync::watch::channel(Known::default());
        let saved = tokio::spawn(keep(cfg.key.clone(), path.clone(), rx));
        for rev in 1..=5 {
            tx.send_replace(known(rev));
            tokio::task::yield_now().await;
        }
        drop(tx);
        saved.await.unwrap();
        assert_eq!(load_known(&cfg, &path, true), Some(known(5)));
    }

    #[test]
    fn backoff_jitter_stays_in_bounds() {
        for _ in 0..200 {
            let j = jitter(BACKOFF_MAX);
            assert!(j >= BACKOFF_MAX / 2 && j <= BACKOFF_MAX, "{j:?}");
        }
    }
}
