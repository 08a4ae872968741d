//! Building a testbed: N site namespaces, a full mesh of links, routes
//! between site addresses, teardown.
//!
//! Unshaped links are veth pairs (kernel speed, for benchmarks). Shaped
//! links are carried by the userspace emulator in [`crate::emulator`],
//! because the kernels of this project's machines lack `sch_netem`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::command::{ip, CommandError};
use crate::emulator::EmulatedLink;
use crate::netns::{NetNs, NetNsError};

/// Errors from building or changing a testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Creating or configuring a namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A configuration command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The builder was asked for something impossible.
    #[error("invalid testbed request: {0}")]
    Invalid(String),
}

/// WAN-like shaping of one link, applied in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkShape {
    /// One-way delay in milliseconds (the RTT is twice this).
    pub delay_ms: f64,
    /// Delay jitter in milliseconds.
    pub jitter_ms: f64,
    /// Random loss in percent, per direction.
    pub loss_percent: f64,
    /// Rate limit in Mbit/s.
    pub rate_mbit: Option<u32>,
}

impl LinkShape {
    /// A link with only a one-way delay.
    pub fn delay(delay_ms: f64) -> Self {
        LinkShape {
            delay_ms,
            ..Default::default()
        }
    }

    fn is_plain(&self) -> bool {
        self.delay_ms == 0.0
            && self.jitter_ms == 0.0
            && self.loss_percent == 0.0
            && self.rate_mbit.is_none()
    }
}

/// One site of a testbed: a namespace with a stable underlay address.
#[derive(Debug, Clone)]
pub struct SiteHandle {
    index: usize,
    label: String,
    ns: NetNs,
    addr: Ipv4Addr,
}

impl SiteHandle {
    /// 1-based index of the site.
    pub fn index(&self) -> usize {
        self.index
    }
    /// Human label (e.g. `site1` or a name given to the builder).
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The site's namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }
    /// The site's underlay address, reachable from every other site.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// A command running `program` inside the site.
    pub fn command(&self, program: &str) -> std::process::Command {
        self.ns.command(program)
    }
    /// Runs an async closure to completion inside the site.
    pub fn block_on<F, Fut, T>(&self, make: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        self.ns.block_on(make)
    }
}

struct Link {
    a: usize,
    b: usize,
    /// Present when the link is emulated (shapeable); `None` for a veth.
    emulator: Option<EmulatedLink>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("emulated", &self.emulator.is_some())
            .finish()
    }
}

/// Configures a [`Testbed`] before it is built.
#[derive(Debug, Clone)]
pub struct TestbedBuilder {
    labels: Vec<String>,
    default_shape: LinkShape,
    shapes: Vec<((usize, usize), LinkShape)>,
    shapeable: bool,
}

impl TestbedBuilder {
    /// Shapes every link that has no explicit shape.
    pub fn default_shape(mut self, shape: LinkShape) -> Self {
        self.default_shape = shape;
        self
    }

    /// Makes every link shapeable at runtime (emulated), even links that
    /// start unshaped. Without this, only links given a shape are.
    pub fn shapeable(mut self) -> Self {
        self.shapeable = true;
        self
    }

    /// Shapes the link between sites `a` and `b` (1-based indices).
    pub fn link_shape(mut self, a: usize, b: usize, shape: LinkShape) -> Self {
        self.shapes.push(((a.min(b), a.max(b)), shape));
        self
    }

