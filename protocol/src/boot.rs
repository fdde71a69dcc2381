//! The boot-information block: what the VMM tells the guest about its machine.
//!
//! Written once by the VMM at [`crate::layout::BOOT_INFO_ADDR`], read and validated once by
//! the guest. Layout (little-endian, version 1):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "CMABOOT1"
//!      8     4  version
//!     12     4  total size in bytes
//!     16     4  FNV-1a checksum of the whole block, computed with this field zero
//!     20     4  flags (reserved, zero)
//!     24     8  guest memory size in bytes
//!     32     2  memory-map entries      34  2  CMA regions
//!     36     2  devices                 38  2  vCPUs
//!     40     2  command-line length     42 22  reserved, zero
//!     64        memory map: 24 bytes each {base u64, size u64, kind u32, region id u32}
//!               CMA regions: 56 bytes each {id u32, flags u32, base u64, size u64, name 32}
//!               devices: 48 bytes each {kind u32, vector u32, base u64, size u64, name 24}
//!               command line (UTF-8)
//! ```
//! A name field is one length byte followed by the name's bytes, zero-padded.

use crate::layout::{PAGE_SIZE, PAGEBLOCK_SIZE};
use crate::wire::{
    DecodeError, fnv1a, get_array, get_u8, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64,
};

/// "CMABOOT1", little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"CMABOOT1");
/// The layout version this build writes and reads.
pub const BOOT_VERSION: u32 = 1;

/// At most this many memory-map entries.
pub const MAX_MEM_ENTRIES: usize = 64;
/// At most this many CMA regions.
pub const MAX_REGIONS: usize = 16;
/// At most this many devices.
pub const MAX_DEVICES: usize = 8;
/// At most this many bytes of guest command line.
pub const MAX_CMDLINE: usize = 512;
/// At most this many bytes in a region or device name.
pub const MAX_NAME: usize = 23;

const HEADER_SIZE: usize = 64;
const MEM_ENTRY_SIZE: usize = 24;
const REGION_SIZE: usize = 56;
const DEVICE_SIZE: usize = 48;
const REGION_NAME_FIELD: usize = 32;
const DEVICE_NAME_FIELD: usize = 24;
const CHECKSUM_OFFSET: usize = 16;

/// The largest block this version can produce.
pub const MAX_BOOT_INFO_SIZE: usize = HEADER_SIZE
    + MAX_MEM_ENTRIES * MEM_ENTRY_SIZE
    + MAX_REGIONS * REGION_SIZE
    + MAX_DEVICES * DEVICE_SIZE
    + MAX_CMDLINE;

/// What a memory-map entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    /// Ordinary RAM: the guest's to use for anything.
    Ram,
    /// A CMA region (see [`RegionDesc`] for whether it is lent to the guest).
    Cma,
    /// Not for the guest's allocator: boot structures, the guest image.
    Reserved,
}

impl MemKind {
    fn to_u32(self) -> u32 {
        match self {
            MemKind::Ram => 1,
            MemKind::Cma => 2,
            MemKind::Reserved => 3,
        }
    }

    fn from_u32(v: u32) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(MemKind::Ram),
            2 => Ok(MemKind::Cma),
            3 => Ok(MemKind::Reserved),
            _ => Err(DecodeError::BadField("memory kind")),
        }
    }
}

/// One range of the guest-physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    /// First byte of the range.
    pub base: u64,
    /// Length in bytes (a multiple of the page size).
    pub size: u64,
    /// What the range is.
    pub kind: MemKind,
    /// For [`MemKind::Cma`], the region's id; otherwise [`NO_REGION`].
    pub region: u32,
}

/// The region id of entries that are not CMA regions.
pub const NO_REGION: u32 = u32::MAX;

