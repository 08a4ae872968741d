//! ACPI tables for the microVM: RSDP, XSDT, FADT (hardware-reduced), MADT and a DSDT that
//! announces COM1, the pvpanic port and every virtio-mmio device (HID `LNRO0005`, which the
//! stock Debian kernel binds without `virtio_mmio.device=` parameters).
//!
//! The stock kernel is built without MPPARSE, so the MADT is the only way it learns about its
//! CPUs and the IOAPIC.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};

use super::layout::{
    ACPI_END, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_START, COM1_GSI, COM1_PORT, IOAPIC_ADDR,
    LAPIC_ADDR, PVPANIC_PORT,
};

const OEM_ID: [u8; 6] = *b"SLCNET";
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC (the guest uses kvmclock) and
/// no i8042 (so the kernel does not spend boot time probing one).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip emulates them).
const MADT_PCAT_COMPAT: u32 = 1;

/// One virtio-mmio device as the DSDT announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Base of the 4 KiB register window.
    pub base: u64,
    /// Window length.
    pub size: u64,
    /// Edge-triggered IOAPIC input.
    pub gsi: u32,
}

/// The tables, each with the guest physical address it must be written to.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// (guest address, bytes) in the order they are laid out.
    pub blobs: Vec<(u64, Vec<u8>)>,
    /// Address of the RSDP (for boot_params.acpi_rsdp_addr).
    pub rsdp_addr: u64,
}

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// Too much to fit in the reserved ACPI area.
    #[error("ACPI tables need {needed} bytes but only {available} are reserved")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// More vCPUs than the 8-bit APIC ids of the MADT entries allow.
    #[error("{0} vCPUs exceed the 254 an xAPIC MADT can describe")]
    TooManyVcpus(u32),
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT's AML body (without the table header).
pub fn dsdt_body(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs_name = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs_name]);

    let pvpanic_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    let pvpanic_hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let pvpanic_crs_name = aml::Name::new("_CRS".into(), &pvpanic_crs);
    let pvpanic = aml::Device::new("PEVT".into(), vec![&pvpanic_hid, &pvpanic_crs_name]);

    struct VirtioAml {
        name: String,
        uid: u32,
        memory: aml::Memory32Fixed,
        interrupt: aml::Interrupt,
    }
    let virtio_aml: Vec<VirtioAml> = virtio
        .iter()
        .enumerate()
        .map(|(i, slot)| VirtioAml {
            name: format!("V{i:03X}"),
            uid: i as u32,
            memory: aml::Memory32Fixed::new(true, slot.base as u32, slot.size as u32),
            interrupt: aml::Interrupt::new(true, true, false, false, slot.gsi),
        })
        .collect();
    let crs: Vec<aml::ResourceTemplate> = virtio_aml
        .iter()
        .map(|v| aml::ResourceTemplate::new(vec![&v.memory, &v.interrupt]))
        .collect();
    let names: Vec<[aml::Name; 4]> = virtio_aml
        .iter()
        .zip(&crs)
        .map(|(v, crs)| {
            [
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), &v.uid),
                aml::Name::new("_CCA".into(), &aml::ONE),
                aml::Name::new("_CRS".into(), crs),
            ]
        })
        .collect();
    let devices: Vec<aml::Device> = virtio_aml
        .iter()
        .zip(&names)
        .map(|(v, names)| {
            aml::Device::new(
                v.name.as_str().into(),
                names.iter().map(|n| n as &dyn Aml).collect(),
            )
        })
        .collect();
    let mut children: Vec<&dyn Aml> = vec![&com1, &pvpanic];
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    let sb = aml::Scope::new("_SB_".into(), children);
    // \_S5_: sleep type 5 (soft off), written to the FADT sleep control register on poweroff.
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8]));

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    body
}

/// Builds every table for `vcpus` CPUs and the given virtio-mmio devices.
pub fn build_tables(vcpus: u32, virtio: &[VirtioMmioSlot]) -> Result<AcpiTables, AcpiError> {
    if vcpus > 254 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"SLCNDSDT", 1);
    dsdt.append_slice(&dsdt_body(virtio));
    let dsdt = dsdt.as_slice().to_vec();

    let mut madt = MADT::new(
        OEM_ID,
        *b"SLCNMADT",
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            cpu as u8,
            cpu as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut madt = to_bytes(&madt);
    madt[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut madt);

    // Layout: RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned.
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            needed: end - ACPI_START,
            available: ACPI_END - ACPI_START,
        });
    }

    let pm_port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_PM_PORT as u64,
    );
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SLCNFADT", 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = pm_port;
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = pm_port;
    fadt.sleep_status_reg = pm_port;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SLICENET").into();
    let fadt = to_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, *b"SLCNXSDT", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    Ok(AcpiTables {
        blobs: vec![
            (rsdp_addr, rsdp),
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
        rsdp_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn two_virtio() -> Vec<VirtioMmioSlot> {
        (0..2)
            .map(|i| VirtioMmioSlot {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect()
    }

    #[test]
    fn tables_have_valid_checksums_lengths_and_links() {
        let tables = build_tables(2, &two_virtio()).unwrap();
        let find = |sig: &[u8]| {
            tables
                .blobs
                .iter()
                .find(|(_, b)| b.starts_with(sig))
                .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(sig)))
                .clone()
        };
        let (rsdp_addr, rsdp) = find(b"RSD PTR ");
        assert_eq!(rsdp_addr, tables.rsdp_addr);
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let (xsdt_addr, xsdt) = find(b"XSDT");
        assert_eq!(
            u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
            xsdt_addr
        );
        for sig in [b"XSDT", b"FACP", b"APIC", b"DSDT"] {
            let (_, table) = find(sig);
            assert!(checksum_ok(&table), "{}", String::from_utf8_lossy(sig));
            assert_eq!(
                u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
                table.len()
            );
        }
        let (fadt_addr, fadt) = find(b"FACP");
        let (madt_addr, madt) = find(b"APIC");
        let (dsdt_addr, _) = find(b"DSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![fadt_addr, madt_addr]);
        // FADT X_DSDT at offset 140; hardware-reduced flag (bit 20) at offset 112.
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            dsdt_addr
        );
        assert_ne!(
            u32::from_le_bytes(fadt[112..116].try_into().unwrap()) & (1 << 20),
            0
        );
        // MADT: two local APICs (type 0) with ids 0 and 1, one IOAPIC (type 1).
        let mut types = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            types.push((madt[offset], madt[offset + 3]));
            offset += madt[offset + 1] as usize;
        }
        assert_eq!(types, vec![(0, 0), (0, 1), (1, 0)]);
        assert!(tables
            .blobs
            .iter()
            .all(|(a, b)| *a >= ACPI_START && a + b.len() as u64 <= ACPI_END));
    }

    #[test]
    fn dsdt_names_every_virtio_device_with_lnro0005() {
        let body = dsdt_body(&two_virtio());
        let count = body.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(body.windows(4).any(|w| w == b"V001"));
    }

    #[test]
    fn too_many_vcpus_is_an_error() {
        assert_eq!(
            build_tables(300, &[]).unwrap_err(),
            AcpiError::TooManyVcpus(300)
        );
    }
}