    /// Gives the sites human labels (one per site).
    pub fn labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let labels: Vec<String> = labels.into_iter().map(Into::into).collect();
        if labels.len() == self.labels.len() {
            self.labels = labels;
        }
        self
    }

    /// Creates the namespaces, links and routes. On any failure, whatever
    /// was created is removed again before the error is returned.
    pub fn build(self) -> Result<Testbed, TestbedError> {
        let n = self.labels.len();
        if !(1..=64).contains(&n) {
            return Err(TestbedError::Invalid(format!(
                "a testbed has 1 to 64 sites, not {n}"
            )));
        }
        sweep_stale_testbeds();
        let id = next_testbed_id();
        let mut bed = Testbed {
            id: id.clone(),
            sites: Vec::new(),
            links: Vec::new(),
        };
        for (i, label) in self.labels.iter().enumerate() {
            let index = i + 1;
            let ns = NetNs::create(&format!("{id}-s{index}"))?;
            let addr = site_addr(index);
            bed.sites.push(SiteHandle {
                index,
                label: label.clone(),
                ns,
                addr,
            });
            ip(&[
                "-n",
                bed.sites[i].ns.name(),
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])?;
        }
        for a in 1..=n {
            for b in (a + 1)..=n {
                let shape = self
                    .shapes
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == (a, b))
                    .map(|(_, s)| *s)
                    .unwrap_or(self.default_shape);
                let emulated = self.shapeable || !shape.is_plain();
                bed.add_link(a, b, shape, emulated)?;
            }
        }
        Ok(bed)
    }
}

/// A set of site namespaces joined by a full mesh of veth links. Dropping
/// it kills every process inside its namespaces and removes them.
#[derive(Debug)]
pub struct Testbed {
    id: String,
    sites: Vec<SiteHandle>,
    links: Vec<Link>,
}

impl Testbed {
    /// Starts describing a testbed of `sites` sites.
    pub fn builder(sites: usize) -> TestbedBuilder {
        TestbedBuilder {
            labels: (1..=sites).map(|i| format!("site{i}")).collect(),
            default_shape: LinkShape::default(),
            shapes: Vec::new(),
            shapeable: false,
        }
    }

    /// Unique prefix of this testbed's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// All sites in index order.
    pub fn sites(&self) -> &[SiteHandle] {
        &self.sites
    }

    /// Site by 1-based index.
    pub fn site(&self, index: usize) -> &SiteHandle {
        &self.sites[index - 1]
    }

    fn link_index(&self, a: usize, b: usize) -> Option<usize> {
        let (a, b) = (a.min(b), a.max(b));
        self.links.iter().position(|l| l.a == a && l.b == b)
    }

    fn add_link(
        &mut self,
        a: usize,
        b: usize,
        shape: LinkShape,
        emulated: bool,
    ) -> Result<(), TestbedError> {
        let k = self.links.len();
        let (addr_a, addr_b) = link_addrs(k);
        // Interfaces are created directly inside their site, so their names
        // only need to be unique per site.
        let (if_a, if_b) = (format!("to{b}"), format!("to{a}"));
        let ns_a = self.sites[a - 1].ns.clone();
        let ns_b = self.sites[b - 1].ns.clone();
        let emulator = if emulated {
            let link = EmulatedLink::start(&ns_a, &if_a, &ns_b, &if_b, shape, k as u64 + 1)
                .map_err(|e| {
                    TestbedError::Invalid(format!(
                        "cannot create the emulated link between sites {a} and {b}: {e}"
                    ))
                })?;
            Some(link)
        } else {
            ip(&[
                "link",
                "add",
                &if_a,
                "netns",
                ns_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &if_b,
                "netns",
                ns_b.name(),
            ])?;
            None
        };
        // Emulated links get static neighbours: a WAN link has no ARP, and
        // lost ARP requests would otherwise stall traffic on lossy links.
        let peer_macs = emulator.as_ref().map(|l| (l.macs.1, l.macs.0));
        self.links.push(Link { a, b, emulator });
        for (ns, ifname, own_site, own, peer_site, peer_link, peer_mac) in [
            (&ns_a, &if_a, a, addr_a, b, addr_b, peer_macs.map(|m| m.0)),
            (&ns_b, &if_b, b, addr_b, a, addr_a, peer_macs.map(|m| m.1)),
        ] {
            let ns = ns.name();
            ip(&["-n", ns, "addr", "add", &format!("{own}/30"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
            if let Some(mac) = peer_mac {
                let mac = mac.map(|b| format!("{b:02x}")).join(":");
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &peer_link.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ])?;
            }
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{}/32", site_addr(peer_site)),
                "via",
                &peer_link.to_string(),
                "src",
                &site_addr(own_site).to_string(),
            ])?;
        }
        Ok(())
    }

    /// Changes the shaping of the link between sites `a` and `b` at runtime
    /// (e.g. to inject a fault). Only links built shaped, or all links of a
    /// testbed built with [`TestbedBuilder::shapeable`], can change.
    pub fn set_link_shape(&self, a: usize, b: usize, shape: LinkShape) -> Result<(), TestbedError> {
        let k = self
            .link_index(a, b)
            .ok_or_else(|| TestbedError::Invalid(format!("no link between sites {a} and {b}")))?;
        match &self.links[k].emulator {
            Some(link) => {
                link.set_shape(shape);
                Ok(())
            }
            None => Err(TestbedError::Invalid(format!(
                "the link between sites {a} and {b} is a plain veth; build the testbed \
                 with .shapeable() to change links at runtime"
            ))),
        }
    }

    /// Frames delivered and dropped on an emulated link: `(delivered, lost,
    /// overflowed)`, or `None` for a veth link.
    pub fn link_counters(&self, a: usize, b: usize) -> Option<(u64, u64, u64)> {
        let link = self.links[self.link_index(a, b)?].emulator.as_ref()?;
        let c = link.counters();
        Some((
            c.delivered.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            c.overflowed.load(Ordering::Relaxed),
        ))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Stop the emulator threads (closing their TAP devices) first.
        self.links.clear();
        for site in &self.sites {
            if let Err(e) = site.ns.destroy() {
                eprintln!(
                    "testbed {}: could not remove {}: {e}",
                    self.id,
                    site.ns.name()
                );
            }
        }
    }
}

