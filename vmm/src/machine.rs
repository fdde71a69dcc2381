//! The VMM: build a VM from a validated configuration, run it, stop it.
//!
//! The boot flow reads top to bottom in [`Vmm::new`]: guest image, KVM, guest memory, the
//! image and boot structures in it, the VM and its memory slots, devices, vCPUs. Nothing
//! runs until [`Vmm::start`].

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::layout::{EXIT_PORT, PROGRESS_PORT, SERIAL_PORT};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootDevice, BootError, GuestImage};
use crate::config::ValidConfig;
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::platform::{
    ExitPort, PlatformState, ProgressPort, SharedPlatform, monotonic_ns,
};
use crate::devices::legacy::serial::{Console, SerialDevice};
use crate::vstate::memory::{GuestRam, MemoryError};
use crate::vstate::vcpu::{ExitCounters, Vcpu, VcpuContext, VcpuControl, VcpuStop};
use crate::vstate::vm::{Vm, VmError, lock, open_kvm};

/// Errors of building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Guest image or boot information.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Device set-up.
    #[error("device set-up: {0}")]
    Bus(#[from] BusError),
    /// An eventfd or thread could not be created.
    #[error("{op}: {source}")]
    Os {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn os_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Os { op, source }
}

/// Run-time options that are not part of the VM's configuration.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// Echo the guest console to stdout.
    pub echo_console: bool,
}

impl Default for VmmOptions {
    fn default() -> Self {
        VmmOptions {
            kvm_path: PathBuf::from("/dev/kvm"),
            echo_console: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to the exit port.
    Exited(u32),
    /// The guest crashed; the diagnostic.
    Crashed(String),
    /// The VMM stopped the guest (shutdown request or timeout).
    Stopped,
}

/// Boot milestones as CLOCK_MONOTONIC nanoseconds (see [`monotonic_ns`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BootTimes {
    /// When the VMM started building the VM.
    pub vmm_start: u64,
    /// The guest's first instructions.
    pub entered: Option<u64>,
    /// The guest has validated its boot information.
    pub ready: Option<u64>,
    /// The agent channel is up.
    pub agent_up: Option<u64>,
    /// The workload has populated lent memory.
    pub populated: Option<u64>,
}

/// How a run ended, with what it measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Boot milestones.
    pub boot_times: BootTimes,
    /// VM exits to user space.
    pub exits: u64,
}

/// A built VM, not yet running.
pub struct Vmm {
    config: ValidConfig,
    vm: Arc<Vm>,
    vcpus: Vec<Vcpu>,
    control: Arc<VcpuControl>,
    counters: Arc<ExitCounters>,
    platform: SharedPlatform,
    console: Console,
    exit_evt: EventFd,
    started: u64,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("config", &self.config).finish()
    }
}

impl Vmm {
    /// Build the VM described by `config`.
    pub fn new(config: ValidConfig, options: &VmmOptions) -> Result<Self, VmmError> {
        let started = monotonic_ns();
        let image = match &config.kernel {
            Some(p) => GuestImage::File(p.clone()),
            None => GuestImage::Reference,
        };
        let kvm = open_kvm(&options.kvm_path)?;
        let ram = Arc::new(GuestRam::new(config.memory)?);
        let image = boot::load_guest(&ram, &image)?;
        crate::arch::write_boot_tables(&ram)?;
        let devices: Vec<BootDevice> = Vec::new();
        let info = boot::boot_info(&config, image, &devices)?;
        boot::write_boot_info(&ram, &info)?;
        let vm = Arc::new(Vm::new(&kvm, ram)?);

        let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("eventfd"))?;
        let console = Console::new(options.echo_console);
        let platform: SharedPlatform = Arc::new(Mutex::new(PlatformState::default()));
        let mut pio = Bus::default();
        pio.insert(
            u64::from(SERIAL_PORT),
            8,
            Arc::new(Mutex::new(SerialDevice::new(console.clone()))),
        )?;
        let exit_port = ExitPort::new(
            platform.clone(),
            exit_evt.try_clone().map_err(os_err("eventfd"))?,
        );
        pio.insert(u64::from(EXIT_PORT), 4, Arc::new(Mutex::new(exit_port)))?;
        pio.insert(
            u64::from(PROGRESS_PORT),
            1,
            Arc::new(Mutex::new(ProgressPort::new(platform.clone()))),
        )?;
        let pio = Arc::new(pio);
        let mmio = Arc::new(Bus::default());

