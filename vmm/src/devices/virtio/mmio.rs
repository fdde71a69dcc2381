//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! The transport owns the registers: feature negotiation, the device status state machine
//! and each queue's configuration. When the driver sets DRIVER_OK, the configured queues
//! are handed to the device ([`VirtioDevice::activate`]), which from then on processes
//! them on its own thread. Queue notifications arrive through an ioeventfd registered on
//! `QueueNotify`, so they cost the guest no exit to the VMM.
//!
//! Everything here is driven by guest writes, so nothing panics on a value: bad sizes,
//! unaligned or out-of-RAM rings and out-of-order status writes put the device in
//! NEEDS_RESET or are ignored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::sync::lock;
use crate::vstate::memory::GuestRam;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// Our vendor id: "CMAV".
pub const VENDOR_ID: u32 = 0x5641_4d43;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

/// Offset of the QueueNotify register (for the ioeventfd).
pub const QUEUE_NOTIFY: u64 = 0x50;
/// Offset of the configuration space.
const CONFIG: u64 = 0x100;

/// The used-buffer bit of InterruptStatus.
const INT_USED_RING: u32 = 1;

/// Why a device refused its queues.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue's rings are not valid.
    #[error("queue {0} is not valid")]
    BadQueue(usize),
    /// The device cannot start.
    #[error("device cannot start: {0}")]
    Device(String),
}

/// The device side of an interrupt: an irqfd, and the InterruptStatus bits it reports.
#[derive(Debug, Clone)]
pub struct Interrupt {
    irqfd: Arc<EventFd>,
    status: Arc<AtomicU32>,
}

impl Interrupt {
    /// An interrupt raised through `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            irqfd: Arc::new(irqfd),
            status: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Tell the driver there are used buffers.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        // An eventfd write only fails if the counter would overflow: the interrupt is
        // already pending then.
        let _ = self.irqfd.write(1);
    }

    /// The irqfd, for registering with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// What a virtio device provides to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id.
    fn device_id(&self) -> u32;
    /// Feature bits offered (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Start with the driver's queues (DRIVER_OK).
    fn activate(&mut self, queues: Vec<Queue>, interrupt: Interrupt) -> Result<(), ActivateError>;
    /// Stop and forget the queues (the driver reset the device).
    fn reset(&mut self);
}

