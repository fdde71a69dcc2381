//! x86-64 boot: the state a vCPU needs to start the guest directly in 64-bit mode.
//!
//! The guest is entered at its entry point with paging on (an identity map of the first
//! 4 GiB with 2 MiB pages), a flat GDT in guest memory, SSE enabled and interrupts off;
//! the reference guest finds its boot-information address in `%rdi`, Linux its zero page
//! in `%rsi` (the 64-bit boot protocol). Both replace GDT, IDT and page tables with their
//! own as soon as they run. [`acpi`] describes the machine to Linux guests.

pub mod acpi;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use protocol::layout::{
    BOOT_GDT_ADDR, BOOT_INFO_ADDR, BOOT_PD_ADDR, BOOT_PDPT_ADDR, BOOT_PML4_ADDR, PAGE_SIZE,
};

use crate::vstate::memory::{GuestRam, MemoryError};

/// CR0: PE | MP | ET | NE | WP | AM | PG.
const CR0: u64 = 0x8005_0033;
/// CR4: PAE | OSFXSR | OSXMMEXCPT.
const CR4: u64 = 0x620;
/// EFER: LME | LMA.
const EFER: u64 = 0x500;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// Null, 64-bit code, data, and a (placeholder) TSS descriptor.
const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_ffff,
];

/// Write the boot GDT and the identity-mapping page tables into guest memory.
pub fn write_boot_tables(ram: &GuestRam) -> Result<(), MemoryError> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    ram.write(BOOT_GDT_ADDR, &gdt)?;
    // PML4[0] -> PDPT; PDPT[0..4] -> four PDs; each PD maps 1 GiB with 2 MiB pages.
    ram.write(BOOT_PML4_ADDR, &(BOOT_PDPT_ADDR | 0x3).to_le_bytes())?;
    for i in 0..4u64 {
        let pd = BOOT_PD_ADDR + i * PAGE_SIZE;
        ram.write(BOOT_PDPT_ADDR + i * 8, &(pd | 0x3).to_le_bytes())?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) + (j << 21)) | 0x83).to_le_bytes())
            .collect();
        ram.write(pd, &entries)?;
    }
    Ok(())
}

fn segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for 64-bit mode with the boot GDT and page tables.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment(CODE_SELECTOR, 0xb, 1, 0);
    let data = segment(DATA_SELECTOR, 0x3, 0, 1);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        limit: 0xffff,
        selector: TSS_SELECTOR,
        type_: 0xb,
        s: 0,
        g: 0,
        db: 0,
        ..segment(TSS_SELECTOR, 0xb, 0, 0)
    };
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0;
    sregs.cr3 = BOOT_PML4_ADDR;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
    sregs
}

/// Where and how a guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// First instruction.
    pub rip: u64,
    /// First argument: the boot-information block (reference guest).
    pub rdi: u64,
    /// Second argument: the zero page (Linux).
    pub rsi: u64,
    /// Initial stack pointer, or 0 for none (the reference guest sets its own first).
    pub rsp: u64,
}

impl BootEntry {
    /// The reference guest: its ELF entry, the boot information in `%rdi`.
    pub fn reference(entry: u64) -> Self {
        BootEntry {
            rip: entry,
            rdi: BOOT_INFO_ADDR,
            rsi: 0,
            rsp: 0,
        }
    }

    /// Linux: the 64-bit entry, the zero page in `%rsi`, a small boot stack.
    pub fn linux(entry: u64, zero_page: u64, stack: u64) -> Self {
        BootEntry {
            rip: entry,
            rdi: 0,
            rsi: zero_page,
            rsp: stack,
        }
    }
}

/// General registers at entry, interrupts off.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    kvm_regs {
        rip: entry.rip,
        rdi: entry.rdi,
        rsi: entry.rsi,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87 and SSE control words at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_covers_4g() {
        let ram = GuestRam::new(16 << 20).unwrap();
        write_boot_tables(&ram).unwrap();
        assert_eq!(ram.read_u64(BOOT_PML4_ADDR).unwrap(), BOOT_PDPT_ADDR | 3);
        let last_pd = BOOT_PD_ADDR + 3 * PAGE_SIZE;
        assert_eq!(ram.read_u64(BOOT_PDPT_ADDR + 24).unwrap(), last_pd | 3);
        assert_eq!(
            ram.read_u64(last_pd + 511 * 8).unwrap(),
            ((3u64 << 30) + (511u64 << 21)) | 0x83
        );
        let sregs = boot_sregs(kvm_sregs::default());
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.efer, 0x500);
    }
}
