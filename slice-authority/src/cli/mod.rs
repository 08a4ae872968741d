//! The authority's part of the `slicenet` command line: `keygen`,
//! `authority`, and the client commands for sites, nodes, users, slices,
//! slivers, enclaves and the audit log. Tables for people, `--json` for scripts.

mod output;
mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::api::*;
use crate::client::Client;
use crate::keys::{self, PublicKey};
use crate::model::{Appliance, Resources};
use crate::server::Authority;
use output::{expiry, reported, resources, table, utc};
pub use parse::{parse_duration, parse_placement_group};

/// The commands this crate adds to `slicenet` (plus [`NodeCommand`], which
/// `slicenet node` combines with the node daemon's commands).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an ed25519 identity key (for a user or a node): FILE (secret, 0600) and FILE.pub.
    Keygen(KeygenArgs),
    /// Run the slice authority (the first start creates the data directory and an admin key).
    Authority(AuthorityArgs),
    /// Sites: where nodes stand (admin).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Users (principals) and their roles.
    #[command(subcommand)]
    User(UserCommand),
    /// Slices: create with placement, renew, delete, show, list.
    #[command(subcommand)]
    Slice(SliceCommand),
    /// Slivers of a live slice: add (placement) and remove.
    #[command(subcommand)]
    Sliver(SliverCommand),
    /// Enclaves: private networks joining slivers (and gateways).
    #[command(subcommand)]
    Enclave(EnclaveCommand),
    /// Show the newest audit log entries (admin).
    Audit {
        #[command(flatten)]
        conn: ConnArgs,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Where the authority is and which key signs requests.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Authority URL.
    #[arg(
        long,
        env = "SLICENET_AUTHORITY",
        default_value = "http://127.0.0.1:8420"
    )]
    pub authority: String,
    /// Your secret key file (as written by `slicenet keygen` or the authority's first start).
    #[arg(long, env = "SLICENET_KEY")]
    pub key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ConnArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let Some(path) = &self.key else {
            bail!("no key to sign with: pass --key FILE or set SLICENET_KEY (the authority's first start printed the admin key's path; `slicenet keygen FILE` makes a new key for a user)");
        };
        let key = keys::read_secret_key(path)?;
        Ok(Client::new(&self.authority, key))
    }
}

/// Options of `slicenet keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Secret key file to create; the public key goes to FILE.pub.
    pub file: PathBuf,
    /// Print the public key as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `slicenet authority`.
#[derive(Debug, Args)]
pub struct AuthorityArgs {
    /// Data directory: database, keys, configuration (created on first start).
    #[arg(long, env = "SLICENET_AUTHORITY_DIR")]
    pub data_dir: PathBuf,
    /// Listen address (overrides `listen` in authority.toml).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// `slicenet site ...`.
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Add a site.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// Site name (PlanetLab login base, e.g. ams).
        name: String,
        /// Region for placement (e.g. eu, na, asia).
        #[arg(long)]
        region: String,
        /// ISO country code (e.g. NL).
        #[arg(long)]
        country: String,
        /// Latitude in degrees north.
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in degrees east.
        #[arg(long, allow_negative_numbers = true)]
        lon: f64,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List sites.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show one site.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// Site name.
        name: String,
    },
    /// Remove an empty site.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// Site name.
        name: String,
    },
}

/// Node capacity flags.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// vCPUs offered to slivers.
    #[arg(long)]
    pub vcpus: u32,
    /// Memory offered, MiB (or with a unit: 4G).
    #[arg(long, value_parser = parse::parse_mib)]
    pub memory: u64,
    /// Disk offered, GiB.
    #[arg(long, default_value_t = 20)]
    pub disk: u64,
    /// Bandwidth offered, Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub bandwidth: u64,
}

