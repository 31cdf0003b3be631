//! From the raw, deserialized config to the validated one: one function per
//! section, each reporting its problems with position and key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::error::Collector;
use super::raw::{
    RawAdmin, RawBuffering, RawBypass, RawClients, RawConfig, RawFleet, RawHooks, RawLog, RawMaintenance, RawServer,
    RawTls, RawUpstream, S,
};
use super::{
    Admin, Buffering, Bypass, CertFiles, Clients, Config, Fleet, Hooks, Log, LogFormat, Maintenance, OnError, Server,
    Tls, Upstream, UpstreamTarget, DEFAULT_MESSAGE,
};
use crate::allowlist;
use crate::client_ip::ForwardHeader;
use crate::units::{parse_duration, parse_size};

/// The validated config from the raw one. Every problem goes to `c` as it is
/// found, so the sections are built in this order to keep the error list's.
pub(super) fn build(raw: RawConfig, base: &Path, file: &Path, c: &mut Collector) -> Config {
    let listen = listen(c, &raw.listen);
    let upstream = upstream(c, &raw.upstream, base);
    let maintenance = maintenance(c, &raw.maintenance, base);
    let clients = clients(c, &raw.clients, base);
    let server = server(c, &raw.server);
    let buffering = buffering(c, &raw.buffering, base);
    let admin = raw.admin.as_ref().map(|a| admin(c, a));
    let tls = raw.tls.as_ref().map(|t| tls(c, t, base));
    let fleet = raw.fleet.as_ref().map(|f| fleet(c, f, base));
    let bypass = bypass(c, &raw.bypass, base, &maintenance.toggle);
    let log = log(c, &raw.log);
    let hooks = hooks(c, &raw.hooks, base);
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
        hooks,
    }
}

fn listen(c: &mut Collector, list: &S<Vec<S<String>>>) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    for (i, l) in list.get_ref().iter().enumerate() {
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
    if list.get_ref().is_empty() {
        c.at(span(list), "listen", "at least one listen address is required");
    }
    listen
}

fn upstream(c: &mut Collector, u: &RawUpstream, base: &Path) -> Upstream {
    let target = parse_upstream(u.url.get_ref(), base).unwrap_or_else(|m| {
        c.at(span(&u.url), "upstream.url", m);
        UpstreamTarget::Unix(PathBuf::new())
    });
    let timeout = duration(c, &u.timeout, "upstream.timeout", Duration::from_secs(60));
    let wait = duration(c, &u.wait, "upstream.wait", Duration::ZERO);
    if let Some(w) = &u.wait {
        if !wait.is_zero() && wait >= timeout {
            c.at(
                span(w),
                "upstream.wait",
                "must be shorter than upstream.timeout: the wait counts inside it",
            );
        }
    }
    Upstream {
        target,
        connect_timeout: duration(
            c,
            &u.connect_timeout,
            "upstream.connect_timeout",
            Duration::from_secs(5),
        ),
        timeout,
        read_timeout: positive(c, &u.read_timeout, "upstream.read_timeout", Duration::from_secs(60)),
        send_timeout: positive(c, &u.send_timeout, "upstream.send_timeout", Duration::from_secs(60)),
        wait,
    }
}

/// A duration that must be more than zero (a zero silence limit would cut every answer).
fn positive(c: &mut Collector, v: &Option<S<toml::Value>>, key: &str, default: Duration) -> Duration {
    let d = duration(c, v, key, default);
    match v {
        Some(s) if d.is_zero() => {
            c.at(span(s), key, "must be more than 0s");
            default
        }
        _ => d,
    }
}

fn maintenance(c: &mut Collector, m: &RawMaintenance, base: &Path) -> Maintenance {
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
    Maintenance {
        toggle: resolve_path(base, m.toggle.get_ref()),
        dir: m.dir.as_ref().map(|d| resolve_path(base, d.get_ref())),
        retry_after: duration(c, &m.retry_after, "maintenance.retry_after", Duration::from_secs(600)),
        message: m.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_string()),
        bypass_paths,
        recheck,
        acme: m.acme.unwrap_or(true),
        max_held: match &m.max_held {
            None => 10_000,
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or_else(|_| {
                c.at(span(n), "maintenance.max_held", "must be 0 or more");
                10_000
            }),
        },
        announce: duration(c, &m.announce, "maintenance.announce", Duration::ZERO),
    }
}

