//! Which kind of guest a kernel image is: our reference guest's protocol (an ELF entered
//! in 64-bit mode with the boot-information block) or Linux (a bzImage entered through the
//! Linux 64-bit boot protocol, with an e820 map, ACPI tables and a command line).
//!
//! The two kinds set different rules: a Linux guest hot-adds lent regions as whole memory
//! blocks, so their bases and sizes must be multiples of [`LINUX_MEMORY_BLOCK`].

use std::io::Read;
use std::path::Path;

use super::ConfigError;

/// Linux's memory-hotplug granularity on x86-64 (`memory_block_size_bytes()`).
pub const LINUX_MEMORY_BLOCK: u64 = 128 << 20;
/// Ordinary RAM a Linux guest needs besides its CMA regions (kernel, initramfs, page
/// cache, and room to migrate evicted pages into).
pub const LINUX_MIN_RAM: u64 = 128 << 20;
/// The longest Linux command line the VMM writes (x86's `COMMAND_LINE_SIZE`, NUL excluded).
pub const LINUX_MAX_CMDLINE: usize = 2047;

/// The boot protocol a guest image speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// An ELF entered in 64-bit mode with our boot-information block (the reference guest).
    #[default]
    Reference,
    /// A Linux bzImage (64-bit boot protocol).
    Linux,
}

/// Offset of the setup header's "HdrS" magic in a bzImage.
const HDRS_OFFSET: usize = 0x202;
/// Offset of the boot protocol version.
const VERSION_OFFSET: usize = 0x206;
/// Offset of `xloadflags`.
const XLOADFLAGS_OFFSET: usize = 0x236;
/// `xloadflags`: the kernel has a 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// The oldest boot protocol with a 64-bit entry point (2.12 adds `xloadflags`).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;

/// Tell an image's kind from its first bytes.
pub fn detect(path: &Path) -> Result<GuestKind, ConfigError> {
    let shown = path.display().to_string();
    let unreadable = |reason: String| ConfigError::KernelOpen {
        path: shown.clone(),
        reason,
    };
    // Only regular files: a FIFO or a device would block or never end.
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let mut head = Vec::with_capacity(0x240);
    std::fs::File::open(path)
        .and_then(|f| f.take(0x240).read_to_end(&mut head))
        .map_err(|e| unreadable(e.to_string()))?;
    kind_of(&head).map_err(|reason| ConfigError::BadKernel {
        path: shown.clone(),
        reason,
    })
}

/// The kind of an image whose first bytes are `head`.
pub fn kind_of(head: &[u8]) -> Result<GuestKind, String> {
    if head.starts_with(b"\x7fELF") {
        return Ok(GuestKind::Reference);
    }
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) != Some(b"HdrS") {
        return Err("neither an ELF guest nor a Linux bzImage".into());
    }
    let version = u16_at(VERSION_OFFSET).unwrap_or(0);
    let xloadflags = u16_at(XLOADFLAGS_OFFSET).unwrap_or(0);
    if version < MIN_BOOT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(format!(
            "a bzImage without a 64-bit entry point (boot protocol {}.{}, need 2.12 or later)",
            version >> 8,
            version & 0xff
        ));
    }
    Ok(GuestKind::Linux)
}

/// Check an initramfs file: it exists, is a regular file, and is not empty.
pub fn check_initrd(path: &Path) -> Result<u64, ConfigError> {
    let bad = |reason: String| ConfigError::BadInitrd {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("empty".into()));
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x240];
        b[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        b[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
        b[XLOADFLAGS_OFFSET..XLOADFLAGS_OFFSET + 2].copy_from_slice(&xloadflags.to_le_bytes());
        b
    }

    #[test]
    fn tells_elf_from_bzimage() {
        assert_eq!(kind_of(b"\x7fELF\x02\x01"), Ok(GuestKind::Reference));
        assert_eq!(kind_of(&bzimage(0x020f, 0x7f)), Ok(GuestKind::Linux));
        assert!(
            kind_of(&bzimage(0x020b, 1))
                .unwrap_err()
                .contains("boot protocol 2.11")
        );
        assert!(kind_of(&bzimage(0x020f, 0)).is_err());
        assert!(kind_of(b"MZ").is_err());
        assert!(kind_of(&[]).is_err());
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let e = detect(Path::new("/nonexistent/bzImage")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/bzImage"), "{e}");
        assert!(check_initrd(Path::new("/")).is_err());
    }
}
