//! Guest RAM: one memfd, mapped once, split into the RAM ranges of the address map.
//!
//! Backing RAM with a memfd means untouched memory costs the host nothing and a range can
//! be zeroed and given back to the host with one `fallocate(PUNCH_HOLE)`, which is how a
//! freed chunk is scrubbed.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use protocol::layout::{PAGE_SIZE, ram_ranges};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    VolatileSlice,
};

/// Errors of guest RAM handling.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create guest memory of {size} bytes: {source}")]
    Create {
        /// Requested size.
        size: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
    /// A range that is not inside guest RAM.
    #[error("range [{gpa:#x}, +{len:#x}) is not inside guest RAM")]
    OutOfRange {
        /// First byte.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Punching a hole failed.
    #[error("cannot zero range [{gpa:#x}, +{len:#x}): {source}")]
    Punch {
        /// First byte.
        gpa: u64,
        /// Length.
        len: u64,
        /// OS error.
        source: std::io::Error,
    },
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    file: File,
    size: u64,
    /// `(start, end, host address of start)` of each RAM range, for fast translation.
    host: Vec<(u64, u64, u64)>,
    /// Every page has been given host backing ([`GuestRam::prealloc`]).
    preallocated: std::sync::atomic::AtomicBool,
}

impl GuestRam {
    /// Create `size` bytes of zeroed guest RAM laid out as [`ram_ranges`] says.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let create_err = |source| MemoryError::Create { size, source };
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or
        // -1, and we check for -1 before taking ownership of the fd.
        let fd = unsafe { libc::memfd_create(c"cma-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(create_err(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created, valid descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(create_err)?;
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for (start, end) in ram_ranges(size) {
            if end > start {
                let f = file.try_clone().map_err(create_err)?;
                ranges.push((
                    GuestAddress(start),
                    (end - start) as usize,
                    Some(FileOffset::new(f, offset)),
                ));
                offset += end - start;
            }
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(&ranges)
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        let host = memory
            .iter()
            .map(|r| {
                let start = r.start_addr().0;
                let ptr = r
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .map_or(0, |p| p as u64);
                (start, start + r.len(), ptr)
            })
            .collect();
        Ok(GuestRam {
            memory,
            file,
            size,
            host,
            preallocated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The vm-memory view, for loaders, virtqueues and devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[gpa, gpa+len)` lies inside one RAM range.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        ram_ranges(self.size)
            .iter()
            .any(|&(s, e)| gpa >= s && end <= e)
    }

    /// The host mapping of `[gpa, gpa+len)`, which must lie inside one RAM range.
    pub fn slice(&self, gpa: u64, len: u64) -> Result<VolatileSlice<'_>, MemoryError> {
        let err = || MemoryError::OutOfRange { gpa, len };
        if !self.contains(gpa, len) {
            return Err(err());
        }
        let region = self.memory.find_region(GuestAddress(gpa)).ok_or_else(err)?;
        let offset = vm_memory::MemoryRegionAddress(gpa - region.start_addr().0);
        region.get_slice(offset, len as usize).map_err(|_| err())
    }

    /// The host virtual address of `gpa`'s byte (for KVM memory slots).
    pub fn host_address(&self, gpa: u64) -> Result<u64, MemoryError> {
        self.host_range(gpa, 1)
            .ok_or(MemoryError::OutOfRange { gpa, len: 1 })
    }

    /// The host address of `[gpa, gpa+len)` if it lies inside one RAM range (the fast
    /// path of page copies).
    pub fn host_range(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        self.host
            .iter()
            .find(|&&(s, e, _)| gpa >= s && end <= e)
            .map(|&(s, _, h)| h + (gpa - s))
    }

    /// Copy `len` bytes from `src` to `dst` inside guest RAM at host speed.
    pub fn copy(&self, src: u64, dst: u64, len: u64) -> Result<(), MemoryError> {
        let from = self.slice(src, len)?;
        let to = self.slice(dst, len)?;
        from.copy_to_volatile_slice(to);
        Ok(())
    }

    /// Read a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        self.memory
            .read_obj::<u64>(GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange { gpa, len: 8 })
    }

    /// Read bytes into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: buf.len() as u64,
            })
    }

    /// Write bytes from `buf`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.memory
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: buf.len() as u64,
            })
    }

    /// Zero `[gpa, gpa+len)` (page aligned) and give its host pages back: the next read sees
    /// zeros, and the host memory is freed until the guest touches it again.
    pub fn punch(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        if !gpa.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::OutOfRange { gpa, len });
        }
        let offset = self.file_offset(gpa, len)?;
        // SAFETY: fallocate on our own memfd with a range inside it; no memory is accessed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Punch {
                gpa,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Offset in the memfd of `[gpa, gpa+len)`.
    fn file_offset(&self, gpa: u64, len: u64) -> Result<u64, MemoryError> {
        let mut offset = 0u64;
        for (start, end) in ram_ranges(self.size) {
            if gpa >= start && gpa.checked_add(len).is_some_and(|e| e <= end) {
                return Ok(offset + gpa - start);
            }
            offset += end - start;
        }
        Err(MemoryError::OutOfRange { gpa, len })
    }

    /// Back every page of guest RAM now (`--prealloc`): no first-touch faults later, at the
    /// price of the whole size in host memory.
    pub fn prealloc(&self) -> Result<(), MemoryError> {
        for &(start, end, host) in &self.host {
            // SAFETY: `[host, host + (end - start))` is our own mapping of this RAM range;
            // MADV_POPULATE_WRITE faults pages in and changes no contents.
            let rc = unsafe {
                libc::madvise(
                    host as *mut libc::c_void,
                    (end - start) as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc != 0 {
                return Err(MemoryError::Create {
                    size: self.size,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        self.preallocated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether every page has host backing already.
    pub fn is_preallocated(&self) -> bool {
        self.preallocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of guest RAM the host actually backs right now (memfd blocks in use).
    pub fn resident_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_reads_writes_copies_and_punches() {
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.write(0x10_0000, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        ram.read(0x10_0000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        ram.copy(0x10_0000, 0x20_0000, 4096).unwrap();
        ram.read(0x20_0000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(ram.resident_bytes() >= 8192);
        ram.punch(0x20_0000, 4096).unwrap();
        ram.read(0x20_0000, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(ram.punch(0x20_0001, 4096).is_err());
        assert!(ram.read(16 << 20, &mut b).is_err());
        assert!(ram.slice(u64::MAX - 1, 4).is_err());
        assert!(ram.copy(0, 16 << 20, 4096).is_err());
    }

    #[test]
    fn big_guests_have_ram_above_4g() {
        let ram = GuestRam::new(5 << 30).unwrap();
        assert!(ram.contains(0xBFFF_F000, 4096));
        assert!(!ram.contains(0xC000_0000, 4096));
        assert!(ram.contains(1 << 32, 4096));
        ram.write((1 << 32) + 8, &[9]).unwrap();
        ram.punch(1 << 32, 4096).unwrap();
        assert_eq!(ram.read_u64(1 << 32).unwrap(), 0);
    }
}
