//! One VM per process: builds the VM from a [`VmConfig`], runs its vCPU threads, and serves
//! device notifications, backend sockets, the console and the control API from one epoll
//! loop in the calling thread until the guest powers off, resets, panics or is stopped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::appliance::{ApplianceError, MacAddr};
use crate::arch::acpi::{build_tables, AcpiError, VirtioMmioSlot};
use crate::arch::boot::{load_linux, load_pvh, BootError, BootProtocol};
use crate::arch::layout::{virtio_slot, COM1_GSI, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_SIZE};
use crate::arch::regs::RegsError;
use crate::bus::Bus;
use crate::control::{error_reply, parse_request, ApiRequest, MAX_REQUEST};
use crate::devices::legacy::PlatformRequest;
use crate::devices::serial::{ConsoleClients, ConsoleEvents, ConsoleOutput, SerialDevice};
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::devices::IrqLine;
use crate::host::{check_host, HostError};
use crate::vstate::{Vcpu, VcpuExitReason, Vm, VmError};

/// Kernel parameters this platform needs: there is no PCI bus to probe, and reboots go
/// through the i8042 reset line (the kernel's default sequence otherwise ends in a jump to a
/// BIOS reset vector this VMM does not have).
pub const PLATFORM_CMDLINE: &str = "pci=off reboot=k";

/// One NIC: its MAC and the two socket paths of contract 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetConfig {
    /// Guest MAC.
    pub mac: MacAddr,
    /// Socket the VMM binds.
    pub vm_sock: PathBuf,
    /// Switch socket the VMM sends to.
    pub switch_sock: PathBuf,
}

/// The optional disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmConfig {
    /// bzImage.
    pub kernel: PathBuf,
    /// The same kernel as an uncompressed vmlinux ELF: when given and it has a PVH entry
    /// point, it is booted through PVH (no in-guest decompression) instead of the bzImage.
    pub vmlinux: Option<PathBuf>,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Complete kernel command line.
    pub cmdline: String,
    /// vCPUs (1..=254).
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// NICs in guest order.
    pub nets: Vec<NetConfig>,
    /// Optional disk.
    pub disk: Option<DiskConfig>,
    /// File receiving the serial console output.
    pub serial_log: Option<PathBuf>,
    /// Copy the serial console to stdout.
    pub serial_stdout: bool,
    /// Unix stream socket for interactive console clients.
    pub console_sock: Option<PathBuf>,
    /// Unix stream socket of the control API.
    pub api_sock: Option<PathBuf>,
}

/// How the VM ended; each maps to a documented process exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VmOutcome {
    /// The guest powered off (exit status 0).
    PowerOff,
    /// The guest rebooted (exit status 10); the supervisor decides whether to start it again.
    Reboot,
    /// The guest triple-faulted, which resets a real machine (exit status 10, like a reboot);
    /// the text locates the fault.
    TripleFault(String),
    /// The guest kernel panicked (exit status 11).
    Panic,
    /// Stopped by the control API or a signal (exit status 12).
    Stopped,
    /// A vCPU could not continue (exit status 13).
    VcpuFailed(String),
}

impl VmOutcome {
    /// The process exit status for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::PowerOff => 0,
            VmOutcome::Reboot | VmOutcome::TripleFault(_) => 10,
            VmOutcome::Panic => 11,
            VmOutcome::Stopped => 12,
            VmOutcome::VcpuFailed(_) => 13,
        }
    }
}

/// Why the VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The host cannot run a stock kernel.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Invalid configuration.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// KVM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Kernel or initramfs could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// A file or socket operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Setting up the event loop failed.
    #[error("event loop setup failed: {0}")]
    EventLoop(io::Error),
    /// The appliance failed the check that ran while the guest booted; nothing the guest
    /// did left the VMM.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
}

/// A check that runs on its own thread while the VM boots (the appliance's part hashes, so
/// that hashing overlaps VM set-up and the guest's early boot). Until it passes nothing the
/// guest does leaves the VMM: console output is held, and virtio queues and backends are not
/// served. If it fails the VM is stopped, the held output discarded, and the error returned.
pub type StartCheck = Box<dyn FnOnce() -> Result<(), ApplianceError> + Send>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VmmError + 'a {
    move |source| VmmError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the sockets this VMM created when it ends, however it ends.
struct OwnedPaths(Vec<PathBuf>);

