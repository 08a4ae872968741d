//! VMM benchmark: time from starting the VMM to the guest's ready marker (10 boots: median,
//! p90) and the VMM's own memory overhead (process RSS minus the guest memory it touched),
//! for slicenet-vmm and for QEMU (`-M microvm,acpi=on`) booting the same kernel, initramfs,
//! memory, vCPUs and NIC, in the same run. Figures are printed side by side with ratios.
//!
//! Where the host's KVM cannot run a stock kernel (PVM, see the vmm crate's `host` module)
//! both VMMs run inside a nested hardware-virtualization host (QEMU TCG `-cpu max` with
//! kvm-amd); absolute times there are meaningless (everything is emulated), so compare the
//! ratios only. On a server with VT-x/AMD-V run it with `--direct` for real figures:
//!
//! ```text
//! cargo build --release -p slicenet-vmm -p slicenet-experiments --bin slicenet-vmm --bin vmm_bench
//! sudo target/release/vmm_bench --direct          # 10 boots each, prints ms and MiB
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use slicenet_vmm::appliance::build::{build_default, default_cache_dir, BuildOptions};
use slicenet_vmm::appliance::{derive_mac, Appliance};
use slicenet_vmm::host::check_host;
use slicenet_vmm::nested::NestedHost;

#[derive(Debug, Parser)]
#[command(about = "Boot time and memory overhead: slicenet-vmm vs QEMU microvm")]
struct Cli {
    /// Boots per runtime.
    #[arg(long, default_value_t = 10)]
    boots: usize,
    /// The slicenet-vmm binary (default: next to this benchmark's executable).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Run on this host's KVM instead of inside the nested host (needs VT-x/AMD-V).
    #[arg(long)]
    direct: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Extra kernel parameters for both VMMs' guests (diagnosis, e.g. `printk.time=1
    /// initcall_debug`); the figures then describe that command line, not the appliance's.
    #[arg(long)]
    append: Option<String>,
    /// Print each boot's serial console up to the ready marker on stderr, lines prefixed with
    /// the runtime and boot number.
    #[arg(long)]
    console: bool,
    #[command(subcommand)]
    inner: Option<Inner>,
}

#[derive(Debug, Subcommand)]
enum Inner {
    /// (Used inside the nested host.) Measure both runtimes and print RESULT-JSON.
    Measure {
        #[arg(long)]
        appliance: PathBuf,
        #[arg(long)]
        boots: usize,
        #[arg(long)]
        vmm: PathBuf,
        #[arg(long)]
        qemu: PathBuf,
        #[arg(long)]
        qemu_data: Option<PathBuf>,
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        append: Option<String>,
        #[arg(long)]
        console: bool,
    },
}

/// One boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sample {
    ready_ms: f64,
    rss_kib: u64,
    guest_rss_kib: u64,
}

/// All boots of one runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Series {
    runtime: String,
    samples: Vec<Sample>,
}

