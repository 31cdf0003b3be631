//! The decision at the heart of gatekeeper: given the maintenance state, the
//! client and the path, proxy the request or answer it with the page or one of
//! its assets. Pure functions, no I/O.

/// What the facts of one request are, as the caller established them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Maintenance is active right now.
    pub maintenance: bool,
    /// The resolved client is known and on the allowlist.
    pub client_allowed: bool,
    /// The path falls under one of `maintenance.bypass_paths`.
    pub bypass_path: bool,
    /// A valid bypass cookie or header for the current secret.
    pub credential: bool,
    /// A GET/HEAD whose path names one of the page's assets.
    pub asset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward to the upstream; `bypass` marks a request let through maintenance.
    Proxy { bypass: bool },
    /// Answer 503 with the maintenance page.
    Page,
    /// Answer 200 with one of the page's assets.
    Asset,
}

impl Decision {
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Proxy { bypass: false } => "proxy",
            Decision::Proxy { bypass: true } => "bypass",
            Decision::Page => "page",
            Decision::Asset => "asset",
        }
    }
}

/// Maintenance off: everything is proxied. On: bypass paths, allowed clients
/// and holders of the bypass secret are proxied (they see the app, not our assets); others get an asset or the page.
pub fn decide(f: Facts) -> Decision {
    if !f.maintenance {
        Decision::Proxy { bypass: false }
    } else if f.bypass_path || f.client_allowed || f.credential {
        Decision::Proxy { bypass: true }
    } else if f.asset {
        Decision::Asset
    } else {
        Decision::Page
    }
}

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
    fn every_combination() {
        for bits in 0u8..32 {
            let f = Facts {
                maintenance: bits & 1 != 0,
                client_allowed: bits & 2 != 0,
                bypass_path: bits & 4 != 0,
                asset: bits & 8 != 0,
                credential: bits & 16 != 0,
            };
            let expected = match (
                f.maintenance,
                f.client_allowed || f.bypass_path || f.credential,
                f.asset,
            ) {
                (false, _, _) => Decision::Proxy { bypass: false },
                (true, true, _) => Decision::Proxy { bypass: true },
                (true, false, true) => Decision::Asset,
                (true, false, false) => Decision::Page,
            };
            assert_eq!(decide(f), expected, "{f:?}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(Decision::Proxy { bypass: false }.label(), "proxy");
        assert_eq!(Decision::Proxy { bypass: true }.label(), "bypass");
        assert_eq!(Decision::Page.label(), "page");
        assert_eq!(Decision::Asset.label(), "asset");
    }

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
