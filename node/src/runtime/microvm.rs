//! The microVM sliver runtime: one `slicenet-vmm` process per sliver.

use super::{RuntimeError, VmProcess, VmSpec};
use std::path::PathBuf;

/// Runs slivers in slicenet's own KVM microVM.
#[derive(Debug, Clone)]
pub struct MicrovmRuntime {
    binary: PathBuf,
}

impl MicrovmRuntime {
    /// Uses `slicenet-vmm` from beside the running executable, else PATH.
    pub fn new() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("slicenet-vmm")))
            .filter(|p| p.is_file());
        MicrovmRuntime {
            binary: beside.unwrap_or_else(|| PathBuf::from("slicenet-vmm")),
        }
    }

    /// The complete argument list of `slicenet-vmm` for `spec`.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--appliance".into(),
            spec.appliance_dir.display().to_string(),
            // The node verified every part moments ago.
            "--no-verify".into(),
            "--sliver-id".into(),
            spec.name.clone(),
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--memory-mib".into(),
            spec.memory_mib.to_string(),
            "--hostname".into(),
            spec.hostname.clone(),
            "--serial-log".into(),
            spec.console_log.display().to_string(),
            "--console-sock".into(),
            spec.console_socket.display().to_string(),
            "--api-sock".into(),
            spec.control_socket.display().to_string(),
        ];
        for nic in &spec.nics {
            let mut net = format!(
                "vm={},switch={},mac={}",
                nic.vm_socket.display(),
                nic.switch_socket.display(),
                nic.mac_string()
            );
            if let Some((addr, prefix)) = nic.ipv4 {
                net.push_str(&format!(",ip={addr}/{prefix}"));
            }
            if let Some(mtu) = nic.mtu {
                net.push_str(&format!(",mtu={mtu}"));
            }
            args.extend(["--net".into(), net]);
        }
        if let Some(disk) = &spec.disk {
            args.extend(["--disk".into(), format!("path={},ro", disk.display())]);
        }
        args
    }

    /// Starts the VM; the VMM's own messages go to `<console_log>.vmm.log`.
    pub fn start(&self, spec: &VmSpec) -> Result<VmProcess, RuntimeError> {
        spec.validate()?;
        for path in [&spec.console_socket, &spec.control_socket] {
            let _ = std::fs::remove_file(path);
        }
        VmProcess::spawn(
            &self.binary,
            self.args(spec),
            &spec.console_log.with_extension("vmm.log"),
        )
    }
}

impl Default for MicrovmRuntime {
    fn default() -> Self {
        Self::new()
    }
}
