//! Counters and gauges for `/metrics` (Prometheus text format, via
//! prometheus-client). Label sets are fixed and pre-registered, so counting a
//! request is an array index and an atomic add — no lock, no allocation.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decision::Decision;

mod requests;
pub use requests::set_worker;
use requests::Requests;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How an answered request's upstream exchange ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unreachable,
    Timeout,
    /// The upstream stopped taking the request body.
    SendTimeout,
    /// Answered by gatekeeper without contacting the upstream (413, 408, ...).
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::SendTimeout => "send_timeout",
            Outcome::Refused => "refused",
        }
    }
}

/// What went wrong with the upstream, as `gatekeeper_upstream_errors_total{kind}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection, or it failed before a response head (502).
    Unreachable,
    /// No response head within `upstream.timeout` (504).
    Timeout,
    /// The upstream stopped taking the request body for `upstream.send_timeout` (504).
    SendTimeout,
    /// The upstream went silent mid-answer for `upstream.read_timeout` (answer cut off).
    ReadTimeout,
}

impl UpstreamError {
    const ALL: [UpstreamError; 4] = [
        UpstreamError::Unreachable,
        UpstreamError::Timeout,
        UpstreamError::SendTimeout,
        UpstreamError::ReadTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "unreachable",
            UpstreamError::Timeout => "timeout",
            UpstreamError::SendTimeout => "send_timeout",
            UpstreamError::ReadTimeout => "read_timeout",
        }
    }
}

/// Counters for the upstream side. Process-wide, not per [`Metrics`]: they
/// are counted where things happen, deep in the upstream client and in a
/// response body read long after its request was recorded.
struct UpstreamCounters {
    errors_family: Family<KindLabel, Counter>,
    errors: [Counter; UpstreamError::ALL.len()],
    waits_family: Family<ResultLabel, Counter>,
    /// Requests held while the upstream refused connections (`upstream.wait`):
    /// [connected in the end, gave up].
    waits: [Counter; 2],
}

static UPSTREAM: LazyLock<UpstreamCounters> = LazyLock::new(|| {
    let errors_family = Family::<KindLabel, Counter>::default();
    let errors = UpstreamError::ALL.map(|k| errors_family.get_or_create(&KindLabel { kind: k.label() }).clone());
    let waits_family = Family::<ResultLabel, Counter>::default();
    let waits = ["connected", "gave_up"].map(|r| waits_family.get_or_create(&ResultLabel { result: r }).clone());
    UpstreamCounters {
        errors_family,
        errors,
        waits_family,
        waits,
    }
});

/// Counts one upstream failure.
pub fn upstream_error(kind: UpstreamError) {
    UPSTREAM.errors[kind as usize].inc();
}

/// Counts one request held by `upstream.wait`, by whether the upstream came back in time.
pub fn upstream_wait(connected: bool) {
    UPSTREAM.waits[usize::from(!connected)].inc();
}

pub struct Metrics {
    registry: Registry,
    requests: Arc<Requests>,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    pub maintenance: Gauge,
    pub maintenance_changed: Gauge<f64, AtomicU64>,
    pub allowlist_entries: Gauge,
    pub open_connections: Gauge,
    pub idle_connections: Gauge,
    pub lingering: Gauge,
    pub lingering_total: Counter,
    pub held: Gauge,
    pub toggle_flips: Counter,
    pub fleet_connected: Gauge,
    pub fleet_revision: Gauge,
    pub fleet_last_change: Gauge<f64, AtomicU64>,
    pub fleet_reconnects: Gauge,
    hook_runs: Family<HookLabels, Counter>,
    /// Requests from an untrusted loopback or private peer carrying a forwarding header.
    pub untrusted_forwarding: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gatekeeper");
        let requests = Arc::new(Requests::default());
        registry.register_collector(Box::new(requests.clone()));

        registry.register(
            "upstream_errors",
            "Upstream failures: unreachable (502), timeout (no response head, 504), send_timeout \
             (request body not taken, 504), read_timeout (silent mid-answer, answer cut off)",
            UPSTREAM.errors_family.clone(),
        );
        registry.register(
            "upstream_waits",
            "Requests held while the upstream refused connections (upstream.wait), by how the wait ended",
            UPSTREAM.waits_family.clone(),
        );

        let reloads_f = Family::<ResultLabel, Counter>::default();
        let reloads_ok = reloads_f.get_or_create(&ResultLabel { result: "ok" }).clone();
        let reloads_failed = reloads_f.get_or_create(&ResultLabel { result: "failed" }).clone();
        registry.register("reloads", "Config reloads, by result", reloads_f);

