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

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use protocol::boot::DeviceKind;
use protocol::layout::{
    DEVICE_VECTOR_BASE, EXIT_PORT, PROGRESS_PORT, SERIAL_PORT, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use std::sync::atomic::{AtomicBool, Ordering};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::BootEntry;
use crate::arch::acpi::VirtioMmioDevice;
use crate::boot::{self, BootDevice, BootError, GuestImage, linux};
use crate::config::{GuestKind, ValidConfig, region_desc};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::platform::{
    ExitPort, PlatformState, ProgressPort, SharedPlatform, monotonic_ns,
};
use crate::devices::legacy::power::{
    ACPI_SLEEP_PORT, AcpiSleep, I8042, I8042_COMMAND_PORT, I8042_DATA_PORT, PowerEvent,
};
use crate::devices::legacy::rtc::{RTC_PORT, Rtc};
use crate::devices::legacy::serial::{Console, SerialDevice, forward_stdin};
use crate::devices::virtio::agent::event_handler::AgentEventHandler;
use crate::devices::virtio::agent::{AgentChannel, AgentDevice};
use crate::devices::virtio::capture::event_handler::CaptureEventHandler;
use crate::devices::virtio::capture::{CaptureDevice, CaptureMetrics};
use crate::devices::virtio::mmio::{
    Interrupt, MmioTransport, QUEUE_NOTIFY, RingGuard, VirtioDevice,
};
use crate::grant::{GrantManager, GrantPolicy};
use crate::sync::lock;
use crate::vstate::memory::{GuestRam, MemoryError};
use crate::vstate::slots::SlotError;
use crate::vstate::vcpu::{ExitCounters, Vcpu, VcpuContext, VcpuControl, VcpuStop};
use crate::vstate::vm::{Vm, VmError, open_kvm};
use cma::{Cma, CmaError};

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
    /// The CMA regions could not be set up.
    #[error("CMA set-up: {0}")]
    Cma(#[from] CmaError),
    /// A memory slot could not be changed.
    #[error(transparent)]
    Slot(#[from] SlotError),
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
    /// Eviction timeouts and copy mode.
    pub policy: GrantPolicy,
    /// Back all guest memory with host pages at start.
    pub prealloc: bool,
    /// Forward the VMM's stdin to a Linux guest's serial console.
    pub console_input: bool,
}

impl Default for VmmOptions {
    fn default() -> Self {
        VmmOptions {
            kvm_path: PathBuf::from("/dev/kvm"),
            echo_console: true,
            policy: GrantPolicy::default(),
            prealloc: false,
            console_input: false,
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
    /// The guest powered the machine off (ACPI S5; Linux `poweroff`).
    PoweredOff,
    /// The guest reset the machine (Linux `reboot`, or a panic with `panic=-1`).
    Reset,
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
    /// The guest's page allocator and page tables are up.
    #[serde(default)]
    pub mm_ready: Option<u64>,
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
    agent: AgentSetup,
    captures: Vec<CaptureSetup>,
    grants: Arc<GrantManager>,
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
        let kvm = open_kvm(&options.kvm_path)?;
        let ram = Arc::new(GuestRam::new(config.memory)?);
        if options.prealloc {
            ram.prealloc()?;
        }
        crate::arch::write_boot_tables(&ram)?;
        let vm = Arc::new(Vm::new(&kvm, ram.clone())?);
        // Private regions are never lent: the guest cannot even address them.
        for r in config.regions.iter().filter(|r| r.private) {
            vm.revoke(r.base, r.size)?;
        }
        if config.guest == GuestKind::Linux {
            vm.create_pit()?;
        }

        let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("eventfd"))?;
        let console = Console::new(options.echo_console);
        let platform: SharedPlatform = Arc::new(Mutex::new(PlatformState::default()));
        let (pio, serial) = legacy_devices(&vm, &console, &platform, &exit_evt)?;
        let pio = Arc::new(pio);
        if options.console_input && config.guest == GuestKind::Linux {
            forward_stdin(serial).map_err(os_err("spawn stdin thread"))?;
        }
        let mut mmio = Bus::default();
        let counters = Arc::new(ExitCounters::default());
        let control = Arc::new(VcpuControl::default());
        let cma = Arc::new(Cma::new(&config.regions, &config.map)?);
        let irq = |index| DeviceIrq::for_guest(config.guest, index);
        let agent = AgentSetup::new(&vm, &cma, &mut mmio, irq(0))?;
        let grants = Arc::new(GrantManager::new(
            cma,
            vm.clone(),
            agent.channel.clone(),
            options.policy,
            counters.clone(),
            control.clone(),
        ));
        let mut captures = Vec::new();
        for (i, name) in config.capture.iter().enumerate() {
            captures.push(CaptureSetup::new(
                i,
                name,
                &vm,
                &grants,
                &mut mmio,
                irq(i + 1),
            )?);
        }
        let devices: Vec<BootDevice> = std::iter::once(agent.boot_device())
            .chain(captures.iter().map(CaptureSetup::boot_device))
            .collect();
        let entry = match config.guest {
            GuestKind::Reference => boot_reference(&config, &ram, &devices)?,
            GuestKind::Linux => boot_linux(&config, &ram, &devices)?,
        };
        let mmio = Arc::new(mmio);

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
            vcpus.push(Vcpu::new(&kvm, id, &entry, ctx)?);
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
            agent,
            captures,
            grants,
        })
    }

    /// Start the agent thread and the vCPUs.
    pub fn start(self) -> Result<RunningVmm, VmmError> {
        let agent_thread = self.agent.spawn()?;
        let mut capture_metrics = Vec::new();
        let mut capture_devices = Vec::new();
        let mut device_threads = Vec::new();
        for c in self.captures {
            capture_metrics.push((c.name.clone(), lock(&c.device).metrics.clone()));
            capture_devices.push(c.device.clone());
            device_threads.push(c.spawn()?);
        }
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
            agent_thread,
            device_threads,
            capture_metrics,
            capture_devices,
            grants: self.grants,
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
    agent_thread: DeviceThread,
    device_threads: Vec<DeviceThread>,
    capture_metrics: Vec<(String, Arc<CaptureMetrics>)>,
    capture_devices: Vec<Arc<Mutex<CaptureDevice>>>,
    grants: Arc<GrantManager>,
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

    /// The allocation state machine: alloc and free chunks for devices.
    pub fn grants(&self) -> &Arc<GrantManager> {
        &self.grants
    }

    /// The capture devices' counters, by device name.
    pub fn capture_metrics(&self) -> &[(String, Arc<CaptureMetrics>)] {
        &self.capture_metrics
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
            mm_ready: at(protocol::layout::PROGRESS_MM_READY),
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
        let platform = lock(&self.platform);
        if let Some(status) = platform.exit_status {
            return Some(RunOutcome::Exited(status));
        }
        platform.power.map(|p| match p {
            PowerEvent::PowerOff => RunOutcome::PoweredOff,
            PowerEvent::Reset => RunOutcome::Reset,
        })
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

    /// Stop every vCPU and the agent thread, and join them. Callers waiting on the guest
    /// get an error rather than waiting for their timeouts.
    pub fn shutdown(self) {
        self.grants.agent().stop();
        self.control.stop_all();
        for t in self.threads {
            let _ = t.join();
        }
        for t in self.device_threads {
            t.stop();
        }
        // Devices give their chunks back (the guest is gone: only the bits are cleared).
        for d in &self.capture_devices {
            lock(d).reset();
        }
        self.agent_thread.stop();
    }
}

/// The reference guest: its ELF image, the boot-information block.
fn boot_reference(
    config: &ValidConfig,
    ram: &GuestRam,
    devices: &[BootDevice],
) -> Result<BootEntry, VmmError> {
    let image = match &config.kernel {
        Some(p) => GuestImage::File(p.clone()),
        None => GuestImage::Reference,
    };
    let image = boot::load_guest(ram, &image)?;
    let info = boot::boot_info(config, image, devices)?;
    boot::write_boot_info(ram, &info)?;
    Ok(BootEntry::reference(image.entry))
}

/// A Linux guest: the bzImage, its initramfs, the ACPI tables, the zero page.
fn boot_linux(
    config: &ValidConfig,
    ram: &GuestRam,
    devices: &[BootDevice],
) -> Result<BootEntry, VmmError> {
    let path = config
        .kernel
        .as_ref()
        .ok_or_else(|| BootError::Linux("no kernel image".into()))?;
    let image = linux::load_kernel(ram, path)?;
    let e820 = linux::e820_map(config);
    let initrd = match &config.initrd {
        Some(p) => Some(linux::load_initrd(ram, p, &e820, &image)?),
        None => None,
    };
    let acpi_devices: Vec<VirtioMmioDevice> = devices
        .iter()
        .map(|d| VirtioMmioDevice {
            base: d.base,
            size: d.size,
            gsi: d.gsi,
        })
        .collect();
    let rsdp = crate::arch::acpi::write_tables(ram, config.vcpus, &acpi_devices)?;
    let cmdline = linux::cmdline(config);
    linux::write_zero_page(
        ram,
        &linux::ZeroPage {
            image: &image,
            cmdline: &cmdline,
            initrd,
            e820: &e820,
            rsdp,
        },
    )?;
    Ok(BootEntry::linux(
        image.entry,
        linux::ZERO_PAGE_ADDR,
        linux::BOOT_STACK,
    ))
}

/// The serial console (interrupting on IOAPIC pin 4), the exit and progress ports, the
/// CMOS clock, and the i8042 reset and ACPI sleep ports through which Linux guests reboot
/// and power off.
fn legacy_devices(
    vm: &Vm,
    console: &Console,
    platform: &SharedPlatform,
    exit_evt: &EventFd,
) -> Result<(Bus, Arc<Mutex<SerialDevice>>), VmmError> {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("eventfd"));
    let serial_irq = evt()?;
    vm.add_pin_irqfd(&serial_irq, crate::arch::acpi::SERIAL_GSI)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        console.clone(),
        Some(serial_irq),
    )));
    let mut pio = Bus::default();
    pio.insert(u64::from(SERIAL_PORT), 8, serial.clone())?;
    let exit = || exit_evt.try_clone().map_err(os_err("eventfd"));
    pio.insert(
        u64::from(I8042_DATA_PORT),
        u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT + 1),
        Arc::new(Mutex::new(I8042::new(platform.clone(), exit()?))),
    )?;
    pio.insert(
        u64::from(ACPI_SLEEP_PORT),
        1,
        Arc::new(Mutex::new(AcpiSleep::new(platform.clone(), exit()?))),
    )?;
    pio.insert(u64::from(RTC_PORT), 2, Arc::new(Mutex::new(Rtc::default())))?;
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
    Ok((pio, serial))
}

