//! The bodies of `check`, `on`, `off`, `status` and `health`: short and
//! synchronous (a small runtime only for talking to etcd).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{OnArgs, PauseArgs};
use crate::config::{Config, ConfigErrors};
use crate::fleet;
use crate::history;
use crate::maint::{onoff, FleetView, Maint};
use crate::page::human_until;
use crate::runtime::Loaded;
use crate::toggle::{self, ToggleContent, Window};

/// Loads the config and everything it points to; `Err` holds every problem
/// found, `Ok` what it lets through that it likely does not mean to (`misconfig`).
pub fn check(path: &Path) -> Result<(Config, Vec<String>), ConfigErrors> {
    let cfg = Config::load(path)?;
    let loaded = Loaded::load(&cfg)?;
    Ok((cfg, loaded.warnings))
}

/// `check`'s extra word about etcd: reachable or not (never a failure by itself).
pub fn check_fleet(cfg: &Config) -> Option<String> {
    let f = cfg.fleet.as_ref()?;
    Some(match block_on(fleet::get(f)) {
        Ok(Ok((v, rev))) => format!(
            "fleet: etcd reachable ({}, key {} {} at revision {rev})",
            f.endpoints.join(","),
            f.key,
            if v.is_some() { "present" } else { "absent" }
        ),
        Ok(Err(e)) => format!("fleet: warning: {e}"),
        Err(e) => format!("fleet: warning: {e}"),
    })
}

pub fn on(path: &Path, args: OnArgs) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let generated = args.secret.as_deref() == Some("");
    let secret = match args.secret {
        Some(s) if s.is_empty() => Some(new_secret()?),
        other => other,
    };
    let now = jiff::Timestamp::now();
    let until = match (args.until, args.for_) {
        (Some(u), _) => Some(u),
        (None, Some(d)) => {
            let start = args.from.unwrap_or(now);
            let span = jiff::SignedDuration::try_from(d).context("--for is too long")?;
            let end = start.checked_add(span).context("--for is too long")?;
            // Whole seconds: the window is for people to read.
            Some(jiff::Timestamp::from_second(
                end.as_second() + i64::from(end.subsec_nanosecond() > 0),
            )?)
        }
        (None, None) => None,
    };
    if let (Some(f), Some(u)) = (args.from, until) {
        anyhow::ensure!(f < u, "--from {f} is not before the window's end {u}");
    }
    if let Some(u) = until {
        anyhow::ensure!(u > now, "the window's end {u} is already past");
    }
    let content = ToggleContent {
        message: args.message,
        retry_after: args.retry_after,
        secret: secret.clone(),
        from: args.from,
        until,
        read_only: args.read_only,
        paths: args.paths,
        hosts: args.hosts,
        by: Some(history::operator()),
        at: Some(jiff::Timestamp::from_second(now.as_second())?),
        reason: args.reason.clone(),
        ..ToggleContent::default()
    };
    content.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let asked = if args.fleet { "on --fleet" } else { "on" };
    let noted = history::note(history::append_command(
        &cfg.maintenance.toggle,
        asked,
        Some(history::describe(&content)),
        args.reason.as_deref(),
    ));
    let mut out = write_toggle(&cfg, &content, args.fleet, "on")?;
    if let Some(scope) = describe_scope(content.read_only, &content.paths, &content.hosts) {
        out.push_str(&format!("\n{scope}"));
    }
    if let Some(w) = describe(content.from, content.until, content.window_at(now), now) {
        out.push_str(&format!("\n{w}"));
    }
    if let Some(s) = &secret {
        let bypass_path = cfg.bypass.path.trim_end_matches('/');
        out.push_str(&format!(
            "\nbypass link: http://<your-site>{bypass_path}/{s}{}",
            if generated { "  (generated secret)" } else { "" }
        ));
        out.push_str(&format!("\nbypass header: {}: {s}", cfg.bypass.header));
    }
    out.push_str(&noted);
    Ok(out)
}

/// Writes the toggle (or the fleet key) with `content`; "maintenance: <what> (<where>)".
fn write_toggle(cfg: &Config, content: &ToggleContent, fleet_key: bool, what: &str) -> anyhow::Result<String> {
    if fleet_key {
        let f = cfg
            .fleet
            .as_ref()
            .context("--fleet needs a [fleet] section in the config")?;
        let rev = block_on(fleet::put(f, &content.to_toml()))??;
        Ok(format!("maintenance: {what} for the fleet ({}, revision {rev})", f.key))
    } else {
        let t = &cfg.maintenance.toggle;
        toggle::write_atomic(t, content).with_context(|| format!("cannot write toggle {}", t.display()))?;
        Ok(format!("maintenance: {what} ({})", t.display()))
    }
}

