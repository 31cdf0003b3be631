//! Gives the allocator's free pages back to the system after a wave of
//! connections has ended, or has gone idle.
//!
//! glibc's malloc keeps what the program frees in its arenas for reuse: with
//! 5,000 idle TLS connections opened and closed in rounds, it held 220–228 MiB
//! of which 3–6 MiB were in use once they had closed, and RSS crept from 175
//! to 235 MiB (docs/hardening.md, finding C). `malloc_trim(0)` hands the free
//! pages back. It is called on the blocking pool (it walks every arena under
//! its lock: 5–8 ms measured) once per wave: after at least [`WAVE`]
//! connections were active at once and most of them have closed or parked,
//! and at most once per [`GAP`]; a wave that ended during that gap is
//! trimmed right after it.
//!
//! Active connections hold HTTP state: open and not parked (see
//! [`crate::park`]). A connection that parks has just freed hyper's buffers
//! (~20 KiB), as one that closes has: 10,000 keep-alive connections opened
//! 500 at a time and gone idle left 14–19 MiB free in the arenas, between the
//! parked connections' small blocks (docs/perf-idle.md). What the allocator
//! holds free is about the most connections active at once, whence the waves.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Duration;

/// Connections active (open, not parked) at once that make a wave: at ~20 KiB
/// of hyper's buffers each (TLS: more), ≥ 5 MiB to give back.
const WAVE: i64 = 256;
/// After the wave has ended, the rest of it has this long to close (or park)
/// before the trim; what closes later makes a wave of its own if it is large.
/// Short, so that memory is back soon after a burst: with 1 s, 10,000
/// connections opened in 0.6 s were still untrimmed 1 s after the last one.
const SETTLE: Duration = Duration::from_millis(250);
/// The least time between two trims (a trim took 3–8 ms on the blocking pool).
const GAP: Duration = Duration::from_secs(1);

/// Open connections since the last trim: when a wave has ended.
pub struct Waves {
    /// The most connections open at once since the last trim.
    peak: AtomicI64,
    /// A trim is scheduled, running, or within `GAP` of the last one.
    busy: AtomicBool,
}

impl Waves {
    pub const fn new() -> Self {
        Waves {
            peak: AtomicI64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    /// A connection opened: `open` are open now.
    pub fn opened(&self, open: i64) {
        self.peak.fetch_max(open, Relaxed);
    }

    /// A connection closed, `open` are open now: true when this ends a wave,
    /// that is, a quarter or less of its peak is left (once per wave; none
    /// while busy). The caller trims, then calls [`Waves::done`].
    pub fn ended(&self, open: i64) -> bool {
        let peak = self.peak.load(Relaxed);
        if peak < WAVE || open > peak / 4 || self.busy.swap(true, Relaxed) {
            return false;
        }
        self.peak.store(open, Relaxed);
        true
    }

    /// While busy, after a trim and its gap: true (and still busy) if another
    /// wave rose and ended meanwhile, with `open` open now; the caller trims
    /// again. Otherwise the caller calls [`Waves::done`].
    pub fn again(&self, open: i64) -> bool {
        let peak = self.peak.load(Relaxed);
        if peak < WAVE || open > peak / 4 {
            return false;
        }
        self.peak.store(open, Relaxed);
        true
    }

    /// The trim (and the gap after it) is over.
    pub fn done(&self) {
        self.busy.store(false, Relaxed);
    }
}

impl Default for Waves {
    fn default() -> Self {
        Self::new()
    }
}

static WAVES: Waves = Waves::new();
/// Connections that hold HTTP state now (all workers).
static ACTIVE: AtomicI64 = AtomicI64::new(0);

/// A connection opened, or a parked one woke: it holds HTTP state again.
pub fn activated() {
    WAVES.opened(ACTIVE.fetch_add(1, Relaxed) + 1);
}

/// A connection closed, or parked: its HTTP state is freed.
pub fn deactivated() {
    if !WAVES.ended(ACTIVE.fetch_sub(1, Relaxed) - 1) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        WAVES.done();
        return;
    };
    rt.spawn(async {
        tokio::time::sleep(SETTLE).await;
        // Bounded: each round follows a wave of at least WAVE connections. A
        // wave that ended during the gap is trimmed without a second settle:
        // its connections have had the gap to finish.
        loop {
            let t = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!(took = ?t.elapsed(), "returned the allocator's free pages after a wave of connections");
            tokio::time::sleep(GAP).await;
            if !WAVES.again(ACTIVE.load(Relaxed)) {
                break;
            }
        }
        WAVES.done();
    });
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it walks glibc's own free lists under the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_ends_once_when_three_quarters_of_its_peak_have_closed() {
        let w = Waves::new();
        for open in 1..=2000 {
            w.opened(open);
        }
        let ends: Vec<i64> = (0..2000).rev().filter(|&open| w.ended(open)).collect();
        assert_eq!(ends, vec![500]);
        // Busy until done: a second wave in the meantime does not trim again.
        w.opened(1500);
        assert!(!w.ended(0));
        w.done();
        assert!(w.ended(0), "the wave that rose while busy still ends");
        w.done();
        assert!(!w.ended(0), "no wave since the last trim");
    }

    #[test]
    fn a_wave_that_ends_while_busy_is_trimmed_after_the_gap() {
        let w = Waves::new();
        w.opened(WAVE * 2);
        assert!(w.ended(0));
        // During the settle and the gap: another wave rises and goes idle.
        w.opened(WAVE);
        assert!(!w.ended(0), "busy");
        assert!(w.again(0), "the wave that ended meanwhile is trimmed next");
        assert!(!w.again(0), "and only once");
        w.done();
        w.opened(WAVE);
        assert!(!w.again(WAVE), "not while the wave is still active");
    }

    #[test]
    fn fewer_connections_than_a_wave_never_trim() {
        let w = Waves::new();
        for _ in 0..10 {
            w.opened(WAVE - 1);
            assert!(!w.ended(0));
        }
    }
}
