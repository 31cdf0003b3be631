//! How one request is decided, step by step: `gatekeeper explain` for an
//! operator, `/.gatekeeper/whoami` for a visitor. Told by the daemon's own
//! code: [`facts::gather_traced`] (the daemon's `gather` with a trace of the
//! client-IP walk) and [`decide`], never a second implementation. What this
//! module adds is only which configured entry matched (the sets merge their
//! ranges) and the words.
//!
//! SECURITY: an [`Explanation`] is shown to visitors (whoami): it names only
//! the entries this request matched, never the allowlist's others, the
//! bypass secret or a path on disk.

pub mod command;
mod render;
mod whoami;

pub use render::text;
pub use whoami::whoami;

use std::net::IpAddr;

use http::Request;
use ipnet::IpNet;
use serde::Serialize;

use crate::bypass;
use crate::client_ip::{self, format_chain, Step, Trace};
use crate::decision::{decide, Decision, Endpoint, Facts, Mark, Refusal};
use crate::facts::{self, request_host, Conn, Gathered};
use crate::misconfig;
use crate::state::Snapshot;

/// Everything `explain` says about one request, in the order it is decided.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub request: RequestView,
    pub peer: PeerView,
    pub forwarding: ForwardingView,
    /// The resolved client; `None`: unknown (never let through maintenance).
    pub client: Option<IpAddr>,
    /// What the app is told as X-Forwarded-For when the request reaches it.
    pub upstream_forwarded_for: String,
    pub allowlist: AllowView,
    pub maintenance: MaintView,
    pub credential: CredentialView,
    pub decision: DecisionView,
    /// Misconfiguration this request shows (see `misconfig`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub https: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub address: IpAddr,
    /// In `clients.trusted_proxies`: its forwarding header is read.
    pub trusted: bool,
    /// The `clients.trusted_proxies` entry it is in.
    pub trusted_entry: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardingView {
    /// The configured header (`clients.header`).
    pub header: String,
    /// Its lines as sent.
    pub sent: Vec<String>,
    /// Whether it was read (only from a trusted peer).
    pub read: bool,
    /// Each entry the walk met, right to left.
    pub walk: Vec<WalkStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalkStep {
    /// The entry as written.
    pub entry: String,
    /// `trusted` (skipped), `client`, `malformed`, `too-many` or `not-reached`.
    pub verdict: &'static str,
    pub address: Option<IpAddr>,
    /// The `clients.trusted_proxies` entry a trusted one is in.
    pub trusted_entry: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllowView {
    pub allowed: bool,
    /// The allowlist entry the client is in (the first, as configured).
    pub entry: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaintView {
    /// `off`, `on`, `read-only`, `paused`, `scheduled` or `expired`.
    pub state: &'static str,
    pub active: bool,
    /// `file` or `fleet`.
    pub source: Option<&'static str>,
    pub since: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    /// Path prefixes and hosts it is limited to (empty: all).
    pub paths: Vec<String>,
    pub hosts: Vec<String>,
    /// Active, and this request's path and host are in its scope.
    pub applies: bool,
    pub read_only: bool,
    pub paused: bool,
    /// GET, HEAD, OPTIONS or TRACE (what read-only maintenance lets through).
    pub safe_method: bool,
    /// The path is one of `maintenance.bypass_paths` (or the ACME challenge).
    pub bypass_path: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    /// Maintenance carries a bypass secret: the link, cookie and header work.
    pub bypass_enabled: bool,
    /// The bypass header was sent (valid or not).
    pub header_sent: bool,
    /// The bypass cookie was sent (valid or not).
    pub cookie_sent: bool,
    /// A valid bypass cookie or header (looked at only while maintenance applies).
    pub valid: bool,
    /// The path is the bypass link with the right token.
    pub bypass_link: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    /// The label the access log and the metrics give it.
    pub decision: &'static str,
    pub reason: String,
}

/// Collects the walk's steps, the entries left of the client included.
#[derive(Default)]
struct Walk(Vec<(String, Step)>);

impl Trace for Walk {
    const REST: bool = true;
    fn entry(&mut self, text: &str, step: Step) {
        self.0.push((text.to_owned(), step));
    }
}

/// Explains `req`, arriving on `conn`, against `snap` at `now`, as the daemon
/// decides it. `allow_entries`: the allowlist's entries as configured, to name
/// the one the client matched.
pub fn explain<B>(
    req: &Request<B>,
    conn: &Conn,
    snap: &Snapshot,
    now: jiff::Timestamp,
    allow_entries: &[IpNet],
) -> Explanation {
    let mut walk = Walk::default();
    let g = facts::gather_traced(req, conn, snap, now, &mut walk);
    let decision = decide(&g.facts);
    let cfg = &snap.rt.config;
    let trusted = &cfg.clients.trusted_proxies;
    let (m, f) = (&snap.maint, &g.facts);
    let peer = conn.peer.ip().to_canonical();
    let header = client_ip::header_name(&cfg.clients.header);
    let walk = walk
        .0
        .into_iter()
        .map(|(entry, step)| {
            let (verdict, address) = match step {
                Step::Trusted(ip) => ("trusted", Some(ip)),
                Step::Client(ip) => ("client", Some(ip)),
                Step::Malformed => ("malformed", None),
                Step::TooMany => ("too-many", None),
                Step::NotReached => ("not-reached", None),
            };
            let trusted_entry = matches!(step, Step::Trusted(_))
                .then(|| address.and_then(|ip| first_in(trusted, ip)))
                .flatten();
            WalkStep {
                entry,
                verdict,
                address,
                trusted_entry,
            }
        })
        .collect();
    let headers = req.headers();
    let bp = &cfg.bypass;
    let client = g.resolved.client;
    Explanation {
        request: RequestView {
            method: req.method().to_string(),
            host: request_host(req).map(str::to_owned),
            path: req.uri().path().to_owned(),
            https: conn.https,
        },
        peer: PeerView {
            address: peer,
            trusted: g.resolved.peer_trusted,
            trusted_entry: first_in(trusted, peer),
        },
        forwarding: ForwardingView {
            header: misconfig::display_name(header).into_owned(),
            sent: headers
                .get_all(header)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
            read: g.resolved.peer_trusted,
            walk,
        },
        client,
        upstream_forwarded_for: format_chain(&g.resolved.chain),
        allowlist: AllowView {
            allowed: f.client_allowed,
            entry: client
                .filter(|_| f.client_allowed)
                .and_then(|ip| first_in(allow_entries, ip)),
        },
        maintenance: MaintView {
            state: m.label(),
            active: m.active,
            source: m.source.map(|s| s.label()),
            since: m.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            from: m.from.map(|t| t.to_string()),
            until: m.until.map(|t| t.to_string()),
            paths: m.paths.clone(),
            hosts: m.hosts.clone(),
            applies: m.active && f.in_scope,
            read_only: m.read_only,
            paused: m.paused,
            safe_method: f.safe_method,
            bypass_path: f.bypass_path,
        },
        credential: CredentialView {
            bypass_enabled: m.present && m.secret.is_some(),
            header_sent: headers.contains_key(&bp.header),
            cookie_sent: bypass::cookie(headers, &bp.cookie_name).is_some(),
            valid: f.credential,
            bypass_link: f.bypass_link,
        },
        decision: DecisionView {
            decision: decision.label(),
            reason: reason(decision, &g, snap),
        },
        warnings: g
            .untrusted_forwarding
            .map(|h| misconfig::untrusted_message(peer, h))
            .into_iter()
            .collect(),
    }
}

/// The first configured entry holding `ip` (IPv4-mapped addresses as IPv4).
fn first_in(entries: &[IpNet], ip: IpAddr) -> Option<String> {
    let ip = ip.to_canonical();
    entries.iter().find(|e| e.contains(&ip)).map(misconfig::entry_text)
}

/// Why `decision`, in words: which of the facts the rules (see [`decide`]) turned on.
fn reason(decision: Decision, g: &Gathered<'_>, snap: &Snapshot) -> String {
    let f: &Facts = &g.facts;
    let m = &snap.maint;
    match decision {
        Decision::Refuse(Refusal::Framing) => {
            let why = g.framing.as_ref().map_or_else(String::new, ToString::to_string);
            let status = g.framing.as_ref().map_or(400, |e| e.status().as_u16());
            format!("{status}, connection closed: {why} (a proxy in front may read this request differently)")
        }
        Decision::Endpoint(e) => format!("gatekeeper's own {}, answered on every listener", endpoint_name(e)),
        Decision::RedirectHttps => "308 to the same URL on https (tls.redirect_http)".into(),
        Decision::BypassLink => "303 with a fresh bypass cookie: the bypass link with the right token".into(),
        Decision::Refuse(Refusal::TooLarge) => {
            "413: the declared body is over buffering.max_body (not a byte of it is read)".into()
        }
        Decision::Proxy(Mark::None) if !m.active => format!("to the app: maintenance is {}", m.label()),
        Decision::Proxy(Mark::None) => "to the app: this path or host is outside the maintenance's scope".into(),
        Decision::Proxy(Mark::ReadOnly) => {
            "to the app (X-Maintenance-Mode: read-only): read-only maintenance lets safe methods through".into()
        }
        Decision::Proxy(Mark::Bypass) => {
            let why = if f.bypass_path {
                "the path is a bypass path"
            } else if f.client_allowed {
                "the client is on the allowlist"
            } else {
                "the request carries a valid bypass credential"
            };
            format!("to the app (X-Maintenance-Mode: bypass): let through maintenance, {why}")
        }
        Decision::Hold => format!(
            "held until the pause ends (at most {}), then decided again",
            humantime::format_duration(m.pause_max)
        ),
        Decision::Asset => "200 with one of the maintenance page's assets".into(),
        Decision::Preflight => "204 to a CORS preflight that would get the page".into(),
        Decision::Page => {
            let who = match g.resolved.client {
                None => "the client is unknown (a malformed forwarding header)",
                Some(_) => "the client is not on the allowlist",
            };
            let read_only = if m.read_only {
                "; read-only lets only safe methods through"
            } else {
                ""
            };
            format!("503 with the maintenance page: maintenance applies, {who} and no valid bypass credential was sent{read_only}")
        }
    }
}

fn endpoint_name(e: Endpoint) -> &'static str {
    match e {
        Endpoint::Health => "health check (/.gatekeeper/health)",
        Endpoint::Status => "public status (/.gatekeeper/status)",
        Endpoint::Script(_) => "script (/.gatekeeper/*.js)",
        Endpoint::PageAsset => "page asset (/.gatekeeper/page/...)",
        Endpoint::Whoami => "whoami (/.gatekeeper/whoami)",
    }
}
