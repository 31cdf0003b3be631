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
use crate::page::{self, PageSet, Rendered};
use crate::proxy::UpstreamClient;
use crate::toggle::Observed;
use crate::units::ceil_secs;

/// What a config turns into once its files are loaded.
pub struct Runtime {
    pub config: Arc<Config>,
    pub allow: IpSet,
    pub trusted: IpSet,
    pub pages: Arc<PageSet>,
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
    /// Builds a runtime, reusing the previous upstream pool when the upstream is unchanged.
    pub fn build(config: Config, prev: Option<&Runtime>) -> Result<Runtime, ConfigErrors> {
        let loaded = Loaded::load(&config)?;
        let upstream = match prev {
            Some(p)
                if p.config.upstream.target == config.upstream.target
                    && p.config.upstream.connect_timeout == config.upstream.connect_timeout =>
            {
                p.upstream.clone()
            }
            _ => UpstreamClient::new(&config.upstream),
        };
        Ok(Runtime {
            trusted: IpSet::new(config.clients.trusted_proxies.iter().copied()),
            allow: loaded.allow,
            pages: Arc::new(loaded.pages),
            upstream,
            config: Arc::new(config),
        })
    }
}

/// The maintenance view a request acts on, derived from the toggle and the config.
pub struct Maint {
    pub active: bool,
    pub since: Option<SystemTime>,
    pub message: String,
    pub retry_after: u64,
    pub rendered: Rendered,
    pub observed: Observed,
}

impl Maint {
    pub fn derive(observed: Observed, rt: &Runtime) -> Maint {
        let m = &rt.config.maintenance;
        let message = observed.content.message.clone().unwrap_or_else(|| m.message.clone());
        let retry_after = ceil_secs(observed.content.retry_after.unwrap_or(m.retry_after));
        let rendered = page::render(&rt.pages, &message, retry_after, None);
        Maint {
            active: observed.exists,
            since: observed.since,
            message,
            retry_after,
            rendered,
            observed,
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
}

impl State {
    pub fn new(rt: Runtime, observed: Observed) -> State {
        let maint = Maint::derive(observed, &rt);
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
        }
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new runtime (a reload), re-deriving the maintenance view from it.
    pub fn set_runtime(&self, rt: Runtime) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        let maint = Maint::derive(cur.maint.observed.clone(), &rt);
        self.metrics.allowlist_entries.set(rt.allow.len() as i64);
        self.current.store(Arc::new(Snapshot {
            rt: Arc::new(rt),
            maint: Arc::new(maint),
        }));
    }

    /// Applies a new observation of the toggle; returns (was active, is active).
    pub fn set_observed(&self, observed: Observed) -> (bool, bool) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load();
        let was = cur.maint.active;
        let maint = Maint::derive(observed, &cur.rt);
        let now = maint.active;
        if was != now {
            self.metrics.set_maintenance(now);
            self.metrics.toggle_flips.inc();
        }
        self.current.store(Arc::new(Snapshot {
            rt: cur.rt.clone(),
            maint: Arc::new(maint),
        }));
        (was, now)
    }
}
