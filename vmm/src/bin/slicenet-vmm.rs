//! `slicenet-vmm`: one KVM microVM per process, booting a slicenet appliance.
//!
//! Exit statuses of `slicenet-vmm run`:
//!   0  the guest powered off            10 the guest rebooted
//!   1  the VMM failed (message on stderr) 11 the guest kernel panicked
//!   2  bad command line                 12 stopped by the control API or SIGTERM/SIGINT/SIGHUP
//!   3  this host's KVM cannot run a stock kernel (e.g. PVM), or no KVM
//!   4  the appliance is missing a part or a part does not match its SHA-256
//!   13 a vCPU failed (KVM emulation failure, failed VM entry)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use slicenet_vmm::appliance::vmlinux::pvh_entry_of_file;
use slicenet_vmm::appliance::{
    compose_cmdline, derive_mac, parse_mac, Appliance, ApplianceError, GuestNet, MacAddr,
};
use slicenet_vmm::control::{self, ApiRequest};
use slicenet_vmm::host::{check_host, HostError};
use slicenet_vmm::runtime::{self, DiskConfig, NetConfig, VmConfig};

#[derive(Debug, Parser)]
#[command(
    name = "slicenet-vmm",
    version,
    about = "A KVM microVM that boots slicenet appliances (one VM per process)",
    after_help = "Exit statuses of `run`: 0 guest powered off, 10 rebooted, 11 kernel panic, \
                  12 stopped (control API or signal), 13 vCPU failure, 1 VMM error, 2 usage, \
                  3 host KVM cannot run a stock kernel, 4 appliance invalid."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a VM and serve it until the guest ends or it is stopped.
    Run(Box<RunArgs>),
    /// Send a request to a running VMM's control socket.
    Ctl(CtlArgs),
    /// Say whether this host's KVM can run a stock guest kernel.
    CheckHost,
    /// Relay frames between the switch ends of two or more VM NICs (a hub, for tests and
    /// for wiring VMs back to back without the overlay switch).
    Relay(RelayArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Appliance directory (appliance.toml + parts); every part's SHA-256 is checked.
    #[arg(long, conflicts_with = "kernel")]
    appliance: Option<PathBuf>,
    /// Boot this bzImage instead of an appliance (with --initrd and --cmdline).
    #[arg(long, requires = "memory_mib")]
    kernel: Option<PathBuf>,
    /// The same kernel as an uncompressed vmlinux ELF, booted through PVH when it has a PVH
    /// entry point (with --kernel; an appliance names its own).
    #[arg(long, requires = "kernel")]
    vmlinux: Option<PathBuf>,
    /// Boot the appliance's bzImage even when it has a vmlinux with a PVH entry point.
    #[arg(long)]
    bzimage: bool,
    /// Initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Base kernel command line for --kernel (an appliance brings its own).
    #[arg(long, requires = "kernel", default_value = "console=ttyS0 panic=1")]
    cmdline: String,
    /// Skip hashing the appliance's parts (only when the caller just verified them).
    #[arg(long)]
    no_verify: bool,
    /// Sliver id: NIC MACs not given explicitly are derived from it.
    #[arg(long)]
    sliver_id: Option<String>,
    /// vCPUs (default: the appliance's).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB (default: the appliance's).
    #[arg(long)]
    memory_mib: Option<u32>,
    /// A NIC: `vm=VM_SOCK,switch=SWITCH_SOCK[,mac=MAC][,ip=ADDR/PREFIX][,mtu=N]` (repeatable, in
    /// guest order). The VMM binds VM_SOCK and sends frames to SWITCH_SOCK.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// Attach a raw disk image: `path=FILE[,ro]` (default: the appliance's disk, read-only).
    #[arg(long)]
    disk: Option<String>,
    /// Guest hostname (slicenet.hostname=).
    #[arg(long)]
    hostname: Option<String>,
    /// Shell command the default appliance runs once networking is up (slicenet.run=).
    #[arg(long)]
    run: Option<String>,
    /// Extra kernel command line parameters appended last.
    #[arg(long)]
    append: Option<String>,
    /// Append the serial console output to this file.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Copy the serial console output to stdout.
    #[arg(long)]
    serial_stdout: bool,
    /// Unix stream socket for interactive console clients.
    #[arg(long)]
    console_sock: Option<PathBuf>,
    /// Unix stream socket of the control API (status, stop, state, console).
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CtlArgs {
    /// The VMM's control socket.
    #[arg(long)]
    api: PathBuf,
    /// status | stop | state | console
    request: String,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// `VM_SOCK:SWITCH_SOCK` of one NIC (repeat for each NIC); the relay binds SWITCH_SOCK.
    #[arg(long = "port", required = true, num_args = 1)]
    ports: Vec<String>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args, started),
        Command::Ctl(args) => ctl(args).map(|()| 0),
        Command::CheckHost => match check_host() {
            Ok(()) => {
                println!("ok: KVM with hardware virtualization is available");
                Ok(0)
            }
            Err(e) => Err(e.into()),
        },
        Command::Relay(args) => relay(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("slicenet-vmm: error: {e:#}");
            let code = if e.downcast_ref::<HostError>().is_some()
                || matches!(
                    e.downcast_ref::<runtime::VmmError>(),
                    Some(runtime::VmmError::Host(_))
                ) {
                3
            } else if e.downcast_ref::<ApplianceError>().is_some()
                || matches!(
                    e.downcast_ref::<runtime::VmmError>(),
                    Some(runtime::VmmError::Appliance(_))
                )
            {
                4
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}

/// One parsed `--net` flag.
struct NetSpec {
    vm_sock: PathBuf,
    switch_sock: PathBuf,
    mac: Option<MacAddr>,
    ipv4: Option<(Ipv4Addr, u8)>,
    mtu: Option<u16>,
}

fn parse_net(spec: &str) -> anyhow::Result<NetSpec> {
    let (mut vm, mut switch, mut mac, mut ip, mut mtu) = (None, None, None, None, None);
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .with_context(|| format!("--net {spec:?}: expected key=value, got {part:?}"))?;
        match key {
            "vm" => vm = Some(PathBuf::from(value)),
            "switch" => switch = Some(PathBuf::from(value)),
            "mac" => {
                mac = Some(
                    parse_mac(value)
                        .with_context(|| format!("--net {spec:?}: bad MAC {value:?}"))?,
                )
            }
            "ip" => {
                let (addr, prefix) = value
                    .split_once('/')
                    .with_context(|| format!("--net {spec:?}: ip must be ADDR/PREFIX"))?;
                let addr: Ipv4Addr = addr
                    .parse()
                    .with_context(|| format!("--net {spec:?}: bad address"))?;
                let prefix: u8 = prefix
                    .parse()
                    .with_context(|| format!("--net {spec:?}: bad prefix"))?;
                ip = Some((addr, prefix));
            }
            "mtu" => {
                let value: u16 = value
                    .parse()
                    .ok()
                    .filter(|m| (576..=9000).contains(m))
                    .with_context(|| format!("--net {spec:?}: mtu must be 576..=9000"))?;
                mtu = Some(value);
            }
            other => bail!("--net {spec:?}: unknown key {other:?} (use vm, switch, mac, ip, mtu)"),
        }
    }
    Ok(NetSpec {
        vm_sock: vm.with_context(|| format!("--net {spec:?}: vm=PATH is required"))?,
        switch_sock: switch.with_context(|| format!("--net {spec:?}: switch=PATH is required"))?,
        mac,
        ipv4: ip,
        mtu,
    })
}

fn run(args: RunArgs, started: Instant) -> anyhow::Result<i32> {
    // A corrupt appliance is reported as such on any host: where the VM cannot start anyway
    // the parts are hashed before anything else. Where it can, hashing runs alongside the
    // boot (runtime::StartCheck: nothing the guest does leaves the VMM until it passes), so
    // it no longer delays the guest; missing parts are still refused up front.
    let mut start_check: Option<runtime::StartCheck> = None;
    let appliance = match &args.appliance {
        Some(dir) if args.no_verify => Some(Appliance::load_unverified(dir)?),
        Some(dir) if check_host().is_ok() => {
            let appliance = Appliance::load_unverified(dir)?;
            appliance.check_parts_present()?;
            // Only the kernel file that boots is hashed (with the initramfs and disk).
            let part = if pvh_vmlinux(&appliance, args.bzimage).is_some() {
                "vmlinux"
            } else {
                "kernel"
            };
            let to_verify = appliance.clone();
            start_check = Some(Box::new(move || to_verify.verify_for_boot(part)));
            Some(appliance)
        }
        Some(dir) => Some(Appliance::load(dir)?),
        None => None,
    };
    let vmlinux = match &appliance {
        Some(a) => pvh_vmlinux(a, args.bzimage),
        None => args.vmlinux.clone(),
    };
    let (kernel, initrd, base_cmdline, vcpus, memory_mib, appliance_disk) = match &appliance {
        Some(a) => (
            a.kernel_path(),
            Some(a.initrd_path()),
            a.manifest().cmdline.clone(),
            a.manifest().vcpus,
            a.manifest().memory_mib,
            a.disk_path(),
        ),
        None => (
            args.kernel
                .clone()
                .context("either --appliance or --kernel is required")?,
            args.initrd.clone(),
            args.cmdline.clone(),
            1,
            0,
            None,
        ),
    };
    let sliver_id = args
        .sliver_id
        .clone()
        .or_else(|| args.hostname.clone())
        .or_else(|| appliance.as_ref().map(|a| a.manifest().name.clone()))
        .unwrap_or_else(|| "slicenet-vmm".into());
    let fixed_macs = appliance
        .as_ref()
        .map(|a| a.nic_macs(&sliver_id))
        .unwrap_or_default();
    let mut nets = Vec::new();
    let mut guest_nets = Vec::new();
    for (i, spec) in args.nets.iter().enumerate() {
        let NetSpec {
            vm_sock,
            switch_sock,
            mac,
            ipv4,
            mtu,
        } = parse_net(spec)?;
        let mac = mac
            .or_else(|| fixed_macs.get(i).copied())
            .unwrap_or_else(|| derive_mac(&sliver_id, i));
        nets.push(NetConfig {
            mac,
            vm_sock,
            switch_sock,
        });
        guest_nets.push(GuestNet { mac, ipv4, mtu });
    }
    let disk = match &args.disk {
        Some(spec) => {
            let mut path = None;
            let mut read_only = false;
            for part in spec.split(',') {
                match part.split_once('=') {
                    Some(("path", p)) => path = Some(PathBuf::from(p)),
                    None if part == "ro" => read_only = true,
                    _ => bail!("--disk {spec:?}: expected path=FILE[,ro]"),
                }
            }
            Some(DiskConfig {
                path: path.with_context(|| format!("--disk {spec:?}: path=FILE is required"))?,
                read_only,
            })
        }
        None => appliance_disk.map(|(path, read_only)| DiskConfig { path, read_only }),
    };
    let mut cmdline = compose_cmdline(
        &format!("{base_cmdline} {}", runtime::PLATFORM_CMDLINE),
        &guest_nets,
        args.hostname.as_deref(),
        args.run.as_deref(),
    )?;
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let config = VmConfig {
        kernel,
        vmlinux,
        initrd,
        cmdline,
        vcpus: args.vcpus.unwrap_or(vcpus),
        memory_mib: args.memory_mib.unwrap_or(memory_mib),
        nets,
        disk,
        serial_log: args.serial_log,
        serial_stdout: args.serial_stdout,
        console_sock: args.console_sock,
        api_sock: args.api_sock,
    };
    let outcome = runtime::run_checked(config, started, start_check)?;
    let code = outcome.exit_code();
    eprintln!(
        "slicenet-vmm: {} after {} ms (exit status {code})",
        match &outcome {
            runtime::VmOutcome::PowerOff => "guest powered off".to_string(),
            runtime::VmOutcome::Reboot => "guest rebooted".to_string(),
            runtime::VmOutcome::TripleFault(state) => format!("guest triple-faulted ({state})"),
            runtime::VmOutcome::Panic => "guest kernel panicked".to_string(),
            runtime::VmOutcome::Stopped => "stopped".to_string(),
            runtime::VmOutcome::VcpuFailed(e) => format!("vCPU failed: {e}"),
        },
        started.elapsed().as_millis()
    );
    Ok(code)
}

/// The appliance's vmlinux, unless `bzimage` is asked for or the vmlinux has no PVH entry
/// point (then the bzImage boots). A vmlinux whose headers cannot be read is still chosen: it
/// fails to load, and the hash check then reports the corrupt part.
fn pvh_vmlinux(appliance: &Appliance, bzimage: bool) -> Option<PathBuf> {
    if bzimage {
        return None;
    }
    let path = appliance.vmlinux_path()?;
    match pvh_entry_of_file(&path) {
        Ok(None) => None,
        Ok(Some(_)) | Err(_) => Some(path),
    }
}

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let request = match args.request.as_str() {
        "status" => ApiRequest::Status,
        "stop" => ApiRequest::Stop,
        "state" => ApiRequest::State,
        "console" => return console(&args.api),
        other => bail!("unknown request {other:?}: use status, stop, state or console"),
    };
    let reply = control::request(&args.api, &request)?;
    println!("{reply}");
    if reply["ok"] != true {
        bail!("the VMM refused the request: {}", reply["error"]);
    }
    Ok(())
}

