//! The last known state in `<toggle>.fleet`, and what it means while etcd is unreachable.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Fleet, OnError};
use crate::fsutil;
use crate::maint::{onoff, FleetView};

/// Where the last known fleet state is kept: `<toggle>.fleet`.
pub fn persist_path(toggle: &Path) -> PathBuf {
    let mut p = toggle.as_os_str().to_owned();
    p.push(".fleet");
    PathBuf::from(p)
}

/// The last known fleet state from `<toggle>.fleet`, marked disconnected, with `on_error` applied.
pub fn restore(cfg: &Fleet, toggle: &Path) -> Option<FleetView> {
    let path = persist_path(toggle);
    let known = load_known(cfg, &path, true);
    if let Some(k) = &known {
        tracing::info!(
            source = "fleet",
            file = %path.display(),
            key = %cfg.key,
            revision = k.revision,
            "last known fleet state: {}",
            onoff(k.on)
        );
    }
    if known.is_none() && cfg.on_error == OnError::Keep {
        return None;
    }
    let known = known.unwrap_or_default();
    let now = SystemTime::now();
    let view = derive_view(
        cfg.on_error,
        &known,
        false,
        Some("not connected to etcd yet".to_string()),
        0,
        now,
    );
    if cfg.on_error != OnError::Keep && view.on != known.on {
        tracing::info!(
            source = "fleet",
            on_error = on_error_name(cfg.on_error),
            "until etcd answers, maintenance is {} (on_error)",
            onoff(view.on)
        );
    }
    Some(view)
}

/// What etcd last said about the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Known {
    pub(super) on: bool,
    pub(super) value: Option<String>,
    /// The revision of the key's last change seen (its delete's, when off).
    pub(super) revision: i64,
    pub(super) last_change: Option<SystemTime>,
}

/// `<toggle>.fleet`, as written.
#[derive(Serialize, Deserialize)]
struct Persisted {
    key: String,
    on: bool,
    #[serde(default)]
    value: Option<String>,
    revision: i64,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    last_change_ms: Option<u64>,
}

pub(super) fn load_known(cfg: &Fleet, path: &Path, log: bool) -> Option<Known> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            if log {
                tracing::warn!(source = "fleet", file = %path.display(), error = %e, "cannot read the last known fleet state");
            }
            return None;
        }
    };
    let p: Persisted = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            if log {
                tracing::warn!(source = "fleet", file = %path.display(), error = %e, "ignoring a malformed last known fleet state");
            }
            return None;
        }
    };
    if p.key != cfg.key {
        if log {
            tracing::info!(
                source = "fleet",
                file = %path.display(),
                "ignoring the last known fleet state: it is for key {:?}, the config says {:?}",
                p.key,
                cfg.key
            );
        }
        return None;
    }
    Some(Known {
        on: p.on,
        value: if p.on { p.value } else { None },
        revision: p.revision,
        last_change: p.last_change_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    })
}

