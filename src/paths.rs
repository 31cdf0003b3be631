//! Request paths and hosts against configured prefixes and names: bypass
//! paths (a path that might be read another way is never a bypass) and the
//! scope of partial maintenance (such a path is inside every scope). Both
//! fail closed.

use percent_encoding::percent_decode;

/// Whether `path` (the raw, still percent-encoded request path) lies under one
/// of the prefixes. Matching is by whole segments: "/healthz" covers "/healthz"
/// and "/healthz/db" but not "/healthzfoo".
pub fn under_bypass_path(path: &str, prefixes: &[String]) -> bool {
    // SECURITY: a path the upstream might normalise to somewhere else
    // ("/healthz/../admin", "/healthz/%2e%2e/admin", "/healthz%2f..") is never a bypass.
    if prefixes.is_empty() || path_is_ambiguous(path) {
        return false;
    }
    prefixes.iter().any(|p| segment_prefix(path, p))
}

/// [`under_bypass_path`] for one prefix.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    // The cheap test first: most paths are not under the prefix at all.
    segment_prefix(path, prefix) && !path_is_ambiguous(path)
}

fn segment_prefix(path: &str, p: &str) -> bool {
    path.strip_prefix(p)
        .is_some_and(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

fn path_is_ambiguous(path: &str) -> bool {
    // Encoded '.', '/' or '\\' in any case, checked without copying the path.
    let encoded = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'e' | b'f') | (b'5', b'c')));
    encoded || path.contains('\\') || path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Whether `raw_path` (still percent-encoded) lies inside one of the scope
/// `prefixes` (empty: everything is in scope), compared by whole segments
/// after percent-decoding and removing dot segments (RFC 3986 §5.2.4), so
/// `/x/../api/y` and `/%61pi/y` are inside `/api/`. SECURITY: a path with an
/// encoded `/` or `\`, a backslash or an empty segment (`//`) is inside every
/// prefix: the app may read it as any of them.
pub fn in_scope(raw_path: &str, prefixes: &[String]) -> bool {
    if prefixes.is_empty() {
        return true;
    }
    let Some(path) = normalize(raw_path) else {
        return true;
    };
    prefixes.iter().any(|p| {
        let p = p.as_bytes();
        path.strip_prefix(p)
            .is_some_and(|rest| p.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/"))
            // "/api/" also covers "/api" itself: the same resource to most apps.
            || (p.ends_with(b"/") && path == p[..p.len() - 1])
    })
}

/// The decoded path with dot segments removed, or None when it is ambiguous.
fn normalize(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let encoded_separator = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'f') | (b'5', b'c')));
    if encoded_separator || raw.contains('\\') || raw.contains("//") || !raw.starts_with('/') {
        return None;
    }
    let decoded: Vec<u8> = percent_decode(bytes).collect();
    if decoded.contains(&0) {
        return None;
    }
    Some(remove_dot_segments(&decoded))
}

/// RFC 3986 §5.2.4 on an absolute path; `..` above the root stays at the root.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            b"." => trailing = i == last,
            b".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = Vec::with_capacity(path.len());
    for s in &out {
        p.push(b'/');
        p.extend_from_slice(s);
    }
    if trailing || p.is_empty() {
        p.push(b'/');
    }
    p
}

/// Whether the request's host matches one of `patterns` (empty: every host).
/// `host` is the authority (`Host` or `:authority`), case and port ignored.
/// `*.example.org` matches one or more labels in front (`a.example.org`,
/// `a.b.example.org`), not `example.org`. A request without a usable host
/// matches: the app would serve it from some site, perhaps one in maintenance.
pub fn host_in_scope(host: Option<&str>, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(name) = host.and_then(host_name) else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(domain) => {
            name.len() > domain.len() + 1
                && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(p.trim_end_matches('.')),
    })
}

/// The name part of an authority: no port, no trailing dot; IPv6 in brackets kept.
fn host_name(authority: &str) -> Option<&str> {
    let name = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.split(':').next()?
    };
    let name = name.trim_end_matches('.');
    (!name.is_empty()).then_some(name)
}