/// Underlay address of site `index` (1-based).
pub(crate) fn site_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, index as u8)
}

/// The two addresses of the `k`-th link's /30.
fn link_addrs(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    let third = 1 + (k / 64) as u8;
    let base = (4 * (k % 64)) as u8;
    (
        Ipv4Addr::new(198, 18, third, base + 1),
        Ipv4Addr::new(198, 18, third, base + 2),
    )
}

const NAME_PREFIX: &str = "sn";

fn next_testbed_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}x{n}", std::process::id())
}

/// Parses the creating pid out of a testbed namespace name (`sn<pid>x<n>-s<i>`).
fn owner_pid(ns_name: &str) -> Option<i32> {
    let rest = ns_name.strip_prefix(NAME_PREFIX)?;
    let (pid, tail) = rest.split_once('x')?;
    let (counter, site) = tail.split_once("-s")?;
    if counter.parse::<u32>().is_err() || site.parse::<u32>().is_err() {
        return None;
    }
    pid.parse().ok()
}

/// Removes namespaces of testbeds whose creating process no longer runs
/// (left behind by a test that was killed).
pub fn sweep_stale_testbeds() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = owner_pid(name) else { continue };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = NetNs::existing(name).destroy();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_stay_inside_the_benchmark_range_and_do_not_collide() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..(64 * 63 / 2) {
            let (a, b) = link_addrs(k);
            for addr in [a, b] {
                assert_eq!(addr.octets()[0..2], [198, 18]);
                assert!(seen.insert(addr), "{addr} used twice");
                assert_ne!(
                    addr.octets()[2],
                    0,
                    "link address collides with site addresses"
                );
            }
        }
    }

    #[test]
    fn owner_pid_parses_only_testbed_names() {
        assert_eq!(owner_pid("sn1234x0-s1"), Some(1234));
        assert_eq!(owner_pid("sn1234x12-s10"), Some(1234));
        assert_eq!(owner_pid("pbA"), None);
        assert_eq!(owner_pid("snprobe-12"), None);
        assert_eq!(owner_pid("sn12x-s1"), None);
    }

    #[test]
    fn a_default_shape_is_plain() {
        assert!(LinkShape::default().is_plain());
        assert!(!LinkShape::delay(1.0).is_plain());
    }
}
