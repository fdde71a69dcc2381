//! The IDT and the interrupt entry stubs.
//!
//! Every vector we use has a stub that pushes a uniform frame (a zero where the CPU pushes
//! no error code, then the vector), saves the caller-saved registers, and calls [`super::interrupts::dispatch`]. All gates run on an IST stack.

use core::arch::{asm, global_asm};
use core::ptr::addr_of;

use super::gdt;

macro_rules! stubs {
    ($($name:ident: $vector:literal $(, $err:ident)?;)*) => {
        $(
            global_asm!(
                concat!(".global ", stringify!($name)),
                concat!(stringify!($name), ":"),
                stubs!(@push $($err)?),
                concat!("push ", stringify!($vector)),
                "jmp interrupt_common",
            );
        )*
        unsafe extern "C" {
            $(fn $name();)*
        }
        /// `(vector, stub)` for every vector with a handler.
        fn stub_table() -> &'static [(u8, unsafe extern "C" fn())] {
            &[$(($vector, $name as unsafe extern "C" fn()),)*]
        }
    };
    (@push err) => { "" };
    (@push) => { "push 0" };
}

stubs! {
    isr0: 0; isr1: 1; isr2: 2; isr3: 3; isr4: 4; isr5: 5; isr6: 6; isr7: 7;
    isr8: 8, err; isr9: 9; isr10: 10, err; isr11: 11, err; isr12: 12, err; isr13: 13, err;
    isr14: 14, err; isr15: 15; isr16: 16; isr17: 17, err; isr18: 18; isr19: 19; isr20: 20;
    isr21: 21, err; isr22: 22; isr23: 23; isr24: 24; isr25: 25; isr26: 26; isr27: 27;
    isr28: 28; isr29: 29, err; isr30: 30, err; isr31: 31;
    isr_timer: 0x30;
    isr_dev0: 0x40; isr_dev1: 0x41; isr_dev2: 0x42; isr_dev3: 0x43;
    isr_dev4: 0x44; isr_dev5: 0x45; isr_dev6: 0x46; isr_dev7: 0x47;
    isr_spurious: 0xff;
}

global_asm!(
    "interrupt_common:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    // The IST stack is 16-byte aligned at entry; 16 words pushed keep it so. The guest is
    // built without SSE and takes interrupts only while halted, so there is no vector
    // state to save.
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 16",
    "iretq",
    dispatch = sym super::interrupts::dispatch,
);

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    flags: 0,
    offset_mid: 0,
    offset_high: 0,
    _reserved: 0,
};

static mut IDT: [Gate; 256] = [EMPTY; 256];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Fill and load the IDT.
pub fn init() {
    // SAFETY: runs once on the boot CPU with interrupts disabled; the IDT is a static that
    // lives forever.
    unsafe {
        for &(vector, stub) in stub_table() {
            let addr = stub as usize as u64;
            let ist = if vector == 8 {
                gdt::IST_DOUBLE_FAULT
            } else {
                gdt::IST_INDEX
            };
            IDT[usize::from(vector)] = Gate {
                offset_low: addr as u16,
                selector: gdt::code_selector(),
                ist,
                flags: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                _reserved: 0,
            };
        }
        let ptr = Pointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: addr_of!(IDT) as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack));
    }
}

/// Load an empty IDT: the next exception cannot be delivered and the CPU triple-faults.
/// Only for the `fault=triple` test mode.
pub fn load_empty() {
    let ptr = Pointer { limit: 0, base: 0 };
    // SAFETY: deliberately breaks exception delivery; only used to test how the VMM reports
    // a triple fault.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(nostack)) };
}
