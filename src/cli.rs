//! The command line (clap derive). `-c/--config` is global, so it may come
//! before or after the subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
        after_help = "Examples:\n  gatekeeper on\n  gatekeeper on --message \"Upgrading the database\" --retry-after 30m\n  \
        gatekeeper on --secret                      # prints a bypass link for the team\n  \
        gatekeeper on --from 2026-12-01T02:00:00Z --until 2026-12-01T02:30:00Z\n  \
        gatekeeper on --for 30m --fleet             # every instance, through etcd\n  \
        gatekeeper on --read-only                   # reads still work, writes get the page\n  \
        gatekeeper on --path /api/ --host shop.example.com\n\n\
        Works whether the daemon runs or not; the daemon notices within milliseconds."
    )]
    On(OnArgs),
    /// Hold requests instead of answering them, while the app restarts; `resume` releases them
    #[command(
        after_help = "Examples:\n  gatekeeper pause && systemctl restart myapp && gatekeeper resume\n  \
        gatekeeper pause --max 10s\n\n\
        Every request but bypass paths waits, in arrival order, without reaching the app; one held\n\
        longer than --max (30s) gets the maintenance answer. Beyond maintenance.max_held held\n\
        requests, the next gets it at once."
    )]
    Pause(PauseArgs),
    /// Release held requests (the same as `off`)
    #[command(after_help = "Example:\n  gatekeeper resume")]
    Resume {
        /// Delete the fleet key in etcd instead of the local toggle file
        #[arg(long)]
        fleet: bool,
    },
    /// Take this instance out of its load balancer: /.gatekeeper/health answers 503 (kept across restarts)
    #[command(
        after_help = "Example:\n  gatekeeper drain && sleep 30 && systemctl restart gatekeeper && gatekeeper undrain"
    )]
    Drain,
    /// Put this instance back: /.gatekeeper/health answers 200 again
    #[command(after_help = "Example:\n  gatekeeper undrain")]
    Undrain,
    /// Turn maintenance off (removes the toggle file; idempotent)
    #[command(after_help = "Examples:\n  gatekeeper off\n  gatekeeper off --fleet")]
    Off {
        /// Delete the fleet key in etcd instead of the local toggle file
        #[arg(long)]
        fleet: bool,
        /// Why, for the history
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Print "maintenance: on since <time> (<message>)" or "maintenance: off", and what else applies
    #[command(
        after_help = "Example:\n  gatekeeper status\n  maintenance: on since 2026-12-01T02:00:00Z (Upgrading the database)"
    )]
    Status {
        /// Print the bypass secret too (it is otherwise only said to be set)
        #[arg(long)]
        show_secret: bool,
    },
    /// Print, step by step, how the daemon would decide a request: peer, forwarding header, client, allowlist, maintenance, credential
    #[command(after_help = "Examples:\n  \
        gatekeeper explain --peer 10.0.0.5 --header 'X-Forwarded-For: 1.2.3.4, 10.0.0.9' --method POST --host shop.example.com /checkout\n  \
        gatekeeper explain --peer 127.0.0.1 --json /\n\n\
        Decided by the daemon's own code against the config, its files, the toggle and the fleet's last known state.")]
    Explain(ExplainArgs),
    /// Exit 0 when the running daemon's admin endpoint answers /healthz (for container health checks)
    #[command(hide = true)]
    Health,
    /// Print the man page (roff, section 8), made from these commands and options
    #[command(
        after_help = "Examples:\n  gatekeeper man | man -l -\n  gatekeeper man > /usr/local/share/man/man8/gatekeeper.8"
    )]
    Man,
    /// Print the shell completion script for bash, zsh or fish
    #[command(
        after_help = "Examples:\n  gatekeeper completions bash > /etc/bash_completion.d/gatekeeper\n  \
        gatekeeper completions zsh > /usr/local/share/zsh/site-functions/_gatekeeper\n  \
        gatekeeper completions fish > ~/.config/fish/completions/gatekeeper.fish"
    )]
    Completions {
        /// The shell to write the script for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Named bypass tokens: one per person, with its own expiry, revocable alone
    #[command(
        after_help = "Examples:\n  gatekeeper token add alice --ttl 30d   # prints alice's bypass link, once\n  \
        gatekeeper token list\n  gatekeeper token revoke alice          # her cookies stop working at once"
    )]
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Print the last commands and flips from <toggle>.history, newest last
    #[command(after_help = "Example:\n  gatekeeper history -n 50")]
    History {
        /// How many entries
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
}