/// `slicenet node ...` (registry administration; the node daemon registers itself).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a node to the registry with its identity public key.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// Node name (e.g. ams-n1).
        name: String,
        /// Site it stands at.
        #[arg(long)]
        site: String,
        /// The node's ed25519 public key: base64, or a .pub file.
        #[arg(long)]
        node_key: String,
        #[command(flatten)]
        capacity: CapacityArgs,
    },
    /// List nodes.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show one node.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// Node name.
        name: String,
    },
    /// Take a node out of placement (its slivers stay).
    Disable {
        #[command(flatten)]
        conn: ConnArgs,
        /// Node name.
        name: String,
    },
    /// Put a node back into placement.
    Enable {
        #[command(flatten)]
        conn: ConnArgs,
        /// Node name.
        name: String,
    },
    /// Remove a node without slivers.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// Node name.
        name: String,
    },
}

/// `slicenet user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// User name.
        name: String,
        /// Their ed25519 public key: base64, or a .pub file.
        #[arg(long)]
        public_key: String,
        /// Authority-wide administrator.
        #[arg(long)]
        admin: bool,
        /// PI of this site (repeatable): may create slices named SITE_*.
        #[arg(long)]
        pi: Vec<String>,
        /// User at this site (repeatable).
        #[arg(long)]
        site: Vec<String>,
    },
    /// List users.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show one user.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// User name.
        name: String,
    },
    /// Remove a user who owns no slices.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// User name.
        name: String,
    },
    /// Who the authority thinks your key is.
    Whoami {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Placement flags shared by `slice create` and `sliver add`.
#[derive(Debug, Clone, Args)]
pub struct PlacementArgs {
    /// Slivers to place, repeatable: COUNT[:FILTER[+FILTER...]] with FILTER one of
    /// site=a,b  region=eu  country=NL  node=n1  near=LAT/LON/KM
    /// (e.g. --place 2:site=ams --place 1:region=asia --place 1:near=52.37/4.9/500).
    #[arg(long = "place", value_parser = parse::parse_placement_group)]
    pub groups: Vec<PlacementGroup>,
    /// vCPUs per sliver.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory per sliver, MiB (or 1G).
    #[arg(long, value_parser = parse::parse_mib, default_value = "256")]
    pub memory: u64,
    /// Disk per sliver, GiB.
    #[arg(long, default_value_t = 1)]
    pub disk: u64,
    /// Bandwidth per sliver, Mbit/s.
    #[arg(long, default_value_t = 10)]
    pub bandwidth: u64,
    /// Keep slivers apart: none, node or site.
    #[arg(long, default_value = "none", value_parser = parse::parse_anti_affinity)]
    pub anti_affinity: AntiAffinity,
    /// Appliance to boot.
    #[arg(long, default_value = "default")]
    pub appliance: String,
    /// Appliance content hash (sha256:<hex>).
    #[arg(long, default_value = "")]
    pub appliance_hash: String,
    /// Only show the placement that would be made (or why none can be).
    #[arg(long)]
    pub dry_run: bool,
}

impl PlacementArgs {
    fn request(&self) -> PlacementRequest {
        PlacementRequest {
            groups: self.groups.clone(),
            resources: Some(Resources {
                vcpus: self.vcpus,
                memory_mib: self.memory,
                disk_gib: self.disk,
                bandwidth_mbps: self.bandwidth,
            }),
            anti_affinity: self.anti_affinity,
            appliance: Some(Appliance {
                name: self.appliance.clone(),
                hash: self.appliance_hash.clone(),
            }),
        }
    }
}

/// `slicenet slice ...`.
#[derive(Debug, Subcommand)]
pub enum SliceCommand {
    /// Create a slice, optionally with slivers (all or nothing).
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name: SITE_NAME (e.g. ams_probes).
        name: String,
        /// What the slice is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Lease (e.g. 7d, 12h, 3600); the authority's default when absent.
        #[arg(long, value_parser = parse::parse_duration)]
        lease: Option<Duration>,
        /// Another user who may work in the slice (repeatable).
        #[arg(long)]
        member: Vec<String>,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Extend (or shorten) the lease to now + LEASE; prints what was granted.
    Renew {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        name: String,
        /// New lease from now (e.g. 14d).
        #[arg(long, value_parser = parse::parse_duration)]
        lease: Duration,
    },
    /// Delete a slice and everything in it.
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        name: String,
    },
    /// Show a slice with its slivers.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        name: String,
    },
    /// List slices.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Add or remove members.
    Member {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        name: String,
        /// Users to add.
        #[arg(long)]
        add: Vec<String>,
        /// Users to remove.
        #[arg(long)]
        remove: Vec<String>,
    },
}