impl Drop for OwnedPaths {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_listener(path: &Path, paths: &mut OwnedPaths) -> Result<UnixListener, VmmError> {
    if UnixStream::connect(path).is_ok() {
        return Err(VmmError::Io {
            what: "binding socket",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AddrInUse, "another process is serving it"),
        });
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io_err("binding socket", path))?;
    paths.0.push(path.to_path_buf());
    listener
        .set_nonblocking(true)
        .map_err(io_err("configuring socket", path))?;
    Ok(listener)
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and threads it spawns later) and returns
/// a signalfd that reports them, so a signal becomes an ordinary event of the loop.
fn signal_fd() -> io::Result<File> {
    // SAFETY: plain libc calls on a local sigset; the returned fd is owned by the File.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd))
    }
}

// Event tokens: kind in the top 16 bits, then two 16-bit indexes.
const T_EXIT: u64 = 1;
const T_SIGNAL: u64 = 2;
const T_API_LISTEN: u64 = 3;
const T_API_CONN: u64 = 4;
const T_CONSOLE_LISTEN: u64 = 5;
const T_CONSOLE_CONN: u64 = 6;
const T_QUEUE: u64 = 7;
const T_BACKEND: u64 = 8;
const T_CHECKED: u64 = 9;
const MAX_CONNECTIONS: usize = 32;

fn token(kind: u64, a: usize, b: usize) -> u64 {
    (kind << 48) | ((a as u64 & 0xffff) << 16) | (b as u64 & 0xffff)
}

fn untoken(t: u64) -> (u64, usize, usize) {
    (
        t >> 48,
        ((t >> 16) & 0xffff) as usize,
        (t & 0xffff) as usize,
    )
}

struct VirtioSlot {
    kind: &'static str,
    base: u64,
    gsi: u32,
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    backend_fd: Option<RawFd>,
    backend_armed: bool,
}

