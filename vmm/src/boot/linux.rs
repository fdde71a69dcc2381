//! Booting a stock Linux kernel: the bzImage, its initramfs, the command line and the
//! zero page (`boot_params`) with the e820 map, entered through the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst) as Firecracker does.
//!
//! ```text
//!  0x0000_0500  boot GDT               (shared with the reference guest's boot)
//!  0x0000_7000  zero page (boot_params)
//!  0x0000_8ff0  boot stack (grows down)
//!  0x0000_9000  boot page tables        identity map of 0-4 GiB
//!  0x0002_0000  kernel command line
//!  0x0009_fc00  reserved: EBDA, BIOS area; ACPI tables at 0xe0000
//!  0x0010_0000  the kernel (protected-mode part of the bzImage), then RAM
//!     ...       lent CMA regions: holes in the e820 map (the guest's agent hot-adds them)
//!     ...       private CMA regions: reserved
//!  top of RAM below the first hole or 3 GiB: the initramfs
//! ```

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use protocol::layout::{PAGE_SIZE, align_down, align_up, ram_ranges};
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::config::ValidConfig;
use crate::vstate::memory::GuestRam;

/// Kernel parameters the VMM always passes, before the user's (`--cmdline`):
/// - the console on COM1;
/// - `reboot=k panic=-1`: a reboot or a panic resets through the i8042, which ends the run
///   (cma-vmm never restarts a guest);
/// - `pci=off`: there is no PCI bus, only ACPI-described virtio-mmio devices;
/// - `memhp_default_state=online_movable`: memory the agent hot-adds (the lent regions)
///   comes up in ZONE_MOVABLE, Linux's movable-only zone.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off memhp_default_state=online_movable";

/// Where the zero page goes.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The boot stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the extended BIOS data area: reserved from here to 1 MiB.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the protected-mode kernel is loaded (`code32_start`).
pub const HIMEM_START: u64 = 0x10_0000;
/// The 64-bit entry point's offset from the load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Where a non-relocated kernel decompresses itself (`CONFIG_PHYSICAL_START`).
const LOAD_PHYSICAL_ADDR: u64 = 0x100_0000;
/// Initramfs images must start below this address.
const INITRD_LIMIT: u64 = 0xC000_0000;

/// e820 types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id.
const KERNEL_LOADER_OTHER: u8 = 0xff;

/// A loaded bzImage.
#[derive(Debug, Clone, Copy)]
pub struct LinuxImage {
    /// The 64-bit entry point.
    pub entry: u64,
    /// One past the loaded (compressed) kernel.
    pub end: u64,
    /// The image's setup header, completed into the zero page.
    pub header: setup_header,
}

/// An e820 entry: `[base, base+size)` of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub base: u64,
    /// Length.
    pub size: u64,
    /// E820 type: RAM (1) or reserved (2).
    pub kind: u32,
}

impl E820Entry {
    fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether the guest may use it as ordinary RAM.
    pub fn is_ram(&self) -> bool {
        self.kind == E820_RAM
    }
}

fn linux_err(what: impl std::fmt::Display) -> BootError {
    BootError::Linux(what.to_string())
}

