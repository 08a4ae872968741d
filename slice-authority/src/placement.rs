//! Placement: turns a request ("2 at site X, 1 in each of eu and asia, not
//! two on one node") into one node per sliver, or explains exactly which
//! constraint cannot be met and what is available instead. Pure: the
//! registry hands it a snapshot of the nodes and their free capacity under
//! its write lock, so the result never over-commits.
//!
//! With node or site anti-affinity the assignment is a bipartite matching
//! (slivers to distinct nodes or sites), solved exactly with augmenting
//! paths, so a request is refused only when no assignment exists. Without
//! anti-affinity, slivers are placed greedily, most constrained group
//! first, each on the matching node with the most free memory.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::api::{AntiAffinity, NodeState, PlacementGroup, PlacementRequest};
use crate::model::{names, Resources};

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Registry id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// Region.
    pub region: String,
    /// Country.
    pub country: String,
    /// Site latitude.
    pub latitude: f64,
    /// Site longitude.
    pub longitude: f64,
    /// Capacity minus allocations.
    pub free: Resources,
    /// State.
    pub state: NodeState,
}

/// One placed sliver: group index and index into the node snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Which group of the request.
    pub group: usize,
    /// Index into the `nodes` slice given to [`place`].
    pub node: usize,
    /// Reservation.
    pub resources: Resources,
}

/// Why a request cannot be placed.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct PlacementFailure {
    /// Index of the group that failed (absent when the request itself is invalid).
    pub group: Option<usize>,
    /// The constraint, in the request's terms (e.g. "region=asia, 3 slivers, 1 vCPU / 256 MiB ...").
    pub constraint: String,
    /// Slivers the group needs.
    pub needed: u32,
    /// Slivers that could be placed for it.
    pub available: u32,
    /// Why matching nodes were excluded, e.g. "2 down", "3 lack memory".
    pub excluded: Vec<String>,
    /// Where the same reservation would fit instead, e.g. "region eu: 14 nodes".
    pub available_instead: Vec<String>,
    /// The whole story in one paragraph.
    pub message: String,
}

impl PlacementFailure {
    fn invalid(message: String) -> Self {
        PlacementFailure {
            group: None,
            constraint: "request".into(),
            needed: 0,
            available: 0,
            excluded: vec![],
            available_instead: vec![],
            message,
        }
    }
}

/// Largest number of slivers in one request.
pub const MAX_SLIVERS_PER_REQUEST: u32 = 10_000;

/// Great-circle distance in km between two points.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (la1, lo1, la2, lo2) = (
        lat1.to_radians(),
        lon1.to_radians(),
        lat2.to_radians(),
        lon2.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

fn describe_group(g: &PlacementGroup, res: &Resources) -> String {
    let mut parts = Vec::new();
    if !g.nodes.is_empty() {
        parts.push(format!("node={}", g.nodes.join(",")));
    }
    if !g.sites.is_empty() {
        parts.push(format!("site={}", g.sites.join(",")));
    }
    if !g.regions.is_empty() {
        parts.push(format!("region={}", g.regions.join(",")));
    }
    if !g.countries.is_empty() {
        parts.push(format!("country={}", g.countries.join(",")));
    }
    if let Some(n) = g.near {
        parts.push(format!(
            "within {} km of {},{}",
            n.radius_km, n.latitude, n.longitude
        ));
    }
    if parts.is_empty() {
        parts.push("anywhere".into());
    }
    format!(
        "{} sliver{} at {} with {} each",
        g.count,
        if g.count == 1 { "" } else { "s" },
        parts.join(" "),
        res
    )
}

fn matches_location(g: &PlacementGroup, n: &NodeView) -> bool {
    (g.nodes.is_empty() || g.nodes.contains(&n.name))
        && (g.sites.is_empty() || g.sites.contains(&n.site))
        && (g.regions.is_empty() || g.regions.iter().any(|x| x.eq_ignore_ascii_case(&n.region)))
        && (g.countries.is_empty()
            || g.countries
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&n.country)))
        && g.near.is_none_or(|p| {
            distance_km(p.latitude, p.longitude, n.latitude, n.longitude) <= p.radius_km
        })
}

fn usable(n: &NodeView) -> bool {
    matches!(n.state, NodeState::New | NodeState::Up)
}

