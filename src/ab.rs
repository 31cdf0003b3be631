//! A/B switches for `bench/ab.sh`: one binary runs either side of a change,
//! chosen by `GATEKEEPER_AB` (a bit mask, read once per worker thread), so
//! alternating rounds compare the two without a rebuild between them. A set bit
//! selects the old side of the change that bit names. Unset, or in any build
//! that has no change under test, every bit is 0: the kept code.
//!
//! A bit lives only while its change is under test: once the change is kept
//! or dropped, the old side goes and the bit with it (the bits of 2026-12-05,
//! docs/performance.md, are gone). None is in use now. A change no switch can
//! select (a type's layout, say) is compared as two builds instead
//! (`GATEKEEPER_BIN_B`).

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
