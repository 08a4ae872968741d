//! Local multi-site testbeds for slicenet.
//!
//! A *site* is a Linux network namespace. Sites are joined by veth links
//! (a full mesh, so every pair of sites has its own link and its own
//! `tc netem` delay/loss), and each site has one stable underlay address on
//! its loopback that every other site routes to over their shared link.
//! Everything a [`Testbed`] creates is removed when it is dropped — also
//! when a test panics — and testbeds left behind by killed processes are
//! swept on the next start. Names carry the creating process id and a
//! counter, so tests can run in parallel.
//!
//! Address plan (all inside 198.18.0.0/15, the benchmarking range):
//! Shaped links (delay, jitter, loss, rate) are emulated in userspace; see
//! the `emulator` module for why.
//!
//! - site `i` (1-based) underlay address: `198.18.0.i/32` on `lo`;
//! - link `k` between two sites: `198.18.(1 + k / 64).(4 * (k % 64) + 1 | 2)/30`;
//! - 198.19.0.0/16 is left for overlay (enclave) and guest addresses.

mod command;
mod emulator;
mod netns;
mod privilege;
mod topology;

pub use command::{run_checked, CommandError};
pub use netns::{NetNs, NetNsError};
pub use privilege::{privilege_report, require_privileged, PrivilegeReport};
pub use topology::{
    sweep_stale_testbeds, LinkShape, SiteHandle, Testbed, TestbedBuilder, TestbedError,
};
