//! `slicenet-authority`: the authority's commands without the node daemon,
//! VMM or overlay (a lean binary for authority hosts; `slicenet` has the same commands).

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "slicenet-authority",
    version,
    about = "slicenet slice authority and its client commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Authority(slicenet_authority::cli::Command),
    /// Nodes in the registry (admin or the site's PI).
    #[command(subcommand)]
    Node(slicenet_authority::cli::NodeCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Authority(c) => slicenet_authority::cli::run(c),
        Command::Node(c) => slicenet_authority::cli::run_node(c),
    };
    if let Err(e) = result {
        // A sentence, not a backtrace: the message already says what to do.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
