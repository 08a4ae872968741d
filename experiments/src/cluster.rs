//! A whole slicenet deployment on one machine: an authority and one node
//! daemon per site, each site a network namespace of a testbed — what the
//! demo, the scenarios and the end-to-end tests build on.
//!
//! Every daemon is the real `slicenet` binary in its own process. The
//! authority runs in site 1. Client calls to the authority run on a tokio
//! runtime whose threads live inside site 1's namespace (the only place
//! the underlay addresses are reachable from); node daemons are reached
//! through their control sockets, which are plain files.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use slicenet_authority::api::{
    NewEnclave, NewNode, NewPrincipal, NewSite, NewSlice, PlacementGroup, PlacementRequest, Role,
    SiteRole,
};
use slicenet_authority::client::Client;
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::model::{Appliance, Resources};
use slicenet_node::daemon::control;
use slicenet_node::daemon::slivers::{SliverPhase, SliverStatus};
use slicenet_node::daemon::NodeStatusReport;
use slicenet_testbed::{LinkShape, Testbed};

use crate::catalog::{self, SiteInfo};

static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks every waiting [`Cluster`] operation to give up (e.g. on Ctrl-C);
/// they return an "interrupted" error and the cluster tears down on drop.
pub fn request_cancel() {
    CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`request_cancel`] was called.
pub fn cancelled() -> bool {
    CANCELLED.load(std::sync::atomic::Ordering::SeqCst)
}

fn check_cancelled() -> anyhow::Result<()> {
    if cancelled() {
        bail!("interrupted");
    }
    Ok(())
}

/// Port of the authority's HTTP API in site 1.
pub const AUTHORITY_PORT: u16 = 8420;
/// Port of every node's membership endpoint.
pub const MEMBERSHIP_PORT: u16 = 7946;
/// Port of every node's WireGuard socket.
pub const OVERLAY_PORT: u16 = 51820;

/// What to build.
pub struct ClusterOptions {
    pub sites: Vec<SiteInfo>,
    /// WAN delay scale (see [`catalog::one_way_delay_ms`]); 0 = plain veth links.
    pub delay_scale: f64,
    /// Make every link shapeable at runtime (fault injection).
    pub shapeable: bool,
    /// The `slicenet` executable.
    pub slicenet_bin: PathBuf,
    /// Where daemons keep their data and logs.
    pub work_dir: PathBuf,
    /// Directories the nodes search for appliances.
    pub appliance_dirs: Vec<PathBuf>,
    /// Force a sliver runtime (`qemu` or `microvm`); `None` lets nodes pick.
    pub runtime: Option<String>,
}

