//! The slicenet KVM microVM and the virtual appliance format.
//!
//! - [`appliance`]: the appliance format (manifest, hash-checked loading, MAC derivation,
//!   guest command line) and the Debian-only builder of the default appliance.
//! - [`arch`]: x86_64 memory layout, ACPI tables, bzImage loading and vCPU boot state.
//! - [`devices`]: serial console, legacy platform ports, virtio-mmio net and block.

pub mod appliance;
pub mod arch;
pub mod cli;
pub mod devices;
