//! Local multi-site testbeds, the user scenarios and the benchmarks of slicenet.

pub mod catalog;
pub mod cluster;
pub mod demo;
pub mod overlay_bench;
pub mod rtt;
pub mod scenarios;
