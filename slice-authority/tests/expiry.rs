//! Leases: at expiry every sliver is reclaimed, node resources are freed
//! and nodes receive signed revocations.

mod common;

use std::time::Duration;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::ticket::{self, TicketStatus};

#[tokio::test]
async fn lease_expiry_reclaims_slivers_and_revokes_tickets() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    let node_key = add_node(&env.admin, "ams-n1", "ams", caps(4, 4096)).await;
    let node = env.client(node_key);
    let created = env
        .admin
        .create_slice(&NewSlice {
            name: "ams_short".into(),
            description: String::new(),
            lease_secs: Some(2),
            members: vec![],
            placement: Some(PlacementRequest {
                groups: vec![PlacementGroup {
                    count: 2,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(created.slice.unwrap().slivers.len(), 2);
    let first = node
        .poll_tickets("ams-n1", 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.tickets.len(), 2);
    assert_eq!(env.admin.node("ams-n1").await.unwrap().allocated.vcpus, 2);

    // The node learns of the reclamation by long poll, as signed revocations.
    let revoked = node
        .poll_tickets("ams-n1", first.epoch, Duration::from_secs(20))
        .await
        .unwrap();
    let key = env.admin.authority_info().await.unwrap().public_key;
    assert_eq!(revoked.tickets.len(), 2, "{revoked:?}");
    for t in &revoked.tickets {
        let t = ticket::verify_signature(&t.bytes().unwrap(), &key).unwrap();
        assert_eq!(t.status, TicketStatus::Revoked);
    }
    let freed = eventually("resources freed", Duration::from_secs(10), || async {
        let n = env.admin.node("ams-n1").await.unwrap();
        (n.slivers == 0).then_some(n)
    })
    .await;
    assert_eq!(freed.allocated, Default::default());
    let err = env.admin.slice("ams_short").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    let audit = env.admin.audit(50).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "slice.expire" && e.actor == "authority" && e.target == "ams_short"));
}
