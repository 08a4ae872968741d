//! What nodes report about themselves: the capacity their host really has
//! (placement never goes beyond it, nor beyond the operator's figure) and
//! their console address; registrations of older node daemons still work.

mod common;

use std::time::Duration;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::client::Client;
use slicenet_authority::keys::PublicKey;
use slicenet_authority::model::ReportedCapacity;
use slicenet_authority::ticket::{self, TicketStatus};

fn slivers(count: u32) -> PlacementRequest {
    PlacementRequest {
        groups: vec![PlacementGroup {
            count,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn vcpus(n: u32) -> ReportedCapacity {
    ReportedCapacity {
        vcpus: n,
        memory_mib: 8192,
        disk_gib: None,
        bandwidth_mbps: None,
    }
}

fn registration(capacity: Option<ReportedCapacity>) -> NodeRegistration {
    NodeRegistration {
        wg_public_key: PublicKey([5; 32]),
        endpoint: Some("198.18.0.1:51820".parse().unwrap()),
        tunnel_address: None,
        software: None,
        capacity,
        console: Some("198.18.0.1:7000".parse().unwrap()),
    }
}

async fn add(admin: &Client, count: u32) -> Result<PlacementReply, String> {
    admin
        .add_slivers(
            "ams_a",
            &AddSlivers {
                placement: slivers(count),
                dry_run: false,
            },
        )
        .await
        .map_err(|e| format!("{}: {e}", e.code().unwrap_or("")))
}

#[tokio::test]
async fn placement_never_goes_beyond_the_reported_or_the_configured_capacity() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    let key = add_node(&env.admin, "ams-n1", "ams", caps(8, 8192)).await;
    let node = env.client(key.clone());
    let reg = node
        .register_node("ams-n1", &registration(Some(vcpus(2))))
        .await
        .unwrap();
    assert_eq!(
        reg.node.capacity,
        caps(8, 8192),
        "the operator's figure stays"
    );
    assert_eq!(reg.node.reported_capacity, Some(vcpus(2)));
    assert_eq!(reg.node.usable_capacity().vcpus, 2);
    assert!(reg.node.capacity_reported_at.is_some());

    // The host has 2 vCPUs: a third 1-vCPU sliver does not fit, whatever the operator said.
    env.admin
        .create_slice(&NewSlice {
            name: "ams_a".into(),
            description: String::new(),
            lease_secs: Some(3600),
            members: vec![],
            placement: None,
            dry_run: false,
        })
        .await
        .unwrap();
    let refused = add(&env.admin, 3).await.unwrap_err();
    assert!(refused.starts_with("placement_failed"), "{refused}");
    add(&env.admin, 2).await.unwrap();

    // The host shrinks below what is allocated: nothing is revoked, placement stops, `show` says so.
    node.heartbeat(
        "ams-n1",
        &Heartbeat {
            capacity: Some(vcpus(1)),
            ..Heartbeat::default()
        },
    )
    .await
    .unwrap();
    let shown = env.admin.node("ams-n1").await.unwrap();
    assert_eq!(shown.allocated.vcpus, 2);
    assert_eq!(shown.overcommitted(), vec!["vcpus"]);
    assert_eq!(env.admin.slice("ams_a").await.unwrap().slivers.len(), 2);
    let batch = node
        .poll_tickets("ams-n1", 0, Duration::ZERO)
        .await
        .unwrap();
    let now = slicenet_authority::auth::now_secs();
    for t in &batch.tickets {
        let t = ticket::verify(&t.bytes().unwrap(), &reg.authority_key, now).unwrap();
        assert_eq!(t.status, TicketStatus::Active);
    }
    assert_eq!(batch.tickets.len(), 2);
    let refused = add(&env.admin, 1).await.unwrap_err();
    assert!(refused.starts_with("placement_failed"), "{refused}");

    // A host larger than the operator's figure: the figure is the ceiling.
    node.heartbeat(
        "ams-n1",
        &Heartbeat {
            capacity: Some(vcpus(64)),
            ..Heartbeat::default()
        },
    )
    .await
    .unwrap();
    assert!(env
        .admin
        .node("ams-n1")
        .await
        .unwrap()
        .overcommitted()
        .is_empty());
    add(&env.admin, 6).await.unwrap();
    let refused = add(&env.admin, 1).await.unwrap_err();
    assert!(refused.starts_with("placement_failed"), "{refused}");

    // A registration without a report forgets the old one.
    let reg = node
        .register_node("ams-n1", &registration(None))
        .await
        .unwrap();
    assert_eq!(reg.node.reported_capacity, None);
    assert_eq!(reg.node.usable_capacity(), caps(8, 8192));

    let audit = env.admin.audit(100).await.unwrap();
    let reports = audit.iter().filter(|e| e.action == "node.capacity").count();
    assert_eq!(reports, 2, "{audit:?}");
}

#[tokio::test]
async fn registrations_of_older_daemons_and_bad_reports_get_clear_answers() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    let key = add_node(&env.admin, "ams-n1", "ams", caps(8, 8192)).await;
    let path = "/v1/nodes/ams-n1/register";

    // What a daemon from before capacity and console reports sends.
    let old = format!(r#"{{"wg_public_key":"{}"}}"#, PublicKey([5; 32]));
    let (status, body) = raw(&env.url(), &key, "POST", path, old.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let shown = env.admin.node("ams-n1").await.unwrap();
    assert_eq!((shown.reported_capacity, shown.console), (None, None));

    // The new fields, as JSON.
    let new = format!(
        r#"{{"wg_public_key":"{}","capacity":{{"vcpus":4,"memory_mib":2048}},"console":"198.18.0.1:7000"}}"#,
        PublicKey([5; 32])
    );
    let (status, body) = raw(&env.url(), &key, "POST", path, new.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let shown = env.admin.node("ams-n1").await.unwrap();
    assert_eq!(shown.console, Some("198.18.0.1:7000".parse().unwrap()));
    assert_eq!(shown.usable_capacity().memory_mib, 2048);
    assert_eq!(shown.usable_capacity().disk_gib, 100, "disk not measured");

    for (bad, expect) in [
        (r#""console":"0.0.0.0:7000""#, "wildcard"),
        (r#""console":"198.18.0.1:0""#, "port 0"),
        (
            r#""capacity":{"vcpus":1,"memory_mib":18446744073709551615}"#,
            "MiB",
        ),
        (r#""capacity":{"vcpus":1}"#, "memory_mib"),
    ] {
        let body = format!(r#"{{"wg_public_key":"{}",{bad}}}"#, PublicKey([5; 32]));
        let (status, reply) = raw(&env.url(), &key, "POST", path, body.as_bytes()).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{bad}: {message}");
    }
    // None of the refused reports changed anything.
    let after = env.admin.node("ams-n1").await.unwrap();
    assert_eq!(after.console, shown.console);
    assert_eq!(after.reported_capacity, shown.reported_capacity);
}
