//! The sliver supervisor: one task per sliver that boots its VM from the
//! ticket's appliance, watches it, restarts it per policy, and stops it
//! when the ticket is revoked or expires.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slicenet_authority::ticket::Ticket;
use slicenet_vmm::appliance::{compose_cmdline, GuestNet, MacAddr as GuestMac, READY_MARKER};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::appliances::find_appliance;
use super::config::RestartPolicy;
use super::limits::Limits;
use super::until_set;
use super::wiring::port_sockets;
use crate::runtime::{NicSpec, Runtime, VmSpec};

/// Where a sliver is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliverPhase {
    /// Its VM is starting and has not printed the ready marker yet.
    Booting,
    /// The guest printed its ready marker.
    Ready,
    /// The VM ended and will be started again after a pause.
    Restarting,
    /// It cannot run (see the message); the node does not retry.
    Failed,
    /// Stopped by the node (revoked or expired ticket, or shutdown).
    Stopped,
}

/// What the node reports about one sliver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliverStatus {
    pub sliver_id: u64,
    pub slice: String,
    pub hostname: String,
    pub phase: SliverPhase,
    pub message: Option<String>,
    /// Process id of the VM process while it runs.
    pub pid: Option<u32>,
    /// How often the VM was restarted after ending on its own.
    pub restarts: u32,
    /// Seconds from the VM's (latest) start to its ready marker.
    pub boot_seconds: Option<f64>,
    pub console_log: PathBuf,
    pub console_socket: PathBuf,
    /// Enclave addresses of its NICs, in NIC order.
    pub addresses: Vec<String>,
    /// Epoch of the ticket it runs under.
    pub epoch: u64,
}

/// Everything the supervisor needs from the node.
#[derive(Clone)]
pub struct SupervisorSettings {
    pub runtime: Runtime,
    pub run_dir: PathBuf,
    pub appliance_dirs: Vec<PathBuf>,
    pub restart: RestartPolicy,
    pub max_restarts: u32,
    pub limits: Limits,
    /// MTU of the switch ports VM NICs attach to.
    pub nic_mtu: u16,
}

struct RunningSliver {
    ticket: Ticket,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: Arc<Mutex<SliverStatus>>,
}

/// Runs the node's slivers.
pub struct Supervisor {
    settings: SupervisorSettings,
    slivers: HashMap<u64, RunningSliver>,
}

/// The guest hostname of a sliver: `<slice>-<id>` as a DNS label.
pub fn sliver_hostname(slice: &str, sliver_id: u64) -> String {
    let mut name: String = slice
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let suffix = format!("-{sliver_id}");
    name.truncate(63 - suffix.len());
    let name = name.trim_start_matches('-').to_string();
    format!("{name}{suffix}")
}

/// Whether two tickets describe the same VM (so a new epoch only changes
/// the network around it, not the VM itself).
fn same_vm(a: &Ticket, b: &Ticket) -> bool {
    let nics = |t: &Ticket| {
        t.enclaves
            .iter()
            .map(|e| (e.vni, e.mac, e.address, e.prefix_len))
            .collect::<Vec<_>>()
    };
    a.appliance == b.appliance && a.resources == b.resources && nics(a) == nics(b)
}

impl Supervisor {
    /// A supervisor with no slivers.
    pub fn new(settings: SupervisorSettings) -> Self {
        Supervisor {
            settings,
            slivers: HashMap::new(),
        }
    }

    /// Makes the sliver of `ticket` run as the ticket says: starts it when
    /// new, restarts it when its VM description changed, otherwise only
    /// records the newer ticket.
    pub async fn ensure(&mut self, ticket: &Ticket) {
        if let Some(running) = self.slivers.get_mut(&ticket.sliver_id) {
            if same_vm(&running.ticket, ticket) {
                running.ticket = ticket.clone();
                running.status.lock().unwrap().epoch = ticket.epoch;
                return;
            }
            self.stop(ticket.sliver_id).await;
        }
        let status = Arc::new(Mutex::new(self.initial_status(ticket)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.settings.clone(),
            ticket.clone(),
            status.clone(),
            stop_rx,
        ));
        self.slivers.insert(
            ticket.sliver_id,
            RunningSliver {
                ticket: ticket.clone(),
                stop: stop_tx,
                task,
                status,
            },
        );
    }

