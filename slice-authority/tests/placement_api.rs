//! Placement through the API: explanations of unsatisfiable requests, and
//! concurrent requests that together exceed capacity never over-commit.

mod common;

use common::*;
use slicenet_authority::api::*;

fn slice_req(
    name: &str,
    groups: Vec<PlacementGroup>,
    anti: AntiAffinity,
    dry_run: bool,
) -> NewSlice {
    NewSlice {
        name: name.into(),
        description: String::new(),
        lease_secs: Some(3600),
        members: vec![],
        placement: Some(PlacementRequest {
            groups,
            resources: Some(slicenet_authority::model::Resources::SLIVER_DEFAULT),
            anti_affinity: anti,
            appliance: None,
        }),
        dry_run,
    }
}

fn in_region(count: u32, region: &str) -> PlacementGroup {
    PlacementGroup {
        count,
        regions: vec![region.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn unsatisfiable_requests_name_the_constraint_and_the_alternatives() {
    let env = start(test_config()).await;
    three_sites(&env).await;
    env.admin.set_node_enabled("nrt-n2", false).await.unwrap();
    let err = env
        .admin
        .create_slice(&slice_req(
            "ams_x",
            vec![in_region(1, "eu"), in_region(2, "asia")],
            AntiAffinity::Node,
            true,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some("placement_failed"));
    let slicenet_authority::client::ClientError::Api {
        message, details, ..
    } = err
    else {
        unreachable!()
    };
    let details = details.unwrap();
    assert_eq!(details["group"], 1);
    assert_eq!(details["needed"], 2);
    assert_eq!(details["available"], 1);
    assert!(
        details["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "1 disabled by an operator"),
        "{details}"
    );
    assert!(message.contains("region=asia"), "{message}");
    assert!(
        message.contains("region eu: 2 nodes at 1 sites"),
        "{message}"
    );
    // The same request for real changes nothing either.
    env.admin
        .create_slice(&slice_req(
            "ams_x",
            vec![in_region(1, "eu"), in_region(2, "asia")],
            AntiAffinity::Node,
            false,
        ))
        .await
        .unwrap_err();
    assert!(env.admin.slices().await.unwrap().is_empty());
    assert!(env
        .admin
        .nodes(None)
        .await
        .unwrap()
        .iter()
        .all(|n| n.slivers == 0));
}

#[tokio::test]
async fn dry_run_returns_the_placement_and_changes_nothing() {
    let env = start(test_config()).await;
    three_sites(&env).await;
    let reply = env
        .admin
        .create_slice(&slice_req(
            "ams_x",
            vec![in_region(1, "eu"), in_region(1, "asia"), in_region(1, "na")],
            AntiAffinity::Site,
            true,
        ))
        .await
        .unwrap();
    let regions: Vec<&str> = reply.placement.iter().map(|p| p.region.as_str()).collect();
    assert_eq!(regions.len(), 3);
    for r in ["eu", "asia", "na"] {
        assert!(regions.contains(&r), "{regions:?}");
    }
    assert!(env.admin.slices().await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_requests_exceeding_capacity_never_over_commit() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_node(&env.admin, "ams-n1", "ams", caps(4, 1024)).await;
    add_node(&env.admin, "ams-n2", "ams", caps(3, 1024)).await;
    // 7 vCPUs in all; 20 concurrent requests for 1 vCPU each.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let admin = env.admin.clone();
        tasks.push(tokio::spawn(async move {
            admin
                .create_slice(&slice_req(
                    &format!("ams_c{i}"),
                    vec![PlacementGroup {
                        count: 1,
                        ..Default::default()
                    }],
                    AntiAffinity::None,
                    false,
                ))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Some("placement_failed"), "{e}"),
        }
    }
    assert_eq!(ok, 7, "exactly the capacity is allocated");
    for n in env.admin.nodes(None).await.unwrap() {
        assert!(
            n.allocated.vcpus <= n.capacity.vcpus,
            "{} over-committed: {:?}",
            n.name,
            n.allocated
        );
        assert_eq!(n.allocated.vcpus, n.capacity.vcpus, "{} left idle", n.name);
    }
    // Concurrent multi-sliver requests with anti-affinity: each needs both nodes.
    for s in env.admin.slices().await.unwrap() {
        env.admin.delete_slice(&s.name).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..10 {
        let admin = env.admin.clone();
        tasks.push(tokio::spawn(async move {
            admin
                .create_slice(&slice_req(
                    &format!("ams_a{i}"),
                    vec![PlacementGroup {
                        count: 2,
                        ..Default::default()
                    }],
                    AntiAffinity::Node,
                    false,
                ))
                .await
        }));
    }
    let ok = futures_count(tasks).await;
    assert_eq!(ok, 3, "min(4, 3) pairs fit");
    for n in env.admin.nodes(None).await.unwrap() {
        assert!(
            n.allocated.vcpus <= n.capacity.vcpus,
            "{} over-committed",
            n.name
        );
    }
}

async fn futures_count(
    tasks: Vec<
        tokio::task::JoinHandle<Result<PlacementReply, slicenet_authority::client::ClientError>>,
    >,
) -> usize {
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn adding_slivers_with_anti_affinity_avoids_the_slices_nodes() {
    let env = start(test_config()).await;
    three_sites(&env).await;
    env.admin
        .create_slice(&slice_req(
            "ams_x",
            vec![PlacementGroup {
                count: 1,
                sites: vec!["ams".into()],
                ..Default::default()
            }],
            AntiAffinity::Node,
            false,
        ))
        .await
        .unwrap();
    let added = env
        .admin
        .add_slivers(
            "ams_x",
            &AddSlivers {
                placement: PlacementRequest {
                    groups: vec![PlacementGroup {
                        count: 1,
                        sites: vec!["ams".into()],
                        ..Default::default()
                    }],
                    anti_affinity: AntiAffinity::Node,
                    ..Default::default()
                },
                dry_run: false,
            },
        )
        .await
        .unwrap();
    let slivers = added.slice.unwrap().slivers;
    assert_eq!(slivers.len(), 2);
    assert_ne!(slivers[0].node, slivers[1].node);
    let third = env
        .admin
        .add_slivers(
            "ams_x",
            &AddSlivers {
                placement: PlacementRequest {
                    groups: vec![PlacementGroup {
                        count: 1,
                        sites: vec!["ams".into()],
                        ..Default::default()
                    }],
                    anti_affinity: AntiAffinity::Node,
                    ..Default::default()
                },
                dry_run: true,
            },
        )
        .await
        .unwrap_err();
    assert!(
        third
            .to_string()
            .contains("already host a sliver of this slice"),
        "{third}"
    );
}
