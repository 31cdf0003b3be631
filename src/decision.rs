//! The decision at the heart of gatekeeper: from the facts of one request
//! (gathered once by the `facts` module), what it gets — a redirect, the bypass
//! link's cookie, a refusal, the app, one of the page's assets, or the page.
//! Pure: no I/O, no clock, no config.

/// What the facts of one request are, as `facts::gather` established them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The request's framing or Host is one a proxy in front may read another way.
    pub bad_framing: bool,
    /// Plain HTTP where the TLS listeners ask for https (`tls.redirect_http`),
    /// with a Host to redirect to.
    pub redirect_to_https: bool,
    /// The path falls under one of `maintenance.bypass_paths`.
    pub bypass_path: bool,
    /// The path is the bypass link carrying the right token.
    pub bypass_link: bool,
    /// Maintenance applies to this request now.
    pub maintenance: bool,
    /// The resolved client is known and on the allowlist.
    pub client_allowed: bool,
    /// A valid bypass cookie or header for the current secret.
    pub credential: bool,
    /// A GET/HEAD whose path names one of the page's assets. Looked up only
    /// when it can matter (maintenance, nobody let through).
    pub asset: bool,
    /// The declared body is over `buffering.max_body`.
    pub too_large: bool,
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

/// Everything a request can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 308 to the same URL on https.
    RedirectHttps,
    /// 303 with a fresh bypass cookie.
    BypassLink,
    /// Answered by gatekeeper with an error status; the upstream never hears of it.
    Refuse(Refusal),
    /// Forward to the upstream; `bypass` marks a request let through maintenance.
    Proxy { bypass: bool },
    /// 200 with one of the page's assets.
    Asset,
    /// 503 with the maintenance page.
    Page,
}

impl Decision {
    /// Every decision's label, in the order of [`Decision::index`].
    pub const LABELS: [&'static str; 7] = ["proxy", "bypass", "page", "asset", "bypass-link", "redirect", "refused"];

    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// A dense index, for per-decision metric arrays.
    pub fn index(self) -> usize {
        match self {
            Decision::Proxy { bypass: false } => 0,
            Decision::Proxy { bypass: true } => 1,
            Decision::Page => 2,
            Decision::Asset => 3,
            Decision::BypassLink => 4,
            Decision::RedirectHttps => 5,
            Decision::Refuse(_) => 6,
        }
    }
}

/// The rules, in order:
/// 0. ambiguous framing is refused before anything else reads the request;
/// 1. plain HTTP to a site that redirects to https is redirected, bypass paths excepted
///    (so that nothing — the bypass cookie least of all — is handed out over plain HTTP);
/// 2. the bypass link with the right token gets its cookie;
/// 3. maintenance off, or a bypass path, an allowed client or a credential: the
///    request goes to the app, unless its declared body is too large;
/// 4. everyone else gets an asset of the page, or the page.
pub fn decide(f: &Facts) -> Decision {
    if f.bad_framing {
        return Decision::Refuse(Refusal::Framing);
    }
    if f.redirect_to_https && !f.bypass_path {
        return Decision::RedirectHttps;
    }
    if f.bypass_link {
        return Decision::BypassLink;
    }
    let let_through = !f.maintenance || f.bypass_path || f.client_allowed || f.credential;
    if let_through {
        if f.too_large {
            Decision::Refuse(Refusal::TooLarge)
        } else {
            Decision::Proxy { bypass: f.maintenance }
        }
    } else if f.asset {
        Decision::Asset
    } else {
        Decision::Page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: Facts = Facts {
        bad_framing: false,
        redirect_to_https: false,
        bypass_path: false,
        bypass_link: false,
        maintenance: false,
        client_allowed: false,
        credential: false,
        asset: false,
        too_large: false,
    };
    const ON: Facts = Facts {
        maintenance: true,
        ..OFF
    };

    #[test]
    fn table() {
        use Decision::*;
        let rows: &[(&str, Facts, Decision)] = &[
            ("off: proxied", OFF, Proxy { bypass: false }),
            (
                "off, too large",
                Facts { too_large: true, ..OFF },
                Refuse(Refusal::TooLarge),
            ),
            (
                "off, asset path: the app's",
                Facts { asset: true, ..OFF },
                Proxy { bypass: false },
            ),
            ("on: page", ON, Page),
            ("on, asset", Facts { asset: true, ..ON }, Asset),
            (
                "on, allowed",
                Facts {
                    client_allowed: true,
                    ..ON
                },
                Proxy { bypass: true },
            ),
            (
                "on, allowed asset path: the app's",
                Facts {
                    client_allowed: true,
                    asset: true,
                    ..ON
                },
                Proxy { bypass: true },
            ),
            (
                "on, credential",
                Facts { credential: true, ..ON },
                Proxy { bypass: true },
            ),
            (
                "on, bypass path",
                Facts {
                    bypass_path: true,
                    ..ON
                },
                Proxy { bypass: true },
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
                Proxy { bypass: false },
            ),
            (
                "bypass path in maintenance, plain",
                Facts {
                    redirect_to_https: true,
                    bypass_path: true,
                    ..ON
                },
                Proxy { bypass: true },
            ),
        ];
        for (case, facts, want) in rows {
            assert_eq!(decide(facts), *want, "{case}");
        }
    }

    /// Every combination, against the rules stated another way.
    #[test]
    fn every_combination() {
        for bits in 0u16..512 {
            let b = |i: u16| bits & (1 << i) != 0;
            let f = Facts {
                redirect_to_https: b(0),
                bypass_path: b(1),
                bypass_link: b(2),
                maintenance: b(3),
                client_allowed: b(4),
                credential: b(5),
                asset: b(6),
                too_large: b(7),
                bad_framing: b(8),
            };
            let d = decide(&f);
            let expected = if f.bad_framing {
                Decision::Refuse(Refusal::Framing)
            } else if f.redirect_to_https && !f.bypass_path {
                Decision::RedirectHttps
            } else if f.bypass_link {
                Decision::BypassLink
            } else if f.maintenance && !(f.bypass_path || f.client_allowed || f.credential) {
                if f.asset {
                    Decision::Asset
                } else {
                    Decision::Page
                }
            } else if f.too_large {
                Decision::Refuse(Refusal::TooLarge)
            } else {
                Decision::Proxy { bypass: f.maintenance }
            };
            assert_eq!(d, expected, "{f:?}");
            // Nobody outside the rules reaches the app during maintenance.
            if let Decision::Proxy { bypass: true } = d {
                assert!(f.bypass_path || f.client_allowed || f.credential, "{f:?}");
            }
        }
    }

    #[test]
    fn labels() {
        let all = [
            Decision::Proxy { bypass: false },
            Decision::Proxy { bypass: true },
            Decision::Page,
            Decision::Asset,
            Decision::BypassLink,
            Decision::RedirectHttps,
            Decision::Refuse(Refusal::TooLarge),
        ];
        let labels: Vec<&str> = all.iter().map(|d| d.label()).collect();
        assert_eq!(labels, Decision::LABELS);
        for (i, d) in all.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }
}
