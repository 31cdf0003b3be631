//! gatekeeper: a maintenance-mode gate in front of a web application.
//!
//! A request is decided by two facts: is maintenance on (a toggle file,
//! watched with inotify), and is the real client allowed (resolved behind
//! trusted proxies, matched against an allowlist). Allowed traffic is proxied
//! to the upstream; everyone else gets a static 503 page.

/// The admin endpoint: /metrics, /status, /healthz.
/// A/B switches for `bench/ab.sh`.
pub mod ab;
pub mod admin;
/// IP sets (allowlist, trusted proxies) with O(log n) lookups.
pub mod allowlist;
/// After a flip: the history entry and the hooks.
pub mod audit;
/// The body type every answer and every forwarded request carries.
pub mod body;
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
/// The pure decision: what a request gets, from its facts.
pub mod decision;
/// gatekeeper's own endpoints: health, public status, scripts.
pub mod endpoints;
/// `gatekeeper explain` and `/.gatekeeper/whoami`: how a request is decided, step by step.
pub mod explain;
/// The facts of one request, gathered once from its head and the snapshot.
pub mod facts;
/// The fleet switch: one etcd key for many instances.
pub mod fleet;
/// One exchange with the upstream, and how it can fail.
pub mod forward;
/// Request framing and Host that hyper lets through but RFC 9112 refuses.
pub mod framing;
/// Atomic file writes; the directory a path lives in.
pub mod fsutil;
/// Free heap pages back to the system after a wave of connections.
pub mod heap;
/// The audit trail: `<toggle>.history`.
pub mod history;
/// Holding requests during a pause.
pub mod hold;
/// `[hooks]`: a program and a webhook on every flip.
pub mod hooks;
/// Hop-by-hop header handling.
pub mod hop;
/// Lingering close after an answer given before the request body was read.
pub mod linger;
/// Log setup.
pub mod logging;
/// The maintenance view: derived from toggle, fleet key, config and clock.
pub mod maint;
/// The man page and shell completions, from the command-line definition.
pub mod manual;
/// Prometheus metrics.
pub mod metrics;
/// Misconfiguration said out loud: untrusted forwarding peers, risky allowlists.
pub mod misconfig;
/// `token` and `history`: the operators' commands.
pub mod operators;
/// Maintenance page, assets, error pages.
pub mod page;
/// Idle keep-alive connections without hyper's buffers.
pub mod park;
/// Request paths against configured prefixes.
pub mod paths;
/// One request, start to end: facts, decision, response, log.
pub mod pipeline;
/// The request head as the upstream gets it.
pub mod rewrite;
/// A config with the files it points to loaded.
pub mod runtime;
/// Listeners and connections.
pub mod server;
/// Bounds on an upstream that stops mid-exchange (read and send timeouts).
pub mod stall;
/// The atomically swapped snapshot requests read.
pub mod state;
/// HTTP's token grammar.
pub mod syntax;
/// Timers a worker thread reuses (the upstream timeout).
pub mod timers;
/// TLS: certificates (hot-reloaded, SNI) and the rustls server config.
pub mod tls;
/// Toggle file content, reading, atomic writing.
pub mod toggle;
/// Named bypass tokens: the hashed store, link, header and cookie checks.
pub mod tokens;
/// Durations and sizes.
pub mod units;
/// The upstream client and its per-worker connection pool.
pub mod upstream;
/// The toggle watcher (inotify + periodic re-check).
pub mod watch;
/// The webhook's HTTPS POST.
pub mod webhook;
