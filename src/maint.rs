//! Whether maintenance applies, and how: derived from the toggle file's
//! observation, the fleet key's latest word, the config's defaults and the
//! clock. Pure: the daemon derives it on every change, `status` on demand, with
//! the same function.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Maintenance;
use crate::toggle::{Observed, ToggleContent, Window};
use crate::units::ceil_secs;

/// How long a request is held during a pause when the toggle does not say.
pub const DEFAULT_PAUSE_MAX: Duration = Duration::from_secs(30);

/// The fleet source's latest word, as the fleet module publishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Maintenance per the fleet: the key exists (or `on_error = "on"` while etcd is unreachable).
    pub on: bool,
    /// The key's value (toggle-file TOML) when on.
    pub value: Option<String>,
    /// The etcd revision of the last change seen.
    pub revision: i64,
    pub connected: bool,
    pub last_change: Option<SystemTime>,
    pub reconnects: u64,
    /// Why etcd is unreachable, while it is.
    pub error: Option<String>,
}

/// Which source switched maintenance on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Fleet,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Fleet => "fleet",
        }
    }
}

/// The maintenance view a request acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maint {
    /// A toggle (file or fleet) is present, whatever its window says.
    pub present: bool,
    /// Maintenance applies to requests now.
    pub active: bool,
    pub source: Option<Source>,
    pub window: Window,
    pub since: Option<SystemTime>,
    pub message: String,
    /// Retry-After when no window end is known.
    pub retry_after: u64,
    pub from: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
    pub next_boundary: Option<jiff::Timestamp>,
    /// Bypass token from the toggle content.
    pub secret: Option<Arc<str>>,
    /// Safe methods reach the app for everyone.
    pub read_only: bool,
    /// Path prefixes maintenance is limited to (empty: all).
    pub paths: Vec<String>,
    /// Hosts maintenance is limited to (empty: all).
    pub hosts: Vec<String>,
    /// Requests are held instead of answered.
    pub paused: bool,
    /// How long a request is held at most.
    pub pause_max: Duration,
    pub warning: Option<String>,
    /// Who switched it on, when and why, as the toggle says (`on --reason`).
    pub by: Option<String>,
    pub at: Option<jiff::Timestamp>,
    pub reason: Option<String>,
}

impl Maint {
    /// The view at `now`. The local toggle's content wins where both are on:
    /// it is the more specific switch.
    pub fn derive(observed: &Observed, fleet: Option<&FleetView>, cfg: &Maintenance, now: jiff::Timestamp) -> Maint {
        let (source, content, since, warning) = if observed.exists {
            (
                Some(Source::File),
                observed.content.clone(),
                observed.since,
                observed.warning.clone(),
            )
        } else if let Some(f) = fleet.filter(|f| f.on) {
            let (c, w) = match ToggleContent::parse(f.value.as_deref().unwrap_or("")) {
                Ok(c) => (c, None),
                Err(e) => (
                    ToggleContent::default(),
                    Some(format!("fleet key has malformed content, using defaults: {e}")),
                ),
            };
            (Some(Source::Fleet), c, f.last_change, w)
        } else {
            (None, ToggleContent::default(), None, None)
        };
        let present = source.is_some();
        let window = if present {
            content.window_at(now)
        } else {
            Window::Active
        };
        Maint {
            present,
            active: present && window == Window::Active,
            source,
            window,
            since,
            message: content.message.clone().unwrap_or_else(|| cfg.message.clone()),
            retry_after: ceil_secs(content.retry_after.unwrap_or(cfg.retry_after)),
            from: content.from,
            until: content.until,
            next_boundary: if present { content.next_boundary(now) } else { None },
            secret: content.secret.as_deref().filter(|s| !s.is_empty()).map(Arc::from),
            read_only: content.read_only,
            paths: content.paths,
            hosts: content.hosts,
            paused: content.pause,
            pause_max: content.max.unwrap_or(DEFAULT_PAUSE_MAX),
            warning,
            by: content.by,
            at: content.at,
            reason: content.reason,
        }
    }

    /// Retry-After at `now`: the seconds left in the window when it has an end
    /// (at least 1), else the configured or toggled value.
    pub fn retry_after_at(&self, now: jiff::Timestamp) -> u64 {
        match self.until {
            Some(u) => {
                let left = u.duration_since(now).as_secs_f64().ceil();
                if left >= 1.0 {
                    left as u64
                } else {
                    1
                }
            }
            None => self.retry_after,
        }
    }

    /// One word for the state: "off", "on", "read-only", "paused",
    /// "scheduled" (before the window) or "expired" (after it, until the
    /// toggle is removed).
    pub fn label(&self) -> &'static str {
        match (self.present, self.window) {
            (false, _) => "off",
            (true, Window::Active) if self.paused => "paused",
            (true, Window::Active) if self.read_only => "read-only",
            (true, Window::Active) => "on",
            (true, Window::Scheduled) => "scheduled",
            (true, Window::Expired) => "expired",
        }
    }

    /// Whether maintenance is limited to part of the site.
    pub fn scoped(&self) -> bool {
        !self.paths.is_empty() || !self.hosts.is_empty()
    }
}

