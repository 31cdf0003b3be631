//! One switch for a fleet, through etcd (v3): watch one key, publish its state.
//!
//! Every instance reads the key once, then *watches* it from the revision right
//! after that read: a write reaches every instance as a pushed event, in
//! milliseconds, with no polling. Each change goes to `State::set_fleet` (the
//! request path only ever reads that in-memory snapshot) and then into
//! `<toggle>.fleet`, so an instance that restarts while etcd is unreachable
//! starts in the last state it knew.
//!
//! A lost connection (etcd down, a dead peer noticed by HTTP/2 keep-alive, a
//! watch canceled for want of a leader) is retried in the background with a
//! bounded, jittered backoff; serving never waits for it. Each new session
//! re-reads the key first — whatever happened meanwhile is seen at once — and
//! resumes the watch right after the revision of that read, so no change is
//! missed. A watch whose start revision was compacted away is simply re-read.
//! While etcd is unreachable `on_error` decides: keep the last known state,
//! or fail closed (`on`) or open (`off`).
//!
//! The CLI calls (`put`, `delete`, `get`) are bounded as a whole by
//! [`CLI_TIMEOUT`], so `gatekeeper on --fleet` fails clearly within seconds
//! when etcd is unreachable.

mod client;
mod persist;
mod watch;

use std::time::Duration;

pub use client::{delete, get, put, FleetError, CLI_TIMEOUT};
pub use persist::{persist_path, restore};
pub use watch::spawn;

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod testing {
    use crate::config::{Fleet, OnError};

    pub(super) fn cfg(on_error: OnError) -> Fleet {
        Fleet {
            endpoints: vec!["http://127.0.0.1:1".into()],
            key: "/gatekeeper/maintenance".into(),
            on_error,
            username: None,
            password: None,
            ca: None,
            cert: None,
            client_key: None,
        }
    }
}