impl MemEntry {
    /// One byte past the end of the range.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// A short ASCII name (`[A-Za-z0-9_.-]`, 1 to [`MAX_NAME`] bytes), stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl Name {
    /// A name from a string; `None` if it is empty, too long or has other characters.
    pub fn new(s: &str) -> Option<Self> {
        if !is_valid_name(s) {
            return None;
        }
        let mut bytes = [0u8; MAX_NAME];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Name {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        // Only valid ASCII ever gets in (see `new` and `decode`).
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }

    fn encode(&self, out: &mut [u8]) {
        out[0] = self.len;
        out[1..1 + usize::from(self.len)].copy_from_slice(&self.bytes[..usize::from(self.len)]);
    }

    fn decode(field: &[u8]) -> Result<Self, DecodeError> {
        let len = usize::from(get_u8(field, 0)?);
        let bytes = field
            .get(1..1 + len)
            .ok_or(DecodeError::BadField("name length"))?;
        let s = core::str::from_utf8(bytes).map_err(|_| DecodeError::BadField("name"))?;
        Name::new(s).ok_or(DecodeError::BadField("name"))
    }
}

impl core::fmt::Debug for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Whether `s` is a valid region or device name.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Region flag: never lent to the guest; the guest must not touch it.
pub const REGION_PRIVATE: u32 = 1;

/// A CMA region as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// The VMM's id for the region (its index in the configuration).
    pub id: u32,
    /// [`REGION_PRIVATE`] or zero.
    pub flags: u32,
    /// First byte (pageblock aligned).
    pub base: u64,
    /// Length in bytes (whole pageblocks).
    pub size: u64,
    /// The region's configured name.
    pub name: Name,
}

impl RegionDesc {
    /// Whether the guest may place movable pages in the region.
    pub fn is_lent(&self) -> bool {
        self.flags & REGION_PRIVATE == 0
    }
}

/// What kind of device a [`DeviceDesc`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CMA agent channel (virtio-mmio).
    Agent,
    /// A frame-capture device (virtio-mmio).
    Capture,
}

impl DeviceKind {
    fn to_u32(self) -> u32 {
        match self {
            DeviceKind::Agent => 1,
            DeviceKind::Capture => 2,
        }
    }

    fn from_u32(v: u32) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(DeviceKind::Agent),
            2 => Ok(DeviceKind::Capture),
            _ => Err(DecodeError::BadField("device kind")),
        }
    }
}

/// A virtio-mmio device the guest should drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDesc {
    /// Which driver to bind.
    pub kind: DeviceKind,
    /// The interrupt vector the device's irqfd delivers (an MSI to the boot CPU).
    pub vector: u32,
    /// The MMIO window's first byte.
    pub base: u64,
    /// The MMIO window's size.
    pub size: u64,
    /// The device's name (what map rules match on).
    pub name: Name,
}

/// Why a [`BootInfo`] could not take one more item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoFull {
    /// More than [`MAX_MEM_ENTRIES`] memory-map entries.
    MemoryMap,
    /// More than [`MAX_REGIONS`] regions.
    Regions,
    /// More than [`MAX_DEVICES`] devices.
    Devices,
    /// A command line longer than [`MAX_CMDLINE`].
    Cmdline,
}

/// The decoded boot information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// Configured guest memory in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u16,
    mem: [MemEntry; MAX_MEM_ENTRIES],
    n_mem: usize,
    regions: [RegionDesc; MAX_REGIONS],
    n_regions: usize,
    devices: [DeviceDesc; MAX_DEVICES],
    n_devices: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
}

const EMPTY_NAME: Name = Name {
    len: 0,
    bytes: [0; MAX_NAME],
};

impl BootInfo {
    /// An empty block for a guest of `mem_size` bytes and `vcpus` vCPUs.
    pub const fn new(mem_size: u64, vcpus: u16) -> Self {
        BootInfo {
            mem_size,
            vcpus,
            mem: [MemEntry {
                base: 0,
                size: 0,
                kind: MemKind::Reserved,
                region: NO_REGION,
            }; MAX_MEM_ENTRIES],
            n_mem: 0,
            regions: [RegionDesc {
                id: 0,
                flags: 0,
                base: 0,
                size: 0,
                name: EMPTY_NAME,
            }; MAX_REGIONS],
            n_regions: 0,
            devices: [DeviceDesc {
                kind: DeviceKind::Agent,
                vector: 0,
                base: 0,
                size: 0,
                name: EMPTY_NAME,
            }; MAX_DEVICES],
            n_devices: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
        }
    }

    /// The memory map, sorted by address.
    pub fn mem_map(&self) -> &[MemEntry] {
        &self.mem[..self.n_mem]
    }

