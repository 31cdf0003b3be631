//! Watches the toggle: inotify (through `notify`) on the toggle's directory and
//! on the directories its symlinks lead through, plus a slow re-check timer so
//! that a lost event can only delay a change, never lose it. Every change is
//! published into the shared state; the request path never looks at the disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::state::State;
use crate::toggle::{self, Observed};

/// Something that asks the watcher to look again now (a reload, a signal).
pub type Wake = Arc<Notify>;

/// Starts the watcher. Returns the handle used to wake it early.
pub fn spawn(state: Arc<State>, shutdown: CancellationToken) -> Result<Wake, notify::Error> {
    let wake: Wake = Arc::new(Notify::new());
    let w = wake.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        // Any event in a watched directory may concern the toggle (renames of
        // `..data`, of the toggle, of its symlink target): just look again.
        Ok(_) => w.notify_one(),
        Err(e) => tracing::warn!(error = %e, "file watch error; relying on the periodic re-check"),
    })?;
    let wake2 = wake.clone();
    tokio::spawn(async move {
        let mut t = ToggleWatch {
            watcher,
            watched: HashSet::new(),
            last: None,
        };
        loop {
            t.check(&state);
            let recheck = state.snapshot().rt.config.maintenance.recheck;
            tokio::select! {
                _ = wake2.notified() => {}
                _ = tokio::time::sleep(recheck) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(wake)
}

struct ToggleWatch {
    watcher: RecommendedWatcher,
    watched: HashSet<PathBuf>,
    last: Option<Observed>,
}

impl ToggleWatch {
    fn check(&mut self, state: &State) {
        let path = state.snapshot().rt.config.maintenance.toggle.clone();
        self.rewatch(&path);
        let obs = toggle::observe(&path);
        let cur = state.snapshot();
        let same = self
            .last
            .as_ref()
            .is_some_and(|l| l.exists == obs.exists && l.fingerprint == obs.fingerprint)
            && cur.maint.observed.fingerprint == obs.fingerprint
            && cur.maint.active == obs.exists;
        if same {
            return;
        }
        if let Some(w) = &obs.warning {
            tracing::warn!("{w}");
        }
        self.last = Some(obs.clone());
        let (was, now) = state.set_observed(obs);
        if was != now {
            tracing::info!(toggle = %path.display(), "maintenance {} -> {}", onoff(was), onoff(now));
        } else if now {
            tracing::info!(toggle = %path.display(), "maintenance settings changed");
        }
    }

    /// Keeps inotify watches on every directory whose change can change what the toggle path shows.
    fn rewatch(&mut self, toggle: &Path) {
        let want = dirs_to_watch(toggle);
        for gone in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in want {
            if !self.watched.contains(&dir) {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(dir);
                    }
                    Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch"),
                }
            }
        }
    }
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The toggle's directory, and — when the toggle or its directory is a symlink
/// (Kubernetes ConfigMap `..data` style) — the directories the links lead through.
pub fn dirs_to_watch(toggle: &Path) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let parent = match toggle.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    out.insert(parent.clone());
    // A swapped directory symlink shows up as a rename in the directory holding it.
    if std::fs::symlink_metadata(&parent).is_ok_and(|m| m.file_type().is_symlink()) {
        if let Some(gp) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
            out.insert(gp.to_path_buf());
        }
    }
    if let Ok(canon) = std::fs::canonicalize(&parent) {
        out.insert(canon);
    }
    // Follow the toggle's own chain of symlinks, a few hops at most.
    let mut link = toggle.to_path_buf();
    for _ in 0..8 {
        match std::fs::read_link(&link) {
            Ok(target) => {
                let base = link.parent().map(Path::to_path_buf).unwrap_or_default();
                link = if target.is_absolute() {
                    target
                } else {
                    base.join(target)
                };
                if let Some(dir) = link.parent() {
                    if dir.is_dir() {
                        out.insert(dir.to_path_buf());
                    }
                }
            }
            Err(_) => break,
        }
    }
    if let Some(dir) = std::fs::canonicalize(toggle)
        .ok()
        .and_then(|c| c.parent().map(Path::to_path_buf))
    {
        out.insert(dir);
    }
    out
}
