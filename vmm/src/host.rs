//! Can this host's KVM run a stock Linux kernel? PVM-based KVM (`kvm_pvm`, common on cloud
//! VMs without nested virtualization) only runs PVM-aware guest kernels: the stock Debian
//! kernel crawls and then dies with an emulation failure. Detect that up front and say so.

use std::path::Path;

/// Why the host cannot run a stock guest kernel under KVM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// /dev/kvm is absent or not accessible.
    #[error("/dev/kvm is not usable ({0}); load kvm_intel or kvm_amd, or give this user access to /dev/kvm; without KVM use the QEMU (TCG) sliver runtime")]
    NoKvm(String),
    /// KVM is provided by PVM.
    #[error("this host's KVM is PVM (the kvm_pvm module is loaded and the CPU has no vmx/svm): it runs only PVM-aware guest kernels, not the stock Debian kernel of slicenet appliances; run slicenet-vmm on a host with VT-x/AMD-V (bare metal or nested virtualization), or use the QEMU sliver runtime here")]
    PvmOnly,
    /// No hardware virtualization extensions.
    #[error("the CPU advertises neither vmx (Intel VT-x) nor svm (AMD-V) in /proc/cpuinfo, so KVM cannot run a stock guest kernel here; use a host with hardware virtualization or the QEMU sliver runtime")]
    NoHardwareVirtualization,
}

/// Checks /dev/kvm, PVM and vmx/svm, in that order.
pub fn check_host() -> Result<(), HostError> {
    check_host_at(Path::new("/"))
}

/// [`check_host`] against another root directory (for tests).
pub fn check_host_at(root: &Path) -> Result<(), HostError> {
    let kvm = root.join("dev/kvm");
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&kvm)
    {
        return Err(HostError::NoKvm(e.to_string()));
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if root.join("sys/module/kvm_pvm").exists() && !hw {
        return Err(HostError::PvmOnly);
    }
    if !hw {
        return Err(HostError::NoHardwareVirtualization);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(cpu_flags: &str, pvm: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu sse2 {cpu_flags}\n"),
        )
        .unwrap();
        if pvm {
            std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        }
        root
    }

    #[test]
    fn pvm_hosts_are_named_as_such() {
        let root = fake_root("", true);
        let err = check_host_at(root.path()).unwrap_err();
        assert_eq!(err, HostError::PvmOnly);
        assert!(err.to_string().contains("PVM"));
    }

    #[test]
    fn hardware_virtualization_passes_and_its_absence_is_explained() {
        assert_eq!(check_host_at(fake_root("svm npt", false).path()), Ok(()));
        assert_eq!(check_host_at(fake_root("vmx ept", false).path()), Ok(()));
        assert_eq!(
            check_host_at(fake_root("", false).path()),
            Err(HostError::NoHardwareVirtualization)
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_host_at(empty.path()),
            Err(HostError::NoKvm(_))
        ));
    }
}