/// `pause`: the toggle with `pause = true`.
pub fn pause(path: &Path, args: PauseArgs) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let content = ToggleContent {
        message: args.message,
        pause: true,
        max: args.max,
        by: Some(history::operator()),
        at: Some(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?),
        ..ToggleContent::default()
    };
    let asked = if args.fleet { "pause --fleet" } else { "pause" };
    let noted = history::note(history::append_command(
        &cfg.maintenance.toggle,
        asked,
        Some(history::describe(&content)),
        None,
    ));
    let mut out = write_toggle(&cfg, &content, args.fleet, "paused")?;
    let max = args.max.unwrap_or(crate::maint::DEFAULT_PAUSE_MAX);
    out.push_str(&format!(
        "\nrequests are held (at most {}, then the maintenance answer); `gatekeeper resume` releases them",
        humantime::format_duration(max)
    ));
    out.push_str(&noted);
    Ok(out)
}

/// "scope: read-only; paths /api/, /checkout; hosts shop.example.com", or None for the whole site.
fn describe_scope(read_only: bool, paths: &[String], hosts: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if read_only {
        parts.push("read-only (safe methods reach the app)".to_string());
    }
    if !paths.is_empty() {
        parts.push(format!("paths {}", paths.join(", ")));
    }
    if !hosts.is_empty() {
        parts.push(format!("hosts {}", hosts.join(", ")));
    }
    (!parts.is_empty()).then(|| format!("scope: {}", parts.join("; ")))
}

/// `drain` / `undrain`: this instance's health answer, through `<toggle>.drain`.
pub fn drain(path: &Path, on: bool) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let file = toggle::drain_path(&cfg.maintenance.toggle);
    let asked = if on { "drain" } else { "undrain" };
    let noted = history::note(history::append_command(&cfg.maintenance.toggle, asked, None, None));
    if on {
        let at = jiff::Timestamp::now().to_string();
        crate::fsutil::write_atomic(&file, format!("at = \"{at}\"\n").as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(format!(
            "drained: /.gatekeeper/health answers 503 ({}); `gatekeeper undrain` ends it{noted}",
            file.display()
        ))
    } else {
        toggle::remove(&file).with_context(|| format!("cannot remove {}", file.display()))?;
        Ok(format!("undrained: /.gatekeeper/health answers 200{noted}"))
    }
}

/// `off`, or `resume` (`command` says which, for the history).
pub fn off(path: &Path, fleet_key: bool, reason: Option<&str>, command: &str) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let t = &cfg.maintenance.toggle;
    let asked = if fleet_key {
        format!("{command} --fleet")
    } else {
        command.to_string()
    };
    let asked = asked.as_str();
    let noted = history::note(history::append_command(t, asked, None, reason));
    if fleet_key {
        let f = cfg
            .fleet
            .as_ref()
            .context("--fleet needs a [fleet] section in the config")?;
        let rev = block_on(fleet::delete(f))??;
        return Ok(format!(
            "maintenance: off for the fleet ({}, revision {rev}){noted}",
            f.key
        ));
    }
    toggle::remove(t).with_context(|| format!("cannot remove toggle {}", t.display()))?;
    Ok(format!("maintenance: off{noted}"))
}

pub fn status(path: &Path, show_secret: bool) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let obs = toggle::observe(&cfg.maintenance.toggle);
    let now = jiff::Timestamp::now();
    // The fleet's word as the daemon would take it: the key, or while etcd is
    // unreachable, the last known state under `on_error`.
    let (fleet_view, fleet_line) = match &cfg.fleet {
        None => (None, None),
        Some(f) => match block_on(fleet::get(f)) {
            Ok(Ok((value, revision))) => {
                let line = format!("fleet: {} ({}, revision {revision})", onoff(value.is_some()), f.key);
                let view = FleetView {
                    on: value.is_some(),
                    value,
                    revision,
                    connected: true,
                    ..FleetView::default()
                };
                (Some(view), Some(line))
            }
            Ok(Err(e @ fleet::FleetError::Unreachable { .. })) => (
                fleet::restore(f, &cfg.maintenance.toggle),
                Some(format!("fleet: unreachable ({})", e.reason())),
            ),
            Ok(Err(e)) => (None, Some(format!("fleet: error ({e})"))),
            Err(e) => (None, Some(format!("fleet: unreachable ({e})"))),
        },
    };
    let m = Maint::derive(&obs, fleet_view.as_ref(), &cfg.maintenance, now);
    let since = m.since.map_or_else(
        || "unknown time".to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    );
    let mut out = match m.window {
        _ if !m.present => "maintenance: off".to_string(),
        Window::Active if m.paused => format!(
            "maintenance: paused since {since} (requests held at most {})",
            humantime::format_duration(m.pause_max)
        ),
        Window::Active if m.read_only => format!("maintenance: read-only since {since} ({})", m.message),
        Window::Active => format!("maintenance: on since {since} ({})", m.message),
        Window::Scheduled => format!("maintenance: scheduled ({})", m.message),
        Window::Expired => "maintenance: expired (the window has ended; `gatekeeper on` replaces it)".to_string(),
    };
    if m.present {
        if let Some(scope) = describe_scope(false, &m.paths, &m.hosts) {
            out.push_str(&format!("\n{scope}"));
        }
        // Only with a reason: a plain `on` keeps `status` to its one line (who is in `history`).
        if let Some(who) = m
            .reason
            .as_deref()
            .and_then(|r| history::who(m.by.as_deref(), m.at, Some(r)))
        {
            out.push_str(&format!("\n{who}"));
        }
        if let Some(w) = describe_window(&m, now) {
            out.push_str(&format!("\n{w}"));
        }
        if let Some(s) = &m.secret {
            if show_secret {
                out.push_str(&format!("\nsecret: {s}"));
            } else {
                out.push_str("\nsecret: set (--show-secret prints it)");
            }
        }
        if let Some(w) = &m.warning {
            out.push_str(&format!("\nwarning: {w}"));
        }
    }
    if let Some(line) = fleet_line {
        out.push_str(&format!("\n{line}"));
    }
    out.push_str(&daemon_view(&cfg, m.active));
    Ok(out)
}

