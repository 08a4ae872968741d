//! slicenet-vmm refuses corrupt appliances and unusable hosts with one clear error and a
//! documented exit status, leaving nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use slicenet_vmm::appliance::{Manifest, PartSpec, MANIFEST_FILE, MANIFEST_FORMAT};
use slicenet_vmm::host::{check_host, HostError};

const VMM: &str = env!("CARGO_BIN_EXE_slicenet-vmm");

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A small appliance whose kernel is a plausible bzImage header and whose initrd is bytes.
fn write_appliance(dir: &Path) {
    let mut kernel = vec![0u8; 64 * 1024];
    kernel[0x1f1] = 4; // setup_sects
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("vmlinuz"), &kernel).unwrap();
    let mut vmlinux = b"\x7fELF\x02\x01\x01".to_vec();
    vmlinux.resize(8192, 0);
    std::fs::write(dir.join("vmlinux"), &vmlinux).unwrap();
    std::fs::write(dir.join("initrd.img"), b"initramfs").unwrap();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: "bad-input".into(),
        version: "1".into(),
        cmdline: "console=ttyS0".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: PartSpec {
            path: "vmlinuz".into(),
            sha256: sha256(&kernel),
        },
        vmlinux: Some(PartSpec {
            path: "vmlinux".into(),
            sha256: sha256(&vmlinux),
        }),
        initrd: PartSpec {
            path: "initrd.img".into(),
            sha256: sha256(b"initramfs"),
        },
        disk: None,
        nics: Vec::new(),
    };
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_toml()).unwrap();
}

fn run_vmm(dir: &Path, api: &Path) -> (i32, String) {
    let out = Command::new(VMM)
        .arg("run")
        .arg("--appliance")
        .arg(dir)
        .arg("--api-sock")
        .arg(api)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn corrupt_appliances_fail_with_status_4_naming_the_part() {
    type Corruption = fn(&Path);
    let cases: [(&str, Corruption, &str); 5] = [
        (
            "bad hash",
            |d| std::fs::write(d.join("initrd.img"), b"initramfX").unwrap(),
            "SHA-256 mismatch",
        ),
        (
            "truncated kernel",
            |d| {
                let k = std::fs::read(d.join("vmlinuz")).unwrap();
                std::fs::write(d.join("vmlinuz"), &k[..1000]).unwrap();
            },
            "kernel",
        ),
        (
            "truncated vmlinux",
            |d| {
                let k = std::fs::read(d.join("vmlinux")).unwrap();
                std::fs::write(d.join("vmlinux"), &k[..100]).unwrap();
            },
            "appliance vmlinux",
        ),
        (
            "missing initrd",
            |d| std::fs::remove_file(d.join("initrd.img")).unwrap(),
            "file is missing",
        ),
        (
            "hostile manifest",
            |d| {
                let m = std::fs::read_to_string(d.join(MANIFEST_FILE)).unwrap();
                std::fs::write(
                    d.join(MANIFEST_FILE),
                    m.replace("\"vmlinuz\"", "\"../../etc/passwd\""),
                )
                .unwrap();
            },
            "relative path inside the appliance directory",
        ),
    ];
    for (name, corrupt, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_appliance(dir.path());
        corrupt(dir.path());
        let api = dir.path().join("api.sock");
        let (code, stderr) = run_vmm(dir.path(), &api);
        assert_eq!(code, 4, "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one clear error line: {stderr}"
        );
        assert!(!api.exists(), "{name}: no socket left behind");
    }
}

#[test]
fn a_pvm_host_is_refused_with_one_clear_error() {
    let test = "a_pvm_host_is_refused_with_one_clear_error";
    if check_host() != Err(HostError::PvmOnly) {
        println!(
            "SKIPPED: {test}: this host's KVM is not PVM ({:?})",
            check_host()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_appliance(dir.path());
    let api = dir.path().join("api.sock");
    let (code, stderr) = run_vmm(dir.path(), &api);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("PVM") && stderr.contains("kvm_pvm"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!api.exists());
}

#[test]
fn control_api_rejects_unknown_requests_from_the_cli() {
    let out = Command::new(VMM)
        .args(["ctl", "--api", "/nonexistent/slicenet-vmm.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the VMM running?"), "{stderr}");
    let out = Command::new(VMM)
        .args(["ctl", "--api", "/nonexistent/x.sock", "reboot"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown request"));
}
