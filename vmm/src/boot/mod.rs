//! Booting a guest: the reference guest (an ELF and our boot-information block) or Linux
//! (a bzImage, the Linux 64-bit boot protocol, an e820 map and ACPI tables).

pub mod linux;
mod reference;

pub use reference::{
    BootDevice, GuestImage, LoadedImage, REFERENCE_GUEST, boot_info, load_guest, write_boot_info,
};

/// Errors of guest loading and boot-information set-up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image cannot be opened.
    #[error("cannot open guest image {path}: {source}")]
    Open {
        /// The image path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The image is not a loadable ELF.
    #[error("malformed guest image {path}: {reason}")]
    Malformed {
        /// The image path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The image does not fit the boot area.
    #[error("guest image {path} occupies [{start:#x}, {end:#x}): it must lie in [1M, 2M)")]
    TooLarge {
        /// The image path.
        path: String,
        /// Entry point.
        start: u64,
        /// One past the end of its last segment.
        end: u64,
    },
    /// The boot information does not fit its format.
    #[error("boot information does not fit: {0}")]
    BootInfo(String),
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    /// A Linux image or its initramfs cannot be loaded.
    #[error("cannot boot Linux: {0}")]
    Linux(String),
    /// The ACPI tables do not fit their area.
    #[error("ACPI tables: {0}")]
    Acpi(String),
}