impl Series {
    fn ready_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|s| s.ready_ms).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median_ms(&self) -> f64 {
        percentile(&self.ready_ms(), 50.0)
    }

    fn p90_ms(&self) -> f64 {
        percentile(&self.ready_ms(), 90.0)
    }

    /// Median VMM overhead in MiB: process RSS minus the guest RAM mapping's RSS.
    fn overhead_mib(&self) -> f64 {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.rss_kib.saturating_sub(s.guest_rss_kib) as f64 / 1024.0)
            .collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Inner::Measure {
        appliance,
        boots,
        vmm,
        qemu,
        qemu_data,
        work,
        append,
        console,
    }) = cli.inner
    {
        let options = Options {
            append,
            console,
            console_prefix: "CONSOLE|",
        };
        let result = measure(
            &appliance,
            boots,
            &vmm,
            &qemu,
            qemu_data.as_deref(),
            &work,
            &options,
        )?;
        println!("RESULT-JSON {}", serde_json::to_string(&result)?);
        return Ok(());
    }

    let vmm = match cli.vmm {
        Some(path) => path,
        None => std::env::current_exe()?
            .with_file_name("slicenet-vmm")
            .canonicalize()
            .context("slicenet-vmm not found next to vmm_bench: build it (cargo build --release -p slicenet-vmm) or pass --vmm")?,
    };
    eprintln!("vmm_bench: building (or finding) the default appliance");
    let cache = default_cache_dir();
    let built = build_default(&BuildOptions::new("default"), &mut |l| eprintln!("  {l}"))?;
    let appliance = Appliance::load(&built.dir)?;
    let qemu = which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is needed (Debian qemu-system-x86)")?;

    let (result, where_) = if cli.direct {
        check_host().context("--direct needs a host whose KVM runs stock kernels")?;
        let work = tempfile::tempdir()?;
        let options = Options {
            append: cli.append.clone(),
            console: cli.console,
            console_prefix: "",
        };
        let result = measure(
            appliance.dir(),
            cli.boots,
            &vmm,
            &qemu,
            None,
            work.path(),
            &options,
        )?;
        (result, "this host's KVM".to_string())
    } else {
        let mut host = NestedHost::new(&appliance, &cache)?;
        host.add_program("vmm_bench", &std::env::current_exe()?)?;
        host.add_program("slicenet-vmm", &vmm)?;
        host.add_program("qemu-system-x86_64", &qemu)?;
        for file in ["qboot.rom", "linuxboot_dma.bin", "kvmvapic.bin"] {
            let src = Path::new("/usr/share/qemu").join(file);
            if src.exists() {
                host.add_file(&format!("t/qemu-data/{file}"), &src, 0o644)?;
            }
        }
        host.add_file(
            "t/qemu-data/bios-microvm.bin",
            Path::new("/usr/share/qemu/qboot.rom"),
            0o644,
        )?;
        for (_, part) in appliance.parts() {
            host.add_file(
                &format!("t/app/{}", part.path),
                &appliance.dir().join(&part.path),
                0o644,
            )?;
        }
        host.add_file(
            "t/app/appliance.toml",
            &appliance.dir().join("appliance.toml"),
            0o644,
        )?;
        let mut script = format!(
            "vmm_bench measure --appliance /t/app --boots {} --vmm /bin/slicenet-vmm \
             --qemu /bin/qemu-system-x86_64 --qemu-data /t/qemu-data --work /tmp",
            cli.boots
        );
        if let Some(append) = &cli.append {
            // The outer VM's busybox sh reads this line: keep the parameters one quoted word.
            if append.contains('\'') {
                bail!("--append must not contain a single quote");
            }
            script.push_str(&format!(" --append '{append}'"));
        }
        if cli.console {
            script.push_str(" --console");
        }
        script.push('\n');
        eprintln!(
            "vmm_bench: {} boots per runtime inside the nested host (QEMU TCG -cpu max + kvm-amd); this takes minutes",
            cli.boots
        );
        let run = host.run(
            &script,
            Duration::from_secs(120 + 3 * 90 * cli.boots as u64),
        )?;
        let line = run
            .output
            .lines()
            .find_map(|l| l.strip_prefix("RESULT-JSON "))
            .with_context(|| format!("the nested run printed no result:\n{}", run.output))?;
        if cli.console {
            for line in run.output.lines() {
                match line.strip_prefix("CONSOLE|") {
                    Some(line) => eprintln!("{line}"),
                    None => eprintln!("nested host| {line}"),
                }
            }
        }
        (
            serde_json::from_str(line)?,
            "the nested host (QEMU TCG -cpu max + kvm-amd): compare ratios only".to_string(),
        )
    };
    report(&result, &where_, cli.json);
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn report(result: &[Series], where_: &str, json: bool) {
    if json {
        let rows: Vec<serde_json::Value> = result
            .iter()
            .map(|s| {
                serde_json::json!({
                    "runtime": s.runtime,
                    "boots": s.samples.len(),
                    "median_ms": s.median_ms(),
                    "p90_ms": s.p90_ms(),
                    "overhead_mib": s.overhead_mib(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "where": where_, "runtimes": rows })
        );
        return;
    }
    println!(
        "VMM start -> guest ready marker, default appliance (256 MiB, 1 vCPU, 1 NIC), on {where_}"
    );
    println!(
        "{:<34} {:>6} {:>11} {:>9} {:>13}",
        "runtime", "boots", "median ms", "p90 ms", "overhead MiB"
    );
    for s in result {
        println!(
            "{:<34} {:>6} {:>11.0} {:>9.0} {:>13.1}",
            s.runtime,
            s.samples.len(),
            s.median_ms(),
            s.p90_ms(),
            s.overhead_mib()
        );
    }
    if let Some(qemu) = result.iter().find(|s| s.runtime.starts_with("qemu")) {
        for s in result.iter().filter(|s| !s.runtime.starts_with("qemu")) {
            println!(
                "ratio {} / qemu: boot median {:.2} (target <= 0.5), p90 {:.2}; overhead {:.2}x",
                s.runtime,
                s.median_ms() / qemu.median_ms(),
                s.p90_ms() / qemu.p90_ms(),
                s.overhead_mib() / qemu.overhead_mib()
            );
        }
    }
    println!(
        "target: slicenet-vmm overhead <= 5 MiB; on hardware KVM <= 150 ms to the ready marker"
    );
}

/// How `measure` runs and what it shows.
struct Options {
    /// Extra kernel parameters for both runtimes.
    append: Option<String>,
    /// Print each boot's console output.
    console: bool,
    /// Prefix of those lines (the outer run picks them out of the nested host's console).
    console_prefix: &'static str,
}

/// Boots each runtime `boots` times and returns the samples.
fn measure(
    appliance_dir: &Path,
    boots: usize,
    vmm: &Path,
    qemu: &Path,
    qemu_data: Option<&Path>,
    work: &Path,
    options: &Options,
) -> anyhow::Result<Vec<Series>> {
    let appliance = Appliance::load(appliance_dir)?;
    let m = appliance.manifest();
    let mac = derive_mac("vmm-bench", 0);
    let mut guest_params = format!("slicenet.net={mac},198.19.9.1/24 slicenet.hostname=bench");
    if let Some(append) = &options.append {
        guest_params.push(' ');
        guest_params.push_str(append);
    }
    let vm_sock = work.join("bench.vm.sock");
    let switch_sock = work.join("bench.switch.sock");
    let mut series = vec![
        Series {
            runtime: "slicenet-vmm".into(),
            samples: Vec::new(),
        },
        Series {
            runtime: "slicenet-vmm --no-verify".into(),
            samples: Vec::new(),
        },
        Series {
            runtime: "qemu -M microvm,acpi=on".into(),
            samples: Vec::new(),
        },
    ];
    for boot in 0..boots {
        for (i, s) in series.iter_mut().enumerate() {
            let mut command = if i < 2 {
                let mut c = Command::new(vmm);
                c.arg("run")
                    .arg("--appliance")
                    .arg(appliance_dir)
                    .arg("--hostname")
                    .arg("bench")
                    .arg("--net")
                    .arg(format!(
                        "vm={},switch={},mac={mac},ip=198.19.9.1/24",
                        vm_sock.display(),
                        switch_sock.display()
                    ))
                    .arg("--serial-stdout");
                if let Some(append) = &options.append {
                    c.arg("--append").arg(append);
                }
                if i == 1 {
                    c.arg("--no-verify");
                }
                c
            } else {
                let mut c = Command::new(qemu);
                if let Some(data) = qemu_data {
                    c.arg("-L").arg(data);
                }
                c.args(["-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host"])
                    .args([
                        "-m",
                        &m.memory_mib.to_string(),
                        "-smp",
                        &m.vcpus.to_string(),
                    ])
                    .args([
                        "-nodefaults",
                        "-no-user-config",
                        "-nographic",
                        "-serial",
                        "stdio",
                    ])
                    .arg("-kernel")
                    .arg(appliance.kernel_path())
                    .arg("-initrd")
                    .arg(appliance.initrd_path())
                    .arg("-append")
                    // The same command line slicenet-vmm gives the guest, platform flags included.
                    .arg(format!(
                        "{} {} {guest_params}",
                        m.cmdline,
                        slicenet_vmm::runtime::PLATFORM_CMDLINE
                    ))
                    .arg("-netdev")
                    .arg(format!(
                        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                        vm_sock.display(),
                        switch_sock.display()
                    ))
                    .arg("-device")
                    .arg(format!("virtio-net-device,netdev=n0,mac={mac}"))
                    .arg("-no-reboot");
                c
            };
            let _ = std::fs::remove_file(&vm_sock);
            let (sample, console) = boot_once(
                &mut command,
                m.memory_mib,
                Duration::from_secs(240),
                // Wait for a diagnostic command's output only when there is one.
                options.console
                    && options
                        .append
                        .as_deref()
                        .is_some_and(|a| a.contains("slicenet.run=")),
                options.console,
            )
            .with_context(|| format!("{} boot {}", s.runtime, boot + 1))?;
            if options.console {
                for line in console {
                    println!(
                        "{}{} #{}| {line}",
                        options.console_prefix,
                        s.runtime,
                        boot + 1
                    );
                }
            }
            eprintln!(
                "vmm_bench: {} boot {}: ready after {:.0} ms, RSS {} KiB (guest {} KiB)",
                s.runtime,
                boot + 1,
                sample.ready_ms,
                sample.rss_kib,
                sample.guest_rss_kib
            );
            s.samples.push(sample);
        }
    }
    Ok(series)
}

/// Starts the VMM, waits for the ready marker on its stdout (the serial console), samples
/// its memory, then stops it. Also returns the console lines: up to the marker, and with
/// `keep_console` up to the end of a `slicenet.run=` command (waiting for it up to 60 s),
/// and with `capture_stderr` the VMM's own messages.
fn boot_once(
    command: &mut Command,
    memory_mib: u32,
    timeout: Duration,
    keep_console: bool,
    capture_stderr: bool,
) -> anyhow::Result<(Sample, Vec<String>)> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    // The VMM's own diagnostics (e.g. slicenet-vmm's start-up timeline) join the console.
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            BufReader::new(e)
                .lines()
                .map_while(Result::ok)
                .map(|l| format!("stderr: {l}"))
                .collect::<Vec<String>>()
        })
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let (rest_tx, rest_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut console = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let ready = line.contains(slicenet_vmm::appliance::READY_MARKER);
            console.push(line);
            if ready {
                let _ = tx.send(Instant::now());
                break;
            }
        }
        // The rest: what a `slicenet.run=` command given with --append prints (e.g. dmesg).
        for line in lines {
            let Ok(line) = line else { break };
            let done = line.starts_with("SLICENET-RUN-EXIT");
            console.push(line);
            if done {
                break;
            }
        }
        let _ = rest_tx.send(console);
    });
    let ready = match rx.recv_timeout(timeout) {
        Ok(at) => at,
        Err(_) => {
            stop(&mut child);
            bail!("no ready marker within {} s", timeout.as_secs());
        }
    };
    let ready_ms = ready.duration_since(started).as_secs_f64() * 1000.0;
    let (rss_kib, guest_rss_kib) = memory_of(child.id(), u64::from(memory_mib) * 1024)?;
    // With `keep_console`, give a diagnostic `slicenet.run=` command time to finish printing.
    let mut console = if keep_console {
        rest_rx.recv_timeout(Duration::from_secs(60)).ok()
    } else {
        None
    };
    stop(&mut child);
    if console.is_none() {
        console = rest_rx.recv_timeout(Duration::from_secs(5)).ok();
    }
    let mut console = console.unwrap_or_default();
    if let Some(stderr) = stderr {
        console.extend(stderr.join().unwrap_or_default());
    }
    Ok((
        Sample {
            ready_ms,
            rss_kib,
            guest_rss_kib,
        },
        console,
    ))
}

fn stop(child: &mut Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (total RSS, RSS of the guest RAM mapping) in KiB, from /proc/<pid>/smaps. The guest RAM
/// mapping is the smallest mapping at least as big as guest memory.
fn memory_of(pid: u32, guest_kib: u64) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut guest = 0;
    let mut best_size = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let rss: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total += rss;
                if size >= guest_kib && (best_size == 0 || size < best_size) {
                    best_size = size;
                    guest = rss;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}