/// "window: 2026-12-01T02:00:00Z .. 2026-12-01T02:30:00Z (12m 5s left)" or None.
fn describe_window(m: &Maint, now: jiff::Timestamp) -> Option<String> {
    describe(m.from, m.until, m.window, now)
}

fn describe(
    from: Option<jiff::Timestamp>,
    until: Option<jiff::Timestamp>,
    window: Window,
    now: jiff::Timestamp,
) -> Option<String> {
    if from.is_none() && until.is_none() {
        return None;
    }
    let from_text = from.map_or_else(|| "now".to_string(), |f| f.to_string());
    let until_text = until.map_or_else(|| "until turned off".to_string(), |u| u.to_string());
    let left = match window {
        Window::Scheduled => from.map(|f| format!("starts in {}", left_text(f, now))),
        Window::Active => until.map(|u| format!("{} left, back at {}", left_text(u, now), human_until(u))),
        Window::Expired => Some("ended".to_string()),
    };
    Some(match left {
        Some(l) => format!("window: {from_text} .. {until_text} ({l})"),
        None => format!("window: {from_text} .. {until_text}"),
    })
}

fn left_text(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = t.as_second().saturating_sub(now.as_second()).max(0);
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))).to_string()
}

/// 128 random bits, hex: URL-safe as it is.
fn new_secret() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime to talk to etcd")?;
    Ok(rt.block_on(f))
}

/// A second line when the running daemon (asked through the admin endpoint)
/// does not see what the file says; nothing when they agree or there is no admin endpoint.
fn daemon_view(cfg: &Config, file_on: bool) -> String {
    let Some(admin) = &cfg.admin else { return String::new() };
    match admin_get(admin.listen, "/status") {
        Err(e) => format!("\ndaemon: not reachable at {} ({e})", admin.listen),
        Ok(body) => {
            let v = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
            let daemon_on = v.get("maintenance").and_then(|m| m.as_str()).map(|m| m == "on");
            let mut extra = String::new();
            if let Some(n) = v.get("held").and_then(|n| n.as_u64()).filter(|n| *n > 0) {
                extra.push_str(&format!("\nheld: {n} requests waiting for `gatekeeper resume`"));
            }
            if v.get("drained").and_then(|d| d.as_bool()) == Some(true) {
                extra.push_str("\ndrained: /.gatekeeper/health answers 503 (`gatekeeper undrain` ends it)");
            }
            let seen = match daemon_on {
                Some(d) if d != file_on && cfg.fleet.is_none() => format!(
                    "\ndaemon: sees maintenance {} (the file says {}; it applies changes within `maintenance.recheck` at most)",
                    if d { "on" } else { "off" },
                    if file_on { "on" } else { "off" }
                ),
                Some(d) if d != file_on => format!("\ndaemon: sees maintenance {}", if d { "on" } else { "off" }),
                Some(_) => String::new(),
                None => "\ndaemon: unexpected answer from the admin endpoint".to_string(),
            };
            seen + &extra
        }
    }
}

/// `gatekeeper health`: the admin endpoint's /healthz answers 200.
pub fn health(path: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let admin = cfg.admin.context("no [admin] endpoint configured")?;
    admin_get(admin.listen, "/healthz")?;
    Ok("ok".to_string())
}

/// A minimal HTTP/1.0 GET against the loopback admin endpoint, bounded in time.
fn admin_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "admin endpoint answered {status:?}");
    Ok(body.to_string())
}
