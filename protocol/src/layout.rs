//! The guest-physical address map both sides agree on.
//!
//! ```text
//!  0x0000_0000 ┌──────────────────────────┐
//!              │ null page                │  reserved: never mapped by the guest
//!  0x0000_0500 │ boot GDT (VMM)           │
//!  0x0000_7000 │ boot information (8 KiB) │  written by the VMM, read once by the guest
//!  0x0000_9000 │ boot page tables (VMM)   │  PML4, PDPT, 4 PDs: identity map of 0-4 GiB
//!  0x0010_0000 ├──────────────────────────┤  1 MiB: the guest image (ELF, linker script)
//!              │ guest image, then RAM    │
//!              │ CMA regions (lent or     │  placed by the VMM or at a fixed base
//!              │ private)                 │
//!  0xC000_0000 ├──────────────────────────┤  3 GiB: MMIO hole (virtio-mmio devices, APIC)
//!  0x1_0000_0000 ├────────────────────────┤  RAM continues above 4 GiB for big guests
//! ```

/// Size of a page: the unit of guest memory management and of every range we grant.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Pageblock order: migratetypes are tracked per 2^9 pages (2 MiB), as on x86 Linux.
/// CMA regions are whole pageblocks (Linux's `CMA_MIN_ALIGNMENT_BYTES`).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Size of a pageblock in bytes.
pub const PAGEBLOCK_SIZE: u64 = PAGE_SIZE << PAGEBLOCK_ORDER;

/// Where the VMM puts the GDT it enters long mode with.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Where the boot-information block lives.
pub const BOOT_INFO_ADDR: u64 = 0x7000;
/// Room reserved for the boot-information block.
pub const BOOT_INFO_MAX_SIZE: u64 = 0x2000;
/// The VMM's boot page tables: PML4 here, then the PDPT, then four page directories.
pub const BOOT_PML4_ADDR: u64 = 0x9000;
/// The boot PDPT.
pub const BOOT_PDPT_ADDR: u64 = 0xA000;
/// The first of four boot page directories (identity map of 0-4 GiB with 2 MiB pages).
pub const BOOT_PD_ADDR: u64 = 0xB000;
/// Everything below this address belongs to the boot structures.
pub const LOW_RESERVED_END: u64 = 0x10_0000;
/// Where the guest image is linked and loaded.
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;
/// The guest image must end below this address; CMA regions start at or above it.
pub const BOOT_AREA_END: u64 = 0x20_0000;

/// Start of the MMIO hole: RAM below it, devices inside it.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the MMIO hole: RAM above 3 GiB continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xC000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The local APIC's default base.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

/// Guest memory limits the VMM accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Guest memory limits the VMM accepts.
pub const MAX_MEMORY: u64 = 64 << 30;

/// COM1: the serial console.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Writing a 32-bit status here ends the run with that status (like QEMU's isa-debug-exit,
/// but the value is passed through unchanged).
pub const EXIT_PORT: u16 = 0xf4;

/// Writing a byte here records a boot milestone ([`PROGRESS_ENTERED`], ...) with the VMM's
/// monotonic clock: how boot time is measured.
pub const PROGRESS_PORT: u16 = 0xf8;
/// Milestone: the guest's first instructions ran.
pub const PROGRESS_ENTERED: u8 = 1;
/// Milestone: the boot information was parsed and validated.
pub const PROGRESS_READY: u8 = 2;
/// Milestone: the agent channel is up (Hello sent).
pub const PROGRESS_AGENT_UP: u8 = 3;
/// Milestone: the workload has populated the lent memory.
pub const PROGRESS_POPULATED: u8 = 4;
/// Milestone: the page allocator and the guest's own page tables are up.
pub const PROGRESS_MM_READY: u8 = 5;

/// Guest exit status: success.
pub const EXIT_OK: u32 = 0;
/// Guest exit status: a CPU exception.
pub const EXIT_EXCEPTION: u32 = 3;
/// Guest exit status: a Rust panic in the guest.
pub const EXIT_PANIC: u32 = 4;
/// Guest exit status: the boot information did not validate.
pub const EXIT_BAD_BOOT_INFO: u32 = 5;
/// Guest exit status: a workload page failed its self-check.
pub const EXIT_INTEGRITY: u32 = 6;

/// Interrupt vector of the guest's local APIC timer.
pub const TIMER_VECTOR: u8 = 0x30;
/// First vector the VMM hands out to devices (MSI routed through irqfd); device `i` gets
/// `DEVICE_VECTOR_BASE + i`.
pub const DEVICE_VECTOR_BASE: u8 = 0x40;
/// The spurious-interrupt vector the guest programs into its local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Round `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Round `v` down to a multiple of `align` (a power of two).
pub const fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

/// The RAM ranges `[start, end)` of a guest with `mem_size` bytes: everything below the
/// MMIO hole, and the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> [(u64, u64); 2] {
    let low = mem_size.min(MMIO_HOLE_START);
    let high = mem_size - low;
    [(0, low), (MMIO_HOLE_END, MMIO_HOLE_END + high)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20)[0], (0, 256 << 20));
        assert_eq!(ram_ranges(256 << 20)[1].1 - ram_ranges(256 << 20)[1].0, 0);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_HOLE_START));
        assert_eq!(r[1], (MMIO_HOLE_END, MMIO_HOLE_END + (1 << 30)));
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 4096), None);
        assert_eq!(align_down(8191, 4096), 4096);
    }
}
