//! Gathering the facts of one request, once: who sent it (the peer and the
//! resolved client), what maintenance looks like, which credential it carries,
//! where it goes. Pure: a request head, a snapshot and the time in, facts out.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{HeaderValue, ACCESS_CONTROL_REQUEST_METHOD, HOST};
use http::{Method, Request};

use crate::bypass;
use crate::client_ip::{self, NoTrace, Resolved, Trace};
use crate::decision::{Endpoint, Facts, Script};
use crate::framing::{self, FramingError, Head};
use crate::misconfig;
use crate::page::Asset;
use crate::paths::{host_in_scope, in_scope, under_bypass_path, under_prefix};
use crate::state::Snapshot;
use crate::tokens::Presented;

/// How a request arrived.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// On a TLS listener.
    pub https: bool,
    /// The first TLS listener's bound port, for redirects to https (bound
    /// before any connection is served: read once per connection).
    pub https_port: Option<u16>,
    /// The peer's address as the upstream gets it in X-Real-IP and
    /// X-Forwarded-For when the client is the peer itself (see [`peer_value`]).
    pub peer_value: Option<HeaderValue>,
}

impl Conn {
    /// Made once per connection (the peer's header value is formatted here).
    pub fn new(peer: SocketAddr, https: bool, https_port: Option<u16>) -> Conn {
        Conn {
            peer,
            https,
            https_port,
            peer_value: peer_value(peer.ip()),
        }
    }
}

/// `ip` (IPv4-mapped folded, as the client address is) as a header value:
/// made once per connection rather than formatted and copied for each request.
fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut text = String::with_capacity(40);
    client_ip::push_ip(&mut text, ip.to_canonical());
    let v = HeaderValue::from_maybe_shared(Bytes::from(text)).ok()?;
    // The first clone of bytes made from a string shares them (an allocation):
    // done here, so that each request's clone is a count.
    drop(v.clone());
    Some(v)
}

/// The facts the decision reads, and what answering it will need.
pub struct Gathered<'s> {
    pub facts: Facts,
    /// Why the framing is refused, when [`Facts::bad_framing`].
    pub framing: Option<FramingError>,
    pub resolved: Resolved,
    /// The asset the path names, when [`Facts::asset`].
    pub asset: Option<&'s crate::page::Asset>,
    /// Where a redirect to https goes, when [`Facts::redirect_to_https`].
    pub location: Option<HeaderValue>,
    /// The request's Content-Length, when it is a plain number.
    pub declared_length: Option<u64>,
    /// The request's Origin, for CORS on the maintenance answer.
    pub origin: Option<HeaderValue>,
    /// The named bypass token the request carries, for the cookie and the access log.
    pub named: Option<Presented<'s>>,
    /// The forwarding header an untrusted loopback or private peer sent (see `misconfig`).
    pub untrusted_forwarding: Option<&'s http::HeaderName>,
}

/// The facts of `req` against `snap`. `now` matters only for cookies (their
/// expiry); callers may pass any time when no secret or token is in force.
pub fn gather<'s, B>(req: &Request<B>, conn: &Conn, snap: &'s Snapshot, now: jiff::Timestamp) -> Gathered<'s> {
    gather_traced(req, conn, snap, now, &mut NoTrace)
}

