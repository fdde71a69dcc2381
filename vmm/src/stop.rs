//! SIGINT and SIGTERM end a `run` cleanly.
//!
//! The handler only records the signal (an atomic store, async-signal-safe); the run
//! polls [`requested`] and stops in order: evictions under way are cancelled (the guest
//! undoes them), the chunks the exercise and the control API hold are freed (zeroed and
//! given back to the guest), the API server stops and removes its socket, the metrics are
//! written a last time, statistics are printed if asked, and the process exits with
//! 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a
//! process the signal ended. A second signal during that stop ends the process at once.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked us to stop (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store: async-signal-safe.
    SIGNAL.store(num, Ordering::SeqCst);
}

/// Handle SIGINT and SIGTERM from now on (before, they end the process the default way).
pub fn install() {
    for num in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(num, on_signal) {
            eprintln!("cma-vmm: cannot handle signal {num}: {e}");
        }
    }
}

/// Give SIGINT and SIGTERM their default disposition back: a second Ctrl-C during the
/// stop ends the process at once, as usual.
pub fn uninstall() {
    for num in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restoring a signal's default disposition has no memory-safety
        // preconditions; no handler of ours runs afterwards.
        unsafe { libc::signal(num, libc::SIG_DFL) };
    }
}

/// The signal received since [`install`], if any.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        num => Some(num),
    }
}

/// The exit status of a run a signal stopped: 128 + its number.
pub fn exit_code(num: i32) -> i32 {
    128 + num
}

/// `SIGINT`, `SIGTERM`, or the number.
pub fn name(num: i32) -> String {
    match num {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
