//! The validated configuration: `Config::load` reads the TOML file, rejects
//! unknown keys, fills defaults, and reports every problem with file, line,
//! column and key. Paths in the file are relative to the file's directory.

mod build;
mod error;
mod raw;

pub use error::{line_col, ConfigError, ConfigErrors};

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::Collector;
use ipnet::IpNet;
use raw::RawConfig;

use crate::client_ip::ForwardHeader;

/// Where `gatekeeper` looks for its config when neither `-c` nor `GATEKEEPER_CONFIG` says.
pub const DEFAULT_PATH: &str = "/etc/gatekeeper/gatekeeper.toml";

/// The page's message when neither the toggle file nor `maintenance.message` gives one.
pub const DEFAULT_MESSAGE: &str = "We are performing scheduled maintenance and will be back shortly.";

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, as the operator named it.
    pub file: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub upstream: Upstream,
    pub maintenance: Maintenance,
    pub clients: Clients,
    pub server: Server,
    pub buffering: Buffering,
    pub log: Log,
    /// The admin endpoint (`/metrics`, `/status`, `/healthz`), when configured.
    pub admin: Option<Admin>,
    pub tls: Option<Tls>,
    /// One switch for many instances, through etcd.
    pub fleet: Option<Fleet>,
    pub bypass: Bypass,
    pub hooks: Hooks,
}

/// What runs on every flip the daemon applies (see the `hooks` module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// argv of a program run with the flip in its environment; empty: none.
    pub on_change: Vec<String>,
    /// `http(s)://` URL that gets `{"text": ...}` POSTed.
    pub webhook: Option<http::Uri>,
    /// PEM CA bundle trusted for the webhook besides the system's roots.
    pub webhook_ca: Option<PathBuf>,
}

/// The secret bypass link, cookie and header.
#[derive(Debug, Clone)]
pub struct Bypass {
    /// Path prefix of the link; the token follows it. Always ends with '/'.
    pub path: String,
    pub cookie_name: String,
    pub cookie_ttl: Duration,
    pub header: http::HeaderName,
    /// Named bypass tokens (hashes only); default `tokens` next to the toggle.
    pub tokens_file: PathBuf,
}

/// While etcd cannot be reached: keep the last known state, or fail closed/open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Keep,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// etcd v3 endpoints, e.g. "http://127.0.0.1:2379".
    pub endpoints: Vec<String>,
    /// The key whose existence means maintenance for every instance.
    pub key: String,
    pub on_error: OnError,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `[fleet.tls]`: CA bundle, client certificate and key for TLS to etcd.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// One certificate/key pair and the server names it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// SNI names this pair serves (`example.com`, `*.example.com`); empty means
    /// it is the default pair, served when no name matches.
    pub names: Vec<String>,
    /// PEM certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// The default certificate first, then the SNI ones.
    pub certs: Vec<CertFiles>,
    /// Answer plain-HTTP requests with 308 to https (bypass paths excepted).
    pub redirect_http: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `http://host:port`: authority to connect to.
    Http(http::uri::Authority),
    /// `h2c://host:port`: HTTP/2 with prior knowledge (gRPC-style apps).
    H2c(http::uri::Authority),
    /// `unix:/run/app.sock`.
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub target: UpstreamTarget,
    pub connect_timeout: Duration,
    /// Deadline for the whole response head.
    pub timeout: Duration,
    /// Most silence between two reads of the answer's body; then it is cut off.
    pub read_timeout: Duration,
    /// Most time the upstream may go without taking more of the request body.
    pub send_timeout: Duration,
    /// How long a request is held while the upstream refuses connections
    /// (counts inside `timeout`); zero: 502 at once.
    pub wait: Duration,
}

#[derive(Debug, Clone)]
pub struct Maintenance {
    pub toggle: PathBuf,
    /// Page directory; `None` means the page built into the binary.
    pub dir: Option<PathBuf>,
    pub retry_after: Duration,
    /// Shown when the toggle file gives no message.
    pub message: String,
    pub bypass_paths: Vec<String>,
    /// Slow re-check of the toggle, in case an inotify event was missed.
    pub recheck: Duration,
    /// `/.well-known/acme-challenge/` reaches the app during maintenance.
    pub acme: bool,
    /// Beyond this many held requests, the next gets the maintenance answer at once.
    pub max_held: usize,
    /// How long before a scheduled window `banner.js` announces it.
    pub announce: Duration,
}

