//! `slicenet-authority`: the authority's commands without the node daemon,
//! VMM or overlay (a lean binary for authority hosts; `slicenet` has the same commands).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "slicenet-authority",
    version,
    about = "slicenet slice authority and its client commands"
)]
struct Cli {
    #[command(subcommand)]
    command: slicenet_authority::cli::Command,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = slicenet_authority::cli::run(Cli::parse().command) {
        // A sentence, not a backtrace: the message already says what to do.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
