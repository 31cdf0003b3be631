//! The command line (clap derive). `-c/--config` is global, so it may come
//! before or after the subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

#[derive(Parser, Debug)]
#[command(
    name = "gatekeeper",
    version,
    about = "Maintenance mode in front of a web app: a toggle file, trusted client IPs, an allowlist, a 503 page",
    after_help = "Examples:\n  gatekeeper run -c config/gatekeeper.toml\n  gatekeeper on --message \"Upgrading the database\" --retry-after 30m\n  gatekeeper status\n  gatekeeper off"
)]
pub struct Cli {
    /// Config file
    #[arg(short, long, global = true, env = "GATEKEEPER_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this)
    #[command(after_help = "Example:\n  gatekeeper run -c /etc/gatekeeper/gatekeeper.toml\n\n\
        SIGHUP reloads the config; SIGTERM/SIGINT stop accepting, finish in-flight requests and exit 0.")]
    Run,
    /// Validate the config, the allowlist file and the page directory; exit 0, or print errors and exit 2
    #[command(
        after_help = "Example:\n  gatekeeper check -c /etc/gatekeeper/gatekeeper.toml && systemctl reload gatekeeper"
    )]
    Check,
    /// Turn maintenance on (creates the toggle file atomically; idempotent)
    #[command(
        after_help = "Examples:\n  gatekeeper on\n  gatekeeper on --message \"Upgrading the database\" --retry-after 30m\n\n\
        Works whether the daemon runs or not; the daemon notices within milliseconds."
    )]
    On {
        /// Message shown on the maintenance page (replaces {{message}})
        #[arg(long)]
        message: Option<String>,
        /// Retry-After sent to clients, e.g. "30m", "90s" or integer seconds
        #[arg(long, value_parser = parse_duration_arg)]
        retry_after: Option<Duration>,
    },
    /// Turn maintenance off (removes the toggle file; idempotent)
    #[command(after_help = "Example:\n  gatekeeper off")]
    Off,
    /// Print one line: "maintenance: on since <time> (<message>)" or "maintenance: off"
    #[command(
        after_help = "Example:\n  gatekeeper status\n  maintenance: on since 2026-12-01T02:00:00Z (Upgrading the database)"
    )]
    Status,
    /// Exit 0 when the running daemon's admin endpoint answers /healthz (for container health checks)
    #[command(hide = true)]
    Health,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}
