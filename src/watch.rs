//! Watches the toggle: inotify (through `notify`) on the toggle's directory and
//! on the directories its symlinks lead through, plus a slow re-check timer so
//! that a lost event can only delay a change, never lose it. Every change is
//! published into the shared state; the request path never looks at the disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fsutil;
use crate::state::{State, Via};
use crate::toggle;

/// Something that asks the watcher to look again now (a reload, a signal).
pub type Wake = Arc<Notify>;

/// Starts the watcher. Returns the handle used to wake it early.
pub fn spawn(state: Arc<State>, shutdown: CancellationToken) -> Result<Wake, notify::Error> {
    let wake: Wake = Arc::new(Notify::new());
    let w = wake.clone();
    let names: Names = Arc::new(Mutex::new(HashSet::new()));
    let n = names.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        // Opening and reading a file (our own reads of the toggle included) changes nothing.
        Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
        // Only names on the toggle's path matter (the toggle, its symlink hops, a
        // ConfigMap's `..data`); a busy directory must not keep the watcher busy.
        Ok(ev) => {
            let relevant = n.lock().is_ok_and(|names| {
                ev.paths.is_empty()
                    || ev.paths.iter().any(|p| {
                        p.file_name()
                            .is_some_and(|f| names.contains(f) || f.to_string_lossy().starts_with(".."))
                    })
            });
            if relevant {
                w.notify_one();
            }
        }
        Err(e) => tracing::warn!(error = %e, "file watch error; relying on the periodic re-check"),
    })?;
    let wake2 = wake.clone();
    tokio::spawn(async move {
        let mut t = ToggleWatch {
            watcher,
            watched: HashSet::new(),
            names,
        };
        let mut cause = "startup";
        loop {
            t.check(&state, cause);
            // A window boundary that passed (timer fired, or the clock jumped): re-derive now.
            let now = jiff::Timestamp::now();
            if state.snapshot().maint.next_boundary.is_some_and(|b| b <= now) {
                let flip = state.refresh();
                let source = state.snapshot().maint.source;
                state.applied(flip, Via::Schedule { source }, "schedule", false);
            }
            let snap = state.snapshot();
            let recheck = snap.rt.config.maintenance.recheck;
            // Sleep to the next window boundary, a hair past it so that it has surely passed.
            let boundary = snap.maint.next_boundary.map(|b| {
                let ms = b.as_millisecond().saturating_sub(now.as_millisecond()).max(0);
                std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 1)
            });
            drop(snap);
            cause = tokio::select! {
                _ = wake2.notified() => "inotify",
                _ = tokio::time::sleep(recheck) => "periodic re-check",
                _ = tokio::time::sleep(boundary.unwrap_or(std::time::Duration::from_secs(86_400))), if boundary.is_some() => "schedule",
                _ = shutdown.cancelled() => return,
            };
        }
    });
    Ok(wake)
}

/// File names whose events concern the toggle.
type Names = Arc<Mutex<HashSet<OsString>>>;

struct ToggleWatch {
    watcher: RecommendedWatcher,
    watched: HashSet<PathBuf>,
    names: Names,
}

impl ToggleWatch {
    fn check(&mut self, state: &State, cause: &str) {
        let path = state.snapshot().rt.config.maintenance.toggle.clone();
        self.rewatch(&path);
        let obs = toggle::observe(&path);
        // The snapshot holds the observation last applied: compare with it.
        let prev = &state.snapshot().observed;
        if prev.exists == obs.exists && prev.fingerprint == obs.fingerprint {
            return;
        }
        let self_changed = prev.exists;
        if let Some(w) = &obs.warning {
            tracing::warn!("{w}");
        }
        let flip = state.set_observed(obs);
        state.applied(flip, Via::File { toggle: &path }, cause, self_changed);
    }

