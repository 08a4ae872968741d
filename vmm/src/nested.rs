//! A hardware-virtualization host inside a software VM, for testing and benchmarking the VMM
//! on machines whose own KVM cannot run a stock kernel (see `host`).
//!
//! QEMU's TCG with `-cpu max` emulates AMD SVM with nested paging; the stock Debian kernel
//! loads `kvm-amd` there, and `/dev/kvm` inside is real hardware-style KVM. [`NestedHost`]
//! builds an initramfs for such an outer VM (busybox, the kernel's own KVM modules, the files
//! and host binaries a test needs, with their shared libraries) and runs a shell script in
//! it, returning everything the outer VM printed on its serial console.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::appliance::build::{elf_needed, CpioEntry, CpioWriter};
use crate::appliance::Appliance;

/// QEMU options for a VM with no devices or display of its own and its serial
/// console on stdio (the nested host here; the QEMU rows of the VMM benchmark).
pub const QEMU_HEADLESS_ARGS: [&str; 5] = [
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-serial",
    "stdio",
];

/// Why the nested host could not run.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// QEMU or its firmware is missing.
    #[error("{0}")]
    Unavailable(String),
    /// A file could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Something the outer VM needs was not found.
    #[error("{0}")]
    Missing(String),
    /// The outer VM did not finish in time, or printed nothing for its idle limit (hung).
    #[error("the nested host {reason}; its console said:\n{output}")]
    Timeout {
        /// What was exceeded, in words.
        reason: String,
        /// Console output so far.
        output: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NestedError + '_ {
    move |source| NestedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `qemu-system-x86_64` and SeaBIOS are installed (Debian: qemu-system-x86,
/// seabios).
pub fn qemu_available() -> Result<(), NestedError> {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(NestedError::Unavailable(
            "qemu-system-x86_64 is not installed (Debian package qemu-system-x86; scripts/setup.sh installs it)".into(),
        ));
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").exists()
        && !Path::new("/usr/share/qemu/bios-256k.bin").exists()
    {
        return Err(NestedError::Unavailable(
            "SeaBIOS (bios-256k.bin) is missing (Debian package seabios)".into(),
        ));
    }
    Ok(())
}

/// What the outer VM printed and how long it ran.
#[derive(Debug, Clone)]
pub struct NestedRun {
    /// Everything on the outer VM's serial console.
    pub output: String,
    /// Wall time of the whole QEMU run.
    pub elapsed: Duration,
}

/// The outer VM's initramfs under construction.
pub struct NestedHost {
    kernel: PathBuf,
    entries: BTreeMap<String, CpioEntry>,
    memory_mib: u32,
    cpus: u32,
    idle_timeout: Option<Duration>,
}

/// The kernel tree (unpacked `linux-image-*` package) whose vmlinuz is the appliance's kernel.
fn kernel_tree_for(appliance: &Appliance, cache: &Path) -> Result<PathBuf, NestedError> {
    let kernel_len = fs::metadata(appliance.kernel_path())
        .map_err(io(&appliance.kernel_path()))?
        .len();
    let unpacked = cache.join("unpacked");
    for entry in fs::read_dir(&unpacked).map_err(io(&unpacked))?.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("linux-image-")
        {
            continue;
        }
        let boot = entry.path().join("boot");
        let Ok(files) = fs::read_dir(&boot) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with("vmlinuz-") && file.metadata().is_ok_and(|m| m.len() == kernel_len)
            {
                return Ok(entry.path());
            }
        }
    }
    Err(NestedError::Missing(format!(
        "no unpacked kernel package matching {} under {}; build the appliance with the same cache",
        appliance.kernel_path().display(),
        unpacked.display()
    )))
}