/// Load the protected-mode part of a bzImage at 1 MiB.
pub fn load_kernel(ram: &GuestRam, path: &Path) -> Result<LinuxImage, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open {
        path: shown.clone(),
        source,
    })?;
    let loaded = BzImage::load(
        ram.memory(),
        None,
        &mut file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|e| BootError::Malformed {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let header = loaded.setup_header.ok_or_else(|| BootError::Malformed {
        path: shown,
        reason: "no setup header".into(),
    })?;
    Ok(LinuxImage {
        entry: loaded.kernel_load.0 + ENTRY_64_OFFSET,
        end: loaded.kernel_end,
        header,
    })
}

/// The e820 map: low RAM, the reserved BIOS area, then RAM with each lent region left out
/// (the guest's agent hot-adds it) and each private region reserved.
pub fn e820_map(config: &ValidConfig) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            base: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            base: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, end) in ram_ranges(config.memory) {
        let mut cursor = start.max(HIMEM_START);
        let mut regions: Vec<_> = config
            .regions
            .iter()
            .filter(|r| r.base < end && r.end() > cursor)
            .collect();
        regions.sort_by_key(|r| r.base);
        for r in regions {
            if r.base > cursor {
                map.push(E820Entry {
                    base: cursor,
                    size: r.base - cursor,
                    kind: E820_RAM,
                });
            }
            if r.private {
                map.push(E820Entry {
                    base: r.base,
                    size: r.size,
                    kind: E820_RESERVED,
                });
            }
            cursor = cursor.max(r.end());
        }
        if end > cursor {
            map.push(E820Entry {
                base: cursor,
                size: end - cursor,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Where the initramfs goes: as high as possible in RAM below 3 GiB and the header's
/// `initrd_addr_max`, clear of the compressed kernel and of where it decompresses.
pub fn initrd_address(map: &[E820Entry], image: &LinuxImage, size: u64) -> Result<u64, BootError> {
    let header_max = u64::from(image.header.initrd_addr_max);
    let limit = INITRD_LIMIT.min(header_max.saturating_add(1).max(HIMEM_START));
    let decompressed_end = LOAD_PHYSICAL_ADDR + u64::from(image.header.init_size);
    let floor = align_up(image.end.max(decompressed_end), PAGE_SIZE).unwrap_or(u64::MAX);
    map.iter()
        .filter(|e| e.is_ram())
        .rev()
        .find_map(|e| {
            let top = e.end().min(limit);
            let start = align_down(top.checked_sub(size)?, PAGE_SIZE);
            (start >= e.base.max(floor)).then_some(start)
        })
        .ok_or_else(|| {
            linux_err(format!(
                "no room for an initramfs of {size} bytes in RAM below {limit:#x} above the kernel (to {floor:#x})"
            ))
        })
}

/// Copy the initramfs into guest memory; its address and size.
pub fn load_initrd(
    ram: &GuestRam,
    path: &Path,
    map: &[E820Entry],
    image: &LinuxImage,
) -> Result<(u64, u64), BootError> {
    let bytes = std::fs::read(path).map_err(|source| BootError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let size = bytes.len() as u64;
    let addr = initrd_address(map, image, size)?;
    ram.write(addr, &bytes)?;
    Ok((addr, size))
}

/// The kernel command line: the VMM's defaults, then the user's parameters.
pub fn cmdline(config: &ValidConfig) -> String {
    let user = config.guest_args.trim();
    if user.is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        format!("{DEFAULT_CMDLINE} {user}")
    }
}

/// Everything the zero page describes.
#[derive(Debug, Clone)]
pub struct ZeroPage<'a> {
    /// The loaded kernel.
    pub image: &'a LinuxImage,
    /// The command line.
    pub cmdline: &'a str,
    /// The initramfs `(address, size)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Where the ACPI RSDP is.
    pub rsdp: u64,
}

/// Write the command line and the zero page.
pub fn write_zero_page(ram: &GuestRam, zp: &ZeroPage<'_>) -> Result<(), BootError> {
    let mut bytes = zp.cmdline.as_bytes().to_vec();
    bytes.push(0);
    ram.write(CMDLINE_ADDR, &bytes)?;
    let mut params = boot_params {
        hdr: zp.image.header,
        ..Default::default()
    };
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = zp.cmdline.len() as u32;
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = zp.rsdp;
    if zp.e820.len() > params.e820_table.len() {
        return Err(linux_err(format!(
            "{} e820 entries, the zero page holds {}",
            zp.e820.len(),
            params.e820_table.len()
        )));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(zp.e820) {
        *slot = boot_e820_entry {
            addr: e.base,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = zp.e820.len() as u8;
    ram.memory()
        .write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|e| linux_err(format!("writing the zero page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GuestKind, RegionSpec};

    fn config(regions: Vec<RegionSpec>) -> ValidConfig {
        ValidConfig {
            memory: 768 << 20,
            vcpus: 2,
            kernel: None,
            guest: GuestKind::Linux,
            initrd: None,
            guest_args: "quiet".into(),
            regions,
            map: vec![],
            capture: vec![],
        }
    }

    fn region(id: u32, base: u64, private: bool) -> RegionSpec {
        RegionSpec {
            id,
            name: format!("r{id}"),
            base,
            size: 128 << 20,
            private,
            order_per_bit: 0,
        }
    }

    #[test]
    fn lent_regions_are_holes_and_private_ones_reserved() {
        let c = config(vec![
            region(0, 640 << 20, false),
            region(1, 256 << 20, true),
        ]);
        let map = e820_map(&c);
        let ram: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.is_ram())
            .map(|e| (e.base, e.end()))
            .collect();
        assert_eq!(
            ram,
            vec![
                (0, EBDA_START),
                (HIMEM_START, 256 << 20),
                (384 << 20, 640 << 20)
            ]
        );
        assert!(
            map.iter()
                .any(|e| !e.is_ram() && e.base == 256 << 20 && e.size == 128 << 20)
        );
        assert!(
            !map.iter()
                .any(|e| e.base < 768 << 20 && e.end() > 640 << 20)
        );
        assert_eq!(
            cmdline(&c),
            format!("{DEFAULT_CMDLINE} quiet"),
            "the user's parameters come after the defaults"
        );
    }

    #[test]
    fn initrd_goes_high_and_clear_of_the_kernel() {
        let c = config(vec![region(0, 640 << 20, false)]);
        let map = e820_map(&c);
        let image = LinuxImage {
            entry: HIMEM_START + 0x200,
            end: 9 << 20,
            header: setup_header {
                initrd_addr_max: 0x7fff_ffff,
                init_size: 40 << 20,
                ..Default::default()
            },
        };
        let addr = initrd_address(&map, &image, 5 << 20).unwrap();
        assert_eq!(addr, (640 << 20) - (5 << 20), "right below the lent region");
        let e = initrd_address(&map, &image, 700 << 20).unwrap_err();
        assert!(e.to_string().contains("no room for an initramfs"), "{e}");
    }
}
