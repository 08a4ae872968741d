//! `slicenet membership ...`: make a node key, run a membership node and print
//! what it sees (one line per event; `--json` for scripts).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{
    Capacity, GeoLocation, Membership, MembershipConfig, MembershipEvent, NodeIdentity, NodeInfo,
    PeerAddr, VerifiedNodeRecord, WgPublicKey,
};

/// `slicenet membership` subcommands.
#[derive(Debug, Subcommand)]
pub enum MembershipCommand {
    /// Create a node key file (ed25519 seed, base64, mode 0600) and print its node id.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        key: PathBuf,
    },
    /// Join the overlay and print membership events until interrupted.
    Run(RunArgs),
}

/// Arguments of `slicenet membership run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Node key file (see `slicenet membership keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on, IP:PORT (repeatable).
    #[arg(long, required = true)]
    pub listen: Vec<PeerAddr>,
    /// Address of a node to join through, IP:PORT (repeatable; none for the first node).
    #[arg(long)]
    pub bootstrap: Vec<PeerAddr>,
    /// Site name advertised in the record.
    #[arg(long)]
    pub site: String,
    /// Region name advertised in the record.
    #[arg(long, default_value = "")]
    pub region: String,
    /// Site latitude in degrees.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub lat: f64,
    /// Site longitude in degrees.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub lon: f64,
    /// vCPUs offered to slivers.
    #[arg(long, default_value_t = 0)]
    pub vcpus: u16,
    /// Memory offered to slivers, MiB.
    #[arg(long, default_value_t = 0)]
    pub memory_mib: u32,
    /// Disk offered to slivers, GiB.
    #[arg(long, default_value_t = 0)]
    pub disk_gib: u32,
    /// This node's WireGuard public key (base64, as `wg pubkey` prints it).
    #[arg(long)]
    pub wg_pubkey: WgPublicKey,
    /// Overlay tunnel address of this node.
    #[arg(long)]
    pub tunnel_addr: Ipv4Addr,
    /// UDP endpoint(s) of this node's WireGuard socket (repeatable).
    #[arg(long)]
    pub underlay: Vec<SocketAddr>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `slicenet membership` subcommand.
pub fn run(command: MembershipCommand) -> anyhow::Result<()> {
    match command {
        MembershipCommand::Keygen { key } => {
            let identity = NodeIdentity::generate();
            identity.save_new(&key)?;
            println!("{}", identity.node_id());
            Ok(())
        }
        MembershipCommand::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(run_node(args)),
    }
}

fn record_json(kind: &str, record: &VerifiedNodeRecord) -> serde_json::Value {
    let info = record.info();
    json!({
        "event": kind,
        "node": record.node_id().to_string(),
        "peer_id": record.node_id().peer_id_string(),
        "seq": record.seq(),
        "site": info.site,
        "region": info.region,
        "lat": info.location.lat(),
        "lon": info.location.lon(),
        "vcpus": info.capacity.vcpus,
        "memory_mib": info.capacity.memory_mib,
        "disk_gib": info.capacity.disk_gib,
        "wg_pubkey": info.wireguard_key.to_string(),
        "tunnel_addr": info.tunnel_addr.to_string(),
        "underlay": info.underlay.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "version": info.software_version,
    })
}

fn print_event(event: &MembershipEvent, as_json: bool) {
    let line = match (event, as_json) {
        (MembershipEvent::PeerUp(r), true) => record_json("up", r).to_string(),
        (MembershipEvent::PeerUpdated(r), true) => record_json("updated", r).to_string(),
        (MembershipEvent::PeerDown { node, reason }, true) => {
            json!({"event": "down", "node": node.to_string(), "reason": reason}).to_string()
        }
        (MembershipEvent::PeerUp(r) | MembershipEvent::PeerUpdated(r), false) => {
            let kind = if matches!(event, MembershipEvent::PeerUp(_)) {
                "up"
            } else {
                "updated"
            };
            let info = r.info();
            format!(
                "{kind:7} {}  site={} region={} tunnel={} wg={} underlay={:?}",
                r.node_id(),
                info.site,
                info.region,
                info.tunnel_addr,
                info.wireguard_key,
                info.underlay
            )
        }
        (MembershipEvent::PeerDown { node, reason }, false) => {
            format!("down    {node}  reason={reason:?}")
        }
    };
    println!("{line}");
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let identity = NodeIdentity::load(&args.key)?;
    let location = GeoLocation::from_degrees(args.lat, args.lon).with_context(|| {
        format!(
            "--lat {} --lon {} is not on the globe (latitude -90..90, longitude -180..180)",
            args.lat, args.lon
        )
    })?;
    let info = NodeInfo {
        site: args.site,
        region: args.region,
        location,
        capacity: Capacity {
            vcpus: args.vcpus,
            memory_mib: args.memory_mib,
            disk_gib: args.disk_gib,
        },
        wireguard_key: args.wg_pubkey,
        tunnel_addr: args.tunnel_addr,
        underlay: args.underlay,
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut config = MembershipConfig::new(identity, info);
    config.listen = args.listen;
    config.bootstrap = args.bootstrap;
    let (membership, mut events) = Membership::start(config).await?;
    let addrs: Vec<String> = membership
        .listen_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if args.json {
        println!(
            "{}",
            json!({"event": "listening", "node": membership.node_id().to_string(), "addrs": addrs})
        );
    } else {
        println!(
            "node {} listening on {}",
            membership.node_id(),
            addrs.join(" ")
        );
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => print_event(&event, args.json),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    let status = membership.handle().status().await;
    membership.shutdown().await;
    if let Ok(status) = status {
        if args.json {
            println!("{}", json!({"event": "stopped", "status": status}));
        } else {
            eprintln!("stopped: {:?}", status.counters);
        }
    }
    Ok(())
}
