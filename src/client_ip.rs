//! The real client address behind trusted reverse proxies: which forwarding
//! header to read ([`ForwardHeader`]), how to walk it ([`resolve`]), and the
//! verified chain gatekeeper sends upstream as X-Forwarded-For.

// SECURITY: the trust model, in one place.
//
// 1. Peer trust. The TCP peer is the only address nobody can forge. If it is
//    not in `trusted_proxies` (always so when that list is empty), it is the
//    client and every forwarding header is ignored.
// 2. Collect. From a trusted peer, read the configured header: all
//    X-Forwarded-For lines joined in order, or the `for=` of every
//    `Forwarded` element, or one address in a single-IP header. Empty list
//    elements are skipped.
// 3. Walk right to left. Each entry was appended by the hop to its right, so
//    an entry can be believed only while every hop right of it is trusted.
//    Trusted entries are skipped; the first untrusted entry is the client.
//    If all are trusted, the leftmost is the client.
// 4. Malformed means unknown. A malformed entry (or `unknown`, an obfuscated
//    name, a Forwarded element without `for=`, a non-ASCII header, more than
//    MAX_HOPS entries) reached by the walk makes the client `None`, which is
//    never let through maintenance. Entries left of the client are never
//    looked at, so a client cannot change the outcome by prepending junk.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName, FORWARDED};

use crate::allowlist::IpSet;

/// `X-Forwarded-For` (not among the `http` crate's standard names).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
// Statics, so that [`header_name`] can lend them out.
static XFF_NAME: HeaderName = X_FORWARDED_FOR;
static FORWARDED_NAME: HeaderName = FORWARDED;

/// Most header entries walked before giving up. A chain of more trusted hops
/// than this is not a real deployment; the cap bounds work on huge headers.
pub const MAX_HOPS: usize = 64;

/// Which request header carries the client address set by trusted proxies.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ForwardHeader {
    /// `X-Forwarded-For`: a comma-separated list, appended to by each hop.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239): the `for=` parameters of its elements.
    Forwarded,
    /// Any other header holding a single address (e.g. `X-Real-IP`).
    Single(HeaderName),
}

/// A configured forwarding header name that is not a valid HTTP header name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid HTTP header name")]
pub struct InvalidHeaderName {
    /// The rejected name.
    pub name: String,
}

impl ForwardHeader {
    /// Parses a header name from configuration; `X-Forwarded-For` and
    /// `Forwarded` (any case) select list parsing, any other valid name is a
    /// single-IP header.
    pub fn parse(name: &str) -> Result<ForwardHeader, InvalidHeaderName> {
        // from_bytes lowercases, so the comparisons below ignore case.
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| InvalidHeaderName { name: name.to_owned() })?;
        Ok(if header == X_FORWARDED_FOR {
            ForwardHeader::XForwardedFor
        } else if header == FORWARDED {
            ForwardHeader::Forwarded
        } else {
            ForwardHeader::Single(header)
        })
    }
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The real client, or None when the forwarding header was malformed (never allowed through maintenance).
    pub client: Option<IpAddr>,
    /// What gatekeeper sends upstream as X-Forwarded-For: the verified part of the chain — the resolved client (if any) and the trusted proxies right of it, in order — followed by the peer. A list from an untrusted peer is replaced by the peer alone, never extended.
    pub chain: Chain,
    /// The TCP peer is a trusted proxy (its forwarding header was read).
    pub peer_trusted: bool,
}

/// [`Resolved::chain`], read as a slice. The peer alone — every request from
/// an untrusted peer — is kept without an allocation: that saving pays for
/// the `misconfig` check those requests make.
#[derive(Clone, Debug, Eq)]
pub enum Chain {
    Peer(IpAddr),
    Hops(Vec<IpAddr>),
}

impl std::ops::Deref for Chain {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        match self {
            Chain::Peer(peer) => std::slice::from_ref(peer),
            Chain::Hops(hops) => hops,
        }
    }
}

/// Chains are equal when their addresses are, however they are kept.
impl PartialEq for Chain {
    fn eq(&self, other: &Chain) -> bool {
        **self == **other
    }
}

impl FromIterator<IpAddr> for Chain {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Chain {
        Chain::Hops(iter.into_iter().collect())
    }
}

