//! The slicenet KVM microVM and the virtual appliance format.
//!
//! - [`appliance`]: the appliance format (manifest, hash-checked loading, MAC derivation,
//!   guest command line) and the Debian-only builder of the default appliance.
//! - [`arch`]: x86_64 memory layout, ACPI tables, bzImage loading and vCPU boot state.
//! - [`devices`]: serial console, legacy platform ports, virtio-mmio net and block.
//! - [`vstate`], [`bus`], [`runtime`]: the KVM VM and vCPUs, exit dispatch, and the one-VM-per-
//!   process event loop with its [`control`] API; [`host`] says whether KVM can run the guest.

pub mod appliance;
pub mod arch;
pub mod bus;
pub mod cli;
pub mod control;
pub mod devices;
pub mod fuzzing;
pub mod host;
pub mod nested;
pub mod runtime;
pub mod vstate;