struct ApiConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The running VM's event loop state.
struct Runtime {
    config: VmConfig,
    started: Instant,
    epoll: Epoll,
    vm: Vm,
    serial: Arc<Mutex<SerialDevice>>,
    console_events: Arc<ConsoleEvents>,
    console_clients: ConsoleClients,
    console_inputs: HashMap<usize, UnixStream>,
    next_console: usize,
    api_conns: HashMap<usize, ApiConn>,
    next_api: usize,
    api_listener: Option<UnixListener>,
    console_listener: Option<UnixListener>,
    virtio: Vec<VirtioSlot>,
    bus: Arc<Bus>,
    exit_evt: EventFd,
    exit_reason: Arc<Mutex<Option<VcpuExitReason>>>,
    signals: File,
    /// The start check still running, and the eventfd it signals when done.
    check: Option<(std::thread::JoinHandle<Result<(), ApplianceError>>, EventFd)>,
    /// Why the start check failed (the VM is then stopped).
    check_failed: Option<VmmError>,
    /// Device fds (queue eventfds, backends) and their tokens, served once the check passed.
    deferred_fds: Vec<(RawFd, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Boots `config` and serves it until the guest ends or is stopped. `started` is when the
/// process started (ready times are measured from it). The caller should exit the process
/// afterwards: vCPU threads are not joined.
pub fn run(config: VmConfig, started: Instant) -> Result<VmOutcome, VmmError> {
    run_checked(config, started, None)
}

/// [`run`], with a [`StartCheck`] running alongside the boot.
pub fn run_checked(
    config: VmConfig,
    started: Instant,
    check: Option<StartCheck>,
) -> Result<VmOutcome, VmmError> {
    check_host()?;
    if !(1..=254).contains(&config.vcpus) {
        return Err(VmmError::Config(format!(
            "vcpus = {} is outside 1..=254",
            config.vcpus
        )));
    }
    if config.nets.len() + usize::from(config.disk.is_some()) > MAX_VIRTIO_DEVICES {
        return Err(VmmError::Config(format!(
            "at most {MAX_VIRTIO_DEVICES} NICs and disks together"
        )));
    }
    let signals = signal_fd().map_err(VmmError::EventLoop)?;
    let check = match check {
        Some(check) => {
            let done = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
            let signal = done.try_clone().map_err(VmmError::EventLoop)?;
            let thread = std::thread::Builder::new()
                .name("start-check".into())
                .spawn(move || {
                    let result = check();
                    let _ = signal.write(1);
                    result
                })
                .map_err(VmmError::EventLoop)?;
            Some((thread, done))
        }
        None => None,
    };
    let mut owned = OwnedPaths(Vec::new());
    let mut check = check;
    let mut runtime = match Runtime::build(config, started, signals, &mut check, &mut owned) {
        Ok(runtime) => runtime,
        // A part that cannot be loaded may be a corrupt one: then the check's verdict, which
        // names the part, is the error to report.
        Err(e) => {
            if let Some((thread, _)) = check {
                if let Ok(Err(appliance)) = thread.join() {
                    return Err(VmmError::Appliance(appliance));
                }
            }
            return Err(e);
        }
    };
    let outcome = runtime.serve();
    // The guest ended before the check did: its verdict still decides.
    if runtime.check.is_some() {
        runtime.finish_check();
    }
    if let Some(e) = runtime.check_failed.take() {
        return Err(e);
    }
    lock(&runtime.serial).flush();
    Ok(outcome)
}

impl Runtime {
    fn build(
        config: VmConfig,
        started: Instant,
        signals: File,
        check: &mut Option<(std::thread::JoinHandle<Result<(), ApplianceError>>, EventFd)>,
        owned: &mut OwnedPaths,
    ) -> Result<Runtime, VmmError> {
        let mem_bytes = u64::from(config.memory_mib) << 20;
        let vm = Vm::new(mem_bytes, true)?;
        let vm_created = started.elapsed();
        let epoll = Epoll::new().map_err(VmmError::EventLoop)?;

        // Serial console.
        let log = match &config.serial_log {
            Some(path) => Some(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err("opening serial log", path))?,
            ),
            None => None,
        };
        let console_clients: ConsoleClients = Arc::default();
        let mut output =
            ConsoleOutput::new(log, config.serial_stdout, console_clients.clone(), started)
                .announce_ready();
        if check.is_some() {
            output = output.hold();
        }
        let console_events = output.events();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
        vm.register_irqfd(&serial_irq, COM1_GSI)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq.try_clone().map_err(VmmError::EventLoop)?,
            output,
        )));

        // Virtio devices: NICs first, then the disk.
        let mut devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = Vec::new();
        for net in &config.nets {
            let device = Net::new(net.mac, &net.vm_sock, &net.switch_sock)
                .map_err(io_err("binding NIC socket", &net.vm_sock))?;
            owned.0.push(net.vm_sock.clone());
            devices.push(("net", Box::new(device)));
        }
        if let Some(disk) = &config.disk {
            let device = Block::new(&disk.path, disk.read_only)
                .map_err(io_err("opening disk", &disk.path))?;
            devices.push(("block", Box::new(device)));
        }
        let mut virtio = Vec::new();
        let mut device_fds = Vec::new();
        for (index, (kind, device)) in devices.into_iter().enumerate() {
            let (base, gsi) = virtio_slot(index);
            let backend_fd = device.backend_fd();
            let irq = IrqLine::new().map_err(VmmError::EventLoop)?;
            vm.register_irqfd(irq.eventfd(), gsi)?;
            let transport = MmioTransport::new(device, vm.memory().clone(), irq);
            let mut queue_events = Vec::new();
            for q in 0..transport.queue_count() {
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
                vm.register_mmio_ioevent(&evt, base + reg::QUEUE_NOTIFY, q as u32)?;
                device_fds.push((evt.as_raw_fd(), token(T_QUEUE, index, q)));
                queue_events.push(evt);
            }
            if let Some(fd) = backend_fd {
                device_fds.push((fd, token(T_BACKEND, index, 0)));
            }
            virtio.push(VirtioSlot {
                kind,
                base,
                gsi,
                transport: Arc::new(Mutex::new(transport)),
                queue_events,
                backend_fd,
                backend_armed: backend_fd.is_some(),
            });
        }

        // ACPI tables, then kernel, initramfs and command line.
        let slots: Vec<VirtioMmioSlot> = virtio
            .iter()
            .map(|v| VirtioMmioSlot {
                base: v.base,
                size: VIRTIO_MMIO_SIZE,
                gsi: v.gsi,
            })
            .collect();
        let tables = build_tables(config.vcpus, &slots)?;
        for (addr, blob) in &tables.blobs {
            vm.memory()
                .write_slice(blob, GuestAddress(*addr))
                .map_err(|e| VmmError::Config(format!("writing ACPI tables: {e}")))?;
        }
        let pvh = match &config.vmlinux {
            Some(vmlinux) => load_pvh(
                vm.memory(),
                mem_bytes,
                vmlinux,
                config.initrd.as_deref(),
                &config.cmdline,
                tables.rsdp_addr,
            )?,
            None => None,
        };
        if let (Some(vmlinux), None) = (&config.vmlinux, &pvh) {
            eprintln!(
                "slicenet-vmm: {} has no PVH entry point; booting the bzImage",
                vmlinux.display()
            );
        }
        let entry = match pvh {
            Some(entry) => entry,
            None => load_linux(
                vm.memory(),
                mem_bytes,
                &config.kernel,
                config.initrd.as_deref(),
                &config.cmdline,
                tables.rsdp_addr,
            )?,
        };
        let loaded = started.elapsed();

        let bus = Arc::new(Bus::new(
            serial.clone(),
            virtio
                .iter()
                .map(|v| (v.base, v.transport.clone()))
                .collect(),
        ));

        // Control and console sockets last, so a failed start leaves none behind.
        let api_listener = match &config.api_sock {
            Some(path) => Some(bind_listener(path, owned)?),
            None => None,
        };
        let console_listener = match &config.console_sock {
            Some(path) => Some(bind_listener(path, owned)?),
            None => None,
        };
        let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventLoop)?;
        let add = |fd: RawFd, t: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t))
                .map_err(VmmError::EventLoop)
        };
        add(exit_evt.as_raw_fd(), token(T_EXIT, 0, 0))?;
        add(signals.as_raw_fd(), token(T_SIGNAL, 0, 0))?;
        if let Some(l) = &api_listener {
            add(l.as_raw_fd(), token(T_API_LISTEN, 0, 0))?;
        }
        if let Some(l) = &console_listener {
            add(l.as_raw_fd(), token(T_CONSOLE_LISTEN, 0, 0))?;
        }
        // Devices are served from the start, or once the start check passed.
        let deferred_fds = match check.as_ref() {
            Some((_, done)) => {
                add(done.as_raw_fd(), token(T_CHECKED, 0, 0))?;
                device_fds
            }
            None => {
                for (fd, t) in device_fds {
                    add(fd, t)?;
                }
                Vec::new()
            }
        };

        let runtime = Runtime {
            config,
            started,
            epoll,
            vm,
            serial,
            console_events,
            console_clients,
            console_inputs: HashMap::new(),
            next_console: 0,
            api_conns: HashMap::new(),
            next_api: 0,
            api_listener,
            console_listener,
            virtio,
            bus,
            exit_evt,
            exit_reason: Arc::default(),
            signals,
            check: check.take(),
            check_failed: None,
            deferred_fds,
        };
        runtime.start_vcpus(entry)?;
        // Where start-up time goes, for people tuning boot time (the guest's own share is in
        // its console log).
        eprintln!(
            "slicenet-vmm: vCPUs running {} ms after start (VM created at {} ms, kernel and initramfs loaded at {} ms, {})",
            started.elapsed().as_millis(),
            vm_created.as_millis(),
            loaded.as_millis(),
            match entry.protocol {
                BootProtocol::Pvh => "vmlinux via PVH",
                BootProtocol::Linux64 => "bzImage via the 64-bit boot protocol",
            }
        );
        Ok(runtime)
    }

    fn start_vcpus(&self, entry: crate::arch::boot::BootEntry) -> Result<(), VmmError> {
        let cpuid = self.vm.supported_cpuid()?;
        let mut vcpus = Vec::new();
        for index in 0..self.config.vcpus {
            let vcpu = Vcpu::new(&self.vm, index, true)?;
            vcpu.configure_linux(
                &self.vm,
                &cpuid,
                self.config.vcpus,
                (index == 0).then_some(entry),
            )?;
            vcpus.push(vcpu);
        }
        for mut vcpu in vcpus {
            let bus = self.bus.clone();
            let reason_slot = self.exit_reason.clone();
            let exit_evt = self.exit_evt.try_clone().map_err(VmmError::EventLoop)?;
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn(move || {
                    let reason = vcpu.run(&bus);
                    let mut slot = lock(&reason_slot);
                    if slot.is_none() {
                        *slot = Some(reason);
                    }
                    drop(slot);
                    let _ = exit_evt.write(1);
                    // Park: the main thread ends the process. Returning would drop the vCPU
                    // fd while siblings may still be running.
                    loop {
                        std::thread::park();
                    }
                })
                .map_err(VmmError::EventLoop)?;
        }
        Ok(())
    }

    fn serve(&mut self) -> VmOutcome {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return VmOutcome::VcpuFailed(format!("event loop failed: {e}")),
            };
            for event in &events[..n] {
                let (kind, a, b) = untoken(event.data());
                let outcome = match kind {
                    T_EXIT => self.on_vcpu_exit(),
                    T_SIGNAL => self.on_signal(),
                    T_API_LISTEN => {
                        self.accept_api();
                        None
                    }
                    T_API_CONN => self.on_api(a),
                    T_CONSOLE_LISTEN => {
                        self.accept_console();
                        None
                    }
                    T_CONSOLE_CONN => {
                        self.on_console_input(a);
                        None
                    }
                    T_QUEUE => {
                        self.on_queue(a, b);
                        None
                    }
                    T_BACKEND => {
                        self.on_backend(a);
                        None
                    }
                    T_CHECKED => {
                        self.finish_check();
                        self.check_failed.as_ref().map(|_| VmOutcome::Stopped)
                    }
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    return outcome;
                }
            }
        }
    }

    /// Collects the start check's verdict: on success the held console output goes out and
    /// the devices are served; on failure the output is discarded and the VM is to stop.
    fn finish_check(&mut self) {
        let Some((thread, done)) = self.check.take() else {
            return;
        };
        let result = match thread.join() {
            Ok(result) => result.map_err(VmmError::Appliance),
            Err(_) => Err(VmmError::Config(
                "the appliance check thread panicked".into(),
            )),
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            done.as_raw_fd(),
            EpollEvent::default(),
        );
        match result {
            Ok(()) => {
                lock(&self.serial).output_mut().release();
                for (fd, t) in std::mem::take(&mut self.deferred_fds) {
                    // Only fails for a closed fd, which the device's own errors report.
                    let _ =
                        self.epoll
                            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t));
                }
            }
            Err(e) => {
                lock(&self.serial).output_mut().discard();
                self.check_failed = Some(e);
            }
        }
    }

    fn on_vcpu_exit(&mut self) -> Option<VmOutcome> {
        let _ = self.exit_evt.read();
        let reason = lock(&self.exit_reason).clone()?;
        Some(match reason {
            VcpuExitReason::Platform(PlatformRequest::PowerOff) => VmOutcome::PowerOff,
            VcpuExitReason::Platform(PlatformRequest::Panic) => VmOutcome::Panic,
            // A kernel configured with panic=N reboots after a panic (by any means, a
            // triple fault included): report the panic.
            VcpuExitReason::Platform(PlatformRequest::Reset) | VcpuExitReason::TripleFault(_)
                if self.console_events.panicked() =>
            {
                VmOutcome::Panic
            }
            VcpuExitReason::Platform(PlatformRequest::Reset) => VmOutcome::Reboot,
            VcpuExitReason::TripleFault(state) => VmOutcome::TripleFault(state),
            VcpuExitReason::Halted => VmOutcome::VcpuFailed("the boot vCPU halted".into()),
            VcpuExitReason::Error(e) => VmOutcome::VcpuFailed(e),
        })
    }

    fn on_signal(&mut self) -> Option<VmOutcome> {
        let mut info = [0u8; 128];
        let _ = (&self.signals).read(&mut info);
        Some(VmOutcome::Stopped)
    }

    fn on_queue(&mut self, dev: usize, queue: usize) {
        let Some(slot) = self.virtio.get(dev) else {
            return;
        };
        let _ = slot.queue_events.get(queue).map(|e| e.read());
        lock(&slot.transport).notify(queue);
        self.update_backend_interest(dev);
    }

    fn on_backend(&mut self, dev: usize) {
        let Some(slot) = self.virtio.get(dev) else {
            return;
        };
        lock(&slot.transport).process_backend();
        self.update_backend_interest(dev);
    }

    /// Stops polling a backend whose input waits for guest buffers (level-triggered epoll
    /// would spin) and resumes once the guest has made room.
    fn update_backend_interest(&mut self, dev: usize) {
        let slot = &mut self.virtio[dev];
        let Some(fd) = slot.backend_fd else {
            return;
        };
        let blocked = lock(&slot.transport).device().backend_blocked();
        if blocked != slot.backend_armed {
            return;
        }
        let events = if blocked {
            EventSet::empty()
        } else {
            EventSet::IN
        };
        if self
            .epoll
            .ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(events, token(T_BACKEND, dev, 0)),
            )
            .is_ok()
        {
            slot.backend_armed = !blocked;
        }
    }

    fn accept_api(&mut self) {
        let Some(listener) = &self.api_listener else {
            return;
        };
        while let Ok((stream, _)) = listener.accept() {
            if self.api_conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_api;
            self.next_api = (self.next_api + 1) & 0xffff;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token(T_API_CONN, id, 0)),
                )
                .is_ok()
            {
                self.api_conns.insert(
                    id,
                    ApiConn {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    fn close_api(&mut self, id: usize) {
        if let Some(conn) = self.api_conns.remove(&id) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn on_api(&mut self, id: usize) -> Option<VmOutcome> {
        let conn = self.api_conns.get_mut(&id)?;
        let mut chunk = [0u8; 1024];
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                self.close_api(id);
                return None;
            }
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(_) => {
                self.close_api(id);
                return None;
            }
        }
        let Some(end) = conn.buf.iter().position(|b| *b == b'\n') else {
            if conn.buf.len() > MAX_REQUEST {
                let reply = error_reply(&format!("request longer than {MAX_REQUEST} bytes"));
                let _ = writeln!(conn.stream, "{reply}");
                self.close_api(id);
            }
            return None;
        };
        let line: Vec<u8> = conn.buf.drain(..=end).collect();
        let request = parse_request(line.trim_ascii());
        let (reply, outcome) = match request {
            Err(ref e) => (error_reply(e), None),
            Ok(ApiRequest::Status) => (self.status(), None),
            Ok(ApiRequest::State) => (self.state(), None),
            Ok(ApiRequest::Stop) => (serde_json::json!({"ok": true}), Some(VmOutcome::Stopped)),
            Ok(ApiRequest::Console) => (serde_json::json!({"ok": true, "console": true}), None),
        };
        let conn = self.api_conns.get_mut(&id)?;
        let _ = conn.stream.set_nonblocking(false);
        let _ = writeln!(conn.stream, "{reply}");
        let _ = conn.stream.set_nonblocking(true);
        if matches!(request, Ok(ApiRequest::Console)) {
            let conn = self.api_conns.remove(&id)?;
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.add_console(conn.stream);
        }
        outcome
    }

    fn accept_console(&mut self) {
        let Some(listener) = &self.console_listener else {
            return;
        };
        let mut accepted = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            accepted.push(stream);
        }
        for stream in accepted {
            self.add_console(stream);
        }
    }

    fn add_console(&mut self, stream: UnixStream) {
        if self.console_inputs.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        let id = self.next_console;
        self.next_console = (self.next_console + 1) & 0xffff;
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token(T_CONSOLE_CONN, id, 0)),
            )
            .is_ok()
        {
            lock(&self.console_clients).push(writer);
            self.console_inputs.insert(id, stream);
        }
    }

    fn on_console_input(&mut self, id: usize) {
        let Some(stream) = self.console_inputs.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                if let Some(stream) = self.console_inputs.remove(&id) {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            // Input beyond the UART FIFO is dropped, as with a real serial line.
            Ok(n) => {
                lock(&self.serial).enqueue_input(&buf[..n]);
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let ready = self.console_events.ready();
        let devices: Vec<serde_json::Value> = self
            .virtio
            .iter()
            .map(|v| {
                let t = lock(&v.transport);
                serde_json::json!({
                    "kind": v.kind,
                    "mmio_base": v.base,
                    "gsi": v.gsi,
                    "driver_ok": t.state().status & 4 != 0,
                    "error": t.last_error(),
                    "metrics": t.metrics(),
                    "config": t.device().snapshot(),
                })
            })
            .collect();
        let (unknown_pio, unknown_mmio) = self.bus.unknown_accesses();
        serde_json::json!({
            "ok": true,
            "state": "running",
            "pid": std::process::id(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "vcpus": self.config.vcpus,
            "memory_mib": self.config.memory_mib,
            "ready": ready.as_ref().map(|(host, after)| serde_json::json!({
                "hostname": host,
                "after_ms": after.as_millis() as u64,
            })),
            "devices": devices,
            "unknown_accesses": { "pio": unknown_pio, "mmio": unknown_mmio },
            "serial_log": self.config.serial_log,
        })
    }

    fn state(&self) -> serde_json::Value {
        let vm = match self.vm.save_state() {
            Ok(state) => serde_json::to_value(state).unwrap_or_default(),
            Err(e) => return error_reply(&e.to_string()),
        };
        let devices: Vec<serde_json::Value> = self
            .virtio
            .iter()
            .map(|v| {
                let t = lock(&v.transport);
                serde_json::json!({
                    "transport": t.state(),
                    "device": t.device().snapshot(),
                })
            })
            .collect();
        serde_json::json!({
            "ok": true,
            "config": self.config,
            "vm": vm,
            "serial": lock(&self.serial).snapshot(),
            "devices": devices,
        })
    }
}
