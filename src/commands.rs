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
        return Ok("maintenance: off".to_string());
    }
    let since = obs.since.map_or_else(
        || "unknown time".to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    );
    let message = obs.content.message.unwrap_or(cfg.maintenance.message);
    Ok(format!("maintenance: on since {since} ({message})"))
}
