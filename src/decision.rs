//! The decision at the heart of gatekeeper: from the facts of one request
//! (gathered once by the `facts` module), what it gets — one of gatekeeper's
//! own endpoints, a redirect, the bypass link's cookie, a refusal, the app, a
//! wait, one of the page's assets, or the page. Pure: no I/O, no clock, no config.

/// What the facts of one request are, as `facts::gather` established them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The request's framing or Host is one a proxy in front may read another way.
    pub bad_framing: bool,
    /// The path is one of gatekeeper's own (`/.gatekeeper/…`), answered on every listener.
    pub endpoint: Option<Endpoint>,
    /// Plain HTTP where the TLS listeners ask for https (`tls.redirect_http`),
    /// with a Host to redirect to.
    pub redirect_to_https: bool,
    /// The path falls under one of `maintenance.bypass_paths` (or the ACME challenge path).
    pub bypass_path: bool,
    /// The path is the bypass link carrying the right token.
    pub bypass_link: bool,
    /// Maintenance is active now.
    pub maintenance: bool,
    /// The request's path and host lie inside the maintenance's scope (always, unscoped).
    pub in_scope: bool,
    /// Maintenance is read-only: safe methods reach the app.
    pub read_only: bool,
    /// Maintenance is a pause: requests wait instead of being answered.
    pub paused: bool,
    /// GET, HEAD, OPTIONS or TRACE.
    pub safe_method: bool,
    /// A CORS preflight (OPTIONS with Access-Control-Request-Method).
    pub preflight: bool,
    /// The resolved client is known and on the allowlist.
    pub client_allowed: bool,
    /// A valid bypass cookie or header for the current secret.
    pub credential: bool,
    /// A GET/HEAD whose path names one of the page's assets. Looked up only
    /// when it can matter (maintenance applies, nobody let through).
    pub asset: bool,
    /// The declared body is over `buffering.max_body`.
    pub too_large: bool,
}

/// gatekeeper's own paths, under `/.gatekeeper/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `health`: 200, or 503 while this instance is drained.
    Health,
    /// `status`: the public maintenance state for the request's host, JSON.
    Status,
    /// `refresh.js` or `banner.js`.
    Script(Script),
    /// `page/<asset>`: the page's own files, whatever the scope.
    PageAsset,
    /// `whoami` (only with `clients.whoami`): how this visitor's request is decided, JSON.
    Whoami,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Refresh,
    Banner,
}

/// Why gatekeeper answers a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400 (or 501 for a transfer coding gatekeeper does not implement), and
    /// the connection closed: ambiguous framing or Host (see the `framing` module).
    Framing,
    /// 413: the declared body is over `buffering.max_body`; not a byte of it is read.
    TooLarge,
}

/// How a request forwarded to the app is marked (`X-Maintenance-Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Maintenance does not apply: no mark.
    None,
    /// Let through maintenance: `bypass`.
    Bypass,
    /// A safe method during read-only maintenance: `read-only`.
    ReadOnly,
}

/// Everything a request can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// One of gatekeeper's own endpoints.
    Endpoint(Endpoint),
    /// 308 to the same URL on https.
    RedirectHttps,
    /// 303 with a fresh bypass cookie.
    BypassLink,
    /// Answered by gatekeeper with an error status; the upstream never hears of it.
    Refuse(Refusal),
    /// Forward to the upstream.
    Proxy(Mark),
    /// Wait until the pause ends (then decide again), at most its `max`.
    Hold,
    /// 200 with one of the page's assets.
    Asset,
    /// 204 to a CORS preflight that would get the page, so the page's 503 can be read.
    Preflight,
    /// 503 with the maintenance page.
    Page,
}