fn clients(c: &mut Collector, cl: &RawClients, base: &Path) -> Clients {
    let header = match &cl.header {
        None => ForwardHeader::default(),
        Some(h) => ForwardHeader::parse(h.get_ref()).unwrap_or_else(|e| {
            c.at(span(h), "clients.header", e.to_string());
            ForwardHeader::default()
        }),
    };
    Clients {
        allow: nets(c, &cl.allow, "clients.allow"),
        allow_file: cl.allow_file.as_ref().map(|f| resolve_path(base, f.get_ref())),
        trusted_proxies: nets(c, &cl.trusted_proxies, "clients.trusted_proxies"),
        header,
        whoami: cl.whoami.unwrap_or(false),
    }
}

fn server(c: &mut Collector, s: &RawServer) -> Server {
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
    Server {
        header_timeout: duration(c, &s.header_timeout, "server.header_timeout", Duration::from_secs(10)),
        body_timeout: duration(c, &s.body_timeout, "server.body_timeout", Duration::from_secs(60)),
        grace_period: duration(c, &s.grace_period, "server.grace_period", Duration::from_secs(30)),
        max_connections: count(c, &s.max_connections, "server.max_connections", 16384, 1),
        max_header_size: usize::try_from(max_header_size).unwrap_or(64 << 10),
        max_headers: count(c, &s.max_headers, "server.max_headers", 100, 1),
        workers: count(c, &s.workers, "server.workers", 0, 0),
        linger: duration(c, &s.linger, "server.linger", Duration::from_secs(30)),
    }
}

fn buffering(c: &mut Collector, b: &RawBuffering, base: &Path) -> Buffering {
    let memory = size(c, &b.memory, "buffering.memory", 64 << 10);
    Buffering {
        requests: b.requests.unwrap_or(true),
        responses: b.responses.unwrap_or(true),
        memory: usize::try_from(memory).unwrap_or(64 << 10),
        dir: b.dir.as_ref().map(|d| resolve_path(base, d.get_ref())),
        max_body: size(c, &b.max_body, "buffering.max_body", 100 << 20),
    }
}

fn admin(c: &mut Collector, a: &RawAdmin) -> Admin {
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
}

fn tls(c: &mut Collector, t: &RawTls, base: &Path) -> Tls {
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
}

fn fleet(c: &mut Collector, f: &RawFleet, base: &Path) -> Fleet {
    let endpoints = fleet_endpoints(c, f);
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
}

/// `fleet.endpoints`: each a URL, one scheme for all, `[fleet.tls]` set exactly for https.
fn fleet_endpoints(c: &mut Collector, f: &RawFleet) -> Vec<String> {
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
    endpoints
}

fn bypass(c: &mut Collector, bp: &RawBypass, base: &Path, toggle: &Path) -> Bypass {
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
    if !crate::syntax::is_token(&cookie_name) {
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
    let tokens_file = match &bp.tokens_file {
        Some(f) => resolve_path(base, f.get_ref()),
        None => crate::fsutil::parent_dir(toggle).join("tokens"),
    };
    Bypass {
        path: bypass_path,
        cookie_name,
        cookie_ttl,
        header,
        tokens_file,
    }
}

fn hooks(c: &mut Collector, h: &RawHooks, base: &Path) -> Hooks {
    let on_change = h.on_change.as_ref().map_or_else(Vec::new, |v| v.get_ref().clone());
    if let Some(v) = h
        .on_change
        .as_ref()
        .filter(|_| on_change.first().is_some_and(String::is_empty))
    {
        c.at(span(v), "hooks.on_change", "the program (first element) is empty");
    }
    let webhook = h.webhook.as_ref().and_then(|w| match w.get_ref().parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() => Some(u),
        _ => {
            let msg = format!("{:?} is not an https:// (or http://) URL", w.get_ref());
            c.at(span(w), "hooks.webhook", msg);
            None
        }
    });
    Hooks {
        on_change,
        webhook,
        webhook_ca: h.webhook_ca.as_ref().map(|p| resolve_path(base, p.get_ref())),
    }
}

fn log(c: &mut Collector, l: &RawLog) -> Log {
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
    Log {
        level,
        format,
        access: l.access.unwrap_or(true),
        health: l.health.unwrap_or(false),
    }
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
