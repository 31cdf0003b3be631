//! Per-request counters, sharded by worker thread: every request counts its
//! decision and status class and observes its duration, and with one shared
//! counter per label both workers would write the same cache lines (and
//! prometheus-client's histogram takes a lock per observation). Each worker
//! writes its own shard; a scrape sums them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::{DecisionLabel, RequestLabels, CLASSES};
use crate::decision::Decision;

const DECISIONS: usize = Decision::LABELS.len();
/// Upper bounds of the duration buckets, seconds: 0.5 ms doubling to ~16 s
/// (as `exponential_buckets(0.0005, 2.0, 16)`), then +Inf.
const BOUNDS: [f64; 16] = {
    let mut b = [0.0005; 16];
    let mut i = 1;
    while i < 16 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};
/// Workers beyond this share shards (still exact: the adds are atomic).
const SHARDS: usize = 16;

thread_local! {
    /// This thread's shard; threads that are not workers (admin, tests) share the last.
    static SHARD: Cell<usize> = const { Cell::new(SHARDS) };
}

/// Makes the calling thread, worker `id`, count into a shard of its own.
pub fn set_worker(id: usize) {
    SHARD.with(|s| s.set(id % SHARDS));
}

#[derive(Debug)]
struct Duration {
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// One worker's counts, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    requests: [AtomicU64; DECISIONS * CLASSES.len()],
    durations: [Duration; DECISIONS],
}

impl Shard {
    fn new() -> Shard {
        Shard {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: std::array::from_fn(|_| Duration {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }
}

/// `gatekeeper_requests_total` and `gatekeeper_request_duration_seconds`.
#[derive(Debug)]
pub struct Requests {
    shards: Box<[Shard]>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            shards: (0..=SHARDS).map(|_| Shard::new()).collect(),
        }
    }
}

impl Requests {
    /// Counts one answered request into the calling thread's shard.
    pub fn count(&self, decision: Decision, status: u16, elapsed: std::time::Duration) {
        let Some(shard) = self.shards.get(SHARD.with(Cell::get)) else {
            return;
        };
        let d = decision.index();
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        if let Some(c) = shard.requests.get(d * CLASSES.len() + class) {
            c.fetch_add(1, Relaxed);
        }
        if let Some(h) = shard.durations.get(d) {
            let secs = elapsed.as_secs_f64();
            let b = BOUNDS.iter().position(|&ub| secs <= ub).unwrap_or(BOUNDS.len());
            h.buckets[b].fetch_add(1, Relaxed);
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            h.sum_nanos.fetch_add(nanos, Relaxed);
        }
    }

    fn sum(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl Collector for Requests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let help = "Requests answered, by decision and status class";
            let mut family = encoder.encode_descriptor("requests", help, None, MetricType::Counter)?;
            for (d, decision) in Decision::LABELS.into_iter().enumerate() {
                for (c, status) in CLASSES.into_iter().enumerate() {
                    let n = self.sum(|s| &s.requests[d * CLASSES.len() + c]);
                    let labels = RequestLabels { decision, status };
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let help = "Time to the response head, by decision";
        let mut family = encoder.encode_descriptor("request_duration_seconds", help, None, MetricType::Histogram)?;
        for (d, decision) in Decision::LABELS.into_iter().enumerate() {
            let buckets: Vec<(f64, u64)> = (0..=BOUNDS.len())
                .map(|b| {
                    let ub = BOUNDS.get(b).copied().unwrap_or(f64::INFINITY);
                    (ub, self.sum(|s| &s.durations[d].buckets[b]))
                })
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = self.sum(|s| &s.durations[d].sum_nanos) as f64 / 1e9;
            family
                .encode_family(&DecisionLabel { decision })?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    fn text(r: Requests) -> String {
        let mut reg = prometheus_client::registry::Registry::with_prefix("gatekeeper");
        reg.register_collector(Box::new(r));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn shards_are_summed_and_buckets_cumulative() {
        let r = Requests::default();
        r.count(Decision::Page, 503, D::from_micros(100));
        std::thread::scope(|s| {
            s.spawn(|| {
                set_worker(3);
                r.count(Decision::Page, 503, D::from_millis(3));
            });
        });
        let t = text(r);
        assert!(
            t.contains("gatekeeper_requests_total{decision=\"page\",status=\"5xx\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_requests_total{decision=\"page\",status=\"2xx\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_request_duration_seconds_count{decision=\"page\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_request_duration_seconds_sum{decision=\"page\"} 0.0031\n"),
            "{t}"
        );
        // 100 µs in the first bucket; 3 ms in the one up to 4 ms.
        assert!(
            t.contains("gatekeeper_request_duration_seconds_bucket{le=\"0.0005\",decision=\"page\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_request_duration_seconds_bucket{le=\"0.002\",decision=\"page\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_request_duration_seconds_bucket{le=\"0.004\",decision=\"page\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("gatekeeper_request_duration_seconds_bucket{le=\"+Inf\",decision=\"page\"} 2\n"),
            "{t}"
        );
    }

    #[test]
    fn many_workers_share_shards_without_losing_counts() {
        let r = Requests::default();
        std::thread::scope(|s| {
            for id in 0..40 {
                let r = &r;
                s.spawn(move || {
                    set_worker(id);
                    for _ in 0..100 {
                        r.count(Decision::Proxy(crate::decision::Mark::None), 200, D::from_millis(1));
                    }
                });
            }
        });
        assert!(text(r).contains("gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"} 4000\n"));
    }
}