#[derive(Debug, Clone)]
pub struct Clients {
    pub allow: Vec<IpNet>,
    pub allow_file: Option<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    pub header: ForwardHeader,
    /// `GET /.gatekeeper/whoami` shows a visitor how their request is decided.
    pub whoami: bool,
}

/// Connection limits that protect the daemon from slow and greedy clients.
#[derive(Debug, Clone)]
pub struct Server {
    /// Time to send a request head; also how long an idle keep-alive connection is kept.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub grace_period: Duration,
    pub max_connections: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Worker threads, each a single-threaded event loop (0: one per core).
    pub workers: usize,
    /// After an answer given before the request body was read: how long at
    /// most the rest is read and discarded before closing (nginx's `lingering_time`).
    pub linger: Duration,
}

#[derive(Debug, Clone)]
pub struct Buffering {
    pub requests: bool,
    pub responses: bool,
    pub memory: usize,
    pub dir: Option<PathBuf>,
    pub max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub level: String,
    pub format: LogFormat,
    pub access: bool,
    /// Access lines for `/.gatekeeper/health` too (a load balancer asks every few seconds).
    pub health: bool,
}

impl Config {
    /// Reads and validates `path`. File-system checks (toggle directory, allowlist
    /// file, page directory) are done by `Runtime::build`, which also loads them.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                pos: None,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut c = Collector::new(path.display().to_string(), text);
        let raw = match deserialize(text) {
            Ok(raw) => raw,
            Err((span, key, msg)) => {
                c.at(span, key, msg);
                return Err(ConfigErrors(c.errors));
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let cfg = build::build(raw, &base, path, &mut c);
        if c.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(c.errors))
        }
    }
}

type DeError = (Option<Range<usize>>, String, String);

fn deserialize(text: &str) -> Result<RawConfig, DeError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| (e.span(), String::new(), e.message().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> shows up in the path as an internal field; it is not a key.
        let mut key = e
            .path()
            .to_string()
            .split('.')
            .filter(|seg| !seg.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        if key == "." || key.is_empty() {
            key.clear();
        }
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        // serde reports the *table* for unknown and missing keys; name the key itself.
        if let Some(field) = backticked(&msg, "unknown field `").or_else(|| backticked(&msg, "missing field `")) {
            if key.is_empty() {
                key = field;
            } else if key != field && !key.ends_with(&format!(".{field}")) {
                key = format!("{key}.{field}");
            }
        }
        let msg = match msg.split_once(", expected one of") {
            Some((head, _)) if msg.starts_with("unknown field") => format!("{head} (unknown key)"),
            _ => msg,
        };
        (inner.span(), key, msg)
    })
}