    /// Keeps inotify watches on every directory whose change can change what the toggle path shows.
    fn rewatch(&mut self, toggle: &Path) {
        let (want, names) = watch_set(toggle);
        if let Ok(mut n) = self.names.lock() {
            *n = names;
        }
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

/// The toggle's directory, and — when the toggle or its directory is a symlink
/// (Kubernetes ConfigMap `..data` style) — the directories the links lead through;
/// with the file names in them whose events matter.
pub fn watch_set(toggle: &Path) -> (HashSet<PathBuf>, HashSet<OsString>) {
    let mut names = HashSet::new();
    let mut out = HashSet::new();
    let mut name_of = |p: &Path| {
        if let Some(n) = p.file_name() {
            names.insert(n.to_owned());
        }
    };
    name_of(toggle);
    if let Some(p) = toggle.parent() {
        name_of(p);
    }
    let parent = fsutil::parent_dir(toggle).to_path_buf();
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
                name_of(&link);
                if let Some(dir) = link.parent() {
                    if dir.is_dir() {
                        out.insert(dir.to_path_buf());
                    }
                }
            }
            Err(_) => break,
        }
    }
    if let Ok(canon) = std::fs::canonicalize(toggle) {
        name_of(&canon);
        if let Some(dir) = canon.parent() {
            out.insert(dir.to_path_buf());
        }
    }
    (out, names)
}

/// Watches the config file and the allowlist file (their directories, since
/// editors and ConfigMaps replace files by rename) and calls `changed` once a
/// burst of events has been quiet for a moment and the content really differs,
/// so a half-written file is not picked up in the middle of its writing.
pub fn spawn_config_watch(
    state: Arc<State>,
    shutdown: CancellationToken,
    changed: impl Fn() + Send + 'static,
) -> Result<(), notify::Error> {
    const QUIET: std::time::Duration = std::time::Duration::from_millis(200);
    let kick = Arc::new(Notify::new());
    let k = kick.clone();
    let names = Arc::new(std::sync::Mutex::new(HashSet::<std::ffi::OsString>::new()));
    let n = names.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Our own reads of these files must not look like changes.
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let Ok(names) = n.lock() else { return };
        // Only events about our files (or a ConfigMap's `..data` swap) count.
        let ours = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|f| names.contains(f) || f.to_string_lossy().starts_with(".."))
        });
        if ours {
            k.notify_one();
        }
    })?;
    tokio::spawn(async move {
        let mut watched = HashSet::new();
        let mut last = fingerprint(&config_files(&state));
        loop {
            // Recomputed every round: a reload may name new files, and a refused
            // config's files must be watched too, so that fixing them is noticed.
            let files = config_files(&state);
            if let Ok(mut n) = names.lock() {
                *n = files
                    .iter()
                    .filter_map(|f| f.file_name().map(ToOwned::to_owned))
                    .collect();
            }
            let dirs: HashSet<PathBuf> = files.iter().map(|f| fsutil::parent_dir(f).to_path_buf()).collect();
            for d in dirs.difference(&watched).cloned().collect::<Vec<_>>() {
                if watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
                    watched.insert(d);
                }
            }
            // Compared before waiting: a file that joined the set just now may
            // have changed while its events were not yet ours. The fingerprint is
            // taken before reloading, so a write during the reload still looks new.
            let now = fingerprint(&files);
            if now != last {
                last = now;
                changed();
                continue;
            }
            tokio::select! {
                _ = kick.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            // Debounce: wait until the files have been quiet for QUIET.
            loop {
                tokio::select! {
                    _ = kick.notified() => continue,
                    _ = tokio::time::sleep(QUIET) => break,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    });
    Ok(())
}

/// The files whose change means a reload: the config, the allowlist file, the
/// named-token file and the TLS files — of the running config and of the config file as it is now.
fn config_files(state: &State) -> Vec<PathBuf> {
    let snap = state.snapshot();
    let running = &snap.rt.config;
    let mut files = vec![running.file.clone()];
    let mut add = |cfg: &crate::config::Config| {
        files.extend(cfg.clients.allow_file.clone());
        files.push(cfg.bypass.tokens_file.clone());
        if let Some(tls) = &cfg.tls {
            for c in &tls.certs {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
        }
    };
    add(running);
    if let Ok(on_disk) = crate::config::Config::load(&running.file) {
        add(&on_disk);
    }
    files.sort();
    files.dedup();
    files
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}