/// Finds the real client of a request that arrived from `peer`, trusting
/// forwarding information only from proxies in `trusted` (see the model at
/// the top of this file). IPv4-mapped IPv6 addresses are reported as IPv4.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet, header: &ForwardHeader) -> Resolved {
    resolve_traced(peer, headers, trusted, header, &mut NoTrace)
}

/// What the walk meets, told as it goes: each header entry it reaches (right
/// to left) and how it takes it. `gatekeeper explain` records them.
pub trait Trace {
    /// Whether the entries left of the client, never looked at, are told too.
    const REST: bool;
    /// One entry: its text as written and what the walk made of it.
    fn entry(&mut self, text: &str, step: Step);
}

/// How the walk took one header entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A trusted proxy's address: skipped, the walk goes on to its left
    /// (the leftmost of an all-trusted list is the client).
    Trusted(IpAddr),
    /// The first untrusted entry: the client.
    Client(IpAddr),
    /// Not an address (or `unknown`, obfuscated, unparsable): the client is unknown.
    Malformed,
    /// Beyond [`MAX_HOPS`] entries: the client is unknown.
    TooMany,
    /// Left of the client: never looked at.
    NotReached,
}

/// The daemon's trace: tells nothing, costs nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    const REST: bool = false;
    #[inline(always)]
    fn entry(&mut self, _: &str, _: Step) {}
}

/// The text a trace is told for a header with bytes outside visible ASCII.
pub const NOT_ASCII: &str = "(not visible ASCII)";
/// The text a trace is told for a `Forwarded` element without `for=`.
pub const NO_FOR: &str = "(no for=)";

/// [`resolve`], telling `trace` each step of the walk. [`resolve`] is this
/// with [`NoTrace`]: what `explain` shows is the walk the daemon does.
/// Always inlined: a call of its own costs the daemon's hot path more than
/// the untrusted peer's whole early return.
#[inline(always)]
pub fn resolve_traced<T: Trace>(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &IpSet,
    header: &ForwardHeader,
    trace: &mut T,
) -> Resolved {
    let peer = peer.to_canonical();
    // SECURITY: headers from an untrusted peer are never read.
    if !trusted.contains(peer) {
        return Resolved {
            client: Some(peer),
            chain: Chain::Peer(peer),
            peer_trusted: false,
        };
    }
    // SECURITY: a line with bytes outside visible ASCII is corrupt, and so is
    // the whole header: no entry of it is believed.
    let Some(lines) = headers
        .get_all(header_name(header))
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()
    else {
        return walk(peer, trusted, [(NOT_ASCII, None)], trace);
    };
    match header {
        ForwardHeader::XForwardedFor => walk(
            peer,
            trusted,
            lines
                .into_iter()
                .rev()
                .flat_map(|line| line.rsplit(','))
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| (e, parse_node(e))),
            trace,
        ),
        ForwardHeader::Forwarded => walk(
            peer,
            trusted,
            lines.into_iter().rev().flat_map(|line| {
                // A line that does not parse is one malformed entry, met as
                // soon as the walk reaches that line.
                let nodes: Vec<(Cow<'_, str>, Option<IpAddr>)> = match forwarded_fors(line) {
                    Err(()) => vec![(Cow::Borrowed(line), None)],
                    Ok(fors) => fors
                        .into_iter()
                        .map(|f| {
                            let ip = f.as_deref().and_then(forwarded_node);
                            (f.map_or(Cow::Borrowed(NO_FOR), Cow::Owned), ip)
                        })
                        .collect(),
                };
                nodes.into_iter().rev()
            }),
            trace,
        ),
        ForwardHeader::Single(_) => match lines.as_slice() {
            [] => walk(peer, trusted, [] as [(&str, Option<IpAddr>); 0], trace),
            // SECURITY: several lines mean someone else added one: ambiguous.
            [line] => walk(peer, trusted, [(line.trim(), parse_node(line.trim()))], trace),
            _ => walk(peer, trusted, [(lines.join(", "), None)], trace),
        },
    }
}

/// The header a [`ForwardHeader`] reads.
pub fn header_name(header: &ForwardHeader) -> &HeaderName {
    match header {
        ForwardHeader::XForwardedFor => &XFF_NAME,
        ForwardHeader::Forwarded => &FORWARDED_NAME,
        ForwardHeader::Single(name) => name,
    }
}

