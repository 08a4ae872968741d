//! SQL shared by the handlers: lookups that turn names into rows (with
//! 404s that say where to look), the JSON views of nodes and slices,
//! counters and the audit log.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use sqlx::{FromRow, Sqlite, SqliteConnection, Transaction};

use super::authn::PrincipalCtx;
use super::error::{ApiError, ApiResult};
use crate::api::{self, NodeState, SliverState};
use crate::keys::PublicKey;
use crate::model::{Appliance, ReportedCapacity, Resources};

/// A write transaction.
pub type Tx = Transaction<'static, Sqlite>;

/// Appends to the audit log (inside the mutation's transaction, so the log
/// has an entry exactly for every change that committed).
pub async fn audit(
    tx: &mut Tx,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
        .bind(crate::auth::now_secs())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Increments a counter that only grows (epoch, VNI) and returns the new value.
pub async fn next_counter(c: &mut SqliteConnection, name: &str, first: i64) -> ApiResult<i64> {
    let value: i64 = sqlx::query_scalar(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
    )
    .bind(name)
    .bind(first)
    .fetch_one(c)
    .await?;
    Ok(value)
}

/// Site id by name, or 404.
pub async fn site_id(c: &mut SqliteConnection, name: &str) -> ApiResult<i64> {
    sqlx::query_scalar("SELECT id FROM sites WHERE name = ?")
        .bind(name)
        .fetch_optional(c)
        .await?
        .ok_or_else(|| no_such_site(name))
}

/// The 404 for an unknown site.
pub fn no_such_site(name: &str) -> ApiError {
    ApiError::not_found("site", name, "`slicenet site list` shows the sites")
}

/// A node with its site and usage.
#[derive(Debug, Clone, FromRow)]
pub struct NodeRow {
    pub id: i64,
    pub name: String,
    pub site: String,
    pub region: String,
    pub country: String,
    pub public_key: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub bandwidth_mbps: i64,
    pub state: String,
    pub wg_public_key: Option<String>,
    pub tunnel_address: Option<String>,
    pub endpoint: Option<String>,
    pub last_seen: Option<i64>,
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    pub used_disk_gib: i64,
    pub used_bandwidth_mbps: i64,
    pub sliver_count: i64,
    pub reported_vcpus: Option<i64>,
    pub reported_memory_mib: Option<i64>,
    pub reported_disk_gib: Option<i64>,
    pub reported_bandwidth_mbps: Option<i64>,
    pub capacity_reported_at: Option<i64>,
    pub console: Option<String>,
}

macro_rules! node_select {
    ($tail:literal) => {
        concat!(
            "SELECT n.id, n.name, n.site_id, s.name AS site, s.region, s.country, ",
            "n.public_key, n.vcpus, n.memory_mib, n.disk_gib, n.bandwidth_mbps, n.state, n.wg_public_key, ",
            "n.tunnel_address, n.endpoint, n.last_seen, ",
            // Kept by triggers on slivers (migration 0002).
            "n.used_vcpus, n.used_memory_mib, n.used_disk_gib, n.used_bandwidth_mbps, n.sliver_count, ",
            // Reported by the node (migration 0003).
            "n.reported_vcpus, n.reported_memory_mib, n.reported_disk_gib, n.reported_bandwidth_mbps, ",
            "n.capacity_reported_at, n.console ",
            "FROM nodes n JOIN sites s ON s.id = n.site_id ",
            $tail
        )
    };
}

/// Every node, by name.
pub async fn all_nodes(c: &mut SqliteConnection) -> ApiResult<Vec<NodeRow>> {
    Ok(sqlx::query_as(node_select!("ORDER BY n.name"))
        .fetch_all(c)
        .await?)
}

/// One node by name, or 404.
pub async fn node_by_name(c: &mut SqliteConnection, name: &str) -> ApiResult<NodeRow> {
    sqlx::query_as(node_select!("WHERE n.name = ?"))
        .bind(name)
        .fetch_optional(c)
        .await?
        .ok_or_else(|| ApiError::not_found("node", name, "`slicenet node list` shows the nodes"))
}

/// Resources from registry columns (negative values read as 0).
pub fn resources(vcpus: i64, memory_mib: i64, disk_gib: i64, bandwidth_mbps: i64) -> Resources {
    Resources {
        vcpus: vcpus.max(0) as u32,
        memory_mib: memory_mib.max(0) as u64,
        disk_gib: disk_gib.max(0) as u64,
        bandwidth_mbps: bandwidth_mbps.max(0) as u64,
    }
}

/// A reported capacity from registry columns: present when vCPUs and
/// memory were reported (negative values read as 0).
pub fn reported_capacity(
    vcpus: Option<i64>,
    memory_mib: Option<i64>,
    disk_gib: Option<i64>,
    bandwidth_mbps: Option<i64>,
) -> Option<ReportedCapacity> {
    Some(ReportedCapacity {
        vcpus: vcpus?.clamp(0, u32::MAX as i64) as u32,
        memory_mib: memory_mib?.max(0) as u64,
        disk_gib: disk_gib.map(|d| d.max(0) as u64),
        bandwidth_mbps: bandwidth_mbps.map(|b| b.max(0) as u64),
    })
}

/// The capacity placement may fill: the configured one, lowered to the reported one.
pub fn usable_capacity(configured: Resources, reported: Option<ReportedCapacity>) -> Resources {
    match reported {
        Some(r) => r.cap(&configured),
        None => configured,
    }
}

/// A node's state at `now`: the stored state ("new", "up", "disabled")
/// with liveness applied ("up" but not heard from in time is down).
pub fn node_state(stored: &str, last_seen: Option<i64>, now: i64, liveness_secs: u64) -> NodeState {
    match stored {
        "disabled" => NodeState::Disabled,
        "up" if last_seen.unwrap_or(0) + (liveness_secs as i64) < now => NodeState::Down,
        "up" => NodeState::Up,
        _ => NodeState::New,
    }
}

impl NodeRow {
    /// Capacity.
    pub fn capacity(&self) -> Resources {
        resources(
            self.vcpus,
            self.memory_mib,
            self.disk_gib,
            self.bandwidth_mbps,
        )
    }

    /// What the node reported, if anything.
    pub fn reported_capacity(&self) -> Option<ReportedCapacity> {
        reported_capacity(
            self.reported_vcpus,
            self.reported_memory_mib,
            self.reported_disk_gib,
            self.reported_bandwidth_mbps,
        )
    }

    /// The registered console address.
    pub fn console(&self) -> Option<SocketAddr> {
        self.console.as_deref().and_then(|a| a.parse().ok())
    }

    /// Sum of the slivers' reservations.
    pub fn allocated(&self) -> Resources {
        resources(
            self.used_vcpus,
            self.used_memory_mib,
            self.used_disk_gib,
            self.used_bandwidth_mbps,
        )
    }

    /// State with liveness applied.
    pub fn state(&self, now: i64, liveness_secs: u64) -> NodeState {
        node_state(&self.state, self.last_seen, now, liveness_secs)
    }

    /// The API view.
    pub fn to_api(&self, now: i64, liveness_secs: u64) -> api::Node {
        api::Node {
            name: self.name.clone(),
            site: self.site.clone(),
            region: self.region.clone(),
            country: self.country.clone(),
            public_key: self.public_key.parse().unwrap_or(PublicKey([0; 32])),
            capacity: self.capacity(),
            reported_capacity: self.reported_capacity(),
            capacity_reported_at: self.capacity_reported_at,
            allocated: self.allocated(),
            slivers: self.sliver_count as u32,
            state: self.state(now, liveness_secs),
            wg_public_key: self.wg_public_key.as_deref().and_then(|k| k.parse().ok()),
            tunnel_address: self.tunnel_address.as_deref().and_then(|a| a.parse().ok()),
            endpoint: self
                .endpoint
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok()),
            last_seen: self.last_seen,
            console: self.console(),
        }
    }
}

