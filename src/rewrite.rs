//! The request head as the upstream gets it: hop-by-hop headers removed, the
//! address headers (X-Real-IP, X-Forwarded-*) replaced by what gatekeeper
//! verified, and a Host for every request.

use http::header::{self, HeaderName, HeaderValue};

use crate::client_ip::{format_chain_into, push_ip, Resolved};
use crate::facts::Conn;
use crate::hop;
use crate::upstream::UpstreamClient;

// Parsed once: header names given as strings are parsed again on every use.
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
// `http` knows Forwarded as a standard header.
static FORWARDED: HeaderName = header::FORWARDED;

/// Who sent the request, as far as the upstream needs to know.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub resolved: &'a Resolved,
    pub conn: &'a Conn,
}

/// The client's request headers as the upstream gets them.
pub fn rewrite_request_headers(
    h: &mut http::HeaderMap,
    upstream: &UpstreamClient,
    origin: &Origin<'_>,
    host: Option<HeaderValue>,
    upgrade: bool,
) {
    hop::strip(h, upgrade);
    // Room for the headers added below at once, rather than a regrowth midway.
    h.reserve(4);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // SECURITY: address headers from the client are replaced, never extended:
    // the upstream sees only what gatekeeper verified. (`insert` replaces every
    // value the client sent; a removal costs a lookup, so only when needed.)
    let mut text = String::new();
    let conn = origin.conn;
    let real_ip = origin.resolved.client.and_then(|client| match &conn.peer_value {
        // The client is the peer itself: most requests, with no proxy in front.
        Some(value) if conn.peer.ip().to_canonical() == client => Some(value.clone()),
        _ => {
            push_ip(&mut text, client);
            HeaderValue::from_str(&text).ok()
        }
    });
    let chain = &origin.resolved.chain;
    // Most often the chain is the client alone (no proxy in front): the same value, shared.
    let forwarded_for = match (&real_ip, origin.resolved.client) {
        (Some(v), Some(client)) if chain.len() == 1 && chain[0] == client => Some(v.clone()),
        _ => {
            text.clear();
            format_chain_into(&mut text, chain);
            HeaderValue::from_str(&text).ok()
        }
    };
    match real_ip {
        Some(v) => {
            h.insert(X_REAL_IP.clone(), v);
        }
        None => {
            h.remove(&X_REAL_IP);
        }
    }
    if h.contains_key(&FORWARDED) {
        h.remove(&FORWARDED);
    }
    if let Some(v) = forwarded_for {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    // A trusted proxy in front (a TLS-terminating balancer) knows the original
    // scheme and host better than we do; anyone else's claim is replaced.
    if !origin.resolved.peer_trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if conn.https { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !origin.resolved.peer_trusted || !h.contains_key(&X_FORWARDED_HOST) {
        match &host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
    match host {
        Some(host) => {
            h.insert(header::HOST, host);
        }
        // HTTP/1.0 without Host: HTTP/1.1 upstreams require one; name the upstream.
        None => {
            if let Some(v) = upstream.default_host() {
                h.insert(header::HOST, v);
            }
        }
    }
}
