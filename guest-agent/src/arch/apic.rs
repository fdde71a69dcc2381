//! The local APIC (xAPIC MMIO, emulated in the kernel by KVM): enable, periodic timer, EOI.

use protocol::layout::{LAPIC_BASE, SPURIOUS_VECTOR, TIMER_VECTOR};

const SVR: u64 = 0xf0;
const EOI: u64 = 0xb0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;
const TIMER_PERIODIC: u32 = 1 << 17;

fn write(reg: u64, value: u32) {
    // SAFETY: the APIC page is identity-mapped (uncached) by our page tables; these are
    // architectural registers.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) };
}

/// Software-enable the APIC with our spurious vector.
pub fn enable() {
    write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// Start a periodic timer of `period_us` microseconds (KVM's APIC timer counts
/// nanoseconds at divide-by-1).
pub fn start_timer(period_us: u32) {
    write(TIMER_DIVIDE, 0xb);
    write(LVT_TIMER, TIMER_PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, period_us.saturating_mul(1000));
}

/// Signal end of interrupt.
pub fn eoi() {
    write(EOI, 0);
}
