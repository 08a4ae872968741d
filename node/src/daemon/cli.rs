//! `slicenet node run|status` and `slicenet console`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::config::NodeConfig;
use super::control;

/// The node daemon's commands.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Run the node daemon: register, receive tickets, run slivers, wire enclaves.
    Run(RunArgs),
    /// Show a running node daemon's status: runtime, members, slivers, data plane.
    Status(StatusArgs),
}

/// `slicenet node run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node's configuration file (TOML; see node/README.md).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// How to find a node daemon's control socket.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// The node's data directory (its control socket is `control.sock` inside).
    #[arg(
        long,
        env = "SLICENET_NODE_DIR",
        default_value = "/var/lib/slicenet-node"
    )]
    pub data_dir: PathBuf,
}

impl ControlArgs {
    fn socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

/// `slicenet node status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `slicenet console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// The sliver's id (see `slicenet slice show`).
    pub sliver: u64,
    /// Run this shell command on the console, print its output and exit
    /// (instead of attaching interactively).
    #[arg(long)]
    pub exec: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs a node daemon command.
pub fn run(command: DaemonCommand) -> anyhow::Result<()> {
    match command {
        DaemonCommand::Run(args) => run_daemon(&args),
        DaemonCommand::Status(args) => status(&args),
    }
}

fn run_daemon(args: &RunArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        super::run(config, rx).await
    })
    .with_context(|| format!("node daemon ({})", args.config.display()))
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let report = runtime()?.block_on(control::query_status(&args.control.socket()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "node {}  tunnel {}  runtime {}",
        report.node, report.tunnel_address, report.runtime
    );
    println!("  {}", report.runtime_reason);
    println!("  resource limits: {}", report.limits);
    println!(
        "  authority {} {}  ticket epoch {}  tickets refused {}",
        report.authority_url,
        if report.authority_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        report.ticket_epoch,
        report.tickets_refused
    );
    if let Some(e) = &report.authority_error {
        println!("  last authority error: {e}");
    }
    println!("\nmembers ({} dropped inputs)", report.membership_dropped);
    println!(
        "  {:<12} {:<8} {:<5} {:<9} {:>10}  underlay",
        "node", "site", "up", "connected", "heard ms"
    );
    for m in &report.members {
        let underlay: Vec<String> = m.underlay.iter().map(|a| a.to_string()).collect();
        println!(
            "  {:<12} {:<8} {:<5} {:<9} {:>10}  {}",
            &m.node_id[..m.node_id.len().min(12)],
            m.site,
            m.up,
            m.connected,
            m.last_heard_ms,
            underlay.join(",")
        );
    }
    println!("\nslivers");
    println!(
        "  {:>6} {:<20} {:<10} {:>8} {:>8} {:<18} message",
        "id", "hostname", "phase", "restarts", "boot s", "address"
    );
    for s in &report.slivers {
        println!(
            "  {:>6} {:<20} {:<10} {:>8} {:>8} {:<18} {}",
            s.sliver_id,
            s.hostname,
            format!("{:?}", s.phase).to_lowercase(),
            s.restarts,
            s.boot_seconds
                .map(|b| format!("{b:.1}"))
                .unwrap_or_else(|| "-".into()),
            s.addresses.join(","),
            s.message.clone().unwrap_or_default()
        );
    }
    println!("\ndata plane");
    println!("{}", report.overlay.render());
    Ok(())
}

/// Runs `slicenet console`.
pub fn console(args: &ConsoleArgs) -> anyhow::Result<()> {
    let socket = args.control.socket();
    let rt = runtime()?;
    if let Some(command) = &args.exec {
        let out = rt.block_on(control::console_exec(
            &socket,
            args.sliver,
            command,
            std::time::Duration::from_secs(60),
        ))?;
        println!("{out}");
        return Ok(());
    }
    rt.block_on(async {
        let mut stream = control::open_console(&socket, args.sliver).await?;
        eprintln!(
            "attached to sliver {}'s console; Ctrl-] detaches",
            args.sliver
        );
        let (mut rd, mut wr) = tokio::io::split(stream.get_mut());
        let to_vm = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            loop {
                let n = stdin.read(&mut buf).await?;
                if n == 0 || buf[..n].contains(&0x1d) {
                    return Ok::<_, std::io::Error>(());
                }
                wr.write_all(&buf[..n]).await?;
            }
        };
        let from_vm = async {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                let mut out = std::io::stdout();
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
        };
        tokio::select! {
            r = to_vm => r?,
            r = from_vm => r?,
        }
        anyhow::Ok(())
    })
}
