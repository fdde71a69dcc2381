//! What interrupts and exceptions do: exceptions end the run with a diagnostic, the timer
//! ticks, device vectors set a pending bit the main loop picks up.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use protocol::layout::{DEVICE_VECTOR_BASE, EXIT_EXCEPTION, SPURIOUS_VECTOR, TIMER_VECTOR};

use super::{apic, cpu};
use crate::console::{Dec, Hex};

/// The registers a stub saves, in memory order (lowest address first).
#[repr(C)]
pub struct Frame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Timer ticks since the timer started.
pub static TICKS: AtomicU64 = AtomicU64::new(0);
/// One bit per device vector with an interrupt not yet handled.
static PENDING: AtomicU32 = AtomicU32::new(0);

/// Take the pending bit of device `index`; true if it was set.
pub fn take_device_interrupt(index: u8) -> bool {
    let bit = 1u32 << index;
    PENDING.fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 error",
    "alignment check",
    "machine check",
    "SIMD error",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Called by `interrupt_common` with the saved frame.
pub extern "C" fn dispatch(frame: &Frame) {
    let vector = frame.vector as u8;
    match vector {
        0..=31 => exception(frame),
        v if v == TIMER_VECTOR => {
            TICKS.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        v if v == SPURIOUS_VECTOR => {}
        v if (DEVICE_VECTOR_BASE..DEVICE_VECTOR_BASE + 8).contains(&v) => {
            PENDING.fetch_or(1 << (v - DEVICE_VECTOR_BASE), Ordering::AcqRel);
            apic::eoi();
        }
        _ => apic::eoi(),
    }
}

fn exception(frame: &Frame) -> ! {
    let name = NAMES[(frame.vector & 31) as usize];
    crate::println!(
        "cma-guest: exception {} ({}) error={} rip={} rsp={} rflags={} cr2={}",
        Dec(frame.vector),
        name,
        Hex(frame.error),
        Hex(frame.rip),
        Hex(frame.rsp),
        Hex(frame.rflags),
        Hex(cpu::read_cr2())
    );
    crate::println!(
        "cma-guest:   rax={} rcx={} rdx={} rsi={} rdi={} cs={} ss={}",
        Hex(frame.rax),
        Hex(frame.rcx),
        Hex(frame.rdx),
        Hex(frame.rsi),
        Hex(frame.rdi),
        Hex(frame.cs),
        Hex(frame.ss)
    );
    let _ = (frame.r8, frame.r9, frame.r10, frame.r11);
    crate::exit(EXIT_EXCEPTION)
}
