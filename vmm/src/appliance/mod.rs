//! Virtual appliances: a directory holding a kernel, an initramfs, an optional disk image and a
//! manifest (`appliance.toml`) that names them, describes the machine and pins every part by
//! SHA-256.
//!
//! Both sliver runtimes (slicenet-vmm and the node manager's QEMU runtime) load appliances
//! through [`Appliance::load`], which refuses an appliance with a missing, unreadable or
//! modified part before anything boots.

mod cmdline;
mod mac;
mod manifest;

pub mod build;
pub mod vmlinux;

pub use cmdline::{compose_cmdline, CmdlineError, GuestNet, READY_MARKER};
pub use mac::{derive_mac, parse_mac, MacAddr};
pub use manifest::{
    Appliance, ApplianceError, DiskSpec, Manifest, NicSpec, PartSpec, MANIFEST_FILE,
    MANIFEST_FORMAT,
};
