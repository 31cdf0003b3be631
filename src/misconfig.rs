//! Misconfiguration said out loud. The story gatekeeper was born from: an app
//! behind a proxy nobody told it to trust, where every visitor was 127.0.0.1
//! and the allowlist let everyone in — and nobody could see why.
//!
//! At run time: a loopback or private peer that is not a trusted proxy but
//! sends a forwarding header is logged (once per peer per [`WARN_EVERY`]) and
//! counted. At `check`, start and reload: an allowlist that covers a trusted
//! proxy, loopback behind trusted proxies, or every address.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, FORWARDED};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;

use crate::allowlist::IpSet;
use crate::client_ip::{header_name, ForwardHeader};
use crate::config::Clients;

/// A peer is warned about at most once in this long.
pub const WARN_EVERY: Duration = Duration::from_secs(600);

/// Peers remembered at most; beyond it the longest-remembered one is forgotten.
const MAX_PEERS: usize = 1024;

static X_FORWARDED_FOR: HeaderName = XFF_CONST;
const XFF_CONST: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED_NAME: HeaderName = FORWARDED;

/// The forwarding header an untrusted loopback or private peer sends, if it
/// sends one (the configured header first). Public peers and trusted proxies:
/// `None`, without looking at the headers. For loopback and private peers,
/// one pass over the names, compared with constants: a tag compare for the
/// standard names most requests carry — cheaper than a hashed lookup per
/// header, and inlined (`bench/callgrind.sh`'s client is an untrusted
/// loopback peer).
#[inline(always)]
pub fn untrusted_forwarding<'h>(
    peer: IpAddr,
    peer_trusted: bool,
    headers: &HeaderMap,
    configured: &'h ForwardHeader,
) -> Option<&'h HeaderName> {
    if peer_trusted || !local(peer) {
        return None;
    }
    let present = match configured {
        ForwardHeader::Single(single) => with_single(headers, single),
        _ => headers.keys().any(|k| *k == FORWARDED || *k == XFF_CONST),
    };
    if present {
        which(headers, configured)
    } else {
        None
    }
}

/// The scan when `clients.header` names a single-IP header too.
#[inline(never)]
fn with_single(headers: &HeaderMap, single: &HeaderName) -> bool {
    headers
        .keys()
        .any(|k| *k == FORWARDED || *k == XFF_CONST || k == single)
}

/// Which forwarding header `headers` has (the configured one first): the rare path.
#[cold]
fn which<'h>(headers: &HeaderMap, configured: &'h ForwardHeader) -> Option<&'h HeaderName> {
    let standard: [&'h HeaderName; 2] = [&X_FORWARDED_FOR, &FORWARDED_NAME];
    let single = match configured {
        ForwardHeader::Single(name) => Some(name),
        _ => None,
    };
    single
        .into_iter()
        .chain(standard)
        .find(|name| headers.contains_key(*name))
}

/// Loopback, private (RFC 1918) or unique-local (fc00::/7): where a reverse
/// proxy nobody declared usually sits.
#[inline]
pub fn local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
    }
}

/// A header's name as people write it.
pub fn display_name(name: &HeaderName) -> Cow<'static, str> {
    if *name == X_FORWARDED_FOR {
        Cow::Borrowed("X-Forwarded-For")
    } else if *name == FORWARDED_NAME {
        Cow::Borrowed("Forwarded")
    } else {
        Cow::Owned(name.as_str().to_owned())
    }
}

/// A configured entry as people write it: an address alone for a single-address range.
pub fn entry_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The warning for a peer that forwards without being trusted.
pub fn untrusted_message(peer: IpAddr, header: &HeaderName) -> String {
    format!(
        "peer {peer} sends {} but is not in clients.trusted_proxies: every client it forwards looks like {peer}",
        display_name(header)
    )
}

/// The run-time side: counts every such request, logs each peer at most once
/// per [`WARN_EVERY`]. Touched only on the rare path (see [`untrusted_forwarding`]).
pub struct UntrustedForwarding {
    warned: Mutex<HashMap<IpAddr, Instant>>,
    count: Counter,
}

impl UntrustedForwarding {
    /// `count` is `gatekeeper_untrusted_forwarding_total`.
    pub fn new(count: Counter) -> UntrustedForwarding {
        UntrustedForwarding {
            warned: Mutex::new(HashMap::new()),
            count,
        }
    }