        let m = Metrics {
            requests,
            reloads_ok,
            reloads_failed,
            maintenance: Gauge::default(),
            maintenance_changed: Gauge::default(),
            allowlist_entries: Gauge::default(),
            open_connections: Gauge::default(),
            idle_connections: Gauge::default(),
            lingering: Gauge::default(),
            lingering_total: Counter::default(),
            held: Gauge::default(),
            toggle_flips: Counter::default(),
            fleet_connected: Gauge::default(),
            fleet_revision: Gauge::default(),
            fleet_last_change: Gauge::default(),
            fleet_reconnects: Gauge::default(),
            hook_runs: Family::default(),
            untrusted_forwarding: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("maintenance", "1 while maintenance is on", m.maintenance.clone());
        registry.register(
            "maintenance_last_change_timestamp_seconds",
            "Unix time of the last maintenance flip (or of startup)",
            m.maintenance_changed.clone(),
        );
        registry.register(
            "maintenance_flips",
            "Maintenance on/off changes seen",
            m.toggle_flips.clone(),
        );
        registry.register(
            "allowlist_entries",
            "Entries in the allowlist (allow + allow_file)",
            m.allowlist_entries.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        registry.register(
            "idle_connections",
            "HTTP/1.1 keep-alive connections parked while idle, holding no HTTP buffers",
            m.idle_connections.clone(),
        );
        registry.register(
            "held_requests",
            "Requests held by a pause, waiting for it to end",
            m.held.clone(),
        );
        registry.register(
            "lingering_connections",
            "Connections answered before their request body was read, now reading and discarding the rest before closing",
            m.lingering.clone(),
        );
        registry.register(
            "lingering_closes",
            "Connections closed after a lingering drain",
            m.lingering_total.clone(),
        );
        registry.register(
            "fleet_connected",
            "1 while the etcd watch is connected",
            m.fleet_connected.clone(),
        );
        registry.register(
            "fleet_revision",
            "etcd revision of the last fleet change seen",
            m.fleet_revision.clone(),
        );
        registry.register(
            "fleet_last_change_timestamp_seconds",
            "Unix time of the last fleet key change seen",
            m.fleet_last_change.clone(),
        );
        registry.register(
            "fleet_reconnects",
            "Reconnections to etcd since start",
            m.fleet_reconnects.clone(),
        );
        for kind in ["command", "webhook"] {
            for result in ["ok", "failed", "timeout"] {
                let _ = m.hook_runs.get_or_create(&HookLabels { kind, result });
            }
        }
        registry.register(
            "hook_runs",
            "Hook runs on flips, by kind (command, webhook) and result (ok, failed, timeout)",
            m.hook_runs.clone(),
        );
        registry.register(
            "untrusted_forwarding",
            "Requests from a loopback or private peer that is not a trusted proxy but sends a forwarding header",
            m.untrusted_forwarding.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one hook run (flips are rare: the label lookup may lock).
    pub fn hook_run(&self, kind: &'static str, result: &'static str) {
        self.hook_runs.get_or_create(&HookLabels { kind, result }).inc();
    }

    /// Counts one answered request.
    pub fn request(&self, decision: Decision, status: u16, outcome: Option<Outcome>, elapsed: Duration) {
        self.requests.count(decision, status, elapsed);
        match outcome {
            Some(Outcome::Unreachable) => upstream_error(UpstreamError::Unreachable),
            Some(Outcome::Timeout) => upstream_error(UpstreamError::Timeout),
            Some(Outcome::SendTimeout) => upstream_error(UpstreamError::SendTimeout),
            _ => {}
        }
    }

    /// Records the maintenance state and when it last changed.
    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.set(i64::from(on));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.maintenance_changed.set(now);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let m = Metrics::new();
        m.request(Decision::Page, 503, None, Duration::from_millis(1));
        m.request(
            Decision::Proxy(crate::decision::Mark::None),
            502,
            Some(Outcome::Unreachable),
            Duration::from_millis(10),
        );
        m.set_maintenance(true);
        m.allowlist_entries.set(3);
        let text = m.encode();
        assert!(
            text.contains("gatekeeper_requests_total{decision=\"page\",status=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatekeeper_requests_total{decision=\"proxy\",status=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatekeeper_upstream_errors_total{kind=\"unreachable\"} 1"),
            "{text}"
        );
        // Every kind and wait result is there from the start, counted or not.
        for series in [
            "gatekeeper_upstream_errors_total{kind=\"read_timeout\"}",
            "gatekeeper_upstream_errors_total{kind=\"send_timeout\"}",
            "gatekeeper_upstream_waits_total{result=\"gave_up\"}",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
        assert!(text.contains("gatekeeper_maintenance 1"), "{text}");
        assert!(text.contains("gatekeeper_allowlist_entries 3"), "{text}");
        assert!(text.contains("gatekeeper_request_duration_seconds_bucket"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
