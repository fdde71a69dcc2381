//! Port-I/O and MMIO dispatch: a sorted table of address ranges, each owned by a device.

use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A device that answers reads and writes in its address range.
pub trait BusDevice: Send {
    /// Fill `data` with the value at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Take `data` written at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus set-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("device range [{0:#x}, +{1:#x}) overlaps another device")]
    Overlap(u64, u64),
}

/// An address space of devices (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    devices: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, l, _)| (b, l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// Add `device` at `[base, base+len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).ok_or(BusError::Overlap(base, len))?;
        if len == 0
            || self
                .devices
                .iter()
                .any(|(b, l, _)| base < b + l && *b < end)
        {
            return Err(BusError::Overlap(base, len));
        }
        let at = self.devices.partition_point(|(b, _, _)| *b < base);
        self.devices.insert(at, (base, len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let i = self.devices.partition_point(|(b, _, _)| *b <= addr);
        let (base, len, dev) = self.devices.get(i.checked_sub(1)?)?;
        let end = addr.checked_add(size as u64)?;
        (end <= base + len).then_some((addr - base, dev))
    }

    /// Dispatch a read; `false` if no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; `false` if no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::default();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0xf4, 4, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        assert_eq!(
            bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(vec![])))),
            Err(BusError::Overlap(0x3fc, 8))
        );
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(a.lock().unwrap().0, vec![(7, 7)]);
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.read(0x3f7, &mut d));
        let mut wide = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut wide), "access straddling the end");
        assert!(!bus.read(u64::MAX, &mut wide));
    }
}
