//! KVM state of a VM and its vCPUs, and their serializable snapshots.

pub mod memory;
pub mod vcpu;
pub mod vm;

pub use vcpu::{Vcpu, VcpuExitReason, VcpuState};
pub use vm::{MemoryRegionState, Vm, VmError, VmState};
