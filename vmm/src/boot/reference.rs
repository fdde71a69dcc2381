//! The reference guest's boot: load its ELF image at 1 MiB and write the boot-information
//! block the guest validates before anything else.

use std::fs::File;
use std::path::PathBuf;

use linux_loader::loader::{KernelLoader, elf::Elf};
use protocol::boot::{
    BootInfo, DeviceDesc, DeviceKind, MAX_BOOT_INFO_SIZE, MemEntry, MemKind, NO_REGION, Name,
    REGION_PRIVATE, RegionDesc,
};
use protocol::layout::{
    BOOT_AREA_END, BOOT_INFO_ADDR, KERNEL_LOAD_ADDR, LOW_RESERVED_END, PAGE_SIZE, align_up,
    ram_ranges,
};
use vm_memory::GuestAddress;

use super::BootError;
use crate::config::ValidConfig;
use crate::vstate::memory::GuestRam;

/// The reference guest, built by `build.rs` and embedded in the VMM, so that `cma-vmm`
/// boots it by default wherever the binary is copied.
pub static REFERENCE_GUEST: &[u8] = include_bytes!(env!("CMA_GUEST_ELF"));

/// Which guest image to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestImage {
    /// The reference guest embedded in the VMM.
    Reference,
    /// An ELF file.
    File(PathBuf),
}

impl GuestImage {
    fn open(&self) -> Result<(File, String), BootError> {
        match self {
            GuestImage::File(path) => {
                let shown = path.display().to_string();
                let file = File::open(path).map_err(|source| BootError::Open {
                    path: shown.clone(),
                    source,
                })?;
                Ok((file, shown))
            }
            GuestImage::Reference => {
                let shown = "(reference guest)".to_string();
                let file = memfd_with(REFERENCE_GUEST).map_err(|source| BootError::Open {
                    path: shown.clone(),
                    source,
                })?;
                Ok((file, shown))
            }
        }
    }
}

/// An anonymous file holding `bytes`, positioned at the start.
fn memfd_with(bytes: &[u8]) -> std::io::Result<File> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"cma-guest-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

/// A loaded guest image.
#[derive(Debug, Clone, Copy)]
pub struct LoadedImage {
    /// Entry point.
    pub entry: u64,
    /// One past the image's last byte (page aligned).
    pub end: u64,
}