    fn initial_status(&self, ticket: &Ticket) -> SliverStatus {
        let run = &self.settings.run_dir;
        SliverStatus {
            sliver_id: ticket.sliver_id,
            slice: ticket.slice.clone(),
            hostname: sliver_hostname(&ticket.slice, ticket.sliver_id),
            phase: SliverPhase::Booting,
            message: None,
            pid: None,
            restarts: 0,
            boot_seconds: None,
            console_log: run.join(format!("s{}.console.log", ticket.sliver_id)),
            console_socket: run.join(format!("s{}.console.sock", ticket.sliver_id)),
            addresses: ticket
                .enclaves
                .iter()
                .map(|e| format!("{}/{}", e.address, e.prefix_len))
                .collect(),
            epoch: ticket.epoch,
        }
    }

    /// Stops a sliver's VM and forgets it (no-op for unknown slivers).
    pub async fn stop(&mut self, sliver_id: u64) {
        if let Some(running) = self.slivers.remove(&sliver_id) {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
    }

    /// Stops every sliver (node shutdown).
    pub async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.slivers.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Ids of the slivers this supervisor runs.
    pub fn sliver_ids(&self) -> Vec<u64> {
        self.slivers.keys().copied().collect()
    }

    /// A snapshot of every sliver's status, by id.
    pub fn statuses(&self) -> Vec<SliverStatus> {
        let mut out: Vec<SliverStatus> = self
            .slivers
            .values()
            .map(|s| s.status.lock().unwrap().clone())
            .collect();
        out.sort_by_key(|s| s.sliver_id);
        out
    }
}

/// Builds the runtime-neutral VM description of a ticket.
fn vm_spec(
    settings: &SupervisorSettings,
    ticket: &Ticket,
    status: &SliverStatus,
) -> Result<VmSpec, String> {
    let appliance = find_appliance(
        &settings.appliance_dirs,
        &ticket.appliance.name,
        &ticket.appliance.hash,
    )
    .map_err(|e| e.to_string())?;
    let nets: Vec<GuestNet> = ticket
        .enclaves
        .iter()
        .map(|e| GuestNet {
            mac: GuestMac(e.mac.0),
            ipv4: Some((e.address, e.prefix_len)),
            mtu: Some(settings.nic_mtu),
        })
        .collect();
    let cmdline = compose_cmdline(
        &appliance.manifest().cmdline,
        &nets,
        Some(&status.hostname),
        None,
    )
    .map_err(|e| e.to_string())?;
    let nics = ticket
        .enclaves
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (switch_socket, vm_socket) = port_sockets(&settings.run_dir, ticket.sliver_id, i);
            NicSpec {
                mac: e.mac.0,
                ipv4: Some((e.address, e.prefix_len)),
                mtu: Some(settings.nic_mtu),
                vm_socket,
                switch_socket,
            }
        })
        .collect();
    Ok(VmSpec {
        name: format!("s{}", ticket.sliver_id),
        appliance_dir: appliance.dir().to_path_buf(),
        hostname: status.hostname.clone(),
        kernel: appliance.kernel_path(),
        initrd: Some(appliance.initrd_path()),
        disk: appliance.disk_path().map(|(p, _)| p),
        cmdline,
        vcpus: ticket.resources.vcpus.max(1),
        memory_mib: u32::try_from(ticket.resources.memory_mib)
            .map_err(|_| format!("{} MiB of memory is too much", ticket.resources.memory_mib))?,
        nics,
        console_log: status.console_log.clone(),
        console_socket: status.console_socket.clone(),
        control_socket: settings
            .run_dir
            .join(format!("s{}.vmm.sock", ticket.sliver_id)),
    })
}

/// Whether the console log, from byte `from` on, holds the ready marker.
fn saw_ready_marker(log: &std::path::Path, from: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return false;
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return false;
    }
    let mut text = Vec::new();
    let _ = file.take(1 << 20).read_to_end(&mut text);
    String::from_utf8_lossy(&text).contains(READY_MARKER)
}

fn set(status: &Mutex<SliverStatus>, f: impl FnOnce(&mut SliverStatus)) {
    f(&mut status.lock().unwrap());
}

/// Restarts allowed within this window before a sliver is left failed.
const RESTART_WINDOW: Duration = Duration::from_secs(600);

