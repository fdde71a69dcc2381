//! The KVM VM: /dev/kvm checks, the in-kernel interrupt controller, memory slots, irqfd
//! routes (IOAPIC pins, or MSI straight to the boot CPU's local APIC) and ioeventfd
//! doorbells.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestRam;
use super::slots::{SlotError, SlotSink, SlotTable};
use super::vcpu::RamAccess;
use crate::sync::lock;
use protocol::layout::{LAPIC_BASE, ram_ranges};

/// Where KVM's TSS and identity-map pages go (needed on Intel; above RAM, below the APIC).
const KVM_TSS_ADDR: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Pins of the in-kernel IOAPIC; GSIs for MSI routes start above them.
const IOAPIC_PINS: u32 = 24;

/// Errors of VM creation and control.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing.
    #[error("KVM is not available: {0} does not exist (is the kvm module loaded?)")]
    NoKvm(String),
    /// /dev/kvm cannot be opened.
    #[error("no permission to open {0}: add your user to the 'kvm' group or run as root")]
    KvmPermission(String),
    /// /dev/kvm opened but is not KVM.
    #[error("cannot use {path} as KVM: {reason}")]
    KvmOpen {
        /// The device path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A capability we rely on is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: kvm_ioctls::Error,
    },
    /// A memory slot could not be set up.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] super::memory::MemoryError),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// What failing to open the KVM device means, for the user.
fn open_error(e: &kvm_ioctls::Error, path: &str) -> VmError {
    match e.errno() {
        libc::ENOENT => VmError::NoKvm(path.to_string()),
        libc::EACCES | libc::EPERM => VmError::KvmPermission(path.to_string()),
        _ => VmError::KvmOpen {
            path: path.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Open the KVM device, translating the usual failures into actionable messages.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let shown = path.display().to_string();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::KvmOpen {
            path: shown.clone(),
            reason: "path contains a NUL byte".into(),
        }
    })?;
    let kvm = Kvm::new_with_path(cpath).map_err(|e| open_error(&e, &shown))?;
    // A file that opens but is not /dev/kvm fails its first ioctl.
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::KvmOpen {
            path: shown,
            reason: format!("KVM_GET_API_VERSION returned {version}, expected 12"),
        });
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The VM and its memory.
pub struct Vm {
    fd: VmFd,
    ram: Arc<GuestRam>,
    slots: Mutex<SlotTable>,
    routes: Mutex<Routes>,
}

/// The GSI routing table: KVM's default IRQCHIP routes (GSI n -> IOAPIC pin n, and the
/// PICs for n < 16), then one MSI route per MSI irqfd. KVM_SET_GSI_ROUTING replaces the
/// whole table, so the defaults are always sent along.
struct Routes {
    entries: Vec<kvm_irq_routing_entry>,
    next_msi_gsi: u32,
}

impl Routes {
    fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    }

    fn new() -> Self {
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            entries.push(Self::irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let pic = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(Self::irqchip(gsi, pic, gsi % 8));
            }
        }
        Routes {
            entries,
            next_msi_gsi: IOAPIC_PINS,
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").finish_non_exhaustive()
    }
}

struct KvmSlots<'a>(&'a VmFd);

