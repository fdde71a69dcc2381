//! `boot_info`: the boot-information block's decoder, validator and encoder.

use protocol::boot::{
    BOOT_MAGIC, BOOT_VERSION, BootInfo, DeviceDesc, DeviceKind, MAX_BOOT_INFO_SIZE, MAX_CMDLINE,
    MAX_DEVICES, MAX_MEM_ENTRIES, MAX_REGIONS, MemEntry, MemKind, NO_REGION, Name, REGION_PRIVATE,
    RegionDesc, is_valid_name,
};
use protocol::layout::{MAX_MEMORY, PAGE_SIZE, PAGEBLOCK_SIZE};

use super::Reader;

// The block's layout, from the table in `protocol::boot`'s documentation.
const BOOT_HEADER: usize = 64;
const BOOT_MEM_ENTRY: usize = 24;
const BOOT_REGION: usize = 56;
const BOOT_DEVICE: usize = 48;

/// `BootInfo::decode` on the input as it is, on the input with a repaired header (magic,
/// version, sizes and checksum fixed up, so the fuzzer reaches the semantic checks), and
/// on a block built field by field from the input with `push_*` and `encode`.
///
/// Whatever decodes must validate, satisfy the documented layout rules (checked here
/// independently of `validate`), and re-encode to the same bytes except where the format
/// says "reserved" or "padding". Whatever is built decodes to itself exactly when it
/// validates.
pub fn boot_info(data: &[u8]) {
    check_boot_block(data);
    check_boot_block(&repaired_boot_block(data));
    check_built_boot_info(data);
}

fn check_boot_block(bytes: &[u8]) {
    let Ok(info) = BootInfo::decode(bytes) else {
        return;
    };
    info.validate().expect("a decoded boot block validates");
    check_boot_rules(&info);
    let mut out = vec![0u8; MAX_BOOT_INFO_SIZE];
    let n = info.encode(&mut out).expect("a decoded block re-encodes");
    assert_eq!(n, info.encoded_len());
    assert!(n <= bytes.len(), "decoded more than the input holds");
    assert_eq!(BootInfo::decode(&out[..n]).as_ref(), Ok(&info));
    // Decoding read exactly what encoding writes: the bytes differ only in the reserved
    // header words, the checksum (which covers them), and name padding.
    let ignored = boot_padding(&info);
    for (i, (a, b)) in bytes[..n].iter().zip(&out[..n]).enumerate() {
        assert!(
            a == b || ignored.contains(&i),
            "byte {i} re-encodes as {b:#04x}, was {a:#04x}"
        );
    }
}

/// Offsets of a block whose contents the decoder does not look at.
fn boot_padding(info: &BootInfo) -> Vec<usize> {
    let mut ignored: Vec<usize> = (16..20).chain(42..BOOT_HEADER).collect();
    let mut off = BOOT_HEADER + info.mem_map().len() * BOOT_MEM_ENTRY;
    for r in info.regions() {
        ignored.extend(off + 25 + r.name.as_str().len()..off + BOOT_REGION);
        off += BOOT_REGION;
    }
    for d in info.devices() {
        ignored.extend(off + 25 + d.name.as_str().len()..off + BOOT_DEVICE);
        off += BOOT_DEVICE;
    }
    ignored
}

/// The rules of `protocol::boot`'s documentation, written out again: what the guest relies
/// on after `decode` succeeded.
fn check_boot_rules(info: &BootInfo) {
    assert!(info.vcpus >= 1);
    assert!(info.mem_map().len() <= MAX_MEM_ENTRIES);
    assert!(info.regions().len() <= MAX_REGIONS);
    assert!(info.devices().len() <= MAX_DEVICES);
    assert!(info.cmdline().len() <= MAX_CMDLINE);
    let mut prev_end = 0;
    for e in info.mem_map() {
        let end = e.base.checked_add(e.size).expect("memory entry overflows");
        assert!(e.size > 0 && e.base % PAGE_SIZE == 0 && e.size % PAGE_SIZE == 0);
        assert!(e.base >= prev_end, "memory map unsorted or overlapping");
        prev_end = end;
        if e.kind == MemKind::Cma {
            let r = info
                .region(e.region)
                .expect("CMA entry of an unknown region");
            assert_eq!((r.base, r.size), (e.base, e.size));
        } else {
            assert_eq!(e.region, NO_REGION);
        }
    }
    for (i, r) in info.regions().iter().enumerate() {
        assert!(r.size > 0 && r.base % PAGEBLOCK_SIZE == 0 && r.size % PAGEBLOCK_SIZE == 0);
        assert_eq!(r.flags & !REGION_PRIVATE, 0);
        assert!(is_valid_name(r.name.as_str()));
        for o in &info.regions()[..i] {
            assert_ne!(o.id, r.id);
            assert_ne!(o.name.as_str(), r.name.as_str());
        }
        let entries = info.mem_map().iter().filter(|e| {
            e.kind == MemKind::Cma && e.region == r.id && e.base == r.base && e.size == r.size
        });
        assert_eq!(entries.count(), 1, "region {} not mapped once", r.id);
    }
    for d in info.devices() {
        assert!(d.size > 0 && d.base.checked_add(d.size).is_some());
        assert!(is_valid_name(d.name.as_str()));
    }
}