fn console(api: &std::path::Path) -> anyhow::Result<()> {
    let mut stream =
        UnixStream::connect(api).with_context(|| format!("connecting to {}", api.display()))?;
    stream.write_all(b"{\"op\":\"console\"}\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut reply = String::new();
    reader.read_line(&mut reply)?;
    if !reply.contains("\"ok\":true") {
        bail!("console refused: {reply}");
    }
    let mut input = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
    });
    let mut buf = [0u8; 4096];
    let mut out = std::io::stdout();
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let mut ports = Vec::new();
    for spec in &args.ports {
        let (vm, switch) = spec
            .split_once(':')
            .with_context(|| format!("--port {spec:?}: expected VM_SOCK:SWITCH_SOCK"))?;
        let _ = std::fs::remove_file(switch);
        let socket = UnixDatagram::bind(switch).with_context(|| format!("binding {switch}"))?;
        ports.push((PathBuf::from(vm), PathBuf::from(switch), socket));
    }
    eprintln!("slicenet-vmm relay: {} ports", ports.len());
    let mut fds: Vec<libc::pollfd> = ports
        .iter()
        .map(|(_, _, s)| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        for i in 0..fds.len() {
            if fds[i].revents & libc::POLLIN == 0 {
                continue;
            }
            let Ok(len) = ports[i].2.recv(&mut buf) else {
                continue;
            };
            for (j, (vm, _, _)) in ports.iter().enumerate() {
                if j != i {
                    // A VM that is not up yet misses the frame, like an unplugged cable.
                    let _ = ports[i].2.send_to(&buf[..len], vm);
                }
            }
        }
    }
}
