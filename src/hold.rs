//! Holding requests during a pause: each waits in a first-in first-out queue
//! until the pause ends (released in arrival order), its `max` passes, or its
//! client gives up — then it is simply dropped, and the app never sees it.
//! Released requests go on to the app at most [`RELEASE_CONCURRENCY`] at a
//! time, first come first served, so that the app just restarted does not
//! meet its whole backlog of visitors at once (the resume stampede).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The pause ended: decide again.
    Released,
    /// Held for `max`: the maintenance answer.
    TimedOut,
    /// `maintenance.max_held` requests are waiting already: the maintenance answer at once.
    Full,
}

/// Released requests in their exchange with the app at once, at most.
pub const RELEASE_CONCURRENCY: usize = 64;

/// The queue of held requests.
pub struct Holds {
    waiters: Mutex<VecDeque<oneshot::Sender<()>>>,
    count: AtomicUsize,
    gauge: Gauge,
    /// Admission of released requests to the app; fair (first come first served).
    released: Arc<Semaphore>,
}

impl Default for Holds {
    fn default() -> Self {
        Holds::new(Gauge::default())
    }
}

impl Holds {
    pub fn new(gauge: Gauge) -> Holds {
        Holds {
            waiters: Mutex::default(),
            count: AtomicUsize::new(0),
            gauge,
            released: Arc::new(Semaphore::new(RELEASE_CONCURRENCY)),
        }
    }

    /// A released request's turn to go to the app: held until its answer's
    /// head is in. None only if the gate is closed (never, in practice).
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.released.clone().acquire_owned().await.ok()
    }

    /// Requests held now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits in line until released, at most `max`. `still_paused` is asked
    /// once in line, so a pause that ended between the decision and the
    /// queueing does not hold anyone.
    pub async fn wait(&self, limit: usize, max: Duration, still_paused: impl FnOnce() -> bool) -> Held {
        let rx = {
            let Ok(mut q) = self.waiters.lock() else {
                return Held::Full;
            };
            if self.count.load(Ordering::Relaxed) >= limit {
                return Held::Full;
            }
            // Those who gave up or timed out leave their place behind; it goes now.
            while q.front().is_some_and(|s| s.is_closed()) {
                q.pop_front();
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(tx);
            rx
        };
        let _counted = Counted::new(self);
        if !still_paused() {
            return Held::Released;
        }
        match tokio::time::timeout(max, rx).await {
            Ok(_) => Held::Released,
            Err(_) => Held::TimedOut,
        }
    }

    /// Lets every held request go, first come first.
    pub fn release_all(&self) {
        if self.count() == 0 {
            return;
        }
        let released: Vec<oneshot::Sender<()>> = match self.waiters.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => return,
        };
        for tx in released {
            let _ = tx.send(());
        }
    }
}

/// One held request, counted while it waits (however its wait ends).
struct Counted<'a>(&'a Holds);

impl<'a> Counted<'a> {
    fn new(h: &'a Holds) -> Self {
        h.count.fetch_add(1, Ordering::Relaxed);
        h.gauge.inc();
        Counted(h)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_in_arrival_order() {
        let h = Arc::new(Holds::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (h2, order) = (h.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let r = h2.wait(10, Duration::from_secs(10), || true).await;
                order.lock().unwrap().push(i);
                r
            }));
            // Queued one after the other.
            while h.count() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        h.release_all();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Held::Released);
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(h.count(), 0);
    }

    #[tokio::test]
    async fn full_timed_out_and_already_over() {
        let h = Arc::new(Holds::default());
        let h2 = h.clone();
        let first = tokio::spawn(async move { h2.wait(1, Duration::from_secs(10), || true).await });
        while h.count() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.wait(1, Duration::from_secs(10), || true).await, Held::Full);
        assert_eq!(h.wait(5, Duration::from_millis(20), || true).await, Held::TimedOut);
        assert_eq!(h.wait(5, Duration::from_secs(10), || false).await, Held::Released);
        h.release_all();
        assert_eq!(first.await.unwrap(), Held::Released);
        assert_eq!(h.count(), 0);
    }

    #[tokio::test]
    async fn a_client_that_gives_up_leaves_the_line() {
        let h = Arc::new(Holds::default());
        let h2 = h.clone();
        let gave_up = tokio::spawn(async move { h2.wait(10, Duration::from_secs(10), || true).await });
        while h.count() < 1 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        let _ = gave_up.await;
        assert_eq!(h.count(), 0);
        // Its place is cleared when the next one queues.
        assert_eq!(h.wait(10, Duration::from_millis(10), || true).await, Held::TimedOut);
        assert!(h.waiters.lock().unwrap().len() <= 1);
    }

    #[tokio::test]
    async fn released_requests_are_admitted_a_few_at_a_time() {
        let h = Holds::default();
        let mut permits = Vec::new();
        for _ in 0..RELEASE_CONCURRENCY {
            permits.push(h.admit().await);
        }
        let next = tokio::time::timeout(Duration::from_millis(50), h.admit()).await;
        assert!(next.is_err(), "one more than RELEASE_CONCURRENCY must wait");
        permits.pop();
        assert!(tokio::time::timeout(Duration::from_secs(1), h.admit()).await.is_ok());
    }
}
