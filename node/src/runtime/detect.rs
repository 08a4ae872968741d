//! Which runtime can run stock-kernel VMs on this host, and why.

use std::fmt;
use std::path::Path;

/// The two sliver runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// slicenet's own KVM microVM (`slicenet-vmm`).
    Microvm,
    /// QEMU, with KVM or TCG acceleration.
    Qemu,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Microvm => "microvm",
            RuntimeKind::Qemu => "qemu",
        })
    }
}

/// What kind of virtualization the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostVirtualization {
    /// /dev/kvm backed by VT-x or AMD-V: stock kernels boot fast.
    HardwareKvm,
    /// /dev/kvm backed by PVM (kvm_pvm): only PVM-aware guests run, and
    /// Debian's kernels are not.
    PvmKvm,
    /// No usable /dev/kvm.
    None,
}

/// The runtime a node uses, and the sentence explaining the choice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeChoice {
    pub kind: RuntimeKind,
    /// Whether QEMU may use KVM (false: TCG software emulation).
    pub qemu_kvm: bool,
    pub host: HostVirtualization,
    pub reason: String,
}

/// Classifies the host from the presence of /dev/kvm, the PVM module and
/// the CPU flags.
pub fn host_virtualization() -> HostVirtualization {
    classify(
        Path::new("/dev/kvm").exists(),
        Path::new("/sys/module/kvm_pvm").exists(),
        &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
    )
}

fn classify(dev_kvm: bool, pvm_module: bool, cpuinfo: &str) -> HostVirtualization {
    let hw_flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match (dev_kvm, pvm_module, hw_flags) {
        (false, _, _) => HostVirtualization::None,
        (true, true, _) | (true, false, false) => HostVirtualization::PvmKvm,
        (true, false, true) => HostVirtualization::HardwareKvm,
    }
}

/// Picks the runtime: the microVM where hardware KVM exists, QEMU
/// otherwise. `forced` lets an operator insist on one; forcing the microVM
/// on a host without hardware KVM is an error that says why.
pub fn detect_runtime(forced: Option<RuntimeKind>) -> Result<RuntimeChoice, super::RuntimeError> {
    choose(forced, host_virtualization())
}

fn choose(
    forced: Option<RuntimeKind>,
    host: HostVirtualization,
) -> Result<RuntimeChoice, super::RuntimeError> {
    let why_not_hw = match host {
        HostVirtualization::HardwareKvm => None,
        HostVirtualization::PvmKvm => Some(
            "/dev/kvm is PVM-based (kvm_pvm loaded, no vmx/svm CPU flags) and cannot run stock \
             kernels",
        ),
        HostVirtualization::None => Some("there is no /dev/kvm"),
    };
    match (forced, why_not_hw) {
        (Some(RuntimeKind::Microvm), Some(why)) => Err(super::RuntimeError::Unusable {
            requested: RuntimeKind::Microvm,
            reason: why.to_string(),
        }),
        (Some(RuntimeKind::Microvm), None) | (None, None) => Ok(RuntimeChoice {
            kind: RuntimeKind::Microvm,
            qemu_kvm: true,
            host,
            reason: "hardware KVM is available: slivers run in slicenet's microVM".into(),
        }),
        (Some(RuntimeKind::Qemu), None) => Ok(RuntimeChoice {
            kind: RuntimeKind::Qemu,
            qemu_kvm: true,
            host,
            reason: "qemu forced by the operator; hardware KVM is available to it".into(),
        }),
        (_, Some(why)) => Ok(RuntimeChoice {
            kind: RuntimeKind::Qemu,
            qemu_kvm: false,
            host,
            reason: format!("slivers run in QEMU with TCG software emulation because {why}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n";
    const PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme de pse sse2\n";

    #[test]
    fn host_kinds_follow_dev_kvm_pvm_and_cpu_flags() {
        assert_eq!(classify(false, false, VMX), HostVirtualization::None);
        assert_eq!(classify(true, true, VMX), HostVirtualization::PvmKvm);
        assert_eq!(classify(true, false, PLAIN), HostVirtualization::PvmKvm);
        assert_eq!(classify(true, false, VMX), HostVirtualization::HardwareKvm);
    }

    #[test]
    fn hardware_kvm_picks_the_microvm_and_others_fall_back_to_tcg() {
        let hw = choose(None, HostVirtualization::HardwareKvm).unwrap();
        assert_eq!(hw.kind, RuntimeKind::Microvm);
        let pvm = choose(None, HostVirtualization::PvmKvm).unwrap();
        assert_eq!((pvm.kind, pvm.qemu_kvm), (RuntimeKind::Qemu, false));
        assert!(pvm.reason.contains("PVM"), "{}", pvm.reason);
        let forced = choose(Some(RuntimeKind::Qemu), HostVirtualization::HardwareKvm).unwrap();
        assert_eq!((forced.kind, forced.qemu_kvm), (RuntimeKind::Qemu, true));
    }

    #[test]
    fn forcing_the_microvm_without_hardware_kvm_says_why() {
        let err = choose(Some(RuntimeKind::Microvm), HostVirtualization::PvmKvm).unwrap_err();
        assert!(err.to_string().contains("PVM"), "{err}");
        let err = choose(Some(RuntimeKind::Microvm), HostVirtualization::None).unwrap_err();
        assert!(err.to_string().contains("no /dev/kvm"), "{err}");
    }
}
