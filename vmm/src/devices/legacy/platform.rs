//! The guest's exit port and boot-progress port.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::sync::lock;

/// The host's CLOCK_MONOTONIC in nanoseconds: comparable across processes, so a parent
/// can time a child VMM from before it was spawned.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the guest reported through the platform ports.
#[derive(Debug, Default)]
pub struct PlatformState {
    /// The status the guest exited with, once it has.
    pub exit_status: Option<u32>,
    /// Boot milestones `(code, CLOCK_MONOTONIC ns)` in the order reached.
    pub milestones: Vec<(u8, u64)>,
    /// The guest powered the machine off or reset it (Linux guests).
    pub power: Option<super::power::PowerEvent>,
}

/// Shared view of [`PlatformState`].
pub type SharedPlatform = Arc<Mutex<PlatformState>>;

/// Exit port (32-bit status) and progress port (8-bit milestone).
#[derive(Debug)]
pub struct ExitPort {
    state: SharedPlatform,
    exit_evt: EventFd,
}

impl ExitPort {
    /// Record into `state`; signal `exit_evt` when the guest exits.
    pub fn new(state: SharedPlatform, exit_evt: EventFd) -> Self {
        ExitPort { state, exit_evt }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let mut state = lock(&self.state);
        if state.exit_status.is_none() {
            state.exit_status = Some(u32::from_le_bytes(bytes));
            let _ = self.exit_evt.write(1);
        }
    }
}

/// Progress port: one byte per milestone, timestamped on arrival.
#[derive(Debug)]
pub struct ProgressPort {
    state: SharedPlatform,
}

impl ProgressPort {
    /// Record into `state`.
    pub fn new(state: SharedPlatform) -> Self {
        ProgressPort { state }
    }
}

impl BusDevice for ProgressPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let now = monotonic_ns();
        let mut state = lock(&self.state);
        // Bounded: a guest cannot grow the list without limit.
        if let (Some(&code), true) = (data.first(), state.milestones.len() < 64) {
            state.milestones.push((code, now));
        }
    }
}