/// Load a guest ELF image into guest memory.
pub fn load_guest(ram: &GuestRam, image: &GuestImage) -> Result<LoadedImage, BootError> {
    let (mut file, shown) = image.open()?;
    let loaded = Elf::load(
        ram.memory(),
        None,
        &mut file,
        Some(GuestAddress(KERNEL_LOAD_ADDR)),
    )
    .map_err(|e| BootError::Malformed {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let entry = loaded.kernel_load.0;
    // linux-loader's `kernel_end` skips segments with no file contents, such as `.bss`,
    // which holds the guest's stacks: measure the image from its program headers.
    let memory_end = load_segments_end(&mut file).map_err(|reason| BootError::Malformed {
        path: shown.clone(),
        reason,
    })?;
    let end = align_up(loaded.kernel_end.max(memory_end), PAGE_SIZE).unwrap_or(u64::MAX);
    if entry < KERNEL_LOAD_ADDR || entry >= end || end > BOOT_AREA_END {
        return Err(BootError::TooLarge {
            path: shown,
            start: entry,
            end,
        });
    }
    Ok(LoadedImage { entry, end })
}

/// One past the last byte of every PT_LOAD segment in memory (`p_paddr + p_memsz`).
fn load_segments_end(file: &mut File) -> Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_LOAD: u32 = 1;
    const PHDR_SIZE: usize = 56;
    let mut ehdr = [0u8; 64];
    file.rewind().map_err(|e| e.to_string())?;
    file.read_exact(&mut ehdr).map_err(|e| e.to_string())?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let phoff = u64_at(&ehdr, 32);
    let phnum = usize::from(u16_at(&ehdr, 56));
    if usize::from(u16_at(&ehdr, 54)) != PHDR_SIZE || phnum > 64 {
        return Err("unexpected program headers".into());
    }
    let mut table = vec![0u8; phnum * PHDR_SIZE];
    file.seek(SeekFrom::Start(phoff))
        .map_err(|e| e.to_string())?;
    file.read_exact(&mut table).map_err(|e| e.to_string())?;
    let mut end = 0u64;
    for ph in table.chunks_exact(PHDR_SIZE) {
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_LOAD {
            let seg_end = u64_at(ph, 24)
                .checked_add(u64_at(ph, 40))
                .ok_or("segment end overflows")?;
            end = end.max(seg_end);
        }
    }
    Ok(end)
}

/// A virtio-mmio device to announce to the guest.
#[derive(Debug, Clone)]
pub struct BootDevice {
    /// Which driver the guest binds.
    pub kind: DeviceKind,
    /// MMIO window.
    pub base: u64,
    /// MMIO window size.
    pub size: u64,
    /// Interrupt vector of its MSI (reference guest).
    pub vector: u8,
    /// IOAPIC pin (Linux guests).
    pub gsi: u32,
    /// Device name.
    pub name: String,
}

/// Build the boot information: the memory map (reserved boot area and image, RAM, each
/// CMA region), the regions, the devices and the guest command line.
pub fn boot_info(
    config: &ValidConfig,
    image: LoadedImage,
    devices: &[BootDevice],
) -> Result<BootInfo, BootError> {
    let err = |what: &str| BootError::BootInfo(what.to_string());
    let mut info = BootInfo::new(config.memory, u16::from(config.vcpus));
    let mut entries = vec![
        (0, LOW_RESERVED_END, MemKind::Reserved, NO_REGION),
        (
            LOW_RESERVED_END,
            image.end - LOW_RESERVED_END,
            MemKind::Reserved,
            NO_REGION,
        ),
    ];
    for r in &config.regions {
        entries.push((r.base, r.size, MemKind::Cma, r.id));
    }
    for (start, end) in ram_ranges(config.memory) {
        let mut cursor = start.max(image.end);
        let mut holes: Vec<_> = config
            .regions
            .iter()
            .filter(|r| r.base >= start && r.end() <= end)
            .map(|r| (r.base, r.end()))
            .collect();
        holes.sort();
        for (hs, he) in holes {
            if hs > cursor {
                entries.push((cursor, hs - cursor, MemKind::Ram, NO_REGION));
            }
            cursor = cursor.max(he);
        }
        if end > cursor {
            entries.push((cursor, end - cursor, MemKind::Ram, NO_REGION));
        }
    }
    entries.sort_by_key(|e| e.0);
    for (base, size, kind, region) in entries {
        info.push_mem(MemEntry {
            base,
            size,
            kind,
            region,
        })
        .map_err(|_| err("too many memory-map entries"))?;
    }
    for r in &config.regions {
        info.push_region(RegionDesc {
            id: r.id,
            flags: if r.private { REGION_PRIVATE } else { 0 },
            base: r.base,
            size: r.size,
            name: Name::new(&r.name).ok_or_else(|| err("region name"))?,
        })
        .map_err(|_| err("too many regions"))?;
    }
    for d in devices {
        info.push_device(DeviceDesc {
            kind: d.kind,
            vector: u32::from(d.vector),
            base: d.base,
            size: d.size,
            name: Name::new(&d.name).ok_or_else(|| err("device name"))?,
        })
        .map_err(|_| err("too many devices"))?;
    }
    info.set_cmdline(&config.guest_args)
        .map_err(|_| err("guest command line too long"))?;
    info.validate()
        .map_err(|e| BootError::BootInfo(e.to_string()))?;
    Ok(info)
}

/// Encode `info` into guest memory at [`BOOT_INFO_ADDR`].
pub fn write_boot_info(ram: &GuestRam, info: &BootInfo) -> Result<(), BootError> {
    let mut buf = vec![0u8; MAX_BOOT_INFO_SIZE];
    let len = info
        .encode(&mut buf)
        .ok_or_else(|| BootError::BootInfo("encoding overflow".into()))?;
    ram.write(BOOT_INFO_ADDR, &buf[..len])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{VmConfig, parse_region_flag};

    #[test]
    fn memory_map_covers_ram_exactly() {
        let config = VmConfig {
            memory: 256 << 20,
            regions: vec![
                parse_region_flag("name=video,size=64M").unwrap(),
                parse_region_flag("name=camera,size=32M,base=0x8000000").unwrap(),
                parse_region_flag("name=secure,size=16M,private").unwrap(),
            ],
            ..VmConfig::default()
        }
        .validate()
        .unwrap();
        let image = LoadedImage {
            entry: 0x10_0000,
            end: 0x12_0000,
        };
        let info = boot_info(&config, image, &[]).unwrap();
        let map = info.mem_map();
        // Contiguous from 0 to the end of memory, no gaps, no overlaps.
        let mut cursor = 0;
        for e in map {
            assert_eq!(e.base, cursor);
            cursor = e.end();
        }
        assert_eq!(cursor, 256 << 20);
        let cma: u64 = map
            .iter()
            .filter(|e| e.kind == MemKind::Cma)
            .map(|e| e.size)
            .sum();
        assert_eq!(cma, 112 << 20);
        assert!(!info.region(2).unwrap().is_lent());
        let mut buf = vec![0u8; MAX_BOOT_INFO_SIZE];
        let n = info.encode(&mut buf).unwrap();
        assert_eq!(BootInfo::decode(&buf[..n]).unwrap(), info);
    }
}
