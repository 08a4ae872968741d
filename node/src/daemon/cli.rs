//! `slicenet node run|status` and `slicenet console`.

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

/// `slicenet console`: through the authority and the sliver's node
/// (`SLICE SLIVER`), or through this machine's node daemon (`--data-dir DIR SLIVER`).
#[derive(Debug, Args)]
#[command(override_usage = "slicenet console [OPTIONS] SLICE SLIVER\n       \
                            slicenet console --data-dir DIR [OPTIONS] SLIVER")]
pub struct ConsoleArgs {
    /// The slice; or, when it is the only argument, the sliver's id on this
    /// machine's node daemon.
    #[arg(value_name = "SLICE")]
    pub slice_or_sliver: String,
    /// The sliver's id (see `slicenet slice show SLICE`).
    #[arg(value_name = "SLIVER")]
    pub sliver: Option<u64>,
    /// Local form: the node's data directory (its control socket is
    /// `control.sock` inside; default /var/lib/slicenet-node).
    #[arg(long, env = "SLICENET_NODE_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run this shell command on the console, print its output and exit
    /// (instead of attaching interactively).
    #[arg(long)]
    pub exec: Option<String>,
    /// How long `--exec` waits for the command to finish.
    #[arg(long, default_value = "60s", value_parser = slicenet_authority::cli::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub conn: slicenet_authority::cli::ConnArgs,
}

/// Where `slicenet console` attaches.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsoleTarget {
    /// Through the authority (grant) and the node's console port.
    Remote { slice: String, sliver: u64 },
    /// Through a node daemon's control socket on this machine.
    Local { data_dir: PathBuf, sliver: u64 },
}

impl ConsoleArgs {
    /// Which form the arguments take.
    pub fn target(&self) -> anyhow::Result<ConsoleTarget> {
        match self.sliver {
            Some(sliver) => Ok(ConsoleTarget::Remote {
                slice: self.slice_or_sliver.clone(),
                sliver,
            }),
            None => {
                let sliver = self.slice_or_sliver.parse().with_context(|| {
                    format!(
                        "`{}` is not a sliver id; use `slicenet console SLICE SLIVER` \
                         (through the authority) or `slicenet console --data-dir DIR SLIVER` \
                         (this machine's node)",
                        self.slice_or_sliver
                    )
                })?;
                Ok(ConsoleTarget::Local {
                    data_dir: self
                        .data_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/var/lib/slicenet-node")),
                    sliver,
                })
            }
        }
    }
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
    match report.console {
        Some(addr) => println!("  remote console on {addr}"),
        None => println!("  remote console off"),
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
    let target = args.target()?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        match target {
            ConsoleTarget::Local { data_dir, sliver } => {
                let socket = data_dir.join("control.sock");
                let console = control::open_console(&socket, sliver).await?;
                use_console(args, console, sliver).await
            }
            ConsoleTarget::Remote { slice, sliver } => {
                let console = open_remote(args, &slice, sliver).await?;
                use_console(args, console, sliver).await
            }
        }
    });
    // A console that closed leaves a stdin read pending on a blocking
    // thread; do not wait for a keypress to exit.
    rt.shutdown_background();
    result
}

/// Asks the authority for a grant with the principal's key and opens the
/// console at the sliver's node.
async fn open_remote(
    args: &ConsoleArgs,
    slice: &str,
    sliver: u64,
) -> anyhow::Result<tokio::net::TcpStream> {
    let Some(key_path) = &args.conn.key else {
        anyhow::bail!("no key to sign with: pass --key FILE or set SLICENET_KEY (your principal key; `slicenet keygen FILE` makes one)");
    };
    let key = slicenet_authority::keys::read_secret_key(key_path)?;
    let client = slicenet_authority::client::Client::new(&args.conn.authority, key.clone());
    let authority_key = client
        .authority_info()
        .await
        .with_context(|| format!("asking {} for its public key", args.conn.authority))?
        .public_key;
    let reply = client.console_grant(slice, sliver).await.with_context(|| {
        format!("asking the authority for a console grant for sliver {sliver} of slice {slice}")
    })?;
    let console = super::console_client::open(
        &reply,
        &authority_key,
        &key,
        super::console_server::HANDSHAKE_TIMEOUT,
    )
    .await
    .with_context(|| format!("opening sliver {sliver}'s console on node {}", reply.node))?;
    if args.exec.is_none() {
        eprintln!(
            "console of sliver {sliver} (slice {slice}) on node {} at {}; grant {}",
            reply.node, reply.console, reply.grant_id
        );
    }
    Ok(console)
}

/// Runs `--exec` on an open console, or attaches this terminal to it.
async fn use_console<S>(args: &ConsoleArgs, mut console: S, sliver: u64) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(command) = &args.exec {
        let out = super::console_io::exec(&mut console, command, args.timeout)
            .await
            .with_context(|| format!("running `{command}` on sliver {sliver}'s console"))?;
        if args.conn.json {
            println!("{}", serde_json::json!({ "sliver": sliver, "output": out }));
        } else {
            println!("{out}");
        }
        return Ok(());
    }
    eprintln!("attached to sliver {sliver}'s console; Ctrl-] detaches\r");
    super::console_io::attach(console).await?;
    eprintln!("\r\ndetached from sliver {sliver}'s console");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        console: ConsoleArgs,
    }

    fn target(args: &[&str]) -> anyhow::Result<ConsoleTarget> {
        Cli::try_parse_from(std::iter::once("console").chain(args.iter().copied()))?
            .console
            .target()
    }

    #[test]
    fn console_takes_slice_and_sliver_or_a_local_sliver() {
        assert_eq!(
            target(&["ams_e2e", "3", "--exec", "true"]).unwrap(),
            ConsoleTarget::Remote {
                slice: "ams_e2e".into(),
                sliver: 3
            }
        );
        assert_eq!(
            target(&["--data-dir", "/tmp/n", "3"]).unwrap(),
            ConsoleTarget::Local {
                data_dir: "/tmp/n".into(),
                sliver: 3
            }
        );
        let err = target(&["ams_e2e"]).unwrap_err().to_string();
        assert!(err.contains("slicenet console SLICE SLIVER"), "{err}");
        assert!(target(&["ams_e2e", "three"]).is_err());
    }
}
