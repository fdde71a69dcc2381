//! vCPUs: 64-bit boot state, the run loop, exit accounting, and pause/stop by signal.
//!
//! Each vCPU runs `KVM_RUN` on its own thread. Exits to user space are dispatched to the
//! port-I/O or MMIO bus; an MMIO exit inside guest RAM means either a range revoked by an
//! exclusive grant (refused: reads see all-ones, writes are dropped, the access is counted
//! and reported) or a slot being re-split at that moment (completed from guest memory under
//! the slot lock). A triple fault, a failed entry or any exit we do not expect ends the run
//! with a one-line diagnostic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::vm::{Vm, VmError};
use crate::arch;
use crate::devices::bus::Bus;
use crate::sync::lock;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Local APIC registers (offsets in the KVM_GET_LAPIC page): LVT LINT0 and LINT1.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery modes (bits 8-10).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// Fast-string operations (`rep movs`), as firmware enables them.
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// Exits to user space, by kind, across all vCPUs.
#[derive(Debug, Default, Serialize)]
pub struct ExitCounters {
    /// Every exit to user space.
    pub total: AtomicU64,
    /// Port I/O (serial console, platform ports).
    pub pio: AtomicU64,
    /// MMIO to device registers.
    pub mmio: AtomicU64,
    /// RAM accesses completed by the VMM while a slot was being re-split.
    pub ram_emulated: AtomicU64,
    /// Guest accesses to revoked (exclusively granted) ranges, refused.
    pub revoked_refused: AtomicU64,
    /// MMIO to addresses nothing claims.
    pub unclaimed: AtomicU64,
    /// Signal-induced exits (pause, stop).
    pub interrupted: AtomicU64,
}

impl ExitCounters {
    /// Total exits so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Stopped,
    /// The guest crashed (triple fault, failed entry, unexpected exit); the diagnostic.
    Crashed(String),
}

/// State shared between the VMM and its vCPU threads.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause_requested: AtomicBool,
    paused: Mutex<usize>,
    cond: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    /// The first crash diagnostic.
    pub crash: Mutex<Option<String>>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) handler of the signal that kicks a vCPU out of `KVM_RUN`.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The handler does nothing: its only effect is interrupting KVM_RUN with EINTR.
        let _ = register_signal_handler(SIGRTMIN(), kick_handler);
    });
}

impl VcpuControl {
    /// Register the calling thread as a vCPU thread, so that kicks reach it.
    fn register_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        lock(&self.threads).push(me);
    }

    fn unregister_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        lock(&self.threads).retain(|t| *t != me);
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            // SAFETY: `t` is a live vCPU thread: threads unregister before they exit, under
            // the same lock.
            unsafe { libc::pthread_kill(*t, SIGRTMIN()) };
        }
    }

    fn running_threads(&self) -> usize {
        lock(&self.threads).len()
    }

    /// Ask every vCPU to stop and wait until all have left `KVM_RUN`.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cond.notify_all();
        // A kick can land just before a thread enters KVM_RUN and be lost: repeat it.
        while self.running_threads() > 0 {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Hold every vCPU outside the guest until [`VcpuControl::resume_all`].
    pub fn pause_all(&self) {
        self.pause_requested.store(true, Ordering::SeqCst);
        loop {
            let wanted = self.running_threads();
            let paused = lock(&self.paused);
            if *paused >= wanted || self.stopping() {
                return;
            }
            drop(paused);
            self.kick_all();
            let paused = lock(&self.paused);
            let _ = self
                .cond
                .wait_timeout(paused, Duration::from_millis(1))
                .map_err(|_| ());
        }
    }

    /// Let paused vCPUs run again.
    pub fn resume_all(&self) {
        self.pause_requested.store(false, Ordering::SeqCst);
        self.cond.notify_all();
    }

    fn wait_while_paused(&self) {
        if !self.pause_requested.load(Ordering::SeqCst) {
            return;
        }
        let mut paused = lock(&self.paused);
        *paused += 1;
        self.cond.notify_all();
        while self.pause_requested.load(Ordering::SeqCst) && !self.stopping() {
            paused = self
                .cond
                .wait_timeout(paused, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *paused -= 1;
    }
}

/// One vCPU, ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    io: VcpuIo,
    control: Arc<VcpuControl>,
    stop_evt: EventFd,
}

/// What the run loop dispatches exits to (apart from the vCPU fd, which `KVM_RUN` borrows).
struct VcpuIo {
    id: u8,
    vm: Arc<Vm>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    counters: Arc<ExitCounters>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.io.id).finish()
    }
}

