//! cma-guest: the reference guest kernel.
//!
//! Entered in 64-bit mode at `_start` with the boot-information address in `%rdi` and the
//! VMM's identity map active. Boot order: CPU tables → boot information → own page tables
//! → memory manager → drivers → agent.

#![no_std]
#![no_main]

mod arch;
#[macro_use]
mod console;
mod drivers;
mod hw;
mod memory;
mod rt;
mod serve;

use core::arch::global_asm;

use console::{Dec, Hex, Hex16};
use guest_agent::cmdline;
use guest_agent::workload::lent_pages;
use protocol::boot::{BootInfo, DeviceKind, MemKind};
use protocol::layout::{
    BOOT_INFO_MAX_SIZE, EXIT_BAD_BOOT_INFO, EXIT_OK, EXIT_PORT, PROGRESS_MM_READY, PROGRESS_PORT,
    PROGRESS_READY,
};

use arch::port::{outb, outl};

const BOOT_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct BootStack([u8; BOOT_STACK_SIZE]);

/// The boot CPU's stack. Guest memory starts zeroed (a fresh memfd), so `.bss` needs no
/// clearing — which matters when every guest instruction costs a microsecond.
static mut BOOT_STACK: BootStack = BootStack([0; BOOT_STACK_SIZE]);

global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "lea rsp, [rip + {stack} + {size}]",
    // Milestone: first guest instructions (the VMM timestamps the port write).
    "mov al, 1",
    "out {port}, al",
    "call {kmain}",
    "2: hlt",
    "jmp 2b",
    stack = sym BOOT_STACK,
    size = const BOOT_STACK_SIZE,
    port = const PROGRESS_PORT,
    kmain = sym kmain,
);

/// End the run with `status` (the VMM exits with it).
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    arch::cpu::halt_forever()
}

/// Record a boot milestone with the VMM.
pub fn progress(milestone: u8) {
    outb(PROGRESS_PORT, milestone);
}

extern "C" fn kmain(boot_info_addr: u64) -> ! {
    arch::init_cpu();
    // SAFETY: the VMM wrote the boot information at this address inside the identity map
    // it entered us with; we only read it, once, before anything else uses that memory.
    let raw = unsafe {
        core::slice::from_raw_parts(boot_info_addr as *const u8, BOOT_INFO_MAX_SIZE as usize)
    };
    let info = match BootInfo::decode(raw) {
        Ok(info) => info,
        Err(e) => {
            println!("cma-guest: invalid boot information: {e}");
            exit(EXIT_BAD_BOOT_INFO)
        }
    };
    progress(PROGRESS_READY);
    let args = info.cmdline();
    let pages = cmdline::get_u64(args, "workload.pages", u64::from(lent_pages(&info))) as u32;
    let (mut mm, mut hw, carved) = match memory::init(&info, pages) {
        Ok(m) => m,
        Err(e) => {
            println!("cma-guest: cannot set up memory: {e}");
            exit(EXIT_BAD_BOOT_INFO)
        }
    };
    progress(PROGRESS_MM_READY);
    print_memory_map(&info);
    memory::print_stats(&mm, &carved);
    run_test_fault(args);
    match cmdline::get(args, "mode") {
        Some("hang") => loop {
            // A guest that never exits, to test the VMM's --timeout.
            arch::cpu::wait_for_interrupt();
        },
        Some("boot") => exit(EXIT_OK),
        _ => {}
    }
    match info.devices().iter().find(|d| d.kind == DeviceKind::Agent) {
        Some(dev) => serve::run(&info, dev, &mut mm, &mut hw, carved.manifest_gpa, pages),
        None => exit(EXIT_OK),
    }
}

/// One line per memory-map entry, in the style of Linux's e820 map, then one per region.
fn print_memory_map(info: &BootInfo) {
    println!(
        "cma-guest: boot info v{}: {} MiB, {} vCPU(s), {} map entries, {} CMA regions, {} devices",
        Dec(protocol::boot::BOOT_VERSION.into()),
        Dec(info.mem_size >> 20),
        Dec(info.vcpus.into()),
        Dec(info.mem_map().len() as u64),
        Dec(info.regions().len() as u64),
        Dec(info.devices().len() as u64)
    );
    for e in info.mem_map() {
        let kind = match e.kind {
            MemKind::Ram => "ram",
            MemKind::Reserved => "reserved",
            MemKind::Cma => "cma",
        };
        print!(
            "cma-guest: [mem {}-{}] {kind}",
            Hex16(e.base),
            Hex16(e.end() - 1)
        );
        if let Some(r) = info.region(e.region).filter(|_| e.kind == MemKind::Cma) {
            let how = if r.is_lent() { "lent" } else { "private" };
            print!(" {} id={} {how}", r.name.as_str(), Dec(r.id.into()));
        }
        println!();
    }
    for d in info.devices() {
        let kind = match d.kind {
            DeviceKind::Agent => "agent",
            DeviceKind::Capture => "capture",
        };
        println!(
            "cma-guest: device {} {kind} mmio={} vector={}",
            d.name.as_str(),
            Hex(d.base),
            Hex(d.vector.into())
        );
    }
}

/// `fault=ud|pf|gp|de|triple`: crash on purpose, to test how the VMM reports it.
fn run_test_fault(args: &str) {
    let Some(kind) = cmdline::get(args, "fault") else {
        return;
    };
    println!("cma-guest: faulting on purpose ({kind})");
    // SAFETY: none of this is safe, deliberately: each arm raises the exception it names.
    unsafe {
        match kind {
            "ud" => core::arch::asm!("ud2"),
            "pf" => {
                let p = 0x0000_7fff_0000_0000u64 as *const u64;
                core::ptr::read_volatile(p);
            }
            "gp" => {
                let p = 0x8000_0000_0000_0000u64 as *const u64;
                core::ptr::read_volatile(p);
            }
            "de" => {
                core::arch::asm!("xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
            }
            "triple" => {
                arch::idt::load_empty();
                core::arch::asm!("ud2");
            }
            _ => println!("cma-guest: unknown fault kind '{kind}'"),
        }
    }
}
