//! `gatekeeper run`: load, bind (or take systemd's sockets), watch, serve;
//! reload on SIGHUP or a config/allowlist change; drain and exit on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::state::State;
use crate::{admin, audit, fleet, logging, server, tls, toggle, watch};

/// At exit, how long the last fleet change may take to reach `<toggle>.fleet` (one write, fsync included).
const FLEET_SAVE_BOUND: Duration = Duration::from_secs(2);

/// Runs until a stop signal; returns when every connection is drained (or the grace period ends).
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    // First of all: a SIGHUP (or SIGTERM) that arrives early must not kill the
    // process with the default disposition — systemd may reload right after READY.
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    raise_fd_limit();
    let rt = Runtime::build(config)?;
    log_warnings(&rt);
    let cfg = rt.config.clone();
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let plain = match inherited_listeners()? {
        Some(l) => {
            tracing::info!(
                count = l.len(),
                "socket activation: using inherited sockets; `listen` is ignored"
            );
            // Every worker accepts on the same inherited sockets.
            let mut per_worker = Vec::with_capacity(workers);
            for _ in 0..workers {
                per_worker.push(
                    l.iter()
                        .map(|s| s.try_clone())
                        .collect::<std::io::Result<Vec<_>>>()
                        .context("inherited socket")?,
                );
            }
            per_worker
        }
        None => {
            server::bind(&cfg.listen, workers).map_err(|(addr, e)| anyhow::anyhow!("cannot listen on {addr}: {e}"))?
        }
    };
    let admin_listener = match &cfg.admin {
        Some(a) => Some(
            admin::bind(a.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", a.listen))?,
        ),
        None => None,
    };
    let tls = match &cfg.tls {
        None => None,
        Some(t) => {
            let store = tls::CertStore::load(&t.certs)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(store.clone())?);
            let listeners = server::bind(&t.listen, workers)
                .map_err(|(addr, e)| anyhow::anyhow!("cannot listen on {addr} (tls): {e}"))?;
            Some((store, acceptor, listeners))
        }
    };
    let observed = toggle::observe(&cfg.maintenance.toggle);
    let state = Arc::new(State::new(rt, observed));
    // A drained instance stays drained across restarts, from its first answer.
    state.set_drained(toggle::drain_path(&cfg.maintenance.toggle).exists());
    audit::spawn(state.clone());
    if let Some(f) = &cfg.fleet {
        // Before serving: an instance restarted during an etcd outage starts in the last known state.
        if let Some(view) = fleet::restore(f, &cfg.maintenance.toggle) {
            state.set_fleet(view);
        }
    }

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wake = watch::spawn(state.clone(), shutdown.clone()).context("cannot start the toggle watcher")?;
    let fleet_saved = cfg.fleet.as_ref().map(|f| {
        fleet::spawn(
            f.clone(),
            cfg.maintenance.toggle.clone(),
            state.clone(),
            wake.clone(),
            shutdown.clone(),
        )
    });

    let limit = Arc::new(Semaphore::new(cfg.server.max_connections));
    for l in plain.first().into_iter().flatten() {
        let addr = l.local_addr().context("listener has no address")?;
        tracing::info!("listening on {addr} (http)");
    }
    let (cert_store, acceptor, tls_listeners) = match tls {
        Some((store, acceptor, listeners)) => {
            for l in listeners.first().into_iter().flatten() {
                let addr = l.local_addr().context("listener has no address")?;
                tracing::info!("listening on {addr} (https)");
                if state.https_port().is_none() {
                    state.set_https_port(addr.port());
                }
            }
            (Some(store), Some(acceptor), listeners)
        }
        None => (None, None, Vec::new()),
    };
    let mut tls_listeners = tls_listeners.into_iter();
    for (id, mine) in plain.into_iter().enumerate() {
        let worker = Worker {
            id,
            plain: mine,
            tls: tls_listeners.next().unwrap_or_default(),
            acceptor: acceptor.clone(),
            state: state.clone(),
            limit: limit.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        worker.spawn().context("cannot start a worker thread")?;
    }
    {
        let (st, path, certs, w) = (
            state.clone(),
            config_path.to_path_buf(),
            cert_store.clone(),
            wake.clone(),
        );
        watch::spawn_config_watch(state.clone(), shutdown.clone(), move || {
            tracing::info!("config, allowlist or certificate file changed: reloading");
            reload(&path, &st, certs.as_deref());
            w.notify_one();
        })
        .context("cannot watch the config files")?;
    }
    if let Some(l) = admin_listener {
        let addr = l.local_addr().context("admin listener has no address")?;
        tracing::info!("listening on {addr} (admin)");
        tokio::spawn(admin::serve(l, state.clone(), shutdown.clone()));
    }
    {
        let m = &state.snapshot().maint;
        tracing::info!(
            toggle = %cfg.maintenance.toggle.display(),
            maintenance = if m.active { "on" } else { "off" },
            "ready"
        );
    }
    notify(&[NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reload(config_path, &state, cert_store.as_deref());
                wake.notify_one();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }

    notify(&[NotifyState::Stopping]);
    let grace = state.snapshot().rt.config.server.grace_period;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace = ?grace, open = tracker.len(), "grace period over; closing remaining connections");
    }
    // The last fleet change seen is written to `<toggle>.fleet` (a write is under way at most).
    if let Some(saved) = fleet_saved {
        let _ = tokio::time::timeout(FLEET_SAVE_BOUND, saved).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the config again and swaps it in; a bad config is refused and the running one stays.
pub fn reload(path: &Path, state: &State, certs: Option<&tls::CertStore>) {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
    let cur = state.snapshot();
    let started = std::time::Instant::now();
    // On error the store keeps serving the old pair and has logged why.
    let certs_ok = certs.is_none_or(|store| store.reload().is_ok());
    match Config::load(path).and_then(Runtime::build) {
        Ok(mut new) => {
            new.keep_upstream_of(&cur.rt);
            let needs_restart = restart_only_changes(&cur.rt.config, &new.config);
            if !needs_restart.is_empty() {
                tracing::warn!(
                    changed = needs_restart.join(", "),
                    "these settings take effect only after a restart; the rest is applied"
                );
            }
            logging::set_level(&new.config.log.level);
            log_warnings(&new);
            let entries = new.allow.len();
            state.set_runtime(new);
            if certs_ok {
                state.metrics.reloads_ok.inc();
            } else {
                state.metrics.reloads_failed.inc();
            }
            tracing::info!(
                config = %path.display(),
                allowlist_entries = entries,
                ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
                certificates = if certs_ok { "ok" } else { "refused, old ones kept" },
                "config reloaded"
            );
        }
        Err(e) => {
            state.metrics.reloads_failed.inc();
            for line in e.0 {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
        }
    }
    notify(&[NotifyState::Ready]);
}

/// What the config lets through that it likely does not mean to (as `check` prints it).
fn log_warnings(rt: &Runtime) {
    for w in &rt.warnings {
        tracing::warn!("{w}");
    }
}

/// Settings a running daemon cannot change: they are bound at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        out.push("admin.listen");
    }
    if old.tls.as_ref().map(|t| (&t.listen, &t.certs)) != new.tls.as_ref().map(|t| (&t.listen, &t.certs)) {
        out.push("tls (listeners, certificate paths)");
    }
    if old.fleet != new.fleet {
        out.push("fleet");
    }
    if old.log.format != new.log.format {
        out.push("log.format");
    }
    if old.server.max_connections != new.server.max_connections {
        out.push("server.max_connections");
    }
    out
}

