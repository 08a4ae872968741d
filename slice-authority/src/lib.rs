//! The slicenet slice authority: registry, placement, leases, signed tickets and the HTTP API.
//!
//! Modules other crates use:
//! - [`ticket`]: ticket documents, their canonical signed encoding and
//!   offline verification ([`ticket::verify`]) for nodes;
//! - [`grant`]: console grants (short-lived, signed permission to attach
//!   to a sliver's console), verified offline by nodes, and the console handshake;
//! - [`client`]: an HTTP client that signs requests with a principal's or a node's key;
//! - [`keys`]: key files (contract 2);
//! - [`api`]: the JSON request and response types of the HTTP API;
//! - [`server`]: runs an authority in-process (tests, the demo, benchmarks).

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod envelope;
pub mod grant;
pub mod keys;
pub mod model;
pub mod placement;
pub mod server;
pub mod ticket;
