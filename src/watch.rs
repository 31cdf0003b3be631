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
            unreadable_warned: false,
        };
        let mut cause = "startup";
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            t.check(&state, cause);
            // At start and then at the re-check's pace (also when events keep it
            // from ever timing out).
            let recheck = state.snapshot().rt.config.maintenance.recheck;
            if last_sweep.is_none_or(|s| s.elapsed() >= recheck) {
                sweep_stale_temps(&state.snapshot().rt.config.maintenance.toggle);
                last_sweep = Some(std::time::Instant::now());
            }
            // A window boundary that passed (timer fired, or the clock jumped): re-derive now.
            let now = jiff::Timestamp::now();
            if state.snapshot().maint.next_boundary.is_some_and(|b| b <= now) {
                let flip = state.refresh();
                let source = state.snapshot().maint.source;
                state.applied(flip, Via::Schedule { source }, "schedule", false);
            }
            let snap = state.snapshot();
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

/// Removes the temporary files that a killed `gatekeeper on` (or a daemon killed
/// while persisting the fleet state) left in the toggle's directory.
fn sweep_stale_temps(toggle: &Path) {
    let dir = fsutil::parent_dir(toggle);
    match fsutil::remove_stale_temps(dir, fsutil::STALE_TEMP_AGE) {
        Ok(removed) => {
            for p in removed {
                tracing::info!(file = %p.display(), "removed a stale temporary file left by an interrupted write");
            }
        }
        Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot look for stale temporary files"),
    }
}

/// File names whose events concern the toggle.
type Names = Arc<Mutex<HashSet<OsString>>>;

struct ToggleWatch {
    watcher: RecommendedWatcher,
    watched: HashSet<PathBuf>,
    names: Names,
    /// A read failure was logged and no read has succeeded since.
    unreadable_warned: bool,
}

impl ToggleWatch {
    fn check(&mut self, state: &State, cause: &str) {
        let path = state.snapshot().rt.config.maintenance.toggle.clone();
        self.rewatch(&path);
        let drain = toggle::drain_path(&path);
        let drained = drain.exists();
        if state.set_drained(drained) {
            tracing::info!(file = %drain.display(), cause, "{}", if drained {
                "drained: /.gatekeeper/health answers 503"
            } else {
                "undrained: /.gatekeeper/health answers 200"
            });
        }
        let obs = toggle::observe(&path);
        // The snapshot holds the observation last applied: compare with it.
        let prev = &state.snapshot().observed;
        if obs.unreadable() && prev.exists && !prev.unreadable() {
            // A failed read (EMFILE under load, EIO) says nothing about the
            // content: keep the last one read (message, secret, window) rather
            // than fall back to the defaults, and look again next time.
            if !self.unreadable_warned {
                tracing::warn!(
                    "{}; keeping the content last read",
                    obs.warning.as_deref().unwrap_or("cannot read the toggle")
                );
                self.unreadable_warned = true;
            }
            return;
        }
        self.unreadable_warned = false;
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
    name_of(&toggle::drain_path(toggle));
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
    // Before returning (so before the daemon says it is ready): the files as
    // they are now, and their directories watched. Taken in the task, an edit
    // landing between "ready" and the task's first run would be missed.
    let mut watched = HashSet::new();
    let mut last = fingerprint(&config_files(&state));
    watch_dirs(&mut watcher, &mut watched, &names, &config_files(&state));
    tokio::spawn(async move {
        loop {
            // Recomputed every round: a reload may name new files, and a refused
            // config's files must be watched too, so that fixing them is noticed.
            let files = config_files(&state);
            watch_dirs(&mut watcher, &mut watched, &names, &files);
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

/// Watches the directories of `files` (those not watched yet) and makes their names the ones that count.
fn watch_dirs(
    watcher: &mut RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
    names: &std::sync::Mutex<HashSet<OsString>>,
    files: &[PathBuf],
) {
    if let Ok(mut n) = names.lock() {
        *n = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
    }
    let dirs: HashSet<PathBuf> = files.iter().map(|f| fsutil::parent_dir(f).to_path_buf()).collect();
    for d in dirs.difference(watched).cloned().collect::<Vec<_>>() {
        if watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
            watched.insert(d);
        }
    }
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}