/// How a virtio device interrupts the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceIrq {
    /// An MSI straight to the boot CPU's local APIC (the reference guest).
    Msi(u8),
    /// An IOAPIC pin (Linux: the ACPI tables give each virtio-mmio device one).
    Pin(u32),
}

/// IOAPIC pin of the first virtio device (after the legacy ISA pins Linux expects in use).
const FIRST_DEVICE_GSI: u32 = 5;

impl DeviceIrq {
    /// The interrupt of virtio device `index` (0 = the agent).
    fn for_guest(guest: GuestKind, index: usize) -> Self {
        match guest {
            GuestKind::Reference => DeviceIrq::Msi(DEVICE_VECTOR_BASE + index as u8),
            GuestKind::Linux => DeviceIrq::Pin(FIRST_DEVICE_GSI + index as u32),
        }
    }

    /// (MSI vector, IOAPIC pin) as the boot structures describe them; 0 where unused.
    fn described(self) -> (u8, u32) {
        match self {
            DeviceIrq::Msi(v) => (v, 0),
            DeviceIrq::Pin(gsi) => (0, gsi),
        }
    }
}

/// Put `device` behind a virtio-mmio window at `window`: interrupts through an irqfd,
/// QueueNotify through an ioeventfd (returned, for the device thread).
fn attach_virtio(
    vm: &Arc<Vm>,
    cma: &Cma,
    mmio: &mut Bus,
    device: Arc<Mutex<dyn VirtioDevice>>,
    window: u64,
    irq: DeviceIrq,
) -> Result<EventFd, VmmError> {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("eventfd"));
    let irqfd = evt()?;
    match irq {
        DeviceIrq::Msi(vector) => vm.add_msi_irqfd(&irqfd, vector)?,
        DeviceIrq::Pin(gsi) => vm.add_pin_irqfd(&irqfd, gsi)?,
    }
    let transport = MmioTransport::new(
        device,
        vm.ram().clone(),
        Interrupt::new(irqfd),
        rings_outside(cma),
    );
    mmio.insert(window, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
    let notify = evt()?;
    vm.add_mmio_ioeventfd(&notify, window + QUEUE_NOTIFY)?;
    Ok(notify)
}