/// A slice with its site and owner names.
#[derive(Debug, Clone, FromRow)]
pub struct SliceRow {
    pub id: i64,
    pub name: String,
    pub site: String,
    pub owner_id: i64,
    pub owner: String,
    pub description: String,
    pub lease_expires_at: i64,
    pub created_at: i64,
}

const SLICE_SELECT: &str = "SELECT sl.id, sl.name, sl.site_id, s.name AS site, sl.owner_id, p.name AS owner, sl.description, sl.lease_expires_at, sl.created_at FROM slices sl JOIN sites s ON s.id = sl.site_id JOIN principals p ON p.id = sl.owner_id";

/// A slice by name, or 404.
pub async fn slice_by_name(c: &mut SqliteConnection, name: &str) -> ApiResult<SliceRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SLICE_SELECT} WHERE sl.name = ?")))
        .bind(name)
        .fetch_optional(c)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "slice",
                name,
                "`slicenet slice list` shows the slices (an expired slice is deleted with everything in it)",
            )
        })
}

/// A slice by id.
pub async fn slice_by_id(c: &mut SqliteConnection, id: i64) -> ApiResult<SliceRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SLICE_SELECT} WHERE sl.id = ?"
    )))
    .bind(id)
    .fetch_optional(c)
    .await?
    .ok_or_else(|| ApiError::not_found("slice", id, "it may have just been deleted"))
}

