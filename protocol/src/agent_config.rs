//! The agent device's configuration space: the CMA regions, as a guest driver reads them.
//!
//! The reference guest learns its regions from the boot information; a Linux guest has no
//! such block, so its agent driver reads them from the device (virtio config space, at
//! offset 0x100 of the virtio-mmio window). Fixed little-endian records, C-friendly (names
//! are NUL-padded), so that a kernel module can describe them with a packed struct:
//!
//! ```text
//! offset  size  field
//!      0     4  magic  "CMAC"
//!      4     4  version (AGENT_VERSION)
//!      8     4  number of region records that follow (<= MAX_REGIONS)
//!     12     4  size of one record (REGION_RECORD_SIZE)
//!     16  48*n  region records:
//!               +0  u64 base    guest-physical, pageblock aligned
//!               +8  u64 size    bytes, whole pageblocks
//!              +16  u32 id      the VMM's region id
//!              +20  u32 flags   REGION_PRIVATE: never lent, the guest must not touch it
//!              +24  [u8; 24]    name, NUL-padded
//! ```

use crate::boot::{MAX_NAME, MAX_REGIONS, Name, RegionDesc};
use crate::msg::AGENT_VERSION;
use crate::wire::{DecodeError, get_array, get_u32, get_u64, put_u32, put_u64};

/// "CMAC", little-endian.
pub const AGENT_CONFIG_MAGIC: u32 = u32::from_le_bytes(*b"CMAC");
/// Size of the header before the region records.
pub const CONFIG_HEADER_SIZE: usize = 16;
/// Size of one region record.
pub const REGION_RECORD_SIZE: usize = 48;
/// Size of the name field of a record (a name and at least one NUL).
pub const RECORD_NAME_SIZE: usize = MAX_NAME + 1;
/// The largest configuration space.
pub const MAX_CONFIG_SIZE: usize = CONFIG_HEADER_SIZE + MAX_REGIONS * REGION_RECORD_SIZE;

/// Encode the configuration space for `regions` (at most [`MAX_REGIONS`]; extra ones are
/// not described).
pub fn encode_config(regions: &[RegionDesc], out: &mut [u8; MAX_CONFIG_SIZE]) -> usize {
    out.fill(0);
    let n = regions.len().min(MAX_REGIONS);
    put_u32(out, 0, AGENT_CONFIG_MAGIC);
    put_u32(out, 4, AGENT_VERSION);
    put_u32(out, 8, n as u32);
    put_u32(out, 12, REGION_RECORD_SIZE as u32);
    for (i, r) in regions.iter().take(n).enumerate() {
        let at = CONFIG_HEADER_SIZE + i * REGION_RECORD_SIZE;
        put_u64(out, at, r.base);
        put_u64(out, at + 8, r.size);
        put_u32(out, at + 16, r.id);
        put_u32(out, at + 20, r.flags);
        let name = r.name.as_str().as_bytes();
        out[at + 24..at + 24 + name.len()].copy_from_slice(name);
    }
    CONFIG_HEADER_SIZE + n * REGION_RECORD_SIZE
}

/// Decode a configuration space into `out`; the number of regions.
pub fn decode_config(
    buf: &[u8],
    out: &mut [Option<RegionDesc>; MAX_REGIONS],
) -> Result<usize, DecodeError> {
    if get_u32(buf, 0)? != AGENT_CONFIG_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = get_u32(buf, 4)?;
    if version != AGENT_VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let n = get_u32(buf, 8)? as usize;
    if n > MAX_REGIONS {
        return Err(DecodeError::BadField("region count"));
    }
    if get_u32(buf, 12)? as usize != REGION_RECORD_SIZE {
        return Err(DecodeError::BadField("record size"));
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = None;
        if i >= n {
            continue;
        }
        let at = CONFIG_HEADER_SIZE + i * REGION_RECORD_SIZE;
        let raw: [u8; RECORD_NAME_SIZE] = get_array(buf, at + 24)?;
        let len = raw.iter().position(|&b| b == 0).unwrap_or(RECORD_NAME_SIZE);
        let name = core::str::from_utf8(&raw[..len])
            .ok()
            .and_then(Name::new)
            .ok_or(DecodeError::BadField("name"))?;
        *slot = Some(RegionDesc {
            base: get_u64(buf, at)?,
            size: get_u64(buf, at + 8)?,
            id: get_u32(buf, at + 16)?,
            flags: get_u32(buf, at + 20)?,
            name,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::REGION_PRIVATE;

    fn region(id: u32, name: &str, base: u64, flags: u32) -> RegionDesc {
        RegionDesc {
            id,
            flags,
            base,
            size: 128 << 20,
            name: Name::new(name).unwrap(),
        }
    }

    #[test]
    fn round_trips_and_lays_out_as_documented() {
        let regions = [
            region(0, "video", 0x1000_0000, 0),
            region(1, "a23-characters-long-nam", 0x2000_0000, REGION_PRIVATE),
        ];
        let mut buf = [0u8; MAX_CONFIG_SIZE];
        let len = encode_config(&regions, &mut buf);
        assert_eq!(len, 16 + 2 * 48);
        assert_eq!(&buf[0..4], b"CMAC");
        assert_eq!(buf[16 + 48 + 20], 1, "flags of the second record");
        assert_eq!(&buf[16 + 24..16 + 29], b"video");
        assert_eq!(buf[16 + 48 + 24 + 23], 0, "a name always ends in NUL");
        let mut out = [None; MAX_REGIONS];
        assert_eq!(decode_config(&buf[..len], &mut out), Ok(2));
        assert_eq!(out[0], Some(regions[0]));
        assert_eq!(out[1], Some(regions[1]));
        assert_eq!(out[2], None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = [None; MAX_REGIONS];
        assert!(decode_config(&[], &mut out).is_err());
        let mut buf = [0u8; MAX_CONFIG_SIZE];
        let len = encode_config(&[region(0, "r", 0, 0)], &mut buf);
        let mut bad = buf;
        bad[8] = 17;
        assert_eq!(
            decode_config(&bad, &mut out),
            Err(DecodeError::BadField("region count"))
        );
        let mut bad = buf;
        bad[16 + 24] = 0xff;
        assert_eq!(
            decode_config(&bad, &mut out),
            Err(DecodeError::BadField("name"))
        );
        assert!(decode_config(&buf[..len - 1], &mut out).is_err());
    }
}