fn notify(states: &[NotifyState]) {
    // Without $NOTIFY_SOCKET this does nothing; an error only means systemd is gone.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Sockets passed by systemd socket activation (LISTEN_FDS), if any.
fn inherited_listeners() -> anyhow::Result<Option<Vec<std::net::TcpListener>>> {
    let fds = match sd_notify::listen_fds() {
        Ok(fds) if fds.len() > 0 => fds,
        _ => return Ok(None),
    };
    let mut out = Vec::new();
    for fd in fds {
        use std::os::fd::FromRawFd;
        // SAFETY: systemd passes these descriptors to this process to own;
        // listen_fds() checked LISTEN_PID, and nothing else in the process uses them.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true).context("inherited socket")?;
        l.local_addr().context("inherited socket is not a bound TCP listener")?;
        out.push(l);
    }
    Ok(Some(out))
}

/// One worker: a thread with a single-threaded runtime that accepts on its
/// own listeners and serves its connections (nginx's worker process, as a thread).
struct Worker {
    id: usize,
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Worker {
    fn spawn(self) -> std::io::Result<()> {
        // I/O and timers only: signals and child processes (hooks) are the main
        // runtime's, and their driver would cost every worker park a check.
        let mut rt = tokio::runtime::Builder::new_current_thread();
        rt.enable_io().enable_time();
        // Scheduling knobs for bench/latency.sh; tokio's defaults otherwise.
        if let Some(n) = crate::ab::tune("GATEKEEPER_EVENT_INTERVAL") {
            rt.event_interval(n);
        }
        if let Some(n) = crate::ab::tune("GATEKEEPER_GLOBAL_QUEUE_INTERVAL") {
            rt.global_queue_interval(n);
        }
        if let Some(n) = crate::ab::tune("GATEKEEPER_MAX_IO_EVENTS") {
            rt.max_io_events_per_tick(n as usize);
        }
        let rt = rt.build()?;
        std::thread::Builder::new()
            .name(format!("gatekeeper-worker-{}", self.id))
            .spawn(move || {
                crate::ab::init();
                crate::metrics::set_worker(self.id);
                crate::timers::set_worker();
                rt.block_on(async move {
                    let local = server::Local::new(self.state.clone(), &self.shutdown);
                    let tls = self.acceptor.clone();
                    let sets = [(self.plain, None), (self.tls, tls)];
                    for (listeners, acceptor) in sets {
                        for l in listeners {
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    tokio::spawn(server::accept_loop(
                                        l,
                                        local.clone(),
                                        self.limit.clone(),
                                        self.tracker.clone(),
                                        acceptor.clone(),
                                    ));
                                }
                                Err(e) => tracing::error!(error = %e, "cannot use a listener"),
                            }
                        }
                    }
                    // After the stop signal, keep driving this thread's connections
                    // until they are done (the main thread bounds this by the grace period).
                    self.shutdown.cancelled().await;
                    self.tracker.wait().await;
                });
            })?;
        Ok(())
    }
}

/// Lifts the soft open-files limit to the hard one: every connection is a
/// descriptor (two when proxied), and 1024 is the usual soft default.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