/// Walks header entries from the right (each its text as written and its
/// address, `None` = malformed) and builds the result; with no entries at
/// all, the peer is the client.
fn walk<S: AsRef<str>, T: Trace>(
    peer: IpAddr,
    trusted: &IpSet,
    entries_right_to_left: impl IntoIterator<Item = (S, Option<IpAddr>)>,
    trace: &mut T,
) -> Resolved {
    // Built right to left, reversed at the end.
    let mut chain = vec![peer];
    let mut client = Some(peer);
    let mut entries = entries_right_to_left.into_iter().enumerate();
    for (hops, (text, entry)) in entries.by_ref() {
        let ip = match entry {
            Some(ip) if hops < MAX_HOPS => ip,
            _ => {
                let step = if hops < MAX_HOPS {
                    Step::Malformed
                } else {
                    Step::TooMany
                };
                trace.entry(text.as_ref(), step);
                client = None;
                break;
            }
        };
        chain.push(ip);
        client = Some(ip);
        if !trusted.contains(ip) {
            trace.entry(text.as_ref(), Step::Client(ip));
            break;
        }
        trace.entry(text.as_ref(), Step::Trusted(ip));
    }
    if T::REST {
        for (_, (text, _)) in entries.take(MAX_HOPS) {
            trace.entry(text.as_ref(), Step::NotReached);
        }
    }
    chain.reverse();
    Resolved {
        client,
        chain: Chain::Hops(chain),
        peer_trusted: true,
    }
}

/// Renders `chain` as an X-Forwarded-For value ("a, b, c"; IPv6 without brackets, as nginx does).
pub fn format_chain(chain: &[IpAddr]) -> String {
    let mut out = String::with_capacity(chain.len() * 17);
    format_chain_into(&mut out, chain);
    out
}

/// [`format_chain`], appended to `out`.
pub fn format_chain_into(out: &mut String, chain: &[IpAddr]) {
    for (i, ip) in chain.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_ip(out, *ip);
    }
}

/// Appends `ip` as text. IPv4 by hand: `Display` goes through the formatting
/// machinery, a measurable share of a proxied request's cost (two per request).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Parses one X-Forwarded-For / single-header entry: "1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443"; mapped v4 folded. None if malformed.
///
/// The entry must already be trimmed; a port must be 1 to 5 digits and at
/// most 65535.
pub fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (ip, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']')? {
            (v6, "") => return Some(v6.parse::<Ipv6Addr>().ok()?.to_canonical()),
            (v6, after) => (IpAddr::V6(v6.parse().ok()?), after.strip_prefix(':')?),
        },
        None => {
            let (v4, port) = s.split_once(':')?;
            (IpAddr::V4(v4.parse().ok()?), port)
        }
    };
    let port_ok =
        (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok();
    port_ok.then(|| ip.to_canonical())
}

