//! The toggle file: maintenance is on exactly while it exists. Its optional
//! TOML content carries `message` and `retry_after`. This module reads it (for
//! the watcher and `status`) and writes it atomically (for `on`/`off`).

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::units::parse_duration;

/// Larger toggle files are read only this far: the content is a few short keys.
const MAX_CONTENT: u64 = 64 << 10;

/// The toggle file's content, as `gatekeeper on` writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToggleContent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A duration ("10m") or integer seconds.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "retry_after_serde")]
    pub retry_after: Option<Duration>,
    /// Bypass token: `/.gatekeeper/bypass/<secret>` and the bypass header let its holders in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Scheduled window (RFC 3339): maintenance is active only from `from` until `until`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<jiff::Timestamp>,
    /// Safe methods (GET, HEAD, OPTIONS, TRACE) go to the app for everyone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Maintenance applies only under these path prefixes (whole segments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Maintenance applies only to these hosts (`*.example.org`: one or more labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Requests are held, not answered, until the pause ends.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause: bool,
    /// How long a request is held at most (default 30 s); then the maintenance answer.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "retry_after_serde")]
    pub max: Option<Duration>,
    /// Who switched it on (`$SUDO_USER`, else the user, `@host`), when, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where the present moment lies relative to a toggle's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// No window, or inside it.
    Active,
    /// Before `from`.
    Scheduled,
    /// At or after `until`.
    Expired,
}

impl ToggleContent {
    /// Where `now` lies in this content's window.
    pub fn window_at(&self, now: jiff::Timestamp) -> Window {
        if self.until.is_some_and(|u| now >= u) {
            Window::Expired
        } else if self.from.is_some_and(|f| now < f) {
            Window::Scheduled
        } else {
            Window::Active
        }
    }

    /// The next instant at which the window state changes, if any is ahead.
    pub fn next_boundary(&self, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        [self.from, self.until].into_iter().flatten().filter(|t| *t > now).min()
    }
}

mod retry_after_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::Integer(n) if n >= 0 => Ok(Some(Duration::from_secs(n as u64))),
            toml::Value::String(s) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "retry_after: expected a duration such as \"10m\", found {}",
                other.type_str()
            ))),
        }
    }
}

impl ToggleContent {
    /// Parses the file's text; empty or whitespace-only text means all defaults.
    pub fn parse(text: &str) -> Result<ToggleContent, String> {
        if text.trim().is_empty() {
            return Ok(ToggleContent::default());
        }
        let c: ToggleContent = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.check()?;
        Ok(c)
    }

    /// What serde cannot say: a scope entry that could never match is a mistake.
    pub fn check(&self) -> Result<(), String> {
        for p in &self.paths {
            if !p.starts_with('/') {
                return Err(format!("paths: {p:?} does not start with '/'"));
            }
        }
        for h in &self.hosts {
            if !crate::paths::valid_host_pattern(h) {
                return Err(format!("hosts: {h:?} is not a host name or *.domain"));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// What the toggle path showed when it was last looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub exists: bool,
    /// Modification time of the toggle: "on since".
    pub since: Option<SystemTime>,
    pub content: ToggleContent,
    /// Why the content was not usable (the toggle still counts as on).
    pub warning: Option<String>,
    /// Identity of what was read, to tell a real change from a repeated event;
    /// None when the toggle exists but could not be read (see [`Observed::unreadable`]).
    pub fingerprint: Option<(u64, u64, Option<SystemTime>, Vec<u8>)>,
}

impl Observed {
    /// The toggle exists but looking at it failed (out of file descriptors, an
    /// I/O error, no permission): its content is unknown, not empty.
    pub fn unreadable(&self) -> bool {
        self.exists && self.fingerprint.is_none()
    }
}

/// Looks at the toggle path, following symlinks. Any error other than
/// "not found" still means on: an unreadable toggle must not open the site.
pub fn observe(path: &Path) -> Observed {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Observed::default(),
        Err(e) if e.raw_os_error() == Some(libc_enotdir()) => return Observed::default(),
        Err(e) => {
            return Observed {
                exists: true,
                warning: Some(format!("cannot inspect toggle {}: {e}", path.display())),
                ..Observed::default()
            }
        }
    };
    let since = meta.modified().ok();
    let mut bytes = Vec::new();
    let read = fs::File::open(path).and_then(|f| f.take(MAX_CONTENT).read_to_end(&mut bytes));
    let (content, warning) = match read {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Observed::default(),
        Err(e) => {
            return Observed {
                exists: true,
                since,
                warning: Some(format!("cannot read toggle {}: {e}", path.display())),
                ..Observed::default()
            }
        }
        Ok(_) => match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(ToggleContent::parse)
        {
            Ok(c) => (c, None),
            Err(e) => (
                ToggleContent::default(),
                Some(format!(
                    "toggle {} has malformed content, using defaults: {e}",
                    path.display()
                )),
            ),
        },
    };
    use std::os::unix::fs::MetadataExt;
    Observed {
        exists: true,
        since,
        content,
        warning,
        fingerprint: Some((meta.dev(), meta.ino(), since, bytes)),
    }
}

fn libc_enotdir() -> i32 {
    20 // ENOTDIR on Linux: a path component is a file, so the toggle cannot exist.
}

/// Creates or replaces the toggle atomically: a temporary file in the same
/// directory, renamed into place, so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, content: &ToggleContent) -> io::Result<()> {
    // The daemon may run as another user than the operator who typed `on`.
    fsutil::write_atomic(path, content.to_toml().as_bytes(), 0o644)
}

/// `<toggle>.drain`: while it exists, this instance's health check answers 503.
pub fn drain_path(toggle: &Path) -> std::path::PathBuf {
    let mut name = toggle.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".drain");
    toggle.with_file_name(name)
}

