//! Locking that survives a panicked holder: the tables behind the gateway's mutexes are
//! always left consistent between statements, so a poisoned lock's data is still good, and
//! one panicked task must not take every later request down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
