//! Small synchronisation helpers used throughout the VMM.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock a mutex, recovering the data if a panicking thread poisoned it: our critical
/// sections leave their data consistent at every step.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