/// Virtqueue rings must stay out of every CMA region: the VMM uses them for the device's
/// whole life, and a range there may be granted to a device at any time.
fn rings_outside(cma: &Cma) -> RingGuard {
    let regions: Vec<(u64, u64)> = cma.regions().iter().map(|r| (r.base, r.end())).collect();
    Arc::new(move |gpa, len| {
        let end = gpa.saturating_add(len);
        regions.iter().all(|&(s, e)| end <= s || gpa >= e)
    })
}

/// The agent channel's pieces until the agent thread starts.
struct AgentSetup {
    channel: AgentChannel,
    device: Arc<Mutex<AgentDevice>>,
    notify: EventFd,
    kick: EventFd,
    irq: DeviceIrq,
}

impl AgentSetup {
    /// Create the agent device at the first virtio-mmio window: interrupts through an
    /// irqfd, QueueNotify through an ioeventfd; its config space lists the regions.
    fn new(vm: &Arc<Vm>, cma: &Arc<Cma>, mmio: &mut Bus, irq: DeviceIrq) -> Result<Self, VmmError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("eventfd"));
        let kick = evt()?;
        let channel = AgentChannel::new(kick.try_clone().map_err(os_err("eventfd"))?);
        let taken = cma.clone();
        let regions: Vec<_> = cma.regions().iter().filter_map(region_desc).collect();
        let device = Arc::new(Mutex::new(AgentDevice::new(
            vm.ram().clone(),
            &regions,
            channel.shared().clone(),
            Arc::new(move |gpa, len| taken.is_taken(gpa, len)),
        )));
        let notify = attach_virtio(vm, cma, mmio, device.clone(), VIRTIO_MMIO_BASE, irq)?;
        Ok(AgentSetup {
            channel,
            device,
            notify,
            kick,
            irq,
        })
    }

    fn boot_device(&self) -> BootDevice {
        let (vector, gsi) = self.irq.described();
        BootDevice {
            kind: DeviceKind::Agent,
            base: VIRTIO_MMIO_BASE,
            size: VIRTIO_MMIO_SIZE,
            vector,
            gsi,
            name: "agent".into(),
        }
    }

    /// Run the agent device on its own thread (callers block on the channel, never it).
    fn spawn(self) -> Result<DeviceThread, VmmError> {
        let handler = AgentEventHandler::new(self.device, self.notify, self.kick);
        DeviceThread::spawn("cma-agent", handler)
    }
}