/// [`gather`], telling `trace` each step of the client-IP walk (`gatekeeper explain`).
pub fn gather_traced<'s, B>(
    req: &Request<B>,
    conn: &Conn,
    snap: &'s Snapshot,
    now: jiff::Timestamp,
    trace: &mut impl Trace,
) -> Gathered<'s> {
    let (rt, m) = (&*snap.rt, &snap.maint);
    let cfg = &rt.config;
    let headers = req.headers();
    let path = req.uri().path();
    let head = Head::scan(headers);

    let resolved = client_ip::resolve_traced(conn.peer.ip(), headers, &rt.trusted, &cfg.clients.header, trace);
    let untrusted_forwarding =
        misconfig::untrusted_forwarding(conn.peer.ip(), resolved.peer_trusted, headers, &cfg.clients.header);
    let client_allowed = resolved.client.is_some_and(|ip| rt.allow.contains(ip));
    let bypass_path =
        under_bypass_path(path, &cfg.maintenance.bypass_paths) || (cfg.maintenance.acme && under_prefix(path, ACME));
    let location = match &cfg.tls {
        Some(tls) if !conn.https && tls.redirect_http && !bypass_path => {
            https_location(req, host_of(req, head.host), tls, conn.https_port)
        }
        _ => None,
    };
    let endpoint = endpoint(path, &rt.pages, cfg.clients.whoami);
    let bp = &cfg.bypass;
    let secret = m.secret.as_deref().filter(|_| m.present);
    let bypass_link = secret.is_some_and(|secret| {
        path.strip_prefix(bp.path.as_str())
            .is_some_and(|token| bypass::token_matches(secret, token))
    });
    let applies = m.active
        && in_scope(path, &m.paths)
        && (m.hosts.is_empty() || host_in_scope(host_of(req, head.host), &m.hosts));
    let credential = applies
        && secret.is_some_and(|secret| {
            let header_ok = headers
                .get(&bp.header)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| bypass::token_matches(secret, t));
            header_ok
                || bypass::cookie(headers, &bp.cookie_name).is_some_and(|c| bypass::verify(secret, c, now.as_second()))
        });
    // Named tokens work whenever maintenance is present, with or without a secret.
    let named = m
        .present
        .then(|| rt.tokens.presented(path, headers, bp, now.as_second()))
        .flatten();
    let bypass_link = bypass_link || named.is_some_and(|n| n.link);
    let credential = credential || (applies && named.is_some_and(|n| !n.link));
    let method = req.method();
    let safe_method = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    let let_through = bypass_path || (!m.paused && (client_allowed || credential || (m.read_only && safe_method)));
    let get_or_head = matches!(*method, Method::GET | Method::HEAD);
    let asset: Option<&Asset> = if applies && !let_through && get_or_head {
        rt.pages.asset(path)
    } else {
        None
    };
    let preflight = *method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let declared_length = head.content_length.and_then(|v| v.to_str().ok()?.trim().parse().ok());
    let too_large = declared_length.is_some_and(|n| n > cfg.buffering.max_body);
    // SECURITY: what a proxy in front may frame otherwise is refused before anything reads the body.
    let framing = framing::check_head(req.version(), headers, &head).err();
    Gathered {
        facts: Facts {
            bad_framing: framing.is_some(),
            endpoint,
            redirect_to_https: location.is_some(),
            bypass_path,
            bypass_link,
            maintenance: m.active,
            in_scope: applies || !m.active,
            read_only: m.read_only,
            paused: m.paused,
            safe_method,
            preflight,
            client_allowed,
            credential,
            asset: asset.is_some(),
            too_large,
        },
        framing,
        resolved,
        asset,
        location,
        declared_length,
        origin: head.origin.cloned(),
        named,
        untrusted_forwarding,
    }
}

/// The ACME HTTP-01 challenge path (`maintenance.acme`): certificate renewal
/// must keep working during maintenance.
const ACME: &str = "/.well-known/acme-challenge/";

/// gatekeeper's own paths, answered on every listener before anything else.
fn endpoint(path: &str, pages: &crate::page::PageSet, whoami: bool) -> Option<Endpoint> {
    let rest = path.strip_prefix("/.gatekeeper/")?;
    Some(match rest {
        "health" => Endpoint::Health,
        "status" => Endpoint::Status,
        // Opt-in (`clients.whoami`); otherwise an ordinary path.
        "whoami" if whoami => Endpoint::Whoami,
        "refresh.js" => Endpoint::Script(Script::Refresh),
        "banner.js" => Endpoint::Script(Script::Banner),
        _ => {
            let asset = rest.strip_prefix("page")?;
            pages.asset(asset)?;
            Endpoint::PageAsset
        }
    })
}

/// The host a request is for: an absolute-form target's or HTTP/2's
/// authority (RFC 9112 §3.2.2), else `Host`.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    host_of(req, req.headers().get(HOST))
}

fn host_of<'r, B>(req: &'r Request<B>, host: Option<&'r HeaderValue>) -> Option<&'r str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => host.and_then(|h| h.to_str().ok()),
    }
}

/// The same URL on https (the first TLS listener's port when it is not 443),
/// or none when the request names no usable host.
fn https_location<B>(
    req: &Request<B>,
    host: Option<&str>,
    tls: &crate::config::Tls,
    bound: Option<u16>,
) -> Option<HeaderValue> {
    let host = host?;
    let authority: http::uri::Authority = host.parse().ok()?;
    // The port actually bound (the config may say 0), else the configured one.
    let port = bound.or_else(|| tls.listen.first().map(|a| a.port())).unwrap_or(443);
    // `Authority::host` keeps an IPv6 address's brackets.
    let target_host = match port {
        443 => authority.host().to_string(),
        p => format!("{}:{p}", authority.host()),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{target_host}{pq}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_value_is_the_folded_address_as_the_client_address_is_formatted() {
        for (peer, want) in [
            ("127.0.0.3:5000", "127.0.0.3"),
            ("[::1]:5000", "::1"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            // A v4 client on a dual-stack socket: the same text as the client address.
            ("[::ffff:192.0.2.9]:80", "192.0.2.9"),
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let conn = Conn::new(peer, false, None);
            let mut text = String::new();
            client_ip::push_ip(&mut text, peer.ip().to_canonical());
            assert_eq!(text, want);
            assert_eq!(conn.peer_value.as_ref().map(|v| v.to_str().unwrap()), Some(want));
        }
    }
}
