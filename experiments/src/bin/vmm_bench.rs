//! VMM benchmark: time from starting the VMM to the guest's ready marker (10 boots: median,
//! p90) and the VMM's own memory overhead (process RSS minus the guest memory it touched),
//! for slicenet-vmm and for QEMU (`-M microvm,acpi=on`, and the same with `rtc=off`) booting
//! the same kernel, initramfs, memory, vCPUs, NIC and command line, in the same run. Each VMM
//! boots the kernel both ways it can: the bzImage (decompressed in the guest) and, when the
//! appliance carries one, the uncompressed vmlinux through its PVH entry point (QEMU: `-kernel
//! vmlinux`). The boot-time target is judged on each VMM's fastest way of booting the same
//! kernel (slicenet-vmm with its hash check, QEMU's fastest row); every row is printed.
//!
//! Where the host's KVM cannot run a stock kernel (PVM, see the vmm crate's `host` module)
//! both VMMs run inside a nested hardware-virtualization host (QEMU TCG `-cpu max` with
//! kvm-amd); absolute times there are meaningless (everything is emulated), so compare the
//! ratios only. Each boot has a time limit, and a nested host that stops answering is stopped:
//! such boots are reported as timed out with the count of boots that completed. On a server
//! with VT-x/AMD-V run it with `--direct` for real figures:
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
use slicenet_vmm::nested::{NestedError, NestedHost};

#[derive(Debug, Parser)]
#[command(about = "Boot time and memory overhead: slicenet-vmm vs QEMU microvm")]
struct Cli {
    /// Boots per runtime.
    #[arg(long, default_value_t = 10)]
    boots: usize,
    /// Seconds one boot may take to reach the ready marker before it counts as timed out.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
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
    /// (Used inside the nested host.) Measure all runtimes, printing one BOOT-JSON line per
    /// boot as it ends.
    Measure {
        #[arg(long)]
        appliance: PathBuf,
        #[arg(long)]
        boots: usize,
        #[arg(long)]
        boot_timeout: u64,
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

/// What one boot of one runtime gave: a sample, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BootEvent {
    runtime: String,
    boot: usize,
    result: Result<Sample, String>,
}

/// All boots of one runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Series {
    runtime: String,
    samples: Vec<Sample>,
    /// Boots without a sample: (boot number, why).
    failures: Vec<(usize, String)>,
}

