//! The capacity index against the registry it caches: after every kind of
//! change it must equal a fresh read, and uncommitted usage never stays.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::CapacityIndex;
use crate::api::{
    AddSlivers, Heartbeat, NewNode, NewSite, NewSlice, NodeRegistration, PlacementGroup,
    PlacementRequest,
};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::keys::{self, PublicKey};
use crate::model::{ReportedCapacity, Resources};
use crate::server::{AppState, Authority, RunningAuthority};

struct Env {
    _dir: tempfile::TempDir,
    state: AppState,
    running: RunningAuthority,
    admin: Client,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        reaper_interval_ms: 50,
        ..Config::default()
    };
    let authority = Authority::open(dir.path(), Some(config)).await.unwrap();
    let state = authority.state.clone();
    let admin_key = keys::read_secret_key(&authority.admin_key_path()).unwrap();
    let running = authority
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = Client::new(&running.url(), admin_key);
    for (name, region) in [("ams", "eu"), ("nyc", "na")] {
        admin
            .create_site(&NewSite {
                name: name.into(),
                region: region.into(),
                country: "XX".into(),
                latitude: 10.0,
                longitude: 20.0,
                description: String::new(),
            })
            .await
            .unwrap();
    }
    Env {
        _dir: dir,
        state,
        running,
        admin,
    }
}

async fn add_node(admin: &Client, name: &str, site: &str, vcpus: u32) -> SigningKey {
    let key = keys::generate();
    admin
        .create_node(&NewNode {
            name: name.into(),
            site: site.into(),
            public_key: PublicKey::of(&key),
            capacity: Resources {
                vcpus,
                memory_mib: 8192,
                disk_gib: 100,
                bandwidth_mbps: 1000,
            },
        })
        .await
        .unwrap();
    key
}

fn slice(name: &str, count: u32, lease_secs: u64, dry_run: bool) -> NewSlice {
    NewSlice {
        name: name.into(),
        description: String::new(),
        lease_secs: Some(lease_secs),
        members: vec![],
        placement: Some(PlacementRequest {
            groups: vec![PlacementGroup {
                count,
                ..Default::default()
            }],
            ..Default::default()
        }),
        dry_run,
    }
}

/// The index as held between transactions equals a fresh read of the
/// registry, holds nothing stale, and the trigger-kept usage columns equal
/// the sums over slivers.
async fn assert_index_is_the_registry(state: &AppState, after: &str) {
    let now = crate::auth::now_secs();
    let liveness = state.config.node_liveness_secs;
    let mut w = state.write().await.unwrap();
    let held = w
        .writer
        .capacity
        .as_mut()
        .unwrap_or_else(|| panic!("after {after}: the index was dropped"));
    let held_rev = held.rev();
    let held = format!("{:?}", held.views(now, liveness));
    let pending = CapacityIndex::changes_since(&mut w.tx, held_rev)
        .await
        .unwrap();
    assert!(
        pending.is_empty(),
        "after {after}: the index missed committed rows {pending:?}"
    );
    let fresh = format!(
        "{:?}",
        CapacityIndex::load(&mut w.tx)
            .await
            .unwrap()
            .views(now, liveness)
    );
    assert_eq!(held, fresh, "after {after}");
    let drifted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes n WHERE used_vcpus != (SELECT COALESCE(SUM(vcpus), 0) FROM slivers WHERE node_id = n.id) OR used_memory_mib != (SELECT COALESCE(SUM(memory_mib), 0) FROM slivers WHERE node_id = n.id) OR used_disk_gib != (SELECT COALESCE(SUM(disk_gib), 0) FROM slivers WHERE node_id = n.id) OR used_bandwidth_mbps != (SELECT COALESCE(SUM(bandwidth_mbps), 0) FROM slivers WHERE node_id = n.id) OR sliver_count != (SELECT COUNT(*) FROM slivers WHERE node_id = n.id)",
    )
    .fetch_one(&mut *w.tx)
    .await
    .unwrap();
    assert_eq!(
        drifted, 0,
        "after {after}: usage columns differ from the slivers"
    );
}

fn vcpus_used(state: &AppState) -> u32 {
    let writer = state.write_lock.try_lock().expect("no writer running");
    writer
        .capacity
        .as_ref()
        .expect("index loaded")
        .views
        .iter()
        .map(|v| 8 - v.free.vcpus)
        .sum()
}