/// `slicenet sliver ...`.
#[derive(Debug, Subcommand)]
pub enum SliverCommand {
    /// Add slivers to a live slice (all or nothing).
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        slice: String,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Remove a sliver.
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// Slice name.
        slice: String,
        /// Sliver id (see `slicenet slice show`).
        sliver: u64,
    },
}

/// `slicenet enclave ...`.
#[derive(Debug, Subcommand)]
pub enum EnclaveCommand {
    /// Create an enclave owned by a slice.
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
        /// Member sliver (repeatable).
        #[arg(long)]
        sliver: Vec<u64>,
        /// Guest subnet (default: the next free /24 of the pool).
        #[arg(long)]
        subnet: Option<String>,
    },
    /// Add a sliver (or with --gateway, an external gateway host).
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
        /// Sliver to add.
        #[arg(long, conflicts_with = "gateway", required_unless_present = "gateway")]
        sliver: Option<u64>,
        /// Gateway name to add.
        #[arg(long, requires = "wg_public_key")]
        gateway: Option<String>,
        /// The gateway's WireGuard public key (as `wg pubkey` prints it).
        #[arg(long)]
        wg_public_key: Option<String>,
        /// The gateway's UDP endpoint, if fixed.
        #[arg(long)]
        endpoint: Option<SocketAddr>,
    },
    /// Remove a sliver (or with --gateway, a gateway).
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
        /// Sliver to remove.
        #[arg(long, conflicts_with = "gateway", required_unless_present = "gateway")]
        sliver: Option<u64>,
        /// Gateway to remove.
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Export what a gateway host needs (JSON).
    Export {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
        /// Fill in this gateway's own addresses.
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Show an enclave.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
    },
    /// Delete an enclave.
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        /// Owning slice.
        slice: String,
        /// Enclave name.
        name: String,
    },
}

/// Runs a command (creates its own tokio runtime).
pub fn run(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd))
}

/// Runs a command inside an existing runtime.
pub async fn run_async(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Keygen(a) => keygen(&a),
        Command::Authority(a) => authority(a).await,
        Command::Site(c) => site(c).await,
        Command::User(c) => user(c).await,
        Command::Slice(c) => slice(c).await,
        Command::Sliver(c) => sliver(c).await,
        Command::Enclave(c) => enclave(c).await,
        Command::Audit { conn, limit } => {
            let entries = conn.client()?.audit(limit).await?;
            print(&conn, &entries, || {
                table(
                    &["id", "at", "actor", "action", "target"],
                    &entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.id.to_string(),
                                utc(e.at),
                                e.actor.clone(),
                                e.action.clone(),
                                e.target.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
        }
    }
}

fn print<T: serde::Serialize>(
    conn: &ConnArgs,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn public_key_arg(text: &str) -> anyhow::Result<PublicKey> {
    if let Ok(k) = text.parse::<PublicKey>() {
        return Ok(k);
    }
    let path = Path::new(text);
    if path.exists() {
        return Ok(keys::read_public_key(path)?);
    }
    bail!("{text:?} is neither a base64 public key nor a readable .pub file")
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let pub_path = PathBuf::from(format!("{}.pub", a.file.display()));
    keys::write_secret_key(&a.file, &key).with_context(|| {
        format!(
            "{} may already exist; choose another file name",
            a.file.display()
        )
    })?;
    keys::write_public_key(&pub_path, &public)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "secret_key_file": a.file, "public_key_file": pub_path, "public_key": public })
        );
    } else {
        println!("secret key: {} (keep it private)", a.file.display());
        println!("public key: {public} (also in {})", pub_path.display());
    }
    Ok(())
}

