//! A counting global allocator: `System` plus a running total of live heap bytes and its peak,
//! switched on only around a measurement.
//!
//! The `class-size` benchmark measures the heap a loaded `Replica` holds by counting what
//! `Replica::load` allocates and has not freed. Counting costs two contended atomics per
//! allocation, which would distort the throughput benchmarks, so it is off by default and a
//! disabled allocator adds one relaxed load. Only deltas inside one window mean anything: memory
//! allocated before [`start`] and freed inside the window counts negative.
//!
//! This is the crate's only `unsafe`: `GlobalAlloc` is an unsafe trait, and each method only
//! forwards to `System` with the caller's own arguments.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The allocator installed as `#[global_allocator]` in `main.rs`.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

/// What one counting window saw.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Bytes allocated and not freed inside the window.
    pub retained_bytes: isize,
    /// The highest net allocation reached inside the window.
    pub peak_bytes: isize,
}

/// Starts counting from zero. Other threads should be idle: they are counted too.
pub fn start() {
    CURRENT.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    ENABLED.store(true, Ordering::SeqCst);
}

/// Stops counting and returns what the window saw.
pub fn stop() -> Window {
    ENABLED.store(false, Ordering::SeqCst);
    Window {
        retained_bytes: CURRENT.load(Ordering::SeqCst),
        peak_bytes: PEAK.load(Ordering::SeqCst),
    }
}

/// The running window's figures so far, without ending it; `None` when not counting.
pub fn live() -> Option<Window> {
    ENABLED.load(Ordering::SeqCst).then(|| Window {
        retained_bytes: CURRENT.load(Ordering::SeqCst),
        peak_bytes: PEAK.load(Ordering::SeqCst),
    })
}

fn grew(bytes: usize) {
    if ENABLED.load(Ordering::Relaxed) {
        let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
        let now = CURRENT
            .fetch_add(bytes, Ordering::Relaxed)
            .wrapping_add(bytes);
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrank(bytes: usize) {
    if ENABLED.load(Ordering::Relaxed) {
        let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
        CURRENT.fetch_sub(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
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