/// What a principal may do in a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SliceAccess {
    /// Nothing but read.
    None,
    /// Renew, add/remove slivers, manage enclaves.
    Member,
    /// Also delete and change members (admin, owner, PI of the slice's site).
    Manage,
}

/// The caller's access to a slice.
pub async fn slice_access(
    c: &mut SqliteConnection,
    p: &PrincipalCtx,
    slice: &SliceRow,
) -> ApiResult<SliceAccess> {
    if p.admin || p.id == slice.owner_id || p.is_pi_of(&slice.site) {
        return Ok(SliceAccess::Manage);
    }
    let member: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM slice_members WHERE slice_id = ? AND principal_id = ?")
            .bind(slice.id)
            .bind(p.id)
            .fetch_optional(c)
            .await?;
    Ok(if member.is_some() {
        SliceAccess::Member
    } else {
        SliceAccess::None
    })
}

/// Requires at least `needed` access, with a message naming who may.
pub async fn require_slice_access(
    c: &mut SqliteConnection,
    p: &PrincipalCtx,
    slice: &SliceRow,
    needed: SliceAccess,
    action: &str,
) -> ApiResult<()> {
    if slice_access(c, p, slice).await? >= needed {
        return Ok(());
    }
    let who = if needed == SliceAccess::Manage {
        format!(
            "its owner {}, a PI of site {} or an administrator",
            slice.owner, slice.site
        )
    } else {
        format!(
            "its members, its owner {}, a PI of site {} or an administrator",
            slice.owner, slice.site
        )
    };
    Err(ApiError::forbidden(format!(
        "{} may not {action} in slice {}: only {who} may; ask the owner to add you (`slicenet slice member add`)",
        p.name, slice.name
    )))
}

/// Slivers that share an enclave with any of `slivers` (themselves included).
pub async fn co_members(c: &mut SqliteConnection, slivers: &[i64]) -> ApiResult<Vec<i64>> {
    if slivers.is_empty() {
        return Ok(vec![]);
    }
    let ids = serde_json::to_string(slivers).expect("ids serialize");
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT m2.sliver_id FROM enclave_members m1 JOIN enclave_members m2 ON m1.enclave_id = m2.enclave_id WHERE m1.sliver_id IN (SELECT value FROM json_each(?)) ORDER BY m2.sliver_id",
    )
    .bind(ids)
    .fetch_all(c)
    .await?)
}