    /// One request from `peer` carrying `header`; true when it was logged.
    /// Cold and out of line: the request path keeps only the call.
    #[cold]
    #[inline(never)]
    pub fn saw(&self, peer: IpAddr, header: &HeaderName, now: Instant) -> bool {
        self.count.inc();
        let peer = peer.to_canonical();
        if !self.due(peer, now) {
            return false;
        }
        tracing::warn!(%peer, header = %display_name(header), "{}", untrusted_message(peer, header));
        true
    }

    /// Whether `peer` is due a warning at `now`; if so, remembers that it got one.
    fn due(&self, peer: IpAddr, now: Instant) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned
            .get(&peer)
            .is_some_and(|last| now.saturating_duration_since(*last) < WARN_EVERY)
        {
            return false;
        }
        if warned.len() >= MAX_PEERS && !warned.contains_key(&peer) {
            warned.retain(|_, last| now.saturating_duration_since(*last) < WARN_EVERY);
            if warned.len() >= MAX_PEERS {
                // Still full: forget the one warned longest ago (it may be warned again sooner).
                if let Some(oldest) = warned.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) {
                    warned.remove(&oldest);
                }
            }
        }
        warned.insert(peer, now);
        true
    }
}

/// What the allowlist lets through that the config likely did not mean to:
/// a trusted proxy (a request it forwards without a usable header is its own,
/// so everyone behind it gets in), loopback while trusted proxies are set, or
/// every address. `allow_entries` are the allowlist's entries as configured.
pub fn config_warnings(clients: &Clients, allow_entries: &[IpNet], allow: &IpSet) -> Vec<String> {
    let mut out = Vec::new();
    let header = display_name(header_name(&clients.header));
    let (all_v4, all_v6) = allow.covers_everything();
    if all_v4 {
        out.push("the allowlist covers every IPv4 address (0.0.0.0/0): every IPv4 client passes maintenance".into());
    }
    if all_v6 {
        out.push("the allowlist covers every IPv6 address (::/0): every IPv6 client passes maintenance".into());
    }
    // Entries already named in a warning are not named again.
    let mut named: Vec<IpNet> = Vec::new();
    for proxy in &clients.trusted_proxies {
        if let Some(entry) = allow_entries.iter().find(|a| overlaps(a, proxy) && a.prefix_len() > 0) {
            let (entry_text, proxy) = (entry_text(entry), entry_text(proxy));
            out.push(format!(
                "the allowlist entry {entry_text} covers trusted proxy {proxy}: a request it forwards without {header} \
                 counts as its own, so everyone behind it is allowed"
            ));
            named.push(*entry);
        }
    }
    if !clients.trusted_proxies.is_empty() {
        let loopback = [
            IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        let hit = allow_entries
            .iter()
            .find(|a| a.prefix_len() > 0 && !named.contains(a) && loopback.iter().any(|l| overlaps(a, l)));
        if let Some(entry) = hit.map(entry_text) {
            out.push(format!(
                "the allowlist entry {entry} covers loopback while clients.trusted_proxies is set: a proxy on this \
                 host that is not trusted, or forwards without {header}, lets everyone behind it in"
            ));
        }
    }
    out
}

/// Two networks share an address (CIDR ranges nest or are disjoint).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_entry;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn clients(allow: &[&str], trusted: &[&str]) -> (Clients, Vec<IpNet>, IpSet) {
        let nets: Vec<IpNet> = allow.iter().map(|e| parse_entry(e).unwrap()).collect();
        let c = Clients {
            allow: nets.clone(),
            allow_file: None,
            trusted_proxies: trusted.iter().map(|e| parse_entry(e).unwrap()).collect(),
            header: ForwardHeader::default(),
            whoami: false,
        };
        let set = IpSet::new(nets.iter().copied());
        (c, nets, set)
    }

    fn warnings(allow: &[&str], trusted: &[&str]) -> Vec<String> {
        let (c, nets, set) = clients(allow, trusted);
        config_warnings(&c, &nets, &set)
    }

    #[test]
    fn config_warnings_name_the_entry() {
        assert!(warnings(&["203.0.113.7", "10.1.0.0/16"], &["10.0.0.5"]).is_empty());
        assert!(warnings(&["127.0.0.1"], &[]).is_empty(), "loopback alone is fine");
        let w = warnings(&["10.0.0.0/8"], &["10.0.0.5"]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("the allowlist entry 10.0.0.0/8 covers trusted proxy 10.0.0.5:"),
            "{w:?}"
        );
        assert!(w[0].contains("everyone behind it is allowed"), "{w:?}");
        // Part of a trusted range is enough.
        let w = warnings(&["10.1.1.1"], &["10.0.0.0/8"]);
        assert!(w[0].contains("covers trusted proxy 10.0.0.0/8"), "{w:?}");
        let w = warnings(&["127.0.0.0/8", "203.0.113.7"], &["10.0.0.5"]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("the allowlist entry 127.0.0.0/8 covers loopback while"),
            "{w:?}"
        );
        let w = warnings(&["::1"], &["::1"]);
        assert_eq!(w.len(), 1, "named once, as the proxy: {w:?}");
        let w = warnings(&["0.0.0.0/0"], &[]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("every IPv4 address (0.0.0.0/0)"), "{w:?}");
        let w = warnings(&["0.0.0.0/1", "128.0.0.0/1", "::/0"], &["10.0.0.5"]);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[1].contains("every IPv6 address"), "{w:?}");
    }

    #[test]
    fn only_untrusted_local_peers_with_a_header() {
        let mut h = HeaderMap::new();
        let xff = ForwardHeader::XForwardedFor;
        assert_eq!(untrusted_forwarding(ip("127.0.0.1"), false, &h, &xff), None);
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        for peer in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(
                untrusted_forwarding(ip(peer), false, &h, &xff),
                Some(&X_FORWARDED_FOR),
                "{peer}"
            );
        }
        assert_eq!(untrusted_forwarding(ip("127.0.0.1"), true, &h, &xff), None, "trusted");
        assert_eq!(untrusted_forwarding(ip("203.0.113.9"), false, &h, &xff), None, "public");
        // The configured header first, then the two standard ones.
        let real = ForwardHeader::Single(HeaderName::from_static("x-real-ip"));
        assert_eq!(
            untrusted_forwarding(ip("127.0.0.1"), false, &h, &real),
            Some(&X_FORWARDED_FOR)
        );
        h.insert("x-real-ip", "1.2.3.4".parse().unwrap());
        let found = untrusted_forwarding(ip("127.0.0.1"), false, &h, &real).map(HeaderName::as_str);
        assert_eq!(found, Some("x-real-ip"));
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=1.2.3.4".parse().unwrap());
        assert_eq!(
            untrusted_forwarding(ip("10.0.0.1"), false, &h, &xff),
            Some(&FORWARDED_NAME)
        );
    }

    #[test]
    fn once_per_peer_per_ten_minutes() {
        let count = Counter::default();
        let u = UntrustedForwarding::new(count.clone());
        let t0 = Instant::now();
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.3"));
        assert!(u.saw(a, &X_FORWARDED_FOR, t0));
        for s in 1..600 {
            assert!(!u.saw(a, &X_FORWARDED_FOR, t0 + Duration::from_secs(s)));
        }
        assert!(u.saw(b, &FORWARDED_NAME, t0 + Duration::from_secs(1)), "another peer");
        assert!(u.saw(a, &X_FORWARDED_FOR, t0 + WARN_EVERY), "ten minutes later");
        assert!(!u.saw(a, &X_FORWARDED_FOR, t0 + WARN_EVERY + Duration::from_secs(1)));
        assert_eq!(count.get(), 603);
        assert_eq!(
            untrusted_message(a, &X_FORWARDED_FOR),
            "peer 127.0.0.1 sends X-Forwarded-For but is not in clients.trusted_proxies: \
             every client it forwards looks like 127.0.0.1"
        );
    }

    #[test]
    fn remembers_a_bounded_number_of_peers() {
        let u = UntrustedForwarding::new(Counter::default());
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            let peer = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(u.due(peer, t0 + Duration::from_millis(u64::from(i))));
        }
        assert_eq!(u.warned.lock().unwrap().len(), MAX_PEERS);
        // The most recent ones are still remembered.
        assert!(!u.due(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + MAX_PEERS as u32 + 9)), t0));
    }
}
