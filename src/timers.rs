//! Timers a worker thread reuses. Every proxied request bounds its exchange
//! with `upstream.timeout`; a fresh tokio timer for each would be inserted into
//! the timer wheel on its first wait and taken out again (under the driver's
//! lock) when the answer comes, long before it could fire. A timer taken from
//! this thread's spares and moved to a later deadline is only an atomic update
//! of its expiry: it stays in the wheel, and when its old deadline comes the
//! driver finds the new one and moves it on. Spares exist only on worker
//! threads (one runtime each, for the thread's life).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Enough for every exchange a worker has in flight at once, usually.
const MAX_SPARES: usize = 1024;

thread_local! {
    static WORKER: Cell<bool> = const { Cell::new(false) };
    static SPARES: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// Lets the calling thread, a worker with its own runtime for life, reuse timers.
pub fn set_worker() {
    WORKER.with(|w| w.set(true));
}

/// Whether this thread reuses timers.
fn reusing() -> bool {
    WORKER.with(Cell::get)
}

/// A timer for `due`, given back to the thread's spares when dropped.
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    pub fn at(due: Instant) -> Timer {
        let spare = reusing()
            .then(|| SPARES.try_with(|s| s.try_borrow_mut().ok()?.pop()).ok().flatten())
            .flatten();
        let sleep = match spare {
            Some(mut s) => {
                s.as_mut().reset(due);
                s
            }
            None => Box::pin(tokio::time::sleep_until(due)),
        };
        Timer { sleep: Some(sleep) }
    }

    pub fn reset(&mut self, due: Instant) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(due);
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !reusing() {
            return;
        }
        if let Some(mut s) = self.sleep.take() {
            // Its waker would keep the finished request's task allocated until
            // the old deadline: a no-op waker takes its place.
            let _ = s.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()));
            let _ = SPARES.try_with(|spares| {
                if let Ok(mut spares) = spares.try_borrow_mut() {
                    if spares.len() < MAX_SPARES {
                        spares.push(s);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reused_timer_fires_at_its_new_deadline_not_its_old_one() {
        set_worker();
        let t0 = Instant::now();
        drop(Timer::at(t0 + Duration::from_millis(10)));
        // The spare, still due at 10 ms, moved to 50 ms.
        let t = Timer::at(t0 + Duration::from_millis(50));
        t.await;
        assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
        // And moved to an earlier deadline than its last: it still fires.
        let t1 = Instant::now();
        let t = Timer::at(t1 + Duration::from_secs(60));
        drop(t);
        let t = Timer::at(t1 + Duration::from_millis(5));
        assert!(tokio::time::timeout(Duration::from_secs(10), t).await.is_ok());
        assert!(t1.elapsed() >= Duration::from_millis(5));
    }
}
