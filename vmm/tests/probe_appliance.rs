//! The appliance recipe with extra Debian packages puts their programs, every shared library
//! they need and the dynamic loader into the initramfs.

mod common;

use std::process::Command;

#[test]
fn probe_appliance_carries_its_programs_and_their_libraries() {
    let test = "probe_appliance_carries_its_programs_and_their_libraries";
    let Some((appliance, _)) = common::probe_appliance(test) else {
        return;
    };
    let out = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(appliance.initrd_path())
        .output();
    let Ok(out) = out else {
        common::skip(test, "cpio is not installed (Debian package cpio)");
        return;
    };
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing.lines().collect();
    for needed in [
        "init",
        "usr/bin/busybox",
        "usr/bin/iperf3",
        "usr/bin/ping",
        "usr/bin/curl",
        "usr/bin/dig",
        "usr/bin/traceroute.db",
        "usr/lib/x86_64-linux-gnu/libiperf.so.0",
        "usr/lib/x86_64-linux-gnu/libcurl.so.4",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib64/ld-linux-x86-64.so.2",
        "usr/lib/modules/slicenet/virtio_net.ko",
        "usr/lib/modules/slicenet/virtio_pci.ko",
        "etc/slicenet/modules",
    ] {
        assert!(
            names.contains(&needed),
            "{needed} missing from the probe image"
        );
    }
    assert_eq!(appliance.manifest().name, "probe");

    // The programs run with nothing but the image's own loader and libraries.
    let root = tempfile::tempdir().unwrap();
    let image = std::fs::File::open(appliance.initrd_path()).unwrap();
    // Device nodes need root to create; everything else unpacks regardless.
    let _ = Command::new("cpio")
        .args(["-id", "--quiet", "--nonmatching", "dev/*"])
        .current_dir(root.path())
        .stdin(image)
        .status();
    let loader = root
        .path()
        .join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    let libs = root.path().join("usr/lib/x86_64-linux-gnu");
    for (program, arg, expect) in [
        ("iperf3", "--version", "iperf 3"),
        ("curl", "--version", "curl "),
        ("dig", "-v", "DiG 9"),
        ("ping", "-V", "ping from iputils"),
    ] {
        let out = Command::new(&loader)
            .arg("--library-path")
            .arg(&libs)
            .arg(root.path().join("usr/bin").join(program))
            .arg(arg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{program} {arg}: {text}");
    }
}
