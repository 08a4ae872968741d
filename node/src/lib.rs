//! The slicenet node: membership, node manager and sliver supervisor.
pub mod membership;