/// A device's own event loop on its own thread.
struct DeviceThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl DeviceThread {
    fn spawn(
        name: &str,
        handler: impl MutEventSubscriber + Send + 'static,
    ) -> Result<Self, VmmError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let Ok(mut events) =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
                else {
                    return;
                };
                events.add_subscriber(Arc::new(Mutex::new(handler)));
                while !flag.load(Ordering::SeqCst) {
                    if events.run_with_timeout(50).is_err() {
                        break;
                    }
                }
            })
            .map_err(os_err("spawn device thread"))?;
        Ok(DeviceThread { stop, handle })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// A frame-capture device until its thread starts.
struct CaptureSetup {
    name: String,
    device: Arc<Mutex<CaptureDevice>>,
    notify: EventFd,
    window: u64,
    irq: DeviceIrq,
}

impl CaptureSetup {
    /// Capture device `index` (0-based) in the virtio-mmio window after the agent's.
    fn new(
        index: usize,
        name: &str,
        vm: &Arc<Vm>,
        grants: &Arc<GrantManager>,
        mmio: &mut Bus,
        irq: DeviceIrq,
    ) -> Result<Self, VmmError> {
        let window = VIRTIO_MMIO_BASE + (index as u64 + 1) * VIRTIO_MMIO_SIZE;
        let taken = grants.cma().clone();
        let device = Arc::new(Mutex::new(CaptureDevice::new(
            name,
            vm.ram().clone(),
            grants.clone(),
            Arc::new(move |gpa, len| taken.is_taken(gpa, len)),
        )));
        let notify = attach_virtio(vm, grants.cma(), mmio, device.clone(), window, irq)?;
        Ok(CaptureSetup {
            name: name.to_string(),
            device,
            notify,
            window,
            irq,
        })
    }

    fn boot_device(&self) -> BootDevice {
        let (vector, gsi) = self.irq.described();
        BootDevice {
            kind: DeviceKind::Capture,
            base: self.window,
            size: VIRTIO_MMIO_SIZE,
            vector,
            gsi,
            name: self.name.clone(),
        }
    }

    fn spawn(self) -> Result<DeviceThread, VmmError> {
        let handler =
            CaptureEventHandler::new(self.device, self.notify).map_err(os_err("capture timer"))?;
        DeviceThread::spawn(&format!("capture-{}", self.name), handler)
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
