//! Request framing that hyper lets through but RFC 9112 forbids or leaves to
//! interpretation. Behind a CDN or load balancer, a request whose end the two
//! read differently smuggles its remainder in as a request of its own, and a
//! request with two Hosts is routed by one and served by the other; such a
//! request is refused, never read one way.
//!
//! hyper already refuses (400, connection closed): Transfer-Encoding in
//! HTTP/1.0, a last Transfer-Encoding line whose last coding is not `chunked`,
//! invalid or differing Content-Length values, obs-fold, control characters
//! and malformed field lines, and malformed chunks. With both Content-Length
//! and Transfer-Encoding it reads the chunked body, drops Content-Length and
//! closes the connection after the answer (§6.3 item 3 allows that). What it
//! lets through, and [`check`] refuses: `chunked` applied more than once,
//! codings other than `chunked`, and an HTTP/1.1 Host missing, repeated or
//! invalid.

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, ORIGIN, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode, Version};

/// Why a request's framing or Host is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// RFC 9112 §6.1: an HTTP/1.0 recipient cannot be told the body is chunked.
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding is not ASCII")]
    TransferEncodingNotAscii,
    /// RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more
    /// than once"; decoding it once leaves the rest to be read as a request.
    #[error("chunked applied more than once")]
    ChunkedTwice,
    /// RFC 9112 §6.3 item 4: the length cannot be determined; 400.
    #[error("chunked is not the final transfer coding")]
    ChunkedNotLast,
    #[error("unsupported transfer coding {0:?}")]
    UnsupportedCoding(String),
    /// RFC 9112 §3.2: an HTTP/1.1 request lacking Host is a 400.
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// RFC 9112 §3.2: more than one Host line is a 400 in any version.
    #[error("more than one Host")]
    DuplicateHost,
    /// RFC 9112 §3.2: a Host with an invalid value is a 400.
    #[error("invalid Host")]
    InvalidHost,
}

impl FramingError {
    /// The answer's status; the connection is closed after it whatever it is.
    pub fn status(&self) -> StatusCode {
        match self {
            // 501, not 400: the framing is clear (chunked comes last), the coding
            // under it is what gatekeeper does not implement. RFC 9112 §6.1: a
            // server receiving a transfer coding it does not understand SHOULD
            // answer 501; nginx does. Forwarding is no option: Transfer-Encoding
            // is hop-by-hop, so the app would get a gzip body it takes for plain.
            FramingError::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Refuses what hyper lets through in an HTTP/1.x request's framing and Host
/// (see the module doc). HTTP/2 frames by itself: its requests have no
/// Transfer-Encoding (the h2 layer rejects one) and their Host may be
/// `:authority` alone, so they pass unchecked.
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), FramingError> {
    check_head(version, headers, &Head::scan(headers))
}

/// The fields of a request head the framing and the host depend on, found in
/// one pass over them (a lookup per name costs a hash each).
#[derive(Debug, Default)]
pub struct Head<'a> {
    /// The first Host line, and how many there are.
    pub host: Option<&'a HeaderValue>,
    pub host_lines: u32,
    pub transfer_encoding: bool,
    /// The first Content-Length line (hyper refuses differing ones).
    pub content_length: Option<&'a HeaderValue>,
    /// The Origin line, for CORS on the maintenance answer.
    pub origin: Option<&'a HeaderValue>,
}

impl<'a> Head<'a> {
    pub fn scan(headers: &'a HeaderMap) -> Head<'a> {
        let mut h = Head::default();
        for (name, value) in headers {
            if name == HOST {
                h.host.get_or_insert(value);
                h.host_lines += 1;
            } else if name == CONTENT_LENGTH {
                h.content_length.get_or_insert(value);
            } else if name == TRANSFER_ENCODING {
                h.transfer_encoding = true;
            } else if name == ORIGIN {
                h.origin.get_or_insert(value);
            }
        }
        h
    }
}

/// [`check`] with the head already scanned.
pub fn check_head(version: Version, headers: &HeaderMap, head: &Head<'_>) -> Result<(), FramingError> {
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return Ok(());
    }
    if head.transfer_encoding {
        transfer_encoding(version, headers)?;
    }
    host(version, head)
}

fn transfer_encoding(version: Version, headers: &HeaderMap) -> Result<(), FramingError> {
    let mut lines = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if lines.peek().is_none() {
        return Ok(());
    }
    if version == Version::HTTP_10 {
        return Err(FramingError::TransferEncodingInHttp10);
    }
    let (mut chunked, mut last_chunked, mut other) = (false, false, None);
    for line in lines {
        let line = line.to_str().map_err(|_| FramingError::TransferEncodingNotAscii)?;
        // Lines are one list (RFC 9110 §5.3); empty elements do not count (§5.6.1).
        for coding in line.split(',').map(|c| c.trim_matches([' ', '\t'])) {
            if coding.is_empty() {
                continue;
            }
            // Coding names are case-insensitive (RFC 9112 §7).
            last_chunked = coding.eq_ignore_ascii_case("chunked");
            if last_chunked {
                if chunked {
                    return Err(FramingError::ChunkedTwice);
                }
                chunked = true;
            } else if other.is_none() {
                other = Some(coding);
            }
        }
    }
    if !last_chunked {
        return Err(FramingError::ChunkedNotLast);
    }
    match other {
        // Bounded: the name goes into a log line.
        Some(c) => Err(FramingError::UnsupportedCoding(c.chars().take(32).collect())),
        None => Ok(()),
    }
}

fn host(version: Version, head: &Head<'_>) -> Result<(), FramingError> {
    match (head.host, head.host_lines) {
        (None, _) if version == Version::HTTP_11 => Err(FramingError::MissingHost),
        (None, _) => Ok(()),
        (Some(_), 2..) => Err(FramingError::DuplicateHost),
        (Some(h), _) if valid_host(h.as_bytes()) => Ok(()),
        (Some(_), _) => Err(FramingError::InvalidHost),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2); empty is valid
/// (a target URI without authority). Stricter than RFC 3986 in one point: no
/// comma, which no DNS name has and two joined Host lines do.
fn valid_host(v: &[u8]) -> bool {
    let (name, port) = match v.strip_prefix(b"[") {
        // IP-literal: an IPv6 address (IPvFuture and zone IDs are not sent by clients).
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let lit = &rest[..end];
                if lit.is_empty() || !lit.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return false;
                }
                (&[][..], &rest[end + 1..])
            }
            None => return false,
        },
        None => v.split_at(v.iter().position(|&b| b == b':').unwrap_or(v.len())),
    };
    name.iter().all(|&b| REG_NAME[usize::from(b)])
        && (port.is_empty() || port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit))
}