/// Says whether the guest may place a ring at `[gpa, gpa+len)`.
pub type RingGuard = Arc<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// A virtio device behind the MMIO registers.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    ram: Arc<GuestRam>,
    rings_allowed: RingGuard,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wrap `device`; its interrupts go through `interrupt`.
    ///
    /// `rings_allowed` vets each queue's rings: the VMM reads and writes them for as long as
    /// the device lives, so they must never lie in memory that may be granted to a device
    /// later (CMA regions).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        ram: Arc<GuestRam>,
        interrupt: Interrupt,
        rings_allowed: RingGuard,
    ) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        MmioTransport {
            device,
            ram,
            rings_allowed,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
        }
    }

    fn device_features(&self) -> u64 {
        lock(&self.device).features() | F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are configurable only before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => 2,
            0x08 => lock(&self.device).device_id(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => self.write_driver_features(v),
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    // An invalid size leaves the queue unusable; `is_valid` refuses it later.
                    q.set_size(v as u16);
                }
            }
            0x44 => self.write_queue_ready(v),
            // Notifications normally arrive through the ioeventfd; a write that reaches us
            // anyway (no ioeventfd) is harmless to drop: devices also poll on every event.
            QUEUE_NOTIFY => {}
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.write_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => self.write_queue_address(offset, v),
            _ => {}
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let ram = self.ram.clone();
        let allowed = self.rings_allowed.clone();
        if let Some(q) = self.selected_queue() {
            q.set_ready(v == 1);
            if v == 1 && !(q.is_valid(ram.memory()) && rings_in(q, &allowed)) {
                q.set_ready(false);
            }
        }
    }

    fn write_queue_address(&mut self, offset: u64, v: u32) {
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset {
            0x80 => q.set_desc_table_address(Some(v), None),
            0x84 => q.set_desc_table_address(None, Some(v)),
            0x90 => q.set_avail_ring_address(Some(v), None),
            0x94 => q.set_avail_ring_address(None, Some(v)),
            0xa0 => q.set_used_ring_address(Some(v), None),
            _ => q.set_used_ring_address(None, Some(v)),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec gives.
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            self.status = v & !STATUS_FEATURES_OK;
            return;
        }
        if added & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 {
                self.status |= STATUS_FAILED;
                return;
            }
            self.status = v;
            self.activate();
            return;
        }
        self.status = v & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED);
    }

    /// The driver may accept only what we offer, and must accept VERSION_1.
    fn features_acceptable(&self) -> bool {
        let offered = self.device_features();
        self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if self.queues.iter().any(|q| {
            !q.ready() || !q.is_valid(self.ram.memory()) || !rings_in(q, &self.rings_allowed)
        }) {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        // The device gets its own copies; ours keep answering register reads.
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        if lock(&self.device)
            .activate(queues, self.interrupt.clone())
            .is_err()
        {
            self.status |= STATUS_NEEDS_RESET;
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.reset();
        }
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// Whether all three rings of `q` lie where `allowed` permits.
fn rings_in(q: &Queue, allowed: &RingGuard) -> bool {
    let n = u64::from(q.size());
    [
        (q.desc_table(), 16 * n),
        (q.avail_ring(), 6 + 2 * n),
        (q.used_ring(), 6 + 8 * n),
    ]
    .iter()
    .all(|&(gpa, len)| allowed(gpa, len))
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            lock(&self.device).read_config(offset - CONFIG, data);
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Dummy {
        active: bool,
        resets: u32,
    }

    impl VirtioDevice for Dummy {
        fn device_id(&self) -> u32 {
            0x4341
        }
        fn features(&self) -> u64 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn activate(&mut self, queues: Vec<Queue>, _: Interrupt) -> Result<(), ActivateError> {
            assert_eq!(queues.len(), 2);
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
            self.resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let ram = Arc::new(GuestRam::new(16 << 20).unwrap());
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let rings: RingGuard = Arc::new(|gpa, _| gpa < 0x30_0000);
        (MmioTransport::new(dev.clone(), ram, irq, rings), dev)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x10_0000u32), (1, 0x20_0000)] {
            w(t, 0x30, i);
            w(t, 0x38, 16);
            w(t, 0x80, base);
            w(t, 0x90, base + 0x1000);
            w(t, 0xa0, base + 0x2000);
            w(t, 0x44, 1);
            assert_eq!(r(t, 0x44), 1);
        }
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, dev) = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 0x4341);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 offered");
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        setup_queues(&mut t);
        w(&mut t, 0x70, 0xf);
        assert!(dev.lock().unwrap().active);
        let mut cfg = [0u8; 4];
        t.read(0x100, &mut cfg);
        assert_eq!(cfg, [0xab; 4]);
        w(&mut t, 0x70, 0);
        assert!(!dev.lock().unwrap().active);
        assert_eq!(r(&mut t, 0x70), 0);
    }

    #[test]
    fn guest_mistakes_do_not_activate() {
        let (mut t, dev) = transport();
        // Features not including VERSION_1: FEATURES_OK is refused.
        w(&mut t, 0x70, 3);
        w(&mut t, 0x70, 3 | STATUS_FEATURES_OK);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK fails the device.
        w(&mut t, 0x70, 3 | STATUS_DRIVER_OK);
        assert!(!dev.lock().unwrap().active);
        w(&mut t, 0x70, 0);
        // Rings outside guest RAM: the queue never becomes ready.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_0000);
        w(&mut t, 0x84, 0xffff);
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 0);
        // Rings where the VMM does not allow them (CMA memory, in the VMM).
        w(&mut t, 0x84, 0);
        w(&mut t, 0x80, 0x40_0000);
        w(&mut t, 0x90, 0x40_1000);
        w(&mut t, 0xa0, 0x40_2000);
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 0, "rings refused");
        // A size that is not a power of two.
        w(&mut t, 0x38, 3);
        w(&mut t, 0x30, 99);
        assert_eq!(r(&mut t, 0x34), 0, "no such queue");
        w(&mut t, 0x38, 16);
        // Odd sizes and offsets are ignored.
        t.write(0x70, &[1]);
        t.write(0x71, &[1, 2, 3, 4]);
        let mut b = [0u8; 2];
        t.read(0x0, &mut b);
        assert_eq!(b, [0, 0]);
        // Activation with unready queues needs a reset.
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 3);
        w(&mut t, 0x70, 3 | STATUS_FEATURES_OK);
        w(&mut t, 0x70, 3 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(!dev.lock().unwrap().active);
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = transport();
        t.interrupt.signal_used();
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
    }
}
