//! ACPI tables for Linux guests: how a stock kernel learns the vCPUs, the interrupt
//! controllers and the virtio-mmio devices.
//!
//! Debian's kernels are built without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so the
//! `virtio_mmio.device=` command-line form is not available; the `virtio_mmio` driver
//! binds ACPI devices with `_HID` "LNRO0005" instead, as Firecracker and Cloud Hypervisor
//! describe theirs. The platform is HW-reduced ACPI (no PM timer, no SCI, no legacy PIC):
//!
//! - RSDP at [`RSDP_ADDR`] (also passed in the zero page), XSDT → FADT, MADT;
//! - FADT: HW-reduced, the sleep control/status register at [`ACPI_SLEEP_PORT`] (power-off);
//! - MADT: one local APIC per vCPU and the IOAPIC, no PC-AT 8259s;
//! - DSDT: COM1 (PNP0501, IRQ 4), one LNRO0005 device per virtio-mmio window with its
//!   IOAPIC pin (edge, active high), and `\_S5_` for soft-off.
//!
//! The tables live in the reserved BIOS area below 1 MiB.

use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use protocol::layout::{LAPIC_BASE, SERIAL_PORT};

use crate::boot::BootError;
use crate::devices::legacy::power::{ACPI_SLEEP_PORT, S5_SLEEP_TYPE};
use crate::vstate::memory::GuestRam;

/// Where the RSDP goes (the BIOS area Linux also scans).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The tables must end below 1 MiB.
const TABLES_END: u64 = 0x10_0000;
/// The in-kernel IOAPIC's base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// COM1's IOAPIC pin.
pub const SERIAL_GSI: u32 = 4;

const OEM_ID: [u8; 6] = *b"CMAVMM";
const OEM_REVISION: u32 = 1;
/// FADT `IAPC_BOOT_ARCH`: no VGA.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// A virtio-mmio device as Linux sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// The MMIO window.
    pub base: u64,
    /// Its size.
    pub size: u64,
    /// The IOAPIC pin its irqfd raises.
    pub gsi: u32,
}

fn acpi_err(what: impl std::fmt::Display) -> BootError {
    BootError::Acpi(what.to_string())
}

/// The DSDT's AML: COM1, the virtio-mmio devices, `\_S5_`.
fn dsdt(devices: &[VirtioMmioDevice]) -> Result<Vec<u8>, BootError> {
    let mut body = Vec::new();
    let com1_io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_GSI);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);
    for (i, d) in devices.iter().enumerate() {
        let base = u32::try_from(d.base).map_err(|_| acpi_err("device above 4 GiB"))?;
        let size = u32::try_from(d.size).map_err(|_| acpi_err("device window too large"))?;
        let window = aml::Memory32Fixed::new(true, base, size);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let path = format!("_SB_.V{i:03}");
        let uid = i as u32;
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CMADSDT ", OEM_REVISION);
    table.append_slice(&body);
    Ok(table.as_slice().to_vec())
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let sleep_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_PORT),
    );
    let mut b = FADTBuilder::new(OEM_ID, *b"CMAFACP ", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    b.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    b.sleep_control_reg = sleep_reg;
    b.sleep_status_reg = sleep_reg;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"CMAVMM\0\0").into();
    let mut bytes = Vec::new();
    b.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"CMAAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_BASE as u32),
    );
    for id in 0..vcpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut bytes = Vec::new();
    m.to_aml_bytes(&mut bytes);
    bytes
}

/// Appends tables to guest memory from [`RSDP_ADDR`] on, 16-byte aligned.
struct TableWriter<'a> {
    ram: &'a GuestRam,
    next: u64,
}

impl TableWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<u64, BootError> {
        let at = self.next;
        let end = at + bytes.len() as u64;
        if end > TABLES_END {
            return Err(acpi_err("the tables do not fit below 1 MiB"));
        }
        self.ram.write(at, bytes)?;
        self.next = (end + 15) & !15;
        Ok(at)
    }
}

/// Write the RSDP and every table; the RSDP's address.
pub fn write_tables(
    ram: &GuestRam,
    vcpus: u8,
    devices: &[VirtioMmioDevice],
) -> Result<u64, BootError> {
    let mut w = TableWriter {
        ram,
        next: RSDP_ADDR + Rsdp::len() as u64,
    };
    w.next = (w.next + 15) & !15;
    let dsdt_addr = w.write(&dsdt(devices)?)?;
    let fadt_addr = w.write(&fadt(dsdt_addr))?;
    let madt_addr = w.write(&madt(vcpus))?;
    let mut xsdt = XSDT::new(OEM_ID, *b"CMAXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut bytes = Vec::new();
    xsdt.to_aml_bytes(&mut bytes);
    let xsdt_addr = w.write(&bytes)?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    ram.write(RSDP_ADDR, &rsdp)?;
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(ram: &GuestRam, addr: u64) -> Vec<u8> {
        let mut head = [0u8; 8];
        ram.read(addr, &mut head).unwrap();
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut t = vec![0u8; len];
        ram.read(addr, &mut t).unwrap();
        t
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let devices = [
            VirtioMmioDevice {
                base: 0xc000_0000,
                size: 0x1000,
                gsi: 5,
            },
            VirtioMmioDevice {
                base: 0xc000_1000,
                size: 0x1000,
                gsi: 6,
            },
        ];
        let rsdp_addr = write_tables(&ram, 2, &devices).unwrap();
        let mut rsdp = [0u8; 36];
        ram.read(rsdp_addr, &mut rsdp).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table_at(&ram, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let fadt_addr = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let madt_addr = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        let fadt = table_at(&ram, fadt_addr);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        assert_ne!(fadt[112] & (1 << 4), 0, "flags: HW_REDUCED_ACPI (bit 20)");
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&ram, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let text = String::from_utf8_lossy(&dsdt);
        assert_eq!(text.matches("LNRO0005").count(), 2);
        assert!(text.contains("_S5_") && text.contains("COM1"));
        let madt = table_at(&ram, madt_addr);
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        // Header 44 bytes, two local APICs of 8, one IOAPIC of 12.
        assert_eq!(madt.len(), 44 + 2 * 8 + 12);
    }
}
