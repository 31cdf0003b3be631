//! Hooks on every flip the daemon applies: `[hooks] on_change` (a program, argv
//! without a shell, the flip in its environment) and `webhook` (see the
//! `webhook` module). One task per kind on the daemon's main runtime, fed by a
//! `watch` channel that keeps only the latest flip: at most one run per kind at
//! a time, and flips that arrive meanwhile coalesce into one run with the
//! latest state. Each run is bounded by [`TIMEOUT`] — a program is killed (its
//! whole process group), a webhook abandoned. Never on the request path;
//! failures are logged and counted. The hooks are read from the running config
//! at each run, so a reload applies to the next one.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::config::Hooks as HooksConfig;
use crate::maint::onoff;
use crate::state::State;

/// How long a hook may run: the program is killed, the webhook abandoned after it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of a program's stderr that make it into the log, per run.
const STDERR_LINES: usize = 20;

/// One flip as the hooks (and the history) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlipEvent {
    pub at: jiff::Timestamp,
    pub was: bool,
    pub now: bool,
    /// `file`, `fleet` or `schedule`.
    pub source: &'static str,
    pub cause: String,
    /// The page's message while on.
    pub message: Option<String>,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub until: Option<jiff::Timestamp>,
    pub toggle: PathBuf,
}

impl FlipEvent {
    /// The program's environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        vec![
            ("GATEKEEPER_MAINTENANCE", onoff(self.now).to_string()),
            ("GATEKEEPER_WAS", onoff(self.was).to_string()),
            ("GATEKEEPER_MESSAGE", opt(&self.message)),
            ("GATEKEEPER_BY", opt(&self.by)),
            ("GATEKEEPER_REASON", opt(&self.reason)),
            ("GATEKEEPER_SOURCE", self.source.to_string()),
            ("GATEKEEPER_CAUSE", self.cause.clone()),
            (
                "GATEKEEPER_UNTIL",
                self.until.map(|u| u.to_string()).unwrap_or_default(),
            ),
        ]
    }

    /// The webhook's one line, e.g. `web1: maintenance on (file, by alice@web1:
    /// db migration) — Upgrading the database; until 2026-12-01T03:00:00Z`.
    pub fn text(&self, host: &str) -> String {
        let what = if self.was == self.now {
            "maintenance settings changed".to_string()
        } else {
            format!("maintenance {}", onoff(self.now))
        };
        let mut out = format!("{host}: {what} ({}", self.source);
        if let Some(b) = &self.by {
            out.push_str(&format!(", by {b}"));
        }
        if let Some(r) = &self.reason {
            out.push_str(&format!(": {r}"));
        }
        out.push(')');
        if let Some(m) = &self.message {
            out.push_str(&format!(" — {m}"));
        }
        if let Some(u) = self.until {
            out.push_str(&format!("; until {u}"));
        }
        out
    }
}

/// Where flips go to reach the hooks.
pub struct Hooks {
    command: watch::Sender<Option<Arc<FlipEvent>>>,
    webhook: watch::Sender<Option<Arc<FlipEvent>>>,
}

/// How one run ended.
enum Run {
    Ok,
    Failed(String),
    TimedOut,
}

impl Run {
    fn label(&self) -> &'static str {
        match self {
            Run::Ok => "ok",
            Run::Failed(_) => "failed",
            Run::TimedOut => "timeout",
        }
    }
}

impl Hooks {
    /// Starts the two tasks (on the current runtime).
    pub fn spawn(state: Arc<State>) -> Hooks {
        let (command, rx) = watch::channel(None);
        tokio::spawn(each_latest(state.clone(), rx, "command", |cfg, ev| {
            let argv = cfg.on_change.clone();
            async move {
                if argv.is_empty() {
                    return None;
                }
                Some(run_program(&argv, &ev).await)
            }
        }));
        let (webhook, rx) = watch::channel(None);
        tokio::spawn(each_latest(state, rx, "webhook", |cfg, ev| {
            let (url, ca) = (cfg.webhook.clone(), cfg.webhook_ca.clone());
            async move {
                let url = url?;
                let text = ev.text(&crate::history::hostname());
                Some(
                    match tokio::time::timeout(TIMEOUT, crate::webhook::post(&url, ca.as_deref(), &text)).await {
                        Ok(Ok(())) => Run::Ok,
                        Ok(Err(e)) => Run::Failed(e.to_string()),
                        Err(_) => Run::TimedOut,
                    },
                )
            }
        }));
        Hooks { command, webhook }
    }

