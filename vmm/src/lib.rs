//! The slicenet KVM microVM and the virtual appliance format.
//!
//! - [`appliance`]: the appliance format (manifest, hash-checked loading, MAC derivation,
//!   guest command line) and the Debian-only builder of the default appliance.

pub mod appliance;
pub mod cli;
