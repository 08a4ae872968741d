//! The slicenet node: membership, the node daemon (tickets, slivers,
//! enclave wiring) and the sliver runtimes.
pub mod daemon;
pub mod membership;
pub mod runtime;
