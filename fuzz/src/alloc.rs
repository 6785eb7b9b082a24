//! A counting global allocator, so a harness can assert that decoding an input allocates
//! memory in proportion to the input and not to what the input claims (a length field that
//! says 4 GiB). It wraps the system allocator and keeps the live byte count and its peak.
//!
//! The counters are per thread (so tests running side by side do not see each other's
//! memory): a measurement covers what the calling thread allocates, which for every decoder
//! but the hub's (whose store runs threads of its own) is all of it.

#![allow(unsafe_code)] // A `GlobalAlloc` is an unsafe trait; this one only forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Bytes a decoder may hold at its peak regardless of its input: serde preallocates a
/// sequence's declared length up to 1 MiB ("cautious" size hints) before it reads an element,
/// so a short bincode body claiming a long `Vec` holds 1 MiB for a moment; twice that leaves
/// room for the rest. What must not happen is a peak that grows with the claimed length.
pub const ALLOC_BASE_BYTES: usize = 2 * 1024 * 1024;

/// Bytes a decoder may hold at its peak per byte of input (copies of the input: unmasked
/// payloads, parsed JSON values, error messages quoting it).
pub const ALLOC_PER_INPUT_BYTE: usize = 32;

thread_local! {
    // Signed: memory freed on another thread than the one that allocated it counts down here.
    // `const` and `Copy`: no lazy initialization and no destructor, so the allocator may touch
    // them at any point of a thread's life.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counted.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees are this allocator's; the counters have no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

fn grew(by: usize) {
    let by = isize::try_from(by).unwrap_or(isize::MAX);
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(by);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(by: usize) {
    let by = isize::try_from(by).unwrap_or(isize::MAX);
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(by)));
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it held at once beyond what was live
/// when it started.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get).saturating_sub(start);
    (out, usize::try_from(peak).unwrap_or(0))
}

/// Runs `f` on an input of `input_len` bytes and panics if it held more than
/// [`ALLOC_BASE_BYTES`] + [`ALLOC_PER_INPUT_BYTE`] × `input_len` at once.
pub fn bounded<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    let budget = ALLOC_BASE_BYTES.saturating_add(ALLOC_PER_INPUT_BYTE.saturating_mul(input_len));
    bounded_by(what, input_len, budget, f)
}

/// Runs `f` on an input of `input_len` bytes and panics if it held more than `budget` bytes at
/// once: for a decoder whose documented bound is a constant of its own.
pub fn bounded_by<T>(what: &str, input_len: usize, budget: usize, f: impl FnOnce() -> T) -> T {
    let (out, peak) = peak_during(f);
    assert!(
        peak <= budget,
        "{what}: {peak} bytes held at once for a {input_len}-byte input (budget {budget})"
    );
    out
}