/// Parses a `Forwarded` `for=` value (already unquoted) as an RFC 7239 node:
///
/// ```text
/// node     = nodename [ ":" node-port ]
/// nodename = IPv4address / "[" IPv6address "]" /
///            "unknown" / obfnode
/// obfnode  = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")
/// node-port     = port / obfport
/// port          = 1*5DIGIT
/// obfport       = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")
/// ```
///
/// `unknown` and obfuscated names are not addresses, so they give `None`.
/// Bare (unbracketed) IPv6 is tolerated, as in X-Forwarded-For.
fn forwarded_node(value: &str) -> Option<IpAddr> {
    let is_obf = |s: &str| {
        s.len() > 1 && s.starts_with('_') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    // An obfuscated port says nothing about the address; drop it.
    let node = match value.rsplit_once(':') {
        Some((name, port)) if is_obf(port) => name,
        _ => value,
    };
    parse_node(node)
}

/// Splits one `Forwarded` field line into its elements and returns each
/// element's `for=` value, left to right (`None`: the element has no `for=`).
/// Empty list elements are skipped. `Err` on any syntax error.
///
/// ```text
/// Forwarded         = 1#forwarded-element
/// forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
/// forwarded-pair    = token "=" value
/// value             = token / quoted-string
/// ```
///
/// Optional whitespace is accepted around `,` and `;`, not around `=`.
fn forwarded_fors(line: &str) -> Result<Vec<Option<String>>, ()> {
    let mut p = Cursor {
        s: line.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        // One element: pairs separated by ';'.
        let (mut for_value, mut seen_any) = (None, false);
        loop {
            p.skip_ows();
            if !matches!(p.peek(), None | Some(b',' | b';')) {
                let name = p.token()?;
                p.expect(b'=')?;
                let value = if p.peek() == Some(b'"') {
                    p.quoted()?
                } else {
                    p.token()?.to_owned()
                };
                if name.eq_ignore_ascii_case("for") {
                    // SECURITY: two `for=` in one element is ambiguous.
                    if for_value.replace(value).is_some() {
                        return Err(());
                    }
                }
                seen_any = true;
                p.skip_ows();
            }
            match p.bump() {
                Some(b';') => seen_any = true,
                Some(b',') => break,
                None => {
                    if seen_any {
                        out.push(for_value);
                    }
                    return Ok(out);
                }
                Some(_) => return Err(()),
            }
        }
        if seen_any {
            out.push(for_value);
        }
    }
}

/// A byte cursor for the `Forwarded` grammar (input is visible ASCII).
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), ()> {
        (self.bump() == Some(b)).then_some(()).ok_or(())
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// `token = 1*tchar`
    fn token(&mut self) -> Result<&'a str, ()> {
        let start = self.i;
        while self.peek().is_some_and(crate::syntax::is_tchar) {
            self.i += 1;
        }
        let s = self.s;
        let token = std::str::from_utf8(&s[start..self.i]).map_err(|_| ())?;
        if token.is_empty() {
            Err(())
        } else {
            Ok(token)
        }
    }

    /// `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE`, unescaped.
    fn quoted(&mut self) -> Result<String, ()> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            match self.bump().ok_or(())? {
                b'"' => return Ok(out),
                b'\\' => out.push(char::from(self.bump().ok_or(())?)),
                b => out.push(char::from(b)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_entry;
    use http::HeaderValue;
    use proptest::prelude::*;

    const TRUSTED: &[&str] = &["10.0.0.0/8", "192.168.0.0/16", "2001:db8:ffff::/48"];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> IpSet {
        IpSet::new(TRUSTED.iter().map(|e| parse_entry(e).unwrap()))
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        for line in lines {
            h.append(&name, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    /// Resolves with [`TRUSTED`] and checks client and chain.
    fn check(header: &str, peer: &str, lines: &[&str], client: Option<&str>, chain: &[&str]) {
        let got = resolve(
            ip(peer),
            &headers(header, lines),
            &trusted(),
            &ForwardHeader::parse(header).unwrap(),
        );
        let want = Resolved {
            client: client.map(ip),
            chain: chain.iter().map(|s| ip(s)).collect(),
            peer_trusted: trusted().contains(ip(peer).to_canonical()),
        };
        assert_eq!(got, want, "{header}: {lines:?} from {peer}");
    }

    const XFF: &str = "X-Forwarded-For";
    const FWD: &str = "Forwarded";
    const REAL: &str = "X-Real-IP";
    const P: &str = "10.0.0.1"; // a trusted peer
    const U: Option<&str> = None; // unknown client

    macro_rules! table {
        ($($name:ident: $hdr:expr, $peer:expr, [$($line:expr),*] => $client:expr, [$($chain:expr),*];)+) => {
            $(#[test] fn $name() { check($hdr, $peer, &[$($line),*], $client, &[$($chain),*]) })+
        };
    }

    table! {
        untrusted_peer_spoofed_xff: XFF, "203.0.113.9", ["1.1.1.1"] => Some("203.0.113.9"), ["203.0.113.9"];
        untrusted_peer_spoofed_forwarded: FWD, "203.0.113.9", ["for=1.1.1.1"] => Some("203.0.113.9"), ["203.0.113.9"];
        untrusted_peer_garbage_ignored: XFF, "203.0.113.9", ["foo"] => Some("203.0.113.9"), ["203.0.113.9"];
        trusted_peer_no_header: XFF, P, [] => Some(P), [P];
        trusted_peer_single_entry: XFF, P, ["1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        several_trusted_hops: XFF, P, ["1.2.3.4, 192.168.1.1, 10.9.9.9"] => Some("1.2.3.4"), ["1.2.3.4", "192.168.1.1", "10.9.9.9", P];
        spoofed_left_of_client_dropped: XFF, P, ["6.6.6.6, 1.2.3.4, 10.9.9.9"] => Some("1.2.3.4"), ["1.2.3.4", "10.9.9.9", P];
        garbage_left_of_client_ignored: XFF, P, ["foo, 1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        all_trusted_leftmost: XFF, P, ["10.1.1.1, 192.168.0.1"] => Some("10.1.1.1"), ["10.1.1.1", "192.168.0.1", P];
        multiple_xff_lines_joined: XFF, P, ["6.6.6.6, 1.2.3.4", "10.2.2.2", "10.3.3.3"] => Some("1.2.3.4"), ["1.2.3.4", "10.2.2.2", "10.3.3.3", P];
        multiple_lines_client_in_last: XFF, P, ["10.2.2.2", "1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        v4_port: XFF, P, ["1.2.3.4:5678"] => Some("1.2.3.4"), ["1.2.3.4", P];
        v6_bracketed_port: XFF, P, ["[2001:db8::1]:443"] => Some("2001:db8::1"), ["2001:db8::1", P];
        v6_bracketed: XFF, P, ["[2001:db8::1]"] => Some("2001:db8::1"), ["2001:db8::1", P];
        v6_bare: XFF, P, ["2001:db8::1, 2001:db8:ffff::2"] => Some("2001:db8::1"), ["2001:db8::1", "2001:db8:ffff::2", P];
        v6_peer: XFF, "2001:db8:ffff::9", ["1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", "2001:db8:ffff::9"];
        mapped_peer_trusted: XFF, "::ffff:10.0.0.1", ["1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        mapped_peer_untrusted: XFF, "::ffff:203.0.113.9", ["1.2.3.4"] => Some("203.0.113.9"), ["203.0.113.9"];
        mapped_entries: XFF, P, ["::ffff:1.2.3.4, [::ffff:10.0.0.2]:80"] => Some("1.2.3.4"), ["1.2.3.4", "10.0.0.2", P];
        garbage_word: XFF, P, ["foo"] => U, [P];
        garbage_short_v4: XFF, P, ["1.2.3"] => U, [P];
        garbage_octet: XFF, P, ["999.1.1.1"] => U, [P];
        garbage_port: XFF, P, ["1.2.3.4:99999"] => U, [P];
        garbage_long_port: XFF, P, ["1.2.3.4:000080"] => U, [P];
        garbage_empty_port: XFF, P, ["1.2.3.4:"] => U, [P];
        garbage_open_bracket: XFF, P, ["[::1"] => U, [P];
        garbage_v4_in_brackets: XFF, P, ["[1.2.3.4]"] => U, [P];
        garbage_unknown: XFF, P, ["unknown"] => U, [P];
        garbage_after_trusted_hop: XFF, P, ["1.2.3.4, bogus, 10.5.5.5"] => U, ["10.5.5.5", P];
        trailing_and_double_commas: XFF, P, ["1.2.3.4,,10.5.5.5,", ","] => Some("1.2.3.4"), ["1.2.3.4", "10.5.5.5", P];
        whitespace_trimmed: XFF, P, [" \t1.2.3.4 ,\t10.5.5.5  "] => Some("1.2.3.4"), ["1.2.3.4", "10.5.5.5", P];
        empty_header_is_peer: XFF, P, [""] => Some(P), [P];
        commas_only_is_peer: XFF, P, [" , ,", ""] => Some(P), [P];
        fwd_simple: FWD, P, ["for=1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_quoted_v6: FWD, P, ["for=\"[2001:db8::1]:443\""] => Some("2001:db8::1"), ["2001:db8::1", P];
        fwd_quoted_bare_v6: FWD, P, ["for=\"2001:db8::1\""] => Some("2001:db8::1"), ["2001:db8::1", P];
        fwd_v4_port: FWD, P, ["for=\"1.2.3.4:8080\""] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_obf_port: FWD, P, ["for=\"1.2.3.4:_p1\""] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_unknown: FWD, P, ["for=unknown"] => U, [P];
        fwd_obfuscated: FWD, P, ["for=_hidden, for=10.4.4.4"] => U, ["10.4.4.4", P];
        fwd_obf_left_of_client_ignored: FWD, P, ["for=_hidden, for=1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_mixed_case_name: FWD, P, ["For=1.2.3.4;PROTO=https"] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_other_params: FWD, P, ["proto=https;by=\"[2001:db8::9]\";for=1.2.3.4;host=example.com"] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_chain: FWD, P, ["for=6.6.6.6, for=1.2.3.4;proto=http, for=10.7.7.7;by=_gw"] => Some("1.2.3.4"), ["1.2.3.4", "10.7.7.7", P];
        fwd_quoted_escapes: FWD, P, [r#"for="1.2\.3.4";by="a\"b,c;d""#] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_multiple_lines: FWD, P, ["for=6.6.6.6", "for=1.2.3.4", "for=10.8.8.8"] => Some("1.2.3.4"), ["1.2.3.4", "10.8.8.8", P];
        fwd_element_without_for: FWD, P, ["for=1.2.3.4, proto=https"] => U, [P];
        fwd_bare_semicolon_element: FWD, P, ["for=1.2.3.4, ;"] => U, [P];
        fwd_empty_elements_skipped: FWD, P, [", for=1.2.3.4 ,, for=10.1.1.1 ,"] => Some("1.2.3.4"), ["1.2.3.4", "10.1.1.1", P];
        fwd_unterminated_quote: FWD, P, ["for=\"1.2.3.4"] => U, [P];
        fwd_unquoted_v6_is_syntax_error: FWD, P, ["for=[2001:db8::1]"] => U, [P];
        fwd_space_around_equals: FWD, P, ["for = 1.2.3.4"] => U, [P];
        fwd_duplicate_for: FWD, P, ["for=1.2.3.4;for=5.6.7.8"] => U, [P];
        fwd_bad_earlier_line_not_reached: FWD, P, ["for=\"", "for=1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        fwd_empty_is_peer: FWD, P, [" , "] => Some(P), [P];
        fwd_xff_ignored: FWD, P, [] => Some(P), [P];
        real_ip_present: REAL, P, ["1.2.3.4"] => Some("1.2.3.4"), ["1.2.3.4", P];
        real_ip_with_port: REAL, P, [" [2001:db8::1]:443 "] => Some("2001:db8::1"), ["2001:db8::1", P];
        real_ip_trusted_value: REAL, P, ["10.6.6.6"] => Some("10.6.6.6"), ["10.6.6.6", P];
        real_ip_absent: REAL, P, [] => Some(P), [P];
        real_ip_malformed: REAL, P, ["1.2.3.4, 5.6.7.8"] => U, [P];
        real_ip_empty: REAL, P, [""] => U, [P];
        real_ip_duplicate: REAL, P, ["1.2.3.4", "1.2.3.4"] => U, [P];
        real_ip_untrusted_peer: REAL, "203.0.113.9", ["1.2.3.4"] => Some("203.0.113.9"), ["203.0.113.9"];
    }

    #[test]
    fn xff_ignored_when_forwarded_configured() {
        let h = headers(XFF, &["1.2.3.4"]);
        let r = resolve(ip(P), &h, &trusted(), &ForwardHeader::Forwarded);
        assert_eq!(r.client, Some(ip(P)));
    }

    #[test]
    fn empty_trusted_ignores_headers() {
        let h = headers(XFF, &["1.2.3.4"]);
        for peer in ["10.0.0.1", "::1"] {
            let r = resolve(ip(peer), &h, &IpSet::empty(), &ForwardHeader::default());
            assert_eq!((r.client, r.chain.to_vec()), (Some(ip(peer)), vec![ip(peer)]));
        }
    }

    #[test]
    fn non_ascii_header_is_malformed() {
        let mut h = headers(XFF, &["1.2.3.4"]);
        h.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"10.1.1.1\xff").unwrap());
        let r = resolve(ip(P), &h, &trusted(), &ForwardHeader::XForwardedFor);
        assert_eq!((r.client, r.chain.to_vec()), (None, vec![ip(P)]));
    }

    #[test]
    fn hop_cap() {
        let trusted_hops = |n: usize| (0..n).map(|i| format!("10.0.{}.{}", i / 256, i % 256));
        // Exactly MAX_HOPS trusted entries: the leftmost is the client.
        let line = trusted_hops(MAX_HOPS).collect::<Vec<_>>().join(", ");
        let r = resolve(ip(P), &headers(XFF, &[&line]), &trusted(), &ForwardHeader::default());
        assert_eq!(r.client, Some(ip("10.0.0.0")));
        assert_eq!(r.chain.len(), MAX_HOPS + 1);
        // One more entry, trusted or not, is beyond the cap: unknown.
        for extra in ["10.9.9.9", "1.2.3.4"] {
            let line = format!("{extra}, {line}");
            let r = resolve(ip(P), &headers(XFF, &[&line]), &trusted(), &ForwardHeader::default());
            assert_eq!(r.client, None);
            assert_eq!(r.chain.len(), MAX_HOPS + 1);
            assert_eq!(r.chain.last(), Some(&ip(P)));
        }
        // A long list whose client is near the right is fine.
        let line = format!("{}, 1.2.3.4, 10.0.0.7", trusted_hops(500).collect::<Vec<_>>().join(","));
        let r = resolve(ip(P), &headers(XFF, &[&line]), &trusted(), &ForwardHeader::default());
        assert_eq!(r.client, Some(ip("1.2.3.4")));
    }

    #[test]
    fn header_name_parsing() {
        assert_eq!(
            ForwardHeader::parse("x-FORWARDED-for"),
            Ok(ForwardHeader::XForwardedFor)
        );
        assert_eq!(ForwardHeader::parse("FORWARDED"), Ok(ForwardHeader::Forwarded));
        assert_eq!(
            ForwardHeader::parse("X-Real-IP"),
            Ok(ForwardHeader::Single(HeaderName::from_static("x-real-ip")))
        );
        assert_eq!(ForwardHeader::default(), ForwardHeader::XForwardedFor);
        let err = ForwardHeader::parse("bad name").unwrap_err();
        assert_eq!(err.to_string(), r#""bad name" is not a valid HTTP header name"#);
        assert!(ForwardHeader::parse("").is_err());
    }

    #[test]
    fn chain_formatting() {
        let chain = [ip("1.2.3.4"), ip("2001:db8::1"), ip("10.0.0.1")];
        assert_eq!(format_chain(&chain), "1.2.3.4, 2001:db8::1, 10.0.0.1");
        assert_eq!(format_chain(&[]), "");
    }

    proptest! {
        #[test]
        fn push_ip_matches_display(a: u32, b: u128, v4: bool) {
            let ip = if v4 { IpAddr::from(std::net::Ipv4Addr::from(a)) } else { IpAddr::from(Ipv6Addr::from(b)) };
            let mut s = String::new();
            push_ip(&mut s, ip);
            prop_assert_eq!(s, ip.to_string());
        }
    }

    #[test]
    fn node_parsing() {
        let ok = [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:80", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("[::ffff:192.0.2.1]:1", "192.0.2.1"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_node(input), Some(ip(want)), "{input}");
        }
        let bad = [
            "",
            " 1.2.3.4",
            "1.2.3.4:",
            "1.2.3.4:+80",
            "1.2.3.4:65536",
            "[::1]443",
            "[::1]:",
            "[::1]]:1",
            "::1]",
            "1.2.3.4:80:80",
            "01.2.3.4",
            "fe80::1%eth0",
            "[fe80::1%1]:80",
        ];
        for input in bad {
            assert_eq!(parse_node(input), None, "{input:?}");
        }
    }

    /// Every IP that some contiguous piece of `s` (or of `s` without
    /// backslashes, for quoted-string escapes) parses as.
    fn ips_in(s: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for text in [s.to_owned(), s.replace('\\', "")] {
            let b = text.as_bytes();
            for i in 0..b.len() {
                for j in i + 1..=b.len() {
                    if let Some(ip) = std::str::from_utf8(&b[i..j])
                        .ok()
                        .and_then(|t| t.parse::<IpAddr>().ok())
                    {
                        out.push(ip.to_canonical());
                    }
                }
            }
        }
        out
    }

    const POOL: &[&str] = &[
        "10.0.0.1",
        "10.0.0.2",
        "1.2.3.4",
        "203.0.113.9",
        "2001:db8::1",
        "2001:db8::2",
        "::ffff:10.0.0.3",
        "::ffff:1.2.3.5",
    ];

    fn header_kind() -> impl Strategy<Value = ForwardHeader> {
        prop_oneof![
            Just(ForwardHeader::XForwardedFor),
            Just(ForwardHeader::Forwarded),
            Just(ForwardHeader::Single(HeaderName::from_static("x-real-ip"))),
        ]
    }

    fn header_name(kind: &ForwardHeader) -> HeaderName {
        match kind {
            ForwardHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardHeader::Forwarded => FORWARDED,
            ForwardHeader::Single(name) => name.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary header lines from a grammar-heavy alphabet, arbitrary
        /// trust: never panics, the client comes from the peer or the header,
        /// and the chain ends with the peer.
        #[test]
        fn arbitrary_text(
            kind in header_kind(),
            lines in prop::collection::vec("[0-9a-fA-F:.,; \\[\\]\"\\\\=_forunkw]{0,40}", 0..3),
            trust in prop::collection::vec((any::<u32>(), 0u8..=32), 0..4),
            trust_pool in prop::collection::vec(any::<bool>(), POOL.len()),
            peer in 0..POOL.len(),
        ) {
            let mut nets: Vec<ipnet::IpNet> = trust.iter()
                .map(|&(a, p)| ipnet::Ipv4Net::new(a.into(), p).unwrap().into()).collect();
            nets.extend(POOL.iter().zip(&trust_pool).filter(|(_, t)| **t).map(|(s, _)| parse_entry(s).unwrap()));
            let trusted = IpSet::new(nets);
            let peer = ip(POOL[peer]);
            let mut h = HeaderMap::new();
            for line in &lines {
                h.append(header_name(&kind), HeaderValue::from_str(line).unwrap());
            }
            let r = resolve(peer, &h, &trusted, &kind);
            let peer = peer.to_canonical();
            prop_assert_eq!(r.chain.last(), Some(&peer));
            let seen: Vec<IpAddr> = lines.iter().flat_map(|l| ips_in(l)).collect();
            for hop in &r.chain[..r.chain.len() - 1] {
                prop_assert!(seen.contains(hop), "{} not in header", hop);
            }
            if let Some(c) = r.client {
                prop_assert!(c == peer || seen.contains(&c));
                prop_assert_eq!(r.chain.first(), Some(&c));
            }
            if !trusted.contains(peer) {
                prop_assert_eq!(r, Resolved { client: Some(peer), chain: Chain::Peer(peer), peer_trusted: false });
            }
        }

        /// Arbitrary bytes in the header: never panics; chain ends with the peer.
        #[test]
        fn arbitrary_bytes(
            kind in header_kind(),
            lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..3),
        ) {
            let peer = ip("10.0.0.1");
            let mut h = HeaderMap::new();
            let mut seen = Vec::new();
            for line in &lines {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    seen.extend(ips_in(&String::from_utf8_lossy(line)));
                    h.append(header_name(&kind), v);
                }
            }
            let r = resolve(peer, &h, &trusted(), &kind);
            prop_assert_eq!(r.chain.last(), Some(&peer));
            if let Some(c) = r.client {
                prop_assert!(c == peer || seen.contains(&c));
            }
        }

        /// Well-formed X-Forwarded-For lists agree with a direct reading of the spec.
        #[test]
        fn xff_matches_model(
            entries in prop::collection::vec((0..POOL.len(), 0..3usize), 0..8),
            peer in 0..POOL.len(),
        ) {
            let render = |i: usize, style: usize| {
                let a = ip(POOL[i]);
                match (style, a) {
                    (1, IpAddr::V4(_)) => format!("{a}:80"),
                    (1, IpAddr::V6(_)) => format!("[{a}]:80"),
                    (2, IpAddr::V6(_)) => format!("[{a}]"),
                    _ => a.to_string(),
                }
            };
            let line = entries.iter().map(|&(i, s)| render(i, s)).collect::<Vec<_>>().join(" , ");
            let h = headers(XFF, &[&line]);
            let peer = ip(POOL[peer]).to_canonical();
            let r = resolve(peer, &h, &trusted(), &ForwardHeader::XForwardedFor);
            let list: Vec<IpAddr> = entries.iter().map(|&(i, _)| ip(POOL[i]).to_canonical()).collect();
            let t = trusted();
            let want = if !t.contains(peer) || list.is_empty() {
                (Some(peer), vec![peer])
            } else {
                let start = list.iter().rposition(|a| !t.contains(*a)).unwrap_or(0);
                let mut chain = list[start..].to_vec();
                chain.push(peer);
                (Some(list[start]), chain)
            };
            prop_assert_eq!((r.client, r.chain.to_vec()), want);
        }
    }
}