/// Writes `<toggle>.fleet` atomically.
pub(super) fn save_known(key: &str, known: &Known, path: &Path) -> std::io::Result<()> {
    let p = Persisted {
        key: key.to_string(),
        on: known.on,
        value: known.value.clone(),
        revision: known.revision,
        last_change_ms: known
            .last_change
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut bytes = serde_json::to_vec(&p)?;
    bytes.push(b'\n');
    // The value may carry a bypass secret: only the daemon's user reads this file.
    fsutil::write_atomic(path, &bytes, 0o600)
}

/// The view published to the state: etcd's word while connected; `on_error` applied otherwise.
pub(super) fn derive_view(
    on_error: OnError,
    known: &Known,
    connected: bool,
    error: Option<String>,
    reconnects: u64,
    lost_at: SystemTime,
) -> FleetView {
    let (on, value, last_change) = match (connected, on_error) {
        (true, _) | (false, OnError::Keep) => (known.on, known.value.clone(), known.last_change),
        (false, OnError::On) if known.on => (true, known.value.clone(), known.last_change),
        (false, OnError::On) => (true, None, Some(lost_at)),
        (false, OnError::Off) if known.on => (false, None, Some(lost_at)),
        (false, OnError::Off) => (false, None, known.last_change),
    };
    FleetView {
        on,
        value: if on { value } else { None },
        revision: known.revision,
        connected,
        last_change,
        reconnects,
        error: if connected { None } else { error },
    }
}

fn on_error_name(o: OnError) -> &'static str {
    match o {
        OnError::Keep => "keep",
        OnError::On => "on",
        OnError::Off => "off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::testing::cfg;

    fn known_on() -> Known {
        Known {
            on: true,
            value: Some("message = \"db upgrade\"\n".into()),
            revision: 42,
            last_change: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        }
    }

    #[test]
    fn persist_path_is_next_to_the_toggle() {
        assert_eq!(
            persist_path(Path::new("/var/lib/gatekeeper/maintenance-mode-on")),
            PathBuf::from("/var/lib/gatekeeper/maintenance-mode-on.fleet")
        );
    }

    #[test]
    fn persisted_state_round_trips_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let toggle = dir.path().join("maintenance-mode-on");
        let path = persist_path(&toggle);
        let c = cfg(OnError::Keep);
        save_known(&c.key, &known_on(), &path).unwrap();
        assert_eq!(load_known(&c, &path, true), Some(known_on()));
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("maintenance-mode-on.fleet")]);

        let v = restore(&c, &toggle).unwrap();
        assert!(v.on && !v.connected && v.error.is_some());
        assert_eq!((v.value.as_deref(), v.revision), (known_on().value.as_deref(), 42));
        assert_eq!(restore(&cfg(OnError::Off), &toggle).map(|v| v.on), Some(false));
        assert_eq!(restore(&cfg(OnError::On), &toggle).map(|v| v.on), Some(true));

        // Another key's state is not ours.
        let mut other = c.clone();
        other.key = "/other".into();
        assert_eq!(load_known(&other, &path, true), None);
        assert!(restore(&other, &toggle).is_none());
    }

    #[test]
    fn nothing_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let toggle = dir.path().join("t");
        assert!(restore(&cfg(OnError::Keep), &toggle).is_none());
        assert_eq!(
            restore(&cfg(OnError::On), &toggle).map(|v| (v.on, v.value)),
            Some((true, None))
        );
        assert_eq!(restore(&cfg(OnError::Off), &toggle).map(|v| v.on), Some(false));
        std::fs::write(persist_path(&toggle), "not json").unwrap();
        assert!(restore(&cfg(OnError::Keep), &toggle).is_none());
    }

    #[test]
    fn on_error_policies() {
        let lost = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let off = Known {
            revision: 7,
            ..Known::default()
        };
        for (policy, k, connected, want_on) in [
            (OnError::Keep, known_on(), true, true),
            (OnError::Keep, known_on(), false, true),
            (OnError::Keep, off.clone(), false, false),
            (OnError::On, off.clone(), true, false),
            (OnError::On, off.clone(), false, true),
            (OnError::On, known_on(), false, true),
            (OnError::Off, known_on(), true, true),
            (OnError::Off, known_on(), false, false),
            (OnError::Off, off.clone(), false, false),
        ] {
            let v = derive_view(policy, &k, connected, Some("down".into()), 3, lost);
            assert_eq!(v.on, want_on, "{policy:?} {k:?} connected={connected}");
            assert_eq!(v.connected, connected);
            assert_eq!(v.error.is_some(), !connected);
            assert_eq!(v.revision, k.revision);
            assert_eq!(v.value.is_some(), v.on && k.on, "value only when etcd said on");
        }
        // Failing closed from "off": the change happened when etcd was lost.
        let v = derive_view(OnError::On, &off, false, None, 0, lost);
        assert_eq!(v.last_change, Some(lost));
    }
}