    /// The CMA regions.
    pub fn regions(&self) -> &[RegionDesc] {
        &self.regions[..self.n_regions]
    }

    /// The devices.
    pub fn devices(&self) -> &[DeviceDesc] {
        &self.devices[..self.n_devices]
    }

    /// The guest command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The region with id `id`.
    pub fn region(&self, id: u32) -> Option<&RegionDesc> {
        self.regions().iter().find(|r| r.id == id)
    }

    /// Append a memory-map entry.
    pub fn push_mem(&mut self, e: MemEntry) -> Result<(), BootInfoFull> {
        let slot = self
            .mem
            .get_mut(self.n_mem)
            .ok_or(BootInfoFull::MemoryMap)?;
        *slot = e;
        self.n_mem += 1;
        Ok(())
    }

    /// Append a region.
    pub fn push_region(&mut self, r: RegionDesc) -> Result<(), BootInfoFull> {
        let slot = self
            .regions
            .get_mut(self.n_regions)
            .ok_or(BootInfoFull::Regions)?;
        *slot = r;
        self.n_regions += 1;
        Ok(())
    }

    /// Append a device.
    pub fn push_device(&mut self, d: DeviceDesc) -> Result<(), BootInfoFull> {
        let slot = self
            .devices
            .get_mut(self.n_devices)
            .ok_or(BootInfoFull::Devices)?;
        *slot = d;
        self.n_devices += 1;
        Ok(())
    }

    /// Set the guest command line.
    pub fn set_cmdline(&mut self, s: &str) -> Result<(), BootInfoFull> {
        if s.len() > MAX_CMDLINE {
            return Err(BootInfoFull::Cmdline);
        }
        self.cmdline[..s.len()].copy_from_slice(s.as_bytes());
        self.cmdline_len = s.len();
        Ok(())
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + self.n_mem * MEM_ENTRY_SIZE
            + self.n_regions * REGION_SIZE
            + self.n_devices * DEVICE_SIZE
            + self.cmdline_len
    }

