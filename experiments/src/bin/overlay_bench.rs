//! Benchmark of slicenet's data plane against peer overlays (see
//! `slicenet_experiments::overlay_bench`). Run as root, in release mode:
//! `cargo run --release -p slicenet-experiments --bin overlay_bench`.

use clap::{Parser, Subcommand};
use slicenet_experiments::overlay_bench::{self, BenchArgs};

#[derive(Debug, Parser)]
#[command(
    about = "slicenet overlay throughput, latency and CPU against wireguard-go+VXLAN and tinc"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (internal) Run one slicenet daemon; the benchmark starts these inside its sites.
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Daemon { config, threads }) => {
            slicenet_overlay::daemon::run(&config, threads)
        }
        None => {
            let exe = std::env::current_exe()?;
            overlay_bench::run(&cli.bench, &exe)
        }
    }
}
