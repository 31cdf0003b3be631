//! The validated configuration: `Config::load` reads the TOML file, rejects
//! unknown keys, fills defaults, and reports every problem with file, line,
//! column and key. Paths in the file are relative to the file's directory.

mod error;
mod raw;

pub use error::{line_col, ConfigError, ConfigErrors};

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::Collector;
use ipnet::IpNet;
use raw::{RawConfig, S};

use crate::allowlist;
use crate::client_ip::ForwardHeader;
use crate::units::{parse_duration, parse_size};

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
}

/// The secret bypass link, cookie and header.
#[derive(Debug, Clone)]
pub struct Bypass {
    /// Path prefix of the link; the token follows it. Always ends with '/'.
    pub path: String,
    pub cookie_name: String,
    pub cookie_ttl: Duration,
    pub header: http::HeaderName,
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

/// One certificate and the server names it is for (empty: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// The certificate sources in the TLS module's terms.
    pub fn specs(&self) -> Vec<crate::tls::CertSpec> {
        self.certs
            .iter()
            .map(|c| crate::tls::CertSpec {
                names: c.names.clone(),
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect()
    }
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
}

#[derive(Debug, Clone)]
pub struct Clients {
    pub allow: Vec<IpNet>,
    pub allow_file: Option<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    pub header: ForwardHeader,
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
        let cfg = build(raw, &base, path, &mut c);
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

fn span<T>(s: &S<T>) -> Option<Range<usize>> {
    Some(s.span())
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn duration(c: &mut Collector, v: &Option<S<toml::Value>>, key: &str, default: Duration) -> Duration {
    let Some(v) = v else { return default };
    let parsed = match v.get_ref() {
        toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        toml::Value::String(s) => parse_duration(s),
        other => Err(format!(
            "expected a duration such as \"5s\", found {}",
            other.type_str()
        )),
    };
    parsed.unwrap_or_else(|m| {
        c.at(span(v), key, m);
        default
    })
}

fn size(c: &mut Collector, v: &Option<S<toml::Value>>, key: &str, default: u64) -> u64 {
    let Some(v) = v else { return default };
    let parsed = match v.get_ref() {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::String(s) => parse_size(s),
        other => Err(format!("expected a size such as \"64KiB\", found {}", other.type_str())),
    };
    parsed.unwrap_or_else(|m| {
        c.at(span(v), key, m);
        default
    })
}

fn nets(c: &mut Collector, list: &[S<String>], key: &str) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match allowlist::parse_entry(s.get_ref()) {
            Ok(n) => out.push(n),
            Err(e) => c.at(span(s), format!("{key}[{i}]"), e.to_string()),
        }
    }
    out
}

fn build(raw: RawConfig, base: &Path, file: &Path, c: &mut Collector) -> Config {
    let mut listen = Vec::new();
    for (i, l) in raw.listen.get_ref().iter().enumerate() {
        match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => c.at(
                span(l),
                format!("listen[{i}]"),
                format!(
                    "{:?} is not an address:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    l.get_ref()
                ),
            ),
        }
    }
    if raw.listen.get_ref().is_empty() {
        c.at(span(&raw.listen), "listen", "at least one listen address is required");
    }

    let u = &raw.upstream;
    let target = parse_upstream(u.url.get_ref(), base).unwrap_or_else(|m| {
        c.at(span(&u.url), "upstream.url", m);
        UpstreamTarget::Unix(PathBuf::new())
    });
    let upstream = Upstream {
        target,
        connect_timeout: duration(
            c,
            &u.connect_timeout,
            "upstream.connect_timeout",
            Duration::from_secs(5),
        ),
        timeout: duration(c, &u.timeout, "upstream.timeout", Duration::from_secs(60)),
    };

    let m = &raw.maintenance;
    if m.toggle.get_ref().trim().is_empty() {
        c.at(span(&m.toggle), "maintenance.toggle", "must name a file");
    }
    let mut bypass_paths = Vec::new();
    for (i, p) in m.bypass_paths.iter().enumerate() {
        if p.get_ref().starts_with('/') {
            bypass_paths.push(p.get_ref().clone());
        } else {
            c.at(
                span(p),
                format!("maintenance.bypass_paths[{i}]"),
                format!("{:?} must start with '/'", p.get_ref()),
            );
        }
    }
    let recheck = duration(c, &m.recheck, "maintenance.recheck", Duration::from_secs(2));
    if recheck.is_zero() {
        c.at(
            m.recheck.as_ref().and_then(span),
            "maintenance.recheck",
            "must be more than 0",
        );
    }
    let maintenance = Maintenance {
        toggle: resolve_path(base, m.toggle.get_ref()),
        dir: m.dir.as_ref().map(|d| resolve_path(base, d.get_ref())),
        retry_after: duration(c, &m.retry_after, "maintenance.retry_after", Duration::from_secs(600)),
        message: m.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_string()),
        bypass_paths,
        recheck,
    };