/// Every member of an enclave.
pub async fn enclave_member_ids(c: &mut SqliteConnection, enclave_id: i64) -> ApiResult<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT sliver_id FROM enclave_members WHERE enclave_id = ? ORDER BY sliver_id",
    )
    .bind(enclave_id)
    .fetch_all(c)
    .await?)
}

#[derive(FromRow)]
struct SliverRow {
    id: i64,
    node: String,
    site: String,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    bandwidth_mbps: i64,
    appliance_name: String,
    appliance_hash: String,
    state: String,
    state_message: Option<String>,
    ticket_epoch: i64,
}

/// Parses a sliver state stored in the registry.
pub fn sliver_state(s: &str) -> SliverState {
    match s {
        "provisioning" => SliverState::Provisioning,
        "running" => SliverState::Running,
        "stopped" => SliverState::Stopped,
        "failed" => SliverState::Failed,
        _ => SliverState::Allocated,
    }
}

/// The API view of a slice.
pub async fn slice_json(c: &mut SqliteConnection, row: &SliceRow) -> ApiResult<api::Slice> {
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM slice_members m JOIN principals p ON p.id = m.principal_id WHERE m.slice_id = ? ORDER BY p.name",
    )
    .bind(row.id)
    .fetch_all(&mut *c)
    .await?;
    let slivers: Vec<SliverRow> = sqlx::query_as(
        "SELECT v.id, n.name AS node, s.name AS site, v.vcpus, v.memory_mib, v.disk_gib, v.bandwidth_mbps, v.appliance_name, v.appliance_hash, v.state, v.state_message, COALESCE(t.epoch, 0) AS ticket_epoch FROM slivers v JOIN nodes n ON n.id = v.node_id JOIN sites s ON s.id = n.site_id LEFT JOIN tickets t ON t.sliver_id = v.id WHERE v.slice_id = ? ORDER BY v.id",
    )
    .bind(row.id)
    .fetch_all(&mut *c)
    .await?;
    let enclaves: Vec<String> =
        sqlx::query_scalar("SELECT name FROM enclaves WHERE slice_id = ? ORDER BY name")
            .bind(row.id)
            .fetch_all(&mut *c)
            .await?;
    Ok(api::Slice {
        name: row.name.clone(),
        site: row.site.clone(),
        owner: row.owner.clone(),
        description: row.description.clone(),
        members,
        created_at: row.created_at,
        lease_expires_at: row.lease_expires_at,
        slivers: slivers
            .into_iter()
            .map(|v| api::Sliver {
                id: v.id as u64,
                slice: row.name.clone(),
                node: v.node,
                site: v.site,
                resources: resources(v.vcpus, v.memory_mib, v.disk_gib, v.bandwidth_mbps),
                appliance: Appliance {
                    name: v.appliance_name,
                    hash: v.appliance_hash,
                },
                state: sliver_state(&v.state),
                state_message: v.state_message,
                ticket_epoch: v.ticket_epoch as u64,
            })
            .collect(),
        enclaves,
    })
}

/// The lowest address of `pool` not in `used`.
pub fn first_free(
    pool: &crate::config::Ipv4Net,
    used: &std::collections::HashSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    pool.hosts().find(|a| !used.contains(a))
}

/// Tunnel addresses in use by nodes and gateways.
pub async fn used_tunnel_addresses(
    c: &mut SqliteConnection,
) -> ApiResult<std::collections::HashSet<Ipv4Addr>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT tunnel_address FROM nodes WHERE tunnel_address IS NOT NULL UNION SELECT tunnel_address FROM enclave_gateways",
    )
    .fetch_all(c)
    .await?;
    Ok(rows.iter().filter_map(|a| a.parse().ok()).collect())
}

/// Principal ids by name; 404 names the first unknown one.
pub async fn principal_ids(
    c: &mut SqliteConnection,
    names: &[String],
) -> ApiResult<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for name in names {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM principals WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *c)
            .await?;
        let id = id.ok_or_else(|| {
            ApiError::not_found("user", name, "`slicenet user list` shows the users")
        })?;
        out.insert(name.clone(), id);
    }
    Ok(out)
}
