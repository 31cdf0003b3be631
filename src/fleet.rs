//! One switch for a fleet, through etcd (v3): watch one key, publish its state.
//! (Interface only — implementation in progress.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Fleet;
use crate::state::{FleetView, State};
use crate::watch::Wake;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd unreachable at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
}

/// Where the last known fleet state is kept: `<toggle>.fleet`.
pub fn persist_path(toggle: &Path) -> PathBuf {
    let mut p = toggle.as_os_str().to_owned();
    p.push(".fleet");
    PathBuf::from(p)
}

/// The last known fleet state from `<toggle>.fleet`, marked disconnected, with `on_error` applied.
pub fn restore(_cfg: &Fleet, _toggle: &Path) -> Option<FleetView> {
    None
}

/// Starts watching the key; every change goes to `state.set_fleet` followed by `wake.notify_one()`.
pub fn spawn(_cfg: Fleet, _toggle: PathBuf, _state: Arc<State>, _wake: Wake, _shutdown: CancellationToken) {}

/// Writes the key (CLI `on --fleet`); returns the new revision.
pub async fn put(cfg: &Fleet, _value: &str) -> Result<i64, FleetError> {
    Err(unimplemented_err(cfg))
}

/// Deletes the key (CLI `off --fleet`); returns the revision after the delete.
pub async fn delete(cfg: &Fleet) -> Result<i64, FleetError> {
    Err(unimplemented_err(cfg))
}

/// Reads the key: its value (None when absent) and the store's current revision.
pub async fn get(cfg: &Fleet) -> Result<(Option<String>, i64), FleetError> {
    Err(unimplemented_err(cfg))
}

fn unimplemented_err(cfg: &Fleet) -> FleetError {
    FleetError::Unreachable {
        endpoints: cfg.endpoints.join(","),
        reason: "not implemented yet".into(),
    }
}
