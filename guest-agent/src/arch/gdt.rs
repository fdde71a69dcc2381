//! The guest's own GDT and TSS. The TSS exists for its interrupt stack table: every
//! interrupt and exception runs on a dedicated stack, because Rust code below the stack
//! pointer (the red zone) must not be overwritten by an interrupt frame.

use core::arch::asm;
use core::ptr::addr_of;

const KERNEL_CODE: u16 = 0x08;
const KERNEL_DATA: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// IST index (1-based, as the IDT stores it) used by every gate.
pub const IST_INDEX: u8 = 1;
/// IST index for double faults: a separate stack, so a fault on the first still reports.
pub const IST_DOUBLE_FAULT: u8 = 2;

const IST_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_SIZE]);

static mut IST_STACK: Stack = Stack([0; IST_SIZE]);
static mut DF_STACK: Stack = Stack([0; IST_SIZE]);

#[repr(C, packed)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

static mut TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: core::mem::size_of::<Tss>() as u16,
};

static mut GDT: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // 64-bit code
    0x00cf_9300_0000_ffff, // data
    0,                     // TSS, low half (filled in at init)
    0,                     // TSS, high half
];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Install the GDT and TSS and reload every segment register.
pub fn init() {
    // SAFETY: runs once on the boot CPU before interrupts are enabled; nothing else holds
    // references to these statics.
    unsafe {
        let ist_top = addr_of!(IST_STACK) as u64 + IST_SIZE as u64;
        let df_top = addr_of!(DF_STACK) as u64 + IST_SIZE as u64;
        TSS.ist[usize::from(IST_INDEX) - 1] = ist_top;
        TSS.ist[usize::from(IST_DOUBLE_FAULT) - 1] = df_top;
        let base = addr_of!(TSS) as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // Available 64-bit TSS (type 9), present.
        GDT[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        GDT[4] = base >> 32;
        let ptr = Pointer {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: addr_of!(GDT) as u64,
        };
        asm!(
            "lgdt [{ptr}]",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "mov fs, {data:x}",
            "mov gs, {data:x}",
            // Reload CS with a far return.
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            data = in(reg) KERNEL_DATA,
            code = in(reg) u64::from(KERNEL_CODE),
            tss = in(reg) TSS_SELECTOR,
            tmp = out(reg) _,
        );
    }
}

/// The code selector gates use.
pub const fn code_selector() -> u16 {
    KERNEL_CODE
}