/// Checks a request against the registry's names before any search.
fn validate(
    req: &PlacementRequest,
    nodes: &[NodeView],
) -> Result<Vec<Resources>, PlacementFailure> {
    if req.groups.is_empty() {
        return Err(PlacementFailure::invalid(
            "the placement request has no groups: give at least one, e.g. {\"count\": 1}".into(),
        ));
    }
    let total: u64 = req.groups.iter().map(|g| g.count as u64).sum();
    if total > MAX_SLIVERS_PER_REQUEST as u64 {
        return Err(PlacementFailure::invalid(format!(
            "the request asks for {total} slivers; at most {MAX_SLIVERS_PER_REQUEST} per request"
        )));
    }
    let default = req.resources.unwrap_or(Resources::SLIVER_DEFAULT);
    let known_nodes: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let known_sites: HashSet<&str> = nodes.iter().map(|n| n.site.as_str()).collect();
    let mut per_group = Vec::new();
    for (i, g) in req.groups.iter().enumerate() {
        if g.count == 0 {
            return Err(PlacementFailure::invalid(format!(
                "group {i} asks for 0 slivers: give a count of at least 1"
            )));
        }
        let res = g.resources.unwrap_or(default);
        res.validate_sliver()
            .map_err(|m| PlacementFailure::invalid(format!("group {i}: {m}")))?;
        for n in &g.nodes {
            if !known_nodes.contains(n.as_str()) {
                names::node(n).map_err(|m| PlacementFailure::invalid(format!("group {i}: {m}")))?;
                return Err(PlacementFailure::invalid(format!(
                    "group {i} names node {n:?}, which is not in the registry; `slicenet node list` shows the nodes"
                )));
            }
        }
        for s in &g.sites {
            if !known_sites.contains(s.as_str()) {
                return Err(PlacementFailure::invalid(format!(
                    "group {i} names site {s:?}, which has no nodes in the registry; `slicenet site list` shows the sites"
                )));
            }
        }
        if let Some(p) = g.near {
            let ok = (-90.0..=90.0).contains(&p.latitude)
                && (-180.0..=180.0).contains(&p.longitude)
                && p.radius_km > 0.0
                && p.radius_km.is_finite();
            if !ok {
                return Err(PlacementFailure::invalid(format!(
                    "group {i}: near needs latitude -90..90, longitude -180..180 and a positive radius in km"
                )));
            }
        }
        per_group.push(res);
    }
    Ok(per_group)
}

/// Places every sliver of `req` on `nodes`, or explains the first group that
/// cannot be satisfied. `occupied` holds indices of nodes that already host
/// a sliver of the slice (node anti-affinity keeps away from them too).
pub fn place(
    req: &PlacementRequest,
    nodes: &[NodeView],
    occupied: &HashSet<usize>,
) -> Result<Vec<Assignment>, PlacementFailure> {
    let resources = validate(req, nodes)?;
    // Candidate nodes per group: location filter, state and a capacity
    // check against the snapshot (exact for anti-affinity, a first cut
    // otherwise).
    let candidates: Vec<Vec<usize>> = req
        .groups
        .iter()
        .zip(&resources)
        .map(|(g, res)| {
            (0..nodes.len())
                .filter(|&i| {
                    let n = &nodes[i];
                    usable(n)
                        && matches_location(g, n)
                        && res.fits_in(&n.free)
                        && !(req.anti_affinity == AntiAffinity::Node && occupied.contains(&i))
                })
                .collect()
        })
        .collect();
    // A group with too few candidates fails on its own, whatever the others do.
    for (gi, g) in req.groups.iter().enumerate() {
        let distinct = match req.anti_affinity {
            AntiAffinity::Site => candidates[gi]
                .iter()
                .map(|&i| nodes[i].site.as_str())
                .collect::<HashSet<_>>()
                .len(),
            AntiAffinity::Node => candidates[gi].len(),
            AntiAffinity::None => {
                // Total slots: how many slivers of this size the candidates hold.
                candidates[gi]
                    .iter()
                    .map(|&i| slots(&nodes[i].free, &resources[gi]))
                    .sum::<u64>()
                    .min(u32::MAX as u64) as usize
            }
        };
        if distinct < g.count as usize {
            return Err(explain(
                req,
                nodes,
                occupied,
                gi,
                &resources[gi],
                distinct as u32,
                None,
            ));
        }
    }
    match req.anti_affinity {
        AntiAffinity::None => greedy(req, nodes, occupied, &candidates, &resources),
        AntiAffinity::Node => matching(req, nodes, occupied, &candidates, &resources, |i| i),
        AntiAffinity::Site => {
            let mut site_index: HashMap<&str, usize> = HashMap::new();
            for n in nodes {
                let next = site_index.len();
                site_index.entry(n.site.as_str()).or_insert(next);
            }
            let of: Vec<usize> = nodes.iter().map(|n| site_index[n.site.as_str()]).collect();
            matching(req, nodes, occupied, &candidates, &resources, |i| of[i])
        }
    }
}

fn slots(free: &Resources, res: &Resources) -> u64 {
    let div = |a: u64, b: u64| a.checked_div(b).unwrap_or(u64::MAX);
    div(free.vcpus as u64, res.vcpus as u64)
        .min(div(free.memory_mib, res.memory_mib))
        .min(div(free.disk_gib, res.disk_gib))
        .min(div(free.bandwidth_mbps, res.bandwidth_mbps))
}