    let cl = &raw.clients;
    let header = match &cl.header {
        None => ForwardHeader::default(),
        Some(h) => ForwardHeader::parse(h.get_ref()).unwrap_or_else(|e| {
            c.at(span(h), "clients.header", e.to_string());
            ForwardHeader::default()
        }),
    };
    let clients = Clients {
        allow: nets(c, &cl.allow, "clients.allow"),
        allow_file: cl.allow_file.as_ref().map(|f| resolve_path(base, f.get_ref())),
        trusted_proxies: nets(c, &cl.trusted_proxies, "clients.trusted_proxies"),
        header,
    };

    let s = &raw.server;
    let count = |c: &mut Collector, v: &Option<S<i64>>, key: &str, default: usize, min: i64| match v {
        None => default,
        Some(n) if *n.get_ref() >= min => usize::try_from(*n.get_ref()).unwrap_or(default),
        Some(n) => {
            c.at(span(n), key, format!("must be at least {min}"));
            default
        }
    };
    let max_header_size = size(c, &s.max_header_size, "server.max_header_size", 64 << 10);
    if max_header_size < 8192 {
        c.at(
            s.max_header_size.as_ref().and_then(span),
            "server.max_header_size",
            "must be at least 8KiB",
        );
    }
    let server = Server {
        header_timeout: duration(c, &s.header_timeout, "server.header_timeout", Duration::from_secs(10)),
        body_timeout: duration(c, &s.body_timeout, "server.body_timeout", Duration::from_secs(60)),
        grace_period: duration(c, &s.grace_period, "server.grace_period", Duration::from_secs(30)),
        max_connections: count(c, &s.max_connections, "server.max_connections", 16384, 1),
        max_header_size: usize::try_from(max_header_size).unwrap_or(64 << 10),
        max_headers: count(c, &s.max_headers, "server.max_headers", 100, 1),
        workers: count(c, &s.workers, "server.workers", 0, 0),
    };

    let b = &raw.buffering;
    let memory = size(c, &b.memory, "buffering.memory", 64 << 10);
    let buffering = Buffering {
        requests: b.requests.unwrap_or(true),
        responses: b.responses.unwrap_or(true),
        memory: usize::try_from(memory).unwrap_or(64 << 10),
        dir: b.dir.as_ref().map(|d| resolve_path(base, d.get_ref())),
        max_body: size(c, &b.max_body, "buffering.max_body", 100 << 20),
    };

