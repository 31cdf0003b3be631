//! The daemon's shared state: one immutable [`Snapshot`] of everything a
//! request needs (the config-derived runtime and the maintenance view with its
//! rendered page), swapped atomically. A request loads it once, so a reload or
//! a flip never mixes two states, and the request path never touches the disk.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::hold::Holds;
use crate::maint::{onoff, FleetView, Maint, Source};
use crate::metrics::Metrics;
use crate::misconfig::UntrustedForwarding;
use crate::page::{self, Rendered};
use crate::runtime::Runtime;
use crate::toggle::Observed;

/// Everything one request reads, consistent with itself.
pub struct Snapshot {
    pub rt: Arc<Runtime>,
    pub maint: Maint,
    /// The page for `maint`'s message and retry time.
    pub rendered: Rendered,
    /// The inputs `maint` was derived from, kept to re-derive on the next change.
    pub observed: Observed,
    pub fleet: Option<FleetView>,
    /// `gatekeeper drain` is in force: the health check answers 503.
    pub drained: bool,
}

impl Snapshot {
    /// A snapshot as the daemon would derive it now (for `gatekeeper explain`).
    pub fn new(rt: Arc<Runtime>, observed: Observed, fleet: Option<FleetView>, drained: bool) -> Snapshot {
        Snapshot::derive(rt, observed, fleet, drained)
    }

    fn derive(rt: Arc<Runtime>, observed: Observed, fleet: Option<FleetView>, drained: bool) -> Snapshot {
        let maint = Maint::derive(
            &observed,
            fleet.as_ref(),
            &rt.config.maintenance,
            jiff::Timestamp::now(),
        );
        let rendered = page::render_at(&rt.pages, &maint.message, maint.retry_after, maint.until);
        Snapshot {
            rt,
            maint,
            rendered,
            observed,
            fleet,
            drained,
        }
    }
}

/// What a snapshot is derived from.
type Inputs = (Arc<Runtime>, Observed, Option<FleetView>, bool);

/// Holder of the current snapshot. Writers (watcher, reload, fleet) serialise
/// on a mutex; readers never block.
pub struct State {
    current: ArcSwap<Snapshot>,
    write: Mutex<()>,
    pub metrics: Metrics,
    pub started: Instant,
    pub started_at: SystemTime,
    /// The first TLS listener's bound port (0: none), for redirects to https.
    https_port: AtomicU16,
    /// Requests held by a pause.
    pub holds: Holds,
    /// A pause is in force: exchanges the app dropped while stopping wait for it too.
    pub paused: AtomicBool,
    /// Where applied changes go besides the log (history, hooks): see the `audit` module.
    audit: OnceLock<tokio::sync::mpsc::Sender<Applied>>,
    /// Peers that forward without being trusted, said out loud.
    pub untrusted: UntrustedForwarding,
}

/// A change a writer applied, as the audit trail and the hooks take it.
pub struct Applied {
    pub flip: Flip,
    /// `file`, `fleet` or `schedule`.
    pub source: &'static str,
    pub cause: String,
    /// The state right after the change.
    pub snap: Arc<Snapshot>,
}

impl State {
    pub fn new(rt: Runtime, observed: Observed) -> State {
        let snap = Snapshot::derive(Arc::new(rt), observed, None, false);
        let metrics = Metrics::new();
        let holds = Holds::new(metrics.held.clone());
        let untrusted = UntrustedForwarding::new(metrics.untrusted_forwarding.clone());
        metrics.set_maintenance(snap.maint.active);
        metrics.allowlist_entries.set(snap.rt.allow.len() as i64);
        State {
            current: ArcSwap::from_pointee(snap),
            write: Mutex::new(()),
            metrics,
            started: Instant::now(),
            started_at: SystemTime::now(),
            https_port: AtomicU16::new(0),
            holds,
            paused: AtomicBool::new(false),
            audit: OnceLock::new(),
            untrusted,
        }
    }

    /// Sends every change [`State::applied`] logs to `tx` too (set once, by the daemon).
    pub fn set_audit(&self, tx: tokio::sync::mpsc::Sender<Applied>) {
        let _ = self.audit.set(tx);
    }

    /// Logs what a writer applied (see [`Flip::log`]) and hands the same
    /// change to the audit trail and hooks. Never waits: flips are rare, and a
    /// full queue only costs an entry (said in the log).
    pub fn applied(&self, flip: Flip, via: Via<'_>, cause: &str, settings_changed: bool) {
        let source = via.label();
        if !flip.log(via, cause, settings_changed) {
            return;
        }
        if let Some(tx) = self.audit.get() {
            let a = Applied {
                flip,
                source,
                cause: cause.to_string(),
                snap: self.snapshot(),
            };
            if tx.try_send(a).is_err() {
                tracing::warn!("too many changes at once: this one is not in the history and runs no hook");
            }
        }
    }

