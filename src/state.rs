//! The daemon's shared state: one immutable `Snapshot` of everything a request
//! needs (config-derived runtime + maintenance view), swapped atomically. A
//! request loads it once, so a reload or a flip never mixes two states, and
//! the request path never touches the disk.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::allowlist::{self, IpSet};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::metrics::Metrics;
use crate::page::{render_at, PageSet, Rendered};
use crate::proxy::UpstreamClient;
use crate::toggle::{Observed, ToggleContent, Window};
use crate::units::ceil_secs;

/// What a config turns into once its files are loaded.
pub struct Runtime {
    pub config: Arc<Config>,
    pub allow: IpSet,
    pub trusted: IpSet,
    pub pages: Arc<PageSet>,
    /// The upstream client; kept across reloads that leave the upstream alone
    /// (see [`Runtime::keep_upstream_of`]), so its pooled connections stay in use.
    pub upstream: UpstreamClient,
}

/// The files a config points to, loaded and checked (used by `check` too).
pub struct Loaded {
    pub allow: IpSet,
    pub pages: PageSet,
}

impl Loaded {
    /// Checks the toggle directory and loads the allowlist file and the page directory.
    pub fn load(config: &Config) -> Result<Loaded, ConfigErrors> {
        let file = config.file.display().to_string();
        let mut errors = Vec::new();
        let plain = |key: &str, message: String| ConfigError {
            file: file.clone(),
            pos: None,
            key: key.to_string(),
            message,
        };
        let toggle_dir = match config.maintenance.toggle.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => Path::new("/"),
        };
        if !toggle_dir.is_dir() {
            errors.push(plain(
                "maintenance.toggle",
                format!(
                    "directory {:?} does not exist (create it; the toggle file itself need not exist)",
                    toggle_dir
                ),
            ));
        }
        let mut nets = config.clients.allow.clone();
        if let Some(path) = &config.clients.allow_file {
            match std::fs::read_to_string(path) {
                Err(e) => errors.push(plain(
                    "clients.allow_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
                Ok(text) => match allowlist::parse_allow_file(&text) {
                    Ok(more) => nets.extend(more),
                    Err(e) => errors.push(ConfigError {
                        file: path.display().to_string(),
                        pos: Some((e.line, e.column)),
                        key: "clients.allow_file".into(),
                        message: e.source.to_string(),
                    }),
                },
            }
        }
        if config.buffering.requests || config.buffering.responses {
            let dir = crate::buffer::temp_dir(config.buffering.dir.as_deref());
            // Unlinked at once: this only proves that bodies can spill to disk there.
            if let Err(e) = tempfile::tempfile_in(&dir) {
                errors.push(plain(
                    "buffering.dir",
                    format!("cannot create temporary files in {}: {e}", dir.display()),
                ));
            }
        }
        if let Some(tls) = &config.tls {
            if let Err(e) = crate::tls::check(&tls.specs()) {
                errors.push(plain("tls", e.to_string()));
            }
        }
        let pages = match &config.maintenance.dir {
            None => Some(PageSet::embedded()),
            Some(dir) => match PageSet::load(dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(plain("maintenance.dir", e.to_string()));
                    None
                }
            },
        };
        match pages {
            Some(pages) if errors.is_empty() => Ok(Loaded {
                allow: IpSet::new(nets),
                pages,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

impl Runtime {
    /// Builds a runtime from a config: loads the files it points to.
    pub fn build(config: Config) -> Result<Runtime, ConfigErrors> {
        let loaded = Loaded::load(&config)?;
        Ok(Runtime {
            upstream: UpstreamClient::new(&config.upstream),
            trusted: IpSet::new(config.clients.trusted_proxies.iter().copied()),
            allow: loaded.allow,
            pages: Arc::new(loaded.pages),
            config: Arc::new(config),
        })
    }

    /// Takes over `old`'s upstream client when this config names the same upstream.
    pub fn keep_upstream_of(&mut self, old: &Runtime) {
        let (a, b) = (&old.config.upstream, &self.config.upstream);
        if a.target == b.target && a.connect_timeout == b.connect_timeout {
            self.upstream = old.upstream.clone();
        }
    }
}

/// The fleet source's latest word, as the fleet module publishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Maintenance per the fleet: the key exists (or `on_error = "on"` while etcd is unreachable).
    pub on: bool,
    /// The key's value (toggle-file TOML) when on.
    pub value: Option<String>,
    /// The etcd revision of the last change seen.
    pub revision: i64,
    pub connected: bool,
    pub last_change: Option<SystemTime>,
    pub reconnects: u64,
    /// Why etcd is unreachable, while it is.
    pub error: Option<String>,
}

/// Which source switched maintenance on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Fleet,
}

/// The maintenance view a request acts on, derived from the toggle file, the
/// fleet key, the clock (scheduled windows) and the config.
pub struct Maint {
    /// A toggle (file or fleet) is present, whatever its window says.
    pub present: bool,
    /// Maintenance applies to requests now.
    pub active: bool,
    pub source: Option<Source>,
    pub window: Window,
    pub since: Option<SystemTime>,
    pub message: String,
    /// Retry-After when no window end is known.
    pub retry_after: u64,
    pub until: Option<jiff::Timestamp>,
    pub next_boundary: Option<jiff::Timestamp>,
    /// Bypass token from the toggle content.
    pub secret: Option<Arc<str>>,
    pub rendered: Rendered,
    pub observed: Observed,
    pub fleet: Option<FleetView>,
    pub warning: Option<String>,
}

impl Maint {
    pub fn derive(observed: Observed, fleet: Option<FleetView>, rt: &Runtime, now: jiff::Timestamp) -> Maint {
        let m = &rt.config.maintenance;
        // The local toggle's content wins where both are on: it is the more specific switch.
        let (present, source, content, since, warning) = if observed.exists {
            let c = observed.content.clone();
            (true, Some(Source::File), c, observed.since, observed.warning.clone())
        } else if let Some(f) = fleet.as_ref().filter(|f| f.on) {
            let (c, w) = match ToggleContent::parse(f.value.as_deref().unwrap_or("")) {
                Ok(c) => (c, None),
                Err(e) => (
                    ToggleContent::default(),
                    Some(format!("fleet key has malformed content, using defaults: {e}")),
                ),
            };
            (true, Some(Source::Fleet), c, f.last_change, w)
        } else {
            (false, None, ToggleContent::default(), None, None)
        };
        let window = if present {
            content.window_at(now)
        } else {
            Window::Active
        };
        let active = present && window == Window::Active;
        let message = content.message.clone().unwrap_or_else(|| m.message.clone());
        let retry_after = ceil_secs(content.retry_after.unwrap_or(m.retry_after));
        let until = content.until;
        let rendered = render_at(&rt.pages, &message, retry_after, until);
        Maint {
            present,
            active,
            source,
            window,
            since,
            message,
            retry_after,
            until,
            next_boundary: if present { content.next_boundary(now) } else { None },
            secret: content.secret.as_deref().filter(|s| !s.is_empty()).map(Arc::from),
            rendered,
            observed,
            fleet,
            warning,
        }
    }

    /// Retry-After for a request now: the seconds left in the window when it has
    /// an end (at least 1), else the configured or toggled value.
    pub fn retry_after_now(&self) -> u64 {
        match self.until {
            Some(u) => {
                let left = u.duration_since(jiff::Timestamp::now()).as_secs_f64().ceil();
                if left >= 1.0 {
                    left as u64
                } else {
                    1
                }
            }
            None => self.retry_after,
        }
    }
}

pub struct Snapshot {
    pub rt: Arc<Runtime>,
    pub maint: Arc<Maint>,
}

/// Holder of the current snapshot. Writers (watcher, reload) serialise on a
/// mutex; readers never block.
pub struct State {
    current: ArcSwap<Snapshot>,
    write: Mutex<()>,
    pub metrics: Metrics,
    pub started: Instant,
    pub started_at: SystemTime,
    /// The first TLS listener's bound port (0: none), for redirects to https.
    https_port: std::sync::atomic::AtomicU16,
}

impl State {
    pub fn new(rt: Runtime, observed: Observed) -> State {
        let maint = Maint::derive(observed, None, &rt, jiff::Timestamp::now());
        let metrics = Metrics::new();
        metrics.set_maintenance(maint.active);
        metrics.allowlist_entries.set(rt.allow.len() as i64);
        State {
            current: ArcSwap::from_pointee(Snapshot {
                rt: Arc::new(rt),
                maint: Arc::new(maint),
            }),
            write: Mutex::new(()),
            metrics,
            started: Instant::now(),
            started_at: SystemTime::now(),
            https_port: std::sync::atomic::AtomicU16::new(0),
        }
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn https_port(&self) -> Option<u16> {
        Some(self.https_port.load(std::sync::atomic::Ordering::Relaxed)).filter(|p| *p != 0)
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new runtime (a reload), re-deriving the maintenance view from it.
    pub fn set_runtime(&self, rt: Runtime) {
        self.metrics.allowlist_entries.set(rt.allow.len() as i64);
        let rt = Arc::new(rt);
        self.update(|cur| (rt.clone(), cur.maint.observed.clone(), cur.maint.fleet.clone()));
    }

    /// Applies a new observation of the toggle file; returns (was active, is active).
    pub fn set_observed(&self, observed: Observed) -> (bool, bool) {
        self.update(|cur| (cur.rt.clone(), observed, cur.maint.fleet.clone()))
    }

    /// Applies the fleet source's latest word; returns (was active, is active).
    pub fn set_fleet(&self, fleet: FleetView) -> (bool, bool) {
        let m = &self.metrics;
        m.fleet_connected.set(i64::from(fleet.connected));
        m.fleet_revision.set(fleet.revision);
        m.fleet_reconnects
            .set(i64::try_from(fleet.reconnects).unwrap_or(i64::MAX));
        if let Some(t) = fleet.last_change {
            m.fleet_last_change
                .set(t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        }
        self.update(|cur| (cur.rt.clone(), cur.maint.observed.clone(), Some(fleet)))
    }

    /// Re-derives the view at the present moment (a window opened or closed).
    pub fn refresh(&self) -> (bool, bool) {
        self.update(|cur| (cur.rt.clone(), cur.maint.observed.clone(), cur.maint.fleet.clone()))
    }

    fn update(&self, next: impl FnOnce(&Snapshot) -> (Arc<Runtime>, Observed, Option<FleetView>)) -> (bool, bool) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        let was = cur.maint.active;
        let (rt, observed, fleet) = next(&cur);
        let maint = Maint::derive(observed, fleet, &rt, jiff::Timestamp::now());
        let now = maint.active;
        if was != now {
            self.metrics.set_maintenance(now);
            self.metrics.toggle_flips.inc();
        }
        self.current.store(Arc::new(Snapshot {
            rt,
            maint: Arc::new(maint),
        }));
        (was, now)
    }
}