impl NestedHost {
    /// An outer VM running the appliance's own (stock Debian) kernel with its KVM modules,
    /// found in the appliance build cache `cache`.
    pub fn new(appliance: &Appliance, cache: &Path) -> Result<NestedHost, NestedError> {
        let tree = kernel_tree_for(appliance, cache)?;
        let modules_root = tree.join("lib/modules");
        let version_dir = fs::read_dir(&modules_root)
            .map_err(io(&modules_root))?
            .flatten()
            .next()
            .ok_or_else(|| NestedError::Missing("kernel package has no modules".into()))?
            .path();
        let mut host = NestedHost {
            kernel: appliance.kernel_path(),
            entries: BTreeMap::new(),
            memory_mib: 1536,
            cpus: 2,
            idle_timeout: None,
        };
        for dir in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib64", "m", "t"] {
            host.entries
                .insert(dir.into(), CpioEntry::Dir { mode: 0o755 });
        }
        host.entries.insert(
            "dev/console".into(),
            CpioEntry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        // busybox-static from the appliance build cache: always a static binary, unlike a
        // host's /bin/busybox, which may be the dynamically linked flavour.
        let busybox = fs::read_dir(cache.join("unpacked"))
            .map_err(io(cache))?
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("busybox-static")
            })
            .map(|e| e.path().join("bin/busybox"))
            .ok_or_else(|| {
                NestedError::Missing("busybox-static is not in the appliance cache".into())
            })?;
        host.add_file("bin/busybox", &busybox, 0o755)?;
        for (name, rel) in [
            ("irqbypass.ko", "kernel/virt/lib/irqbypass.ko"),
            ("kvm.ko", "kernel/arch/x86/kvm/kvm.ko"),
            ("kvm-amd.ko", "kernel/arch/x86/kvm/kvm-amd.ko"),
        ] {
            host.add_file(&format!("m/{name}"), &version_dir.join(rel), 0o644)?;
        }
        Ok(host)
    }

    /// Outer VM memory (default 1536 MiB) and CPUs (default 2; TCG runs one host thread each).
    pub fn machine(mut self, memory_mib: u32, cpus: u32) -> NestedHost {
        self.memory_mib = memory_mib;
        self.cpus = cpus;
        self
    }

    /// Stop the outer VM (with [`NestedError::Timeout`]) when its console stays silent this
    /// long: a hung nested host is reported instead of waiting for the overall timeout.
    pub fn idle_timeout(mut self, limit: Duration) -> NestedHost {
        self.idle_timeout = Some(limit);
        self
    }

    /// Copies a host file to `dest` (a relative path) in the outer VM.
    pub fn add_file(&mut self, dest: &str, src: &Path, mode: u32) -> Result<(), NestedError> {
        let data = fs::read(src).map_err(io(src))?;
        self.add_bytes(dest, data, mode);
        Ok(())
    }

    /// Copies an appliance (its parts and manifest) to the directory `dest` in the outer VM.
    pub fn add_appliance(&mut self, dest: &str, appliance: &Appliance) -> Result<(), NestedError> {
        for (_, part) in appliance.parts() {
            self.add_file(
                &format!("{dest}/{}", part.path),
                &appliance.dir().join(&part.path),
                0o644,
            )?;
        }
        self.add_file(
            &format!("{dest}/appliance.toml"),
            &appliance.dir().join("appliance.toml"),
            0o644,
        )
    }

    /// Adds a file with the given contents.
    pub fn add_bytes(&mut self, dest: &str, data: Vec<u8>, mode: u32) {
        let mut end = 0;
        while let Some(pos) = dest[end..].find('/') {
            end += pos;
            self.entries
                .entry(dest[..end].to_string())
                .or_insert(CpioEntry::Dir { mode: 0o755 });
            end += 1;
        }
        self.entries
            .insert(dest.to_string(), CpioEntry::File { mode, data });
    }

    /// Copies a host executable (stripped of debug info when `strip` is available) to
    /// `bin/<name>`, with the shared libraries it needs and the dynamic loader.
    pub fn add_program(&mut self, name: &str, src: &Path) -> Result<(), NestedError> {
        let stripped =
            std::env::temp_dir().join(format!("slicenet-nested-{}-{name}", std::process::id()));
        let data = match Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(src)
            .status()
        {
            Ok(s) if s.success() => {
                let data = fs::read(&stripped).map_err(io(&stripped));
                let _ = fs::remove_file(&stripped);
                data?
            }
            _ => fs::read(src).map_err(io(src))?,
        };
        let mut needed: Vec<String> = elf_needed(&data);
        self.add_bytes(&format!("bin/{name}"), data, 0o755);
        needed.push("ld-linux-x86-64.so.2".into());
        let mut seen = BTreeSet::new();
        while let Some(lib) = needed.pop() {
            if !seen.insert(lib.clone()) {
                continue;
            }
            let found = [
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64",
            ]
            .iter()
            .map(|d| Path::new(d).join(&lib))
            .find(|p| p.exists())
            .ok_or_else(|| {
                NestedError::Missing(format!("shared library {lib} not found on this host"))
            })?;
            let data = fs::read(&found).map_err(io(&found))?;
            needed.extend(elf_needed(&data));
            let dest = if lib.starts_with("ld-linux") {
                format!("lib64/{lib}")
            } else {
                format!("lib/x86_64-linux-gnu/{lib}")
            };
            self.add_bytes(&dest, data, 0o755);
        }
        Ok(())
    }

    /// Boots the outer VM, runs `script` (busybox sh) with /t as working directory once KVM
    /// is loaded, and returns its console output. The script's exit status is printed as
    /// `NESTED-EXIT <status>`; the VM then powers off.
    pub fn run(mut self, script: &str, timeout: Duration) -> Result<NestedRun, NestedError> {
        qemu_available()?;
        let init = "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             mount -t tmpfs tmpfs /tmp\n\
             insmod /m/irqbypass.ko && insmod /m/kvm.ko && insmod /m/kvm-amd.ko || echo NESTED-NO-KVM\n\
             cd /t\n\
             echo NESTED-START\n\
             sh /t/test.sh\n\
             echo \"NESTED-EXIT $?\"\n\
             poweroff -f\n";
        self.add_bytes("init", init.as_bytes().to_vec(), 0o755);
        self.add_bytes("t/test.sh", script.as_bytes().to_vec(), 0o755);
        let dir = tempfile::Builder::new()
            .prefix("slicenet-nested-")
            .tempdir()
            .map_err(io(Path::new("temporary directory")))?;
        let initrd = dir.path().join("outer-initrd.img");
        {
            let file = fs::File::create(&initrd).map_err(io(&initrd))?;
            let mut writer = CpioWriter::new(std::io::BufWriter::new(file));
            for (name, entry) in &self.entries {
                writer.entry(name, entry).map_err(io(&initrd))?;
            }
            writer
                .finish()
                .and_then(|mut w| w.flush())
                .map_err(io(&initrd))?;
        }
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(QEMU_HEADLESS_ARGS)
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NestedError::Unavailable(format!("starting qemu-system-x86_64: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut output = String::new();
        let deadline = started + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = self.idle_timeout.map_or(left, |idle| idle.min(left));
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let reason = if Instant::now() >= deadline {
                        format!("did not finish within {} s", timeout.as_secs())
                    } else {
                        format!(
                            "printed nothing for {} s (hung?) after running {:.0} s",
                            wait.as_secs(),
                            started.elapsed().as_secs_f64()
                        )
                    };
                    return Err(NestedError::Timeout { reason, output });
                }
            }
        }
        let _ = child.wait();
        Ok(NestedRun {
            output,
            elapsed: started.elapsed(),
        })
    }
}