/// "on" or "off", as flips and status lines say it.
pub fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> Maintenance {
        Maintenance {
            toggle: "/tmp/t".into(),
            dir: None,
            retry_after: Duration::from_secs(600),
            message: "default message".into(),
            bypass_paths: vec![],
            recheck: Duration::from_secs(2),
            acme: true,
            max_held: 10,
            announce: Duration::ZERO,
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn file(toml: &str) -> Observed {
        Observed {
            exists: true,
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7)),
            content: ToggleContent::parse(toml).unwrap_or_else(|e| panic!("{e}")),
            warning: None,
            fingerprint: None,
        }
    }

    fn fleet(on: bool, value: &str) -> FleetView {
        FleetView {
            on,
            value: Some(value.to_string()),
            last_change: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(9)),
            ..FleetView::default()
        }
    }

    const WINDOW: &str = "from = \"2026-12-01T02:00:00Z\"\nuntil = \"2026-12-01T03:00:00Z\"\n";

    /// (case, file, fleet, now) → (label, active, source, message, retry_after, warning?)
    #[test]
    fn derive_table() {
        let none = Observed::default();
        let noon = at("2026-12-01T12:00:00Z");
        type Row<'a> = (
            &'a str,
            Observed,
            Option<FleetView>,
            jiff::Timestamp,
            (&'a str, bool, Option<Source>, &'a str, u64, bool),
        );
        let rows: Vec<Row> = vec![
            (
                "nothing",
                none.clone(),
                None,
                noon,
                ("off", false, None, "default message", 600, false),
            ),
            (
                "fleet off",
                none.clone(),
                Some(fleet(false, "message = \"f\"")),
                noon,
                ("off", false, None, "default message", 600, false),
            ),
            (
                "empty file",
                file(""),
                None,
                noon,
                ("on", true, Some(Source::File), "default message", 600, false),
            ),
            (
                "file message",
                file("message = \"m\"\nretry_after = \"90s\""),
                None,
                noon,
                ("on", true, Some(Source::File), "m", 90, false),
            ),
            (
                "fleet only",
                none.clone(),
                Some(fleet(true, "message = \"f\"")),
                noon,
                ("on", true, Some(Source::Fleet), "f", 600, false),
            ),
            (
                "file wins over fleet",
                file("message = \"m\""),
                Some(fleet(true, "message = \"f\"")),
                noon,
                ("on", true, Some(Source::File), "m", 600, false),
            ),
            (
                "fleet malformed",
                none.clone(),
                Some(fleet(true, "message = [")),
                noon,
                ("on", true, Some(Source::Fleet), "default message", 600, true),
            ),
            (
                "before window",
                file(WINDOW),
                None,
                at("2026-12-01T01:00:00Z"),
                ("scheduled", false, Some(Source::File), "default message", 600, false),
            ),
            (
                "in window",
                file(WINDOW),
                None,
                at("2026-12-01T02:00:00Z"),
                ("on", true, Some(Source::File), "default message", 600, false),
            ),
            (
                "window end",
                file(WINDOW),
                None,
                at("2026-12-01T03:00:00Z"),
                ("expired", false, Some(Source::File), "default message", 600, false),
            ),
            (
                "fleet window",
                none.clone(),
                Some(fleet(true, WINDOW)),
                at("2026-12-01T01:59:59Z"),
                ("scheduled", false, Some(Source::Fleet), "default message", 600, false),
            ),
        ];
        for (case, obs, fl, now, (label, active, source, message, retry, warned)) in rows {
            let m = Maint::derive(&obs, fl.as_ref(), &cfg(), now);
            assert_eq!(m.label(), label, "{case}");
            assert_eq!(m.active, active, "{case}");
            assert_eq!(m.present, source.is_some(), "{case}");
            assert_eq!(m.source, source, "{case}");
            assert_eq!(m.message, message, "{case}");
            assert_eq!(m.retry_after, retry, "{case}");
            assert_eq!(m.warning.is_some(), warned, "{case}");
        }
    }

    #[test]
    fn since_secret_and_boundaries() {
        let m = Maint::derive(&file("secret = \"s\""), None, &cfg(), at("2026-12-01T00:00:00Z"));
        assert_eq!(m.since, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7)));
        assert_eq!(m.secret.as_deref(), Some("s"));
        assert_eq!(m.next_boundary, None);
        // An empty secret is no secret: nobody can be let in by "".
        let m = Maint::derive(&file("secret = \"\""), None, &cfg(), at("2026-12-01T00:00:00Z"));
        assert_eq!(m.secret, None);
        let f = fleet(true, "");
        let m = Maint::derive(&Observed::default(), Some(&f), &cfg(), at("2026-12-01T00:00:00Z"));
        assert_eq!(m.since, f.last_change);
        let m = Maint::derive(&file(WINDOW), None, &cfg(), at("2026-12-01T01:00:00Z"));
        assert_eq!(m.next_boundary, Some(at("2026-12-01T02:00:00Z")));
        assert_eq!(m.until, Some(at("2026-12-01T03:00:00Z")));
        let off = Maint::derive(&Observed::default(), None, &cfg(), at("2026-12-01T01:00:00Z"));
        assert_eq!(off.next_boundary, None);
    }

    #[test]
    fn retry_after_counts_down_to_the_window_end() {
        let m = Maint::derive(&file(WINDOW), None, &cfg(), at("2026-12-01T02:00:00Z"));
        assert_eq!(m.retry_after_at(at("2026-12-01T02:45:00Z")), 900);
        assert_eq!(m.retry_after_at(at("2026-12-01T02:59:59.5Z")), 1);
        assert_eq!(m.retry_after_at(at("2026-12-01T04:00:00Z")), 1);
        let m = Maint::derive(&file(""), None, &cfg(), at("2026-12-01T02:00:00Z"));
        assert_eq!(m.retry_after_at(at("2026-12-01T02:45:00Z")), 600);
    }
}
