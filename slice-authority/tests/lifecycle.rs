//! The whole life of a slice through the real HTTP API: placement (dry run
//! and real), node registration, ticket delivery by long poll and offline
//! verification, enclaves, renewal under policy, sliver removal, deletion.

mod common;

use std::time::Duration;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::ticket::{self, Applied, TicketBook, TicketStatus};

fn placement() -> PlacementRequest {
    PlacementRequest {
        groups: vec![
            PlacementGroup {
                count: 2,
                sites: vec!["ams".into()],
                ..Default::default()
            },
            PlacementGroup {
                count: 1,
                regions: vec!["asia".into()],
                ..Default::default()
            },
        ],
        resources: Some(caps(1, 256)),
        anti_affinity: AntiAffinity::Node,
        appliance: None,
    }
}

#[tokio::test]
async fn slice_lifecycle_through_the_http_api() {
    let env = start(test_config()).await;
    let nodes = three_sites(&env).await;
    let alice = add_user(&env, &env.admin, "alice", false, &[("ams", Role::Pi)]).await;
    let bob = add_user(&env, &alice, "bob", false, &[("ams", Role::User)]).await;
    let authority_key = env.admin.authority_info().await.unwrap().public_key;

    // Dry run: the placement comes back, nothing is created.
    let dry = alice
        .create_slice(&NewSlice {
            name: "ams_exp".into(),
            description: "lifecycle".into(),
            lease_secs: Some(3600),
            members: vec!["bob".into()],
            placement: Some(placement()),
            dry_run: true,
        })
        .await
        .unwrap();
    assert!(dry.dry_run && dry.slice.is_none());
    assert_eq!(dry.placement.len(), 3);
    assert!(alice.slices().await.unwrap().is_empty());

    let created = alice
        .create_slice(&NewSlice {
            name: "ams_exp".into(),
            description: "lifecycle".into(),
            lease_secs: Some(3600),
            members: vec!["bob".into()],
            placement: Some(placement()),
            dry_run: false,
        })
        .await
        .unwrap();
    let slice = created.slice.unwrap();
    assert_eq!(slice.slivers.len(), 3);
    assert_eq!(slice.members, vec!["alice", "bob"]);
    let ams_slivers: Vec<_> = slice.slivers.iter().filter(|s| s.site == "ams").collect();
    assert_eq!(ams_slivers.len(), 2);
    assert_ne!(ams_slivers[0].node, ams_slivers[1].node, "anti-affinity");

    // The node on which the first ams sliver landed registers and fetches its ticket.
    let first = &slice.slivers[0];
    let node_key = nodes
        .iter()
        .find(|(n, _)| *n == first.node)
        .unwrap()
        .1
        .clone();
    let node = env.client(node_key.clone());
    let wg = slicenet_authority::keys::PublicKey([9; 32]);
    let reg = node
        .register_node(
            &first.node,
            &NodeRegistration {
                wg_public_key: wg,
                endpoint: Some("198.18.0.1:51820".parse().unwrap()),
                tunnel_address: None,
                software: Some("test".into()),
                capacity: None,
                console: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(reg.authority_key, authority_key);
    assert_eq!(reg.node.state, NodeState::Up);
    assert_eq!(
        reg.node.tunnel_address,
        Some("198.19.255.1".parse().unwrap())
    );
    let batch = node
        .poll_tickets(&first.node, 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(batch.tickets.len(), 1);
    let mut book = TicketBook::new();
    let now = slicenet_authority::auth::now_secs();
    let t = ticket::verify_for_node(
        &batch.tickets[0].bytes().unwrap(),
        &authority_key,
        &slicenet_authority::keys::PublicKey::of(&node_key),
        now,
    )
    .unwrap();
    assert_eq!(t.sliver_id, first.id);
    assert_eq!(t.slice, "ams_exp");
    assert_eq!(t.resources, caps(1, 256));
    assert!(t.enclaves.is_empty());
    assert_eq!(book.apply(t), Applied::New);

    // A long poll started now returns as soon as an enclave is created.
    let poller = {
        let node = node.clone();
        let name = first.node.clone();
        let after = batch.epoch;
        tokio::spawn(async move {
            node.poll_tickets(&name, after, Duration::from_secs(30))
                .await
        })
    };
    let ids: Vec<u64> = slice.slivers.iter().map(|s| s.id).collect();
    let enclave = bob
        .create_enclave(
            "ams_exp",
            &NewEnclave {
                name: "lan".into(),
                slivers: ids.clone(),
                subnet: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(enclave.members.len(), 3);
    assert_eq!(enclave.vni, 1000);
    let woke = tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .expect("long poll woke")
        .unwrap()
        .unwrap();
    assert_eq!(woke.tickets.len(), 1);
    assert!(woke.epoch > batch.epoch);
    let t = ticket::verify(&woke.tickets[0].bytes().unwrap(), &authority_key, now).unwrap();
    assert_eq!(t.enclaves.len(), 1);
    let m = &t.enclaves[0];
    assert_eq!((m.enclave.as_str(), m.vni, m.prefix_len), ("lan", 1000, 24));
    assert_eq!(m.members.len(), 3);
    assert!(
        m.peers.is_empty(),
        "the other nodes have not registered their WireGuard keys yet"
    );
    assert!(matches!(book.apply(t), Applied::Updated { .. }));

    // Another member node registers: our node's ticket gets it as a peer.
    let other = slice.slivers.iter().find(|s| s.node != first.node).unwrap();
    let other_key = nodes
        .iter()
        .find(|(n, _)| *n == other.node)
        .unwrap()
        .1
        .clone();
    env.client(other_key.clone())
        .register_node(
            &other.node,
            &NodeRegistration {
                wg_public_key: slicenet_authority::keys::PublicKey([8; 32]),
                endpoint: Some("198.18.0.2:51820".parse().unwrap()),
                tunnel_address: None,
                software: None,
                capacity: None,
                console: None,
            },
        )
        .await
        .unwrap();
    let batch = node
        .poll_tickets(&first.node, book.highest_epoch(), Duration::from_secs(5))
        .await
        .unwrap();
    let t = ticket::verify(&batch.tickets[0].bytes().unwrap(), &authority_key, now).unwrap();
    let peers = &t.enclaves[0].peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node, other.node);
    assert_eq!(peers[0].wg_public_key.0, [8; 32]);
    assert_eq!(peers[0].endpoint, Some("198.18.0.2:51820".parse().unwrap()));
    book.apply(t);

    // Renewal beyond the policy maximum is capped, and the reply says so.
    let renew = bob
        .renew_slice("ams_exp", Duration::from_secs(10 * 365 * 86_400))
        .await
        .unwrap();
    assert!(renew.capped);
    assert_eq!(
        renew.granted_expires_at - now,
        renew.max_lease_secs as i64,
        "{renew:?}"
    );
    assert!(
        renew.message.contains("policy maximum"),
        "{}",
        renew.message
    );
    let batch = node
        .poll_tickets(&first.node, book.highest_epoch(), Duration::from_secs(5))
        .await
        .unwrap();
    let t = ticket::verify(&batch.tickets[0].bytes().unwrap(), &authority_key, now).unwrap();
    assert_eq!(t.expires_at, renew.granted_expires_at);
    book.apply(t);

    // Export for a gateway.
    let gw = bob
        .add_gateway(
            "ams_exp",
            "lan",
            &NewGateway {
                name: "office".into(),
                wg_public_key: slicenet_authority::keys::PublicKey([7; 32]),
                endpoint: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(gw.gateways.len(), 1);
    let export = bob
        .export_enclave("ams_exp", "lan", Some("office"))
        .await
        .unwrap();
    assert_eq!(export.vni, 1000);
    assert_eq!(export.members.len(), 3);
    assert_eq!(export.peers.len(), 2);
    assert_eq!(
        export.gateway.as_ref().unwrap().address,
        "198.19.1.4".parse::<std::net::Ipv4Addr>().unwrap()
    );

    // Removing the sliver revokes its ticket with a new epoch.
    bob.remove_sliver("ams_exp", first.id).await.unwrap();
    let batch = node
        .poll_tickets(&first.node, book.highest_epoch(), Duration::from_secs(5))
        .await
        .unwrap();
    let t = ticket::verify(&batch.tickets[0].bytes().unwrap(), &authority_key, now).unwrap();
    assert_eq!(t.status, TicketStatus::Revoked);
    assert_eq!(book.apply(t), Applied::Revoked);
    assert_eq!(book.active(now).count(), 0);

    // Deleting the slice frees every node.
    alice.delete_slice("ams_exp").await.unwrap();
    for n in env.admin.nodes(None).await.unwrap() {
        assert_eq!(
            n.allocated,
            Default::default(),
            "{} still has allocations",
            n.name
        );
        assert_eq!(n.slivers, 0);
    }
    let audit = env.admin.audit(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for expected in [
        "slice.create",
        "enclave.create",
        "slice.renew",
        "sliver.remove",
        "slice.delete",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    env.authority.shutdown().await;
}
