//! Small CPU primitives: halting, interrupt flag, control registers, TLB.

use core::arch::asm;

/// Stop until the next interrupt, with interrupts enabled only while halted.
///
/// `sti` takes effect after the next instruction, so an interrupt that is already pending
/// is delivered after `hlt` starts and wakes it: no wake-up is lost.
pub fn wait_for_interrupt() {
    // SAFETY: enabling interrupts around `hlt` is how the guest idles; handlers run on
    // their own IST stack and return here.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Stop forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts disabled `hlt` never returns in practice; the loop covers
        // NMIs.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// CR2: the faulting address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Load a new page-table root.
///
/// # Safety
/// `pml4` must be the physical address of a valid PML4 that maps everything the guest is
/// about to touch (code, stacks, data) at its current address.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the new tables map the running code and data.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Drop the TLB entry of one virtual address.
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a TLB entry has no effect beyond forcing a page walk.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc reads a counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
