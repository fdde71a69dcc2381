//! The driver side of the virtio-mmio transport (register layout version 2).

use core::ptr::{read_volatile, write_volatile};

const MAGIC: u32 = 0x7472_6976;
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

/// Why a device could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// No virtio-mmio device at the address.
    NotVirtio,
    /// A different device id than expected.
    WrongDevice(u32),
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// The device refused our features.
    FeaturesRefused,
    /// A queue is missing or smaller than we need.
    Queue(u32),
    /// No memory for queues or buffers.
    NoMemory,
}

/// One device's registers.
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The device whose window starts at `base` (identity-mapped, uncached).
    pub fn new(base: u64) -> Self {
        Mmio { base }
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio window from the boot information, mapped by our
        // page tables; each register access is one 32-bit MMIO exit to the VMM.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as `read`.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Reset, check identity, negotiate VERSION_1 only.
    pub fn begin(&self, device_id: u32) -> Result<(), InitError> {
        if self.read(0x00) != MAGIC || self.read(0x04) != 2 {
            return Err(InitError::NotVirtio);
        }
        let id = self.read(0x08);
        if id != device_id {
            return Err(InitError::WrongDevice(id));
        }
        self.write(0x70, 0);
        self.write(0x70, STATUS_ACKNOWLEDGE);
        self.write(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(0x14, 1);
        if self.read(0x10) & 1 == 0 {
            return Err(InitError::NoVersion1);
        }
        self.write(0x24, 0);
        self.write(0x20, 0);
        self.write(0x24, 1);
        self.write(0x20, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(0x70, s);
        if self.read(0x70) & STATUS_FEATURES_OK == 0 {
            return Err(InitError::FeaturesRefused);
        }
        Ok(())
    }

    /// Configure queue `index` with `size` entries at the given ring addresses.
    pub fn setup_queue(
        &self,
        index: u32,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), InitError> {
        self.write(0x30, index);
        if self.read(0x34) < u32::from(size) {
            return Err(InitError::Queue(index));
        }
        self.write(0x38, u32::from(size));
        for (off, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            self.write(off, addr as u32);
            self.write(off + 4, (addr >> 32) as u32);
        }
        self.write(0x44, 1);
        if self.read(0x44) != 1 {
            return Err(InitError::Queue(index));
        }
        Ok(())
    }

    /// Set DRIVER_OK: the device is live.
    pub fn finish(&self) -> Result<(), InitError> {
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.write(0x70, s);
        if self.read(0x70) & STATUS_DRIVER_OK == 0 {
            return Err(InitError::Queue(u32::MAX));
        }
        Ok(())
    }

    /// Tell the device queue `index` has new buffers (an ioeventfd: no exit to the VMM).
    pub fn notify(&self, index: u32) {
        self.write(0x50, index);
    }
}