/// One node daemon of the cluster.
pub struct ClusterNode {
    pub name: String,
    /// 1-based site index.
    pub site: usize,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// The node daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

/// One sliver of a slice created through [`Cluster::create_slice`].
#[derive(Debug, Clone)]
pub struct PlacedSliver {
    pub id: u64,
    pub node: String,
    pub site: String,
    /// Its address on the slice's enclave.
    pub address: std::net::Ipv4Addr,
}

/// A running deployment; dropping it stops everything and removes the sites.
pub struct Cluster {
    pub sites: Vec<SiteInfo>,
    pub nodes: Vec<ClusterNode>,
    pub authority_url: String,
    pub authority_dir: PathBuf,
    pub admin_key_path: PathBuf,
    slicenet_bin: PathBuf,
    work_dir: PathBuf,
    authority: Option<Child>,
    admin: Client,
    control: tokio::runtime::Runtime,
    // Declared last: dropped after the processes above are stopped.
    pub bed: Testbed,
}

fn spawn_logged(mut cmd: std::process::Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Builds the testbed for `sites`: links shaped by distance (scaled), or
/// plain veths when `delay_scale` is 0.
pub fn build_testbed(
    sites: &[SiteInfo],
    delay_scale: f64,
    shapeable: bool,
) -> anyhow::Result<Testbed> {
    let mut builder = Testbed::builder(sites.len()).labels(sites.iter().map(|s| s.name));
    if shapeable || delay_scale > 0.0 {
        builder = builder.shapeable();
    }
    if delay_scale > 0.0 {
        for (i, a) in sites.iter().enumerate() {
            for (j, b) in sites.iter().enumerate().skip(i + 1) {
                let delay = catalog::one_way_delay_ms(a, b, delay_scale);
                builder = builder.link_shape(i + 1, j + 1, LinkShape::delay(delay));
            }
        }
    }
    builder.build().context("building the site namespaces")
}

impl Cluster {
    /// Builds the sites, starts the authority and one node per site,
    /// registers sites and nodes, and waits until every node is up and
    /// sees every other through membership. `progress` gets one line per step.
    pub fn start(
        options: ClusterOptions,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&options.work_dir)
            .with_context(|| format!("creating {}", options.work_dir.display()))?;
        progress(&format!(
            "building {} sites as network namespaces",
            options.sites.len()
        ));
        let bed = build_testbed(&options.sites, options.delay_scale, options.shapeable)?;

        // The control runtime's threads are created inside site 1.
        let control = bed
            .site(1)
            .ns()
            .spawn_thread(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("control runtime thread panicked"))??
            .context("starting the control runtime")?;

        let authority_dir = options.work_dir.join("authority");
        let authority_addr = format!("{}:{AUTHORITY_PORT}", bed.site(1).addr());
        progress(&format!(
            "starting the slice authority at http://{authority_addr}"
        ));
        let authority_url = format!("http://{authority_addr}");
        let admin_key_path = authority_dir.join("admin.key");

        let mut cluster = Cluster {
            sites: options.sites.clone(),
            nodes: Vec::new(),
            authority_url: authority_url.clone(),
            authority_dir: authority_dir.clone(),
            admin_key_path: admin_key_path.clone(),
            slicenet_bin: options.slicenet_bin.clone(),
            authority: None,
            work_dir: options.work_dir.clone(),
            // Replaced as soon as the admin key exists.
            admin: Client::new(&authority_url, keys::generate()),
            control,
            bed,
        };
        cluster.start_authority()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(key) = keys::read_secret_key(&admin_key_path) {
                let admin = Client::new(&authority_url, key);
                let probe = admin.clone();
                if cluster.run(async move { probe.whoami().await }).is_ok() {
                    cluster.admin = admin;
                    break;
                }
            }
            check_cancelled()?;
            if Instant::now() > deadline {
                bail!(
                    "the authority did not come up within 30 s; see {}",
                    options.work_dir.join("authority.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let authority_pub = keys::read_public_key(&authority_dir.join("authority.pub"))?;

        progress("registering sites and nodes");
        let bootstrap = format!("{}:{MEMBERSHIP_PORT}", cluster.bed.site(1).addr());
        for (i, info) in options.sites.iter().enumerate() {
            let site = cluster.bed.site(i + 1).clone();
            let name = format!("{}-n1", info.name);
            let data_dir = options.work_dir.join(&name);
            std::fs::create_dir_all(&data_dir)?;
            let node_key = keys::generate();
            let key_path = data_dir.join("node.key");
            if !key_path.exists() {
                keys::write_secret_key(&key_path, &node_key)?;
            }
            let node_key = keys::read_secret_key(&key_path)?;
            let admin = cluster.admin.clone();
            let new_site = NewSite {
                name: info.name.to_string(),
                region: info.region.to_string(),
                country: info.country.to_string(),
                latitude: info.latitude,
                longitude: info.longitude,
                description: info.city.to_string(),
            };
            let new_node = NewNode {
                name: name.clone(),
                site: info.name.to_string(),
                public_key: PublicKey::of(&node_key),
                capacity: Resources {
                    vcpus: 4,
                    memory_mib: 4096,
                    disk_gib: 20,
                    bandwidth_mbps: 1000,
                },
            };
            cluster.run(async move {
                admin.create_site(&new_site).await?;
                admin.create_node(&new_node).await
            })?;
            let config_path = data_dir.join("node.toml");
            let bootstrap_line = if i == 0 {
                String::new()
            } else {
                format!("bootstrap = [\"{bootstrap}\"]")
            };
            let runtime = options
                .runtime
                .as_ref()
                .map(|r| format!("[runtime]\nkind = \"{r}\"\n"))
                .unwrap_or_default();
            let dirs: Vec<String> = options
                .appliance_dirs
                .iter()
                .map(|d| format!("{:?}", d.display().to_string()))
                .collect();
            let config = format!(
                "name = \"{name}\"\ndata_dir = {data:?}\nappliance_dirs = [{dirs}]\n\n\
                 [site]\nname = \"{site_name}\"\nregion = \"{region}\"\nlatitude = {lat}\nlongitude = {lon}\n\n\
                 [authority]\nurl = \"{authority_url}\"\npublic_key = \"{authority_pub}\"\n\n\
                 [membership]\nlisten = \"{addr}:{MEMBERSHIP_PORT}\"\n{bootstrap_line}\n\n\
                 [overlay]\nlisten = \"{addr}:{OVERLAY_PORT}\"\n\n\
                 # All sites share this machine: each node offers a share of it.\n\
                 [capacity]\nvcpus = 4\nmemory_mib = 4096\n\n{runtime}",
                data = data_dir.display().to_string(),
                dirs = dirs.join(", "),
                site_name = info.name,
                region = info.region,
                lat = info.latitude,
                lon = info.longitude,
                addr = site.addr(),
            );
            std::fs::write(&config_path, config)?;
            cluster.nodes.push(ClusterNode {
                name,
                site: i + 1,
                log_path: data_dir.join("node.log"),
                data_dir,
                config_path,
                child: None,
            });
        }
        progress("starting one node daemon per site");
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
        }
        cluster.wait_for_members(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Starts the authority process in site 1 (again, after
    /// [`Cluster::kill_authority`]); its data directory persists.
    pub fn start_authority(&mut self) -> anyhow::Result<()> {
        let addr = self.authority_url.trim_start_matches("http://").to_string();
        let mut cmd = self
            .bed
            .site(1)
            .command(&self.slicenet_bin.display().to_string());
        cmd.args(["authority", "--data-dir"])
            .arg(&self.authority_dir)
            .args(["--listen", &addr]);
        let log = self
            .work_dir
            .join(if self.authority_dir.join("authority.db").exists() {
                "authority.restarted.log"
            } else {
                "authority.log"
            });
        self.authority = Some(spawn_logged(cmd, &log)?);
        Ok(())
    }

    /// Kills the authority with SIGKILL (an outage).
    pub fn kill_authority(&mut self) {
        if let Some(mut child) = self.authority.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the authority answers requests.
    pub fn wait_for_authority(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let admin = self.admin();
            if self.run(async move { admin.whoami().await }).is_ok() {
                return Ok(());
            }
            check_cancelled()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the authority did not answer within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a future on the control runtime (inside site 1) and waits for it.
    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.control.spawn(future);
        self.control
            .block_on(handle)
            .expect("control task panicked")
    }

    /// An authority client signing as the bootstrap administrator.
    pub fn admin(&self) -> Client {
        self.admin.clone()
    }

    /// Starts (or restarts) node daemon `i` (0-based).
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let mut cmd = self
            .bed
            .site(node.site)
            .command(&self.slicenet_bin.display().to_string());
        cmd.args(["node", "run", "--config"]).arg(&node.config_path);
        let log = node.log_path.clone();
        // Keep earlier runs' logs.
        let log = if node.child.is_some() || log.exists() {
            node.data_dir.join(format!(
                "node.{}.log",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ))
        } else {
            log
        };
        node.child = Some(spawn_logged(cmd, &log)?);
        node.log_path = log;
        Ok(())
    }

    /// Kills node daemon `i` with SIGKILL (a crash: no goodbye).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The status of node `i`, when its daemon answers.
    pub fn node_status(&self, i: usize) -> anyhow::Result<NodeStatusReport> {
        let path = self.nodes[i].control_socket();
        Ok(self.run(async move { control::query_status(&path).await })?)
    }

    /// Waits until every running node answers and sees every other node up.
    pub fn wait_for_members(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len();
        loop {
            let ready = (0..n).all(|i| {
                self.node_status(i)
                    .map(|s| s.members.iter().filter(|m| m.up).count() + 1 >= n)
                    .unwrap_or(false)
            });
            if ready {
                return Ok(());
            }
            check_cancelled()?;
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| n.log_path.display().to_string())
                    .collect();
                bail!(
                    "nodes did not all see each other within {timeout:?}; logs: {}",
                    logs.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates slice `name` (site-prefixed) with one sliver per site
    /// running `appliance`, and an enclave `lan` joining them all.
    pub fn create_slice(
        &self,
        name: &str,
        appliance: Appliance,
        description: &str,
    ) -> anyhow::Result<Vec<PlacedSliver>> {
        let groups = self
            .sites
            .iter()
            .map(|s| PlacementGroup {
                count: 1,
                sites: vec![s.name.to_string()],
                ..Default::default()
            })
            .collect();
        let request = NewSlice {
            name: name.to_string(),
            description: description.to_string(),
            lease_secs: None,
            members: vec![],
            placement: Some(PlacementRequest {
                groups,
                resources: Some(Resources {
                    vcpus: 1,
                    memory_mib: 256,
                    disk_gib: 1,
                    bandwidth_mbps: 100,
                }),
                appliance: Some(appliance),
                ..Default::default()
            }),
            dry_run: false,
        };
        let admin = self.admin();
        let slice_name = name.to_string();
        let enclave = self.run(async move {
            let reply = admin.create_slice(&request).await?;
            let slice = reply
                .slice
                .ok_or_else(|| anyhow::anyhow!("the authority created no slice"))?;
            let ids = slice.slivers.iter().map(|s| s.id).collect();
            let enclave = admin
                .create_enclave(
                    &slice_name,
                    &NewEnclave {
                        name: "lan".into(),
                        slivers: ids,
                        subnet: None,
                    },
                )
                .await?;
            anyhow::Ok((slice, enclave))
        })?;
        let (slice, enclave) = enclave;
        Ok(slice
            .slivers
            .iter()
            .map(|s| PlacedSliver {
                id: s.id,
                node: s.node.clone(),
                site: s.site.clone(),
                address: enclave
                    .members
                    .iter()
                    .find(|m| m.sliver_id == s.id)
                    .map(|m| m.address)
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            })
            .collect())
    }

    /// The index of the node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The status of a sliver as its node reports it.
    pub fn sliver_status(&self, sliver: &PlacedSliver) -> Option<SliverStatus> {
        let i = self.node_index(&sliver.node)?;
        self.node_status(i)
            .ok()?
            .slivers
            .into_iter()
            .find(|s| s.sliver_id == sliver.id)
    }

    /// Waits until every sliver's guest printed its ready marker; returns
    /// each one's boot time.
    pub fn wait_ready(
        &self,
        slivers: &[PlacedSliver],
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Vec<f64>> {
        let deadline = Instant::now() + timeout;
        let mut reported = vec![false; slivers.len()];
        loop {
            let mut boot = Vec::new();
            for (k, s) in slivers.iter().enumerate() {
                match self.sliver_status(s) {
                    Some(st) if st.phase == SliverPhase::Ready => {
                        if !reported[k] {
                            progress(&format!(
                                "sliver {} ({}) ready after {:.1} s",
                                s.id,
                                st.hostname,
                                st.boot_seconds.unwrap_or(0.0)
                            ));
                            reported[k] = true;
                        }
                        boot.push(st.boot_seconds.unwrap_or(0.0));
                    }
                    Some(st) if st.phase == SliverPhase::Failed => {
                        bail!(
                            "sliver {} on {} failed: {}",
                            s.id,
                            s.node,
                            st.message.unwrap_or_default()
                        );
                    }
                    _ => {}
                }
            }
            if boot.len() == slivers.len() {
                return Ok(boot);
            }
            check_cancelled()?;
            if Instant::now() > deadline {
                bail!("slivers not ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Creates principal `name`, a user at the first site, with a fresh
    /// key kept in the work directory; returns the key file (see
    /// [`Cluster::slicenet_as`]).
    pub fn add_user(&self, name: &str) -> anyhow::Result<PathBuf> {
        let key = keys::generate();
        let path = self.work_dir.join(format!("{name}.key"));
        keys::write_secret_key(&path, &key)?;
        let principal = NewPrincipal {
            name: name.to_string(),
            public_key: PublicKey::of(&key),
            admin: false,
            sites: vec![SiteRole {
                site: self.sites[0].name.to_string(),
                role: Role::User,
            }],
        };
        let admin = self.admin();
        self.run(async move { admin.create_principal(&principal).await })
            .with_context(|| format!("creating principal {name}"))?;
        Ok(path)
    }

    /// Runs `slicenet ARGS` in site `site` (1-based; where the underlay is
    /// reachable) as the principal whose secret key is the file `key`, the
    /// way a user would (`SLICENET_AUTHORITY`, `SLICENET_KEY`); returns its
    /// exit status and output.
    pub fn slicenet_as(
        &self,
        site: usize,
        key: &Path,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        self.bed
            .site(site)
            .command(&self.slicenet_bin.display().to_string())
            .args(args)
            .env("SLICENET_AUTHORITY", &self.authority_url)
            .env("SLICENET_KEY", key)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running slicenet {}", args.join(" ")))
    }

    /// Runs a shell command on a sliver's serial console and returns its output.
    pub fn guest_exec(
        &self,
        sliver: &PlacedSliver,
        command: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let i = self
            .node_index(&sliver.node)
            .ok_or_else(|| anyhow::anyhow!("no node {}", sliver.node))?;
        let path = self.nodes[i].control_socket();
        let (id, command) = (sliver.id, command.to_string());
        Ok(self.run(async move { control::console_exec(&path, id, &command, timeout).await })?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                stop_child(&mut child);
            }
        }
        if let Some(mut child) = self.authority.take() {
            stop_child(&mut child);
        }
    }
}

/// Builds (or finds in the cache) the default appliance and returns its
/// directory's parent (for node `appliance_dirs`) and its ticket reference.
pub fn default_appliance(progress: &mut dyn FnMut(&str)) -> anyhow::Result<(PathBuf, Appliance)> {
    let options = slicenet_vmm::appliance::build::BuildOptions::new("default");
    let out = slicenet_vmm::appliance::build::build_default(&options, progress)
        .context("building the default appliance")?;
    let hash = slicenet_node::daemon::appliances::appliance_hash(&out.dir)
        .with_context(|| format!("hashing {}", out.dir.display()))?;
    let parent = out
        .dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.dir.clone());
    Ok((
        parent,
        Appliance {
            name: "default".into(),
            hash,
        },
    ))
}