/// The input as a block whose magic, version, counts, total size and checksum are right.
fn repaired_boot_block(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < BOOT_HEADER {
        b.resize(BOOT_HEADER, 0);
    }
    b[0..8].copy_from_slice(&BOOT_MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&BOOT_VERSION.to_le_bytes());
    b[20..24].fill(0);
    let mut count = |off: usize, max: usize| {
        let n = usize::from(u16::from_le_bytes([b[off], b[off + 1]])) % (max + 1);
        b[off..off + 2].copy_from_slice(&(n as u16).to_le_bytes());
        n
    };
    let total = BOOT_HEADER
        + count(32, MAX_MEM_ENTRIES) * BOOT_MEM_ENTRY
        + count(34, MAX_REGIONS) * BOOT_REGION
        + count(36, MAX_DEVICES) * BOOT_DEVICE
        + count(40, MAX_CMDLINE);
    b.resize(total, 0);
    b[12..16].copy_from_slice(&(total as u32).to_le_bytes());
    b[16..20].fill(0);
    let sum = protocol::fnv1a(&b);
    b[16..20].copy_from_slice(&sum.to_le_bytes());
    b
}

/// Names the structured generator picks from (duplicates and invalid ones included).
const NAMES: [&str; 6] = ["video", "camera", "secure", "agent", "video", "a.b-c_9"];

/// Build a block from the input with the public builder, then check that decoding its
/// encoding gives it back exactly when it validates.
fn check_built_boot_info(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut info = BootInfo::new(r.u64() % (MAX_MEMORY + 1), u16::from(r.u8() % 3));
    let mut regions = Vec::new();
    for _ in 0..r.u8() % 5 {
        let region = RegionDesc {
            id: u32::from(r.u8() % 4),
            flags: u32::from(r.u8() % 3),
            base: u64::from(r.u8()) * PAGEBLOCK_SIZE,
            size: u64::from(r.u8() % 4) * PAGEBLOCK_SIZE,
            name: Name::new(NAMES[usize::from(r.u8()) % NAMES.len()]).expect("valid name"),
        };
        regions.push(region);
        let _ = info.push_region(region);
    }
    for _ in 0..r.u8() % 8 {
        let entry = match r.u8() % 4 {
            0 | 1 => MemEntry {
                base: u64::from(r.u16()) * PAGE_SIZE,
                size: u64::from(r.u16()) * PAGE_SIZE,
                kind: if r.u8().is_multiple_of(2) {
                    MemKind::Ram
                } else {
                    MemKind::Reserved
                },
                region: NO_REGION,
            },
            2 => match regions.get(usize::from(r.u8()) % regions.len().max(1)) {
                Some(reg) => MemEntry {
                    base: reg.base,
                    size: reg.size,
                    kind: MemKind::Cma,
                    region: reg.id,
                },
                None => continue,
            },
            _ => MemEntry {
                base: r.u64(),
                size: r.u64(),
                kind: MemKind::Cma,
                region: r.u32(),
            },
        };
        let _ = info.push_mem(entry);
    }
    for _ in 0..r.u8() % 3 {
        let device = DeviceDesc {
            kind: if r.u8().is_multiple_of(2) {
                DeviceKind::Agent
            } else {
                DeviceKind::Capture
            },
            vector: r.u32(),
            base: r.u64(),
            size: u64::from(r.u16()),
            name: Name::new(NAMES[usize::from(r.u8()) % NAMES.len()]).expect("valid name"),
        };
        let _ = info.push_device(device);
    }
    let cmdline = String::from_utf8_lossy(r.take(MAX_CMDLINE + 8));
    let _ = info.set_cmdline(&cmdline);

    let mut out = vec![0u8; MAX_BOOT_INFO_SIZE];
    let n = info.encode(&mut out).expect("every built block encodes");
    let decoded = BootInfo::decode(&out[..n]);
    match info.validate() {
        Ok(()) => assert_eq!(decoded, Ok(info), "a valid block does not round-trip"),
        Err(e) => assert_eq!(decoded, Err(e), "an invalid block decodes differently"),
    }
}