/// The shells the package ships completions for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token and print its bypass link and header (only a hash is stored)
    Add {
        /// Who it is for: letters, digits, '-', '_'
        name: String,
        /// Lifetime, e.g. "30d", "12h" (default: until revoked)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        ttl: Option<Duration>,
    },
    /// List tokens: name, created, expires (never the token)
    List,
    /// Remove a token; every cookie it set stops working at once
    Revoke { name: String },
}

#[derive(Args, Debug, Default)]
pub struct OnArgs {
    /// Message shown on the maintenance page (replaces {{message}})
    #[arg(long)]
    pub message: Option<String>,
    /// Retry-After sent to clients, e.g. "30m", "90s" or integer seconds
    #[arg(long, value_parser = parse_duration_arg)]
    pub retry_after: Option<Duration>,
    /// Let holders of a bypass token in: given, or generated and printed with the bypass link
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "TOKEN")]
    pub secret: Option<String>,
    /// Start of a scheduled window (RFC 3339, e.g. 2026-12-01T02:00:00Z)
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub from: Option<jiff::Timestamp>,
    /// End of the window (RFC 3339); Retry-After counts down to it
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg, conflicts_with = "for_")]
    pub until: Option<jiff::Timestamp>,
    /// Length of the window, from --from or from now (e.g. 30m)
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub for_: Option<Duration>,
    /// Write the fleet key in etcd (every instance) instead of the local toggle file
    #[arg(long)]
    pub fleet: bool,
    /// Read-only: GET, HEAD, OPTIONS and TRACE still reach the app for everyone
    #[arg(long)]
    pub read_only: bool,
    /// Only this path prefix is in maintenance (whole segments; repeatable)
    #[arg(long = "path", value_name = "PREFIX")]
    pub paths: Vec<String>,
    /// Only this host is in maintenance (`*.example.org` for its subdomains; repeatable)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Why: kept in the toggle with who and when, shown by `status` and `history`
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The address the request comes from, as gatekeeper sees the connection (the TCP peer)
    #[arg(long, value_name = "IP")]
    pub peer: std::net::IpAddr,
    /// A request header, e.g. 'X-Forwarded-For: 1.2.3.4' (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The request method
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The Host header (default: the first listen address)
    #[arg(long)]
    pub host: Option<String>,
    /// The request arrived on a TLS listener
    #[arg(long)]
    pub https: bool,
    /// Print JSON (the same as /.gatekeeper/whoami)
    #[arg(long)]
    pub json: bool,
    /// The request's path (and query)
    #[arg(default_value = "/")]
    pub path: String,
}

#[derive(Args, Debug, Default)]
pub struct PauseArgs {
    /// Longest a request is held; then it gets the maintenance answer (default 30s)
    #[arg(long, value_parser = parse_duration_arg)]
    pub max: Option<Duration>,
    /// Message of the maintenance answer given to requests held too long
    #[arg(long)]
    pub message: Option<String>,
    /// Write the fleet key in etcd (every instance) instead of the local toggle file
    #[arg(long)]
    pub fleet: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}

fn parse_time_arg(s: &str) -> Result<jiff::Timestamp, String> {
    s.parse::<jiff::Timestamp>()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-12-01T02:00:00Z: {e}"))
}