impl Decision {
    /// Every decision's label, in the order of [`Decision::index`].
    pub const LABELS: [&'static str; 14] = [
        "proxy",
        "bypass",
        "page",
        "asset",
        "bypass-link",
        "redirect",
        "refused",
        "read-only",
        "held",
        "preflight",
        "health",
        "status",
        "script",
        "whoami",
    ];

    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// A dense index, for per-decision metric arrays.
    pub fn index(self) -> usize {
        match self {
            Decision::Proxy(Mark::None) => 0,
            Decision::Proxy(Mark::Bypass) => 1,
            Decision::Page => 2,
            Decision::Asset | Decision::Endpoint(Endpoint::PageAsset) => 3,
            Decision::BypassLink => 4,
            Decision::RedirectHttps => 5,
            Decision::Refuse(_) => 6,
            Decision::Proxy(Mark::ReadOnly) => 7,
            Decision::Hold => 8,
            Decision::Preflight => 9,
            Decision::Endpoint(Endpoint::Health) => 10,
            Decision::Endpoint(Endpoint::Status) => 11,
            Decision::Endpoint(Endpoint::Script(_)) => 12,
            Decision::Endpoint(Endpoint::Whoami) => 13,
        }
    }
}

/// The rules, in order:
/// 0. ambiguous framing is refused before anything else reads the request;
/// 1. gatekeeper's own endpoints answer on every listener, in maintenance or not;
/// 2. plain HTTP to a site that redirects to https is redirected, bypass paths excepted
///    (so that nothing — the bypass cookie least of all — is handed out over plain HTTP);
/// 3. the bypass link with the right token gets its cookie;
/// 4. maintenance off, or not for this path or host: the app (unless the declared
///    body is too large — then 413, as for everything that would reach the app);
/// 5. a pause holds everyone (allowed clients too: the app is mid-restart) but
///    bypass paths; the page's assets are answered at once;
/// 6. read-only maintenance lets safe methods through for everyone;
/// 7. a bypass path, an allowed client or a credential: the app;
/// 8. everyone else gets an asset of the page, a preflight's 204, or the page.
pub fn decide(f: &Facts) -> Decision {
    if f.bad_framing {
        return Decision::Refuse(Refusal::Framing);
    }
    if let Some(e) = f.endpoint {
        return Decision::Endpoint(e);
    }
    if f.redirect_to_https && !f.bypass_path {
        return Decision::RedirectHttps;
    }
    if f.bypass_link {
        return Decision::BypassLink;
    }
    let to_app = |mark| {
        if f.too_large {
            Decision::Refuse(Refusal::TooLarge)
        } else {
            Decision::Proxy(mark)
        }
    };
    if !(f.maintenance && f.in_scope) {
        return to_app(Mark::None);
    }
    if f.paused {
        return if f.bypass_path {
            to_app(Mark::Bypass)
        } else if f.asset {
            Decision::Asset
        } else {
            Decision::Hold
        };
    }
    if f.read_only && f.safe_method {
        return to_app(Mark::ReadOnly);
    }
    if f.bypass_path || f.client_allowed || f.credential {
        to_app(Mark::Bypass)
    } else if f.asset {
        Decision::Asset
    } else if f.preflight {
        Decision::Preflight
    } else {
        Decision::Page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: Facts = Facts {
        bad_framing: false,
        endpoint: None,
        redirect_to_https: false,
        bypass_path: false,
        bypass_link: false,
        maintenance: false,
        in_scope: true,
        read_only: false,
        paused: false,
        safe_method: true,
        preflight: false,
        client_allowed: false,
        credential: false,
        asset: false,
        too_large: false,
    };
    const ON: Facts = Facts {
        maintenance: true,
        ..OFF
    };
    const POST: Facts = Facts {
        safe_method: false,
        ..ON
    };

    #[test]
    fn table() {
        use super::Endpoint as Ep;
        use Decision::*;
        use Mark::{Bypass, ReadOnly};
        let none = Mark::None;
        let rows: &[(&str, Facts, Decision)] = &[
            ("off: proxied", OFF, Proxy(none)),
            (
                "off, too large",
                Facts { too_large: true, ..OFF },
                Refuse(Refusal::TooLarge),
            ),
            ("off, asset path: the app's", Facts { asset: true, ..OFF }, Proxy(none)),
            ("on: page", ON, Page),
            ("on, asset", Facts { asset: true, ..ON }, Asset),
            (
                "on, allowed",
                Facts {
                    client_allowed: true,
                    ..ON
                },
                Proxy(Bypass),
            ),
            (
                "on, allowed asset path: the app's",
                Facts {
                    client_allowed: true,
                    asset: true,
                    ..ON
                },
                Proxy(Bypass),
            ),
            ("on, credential", Facts { credential: true, ..ON }, Proxy(Bypass)),
            (
                "on, bypass path",
                Facts {
                    bypass_path: true,
                    ..ON
                },
                Proxy(Bypass),
            ),
            (
                "on, allowed, too large",
                Facts {
                    client_allowed: true,
                    too_large: true,
                    ..ON
                },
                Refuse(Refusal::TooLarge),
            ),
            (
                "on, too large visitor: the page, not 413",
                Facts { too_large: true, ..ON },
                Page,
            ),
            (
                "on, bypass link",
                Facts {
                    bypass_link: true,
                    ..ON
                },
                BypassLink,
            ),
            (
                "bypass link beats being allowed",
                Facts {
                    bypass_link: true,
                    client_allowed: true,
                    ..ON
                },
                BypassLink,
            ),
            (
                "plain http, redirecting",
                Facts {
                    redirect_to_https: true,
                    ..OFF
                },
                RedirectHttps,
            ),
            (
                "redirect beats the bypass link",
                Facts {
                    redirect_to_https: true,
                    bypass_link: true,
                    ..ON
                },
                RedirectHttps,
            ),
            (
                "bypass path is never redirected",
                Facts {
                    redirect_to_https: true,
                    bypass_path: true,
                    ..OFF
                },
                Proxy(none),
            ),
            (
                "bypass path in maintenance, plain",
                Facts {
                    redirect_to_https: true,
                    bypass_path: true,
                    ..ON
                },
                Proxy(Bypass),
            ),
            (
                "bad framing beats everything",
                Facts {
                    bad_framing: true,
                    endpoint: Some(Ep::Health),
                    client_allowed: true,
                    ..ON
                },
                Refuse(Refusal::Framing),
            ),
            (
                "bad framing, off",
                Facts {
                    bad_framing: true,
                    ..OFF
                },
                Refuse(Refusal::Framing),
            ),
            // Scope
            (
                "on, out of scope: the app, unmarked",
                Facts { in_scope: false, ..ON },
                Proxy(none),
            ),
            (
                "on, out of scope, too large",
                Facts {
                    in_scope: false,
                    too_large: true,
                    ..ON
                },
                Refuse(Refusal::TooLarge),
            ),
            // Read-only
            (
                "read-only GET: the app",
                Facts { read_only: true, ..ON },
                Proxy(ReadOnly),
            ),
            (
                "read-only POST: the page",
                Facts {
                    read_only: true,
                    ..POST
                },
                Page,
            ),
            (
                "read-only POST, allowed: bypass",
                Facts {
                    read_only: true,
                    client_allowed: true,
                    ..POST
                },
                Proxy(Bypass),
            ),
            (
                "read-only POST, bypass path (login)",
                Facts {
                    read_only: true,
                    bypass_path: true,
                    ..POST
                },
                Proxy(Bypass),
            ),
            (
                "read-only, out of scope POST",
                Facts {
                    read_only: true,
                    in_scope: false,
                    ..POST
                },
                Proxy(none),
            ),
            // Pause
            ("paused: held", Facts { paused: true, ..ON }, Hold),
            (
                "paused, allowed: held too",
                Facts {
                    paused: true,
                    client_allowed: true,
                    credential: true,
                    ..ON
                },
                Hold,
            ),
            (
                "paused, read-only GET: held",
                Facts {
                    paused: true,
                    read_only: true,
                    ..ON
                },
                Hold,
            ),
            (
                "paused, bypass path: the app",
                Facts {
                    paused: true,
                    bypass_path: true,
                    ..ON
                },
                Proxy(Bypass),
            ),
            (
                "paused, asset: answered",
                Facts {
                    paused: true,
                    asset: true,
                    ..ON
                },
                Asset,
            ),
            (
                "paused, out of scope: the app",
                Facts {
                    paused: true,
                    in_scope: false,
                    ..ON
                },
                Proxy(none),
            ),
            (
                "paused but not active (scheduled)",
                Facts {
                    paused: true,
                    maintenance: false,
                    ..OFF
                },
                Proxy(none),
            ),
            // Endpoints and preflights
            (
                "health, off",
                Facts {
                    endpoint: Some(Ep::Health),
                    ..OFF
                },
                Endpoint(Ep::Health),
            ),
            (
                "status on plain http of a redirecting site",
                Facts {
                    endpoint: Some(Ep::Status),
                    redirect_to_https: true,
                    ..ON
                },
                Endpoint(Ep::Status),
            ),
            (
                "page asset while paused",
                Facts {
                    endpoint: Some(Ep::PageAsset),
                    paused: true,
                    ..ON
                },
                Endpoint(Ep::PageAsset),
            ),
            (
                "preflight that would get the page",
                Facts { preflight: true, ..ON },
                Preflight,
            ),
            (
                "preflight, read-only: the app answers it",
                Facts {
                    preflight: true,
                    read_only: true,
                    ..ON
                },
                Proxy(ReadOnly),
            ),
            (
                "preflight, off: the app's",
                Facts { preflight: true, ..OFF },
                Proxy(none),
            ),
        ];
        for (case, facts, want) in rows {
            assert_eq!(decide(facts), *want, "{case}");
        }
    }

    /// Every combination, against properties the rules must keep.
    #[test]
    fn every_combination() {
        for bits in 0u32..(1 << 14) {
            let b = |i: u32| bits & (1 << i) != 0;
            let f = Facts {
                bad_framing: b(0),
                endpoint: None,
                redirect_to_https: b(1),
                bypass_path: b(2),
                bypass_link: b(3),
                maintenance: b(4),
                in_scope: b(5),
                read_only: b(6),
                paused: b(7),
                safe_method: b(8),
                preflight: b(9),
                client_allowed: b(10),
                credential: b(11),
                asset: b(12),
                too_large: b(13),
            };
            let d = decide(&f);
            let applies = f.maintenance && f.in_scope;
            let early = f.bad_framing || (f.redirect_to_https && !f.bypass_path) || f.bypass_link;
            match d {
                // Nobody reaches the app during maintenance but by the rules.
                Decision::Proxy(Mark::Bypass) => {
                    assert!(
                        applies && (f.bypass_path || (!f.paused && (f.client_allowed || f.credential))),
                        "{f:?}"
                    )
                }
                Decision::Proxy(Mark::ReadOnly) => {
                    assert!(applies && f.read_only && f.safe_method && !f.paused, "{f:?}")
                }
                Decision::Proxy(Mark::None) => assert!(!applies && !f.too_large, "{f:?}"),
                // A pause holds, never answers with the page or lets through (bypass paths aside).
                Decision::Page | Decision::Preflight => assert!(applies && !f.paused, "{f:?}"),
                Decision::Hold => assert!(applies && f.paused && !f.bypass_path && !f.asset, "{f:?}"),
                Decision::Refuse(Refusal::TooLarge) => assert!(f.too_large, "{f:?}"),
                Decision::Refuse(Refusal::Framing) => assert!(f.bad_framing, "{f:?}"),
                Decision::RedirectHttps | Decision::BypassLink => assert!(early, "{f:?}"),
                Decision::Asset => assert!(applies && f.asset, "{f:?}"),
                Decision::Endpoint(_) => panic!("no endpoint in the facts: {f:?}"),
            }
            if !early && !applies {
                assert!(
                    matches!(d, Decision::Proxy(Mark::None) | Decision::Refuse(Refusal::TooLarge)),
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn labels() {
        let all = [
            Decision::Proxy(Mark::None),
            Decision::Proxy(Mark::Bypass),
            Decision::Page,
            Decision::Asset,
            Decision::BypassLink,
            Decision::RedirectHttps,
            Decision::Refuse(Refusal::TooLarge),
            Decision::Proxy(Mark::ReadOnly),
            Decision::Hold,
            Decision::Preflight,
            Decision::Endpoint(Endpoint::Health),
            Decision::Endpoint(Endpoint::Status),
            Decision::Endpoint(Endpoint::Script(Script::Banner)),
            Decision::Endpoint(Endpoint::Whoami),
        ];
        let labels: Vec<&str> = all.iter().map(|d| d.label()).collect();
        assert_eq!(labels, Decision::LABELS);
        for (i, d) in all.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
        assert_eq!(Decision::Endpoint(Endpoint::PageAsset).label(), "asset");
    }
}