impl Series {
    fn new(runtime: &str) -> Series {
        Series {
            runtime: runtime.to_string(),
            samples: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn is_qemu(&self) -> bool {
        self.runtime.starts_with("qemu")
    }

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

/// Groups boot events by runtime, in the order the runtimes first appear.
fn collect(events: &[BootEvent]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for event in events {
        let index = match series.iter().position(|s| s.runtime == event.runtime) {
            Some(i) => i,
            None => {
                series.push(Series::new(&event.runtime));
                series.len() - 1
            }
        };
        match &event.result {
            Ok(sample) => series[index].samples.push(sample.clone()),
            Err(why) => series[index].failures.push((event.boot, why.clone())),
        }
    }
    series
}

/// Reads BOOT-BEGIN / BOOT-JSON lines out of the nested host's console. A boot that began
/// and never ended (the nested host hung or was stopped) becomes a failure saying so.
fn parse_nested_events(output: &str) -> anyhow::Result<Vec<BootEvent>> {
    let mut events = Vec::new();
    let mut pending: Option<(String, usize)> = None;
    for line in output.lines() {
        if let Some(json) = line.strip_prefix("BOOT-BEGIN ") {
            let (runtime, boot): (String, usize) = serde_json::from_str(json)?;
            pending = Some((runtime, boot));
        } else if let Some(json) = line.strip_prefix("BOOT-JSON ") {
            events.push(serde_json::from_str(json)?);
            pending = None;
        }
    }
    if let Some((runtime, boot)) = pending {
        events.push(BootEvent {
            runtime,
            boot,
            result: Err("the nested host stopped answering during this boot".into()),
        });
    }
    Ok(events)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Inner::Measure {
        appliance,
        boots,
        boot_timeout,
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
            boot_timeout: Duration::from_secs(boot_timeout),
            announce_boots: true,
        };
        measure(
            &appliance,
            boots,
            &vmm,
            &qemu,
            qemu_data.as_deref(),
            &work,
            &options,
            &mut |event| match serde_json::to_string(event) {
                Ok(json) => println!("BOOT-JSON {json}"),
                Err(e) => eprintln!("vmm_bench: cannot encode a boot result: {e}"),
            },
        )?;
        println!("MEASURE-DONE");
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
    let expected = cli.boots * runtimes(&appliance).len();

    let (events, where_, note) = if cli.direct {
        check_host().context("--direct needs a host whose KVM runs stock kernels")?;
        let work = tempfile::tempdir()?;
        let options = Options {
            append: cli.append.clone(),
            console: cli.console,
            console_prefix: "",
            boot_timeout: Duration::from_secs(cli.boot_timeout),
            announce_boots: false,
        };
        let mut events = Vec::new();
        measure(
            appliance.dir(),
            cli.boots,
            &vmm,
            &qemu,
            None,
            work.path(),
            &options,
            &mut |event| events.push(event.clone()),
        )?;
        (events, "this host's KVM".to_string(), None)
    } else {
        let mut host = NestedHost::new(&appliance, &cache)?
            // Every boot prints within its time limit; silence past that means a hung host.
            .idle_timeout(Duration::from_secs(cli.boot_timeout + 60));
        host.add_program("vmm_bench", &std::env::current_exe()?)?;
        host.add_program("slicenet-vmm", &vmm)?;
        host.add_program("qemu-system-x86_64", &qemu)?;
        for file in ["qboot.rom", "linuxboot_dma.bin", "kvmvapic.bin", "pvh.bin"] {
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
        host.add_appliance("t/app", &appliance)?;
        let mut script = format!(
            "vmm_bench measure --appliance /t/app --boots {} --boot-timeout {} \
             --vmm /bin/slicenet-vmm --qemu /bin/qemu-system-x86_64 --qemu-data /t/qemu-data \
             --work /tmp",
            cli.boots, cli.boot_timeout
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
            "vmm_bench: {} boots of {} runtimes inside the nested host (QEMU TCG -cpu max + kvm-amd); this takes minutes",
            cli.boots,
            runtimes(&appliance).len()
        );
        let (output, note) = match host.run(
            &script,
            Duration::from_secs(120 + (cli.boot_timeout + 30) * expected as u64),
        ) {
            Ok(run) if run.output.contains("MEASURE-DONE") => (run.output, None),
            Ok(run) => {
                let note = "the measurement inside the nested host ended early".to_string();
                (run.output, Some(note))
            }
            Err(NestedError::Timeout { reason, output }) => (output, Some(reason)),
            Err(e) => return Err(e.into()),
        };
        if cli.console || note.is_some() {
            for line in output.lines() {
                match line.strip_prefix("CONSOLE|") {
                    Some(line) => eprintln!("{line}"),
                    None if !line.starts_with("BOOT-") => eprintln!("nested host| {line}"),
                    None => {}
                }
            }
        }
        (
            parse_nested_events(&output)?,
            "the nested host (QEMU TCG -cpu max + kvm-amd): compare ratios only".to_string(),
            note,
        )
    };
    let completed = events.iter().filter(|e| e.result.is_ok()).count();
    let result = collect(&events);
    report(
        &result,
        &where_,
        cli.json,
        completed,
        expected,
        note.as_deref(),
    );
    if completed == 0 {
        bail!("no boot completed");
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn report(
    result: &[Series],
    where_: &str,
    json: bool,
    completed: usize,
    expected: usize,
    note: Option<&str>,
) {
    let judged = judged(result);
    if json {
        let rows: Vec<serde_json::Value> = result
            .iter()
            .map(|s| {
                serde_json::json!({
                    "runtime": s.runtime,
                    "boots": s.samples.len(),
                    "failed": s.failures,
                    "median_ms": s.median_ms(),
                    "p90_ms": s.p90_ms(),
                    "overhead_mib": s.overhead_mib(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "where": where_,
                "runtimes": rows,
                "completed_boots": completed,
                "expected_boots": expected,
                "note": note,
                "judged": judged.map(|(ours, qemu, ratio)| serde_json::json!({
                    "slicenet": ours.runtime, "qemu": qemu.runtime, "boot_median_ratio": ratio,
                })),
            })
        );
        return;
    }
    println!(
        "VMM start -> guest ready marker, default appliance (256 MiB, 1 vCPU, 1 NIC), on {where_}"
    );
    println!(
        "{:<36} {:>8} {:>11} {:>9} {:>13}",
        "runtime", "boots", "median ms", "p90 ms", "overhead MiB"
    );
    for s in result {
        println!(
            "{:<36} {:>8} {:>11.0} {:>9.0} {:>13.1}",
            s.runtime,
            format!("{}/{}", s.samples.len(), s.samples.len() + s.failures.len()),
            s.median_ms(),
            s.p90_ms(),
            s.overhead_mib()
        );
    }
    for s in result {
        for (boot, why) in &s.failures {
            println!("{} boot {boot}: {why}", s.runtime);
        }
    }
    for qemu in result.iter().filter(|s| s.is_qemu()) {
        for s in result.iter().filter(|s| !s.is_qemu()) {
            println!(
                "ratio {} / {}: boot median {:.2}, p90 {:.2}; overhead {:.2}x",
                s.runtime,
                qemu.runtime,
                s.median_ms() / qemu.median_ms(),
                s.p90_ms() / qemu.p90_ms(),
                s.overhead_mib() / qemu.overhead_mib()
            );
        }
    }
    if let Some((ours, qemu, ratio)) = judged {
        println!(
            "judged (each VMM's fastest way to boot the same kernel): {} / {} = {ratio:.2} (target <= 0.5)",
            ours.runtime, qemu.runtime
        );
    }
    println!("{completed} of {expected} boots completed");
    if let Some(note) = note {
        println!("note: {note}");
    }
    println!(
        "target: slicenet-vmm overhead <= 5 MiB; on hardware KVM <= 150 ms to the ready marker"
    );
}

/// The judged comparison: slicenet-vmm's fastest row that keeps its hash check (no `--`
/// flags) over QEMU's fastest row, with their median ratio.
fn judged(result: &[Series]) -> Option<(&Series, &Series, f64)> {
    let fastest = |qemu: bool| {
        result
            .iter()
            .filter(|s| s.is_qemu() == qemu && !s.samples.is_empty())
            .filter(|s| qemu || !s.runtime.contains("--"))
            .min_by(|a, b| a.median_ms().total_cmp(&b.median_ms()))
    };
    let (ours, qemu) = (fastest(false)?, fastest(true)?);
    Some((ours, qemu, ours.median_ms() / qemu.median_ms()))
}

/// How `measure` runs and what it shows.
struct Options {
    /// Extra kernel parameters for both runtimes.
    append: Option<String>,
    /// Print each boot's console output.
    console: bool,
    /// Prefix of those lines (the outer run picks them out of the nested host's console).
    console_prefix: &'static str,
    /// Time limit of one boot.
    boot_timeout: Duration,
    /// Print a BOOT-BEGIN line before each boot (inside the nested host, so that a boot the
    /// host hung in can be named).
    announce_boots: bool,
}

/// The runtimes measured: slicenet-vmm (the appliance's default way: vmlinux via PVH when
/// present), slicenet-vmm without hashing, slicenet-vmm and QEMU booting the bzImage, and QEMU
/// booting the vmlinux through PVH when present. QEMU boots each kernel twice: with microvm's
/// default CMOS RTC, and with `rtc=off` (its fastest: the stock kernel's rtc_cmos driver spends
/// seconds probing the emulated RTC; slicenet-vmm has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Vmm { verify: bool, bzimage: bool },
    Qemu { vmlinux: bool, rtc: bool },
}

impl Runtime {
    fn name(self, has_vmlinux: bool) -> &'static str {
        match self {
            Runtime::Vmm {
                verify: true,
                bzimage: false,
            } if has_vmlinux => "slicenet-vmm vmlinux/PVH",
            Runtime::Vmm { verify: true, .. } => "slicenet-vmm bzImage",
            Runtime::Vmm { verify: false, .. } if has_vmlinux => {
                "slicenet-vmm vmlinux/PVH --no-verify"
            }
            Runtime::Vmm { verify: false, .. } => "slicenet-vmm bzImage --no-verify",
            Runtime::Qemu {
                vmlinux: false,
                rtc: true,
            } => "qemu microvm bzImage",
            Runtime::Qemu {
                vmlinux: true,
                rtc: true,
            } => "qemu microvm vmlinux/PVH",
            Runtime::Qemu {
                vmlinux: false,
                rtc: false,
            } => "qemu microvm rtc=off bzImage",
            Runtime::Qemu {
                vmlinux: true,
                rtc: false,
            } => "qemu microvm rtc=off vmlinux/PVH",
        }
    }
}

fn runtimes(appliance: &Appliance) -> Vec<Runtime> {
    let mut all = vec![Runtime::Vmm {
        verify: true,
        bzimage: false,
    }];
    all.push(Runtime::Vmm {
        verify: false,
        bzimage: false,
    });
    if appliance.vmlinux_path().is_some() {
        all.push(Runtime::Vmm {
            verify: true,
            bzimage: true,
        });
    }
    for rtc in [true, false] {
        all.push(Runtime::Qemu {
            vmlinux: false,
            rtc,
        });
        if appliance.vmlinux_path().is_some() {
            all.push(Runtime::Qemu { vmlinux: true, rtc });
        }
    }
    all
}

/// Boots each runtime `boots` times (interleaved, so slow phases of the machine hit all
/// runtimes alike, and in an order rotated by one each round, so no runtime always follows
/// the same one) and hands each boot's result to `on_boot` as it ends. A boot that times out
/// or fails is a result too; the measurement goes on.
#[allow(clippy::too_many_arguments)]
fn measure(
    appliance_dir: &Path,
    boots: usize,
    vmm: &Path,
    qemu: &Path,
    qemu_data: Option<&Path>,
    work: &Path,
    options: &Options,
    on_boot: &mut dyn FnMut(&BootEvent),
) -> anyhow::Result<()> {
    let appliance = Appliance::load(appliance_dir)?;
    let m = appliance.manifest();
    let has_vmlinux = appliance.vmlinux_path().is_some();
    let mac = derive_mac("vmm-bench", 0);
    let mut guest_params = format!("slicenet.net={mac},198.19.9.1/24 slicenet.hostname=bench");
    if let Some(append) = &options.append {
        guest_params.push(' ');
        guest_params.push_str(append);
    }
    let vm_sock = work.join("bench.vm.sock");
    let switch_sock = work.join("bench.switch.sock");
    let all = runtimes(&appliance);
    for boot in 1..=boots {
        for k in 0..all.len() {
            let runtime = all[(k + boot - 1) % all.len()];
            let name = runtime.name(has_vmlinux);
            let mut command = match runtime {
                Runtime::Vmm { verify, bzimage } => {
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
                    if !verify {
                        c.arg("--no-verify");
                    }
                    if bzimage {
                        c.arg("--bzimage");
                    }
                    c
                }
                Runtime::Qemu { vmlinux, rtc } => {
                    let kernel = match (vmlinux, appliance.vmlinux_path()) {
                        (true, Some(path)) => path,
                        _ => appliance.kernel_path(),
                    };
                    let mut c = Command::new(qemu);
                    if let Some(data) = qemu_data {
                        c.arg("-L").arg(data);
                    }
                    let machine = if rtc {
                        "microvm,acpi=on"
                    } else {
                        "microvm,acpi=on,rtc=off"
                    };
                    c.args(["-M", machine, "-accel", "kvm", "-cpu", "host"])
                        .args([
                            "-m",
                            &m.memory_mib.to_string(),
                            "-smp",
                            &m.vcpus.to_string(),
                        ])
                        .args(slicenet_vmm::nested::QEMU_HEADLESS_ARGS)
                        .arg("-kernel")
                        .arg(kernel)
                        .arg("-initrd")
                        .arg(appliance.initrd_path())
                        .arg("-append")
                        // The same command line slicenet-vmm gives the guest, platform flags
                        // included.
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
                }
            };
            let _ = std::fs::remove_file(&vm_sock);
            if options.announce_boots {
                println!("BOOT-BEGIN {}", serde_json::to_string(&(name, boot))?);
            }
            let result = boot_once(
                &mut command,
                m.memory_mib,
                options.boot_timeout,
                // Wait for a diagnostic command's output only when there is one.
                options.console
                    && options
                        .append
                        .as_deref()
                        .is_some_and(|a| a.contains("slicenet.run=")),
                options.console,
            );
            let result = match result {
                Ok((sample, console)) => {
                    if options.console {
                        for line in console {
                            println!("{}{name} #{boot}| {line}", options.console_prefix);
                        }
                    }
                    eprintln!(
                        "vmm_bench: {name} boot {boot}: ready after {:.0} ms, RSS {} KiB (guest {} KiB)",
                        sample.ready_ms, sample.rss_kib, sample.guest_rss_kib
                    );
                    Ok(sample)
                }
                Err(e) => {
                    eprintln!("vmm_bench: {name} boot {boot}: {e:#}");
                    Err(format!("{e:#}"))
                }
            };
            on_boot(&BootEvent {
                runtime: name.to_string(),
                boot,
                result,
            });
        }
    }
    Ok(())
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
            bail!("timed out: no ready marker within {} s", timeout.as_secs());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_the_nested_host_hung_in_is_a_named_failure() {
        let sample = |ms: f64| BootEvent {
            runtime: "a".into(),
            boot: 1,
            result: Ok(Sample {
                ready_ms: ms,
                rss_kib: 10,
                guest_rss_kib: 5,
            }),
        };
        let output = format!(
            "noise\nBOOT-BEGIN [\"a\",1]\nBOOT-JSON {}\nBOOT-BEGIN [\"b\",1]\nBOOT-JSON {}\nBOOT-BEGIN [\"a\",2]\nkernel noise\n",
            serde_json::to_string(&sample(100.0)).unwrap(),
            serde_json::to_string(&BootEvent {
                runtime: "b".into(),
                boot: 1,
                result: Err("timed out".into()),
            })
            .unwrap(),
        );
        let events = parse_nested_events(&output).unwrap();
        assert_eq!(events.len(), 3);
        let series = collect(&events);
        assert_eq!(series[0].runtime, "a");
        assert_eq!(series[0].samples.len(), 1);
        assert_eq!(series[0].failures.len(), 1);
        assert_eq!(series[0].failures[0].0, 2);
        assert!(series[0].failures[0].1.contains("stopped answering"));
        assert_eq!(series[1].failures, vec![(1, "timed out".to_string())]);
        assert_eq!(series[0].median_ms(), 100.0);
        assert!(series[1].median_ms().is_nan());
    }

    #[test]
    fn the_judged_line_takes_each_vmms_fastest_row_but_never_an_unverified_one() {
        let series = |runtime: &str, ms: &[f64]| {
            let mut s = Series::new(runtime);
            s.samples = ms
                .iter()
                .map(|&ready_ms| Sample {
                    ready_ms,
                    rss_kib: 0,
                    guest_rss_kib: 0,
                })
                .collect();
            s
        };
        let rows = vec![
            series("slicenet-vmm vmlinux/PVH", &[3000.0, 3100.0, 2900.0]),
            series("slicenet-vmm vmlinux/PVH --no-verify", &[1000.0]),
            series("slicenet-vmm bzImage", &[4000.0]),
            series("qemu microvm bzImage", &[9000.0]),
            series("qemu microvm rtc=off vmlinux/PVH", &[2000.0, 2200.0]),
            series("qemu microvm rtc=off bzImage", &[]),
        ];
        let (ours, qemu, ratio) = judged(&rows).unwrap();
        assert_eq!(ours.runtime, "slicenet-vmm vmlinux/PVH");
        assert_eq!(qemu.runtime, "qemu microvm rtc=off vmlinux/PVH");
        assert_eq!(ratio, 3000.0 / 2000.0);
        assert!(judged(&rows[..3]).is_none(), "no QEMU row, no judgement");
    }
}