        let control = Arc::new(VcpuControl::default());
        let counters = Arc::new(ExitCounters::default());
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let ctx = VcpuContext {
                vm: vm.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
                counters: counters.clone(),
                stop_evt: exit_evt.try_clone().map_err(os_err("eventfd"))?,
            };
            vcpus.push(Vcpu::new(&kvm, id, image.entry, ctx)?);
        }
        Ok(Vmm {
            config,
            vm,
            vcpus,
            control,
            counters,
            platform,
            console,
            exit_evt,
            started,
        })
    }

    /// Start the vCPUs.
    pub fn start(self) -> Result<RunningVmm, VmmError> {
        let mut threads = Vec::new();
        for (i, vcpu) in self.vcpus.into_iter().enumerate() {
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || vcpu.run())
                .map_err(os_err("spawn vCPU thread"))?;
            threads.push(t);
        }
        Ok(RunningVmm {
            config: self.config,
            vm: self.vm,
            threads,
            control: self.control,
            counters: self.counters,
            platform: self.platform,
            console: self.console,
            exit_evt: self.exit_evt,
            started: self.started,
        })
    }
}

/// A running VM.
pub struct RunningVmm {
    config: ValidConfig,
    vm: Arc<Vm>,
    threads: Vec<JoinHandle<VcpuStop>>,
    control: Arc<VcpuControl>,
    counters: Arc<ExitCounters>,
    platform: SharedPlatform,
    console: Console,
    exit_evt: EventFd,
    started: u64,
}

impl RunningVmm {
    /// The validated configuration.
    pub fn config(&self) -> &ValidConfig {
        &self.config
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// The guest console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Exit counters.
    pub fn exits(&self) -> &Arc<ExitCounters> {
        &self.counters
    }

    /// vCPU pause/resume.
    pub fn vcpu_control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Boot milestones reached so far.
    pub fn boot_times(&self) -> BootTimes {
        let state = lock(&self.platform);
        let at = |code: u8| {
            state
                .milestones
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, t)| *t)
        };
        BootTimes {
            vmm_start: self.started,
            entered: at(protocol::layout::PROGRESS_ENTERED),
            ready: at(protocol::layout::PROGRESS_READY),
            agent_up: at(protocol::layout::PROGRESS_AGENT_UP),
            populated: at(protocol::layout::PROGRESS_POPULATED),
        }
    }

    /// Wait until a boot milestone is reached, the guest stops, or `timeout` passes.
    pub fn wait_milestone(&self, code: u8, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.platform)
                .milestones
                .iter()
                .any(|(c, _)| *c == code)
            {
                return true;
            }
            if self.outcome().is_some() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How the run ended, if it has.
    pub fn outcome(&self) -> Option<RunOutcome> {
        if let Some(diag) = lock(&self.control.crash).clone() {
            return Some(RunOutcome::Crashed(diag));
        }
        lock(&self.platform).exit_status.map(RunOutcome::Exited)
    }

    /// Block until the guest exits or crashes, or `timeout` passes (then stop it).
    pub fn wait(self, timeout: Option<Duration>) -> RunReport {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let outcome = match self.outcome() {
                Some(o) => Some(o),
                None if deadline.is_some_and(|d| Instant::now() >= d) => Some(RunOutcome::Stopped),
                None => None,
            };
            if let Some(outcome) = outcome {
                let report = RunReport {
                    outcome,
                    boot_times: self.boot_times(),
                    exits: self.counters.total(),
                };
                self.shutdown();
                return report;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ms = left.map_or(1000, |l| l.as_millis().clamp(1, 1000) as i32);
            wait_readable(self.exit_evt.as_raw_fd(), ms);
            let _ = self.exit_evt.read();
        }
    }

    /// Stop every vCPU and join their threads.
    pub fn shutdown(self) {
        self.control.stop_all();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// poll(2) one fd for reading, up to `ms` milliseconds.
fn wait_readable(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}