/// A host scope entry: a name (letters, digits, `-`, `.`, or an IP address)
/// or `*.` followed by one.
pub fn valid_host_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && (name.parse::<std::net::IpAddr>().is_ok()
            || (name.starts_with('[') && name.ends_with(']'))
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_paths_match_whole_segments() {
        let p = vec!["/healthz".to_string(), "/api/status/".to_string()];
        for ok in [
            "/healthz",
            "/healthz/db",
            "/healthz?full=1",
            "/api/status/",
            "/api/status/x",
        ] {
            let path = ok.split('?').next().unwrap_or(ok);
            assert!(under_bypass_path(path, &p), "{ok}");
        }
        for no in [
            "/",
            "/healthzfoo",
            "/health",
            "/api/status",
            "/x/healthz",
            "/healthz/../admin",
            "/healthz/%2e%2e/admin",
            "/healthz/%2E%2E/admin",
            "/healthz%2f..%2fadmin",
            "/healthz/..%5cadmin",
            "/healthz\\..\\admin",
            "/healthz//x",
            "/healthz/./x",
        ] {
            assert!(!under_bypass_path(no, &p), "{no}");
        }
        assert!(!under_bypass_path("/healthz", &[]));
    }

    #[test]
    fn scope_paths_after_decoding_and_dot_segments() {
        let p = vec!["/api/".to_string(), "/checkout".to_string()];
        for inside in [
            "/api/",
            "/api",
            "/api/x",
            "/api/x/y",
            "/x/../api/y",
            "/%61pi/y",
            "/./api/x",
            "/api/./x",
            "/../api/x",
            "/checkout",
            "/checkout/",
            "/checkout/pay",
            "/CHECKOUT/../checkout",
            // Ambiguous: inside every prefix.
            "/static%2f..%2fapi",
            "/x%2Fy",
            "/a\\b",
            "//api",
            "/x//y",
            "/x%5cy",
            "/x%00y",
        ] {
            assert!(in_scope(inside, &p), "{inside} should be inside");
        }
        for outside in [
            "/",
            "/apix",
            "/ap",
            "/checkoutx",
            "/static/app.css",
            "/api/../x",
            "/%2e%2e/x",
            "/x/api/",
        ] {
            assert!(!in_scope(outside, &p), "{outside} should be outside");
        }
        assert!(in_scope("/anything", &[]));
    }

    #[test]
    fn dot_segments() {
        for (raw, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/", "/"),
            ("/a/%2e%2e/b", "/b"),
        ] {
            let got = normalize(raw).map(|b| String::from_utf8_lossy(&b).into_owned());
            assert_eq!(got.as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn scope_hosts() {
        let h = vec!["shop.example.com".to_string(), "*.example.org".to_string()];
        for inside in [
            "shop.example.com",
            "SHOP.Example.com",
            "shop.example.com:8443",
            "shop.example.com.",
            "a.example.org",
            "a.b.example.org:80",
        ] {
            assert!(host_in_scope(Some(inside), &h), "{inside}");
        }
        for outside in [
            "example.org",
            "example.com",
            "xshop.example.com",
            "aexample.org",
            "a.example.org.evil",
            "[::1]",
        ] {
            assert!(!host_in_scope(Some(outside), &h), "{outside}");
        }
        assert!(host_in_scope(None, &h), "no host: in scope (fail closed)");
        assert!(host_in_scope(Some("x"), &[]));
        assert!(host_in_scope(Some("[::1]:8080"), &["[::1]".to_string()]));
    }

    #[test]
    fn host_patterns() {
        for ok in ["a.example", "*.example.org", "localhost", "10.0.0.1", "[::1]", "a-b.c."] {
            assert!(valid_host_pattern(ok), "{ok}");
        }
        for bad in ["", "*", "*.", "a b", "a..b", ".a", "a/b", "*.*.a"] {
            assert!(!valid_host_pattern(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever the path, normalizing never panics, and a normalized path
        /// is absolute and free of dot segments.
        #[test]
        fn normalize_is_total(raw in "/[a-z./%0-9A-F]{0,40}") {
            if let Some(n) = normalize(&raw) {
                proptest::prop_assert!(n.starts_with(b"/"));
                let text = String::from_utf8_lossy(&n).into_owned();
                proptest::prop_assert!(!text.split('/').any(|s| s == "." || s == ".."), "{}", text);
            }
        }
    }
}