/// Placement sees the reported memory minus the allocations, and the API says the same.
async fn assert_free_memory(state: &AppState, admin: &Client, node: &str, reported_mib: u64) {
    let shown = admin.node(node).await.unwrap();
    assert_eq!(
        shown.usable_capacity().memory_mib,
        reported_mib,
        "{shown:?}"
    );
    let free = {
        let writer = state.write_lock.try_lock().expect("no writer running");
        let index = writer.capacity.as_ref().expect("index loaded");
        index
            .views
            .iter()
            .find(|v| v.name == node)
            .expect("node in the index")
            .free
            .memory_mib
    };
    assert_eq!(free, reported_mib - shown.allocated.memory_mib);
}

#[tokio::test]
async fn index_follows_every_kind_of_registry_change() {
    let env = start().await;
    let admin = &env.admin;
    let state = &env.state;
    let n1 = add_node(admin, "ams-n1", "ams", 8).await;
    add_node(admin, "ams-n2", "ams", 8).await;
    add_node(admin, "nyc-n1", "nyc", 8).await;
    assert_index_is_the_registry(state, "adding nodes").await;

    admin
        .create_slice(&slice("ams_a", 2, 3600, false))
        .await
        .unwrap();
    assert_index_is_the_registry(state, "creating a slice").await;
    assert_eq!(vcpus_used(state), 2);

    let added = admin
        .add_slivers(
            "ams_a",
            &AddSlivers {
                placement: PlacementRequest {
                    groups: vec![PlacementGroup {
                        count: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_index_is_the_registry(state, "adding a sliver").await;
    assert_eq!(vcpus_used(state), 3);

    let id = added.slice.unwrap().slivers.last().unwrap().id;
    admin.remove_sliver("ams_a", id).await.unwrap();
    assert_index_is_the_registry(state, "removing a sliver").await;
    assert_eq!(vcpus_used(state), 2);

    // Rolled back: a dry run and a refused placement change nothing.
    admin
        .create_slice(&slice("ams_dry", 3, 3600, true))
        .await
        .unwrap();
    let refused = admin
        .create_slice(&slice("ams_big", 100, 3600, false))
        .await;
    assert!(
        matches!(refused, Err(ClientError::Api { status: 409, .. })),
        "{refused:?}"
    );
    assert_index_is_the_registry(state, "a dry run and a refused placement").await;
    assert_eq!(vcpus_used(state), 2);

    admin.set_node_enabled("ams-n2", false).await.unwrap();
    assert_index_is_the_registry(state, "disabling a node").await;
    admin.set_node_enabled("ams-n2", true).await.unwrap();
    let node = Client::new(&env.running.url(), n1);
    node.register_node(
        "ams-n1",
        &NodeRegistration {
            wg_public_key: PublicKey([7; 32]),
            endpoint: Some("127.0.0.1:51820".parse().unwrap()),
            tunnel_address: None,
            software: None,
            capacity: Some(ReportedCapacity {
                vcpus: 8,
                memory_mib: 2048,
                disk_gib: None,
                bandwidth_mbps: None,
            }),
            console: None,
        },
    )
    .await
    .unwrap();
    assert_index_is_the_registry(state, "a node registering with its capacity").await;
    assert_free_memory(state, admin, "ams-n1", 2048).await;
    node.heartbeat("ams-n1", &Heartbeat::default())
        .await
        .unwrap();
    assert_index_is_the_registry(state, "a heartbeat").await;
    node.heartbeat(
        "ams-n1",
        &Heartbeat {
            capacity: Some(ReportedCapacity {
                vcpus: 8,
                memory_mib: 1024,
                disk_gib: Some(20),
                bandwidth_mbps: None,
            }),
            ..Heartbeat::default()
        },
    )
    .await
    .unwrap();
    assert_index_is_the_registry(state, "a heartbeat reporting less memory").await;
    assert_free_memory(state, admin, "ams-n1", 1024).await;

    add_node(admin, "nyc-n2", "nyc", 8).await;
    admin.remove_node("nyc-n2").await.unwrap();
    assert_index_is_the_registry(state, "removing a node").await;

    admin.delete_slice("ams_a").await.unwrap();
    assert_index_is_the_registry(state, "deleting a slice").await;
    assert_eq!(vcpus_used(state), 0);

    // Expiry: the reaper deletes the slice in its own transaction.
    admin
        .create_slice(&slice("ams_short", 2, 1, false))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.slice("ams_short").await.is_ok() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_index_is_the_registry(state, "a lease expiring").await;
    assert_eq!(vcpus_used(state), 0);
    env.running.shutdown().await;
}

#[tokio::test]
async fn writes_that_bypass_the_handlers_reach_placement() {
    let env = start().await;
    add_node(&env.admin, "ams-n1", "ams", 8).await;
    env.admin
        .create_slice(&slice("ams_a", 1, 3600, false))
        .await
        .unwrap();
    // Straight to the database, without any handler's knowledge.
    sqlx::query("DELETE FROM slivers")
        .execute(&env.state.db)
        .await
        .unwrap();
    let mut w = env.state.write().await.unwrap();
    let views = w.node_views(crate::auth::now_secs(), 120).await.unwrap();
    assert_eq!(views[0].free.vcpus, 8, "{views:?}");
    w.commit(&env.state).await.unwrap();
    assert_index_is_the_registry(&env.state, "a direct delete").await;
    env.running.shutdown().await;
}

#[tokio::test]
async fn a_reported_capacity_written_directly_reaches_placement() {
    let env = start().await;
    add_node(&env.admin, "ams-n1", "ams", 8).await;
    assert_index_is_the_registry(&env.state, "adding a node").await;
    // Straight to the database: the trigger of migration 0003 stamps the row.
    sqlx::query("UPDATE nodes SET reported_vcpus = 3, reported_memory_mib = 99999")
        .execute(&env.state.db)
        .await
        .unwrap();
    let mut w = env.state.write().await.unwrap();
    let views = w.node_views(crate::auth::now_secs(), 120).await.unwrap();
    // vCPUs lowered to the report, memory kept at the operator's ceiling.
    assert_eq!((views[0].free.vcpus, views[0].free.memory_mib), (3, 8192));
    w.commit(&env.state).await.unwrap();
    assert_index_is_the_registry(&env.state, "a direct report").await;
    env.running.shutdown().await;
}

#[tokio::test]
async fn rolled_back_usage_never_stays_in_the_index() {
    let env = start().await;
    add_node(&env.admin, "ams-n1", "ams", 8).await;
    let mut empty = slice("ams_a", 1, 3600, false);
    empty.placement = None;
    env.admin.create_slice(&empty).await.unwrap();
    let now = crate::auth::now_secs();
    {
        let mut w = env.state.write().await.unwrap();
        sqlx::query("INSERT INTO slivers (slice_id, node_id, vcpus, memory_mib, disk_gib, bandwidth_mbps, appliance_name, created_at, updated_at) SELECT (SELECT id FROM slices), id, 6, 1024, 10, 10, 'x', 0, 0 FROM nodes")
            .execute(&mut *w.tx)
            .await
            .unwrap();
        // The transaction sees its own reservation...
        let views = w.node_views(now, 120).await.unwrap();
        assert_eq!(views[0].free.vcpus, 2);
        // ...and then rolls back (dropped without commit).
    }
    let mut w = env.state.write().await.unwrap();
    let views = w.node_views(now, 120).await.unwrap();
    assert_eq!(views[0].free.vcpus, 8, "{views:?}");
    w.commit(&env.state).await.unwrap();
    assert_index_is_the_registry(&env.state, "a rollback").await;
    env.running.shutdown().await;
}

#[tokio::test]
async fn usage_recorded_before_migration_2_is_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join(crate::server::files::DATABASE))
        .create_if_missing(true)
        .foreign_keys(true);
    let db = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate!("./migrations").run_to(1, &db).await.unwrap();
    for statement in [
        "INSERT INTO sites (name, region, country, latitude, longitude, created_at) VALUES ('ams', 'eu', 'NL', 52, 4, 0)",
        "INSERT INTO nodes (name, site_id, public_key, vcpus, memory_mib, disk_gib, bandwidth_mbps, created_at) VALUES ('ams-n1', 1, 'k1', 8, 8192, 100, 1000, 0), ('ams-n2', 1, 'k2', 8, 8192, 100, 1000, 0)",
        "INSERT INTO principals (name, public_key, is_admin, created_at) VALUES ('admin', 'k3', 1, 0)",
        "INSERT INTO slices (name, site_id, owner_id, lease_expires_at, created_at) VALUES ('ams_a', 1, 1, 9999999999, 0)",
        "INSERT INTO slivers (slice_id, node_id, vcpus, memory_mib, disk_gib, bandwidth_mbps, appliance_name, created_at, updated_at) VALUES (1, 2, 1, 512, 5, 10, 'x', 0, 0), (1, 2, 2, 1024, 5, 10, 'x', 0, 0)",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    db.close().await;
    let authority = Authority::open(dir.path(), Some(Config::default()))
        .await
        .unwrap();
    let state = authority.state.clone();
    let free: Vec<u32> = {
        let mut w = state.write().await.unwrap();
        let views = w.node_views(crate::auth::now_secs(), 120).await.unwrap();
        views.iter().map(|v| v.free.vcpus).collect()
    };
    assert_eq!(free, [8, 5]);
    assert_index_is_the_registry(&state, "migrating").await;
}
