//! The `slicenet overlay ...` subcommands.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::{DaemonConfig, DEFAULT_CONTROL_SOCKET};
use crate::keys::PrivateKey;
use crate::{control, daemon, gateway};

/// Commands of the overlay data plane.
#[derive(Debug, Subcommand)]
pub enum OverlayCommand {
    /// Run a node's data plane from a configuration file (until Ctrl-C / SIGTERM).
    Run {
        /// The TOML configuration (keys, listen address, peers, enclaves, ports).
        #[arg(long, short)]
        config: PathBuf,
        /// Data-plane worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Show a running daemon's peers, handshakes, traffic and drops.
    Status {
        /// Find the control socket in this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The daemon's control socket.
        #[arg(long, conflicts_with = "config")]
        control: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and print what it would set up.
    Check {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate a WireGuard private key: written to FILE (mode 0600, public
    /// key printed) or, without --out, printed like `wg genkey`.
    Keygen {
        /// File to create.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key of a private key read from FILE or stdin.
    Pubkey {
        /// Private key file (default: stdin).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print what a plain Linux host needs to join one enclave as a gateway
    /// (wg-quick config + kernel VXLAN and bridge commands), as a script.
    ExportGateway {
        /// This node's configuration; the gateway must be a peer and member.
        #[arg(long, short)]
        config: PathBuf,
        /// The enclave.
        #[arg(long)]
        vni: u32,
        /// The gateway: a peer name or public key from the configuration.
        #[arg(long)]
        peer: String,
        /// The gateway's private key, to produce a complete wg-quick file.
        #[arg(long)]
        peer_private_key: Option<PathBuf>,
        /// WireGuard interface name on the gateway (default sn<VNI>).
        #[arg(long)]
        interface: Option<String>,
        /// Print JSON (wg_quick text, commands, peers) instead of a script.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one overlay command.
pub fn run(command: OverlayCommand) -> anyhow::Result<()> {
    match command {
        OverlayCommand::Run { config, threads } => daemon::run(&config, threads),
        OverlayCommand::Status {
            config,
            control,
            json,
        } => {
            let path = match (config, control) {
                (Some(c), _) => DaemonConfig::load(&c)?.control_socket,
                (None, Some(p)) => p,
                (None, None) => PathBuf::from(DEFAULT_CONTROL_SOCKET),
            };
            let status = control::query_status(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        OverlayCommand::Check { config } => {
            let c = DaemonConfig::load(&config)?;
            println!(
                "{}: ok\n  node {} tunnel {} listening on {}\n  {} peer(s), {} enclave(s), {} port(s), control socket {}",
                config.display(),
                c.overlay.private_key.public_key(),
                c.overlay.tunnel_address,
                c.overlay.listen,
                c.peers.len(),
                c.enclaves.len(),
                c.enclaves.iter().map(|e| e.ports.len()).sum::<usize>(),
                c.control_socket.display()
            );
            Ok(())
        }
        OverlayCommand::Keygen { out } => {
            let key = PrivateKey::generate();
            match out {
                Some(path) => {
                    key.save(&path)?;
                    eprintln!("private key written to {} (mode 0600)", path.display());
                    println!("{}", key.public_key());
                }
                None => println!("{}", key.to_base64()),
            }
            Ok(())
        }
        OverlayCommand::Pubkey { key } => {
            let key = match key {
                Some(path) => PrivateKey::load(&path)?,
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading a private key from stdin")?;
                    PrivateKey::from_base64(&text).context("the text on stdin")?
                }
            };
            println!("{}", key.public_key());
            Ok(())
        }
        OverlayCommand::ExportGateway {
            config,
            vni,
            peer,
            peer_private_key,
            interface,
            json,
        } => {
            let c = DaemonConfig::load(&config)?;
            let key = peer_private_key.map(|p| PrivateKey::load(&p)).transpose()?;
            let export = gateway::export(&c, vni, &peer, key.as_ref(), interface.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&export)?);
            } else {
                print!("{}", export.script());
            }
            Ok(())
        }
    }
}
