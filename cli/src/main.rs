//! `slicenet`: the one command-line entry point (daemons and client).

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "slicenet",
    version,
    about = "A distributed virtual machine overlay: slices, slivers and enclaves"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up a local multi-site testbed on this machine and show it working.
    Demo(slicenet_experiments::demo::DemoArgs),
    /// Build, show and verify virtual appliances (kernel + initramfs + manifest).
    #[command(subcommand)]
    Appliance(slicenet_vmm::cli::ApplianceCommand),
    /// The data plane: run a node's encrypted L2 overlay, show its status, make keys, export gateways.
    #[command(subcommand)]
    Overlay(slicenet_overlay::cli::OverlayCommand),
    /// Slice authority commands: keygen, authority, site, user, slice, sliver, enclave, audit.
    #[command(flatten)]
    Authority(slicenet_authority::cli::Command),
    /// Nodes: run the node daemon and see its status; node registry administration.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Attach to (or run a command on) a sliver's serial console through its node.
    Console(slicenet_node::daemon::cli::ConsoleArgs),
    /// Join the overlay's membership (libp2p) and print what it sees; make node keys.
    #[command(subcommand)]
    Membership(slicenet_node::membership::cli::MembershipCommand),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    #[command(flatten)]
    Daemon(slicenet_node::daemon::cli::DaemonCommand),
    #[command(flatten)]
    Registry(slicenet_authority::cli::NodeCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Daemons log to files: colour codes only for a person's terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => slicenet_experiments::demo::run(&args),
        Command::Appliance(command) => slicenet_vmm::cli::run(command),
        Command::Overlay(command) => slicenet_overlay::cli::run(command),
        Command::Authority(command) => slicenet_authority::cli::run(command),
        Command::Node(NodeCommand::Daemon(command)) => slicenet_node::daemon::cli::run(command),
        Command::Node(NodeCommand::Registry(command)) => slicenet_authority::cli::run_node(command),
        Command::Console(args) => slicenet_node::daemon::cli::console(&args),
        Command::Membership(command) => slicenet_node::membership::cli::run(command),
    };
    if let Err(e) = result {
        // One sentence chain, not a backtrace: messages say what to do.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
