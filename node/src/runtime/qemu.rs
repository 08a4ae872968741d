//! The QEMU sliver runtime: Debian's `qemu-system-x86_64`, q35 machine,
//! virtio-net-pci NICs on `-netdev dgram` switch ports.

use super::{RuntimeError, VmProcess, VmSpec};
use std::path::PathBuf;

/// Runs slivers under QEMU, with KVM or with TCG software emulation.
#[derive(Debug, Clone)]
pub struct QemuRuntime {
    binary: PathBuf,
    kvm: bool,
}

impl QemuRuntime {
    /// A runtime using `qemu-system-x86_64` from PATH.
    pub fn new(kvm: bool) -> Self {
        QemuRuntime {
            binary: PathBuf::from("qemu-system-x86_64"),
            kvm,
        }
    }

    /// Whether this runtime uses KVM (otherwise TCG).
    pub fn uses_kvm(&self) -> bool {
        self.kvm
    }

    /// The complete argument list QEMU is started with for `spec`.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let accel = if self.kvm {
            "kvm"
        } else if spec.vcpus > 1 {
            "tcg,thread=multi"
        } else {
            "tcg"
        };
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("slicenet-{},process=slicenet-{}", spec.name, spec.name),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            if self.kvm { "host" } else { "max" }.into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
        ];
        if let Some(initrd) = &spec.initrd {
            args.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        args.extend([
            "-append".into(),
            spec.cmdline.clone(),
            "-chardev".into(),
            format!(
                "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
                spec.console_socket.display(),
                spec.console_log.display()
            ),
            "-serial".into(),
            "chardev:console".into(),
        ]);
        for (i, nic) in spec.nics.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!(
                    "dgram,id=net{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    nic.vm_socket.display(),
                    nic.switch_socket.display()
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac_string()),
            ]);
        }
        if let Some(disk) = &spec.disk {
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw", disk.display()),
            ]);
        }
        args
    }

    /// Starts the VM. QEMU's own messages go to `<console_log>.qemu.log`.
    pub fn start(&self, spec: &VmSpec) -> Result<VmProcess, RuntimeError> {
        spec.validate()?;
        for nic in &spec.nics {
            // QEMU refuses to bind over a stale socket file.
            let _ = std::fs::remove_file(&nic.vm_socket);
        }
        let _ = std::fs::remove_file(&spec.console_socket);
        VmProcess::spawn(
            &self.binary,
            self.args(spec),
            &spec.console_log.with_extension("qemu.log"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::NicSpec;

    fn spec() -> VmSpec {
        VmSpec {
            name: "s1".into(),
            appliance_dir: "/a".into(),
            hostname: "a".into(),
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            disk: None,
            cmdline: "console=ttyS0 slicenet.hostname=a".into(),
            vcpus: 2,
            memory_mib: 256,
            nics: vec![NicSpec {
                mac: [0x02, 0, 0, 0, 0, 1],
                ipv4: None,
                mtu: None,
                vm_socket: "/run/s1-net0.vm.sock".into(),
                switch_socket: "/run/s1-net0.switch.sock".into(),
            }],
            console_log: "/run/s1.console.log".into(),
            console_socket: "/run/s1.console.sock".into(),
            control_socket: "/run/s1.api.sock".into(),
        }
    }

    #[test]
    fn nics_plug_into_the_switch_port_with_the_dgram_backend() {
        let args = QemuRuntime::new(false).args(&spec()).join(" ");
        assert!(args.contains(
            "dgram,id=net0,local.type=unix,local.path=/run/s1-net0.vm.sock,\
             remote.type=unix,remote.path=/run/s1-net0.switch.sock"
        ));
        assert!(args.contains("virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01"));
        assert!(args.contains("-accel tcg,thread=multi"));
        assert!(args.contains("-append console=ttyS0 slicenet.hostname=a"));
        assert!(args.contains("logfile=/run/s1.console.log"));
    }

    #[test]
    fn kvm_hosts_use_kvm_and_the_host_cpu() {
        let args = QemuRuntime::new(true).args(&spec()).join(" ");
        assert!(args.contains("-accel kvm -cpu host"));
    }

    #[test]
    fn a_missing_kernel_is_refused_before_qemu_starts() {
        let err = QemuRuntime::new(false).start(&spec()).unwrap_err();
        assert!(
            err.to_string().contains("kernel /k does not exist"),
            "{err}"
        );
    }
}
