//! gatekeeper: a maintenance-mode gate in front of a web application.
//!
//! A request is decided by two facts: is maintenance on (a toggle file,
//! watched with inotify), and is the real client allowed (resolved behind
//! trusted proxies, matched against an allowlist). Allowed traffic is proxied
//! to the upstream; everyone else gets a static 503 page.

/// The admin endpoint: /metrics, /status, /healthz.
pub mod admin;
/// IP sets (allowlist, trusted proxies) with O(log n) lookups.
pub mod allowlist;
/// Request and response buffering against slow clients.
pub mod buffer;
/// Secret bypass link, signed cookie, bypass header.
pub mod bypass;
/// Command-line definition.
pub mod cli;
/// Real client address from the peer and trusted forwarding headers.
pub mod client_ip;
/// `check`, `on`, `off`, `status`.
pub mod commands;
/// TOML config: parsing, validation, located errors.
pub mod config;
/// `run`: the daemon's lifecycle.
pub mod daemon;
/// The pure proxy-or-page decision.
pub mod decision;
/// The fleet switch: one etcd key for many instances.
pub mod fleet;
/// Hop-by-hop header handling.
pub mod hop;
/// Log setup.
pub mod logging;
/// The man page and shell completions, from the command-line definition.
pub mod manual;
/// Prometheus metrics.
pub mod metrics;
/// Maintenance page, assets, error pages.
pub mod page;
/// Idle keep-alive connections without hyper's buffers.
pub mod park;
/// Forwarding to the upstream.
pub mod proxy;
/// Listeners and per-request flow.
pub mod server;
/// The atomically swapped snapshot requests read.
pub mod state;
/// TLS: certificates (hot-reloaded, SNI) and the rustls server config.
pub mod tls;
/// Toggle file content, reading, atomic writing.
pub mod toggle;
/// Durations and sizes.
pub mod units;
/// The toggle watcher (inotify + periodic re-check).
pub mod watch;
