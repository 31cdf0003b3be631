//! A/B switches for `bench/ab.sh`: one binary runs either side of a change,
//! chosen by `GATEKEEPER_AB` (a bit mask, read once per worker thread), so
//! alternating rounds compare the two without a rebuild between them. A set bit
//! selects the old side of the change that bit names. Unset, or in any build
//! that has no change under test, every bit is 0: the kept code.
//!
//! Bits in use (changes of 2026-12-05, docs/performance.md):
//! 1 the daemon's stop token shared by every worker (not a child per worker);
//! 2 request metrics counted into one shard by every worker;
//! 4 the state's own reference count bumped by every request (not the worker's handle's);
//! 8 a fresh timer for every upstream exchange (not a reused one);
//! 16 hyper-util's protocol sniffing for every plain connection (not the peeked preface).

use std::cell::Cell;

thread_local! {
    static BITS: Cell<u32> = const { Cell::new(0) };
}

/// Reads `GATEKEEPER_AB` for the calling (worker) thread.
pub fn init() {
    let bits = std::env::var("GATEKEEPER_AB")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    BITS.with(|b| b.set(bits));
}

/// Whether `bit` (a power of two) asks for the old side on this thread.
pub fn old(bit: u32) -> bool {
    BITS.with(|b| b.get() & bit != 0)
}

/// A runtime setting under test, from the environment (`bench/latency.sh`):
/// `None` (tokio's default) unless `var` holds a positive number.
pub fn tune(var: &str) -> Option<u32> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
}