/// Most constrained group first (fewest candidates per sliver needed).
fn group_order(req: &PlacementRequest, candidates: &[Vec<usize>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..req.groups.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = candidates[a].len() as f64 / req.groups[a].count as f64;
        let rb = candidates[b].len() as f64 / req.groups[b].count as f64;
        ra.total_cmp(&rb).then(a.cmp(&b))
    });
    order
}

fn greedy(
    req: &PlacementRequest,
    nodes: &[NodeView],
    occupied: &HashSet<usize>,
    candidates: &[Vec<usize>],
    resources: &[Resources],
) -> Result<Vec<Assignment>, PlacementFailure> {
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.free).collect();
    let mut out = Vec::new();
    for gi in group_order(req, candidates) {
        let res = resources[gi];
        for placed in 0..req.groups[gi].count {
            let best = candidates[gi]
                .iter()
                .copied()
                .filter(|&i| res.fits_in(&free[i]))
                .max_by(|&a, &b| {
                    free[a]
                        .memory_mib
                        .cmp(&free[b].memory_mib)
                        .then(free[a].vcpus.cmp(&free[b].vcpus))
                        .then(b.cmp(&a))
                });
            let Some(i) = best else {
                return Err(explain(req, nodes, occupied, gi, &res, placed, Some(
                    "other groups of this request took the remaining capacity of the matching nodes",
                )));
            };
            free[i] = free[i].minus(&res);
            out.push(Assignment {
                group: gi,
                node: i,
                resources: res,
            });
        }
    }
    Ok(out)
}

/// Exact assignment of slots to distinct "bins" (nodes, or sites via `bin_of`)
/// by augmenting paths (Kuhn's algorithm).
fn matching(
    req: &PlacementRequest,
    nodes: &[NodeView],
    occupied: &HashSet<usize>,
    candidates: &[Vec<usize>],
    resources: &[Resources],
    bin_of: impl Fn(usize) -> usize,
) -> Result<Vec<Assignment>, PlacementFailure> {
    // For every slot: its group and candidate (bin, node) pairs, roomiest node first.
    let mut slot_group = Vec::new();
    let mut edges: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut per_group_edges: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for gi in group_order(req, candidates) {
        let list = per_group_edges.entry(gi).or_insert_with(|| {
            let mut c = candidates[gi].clone();
            c.sort_by(|&a, &b| {
                nodes[b]
                    .free
                    .memory_mib
                    .cmp(&nodes[a].free.memory_mib)
                    .then(a.cmp(&b))
            });
            let mut seen = HashSet::new();
            c.into_iter()
                .map(|i| (bin_of(i), i))
                .filter(|(bin, _)| seen.insert(*bin))
                .collect()
        });
        for _ in 0..req.groups[gi].count {
            slot_group.push(gi);
            edges.push(list.clone());
        }
    }
    let bins = nodes
        .iter()
        .enumerate()
        .map(|(i, _)| bin_of(i))
        .max()
        .map_or(0, |m| m + 1);
    let mut owner: Vec<Option<usize>> = vec![None; bins]; // bin -> slot
    let mut chosen: Vec<Option<usize>> = vec![None; edges.len()]; // slot -> node
    let mut visited = vec![0u32; bins];
    for slot in 0..edges.len() {
        // Cheap first: a free bin needs no search.
        if let Some(&(bin, node)) = edges[slot].iter().find(|(b, _)| owner[*b].is_none()) {
            owner[bin] = Some(slot);
            chosen[slot] = Some(node);
            continue;
        }
        let stamp = slot as u32 + 1;
        if !augment(slot, &edges, &mut owner, &mut chosen, &mut visited, stamp) {
            let gi = slot_group[slot];
            let placed = slot_group[..slot].iter().filter(|&&g| g == gi).count() as u32;
            return Err(explain(req, nodes, occupied, gi, &resources[gi], placed, Some(
                "other groups of this request need the same nodes or sites, and anti-affinity allows one sliver per node or site",
            )));
        }
    }
    Ok(chosen
        .into_iter()
        .zip(slot_group)
        .map(|(node, gi)| Assignment {
            group: gi,
            node: node.expect("every slot matched"),
            resources: resources[gi],
        })
        .collect())
}

