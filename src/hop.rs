//! Hop-by-hop headers (RFC 9110 §7.6.1): meaningful for one connection only,
//! so a proxy removes them in both directions, along with every header the
//! `Connection` header names.

use http::header::{self, HeaderMap, HeaderName};

/// Bit `i` of `strip`'s scan stands for `HOP_HEADERS[i]` (see [`bit`]).
static HOP_HEADERS: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
/// `Upgrade`'s bit, after the table's.
const UPGRADE_BIT: u16 = 1 << HOP_HEADERS.len();

/// The scan's bit for a header name: a string match compiles to a length
/// switch, cheaper than comparing with eight `HeaderName`s. Must follow
/// `HOP_HEADERS` (a test checks).
fn bit(name: &str) -> u16 {
    match name {
        "connection" => 1 << 0,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => UPGRADE_BIT,
        _ => 0,
    }
}

/// Removes hop-by-hop headers. `Upgrade` is removed too unless `keep_upgrade`
/// (an upgrade being relayed needs it, with `Connection: upgrade` set again by the caller).
pub fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds what is there: a hashed removal per
    // hop-by-hop name would cost more than the whole pass for most messages.
    let mut present = headers.keys().fold(0u16, |acc, name| acc | bit(name.as_str()));
    if keep_upgrade {
        present &= !UPGRADE_BIT;
    }
    if present == 0 {
        return;
    }
    // Connection is HOP_HEADERS[0]: the names it lists go too, but for the
    // tokens that are not header names in practice.
    if present & 1 != 0 && !plain_connection(headers) {
        remove_connection_named(headers, keep_upgrade);
    }
    for (i, name) in HOP_HEADERS.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Removes the headers a Connection header names (but its `keep-alive` and
/// `close` tokens, which are not header names in practice).
fn remove_connection_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
}

/// `Connection: keep-alive` or `close` alone, as most messages have it: names no header.
fn plain_connection(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    })
}

/// Whether a request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.append(k, v);
            }
        }
        h
    }

    #[test]
    fn a_name_in_a_second_connection_header_is_stripped() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-kept", "yes"),
        ]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        let mut h = map(&[("connection", "close"), ("x-kept", "yes")]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn strips_standard_and_named_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    #[test]
    fn keeps_upgrade_when_relaying() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip(&mut h, true);
        assert!(h.contains_key("upgrade") && !h.contains_key("connection"));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(is_upgrade(&map(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "h2c")
        ])));
    }

    #[test]
    fn bits_follow_the_table() {
        for (i, name) in HOP_HEADERS.iter().enumerate() {
            assert_eq!(bit(name.as_str()), 1 << i, "{name}");
        }
        assert_eq!(bit(header::UPGRADE.as_str()), UPGRADE_BIT);
        assert_eq!(bit("x-kept"), 0);
    }

    /// The plain definition, a removal per name: `strip` must agree with it.
    fn strip_naive(headers: &mut HeaderMap, keep_upgrade: bool) {
        remove_connection_named(headers, keep_upgrade);
        for name in &HOP_HEADERS {
            headers.remove(name);
        }
        if !keep_upgrade {
            headers.remove(header::UPGRADE);
        }
    }

    proptest::proptest! {
        #[test]
        fn strip_agrees_with_removing_each_name(
            pairs in proptest::collection::vec((0usize..12, 0usize..8), 0..10),
            keep_upgrade: bool,
        ) {
            const NAMES: [&str; 12] = [
                "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
                "x-secret", "host", "accept",
            ];
            const VALUES: [&str; 8] = [
                "close", "keep-alive", "Upgrade", "x-secret", "X-Secret, te", "accept,,host", "", "1",
            ];
            let h = map(&pairs.iter().map(|&(n, v)| (NAMES[n], VALUES[v])).collect::<Vec<_>>());
            let (mut fast, mut naive) = (h.clone(), h);
            strip(&mut fast, keep_upgrade);
            strip_naive(&mut naive, keep_upgrade);
            proptest::prop_assert_eq!(fast, naive);
        }
    }
}