    /// Hands a flip to both hooks; a run in progress sees only the latest when it ends.
    pub fn notify(&self, ev: Arc<FlipEvent>) {
        self.command.send_replace(Some(ev.clone()));
        self.webhook.send_replace(Some(ev));
    }
}

/// Runs `run` for the latest event each time one arrives, one at a time; logs and counts it.
async fn each_latest<F, Fut>(
    state: Arc<State>,
    mut rx: watch::Receiver<Option<Arc<FlipEvent>>>,
    kind: &'static str,
    run: F,
) where
    F: Fn(&HooksConfig, Arc<FlipEvent>) -> Fut,
    Fut: std::future::Future<Output = Option<Run>>,
{
    while rx.changed().await.is_ok() {
        let Some(ev) = rx.borrow_and_update().clone() else {
            continue;
        };
        let started = Instant::now();
        let cfg = state.snapshot().rt.config.hooks.clone();
        let Some(result) = run(&cfg, ev.clone()).await else {
            continue;
        };
        state.metrics.hook_run(kind, result.label());
        let (state_now, ms) = (onoff(ev.now), started.elapsed().as_millis());
        match result {
            Run::Ok => tracing::info!(hook = kind, maintenance = state_now, ms, "hook ran"),
            Run::Failed(e) => tracing::warn!(hook = kind, maintenance = state_now, ms, "hook failed: {e}"),
            Run::TimedOut => tracing::warn!(
                hook = kind,
                maintenance = state_now,
                "hook {} after {}s",
                if kind == "command" { "killed" } else { "abandoned" },
                TIMEOUT.as_secs()
            ),
        }
    }
}

/// Runs `argv` with the flip in its environment, in a process group of its
/// own so that a timeout kills whatever it started too.
async fn run_program(argv: &[String], ev: &FlipEvent) -> Run {
    let Some((program, args)) = argv.split_first() else {
        return Run::Ok;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(ev.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Run::Failed(format!("cannot run {program}: {e}")),
    };
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_stderr(err, program.clone()));
    }
    match tokio::time::timeout(TIMEOUT, child.wait()).await {
        Ok(Ok(s)) if s.success() => Run::Ok,
        Ok(Ok(s)) => Run::Failed(format!("{program} {s}")),
        Ok(Err(e)) => Run::Failed(format!("{program}: {e}")),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: a plain syscall; the group is the child's own (process_group(0)).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            Run::TimedOut
        }
    }
}

/// Logs the first lines a program writes to stderr, and reads the rest away.
async fn log_stderr(err: tokio::process::ChildStderr, program: String) {
    let mut lines = BufReader::new(err).lines();
    let mut n = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        n += 1;
        if n <= STDERR_LINES {
            let line: String = line.chars().take(500).collect();
            tracing::info!(hook = "command", program = %program, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> FlipEvent {
        FlipEvent {
            at: jiff::Timestamp::UNIX_EPOCH,
            was: false,
            now: true,
            source: "file",
            cause: "inotify".into(),
            message: Some("Upgrading".into()),
            by: Some("alice@web1".into()),
            reason: Some("db migration".into()),
            until: "2026-12-01T03:00:00Z".parse().ok(),
            toggle: PathBuf::from("/tmp/on"),
        }
    }

    #[test]
    fn text_and_environment() {
        assert_eq!(
            ev().text("web1"),
            "web1: maintenance on (file, by alice@web1: db migration) — Upgrading; until 2026-12-01T03:00:00Z"
        );
        let off = FlipEvent {
            was: true,
            now: false,
            message: None,
            by: None,
            reason: None,
            until: None,
            ..ev()
        };
        assert_eq!(off.text("web1"), "web1: maintenance off (file)");
        let env = ev().env();
        assert!(env.contains(&("GATEKEEPER_MAINTENANCE", "on".into())));
        assert!(env.contains(&("GATEKEEPER_UNTIL", "2026-12-01T03:00:00Z".into())));
        assert!(off.env().contains(&("GATEKEEPER_BY", String::new())));
    }

    #[tokio::test]
    async fn programs_run_fail_and_report() {
        let ok = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        assert!(matches!(
            run_program(&ok("test \"$GATEKEEPER_MAINTENANCE\" = on"), &ev()).await,
            Run::Ok
        ));
        assert!(matches!(run_program(&ok("exit 3"), &ev()).await, Run::Failed(e) if e.contains("3")));
        let missing = vec!["/nonexistent/notify".to_string()];
        assert!(matches!(run_program(&missing, &ev()).await, Run::Failed(e) if e.contains("cannot run")));
    }
}
