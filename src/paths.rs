//! Request paths against configured prefixes, by whole segments, failing
//! closed on paths an upstream might read another way.

/// Whether `path` (the raw, still percent-encoded request path) lies under one
/// of the prefixes. Matching is by whole segments: "/healthz" covers "/healthz"
/// and "/healthz/db" but not "/healthzfoo".
pub fn under_bypass_path(path: &str, prefixes: &[String]) -> bool {
    // SECURITY: a path the upstream might normalise to somewhere else
    // ("/healthz/../admin", "/healthz/%2e%2e/admin", "/healthz%2f..") is never a bypass.
    if prefixes.is_empty() || path_is_ambiguous(path) {
        return false;
    }
    prefixes.iter().any(|p| {
        path.strip_prefix(p.as_str())
            .is_some_and(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    })
}

fn path_is_ambiguous(path: &str) -> bool {
    // Encoded '.', '/' or '\\' in any case, checked without copying the path.
    let encoded = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'e' | b'f') | (b'5', b'c')));
    encoded || path.contains('\\') || path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..")
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
}