    let admin = raw.admin.as_ref().map(|a| {
        let listen = match &a.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 9180)),
            Some(l) => l.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                c.at(
                    span(l),
                    "admin.listen",
                    format!("{:?} is not an address:port", l.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 9180))
            }),
        };
        // SECURITY: metrics and status reveal the allowlist size, the config path and traffic.
        if !listen.ip().is_loopback() && !a.allow_remote.unwrap_or(false) {
            c.at(
                a.listen.as_ref().and_then(span),
                "admin.listen",
                format!("{listen} is not a loopback address; set admin.allow_remote = true to expose it"),
            );
        }
        Admin { listen }
    });

    let tls = raw.tls.as_ref().map(|t| {
        let mut listen = Vec::new();
        for (i, l) in t.listen.get_ref().iter().enumerate() {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => c.at(
                    span(l),
                    format!("tls.listen[{i}]"),
                    format!("{:?} is not an address:port", l.get_ref()),
                ),
            }
        }
        let mut certs = Vec::new();
        match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => certs.push(CertFiles {
                names: Vec::new(),
                cert: resolve_path(base, cert.get_ref()),
                key: resolve_path(base, key.get_ref()),
            }),
            (Some(cert), None) => c.at(span(cert), "tls.key", "tls.cert is set but tls.key is not"),
            (None, Some(key)) => c.at(span(key), "tls.cert", "tls.key is set but tls.cert is not"),
            (None, None) => {}
        }
        for e in &t.certs {
            certs.push(CertFiles {
                names: e.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                cert: resolve_path(base, e.cert.get_ref()),
                key: resolve_path(base, e.key.get_ref()),
            });
        }
        if certs.is_empty() {
            c.at(
                span(&t.listen),
                "tls.cert",
                "TLS listeners need tls.cert and tls.key (or [[tls.certs]])",
            );
        }
        Tls {
            listen,
            certs,
            redirect_http: t.redirect_http.unwrap_or(false),
        }
    });

    let fleet = raw.fleet.as_ref().map(|f| {
        let mut endpoints = Vec::new();
        for (i, e) in f.endpoints.get_ref().iter().enumerate() {
            let ok = e
                .get_ref()
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
            if ok {
                endpoints.push(e.get_ref().clone());
            } else {
                c.at(
                    span(e),
                    format!("fleet.endpoints[{i}]"),
                    format!(
                        "{:?} is not an etcd endpoint such as \"http://127.0.0.1:2379\"",
                        e.get_ref()
                    ),
                );
            }
        }
        if f.endpoints.get_ref().is_empty() {
            c.at(
                span(&f.endpoints),
                "fleet.endpoints",
                "at least one etcd endpoint is required",
            );
        }
        let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
        if https > 0 && https < endpoints.len() {
            c.at(
                span(&f.endpoints),
                "fleet.endpoints",
                "mixes http:// and https:// endpoints; use one scheme",
            );
        }
        // Without a system trust store (rustls + ring), https needs the CA given.
        if https > 0 && f.tls.as_ref().is_none_or(|t| t.ca.is_none()) {
            let msg = "https:// endpoints need [fleet.tls] ca = \"/path/to/etcd-ca.pem\"";
            c.at(span(&f.endpoints), "fleet.tls.ca", msg);
        }
        if https == 0 && f.tls.is_some() {
            let msg = "[fleet.tls] is set but the endpoints are http://; use https:// endpoints";
            c.at(span(&f.endpoints), "fleet.tls", msg);
        }
        let key = f
            .key
            .as_ref()
            .map_or_else(|| "/gatekeeper/maintenance".to_string(), |k| k.get_ref().clone());
        if key.is_empty() {
            c.at(f.key.as_ref().and_then(span), "fleet.key", "must not be empty");
        }
        let on_error = match f.on_error.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("keep") => OnError::Keep,
            Some("on") => OnError::On,
            Some("off") => OnError::Off,
            Some(other) => {
                c.at(
                    f.on_error.as_ref().and_then(span),
                    "fleet.on_error",
                    format!("{other:?} is not \"keep\", \"on\" or \"off\""),
                );
                OnError::Keep
            }
        };
        let tls_path = |v: &Option<S<String>>| v.as_ref().map(|p| resolve_path(base, p.get_ref()));
        let (ca, cert, client_key) = match &f.tls {
            None => (None, None, None),
            Some(t) => {
                if t.cert.is_some() != t.key.is_some() {
                    c.at(
                        t.cert.as_ref().or(t.key.as_ref()).and_then(span),
                        "fleet.tls",
                        "cert and key go together",
                    );
                }
                (tls_path(&t.ca), tls_path(&t.cert), tls_path(&t.key))
            }
        };
        if f.username.is_some() != f.password.is_some() {
            c.at(
                span(&f.endpoints),
                "fleet.username",
                "username and password go together",
            );
        }
        Fleet {
            endpoints,
            key,
            on_error,
            username: f.username.clone(),
            password: f.password.clone(),
            ca,
            cert,
            client_key,
        }
    });

    let bp = &raw.bypass;
    let mut bypass_path = bp
        .path
        .as_ref()
        .map_or_else(|| "/.gatekeeper/bypass/".to_string(), |p| p.get_ref().clone());
    if !bypass_path.starts_with('/') || bypass_path.len() < 2 || bypass_path.contains(['?', '#', '%', '\\']) {
        c.at(
            bp.path.as_ref().and_then(span),
            "bypass.path",
            format!("{bypass_path:?} must be a plain path such as \"/.gatekeeper/bypass/\""),
        );
    }
    if !bypass_path.ends_with('/') {
        bypass_path.push('/');
    }
    let cookie_name = bp
        .cookie_name
        .as_ref()
        .map_or_else(|| "gatekeeper_bypass".to_string(), |n| n.get_ref().clone());
    // RFC 6265 cookie-name is an HTTP token.
    let token_char = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
    if cookie_name.is_empty() || !cookie_name.chars().all(token_char) {
        c.at(
            bp.cookie_name.as_ref().and_then(span),
            "bypass.cookie_name",
            format!("{cookie_name:?} is not a valid cookie name"),
        );
    }
    let cookie_ttl = duration(c, &bp.cookie_ttl, "bypass.cookie_ttl", Duration::from_secs(12 * 3600));
    let header = match &bp.header {
        None => http::HeaderName::from_static("x-gatekeeper-bypass"),
        Some(h) => http::HeaderName::from_bytes(h.get_ref().as_bytes()).unwrap_or_else(|_| {
            c.at(
                span(h),
                "bypass.header",
                format!("{:?} is not a valid HTTP header name", h.get_ref()),
            );
            http::HeaderName::from_static("x-gatekeeper-bypass")
        }),
    };
    let bypass = Bypass {
        path: bypass_path,
        cookie_name,
        cookie_ttl,
        header,
    };

    let l = &raw.log;
    let level = l
        .level
        .as_ref()
        .map_or_else(|| "info".to_string(), |v| v.get_ref().clone());
    if let Some(v) = &l.level {
        if !valid_level(v.get_ref()) {
            c.at(
                span(v),
                "log.level",
                format!(
                    "{:?} is not a log level (error, warn, info, debug, trace) or filter",
                    v.get_ref()
                ),
            );
        }
    }
    let format = match l.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.at(
                l.format.as_ref().and_then(span),
                "log.format",
                format!("{other:?} is not a log format (\"text\" or \"json\")"),
            );
            LogFormat::Text
        }
    };
    let log = Log {
        level,
        format,
        access: l.access.unwrap_or(true),
    };

    Config {
        file: file.to_path_buf(),
        listen,
        upstream,
        maintenance,
        clients,
        server,
        buffering,
        log,
        admin,
        tls,
        fleet,
        bypass,
    }
}

/// A level ("info") or an EnvFilter list whose parts are levels or `target=level`.
/// A bare word is a target filter to EnvFilter, which would hide a typo like "inof".
fn valid_level(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    !s.trim().is_empty()
        && tracing_subscriber::EnvFilter::try_new(s).is_ok()
        && s.split(',').all(|part| {
            let part = part.trim();
            part.contains('=') || LEVELS.contains(&part.to_ascii_lowercase().as_str())
        })
}

fn parse_upstream(url: &str, base: &Path) -> Result<UpstreamTarget, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(format!("{url:?} names no socket path (use \"unix:/run/app.sock\")"));
        }
        return Ok(UpstreamTarget::Unix(resolve_path(base, path)));
    }
    let bad = || {
        format!(
            "{url:?} is not an upstream URL (use \"http://host:port\", \"h2c://host:port\" or \"unix:/path/to.sock\")"
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("http" | "h2c")) {
        return Err(bad());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url:?}: a path or query in the upstream URL is not supported"));
    }
    let authority = uri.authority().cloned().ok_or_else(bad)?;
    if uri.scheme_str() == Some("h2c") {
        return Ok(UpstreamTarget::H2c(authority));
    }
    Ok(UpstreamTarget::Http(authority))
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
}
