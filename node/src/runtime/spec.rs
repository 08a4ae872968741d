//! The runtime-neutral description of one VM.

use std::path::PathBuf;

/// One VM NIC: its MAC, its guest address, and the two ends of its switch
/// port (contract: the VM binds `vm_socket` and sends to `switch_socket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub mac: [u8; 6],
    /// Guest IPv4 address and prefix length, configured by the appliance's init.
    pub ipv4: Option<(std::net::Ipv4Addr, u8)>,
    /// The switch port's MTU, which the guest NIC must not exceed.
    pub mtu: Option<u16>,
    pub vm_socket: PathBuf,
    pub switch_socket: PathBuf,
}

impl NicSpec {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Everything a runtime needs to boot one sliver.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Sliver id; names the VM in logs and process titles.
    pub name: String,
    /// The (verified) appliance directory.
    pub appliance_dir: PathBuf,
    /// Guest hostname.
    pub hostname: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub disk: Option<PathBuf>,
    /// The complete kernel command line: the appliance's own plus the
    /// per-sliver parameters (NICs, hostname).
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub nics: Vec<NicSpec>,
    /// Everything the guest writes to its serial console is appended here.
    pub console_log: PathBuf,
    /// A unix stream socket for interactive console access.
    pub console_socket: PathBuf,
    /// The VM's own control socket, for runtimes that have one.
    pub control_socket: PathBuf,
}

impl VmSpec {
    /// Checks what every runtime needs: files exist, sizes are sane.
    pub fn validate(&self) -> Result<(), super::RuntimeError> {
        let invalid = |reason: String| super::RuntimeError::InvalidSpec {
            sliver: self.name.clone(),
            reason,
        };
        if !self.kernel.is_file() {
            return Err(invalid(format!(
                "kernel {} does not exist",
                self.kernel.display()
            )));
        }
        for part in [&self.initrd, &self.disk].into_iter().flatten() {
            if !part.is_file() {
                return Err(invalid(format!("{} does not exist", part.display())));
            }
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(invalid(format!("{} vCPUs (1 to 64 allowed)", self.vcpus)));
        }
        if !(64..=1 << 20).contains(&self.memory_mib) {
            return Err(invalid(format!(
                "{} MiB of memory (64 MiB to 1 TiB allowed)",
                self.memory_mib
            )));
        }
        if self.cmdline.contains('\n') {
            return Err(invalid("the kernel command line contains a newline".into()));
        }
        Ok(())
    }
}
