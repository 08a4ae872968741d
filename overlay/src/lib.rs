//! The slicenet data plane: encrypted layer-2 enclaves across sites.
//!
//! Each node has one UDP socket and one WireGuard session (boringtun
//! [`Tunn`](boringtun::noise::Tunn)) per remote node. Ethernet frames travel
//! as VXLAN (RFC 7348, VNI = enclave id) inside a real IPv4/UDP datagram
//! between the two nodes' tunnel addresses, inside standard WireGuard — so a
//! plain Linux host with stock WireGuard and a kernel VXLAN device can join
//! an enclave as a gateway. Per enclave, a learning switch forwards frames
//! between local ports (TAP devices, unix datagram sockets for VM NICs) and
//! remote nodes; frames never cross enclaves, and every drop is counted
//! under a reason.
//!
//! The entry point is [`Overlay`]: start it with an [`OverlayConfig`], then
//! add and remove peers, enclaves and ports at runtime, and read
//! [`Overlay::status`]. See the crate's README for the model and the
//! daemon (`slicenet overlay run`).

pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod encap;
pub mod gateway;
pub mod keys;
pub mod offload;
pub mod status;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

mod forward;
mod node;
mod overlay;
mod receive;
mod switch;
mod tasks;
mod underlay;

pub use counters::DropReason;
pub use keys::{KeyError, PrivateKey, PublicKey};
pub use overlay::{
    MemoryPort, Overlay, OverlayConfig, OverlayError, PeerConfig, PortConfig, PortInfo, PortKind,
    MAX_MTU, MIN_MTU,
};
pub use status::{EnclaveStatus, OverlayStatus, PeerStatus, PortStatus, UnderlayStatus};
pub use wire::ethernet::MacAddr;