fn backticked(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
listen = ["127.0.0.1:8080"]
[upstream]
url = "http://127.0.0.1:8000"
[maintenance]
toggle = "/tmp/gk/maintenance-mode-on"
"#;

    fn errs(text: &str) -> Vec<String> {
        match Config::parse(Path::new("gatekeeper.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::parse(Path::new("/etc/gk/gatekeeper.toml"), MIN).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.upstream.timeout, Duration::from_secs(60));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.maintenance.retry_after, Duration::from_secs(600));
        assert_eq!(c.maintenance.recheck, Duration::from_secs(2));
        assert!(c.maintenance.dir.is_none());
        assert!(c.buffering.requests && c.buffering.responses);
        assert_eq!(c.buffering.memory, 64 << 10);
        assert_eq!(c.buffering.max_body, 100 << 20);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.clients.header, ForwardHeader::XForwardedFor);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = MIN.replace("/tmp/gk/maintenance-mode-on", "state/on");
        let c = Config::parse(Path::new("/etc/gk/gatekeeper.toml"), &text).map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.maintenance.toggle), Ok(PathBuf::from("/etc/gk/state/on")));
    }

    #[test]
    fn bad_cidr_names_line_column_and_key() {
        let text = format!("{MIN}[clients]\nallow = [\"203.0.113.7\", \"10.0.0.0/33\"]\n");
        assert_eq!(
            errs(&text),
            vec!["gatekeeper.toml:8:25: clients.allow[1]: \"10.0.0.0/33\" is not an IP address or CIDR range"]
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = errs(&format!("colour = 1\n{MIN}"));
        assert_eq!(
            e,
            vec!["gatekeeper.toml:1:1: colour: unknown field `colour` (unknown key)"]
        );
        let e = errs(&format!("{MIN}colour = 1\n"));
        assert_eq!(
            e,
            vec!["gatekeeper.toml:7:1: maintenance.colour: unknown field `colour` (unknown key)"]
        );
        let e = errs(&MIN.replace("[upstream]", "[upstream]\ntimeuot = \"5s\""));
        assert_eq!(
            e,
            vec!["gatekeeper.toml:4:1: upstream.timeuot: unknown field `timeuot` (unknown key)"]
        );
    }

    #[test]
    fn missing_required_key() {
        let e = errs(&MIN.replace("url = \"http://127.0.0.1:8000\"", ""));
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("upstream.url: missing field `url`"), "{e:?}");
    }

    #[test]
    fn wrong_type_and_bad_values() {
        let e = errs(&MIN.replace("\"http://127.0.0.1:8000\"", "8000"));
        assert!(
            e[0].starts_with("gatekeeper.toml:4:7: upstream.url: invalid type: integer `8000`"),
            "{e:?}"
        );
        let e = errs(&format!("{MIN}retry_after = \"soon\"\n"));
        assert_eq!(
            e,
            vec!["gatekeeper.toml:7:15: maintenance.retry_after: \"soon\" is not a duration (use e.g. \"250ms\", \"5s\", \"10m\", \"1h\" or integer seconds)"]
        );
        let e = errs(&MIN.replace("127.0.0.1:8080", "localhost"));
        assert!(
            e[0].starts_with("gatekeeper.toml:2:11: listen[0]: \"localhost\" is not an address:port"),
            "{e:?}"
        );
        let e = errs(&MIN.replace("http://127.0.0.1:8000", "ftp://x"));
        assert!(
            e[0].contains("upstream.url: \"ftp://x\" is not an upstream URL"),
            "{e:?}"
        );
        let e = errs(&format!("{MIN}[log]\nformat = \"xml\"\nlevel = \"loud\"\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errs(&format!("{MIN}[buffering]\nmemory = \"lots\"\n"));
        assert!(e[0].contains("buffering.memory: \"lots\" is not a size"), "{e:?}");
        let e = errs(&format!("{MIN}[clients]\nheader = \"X Bad\"\n"));
        assert!(e[0].starts_with("gatekeeper.toml:8:10: clients.header:"), "{e:?}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errs("listen = [\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e, vec!["gatekeeper.toml:1:11: unclosed array, expected `]`"]);
    }

    #[test]
    fn collects_several_errors() {
        let text = format!("{MIN}[clients]\nallow = [\"x\", \"y\"]\ntrusted_proxies = [\"z\"]\n");
        assert_eq!(errs(&text).len(), 3);
    }

    #[test]
    fn unix_upstream() {
        let text = MIN.replace("http://127.0.0.1:8000", "unix:/run/app.sock");
        let c = Config::parse(Path::new("g.toml"), &text).map_err(|e| e.to_string());
        assert_eq!(
            c.map(|c| c.upstream.target),
            Ok(UpstreamTarget::Unix("/run/app.sock".into()))
        );
    }

    #[test]
    fn hooks_and_tokens_file() {
        let c = Config::parse(Path::new("/etc/gk/g.toml"), MIN).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.bypass.tokens_file, PathBuf::from("/tmp/gk/tokens"));
        assert_eq!(c.hooks, Hooks::default());
        let text = format!(
            "{MIN}[bypass]\ntokens_file = \"t\"\n[hooks]\non_change = [\"/bin/notify\", \"ops\"]\n\
             webhook = \"https://chat.example/hooks/x\"\nwebhook_ca = \"ca.pem\"\n"
        );
        let c = Config::parse(Path::new("/etc/gk/g.toml"), &text).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.bypass.tokens_file, PathBuf::from("/etc/gk/t"));
        assert_eq!(c.hooks.on_change, ["/bin/notify", "ops"]);
        assert_eq!(
            c.hooks.webhook.map(|u| u.to_string()).as_deref(),
            Some("https://chat.example/hooks/x")
        );
        assert_eq!(c.hooks.webhook_ca, Some(PathBuf::from("/etc/gk/ca.pem")));
        assert_eq!(
            errs(&format!("{MIN}[hooks]\nwebhook = \"ftp://x\"\non_change = [\"\"]\n")),
            vec![
                "gatekeeper.toml:9:13: hooks.on_change: the program (first element) is empty",
                "gatekeeper.toml:8:11: hooks.webhook: \"ftp://x\" is not an https:// (or http://) URL",
            ]
        );
    }
}