async fn authority(a: AuthorityArgs) -> anyhow::Result<()> {
    let authority = Authority::open(&a.data_dir, None).await?;
    let listen = a.listen.unwrap_or(authority.config().listen);
    let running = authority.serve(listen).await?;
    let url = running.url();
    eprintln!("slicenet authority {} on {url}", env!("CARGO_PKG_VERSION"));
    eprintln!("  data directory: {}", a.data_dir.display());
    eprintln!(
        "  ticket-signing public key (nodes pin it): {}",
        running.public_key
    );
    if let Some(b) = &running.bootstrap {
        eprintln!();
        eprintln!(
            "First start: created administrator {:?} with key {}",
            b.admin_name,
            b.admin_key_path.display()
        );
        eprintln!("Use it from this machine:");
        eprintln!("  export SLICENET_AUTHORITY={url}");
        eprintln!("  export SLICENET_KEY={}", b.admin_key_path.display());
        eprintln!("  slicenet site add ams --region eu --country NL --lat 52.37 --lon 4.90");
        eprintln!("  slicenet keygen alice.key && slicenet user add alice --public-key alice.key.pub --pi ams");
        eprintln!(
            "Keep {} private: it can do anything.",
            b.admin_key_path.display()
        );
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    shutdown.await;
    eprintln!("slicenet authority: shutting down");
    running.shutdown().await;
    Ok(())
}

async fn site(c: SiteCommand) -> anyhow::Result<()> {
    let site_rows = |sites: &[Site]| {
        table(
            &[
                "name",
                "region",
                "country",
                "lat",
                "lon",
                "nodes",
                "description",
            ],
            &sites
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.region.clone(),
                        s.country.clone(),
                        format!("{:.2}", s.latitude),
                        format!("{:.2}", s.longitude),
                        s.nodes.to_string(),
                        s.description.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    };
    match c {
        SiteCommand::Add {
            conn,
            name,
            region,
            country,
            lat,
            lon,
            description,
        } => {
            let s = conn
                .client()?
                .create_site(&NewSite {
                    name,
                    region,
                    country,
                    latitude: lat,
                    longitude: lon,
                    description,
                })
                .await?;
            print(&conn, &s, || format!("site {} added", s.name))
        }
        SiteCommand::List { conn } => {
            let sites = conn.client()?.sites().await?;
            print(&conn, &sites, || site_rows(&sites))
        }
        SiteCommand::Show { conn, name } => {
            let s = conn.client()?.site(&name).await?;
            print(&conn, &s, || site_rows(std::slice::from_ref(&s)))
        }
        SiteCommand::Remove { conn, name } => {
            let d = conn.client()?.remove_site(&name).await?;
            print(&conn, &d, || d.message.clone())
        }
    }
}

fn node_rows(nodes: &[Node]) -> String {
    table(
        &[
            "name",
            "site",
            "region",
            "state",
            "capacity",
            "reported",
            "allocated",
            "slivers",
            "tunnel",
            "endpoint",
        ],
        &nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.site.clone(),
                    n.region.clone(),
                    n.state.to_string(),
                    resources(&n.capacity),
                    n.reported_capacity
                        .as_ref()
                        .map(reported)
                        .unwrap_or_else(|| "-".into()),
                    // "!" marks a node holding more than it reported having.
                    if n.overcommitted().is_empty() {
                        resources(&n.allocated)
                    } else {
                        format!("{}!", resources(&n.allocated))
                    },
                    n.slivers.to_string(),
                    n.tunnel_address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.endpoint
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn node_text(n: &Node) -> String {
    let mut out = format!(
        "{}\nidentity key: {}\nWireGuard key: {}\nconsole: {}\nlast seen: {}\n",
        node_rows(std::slice::from_ref(n)),
        n.public_key,
        n.wg_public_key
            .map(|k| k.to_string())
            .unwrap_or_else(|| "- (not registered yet)".into()),
        n.console
            .map(|a| a.to_string())
            .unwrap_or_else(|| "- (none registered)".into()),
        n.last_seen.map(utc).unwrap_or_else(|| "never".into())
    );
    out.push_str(&format!(
        "capacity: configured {}; reported {}; placement uses {}",
        resources(&n.capacity),
        match (&n.reported_capacity, n.capacity_reported_at) {
            (Some(r), Some(at)) => format!("{} at {}", reported(r), utc(at)),
            (Some(r), None) => reported(r),
            _ => "nothing (the configured figure stands)".into(),
        },
        resources(&n.usable_capacity()),
    ));
    let over = n.overcommitted();
    if !over.is_empty() {
        out.push_str(&format!(
            "\nwarning: slivers hold {} but the node reported less {} than that: nothing new is placed here; its slivers keep running (remove some, or check the host)",
            resources(&n.allocated),
            over.join(", ")
        ));
    }
    out
}

/// Runs a `node` registry command (creates its own tokio runtime). It is
/// separate from [`Command`] because `slicenet node` also holds the node
/// daemon's own commands.
pub fn run_node(cmd: NodeCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(node(cmd))
}

async fn node(c: NodeCommand) -> anyhow::Result<()> {
    match c {
        NodeCommand::Add {
            conn,
            name,
            site,
            node_key,
            capacity,
        } => {
            let n = conn
                .client()?
                .create_node(&NewNode {
                    name,
                    site,
                    public_key: public_key_arg(&node_key)?,
                    capacity: Resources {
                        vcpus: capacity.vcpus,
                        memory_mib: capacity.memory,
                        disk_gib: capacity.disk,
                        bandwidth_mbps: capacity.bandwidth,
                    },
                })
                .await?;
            print(&conn, &n, || {
                format!(
                    "node {} added at site {}; it registers itself when its daemon starts",
                    n.name, n.site
                )
            })
        }
        NodeCommand::List { conn, site } => {
            let nodes = conn.client()?.nodes(site.as_deref()).await?;
            print(&conn, &nodes, || node_rows(&nodes))
        }
        NodeCommand::Show { conn, name } => {
            let n = conn.client()?.node(&name).await?;
            print(&conn, &n, || node_text(&n))
        }
        NodeCommand::Disable { conn, name } => {
            let n = conn.client()?.set_node_enabled(&name, false).await?;
            print(&conn, &n, || {
                format!(
                    "node {} disabled: placement avoids it; its slivers stay",
                    n.name
                )
            })
        }
        NodeCommand::Enable { conn, name } => {
            let n = conn.client()?.set_node_enabled(&name, true).await?;
            print(&conn, &n, || {
                format!("node {} enabled ({})", n.name, n.state)
            })
        }
        NodeCommand::Remove { conn, name } => {
            let d = conn.client()?.remove_node(&name).await?;
            print(&conn, &d, || d.message.clone())
        }
    }
}

fn user_rows(users: &[Principal]) -> String {
    table(
        &["name", "admin", "sites", "public key"],
        &users
            .iter()
            .map(|u| {
                vec![
                    u.name.clone(),
                    if u.admin { "yes".into() } else { "-".into() },
                    u.sites
                        .iter()
                        .map(|s| format!("{}({})", s.site, s.role))
                        .collect::<Vec<_>>()
                        .join(" "),
                    u.public_key.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

async fn user(c: UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Add {
            conn,
            name,
            public_key,
            admin,
            pi,
            site,
        } => {
            let sites = pi
                .into_iter()
                .map(|s| SiteRole {
                    site: s,
                    role: Role::Pi,
                })
                .chain(site.into_iter().map(|s| SiteRole {
                    site: s,
                    role: Role::User,
                }))
                .collect();
            let u = conn
                .client()?
                .create_principal(&NewPrincipal {
                    name,
                    public_key: public_key_arg(&public_key)?,
                    admin,
                    sites,
                })
                .await?;
            print(&conn, &u, || format!("user {} added", u.name))
        }
        UserCommand::List { conn } => {
            let users = conn.client()?.principals().await?;
            print(&conn, &users, || user_rows(&users))
        }
        UserCommand::Show { conn, name } => {
            let u = conn.client()?.principal(&name).await?;
            print(&conn, &u, || user_rows(std::slice::from_ref(&u)))
        }
        UserCommand::Remove { conn, name } => {
            let d = conn.client()?.remove_principal(&name).await?;
            print(&conn, &d, || d.message.clone())
        }
        UserCommand::Whoami { conn } => {
            let w = conn.client()?.whoami().await?;
            print(&conn, &w, || match &w {
                WhoAmI::Principal(p) => user_rows(std::slice::from_ref(p)),
                WhoAmI::Node { name } => format!("node {name}"),
            })
        }
    }
}

fn placement_rows(p: &[PlannedSliver]) -> String {
    table(
        &["group", "node", "site", "region", "country", "resources"],
        &p.iter()
            .map(|s| {
                vec![
                    s.group.to_string(),
                    s.node.clone(),
                    s.site.clone(),
                    s.region.clone(),
                    s.country.clone(),
                    resources(&s.resources),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn slice_text(s: &Slice) -> String {
    let now = crate::auth::now_secs();
    let mut out = format!(
        "slice {} (site {}, owner {})\n  {}\n  lease ends {}\n  members: {}\n  enclaves: {}\n",
        s.name,
        s.site,
        s.owner,
        if s.description.is_empty() {
            "-"
        } else {
            &s.description
        },
        expiry(s.lease_expires_at, now),
        s.members.join(", "),
        if s.enclaves.is_empty() {
            "-".to_string()
        } else {
            s.enclaves.join(", ")
        },
    );
    out.push_str(&table(
        &[
            "sliver",
            "node",
            "site",
            "resources",
            "appliance",
            "state",
            "epoch",
        ],
        &s.slivers
            .iter()
            .map(|v| {
                vec![
                    v.id.to_string(),
                    v.node.clone(),
                    v.site.clone(),
                    resources(&v.resources),
                    v.appliance.name.clone(),
                    match &v.state_message {
                        Some(m) => format!("{} ({m})", v.state),
                        None => v.state.to_string(),
                    },
                    v.ticket_epoch.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    out
}

fn placement_reply_text(r: &PlacementReply, what: &str) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&format!(
            "dry run: {what} would place {} slivers (nothing changed)\n",
            r.placement.len()
        ));
        out.push_str(&placement_rows(&r.placement));
    } else if let Some(s) = &r.slice {
        out.push_str(&slice_text(s));
    }
    if let Some(note) = &r.note {
        out.push_str(&format!("\nnote: {note}"));
    }
    out
}

async fn slice(c: SliceCommand) -> anyhow::Result<()> {
    match c {
        SliceCommand::Create {
            conn,
            name,
            description,
            lease,
            member,
            placement,
        } => {
            let req = NewSlice {
                name,
                description,
                lease_secs: lease.map(|d| d.as_secs()),
                members: member,
                placement: if placement.groups.is_empty() {
                    None
                } else {
                    Some(placement.request())
                },
                dry_run: placement.dry_run,
            };
            let r = conn.client()?.create_slice(&req).await?;
            print(&conn, &r, || placement_reply_text(&r, "slice create"))
        }
        SliceCommand::Renew { conn, name, lease } => {
            let r = conn.client()?.renew_slice(&name, lease).await?;
            print(&conn, &r, || {
                format!(
                    "{}\nlease now ends {}",
                    r.message,
                    expiry(r.granted_expires_at, crate::auth::now_secs())
                )
            })
        }
        SliceCommand::Delete { conn, name } => {
            let d = conn.client()?.delete_slice(&name).await?;
            print(&conn, &d, || d.message.clone())
        }
        SliceCommand::Show { conn, name } => {
            let s = conn.client()?.slice(&name).await?;
            print(&conn, &s, || slice_text(&s))
        }
        SliceCommand::List { conn } => {
            let list = conn.client()?.slices().await?;
            let now = crate::auth::now_secs();
            print(&conn, &list, || {
                table(
                    &["name", "owner", "slivers", "lease ends", "description"],
                    &list
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.owner.clone(),
                                s.slivers.to_string(),
                                expiry(s.lease_expires_at, now),
                                s.description.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
        }
        SliceCommand::Member {
            conn,
            name,
            add,
            remove,
        } => {
            let s = conn
                .client()?
                .change_members(&name, &MemberChange { add, remove })
                .await?;
            print(&conn, &s, || {
                format!("slice {} members: {}", s.name, s.members.join(", "))
            })
        }
    }
}

async fn sliver(c: SliverCommand) -> anyhow::Result<()> {
    match c {
        SliverCommand::Add {
            conn,
            slice,
            placement,
        } => {
            if placement.groups.is_empty() {
                bail!(
                    "say where with at least one --place COUNT[:FILTER], e.g. --place 1:region=eu"
                );
            }
            let r = conn
                .client()?
                .add_slivers(
                    &slice,
                    &AddSlivers {
                        placement: placement.request(),
                        dry_run: placement.dry_run,
                    },
                )
                .await?;
            print(&conn, &r, || placement_reply_text(&r, "sliver add"))
        }
        SliverCommand::Remove {
            conn,
            slice,
            sliver,
        } => {
            let d = conn.client()?.remove_sliver(&slice, sliver).await?;
            print(&conn, &d, || d.message.clone())
        }
    }
}

fn enclave_text(e: &Enclave) -> String {
    let mut out = format!(
        "enclave {} of slice {}: VNI {}, subnet {}\n",
        e.name, e.slice, e.vni, e.subnet
    );
    let mut rows: Vec<Vec<String>> = e
        .members
        .iter()
        .map(|m| {
            vec![
                format!("sliver {}", m.sliver_id),
                m.slice.clone(),
                m.node.clone(),
                m.address.to_string(),
                m.mac.to_string(),
            ]
        })
        .collect();
    rows.extend(e.gateways.iter().map(|g| {
        vec![
            format!("gateway {}", g.name),
            "-".into(),
            g.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            g.address.to_string(),
            g.mac.to_string(),
        ]
    }));
    out.push_str(&table(
        &["member", "slice", "node/endpoint", "address", "mac"],
        &rows,
    ));
    out
}

async fn enclave(c: EnclaveCommand) -> anyhow::Result<()> {
    match c {
        EnclaveCommand::Create {
            conn,
            slice,
            name,
            sliver,
            subnet,
        } => {
            let e = conn
                .client()?
                .create_enclave(
                    &slice,
                    &NewEnclave {
                        name,
                        slivers: sliver,
                        subnet,
                    },
                )
                .await?;
            print(&conn, &e, || enclave_text(&e))
        }
        EnclaveCommand::Add {
            conn,
            slice,
            name,
            sliver,
            gateway,
            wg_public_key,
            endpoint,
        } => {
            let client = conn.client()?;
            let e = match (sliver, gateway) {
                (Some(s), _) => client.add_enclave_member(&slice, &name, s).await?,
                (None, Some(g)) => {
                    let key = wg_public_key.context("--gateway needs --wg-public-key")?;
                    client
                        .add_gateway(
                            &slice,
                            &name,
                            &NewGateway {
                                name: g,
                                wg_public_key: public_key_arg(&key)?,
                                endpoint,
                            },
                        )
                        .await?
                }
                (None, None) => {
                    bail!("say what to add: --sliver ID or --gateway NAME --wg-public-key KEY")
                }
            };
            print(&conn, &e, || enclave_text(&e))
        }
        EnclaveCommand::Remove {
            conn,
            slice,
            name,
            sliver,
            gateway,
        } => {
            let client = conn.client()?;
            let e = match (sliver, gateway) {
                (Some(s), _) => client.remove_enclave_member(&slice, &name, s).await?,
                (None, Some(g)) => client.remove_gateway(&slice, &name, &g).await?,
                (None, None) => bail!("say what to remove: --sliver ID or --gateway NAME"),
            };
            print(&conn, &e, || enclave_text(&e))
        }
        EnclaveCommand::Export {
            conn,
            slice,
            name,
            gateway,
        } => {
            let x = conn
                .client()?
                .export_enclave(&slice, &name, gateway.as_deref())
                .await?;
            // The export is for machines: JSON either way.
            println!("{}", serde_json::to_string_pretty(&x)?);
            Ok(())
        }
        EnclaveCommand::Show { conn, slice, name } => {
            let e = conn.client()?.enclave(&slice, &name).await?;
            print(&conn, &e, || enclave_text(&e))
        }
        EnclaveCommand::Delete { conn, slice, name } => {
            let d = conn.client()?.delete_enclave(&slice, &name).await?;
            print(&conn, &d, || d.message.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ReportedCapacity;

    fn node(reported: Option<ReportedCapacity>, allocated_vcpus: u32) -> Node {
        Node {
            name: "ams-n1".into(),
            site: "ams".into(),
            region: "eu".into(),
            country: "NL".into(),
            public_key: PublicKey([1; 32]),
            capacity: Resources {
                vcpus: 8,
                memory_mib: 8192,
                disk_gib: 100,
                bandwidth_mbps: 1000,
            },
            reported_capacity: reported,
            capacity_reported_at: reported.map(|_| 0),
            allocated: Resources {
                vcpus: allocated_vcpus,
                memory_mib: 512,
                disk_gib: 2,
                bandwidth_mbps: 20,
            },
            slivers: 2,
            state: NodeState::Up,
            wg_public_key: None,
            tunnel_address: None,
            endpoint: None,
            last_seen: None,
            console: Some("198.18.0.1:7000".parse().unwrap()),
        }
    }

    #[test]
    fn node_show_gives_both_capacities_and_flags_an_overcommitted_node() {
        let report = ReportedCapacity {
            vcpus: 1,
            memory_mib: 4096,
            disk_gib: None,
            bandwidth_mbps: None,
        };
        let text = node_text(&node(Some(report), 2));
        assert!(text.contains("configured 8c 8192M 100G 1000Mb"), "{text}");
        assert!(
            text.contains("reported 1c 4096M at 1970-01-01 00:00:00 UTC"),
            "{text}"
        );
        assert!(
            text.contains("placement uses 1c 4096M 100G 1000Mb"),
            "{text}"
        );
        assert!(text.contains("console: 198.18.0.1:7000"), "{text}");
        assert!(
            text.contains("warning: slivers hold 2c 512M 2G 20Mb but the node reported less vcpus"),
            "{text}"
        );
        assert!(
            text.contains("2c 512M 2G 20Mb!"),
            "the list marks it: {text}"
        );

        let fine = node_text(&node(None, 2));
        assert!(fine.contains("reported nothing"), "{fine}");
        assert!(
            !fine.contains("warning") && !fine.contains("20Mb!"),
            "{fine}"
        );
    }
}
