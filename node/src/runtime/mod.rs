//! Sliver runtimes: how a node turns a VM description into a running VM.
//!
//! Two runtimes sit behind one interface: `microvm` (the project's own
//! VMM, `slicenet-vmm`, which needs hardware KVM) and `qemu` (Debian's
//! `qemu-system-x86_64`, with KVM where it works and TCG software
//! emulation elsewhere). Both plug each VM NIC into the node's switch
//! through the same unix datagram port protocol, so the rest of the node
//! does not care which one runs a sliver.

mod detect;
mod microvm;
mod process;
mod qemu;
mod spec;

pub use detect::{detect_runtime, HostVirtualization, RuntimeChoice, RuntimeKind};
pub use microvm::MicrovmRuntime;
pub use process::VmProcess;
pub use qemu::QemuRuntime;
pub use spec::{NicSpec, VmSpec};

/// The runtime a node uses for all its slivers.
#[derive(Debug, Clone)]
pub enum Runtime {
    Qemu(QemuRuntime),
    Microvm(MicrovmRuntime),
}

impl Runtime {
    /// The runtime a detection result asks for.
    pub fn from_choice(choice: &RuntimeChoice) -> Runtime {
        match choice.kind {
            RuntimeKind::Microvm => Runtime::Microvm(MicrovmRuntime::new()),
            RuntimeKind::Qemu => Runtime::Qemu(QemuRuntime::new(choice.qemu_kvm)),
        }
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Runtime::Qemu(_) => RuntimeKind::Qemu,
            Runtime::Microvm(_) => RuntimeKind::Microvm,
        }
    }

    /// Boots a VM.
    pub fn start(&self, spec: &VmSpec) -> Result<VmProcess, RuntimeError> {
        match self {
            Runtime::Qemu(q) => q.start(spec),
            Runtime::Microvm(m) => m.start(spec),
        }
    }
}

/// Errors from starting or controlling a sliver's VM.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime's program could not be started.
    #[error("cannot start {program}: {source} (is it installed? see scripts/setup.sh)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The VM description cannot be run by this runtime.
    #[error("invalid VM description for {sliver}: {reason}")]
    InvalidSpec { sliver: String, reason: String },
    /// The operator forced a runtime this host cannot run.
    #[error("runtime {requested} is not usable on this host: {reason}")]
    Unusable {
        requested: RuntimeKind,
        reason: String,
    },
    /// A file the VM needs could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