/// RFC 3986 `reg-name` bytes (unreserved, pct-encoded's `%`, sub-delims), as a table:
/// every request's Host goes through it.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+;=";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    /// An HTTP/1.1 request with `Host: x` and these Transfer-Encoding lines.
    fn te(lines: &[&str]) -> Result<(), FramingError> {
        let mut pairs: Vec<(&str, &[u8])> = vec![("host", b"x")];
        pairs.extend(lines.iter().map(|l| ("transfer-encoding", l.as_bytes())));
        check(Version::HTTP_11, &map(&pairs))
    }

    fn host11(lines: &[&[u8]]) -> Result<(), FramingError> {
        let pairs: Vec<(&str, &[u8])> = lines.iter().map(|l| ("host", *l)).collect();
        check(Version::HTTP_11, &map(&pairs))
    }

    #[test]
    fn transfer_encoding_table() {
        use FramingError::*;
        let unsupported = |c: &str| Err(UnsupportedCoding(c.into()));
        let table: &[(&[&str], Result<(), FramingError>)] = &[
            (&[], Ok(())),
            // chunked once: any case, OWS, empty list elements (RFC 9110 §5.6.1)
            (&["chunked"], Ok(())),
            (&["Chunked"], Ok(())),
            (&["CHUNKED"], Ok(())),
            (&[" \tchunked\t "], Ok(())),
            (&[", chunked"], Ok(())),
            (&[",,chunked,"], Ok(())),
            (&["", "chunked"], Ok(())),
            (&[" , ", "chunked"], Ok(())),
            // chunked more than once, across lines or within one
            (&["chunked", "chunked"], Err(ChunkedTwice)),
            (&["chunked, chunked"], Err(ChunkedTwice)),
            (&["Chunked,CHUNKED"], Err(ChunkedTwice)),
            (&["chunked, ,\tchunked"], Err(ChunkedTwice)),
            (&["", "chunked, chunked"], Err(ChunkedTwice)),
            (&["chunked", "", "chunked"], Err(ChunkedTwice)),
            (&["gzip, chunked", "chunked"], Err(ChunkedTwice)),
            (&["chunked, gzip, chunked"], Err(ChunkedTwice)),
            // chunked not last (hyper refuses these first)
            (&["gzip"], Err(ChunkedNotLast)),
            (&["identity"], Err(ChunkedNotLast)),
            (&["chunked, gzip"], Err(ChunkedNotLast)),
            (&["chunked", "gzip"], Err(ChunkedNotLast)),
            (&["chunked", "x"], Err(ChunkedNotLast)),
            (&["xchunked"], Err(ChunkedNotLast)),
            (&["chunked;foo=bar"], Err(ChunkedNotLast)),
            (&["\"chunked\""], Err(ChunkedNotLast)),
            (&[""], Err(ChunkedNotLast)),
            (&[" , "], Err(ChunkedNotLast)),
            // another coding under chunked
            (&["gzip, chunked"], unsupported("gzip")),
            (&["identity, chunked"], unsupported("identity")),
            (&["gzip", "chunked"], unsupported("gzip")),
            (&["deflate, gzip, chunked"], unsupported("deflate")),
        ];
        for (lines, want) in table {
            assert_eq!(&te(lines), want, "{lines:?}");
        }
        let long = format!("{}, chunked", "x".repeat(1000));
        assert_eq!(te(&[&long]), unsupported(&"x".repeat(32)));
        assert_eq!(ChunkedTwice.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ChunkedNotLast.status(), StatusCode::BAD_REQUEST);
        assert_eq!(UnsupportedCoding("gzip".into()).status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn transfer_encoding_must_be_ascii_in_every_line() {
        let h = map(&[
            ("host", b"x"),
            ("transfer-encoding", b"gzip\xff"),
            ("transfer-encoding", b"chunked"),
        ]);
        assert_eq!(check(Version::HTTP_11, &h), Err(FramingError::TransferEncodingNotAscii));
    }

    #[test]
    fn transfer_encoding_in_http10_is_refused() {
        let h = map(&[("transfer-encoding", b"chunked")]);
        assert_eq!(check(Version::HTTP_10, &h), Err(FramingError::TransferEncodingInHttp10));
    }

    #[test]
    fn host_is_required_once_in_http11_and_at_most_once_in_http10() {
        assert_eq!(host11(&[]), Err(FramingError::MissingHost));
        assert_eq!(check(Version::HTTP_10, &HeaderMap::new()), Ok(()));
        assert_eq!(host11(&[b"x", b"x"]), Err(FramingError::DuplicateHost));
        assert_eq!(host11(&[b"x", b"y"]), Err(FramingError::DuplicateHost));
        let two = map(&[("host", b"x"), ("host", b"y")]);
        assert_eq!(check(Version::HTTP_10, &two), Err(FramingError::DuplicateHost));
    }

    #[test]
    fn host_values() {
        let table: &[(&[u8], bool)] = &[
            (b"", true),
            (b"x", true),
            (b"example.com", true),
            (b"example.com.", true),
            (b"example.com:8080", true),
            (b"example.com:", true),
            (b"my_host-1.example", true),
            (b"127.0.0.1:80", true),
            (b"[::1]", true),
            (b"[::1]:8443", true),
            (b"[2001:db8::1]", true),
            (b"[::ffff:127.0.0.1]:80", true),
            (b"xn--bcher-kva.example", true),
            (b"u@x", false),
            (b"x y", false),
            (b"x, y", false),
            (b"x,y", false),
            (b"x/y", false),
            (b"x?y", false),
            (b"x#y", false),
            (b"x\\y", false),
            (b"x:80:80", false),
            (b"x:8a", false),
            (b"::1", false),
            (b"[::1", false),
            (b"[]", false),
            (b"[::1]x", false),
            (b"[::1]:x", false),
            (b"[v1.x]", false),
            (b"\"x\"", false),
            (b"b\xc3\xbccher.example", false),
            (b"x\t", false),
        ];
        for &(v, ok) in table {
            let want = if ok { Ok(()) } else { Err(FramingError::InvalidHost) };
            assert_eq!(host11(&[v]), want, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn http2_is_not_checked() {
        let h = map(&[
            ("transfer-encoding", b"chunked, chunked"),
            ("host", b"a"),
            ("host", b"b"),
        ]);
        assert_eq!(check(Version::HTTP_2, &h), Ok(()));
        assert_eq!(check(Version::HTTP_2, &HeaderMap::new()), Ok(()));
    }

    fn name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            Just(TRANSFER_ENCODING),
            Just(HOST),
            Just(http::header::CONTENT_LENGTH),
            "[a-z][a-z0-9-]{0,8}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
        ]
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ \t,]{0,3}(chunked|Chunked|gzip|x)?([ \t,]{0,3}(chunked|gzip))*".prop_map(|s| s.into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
        .prop_filter_map("not a field value", |b| HeaderValue::from_bytes(&b).ok())
    }

    proptest! {
        #[test]
        fn random_header_lists_never_panic(
            v in prop_oneof![Just(Version::HTTP_09), Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
            pairs in proptest::collection::vec((name(), value()), 0..8),
        ) {
            let mut h = HeaderMap::new();
            for (k, val) in pairs {
                h.append(k, val);
            }
            let r = check(v, &h);
            if v == Version::HTTP_2 || v == Version::HTTP_09 {
                prop_assert_eq!(r, Ok(()));
            } else if let Err(e) = r {
                prop_assert!(e.status().is_client_error() || e.status() == StatusCode::NOT_IMPLEMENTED);
            }
        }
    }
}