async fn supervise(
    settings: SupervisorSettings,
    ticket: Ticket,
    status: Arc<Mutex<SliverStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let id = ticket.sliver_id;
    let mut restarts_in_window: Vec<Instant> = Vec::new();
    loop {
        let snapshot = status.lock().unwrap().clone();
        let spec = match vm_spec(&settings, &ticket, &snapshot) {
            Ok(spec) => spec,
            Err(message) => {
                tracing::error!(sliver = id, "cannot run: {message}");
                set(&status, |s| {
                    s.phase = SliverPhase::Failed;
                    s.message = Some(message);
                });
                let _ = until_set(&mut stop).await;
                set(&status, |s| s.phase = SliverPhase::Stopped);
                return;
            }
        };
        let log_start = std::fs::metadata(&spec.console_log)
            .map(|m| m.len())
            .unwrap_or(0);
        let started = Instant::now();
        let mut vm = match settings.runtime.start(&spec) {
            Ok(vm) => vm,
            Err(e) => {
                tracing::error!(sliver = id, "cannot start its VM: {e}");
                set(&status, |s| {
                    s.phase = SliverPhase::Failed;
                    s.message = Some(e.to_string());
                });
                let _ = until_set(&mut stop).await;
                set(&status, |s| s.phase = SliverPhase::Stopped);
                return;
            }
        };
        let limit_note = settings
            .limits
            .apply(&spec.name, vm.pid(), spec.vcpus, spec.memory_mib)
            .err();
        tracing::info!(sliver = id, pid = vm.pid(), runtime = %settings.runtime.kind(), "VM started");
        set(&status, |s| {
            s.phase = SliverPhase::Booting;
            s.pid = Some(vm.pid());
            s.message = limit_note;
            s.boot_seconds = None;
        });
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let exit = loop {
            let booting = status.lock().unwrap().phase == SliverPhase::Booting;
            tokio::select! {
                exit = vm.wait() => break exit,
                _ = until_set(&mut stop) => {
                    let _ = vm.stop(Duration::from_secs(5)).await;
                    settings.limits.remove(&spec.name);
                    set(&status, |s| { s.phase = SliverPhase::Stopped; s.pid = None; });
                    tracing::info!(sliver = id, "stopped");
                    return;
                }
                _ = tick.tick(), if booting => {
                    if saw_ready_marker(&spec.console_log, log_start) {
                        let secs = started.elapsed().as_secs_f64();
                        tracing::info!(sliver = id, "guest ready after {secs:.1} s");
                        set(&status, |s| { s.phase = SliverPhase::Ready; s.boot_seconds = Some(secs); });
                    }
                }
            }
        };
        settings.limits.remove(&spec.name);
        let how = match exit {
            Ok(st) => st.to_string(),
            Err(e) => e.to_string(),
        };
        let now = Instant::now();
        restarts_in_window.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        let give_up = settings.restart == RestartPolicy::Never
            || restarts_in_window.len() as u32 >= settings.max_restarts;
        if give_up {
            tracing::warn!(sliver = id, "VM ended ({how}); not restarting");
            set(&status, |s| {
                s.phase = SliverPhase::Failed;
                s.pid = None;
                s.message = Some(format!("VM ended ({how}) and the restart policy gave up"));
            });
            let _ = until_set(&mut stop).await;
            set(&status, |s| s.phase = SliverPhase::Stopped);
            return;
        }
        restarts_in_window.push(now);
        let backoff = Duration::from_millis(500 * (1 << restarts_in_window.len().min(5)));
        tracing::warn!(sliver = id, "VM ended ({how}); restarting in {backoff:?}");
        set(&status, |s| {
            s.phase = SliverPhase::Restarting;
            s.pid = None;
            s.restarts += 1;
            s.message = Some(format!("VM ended ({how}); restarted by the node"));
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = until_set(&mut stop) => {
                set(&status, |s| s.phase = SliverPhase::Stopped);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(sliver_hostname("ams_demo", 12), "ams-demo-12");
        let long = "x".repeat(80);
        let h = sliver_hostname(&long, 7);
        assert!(h.len() <= 63 && h.ends_with("-7"));
        assert_eq!(sliver_hostname("_a", 1), "a-1");
    }
}