impl SlotSink for KvmSlots<'_> {
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), SlotError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host` is the address of `gpa` in the GuestRam mapping, which lives as long
        // as the VM (the Vm holds an Arc to it and is dropped first); a size of zero deletes
        // the slot and maps nothing.
        unsafe { self.0.set_user_memory_region(region) }.map_err(|e| SlotError::Kvm {
            slot,
            gpa,
            size,
            reason: e.to_string(),
        })
    }
}

impl Vm {
    /// Create the VM with an in-kernel irqchip and map all of `ram`.
    pub fn new(kvm: &Kvm, ram: Arc<GuestRam>) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let mut ranges = Vec::new();
        for (start, end) in ram_ranges(ram.size()) {
            if end > start {
                ranges.push((start, end, ram.host_address(start)?));
            }
        }
        let max_slots = kvm.get_nr_memslots() as u32;
        let slots = SlotTable::new(ranges, max_slots, &KvmSlots(&fd))?;
        Ok(Vm {
            fd,
            ram,
            slots: Mutex::new(slots),
            routes: Mutex::new(Routes::new()),
        })
    }

    /// The KVM VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Take `[gpa, gpa+len)` out of the guest's address space (exclusive grant).
    pub fn revoke(&self, gpa: u64, len: u64) -> Result<(), SlotError> {
        let mut slots = lock(&self.slots);
        slots.revoke(gpa, len, &KvmSlots(&self.fd))
    }

    /// Give a revoked range back to the guest.
    pub fn restore(&self, gpa: u64, len: u64) -> Result<(), SlotError> {
        let mut slots = lock(&self.slots);
        slots.restore(gpa, len, &KvmSlots(&self.fd))
    }

    /// Whether any byte of `[gpa, gpa+len)` is currently revoked.
    pub fn is_revoked(&self, gpa: u64, len: u64) -> bool {
        lock(&self.slots).is_revoked(gpa, len)
    }

    /// Complete a vCPU access to guest RAM that exited as MMIO, unless the address is
    /// revoked. The check and the access happen under the slot lock, so a range cannot be
    /// revoked (and granted) between them.
    pub fn emulate_ram_access(
        &self,
        addr: u64,
        len: u64,
        access: impl FnOnce(&GuestRam) -> bool,
    ) -> RamAccess {
        let slots = lock(&self.slots);
        if !self.ram.contains(addr, len) {
            return RamAccess::NotRam;
        }
        if slots.is_revoked(addr, len) {
            return RamAccess::Refused;
        }
        if access(&self.ram) {
            RamAccess::Emulated
        } else {
            RamAccess::NotRam
        }
    }

    /// Number of KVM memory slots in use.
    pub fn slot_count(&self) -> usize {
        lock(&self.slots).slot_count()
    }

    /// Route a new GSI to `vector` on the boot CPU as an MSI and attach `irqfd` to it.
    pub fn add_msi_irqfd(&self, irqfd: &EventFd, vector: u8) -> Result<(), VmError> {
        let mut routes = lock(&self.routes);
        let gsi = routes.next_msi_gsi;
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        // Destination APIC 0, fixed delivery, edge: the address selects the CPU, the data
        // the vector.
        entry.u.msi.address_lo = LAPIC_BASE as u32;
        entry.u.msi.data = u32::from(vector);
        routes.entries.push(entry);
        routes.next_msi_gsi += 1;
        let table = KvmIrqRouting::from_entries(&routes.entries).map_err(|_| VmError::Kvm {
            op: "KVM_SET_GSI_ROUTING",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING"))?;
        self.fd
            .register_irqfd(irqfd, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Attach `irqfd` to IOAPIC pin `gsi` (an edge-triggered legacy interrupt, as Linux
    /// guests drive virtio-mmio devices and the serial port).
    pub fn add_pin_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), VmError> {
        if gsi >= IOAPIC_PINS {
            return Err(VmError::Kvm {
                op: "KVM_IRQFD",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        self.fd
            .register_irqfd(irqfd, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Create the in-kernel i8254 PIT (Linux guests expect one; its speaker port is a
    /// dummy).
    pub fn create_pit(&self) -> Result<(), VmError> {
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(config)
            .map_err(kvm_err("KVM_CREATE_PIT2"))
    }

    /// Signal `evt` (without an exit to the VMM) when the guest writes to `addr`.
    pub fn add_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_err("KVM_IOEVENTFD"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_failures_say_what_to_do() {
        // Permission errors cannot be provoked as root, which these tests run as: check
        // the mapping itself.
        let e = open_error(&kvm_ioctls::Error::new(libc::EACCES), "/dev/kvm");
        assert_eq!(
            e.to_string(),
            "no permission to open /dev/kvm: add your user to the 'kvm' group or run as root"
        );
        let e = open_error(&kvm_ioctls::Error::new(libc::ENOENT), "/dev/kvm");
        assert!(e.to_string().contains("does not exist"));
        assert!(matches!(
            open_kvm(Path::new("/nonexistent/kvm")),
            Err(VmError::NoKvm(_))
        ));
        assert!(matches!(
            open_kvm(Path::new("/dev/null")),
            Err(VmError::KvmOpen { .. })
        ));
    }
}
