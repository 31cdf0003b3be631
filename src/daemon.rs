//! `gatekeeper run`: load, bind, watch, serve; reload on SIGHUP; drain and exit
//! on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::server;
use crate::state::{Runtime, State};
use crate::toggle;
use crate::watch;

/// Runs until a stop signal; returns when every connection is drained (or the grace period ends).
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let rt = Runtime::build(config, None)?;
    let cfg = rt.config.clone();
    let listeners = server::bind(&cfg.listen)
        .await
        .map_err(|(addr, e)| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let observed = toggle::observe(&cfg.maintenance.toggle);
    let state = Arc::new(State::new(rt, observed));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wake = watch::spawn(state.clone(), shutdown.clone()).context("cannot start the toggle watcher")?;
    let limit = Arc::new(Semaphore::new(cfg.server.max_connections));
    for l in listeners {
        let addr = l.local_addr().context("listener has no address")?;
        tracing::info!("listening on {addr} (http)");
        tokio::spawn(server::accept_loop(
            l,
            state.clone(),
            limit.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    {
        let m = &state.snapshot().maint;
        tracing::info!(
            toggle = %cfg.maintenance.toggle.display(),
            maintenance = if m.active { "on" } else { "off" },
            "ready"
        );
    }

    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                reload(config_path, &state);
                wake.notify_one();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }

    let grace = state.snapshot().rt.config.server.grace_period;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace = ?grace, open = tracker.len(), "grace period over; closing remaining connections");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the config again and swaps it in; a bad config is refused and the running one stays.
pub fn reload(path: &Path, state: &State) {
    let cur = state.snapshot();
    let new = match Config::load(path).and_then(|c| Runtime::build(c, Some(&cur.rt))) {
        Ok(rt) => rt,
        Err(e) => {
            for line in e.0 {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
            return;
        }
    };
    if new.config.listen != cur.rt.config.listen {
        tracing::warn!("listen addresses changed; they take effect only after a restart");
    }
    state.set_runtime(new);
    tracing::info!(config = %path.display(), "config reloaded");
}