/// What a vCPU needs from the rest of the VMM.
pub struct VcpuContext {
    /// The VM.
    pub vm: Arc<Vm>,
    /// Port-I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Pause/stop control.
    pub control: Arc<VcpuControl>,
    /// Exit counters.
    pub counters: Arc<ExitCounters>,
    /// Signalled when this vCPU stops on its own (crash).
    pub stop_evt: EventFd,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

impl Vcpu {
    /// Create vCPU `id` and put it in 64-bit mode at `entry`. Secondary vCPUs wait for
    /// their INIT/SIPI (the in-kernel local APIC holds them) and start where the guest says.
    pub fn new(
        kvm: &Kvm,
        id: u8,
        entry: &arch::BootEntry,
        ctx: VcpuContext,
    ) -> Result<Self, VmError> {
        install_kick_handler();
        let fd = ctx
            .vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        for e in cpuid.as_mut_slice() {
            match e.function {
                // Initial APIC id in EBX[31:24]; the hypervisor bit; the TSC-deadline timer,
                // which KVM emulates but does not list as supported (Linux then needs no
                // timer calibration).
                1 => {
                    e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
                    e.ecx |= CPUID_1_ECX_HYPERVISOR;
                    if tsc_deadline {
                        e.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                    }
                }
                0xb | 0x1f => e.edx = u32::from(id),
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .map_err(|_| VmError::Kvm {
            op: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        fd.set_sregs(&arch::boot_sregs(sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_regs(&arch::boot_regs(entry))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        set_lint(&fd)?;
        fd.set_fpu(&arch::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        Ok(Vcpu {
            fd,
            io: VcpuIo {
                id,
                vm: ctx.vm,
                pio: ctx.pio,
                mmio: ctx.mmio,
                counters: ctx.counters,
            },
            control: ctx.control,
            stop_evt: ctx.stop_evt,
        })
    }

    /// Run until stopped or crashed (call on the vCPU's own thread).
    pub fn run(mut self) -> VcpuStop {
        self.control.register_thread();
        let outcome = self.run_loop();
        if let VcpuStop::Crashed(diag) = &outcome {
            lock(&self.control.crash).get_or_insert_with(|| diag.clone());
            let _ = self.stop_evt.write(1);
        }
        self.control.unregister_thread();
        outcome
    }

    fn run_loop(&mut self) -> VcpuStop {
        let io = &self.io;
        loop {
            if self.control.stopping() {
                return VcpuStop::Stopped;
            }
            self.control.wait_while_paused();
            let exit = self.fd.run();
            io.counters.total.fetch_add(1, Ordering::Relaxed);
            let unexpected = match exit {
                Ok(VcpuExit::IoIn(port, data)) => {
                    io.counters.pio.fetch_add(1, Ordering::Relaxed);
                    if !io.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    io.counters.pio.fetch_add(1, Ordering::Relaxed);
                    io.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    io.mmio_read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    io.mmio_write(addr, data);
                    None
                }
                Ok(VcpuExit::Intr) => {
                    io.counters.interrupted.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some("triple fault (KVM_EXIT_SHUTDOWN)".to_string()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(format!(
                    "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )),
                Ok(VcpuExit::InternalError) => Some(internal_error(&mut self.fd)),
                Ok(other) => Some(format!("unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    io.counters.interrupted.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(e) => Some(format!("KVM_RUN failed: {e}")),
            };
            if let Some(what) = unexpected {
                return VcpuStop::Crashed(diagnostic(&self.fd, io.id, &what));
            }
        }
    }
}

impl VcpuIo {
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.mmio.read(addr, data) {
            self.counters.mmio.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = data.len() as u64;
        let outcome = self
            .vm
            .emulate_ram_access(addr, len, |ram| ram.read(addr, data).is_ok());
        if outcome != RamAccess::Emulated {
            data.fill(0xff);
        }
        self.count_ram_access(addr, outcome);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.mmio.write(addr, data) {
            self.counters.mmio.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let outcome = self
            .vm
            .emulate_ram_access(addr, data.len() as u64, |ram| ram.write(addr, data).is_ok());
        self.count_ram_access(addr, outcome);
    }

    /// Account for an MMIO exit that no device claimed.
    fn count_ram_access(&self, addr: u64, outcome: RamAccess) {
        match outcome {
            RamAccess::Emulated => {
                self.counters.ram_emulated.fetch_add(1, Ordering::Relaxed);
            }
            RamAccess::Refused => {
                let n = self
                    .counters
                    .revoked_refused
                    .fetch_add(1, Ordering::Relaxed);
                if n < 8 {
                    eprintln!(
                        "cma-vmm: refused guest access to granted range at {addr:#x} (vCPU {})",
                        self.id
                    );
                }
            }
            RamAccess::NotRam => {
                self.counters.unclaimed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Wire LINT0 to ExtINT and LINT1 to NMI ("virtual wire" mode), as firmware leaves the
/// local APIC for an operating system.
fn set_lint(fd: &VcpuFd) -> Result<(), VmError> {
    let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let mut set_mode = |reg: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[reg + i] as u8;
        }
        let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    };
    set_mode(APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_mode(APIC_LVT_LINT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}

fn diagnostic(fd: &VcpuFd, id: u8, what: &str) -> String {
    let regs = fd.get_regs().ok();
    let sregs = fd.get_sregs().ok();
    let mut s = format!("guest crashed on vCPU {}: {what}", id);
    if let Some(r) = regs {
        s += &format!(
            "; rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rdi={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rdi
        );
    }
    if let Some(sr) = sregs {
        s += &format!(
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
        );
    }
    s
}

/// KVM_EXIT_INTERNAL_ERROR with its sub-error and data words.
fn internal_error(fd: &mut VcpuFd) -> String {
    let run = fd.get_kvm_run();
    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union is the
    // one KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "KVM internal error (suberror {}, data {:x?})",
        internal.suberror,
        &internal.data[..n]
    )
}

/// How an MMIO exit inside guest RAM was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamAccess {
    /// Completed from guest memory (a slot was being re-split).
    Emulated,
    /// The address lies in a revoked range: refused.
    Refused,
    /// Not guest RAM at all.
    NotRam,
}