fn augment(
    slot: usize,
    edges: &[Vec<(usize, usize)>],
    owner: &mut [Option<usize>],
    chosen: &mut [Option<usize>],
    visited: &mut [u32],
    stamp: u32,
) -> bool {
    // Iterative depth-first search would avoid deep recursion; the depth is
    // bounded by the number of slots (at most MAX_SLIVERS_PER_REQUEST), and
    // each frame is small, so recursion is fine here.
    for &(bin, node) in &edges[slot] {
        if visited[bin] == stamp {
            continue;
        }
        visited[bin] = stamp;
        let free_or_moved = match owner[bin] {
            None => true,
            Some(other) => augment(other, edges, owner, chosen, visited, stamp),
        };
        if free_or_moved {
            owner[bin] = Some(slot);
            chosen[slot] = Some(node);
            return true;
        }
    }
    false
}

/// Builds the explanation for group `gi`: what excluded the nodes that match
/// its location, and where the same reservation would fit instead.
fn explain(
    req: &PlacementRequest,
    nodes: &[NodeView],
    occupied: &HashSet<usize>,
    gi: usize,
    res: &Resources,
    available: u32,
    competition: Option<&str>,
) -> PlacementFailure {
    let g = &req.groups[gi];
    let constraint = describe_group(g, res);
    let matching: Vec<usize> = (0..nodes.len())
        .filter(|&i| matches_location(g, &nodes[i]))
        .collect();
    let mut down = 0;
    let mut disabled = 0;
    let mut taken = 0;
    let mut lacking: BTreeMap<&str, u32> = BTreeMap::new();
    let mut fitting = 0;
    for &i in &matching {
        let n = &nodes[i];
        match n.state {
            NodeState::Down => down += 1,
            NodeState::Disabled => disabled += 1,
            _ if req.anti_affinity == AntiAffinity::Node && occupied.contains(&i) => taken += 1,
            _ => {
                let f = &n.free;
                let mut any = false;
                for (what, short) in [
                    ("vCPUs", res.vcpus as u64 > f.vcpus as u64),
                    ("memory", res.memory_mib > f.memory_mib),
                    ("disk", res.disk_gib > f.disk_gib),
                    ("bandwidth", res.bandwidth_mbps > f.bandwidth_mbps),
                ] {
                    if short {
                        *lacking.entry(what).or_default() += 1;
                        any = true;
                    }
                }
                if !any {
                    fitting += 1;
                }
            }
        }
    }
    let mut excluded = Vec::new();
    if matching.is_empty() {
        excluded.push("no node in the registry matches this location".to_string());
    }
    if down > 0 {
        excluded.push(format!("{down} down (not heard from recently)"));
    }
    if disabled > 0 {
        excluded.push(format!("{disabled} disabled by an operator"));
    }
    if taken > 0 {
        excluded.push(format!(
            "{taken} already host a sliver of this slice (anti-affinity)"
        ));
    }
    for (what, count) in &lacking {
        excluded.push(format!("{count} lack free {what}"));
    }
    // Alternatives: usable nodes with room for this reservation, per region
    // and, inside the group's regions/countries, per site.
    let fits = |n: &NodeView| usable(n) && res.fits_in(&n.free);
    let mut by_region: BTreeMap<&str, (u32, HashSet<&str>)> = BTreeMap::new();
    for n in nodes.iter().filter(|n| fits(n)) {
        let e = by_region.entry(n.region.as_str()).or_default();
        e.0 += 1;
        e.1.insert(n.site.as_str());
    }
    let mut available_instead: Vec<String> = by_region
        .iter()
        .map(|(r, (count, sites))| format!("region {r}: {count} nodes at {} sites", sites.len()))
        .collect();
    let largest = matching
        .iter()
        .filter(|&&i| usable(&nodes[i]))
        .map(|&i| nodes[i].free)
        .max_by_key(|f| (f.memory_mib, f.vcpus));
    if let Some(f) = largest {
        if !res.fits_in(&f) {
            available_instead.push(format!("the roomiest matching node has {f} free"));
        }
    }
    let mut message = format!(
        "cannot place group {gi} ({constraint}): {available} of {} can be placed; {} node{} match the location, {fitting} with room",
        g.count,
        matching.len(),
        if matching.len() == 1 { "" } else { "s" },
    );
    if req.anti_affinity != AntiAffinity::None {
        message.push_str(&format!(
            " (anti-affinity: one per {})",
            if req.anti_affinity == AntiAffinity::Node {
                "node"
            } else {
                "site"
            }
        ));
    }
    if !excluded.is_empty() {
        message.push_str(&format!("; excluded: {}", excluded.join(", ")));
    }
    if let Some(c) = competition {
        message.push_str(&format!("; {c}"));
    }
    message.push_str(". Nothing was allocated.");
    if !available_instead.is_empty() {
        message.push_str(&format!(
            " Available with room for {res}: {}.",
            available_instead.join("; ")
        ));
    }
    PlacementFailure {
        group: Some(gi),
        constraint,
        needed: g.count,
        available,
        excluded,
        available_instead,
        message,
    }
}

#[cfg(test)]
mod tests;