    /// Encode into `out`, which must hold [`BootInfo::encoded_len`] bytes; returns the
    /// length written, or `None` if `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let out = out.get_mut(..len)?;
        out.fill(0);
        put_u64(out, 0, BOOT_MAGIC);
        put_u32(out, 8, BOOT_VERSION);
        put_u32(out, 12, len as u32);
        put_u64(out, 24, self.mem_size);
        put_u16(out, 32, self.n_mem as u16);
        put_u16(out, 34, self.n_regions as u16);
        put_u16(out, 36, self.n_devices as u16);
        put_u16(out, 38, self.vcpus);
        put_u16(out, 40, self.cmdline_len as u16);
        let mut off = HEADER_SIZE;
        for e in self.mem_map() {
            put_u64(out, off, e.base);
            put_u64(out, off + 8, e.size);
            put_u32(out, off + 16, e.kind.to_u32());
            put_u32(out, off + 20, e.region);
            off += MEM_ENTRY_SIZE;
        }
        for r in self.regions() {
            put_u32(out, off, r.id);
            put_u32(out, off + 4, r.flags);
            put_u64(out, off + 8, r.base);
            put_u64(out, off + 16, r.size);
            r.name
                .encode(&mut out[off + 24..off + 24 + REGION_NAME_FIELD]);
            off += REGION_SIZE;
        }
        for d in self.devices() {
            put_u32(out, off, d.kind.to_u32());
            put_u32(out, off + 4, d.vector);
            put_u64(out, off + 8, d.base);
            put_u64(out, off + 16, d.size);
            d.name
                .encode(&mut out[off + 24..off + 24 + DEVICE_NAME_FIELD]);
            off += DEVICE_SIZE;
        }
        out[off..off + self.cmdline_len].copy_from_slice(&self.cmdline[..self.cmdline_len]);
        let sum = fnv1a(out);
        put_u32(out, CHECKSUM_OFFSET, sum);
        Some(len)
    }

    /// Decode and validate a block. Total: any input gives a value or an error.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if get_u64(buf, 0)? != BOOT_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = get_u32(buf, 8)?;
        if version != BOOT_VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let total = get_u32(buf, 12)? as usize;
        let block = buf.get(..total).ok_or(DecodeError::Truncated {
            needed: total,
            got: buf.len(),
        })?;
        let n_mem = usize::from(get_u16(block, 32)?);
        let n_regions = usize::from(get_u16(block, 34)?);
        let n_devices = usize::from(get_u16(block, 36)?);
        let cmdline_len = usize::from(get_u16(block, 40)?);
        if n_mem > MAX_MEM_ENTRIES
            || n_regions > MAX_REGIONS
            || n_devices > MAX_DEVICES
            || cmdline_len > MAX_CMDLINE
        {
            return Err(DecodeError::BadField("count"));
        }
        let mut info = BootInfo::new(get_u64(block, 24)?, get_u16(block, 38)?);
        if info.vcpus == 0 {
            return Err(DecodeError::BadField("vcpus"));
        }
        info.n_mem = n_mem;
        info.n_regions = n_regions;
        info.n_devices = n_devices;
        info.cmdline_len = cmdline_len;
        if info.encoded_len() != total {
            return Err(DecodeError::BadField("total size"));
        }
        if get_u32(block, 20)? != 0 {
            return Err(DecodeError::BadField("flags"));
        }
        Self::check_sum(block)?;
        let mut off = HEADER_SIZE;
        for i in 0..n_mem {
            info.mem[i] = MemEntry {
                base: get_u64(block, off)?,
                size: get_u64(block, off + 8)?,
                kind: MemKind::from_u32(get_u32(block, off + 16)?)?,
                region: get_u32(block, off + 20)?,
            };
            off += MEM_ENTRY_SIZE;
        }
        for i in 0..n_regions {
            info.regions[i] = RegionDesc {
                id: get_u32(block, off)?,
                flags: get_u32(block, off + 4)?,
                base: get_u64(block, off + 8)?,
                size: get_u64(block, off + 16)?,
                name: Name::decode(&get_array::<REGION_NAME_FIELD>(block, off + 24)?)?,
            };
            off += REGION_SIZE;
        }
        for i in 0..n_devices {
            info.devices[i] = DeviceDesc {
                kind: DeviceKind::from_u32(get_u32(block, off)?)?,
                vector: get_u32(block, off + 4)?,
                base: get_u64(block, off + 8)?,
                size: get_u64(block, off + 16)?,
                name: Name::decode(&get_array::<DEVICE_NAME_FIELD>(block, off + 24)?)?,
            };
            off += DEVICE_SIZE;
        }
        let cmdline = block
            .get(off..off + cmdline_len)
            .ok_or(DecodeError::BadField("command line"))?;
        core::str::from_utf8(cmdline).map_err(|_| DecodeError::BadField("command line"))?;
        info.cmdline[..cmdline_len].copy_from_slice(cmdline);
        info.validate()?;
        Ok(info)
    }

    fn check_sum(block: &[u8]) -> Result<(), DecodeError> {
        let stored = get_u32(block, CHECKSUM_OFFSET)?;
        // Recompute with the checksum field taken as zero, without copying the block.
        let (before, rest) = block.split_at(CHECKSUM_OFFSET);
        let mut h = fnv1a(before);
        for b in [0u8; 4].iter().chain(&rest[4..]) {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        if h != stored {
            return Err(DecodeError::BadChecksum);
        }
        Ok(())
    }

    /// Check the semantic rules: at least one vCPU; entries page aligned, sorted, disjoint
    /// and inside addressable memory; every region described once by exactly one CMA entry,
    /// whole pageblocks, unique ids and names; devices' windows non-empty.
    pub fn validate(&self) -> Result<(), DecodeError> {
        // `decode` refuses zero vCPUs too: whatever validates must decode.
        if self.vcpus == 0 {
            return Err(DecodeError::BadField("vcpus"));
        }
        let mut prev_end = 0u64;
        for e in self.mem_map() {
            let end = e
                .base
                .checked_add(e.size)
                .ok_or(DecodeError::BadField("memory entry"))?;
            if e.size == 0 || e.base % PAGE_SIZE != 0 || e.size % PAGE_SIZE != 0 {
                return Err(DecodeError::BadField("memory entry alignment"));
            }
            if e.base < prev_end {
                return Err(DecodeError::BadField("memory map order"));
            }
            prev_end = end;
            match e.kind {
                MemKind::Cma => {
                    let r = self
                        .region(e.region)
                        .ok_or(DecodeError::BadField("memory entry region"))?;
                    if r.base != e.base || r.size != e.size {
                        return Err(DecodeError::BadField("memory entry region"));
                    }
                }
                _ if e.region != NO_REGION => {
                    return Err(DecodeError::BadField("memory entry region"));
                }
                _ => {}
            }
        }
        for (i, r) in self.regions().iter().enumerate() {
            if r.size == 0 || r.base % PAGEBLOCK_SIZE != 0 || r.size % PAGEBLOCK_SIZE != 0 {
                return Err(DecodeError::BadField("region alignment"));
            }
            if r.flags & !REGION_PRIVATE != 0 {
                return Err(DecodeError::BadField("region flags"));
            }
            let others = &self.regions()[..i];
            if others
                .iter()
                .any(|o| o.id == r.id || o.name.as_str() == r.name.as_str())
            {
                return Err(DecodeError::BadField("duplicate region"));
            }
            let entries = self
                .mem_map()
                .iter()
                .filter(|e| e.kind == MemKind::Cma && e.region == r.id)
                .count();
            if entries != 1 {
                return Err(DecodeError::BadField("region without memory entry"));
            }
        }
        for d in self.devices() {
            if d.size == 0 || d.base.checked_add(d.size).is_none() {
                return Err(DecodeError::BadField("device window"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootInfo {
        let mut b = BootInfo::new(256 << 20, 1);
        let mb = 1u64 << 20;
        b.push_mem(MemEntry {
            base: 0,
            size: mb,
            kind: MemKind::Reserved,
            region: NO_REGION,
        })
        .unwrap();
        b.push_mem(MemEntry {
            base: mb,
            size: 127 * mb,
            kind: MemKind::Ram,
            region: NO_REGION,
        })
        .unwrap();
        b.push_mem(MemEntry {
            base: 128 * mb,
            size: 64 * mb,
            kind: MemKind::Cma,
            region: 0,
        })
        .unwrap();
        b.push_region(RegionDesc {
            id: 0,
            flags: 0,
            base: 128 * mb,
            size: 64 * mb,
            name: Name::new("video").unwrap(),
        })
        .unwrap();
        b.push_device(DeviceDesc {
            kind: DeviceKind::Agent,
            vector: 0x40,
            base: 0xC000_0000,
            size: 0x1000,
            name: Name::new("agent").unwrap(),
        })
        .unwrap();
        b.set_cmdline("agent.mode=normal").unwrap();
        b
    }

    fn encoded(b: &BootInfo) -> Vec<u8> {
        let mut out = vec![0u8; MAX_BOOT_INFO_SIZE];
        let n = b.encode(&mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let bytes = encoded(&b);
        assert!(bytes.len() as u64 <= crate::layout::BOOT_INFO_MAX_SIZE);
        let d = BootInfo::decode(&bytes).unwrap();
        assert_eq!(d, b);
        assert_eq!(d.regions()[0].name.as_str(), "video");
        assert_eq!(d.cmdline(), "agent.mode=normal");
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let bytes = encoded(&sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            assert!(
                BootInfo::decode(&b).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encoded(&sample());
        for n in 0..bytes.len() {
            assert!(BootInfo::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn largest_block_fits_its_reserved_space() {
        assert!(MAX_BOOT_INFO_SIZE as u64 <= crate::layout::BOOT_INFO_MAX_SIZE);
    }

    #[test]
    fn semantic_errors_are_caught() {
        let mut b = sample();
        b.mem[2].region = 7;
        assert!(b.validate().is_err());
        let mut b = sample();
        b.regions[0].base += PAGE_SIZE;
        assert!(b.validate().is_err());
        let mut b = sample();
        b.mem[1].base = 0;
        assert!(b.validate().is_err());
    }

    #[test]
    fn names() {
        assert!(Name::new("video-dev_0.a").is_some());
        assert!(Name::new("").is_none());
        assert!(Name::new("a b").is_none());
        assert!(Name::new(&"x".repeat(MAX_NAME + 1)).is_none());
        assert!(Name::new(&"x".repeat(MAX_NAME)).is_some());
    }
}