    /// Applies the drain file's presence (`gatekeeper drain`); true when that changed it.
    pub fn set_drained(&self, on: bool) -> bool {
        let was = self.snapshot().drained;
        if was != on {
            self.update(|cur| (cur.rt.clone(), cur.observed.clone(), cur.fleet.clone(), on));
        }
        was != on
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    pub fn https_port(&self) -> Option<u16> {
        Some(self.https_port.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new runtime (a reload), re-deriving the maintenance view from it.
    pub fn set_runtime(&self, rt: Runtime) -> Flip {
        self.metrics.allowlist_entries.set(rt.allow.len() as i64);
        let rt = Arc::new(rt);
        self.update(|cur| (rt.clone(), cur.observed.clone(), cur.fleet.clone(), cur.drained))
    }

    /// Applies a new observation of the toggle file.
    pub fn set_observed(&self, observed: Observed) -> Flip {
        self.update(|cur| (cur.rt.clone(), observed, cur.fleet.clone(), cur.drained))
    }

    /// Applies the fleet source's latest word.
    pub fn set_fleet(&self, fleet: FleetView) -> Flip {
        let m = &self.metrics;
        m.fleet_connected.set(i64::from(fleet.connected));
        m.fleet_revision.set(fleet.revision);
        m.fleet_reconnects
            .set(i64::try_from(fleet.reconnects).unwrap_or(i64::MAX));
        if let Some(t) = fleet.last_change {
            m.fleet_last_change
                .set(t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        }
        self.update(|cur| (cur.rt.clone(), cur.observed.clone(), Some(fleet), cur.drained))
    }

    /// Re-derives the view at the present moment (a window opened or closed).
    pub fn refresh(&self) -> Flip {
        self.update(|cur| (cur.rt.clone(), cur.observed.clone(), cur.fleet.clone(), cur.drained))
    }

    fn update(&self, next: impl FnOnce(&Snapshot) -> Inputs) -> Flip {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        let (rt, observed, fleet, drained) = next(&cur);
        let snap = Snapshot::derive(rt, observed, fleet, drained);
        let flip = Flip {
            was: cur.maint.active,
            now: snap.maint.active,
        };
        if flip.changed() {
            self.metrics.set_maintenance(flip.now);
            self.metrics.toggle_flips.inc();
        }
        let holding = snap.maint.active && snap.maint.paused;
        self.current.store(Arc::new(snap));
        self.paused.store(holding, Ordering::Relaxed);
        // After the store: a request that queues from now on sees the new snapshot.
        if !holding {
            self.holds.release_all();
        }
        flip
    }
}

/// A change of the maintenance view, as a writer applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    pub was: bool,
    pub now: bool,
}

/// What applied a change, for the log line.
pub enum Via<'a> {
    File {
        toggle: &'a std::path::Path,
    },
    Fleet {
        key: &'a str,
        revision: i64,
    },
    /// A window boundary passed; the source is the toggle that carries the window.
    Schedule {
        source: Option<Source>,
    },
}

impl Flip {
    pub fn changed(self) -> bool {
        self.was != self.now
    }

    /// The one log line for what a writer applied: `maintenance off -> on`, or,
    /// when maintenance stays on and `settings_changed`, "maintenance settings
    /// changed". Returns whether there was anything to say.
    pub fn log(self, via: Via<'_>, cause: &str, settings_changed: bool) -> bool {
        let what = if self.changed() {
            format!("maintenance {} -> {}", onoff(self.was), onoff(self.now))
        } else if self.now && settings_changed {
            "maintenance settings changed".to_string()
        } else {
            return false;
        };
        match via {
            Via::File { toggle } => tracing::info!(source = "file", toggle = %toggle.display(), cause, "{what}"),
            Via::Fleet { key, revision } => tracing::info!(source = "fleet", key, revision, cause, "{what}"),
            Via::Schedule { source } => {
                tracing::info!(source = source.map_or("-", Source::label), cause, "{what}")
            }
        }
        true
    }
}

impl Via<'_> {
    /// What applied the change, in one word: file, fleet or schedule.
    pub fn label(&self) -> &'static str {
        match self {
            Via::File { .. } => "file",
            Via::Fleet { .. } => "fleet",
            Via::Schedule { .. } => "schedule",
        }
    }
}
