//! The bodies of `check`, `on`, `off` and `status`: short, synchronous, no runtime.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, ConfigErrors};
use crate::state::Loaded;
use crate::toggle::{self, ToggleContent};

/// Loads the config and everything it points to; `Err` holds every problem found.
pub fn check(path: &Path) -> Result<Config, ConfigErrors> {
    let cfg = Config::load(path)?;
    Loaded::load(&cfg)?;
    Ok(cfg)
}

pub fn on(path: &Path, message: Option<String>, retry_after: Option<Duration>) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let toggle = &cfg.maintenance.toggle;
    let content = ToggleContent { message, retry_after };
    toggle::write_atomic(toggle, &content).with_context(|| format!("cannot write toggle {}", toggle.display()))?;
    Ok(format!("maintenance: on ({})", toggle.display()))
}

pub fn off(path: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let toggle = &cfg.maintenance.toggle;
    toggle::remove(toggle).with_context(|| format!("cannot remove toggle {}", toggle.display()))?;
    Ok("maintenance: off".to_string())
}

pub fn status(path: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let obs = toggle::observe(&cfg.maintenance.toggle);
    if !obs.exists {
        return Ok(format!("maintenance: off{}", daemon_view(&cfg, false)));
    }
    let since = obs.since.map_or_else(
        || "unknown time".to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    );
    let message = obs
        .content
        .message
        .clone()
        .unwrap_or_else(|| cfg.maintenance.message.clone());
    let mut out = format!("maintenance: on since {since} ({message})");
    out.push_str(&daemon_view(&cfg, true));
    Ok(out)
}

/// A second line when the running daemon (asked through the admin endpoint)
/// does not see what the file says; nothing when they agree or there is no admin endpoint.
fn daemon_view(cfg: &Config, file_on: bool) -> String {
    let Some(admin) = &cfg.admin else { return String::new() };
    match admin_get(admin.listen, "/status") {
        Err(e) => format!("\ndaemon: not reachable at {} ({e})", admin.listen),
        Ok(body) => {
            let daemon_on = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("maintenance").and_then(|m| m.as_str()).map(|m| m == "on"));
            match daemon_on {
                Some(d) if d != file_on => format!(
                    "\ndaemon: sees maintenance {} (the file says {}; it applies changes within `maintenance.recheck` at most)",
                    if d { "on" } else { "off" },
                    if file_on { "on" } else { "off" }
                ),
                Some(_) => String::new(),
                None => "\ndaemon: unexpected answer from the admin endpoint".to_string(),
            }
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