/// Removes the toggle; removing an absent toggle is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trip() {
        let c = ToggleContent {
            message: Some("Upgrading \"db\"".into()),
            retry_after: Some(Duration::from_secs(1800)),
            secret: Some("s3cret".into()),
            from: "2026-12-01T02:00:00Z".parse().ok(),
            until: "2026-12-01T03:30:00+01:00".parse().ok(),
            read_only: true,
            paths: vec!["/api/".into()],
            hosts: vec!["*.example.org".into()],
            pause: true,
            max: Some(Duration::from_secs(45)),
            by: Some("alice@web1".into()),
            at: "2026-11-30T12:00:00Z".parse().ok(),
            reason: Some("db migration".into()),
        };
        assert!(
            c.to_toml().contains("until = \"2026-12-01T02:30:00Z\""),
            "{}",
            c.to_toml()
        );
        assert_eq!(ToggleContent::parse(&c.to_toml()), Ok(c));
        assert_eq!(ToggleContent::parse(" \n"), Ok(ToggleContent::default()));
        assert_eq!(
            ToggleContent::parse("retry_after = 30").map(|c| c.retry_after),
            Ok(Some(Duration::from_secs(30)))
        );
        assert!(ToggleContent::parse("message = ").is_err());
        assert!(ToggleContent::parse("colour = 1").is_err());
        assert!(ToggleContent::parse("paths = [\"api\"]").is_err());
        assert!(ToggleContent::parse("hosts = [\"a b\"]").is_err());
        assert!(ToggleContent::parse("hosts = [\"*\"]").is_err());
    }

    #[test]
    fn windows() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap_or_else(|e| panic!("{e}"));
        let c = ToggleContent {
            from: Some(at("2026-12-01T02:00:00Z")),
            until: Some(at("2026-12-01T02:30:00Z")),
            ..ToggleContent::default()
        };
        assert_eq!(c.window_at(at("2026-12-01T01:59:59Z")), Window::Scheduled);
        assert_eq!(c.window_at(at("2026-12-01T02:00:00Z")), Window::Active);
        assert_eq!(c.window_at(at("2026-12-01T02:30:00Z")), Window::Expired);
        assert_eq!(
            c.next_boundary(at("2026-12-01T01:00:00Z")),
            Some(at("2026-12-01T02:00:00Z"))
        );
        assert_eq!(
            c.next_boundary(at("2026-12-01T02:10:00Z")),
            Some(at("2026-12-01T02:30:00Z"))
        );
        assert_eq!(c.next_boundary(at("2026-12-01T02:30:00Z")), None);
        assert_eq!(
            ToggleContent::default().window_at(at("2026-12-01T02:00:00Z")),
            Window::Active
        );
        assert!(ToggleContent::parse("from = \"tomorrow\"").is_err());
    }

    #[test]
    fn observe_write_remove() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("maintenance-mode-on");
        assert!(!observe(&p).exists);
        write_atomic(
            &p,
            &ToggleContent {
                message: Some("hi".into()),
                ..ToggleContent::default()
            },
        )?;
        let o = observe(&p);
        assert!(o.exists && o.warning.is_none());
        assert_eq!(o.content.message.as_deref(), Some("hi"));
        fs::write(&p, "message = [")?;
        let o = observe(&p);
        assert!(o.exists && o.warning.is_some() && o.content == ToggleContent::default());
        assert!(!o.unreadable());
        remove(&p)?;
        // Read fails (a directory): on, content unknown.
        fs::create_dir(&p)?;
        let o = observe(&p);
        assert!(o.unreadable() && o.warning.is_some(), "{o:?}");
        fs::remove_dir(&p)?;
        remove(&p)?;
        assert!(!observe(&p).exists);
        assert!(!observe(&p.join("below-a-missing-file")).exists);
        Ok(())
    }
}
