//! The ACPI tables the VMM hands the guest disassemble cleanly with ACPICA's `iasl -d`
//! (Debian acpica-tools), the same parser family the Linux kernel uses.

mod common;

use std::process::Command;

use slicenet_vmm::arch::acpi::{build_tables, VirtioMmioSlot};
use slicenet_vmm::arch::layout::{virtio_slot, VIRTIO_MMIO_SIZE};

#[test]
fn acpi_tables_disassemble_without_errors_in_iasl() {
    let test = "acpi_tables_disassemble_without_errors_in_iasl";
    if Command::new("iasl").arg("-v").output().is_err() {
        common::skip(test, "iasl is not installed (Debian package acpica-tools)");
        return;
    }
    let slots: Vec<VirtioMmioSlot> = (0..3)
        .map(|i| {
            let (base, gsi) = virtio_slot(i);
            VirtioMmioSlot {
                base,
                size: VIRTIO_MMIO_SIZE,
                gsi,
            }
        })
        .collect();
    let tables = build_tables(4, &slots).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (_, blob) in &tables.blobs {
        let sig = String::from_utf8_lossy(&blob[..4]).trim().to_string();
        if sig == "RSD" {
            continue; // the RSDP is not a table iasl disassembles on its own
        }
        let file = dir.path().join(format!("{sig}.dat"));
        std::fs::write(&file, blob).unwrap();
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {sig}: {text}");
        assert!(!text.contains("Error"), "iasl -d {sig}: {text}");
        let dsl = std::fs::read_to_string(dir.path().join(format!("{sig}.dsl"))).unwrap();
        assert!(!dsl.contains("Invalid"), "{sig}.dsl: {dsl}");
        match sig.as_str() {
            "DSDT" => {
                assert_eq!(dsl.matches("\"LNRO0005\"").count(), 3, "{dsl}");
                assert!(
                    dsl.contains("PNP0501") && dsl.contains("QEMU0001") && dsl.contains("_S5_"),
                    "{dsl}"
                );
            }
            "APIC" => assert_eq!(dsl.matches("Processor Local APIC").count(), 4, "{dsl}"),
            "FACP" => assert!(dsl.contains("Hardware Reduced (V5) : 1"), "{dsl}"),
            _ => {}
        }
    }
}
