//! The capacity index: every node's free capacity and state in memory, in
//! the order placement breaks ties in (by name), so placement inside a write
//! transaction does not re-read the whole registry.
//!
//! The database stays the only source of truth. Triggers (migration 0002)
//! keep each node's usage in its row and stamp the row with the next
//! `node_rev` counter value whenever anything placement reads about the
//! node changes (slivers added or removed, configured or reported capacity
//! (migration 0003), state, liveness, site);
//! removed nodes leave a stamped tombstone. The index remembers the highest
//! revision it has read, and a refresh reads only the rows stamped later,
//! inside the caller's transaction. No handler has to remember to update
//! the index: whatever writes the rows, the next refresh sees it.

use sqlx::{FromRow, SqliteConnection};

use super::error::ApiResult;
use super::store::{node_state, reported_capacity, resources, usable_capacity};
use crate::placement::NodeView;

/// `state` of a tombstone row: the node was removed.
const REMOVED: &str = "removed";

macro_rules! capacity_select {
    ($tail:literal) => {
        concat!(
            "SELECT n.id, n.name, s.name AS site, s.region, s.country, s.latitude, s.longitude, ",
            "n.vcpus, n.memory_mib, n.disk_gib, n.bandwidth_mbps, ",
            "n.used_vcpus, n.used_memory_mib, n.used_disk_gib, n.used_bandwidth_mbps, ",
            "n.reported_vcpus, n.reported_memory_mib, n.reported_disk_gib, n.reported_bandwidth_mbps, ",
            "n.state, n.last_seen, n.rev FROM nodes n JOIN sites s ON s.id = n.site_id ",
            $tail
        )
    };
}

/// A node as the index reads it, or a tombstone (`state` = "removed").
#[derive(Debug, FromRow)]
pub struct CapacityRow {
    id: i64,
    name: String,
    site: String,
    region: String,
    country: String,
    latitude: f64,
    longitude: f64,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    bandwidth_mbps: i64,
    used_vcpus: i64,
    used_memory_mib: i64,
    used_disk_gib: i64,
    used_bandwidth_mbps: i64,
    reported_vcpus: Option<i64>,
    reported_memory_mib: Option<i64>,
    reported_disk_gib: Option<i64>,
    reported_bandwidth_mbps: Option<i64>,
    state: String,
    last_seen: Option<i64>,
    rev: i64,
}

impl CapacityRow {
    fn into_entry(self) -> (NodeView, Liveness) {
        // The operator's figure is a ceiling, the node's report the truth:
        // placement fills the smaller of the two.
        let capacity = usable_capacity(
            resources(
                self.vcpus,
                self.memory_mib,
                self.disk_gib,
                self.bandwidth_mbps,
            ),
            reported_capacity(
                self.reported_vcpus,
                self.reported_memory_mib,
                self.reported_disk_gib,
                self.reported_bandwidth_mbps,
            ),
        );
        let used = resources(
            self.used_vcpus,
            self.used_memory_mib,
            self.used_disk_gib,
            self.used_bandwidth_mbps,
        );
        let liveness = Liveness {
            stored: self.state,
            last_seen: self.last_seen,
        };
        let view = NodeView {
            id: self.id,
            name: self.name,
            site: self.site,
            region: self.region,
            country: self.country,
            latitude: self.latitude,
            longitude: self.longitude,
            free: capacity.minus(&used),
            // Set for the caller's clock by `CapacityIndex::views`.
            state: crate::api::NodeState::New,
        };
        (view, liveness)
    }
}

/// What a node's state follows from at a given time.
#[derive(Debug, Clone)]
struct Liveness {
    stored: String,
    last_seen: Option<i64>,
}

/// Every node's free capacity and state, as of revision `rev`.
#[derive(Debug, Default)]
pub struct CapacityIndex {
    /// Sorted by name (the registry's `ORDER BY name`).
    views: Vec<NodeView>,
    /// Parallel to `views`.
    liveness: Vec<Liveness>,
    rev: i64,
}

impl CapacityIndex {
    /// Reads every node (one scan; at startup and after an invalidation).
    pub async fn load(c: &mut SqliteConnection) -> ApiResult<CapacityIndex> {
        let rev: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'node_rev'")
            .fetch_one(&mut *c)
            .await?;
        let rows: Vec<CapacityRow> = sqlx::query_as(capacity_select!("ORDER BY n.name"))
            .fetch_all(&mut *c)
            .await?;
        let (views, liveness) = rows.into_iter().map(CapacityRow::into_entry).unzip();
        Ok(CapacityIndex {
            views,
            liveness,
            rev,
        })
    }

    /// Rows changed or removed after revision `rev`, as `c` sees them.
    pub async fn changes_since(c: &mut SqliteConnection, rev: i64) -> ApiResult<Vec<CapacityRow>> {
        Ok(sqlx::query_as(concat!(
            capacity_select!("WHERE n.rev > ?1 "),
            "UNION ALL SELECT node_id, '', '', '', '', 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 'removed', NULL, rev ",
            "FROM node_removals WHERE rev > ?1"
        ))
        .bind(rev)
        .fetch_all(c)
        .await?)
    }

    /// The highest revision read.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// Applies rows from [`Self::changes_since`].
    pub fn apply(&mut self, rows: Vec<CapacityRow>) {
        for row in rows {
            self.rev = self.rev.max(row.rev);
            let at = self.views.iter().position(|v| v.id == row.id);
            if row.state == REMOVED {
                if let Some(i) = at {
                    self.views.remove(i);
                    self.liveness.remove(i);
                }
                continue;
            }
            let (view, liveness) = row.into_entry();
            match at {
                Some(i) if self.views[i].name == view.name => {
                    self.views[i] = view;
                    self.liveness[i] = liveness;
                }
                _ => {
                    if let Some(i) = at {
                        self.views.remove(i);
                        self.liveness.remove(i);
                    }
                    let i = self.views.partition_point(|v| v.name < view.name);
                    self.views.insert(i, view);
                    self.liveness.insert(i, liveness);
                }
            }
        }
    }

    /// The nodes with their state at `now` (placement's input).
    pub fn views(&mut self, now: i64, liveness_secs: u64) -> &[NodeView] {
        for (view, l) in self.views.iter_mut().zip(&self.liveness) {
            view.state = node_state(&l.stored, l.last_seen, now, liveness_secs);
        }
        &self.views
    }
}

#[cfg(test)]
mod tests;
