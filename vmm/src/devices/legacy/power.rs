//! How a Linux guest stops the machine: the i8042 controller's reset line (`reboot`, and
//! `panic=-1` with `reboot=k`) and the ACPI sleep control register (`poweroff`, S5).
//!
//! Neither is a full device: the i8042 answers "no key, input buffer empty" so that
//! Linux's keyboard-controller reset does not wait, and treats command 0xFE (pulse the
//! reset line) as a reset; the sleep control register treats SLP_EN with SLP_TYP 5 as
//! power-off. Both record what happened and wake the VMM's main thread.

use vmm_sys_util::eventfd::EventFd;

use super::platform::SharedPlatform;
use crate::devices::bus::BusDevice;
use crate::sync::lock;

/// The i8042 data port; the command/status port is 4 above it.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 command: pulse the CPU reset line.
const I8042_RESET_CMD: u8 = 0xfe;

/// The ACPI sleep control and status register (HW-reduced ACPI, FADT `SLEEP_CONTROL_REG`).
pub const ACPI_SLEEP_PORT: u16 = 0x600;
/// SLP_EN: enter the sleep state in SLP_TYP.
const SLP_EN: u8 = 1 << 5;
/// The sleep type the DSDT's `\_S5_` object declares for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// How the guest asked the machine to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// ACPI S5: power off.
    PowerOff,
    /// The i8042 reset line (reboot, or a panic with `panic=-1`).
    Reset,
}

fn record(state: &SharedPlatform, evt: &EventFd, event: PowerEvent) {
    let mut s = lock(state);
    if s.power.is_none() {
        s.power = Some(event);
        let _ = evt.write(1);
    }
}

/// Just enough of an i8042 for Linux to reset the machine through it.
#[derive(Debug)]
pub struct I8042 {
    state: SharedPlatform,
    exit_evt: EventFd,
}

impl I8042 {
    /// Record resets into `state`, waking `exit_evt`.
    pub fn new(state: SharedPlatform, exit_evt: EventFd) -> Self {
        I8042 { state, exit_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty. Data: nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let command_port = u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT);
        if offset == command_port && data.first() == Some(&I8042_RESET_CMD) {
            record(&self.state, &self.exit_evt, PowerEvent::Reset);
        }
    }
}

/// The ACPI sleep control/status register.
#[derive(Debug)]
pub struct AcpiSleep {
    state: SharedPlatform,
    exit_evt: EventFd,
}

impl AcpiSleep {
    /// Record power-off into `state`, waking `exit_evt`.
    pub fn new(state: SharedPlatform, exit_evt: EventFd) -> Self {
        AcpiSleep { state, exit_evt }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS clear (we never wake from a sleep state).
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v & SLP_EN != 0 && (v >> 2) & 0x7 == S5_SLEEP_TYPE {
            record(&self.state, &self.exit_evt, PowerEvent::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::legacy::platform::PlatformState;

    fn setup() -> (SharedPlatform, EventFd) {
        let state = Arc::new(Mutex::new(PlatformState::default()));
        (state, EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn reset_only_on_command_0xfe() {
        let (state, evt) = setup();
        let mut dev = I8042::new(state.clone(), evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "input buffer empty: Linux need not wait");
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xd1]);
        assert_eq!(lock(&state).power, None);
        dev.write(4, &[0xfe]);
        assert_eq!(lock(&state).power, Some(PowerEvent::Reset));
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn poweroff_only_on_s5_with_slp_en() {
        let (state, evt) = setup();
        let mut dev = AcpiSleep::new(state.clone(), evt);
        dev.write(0, &[S5_SLEEP_TYPE << 2]);
        dev.write(0, &[(3 << 2) | SLP_EN]);
        dev.write(0, &[]);
        assert_eq!(lock(&state).power, None);
        dev.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(lock(&state).power, Some(PowerEvent::PowerOff));
    }
}
