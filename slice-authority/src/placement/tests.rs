use super::*;
use crate::api::Near;

fn node(id: i64, site: &str, region: &str, vcpus: u32, memory_mib: u64) -> NodeView {
    NodeView {
        id,
        name: format!("{site}-n{id}"),
        site: site.into(),
        region: region.into(),
        country: match region {
            "eu" => "NL".into(),
            "asia" => "JP".into(),
            _ => "US".into(),
        },
        latitude: match region {
            "eu" => 52.0,
            "asia" => 35.0,
            _ => 39.0,
        },
        longitude: match region {
            "eu" => 5.0,
            "asia" => 139.0,
            _ => -77.0,
        },
        free: Resources {
            vcpus,
            memory_mib,
            disk_gib: 100,
            bandwidth_mbps: 1000,
        },
        state: NodeState::Up,
    }
}

fn group(count: u32) -> PlacementGroup {
    PlacementGroup {
        count,
        ..Default::default()
    }
}

fn registry() -> Vec<NodeView> {
    vec![
        node(1, "ams", "eu", 4, 4096),
        node(2, "ams", "eu", 4, 4096),
        node(3, "fra", "eu", 4, 4096),
        node(4, "nrt", "asia", 1, 128),
        node(5, "sin", "asia", 4, 4096),
        node(6, "iad", "na", 4, 4096),
    ]
}

#[test]
fn mixed_request_is_satisfied_with_anti_affinity() {
    let nodes = registry();
    let req = PlacementRequest {
        groups: vec![
            PlacementGroup {
                sites: vec!["ams".into()],
                ..group(2)
            },
            PlacementGroup {
                regions: vec!["eu".into()],
                ..group(1)
            },
            PlacementGroup {
                regions: vec!["asia".into()],
                ..group(1)
            },
        ],
        anti_affinity: AntiAffinity::Node,
        ..Default::default()
    };
    let out = place(&req, &nodes, &HashSet::new()).unwrap();
    assert_eq!(out.len(), 4);
    let names: Vec<_> = out.iter().map(|a| nodes[a.node].name.as_str()).collect();
    let distinct: HashSet<_> = names.iter().collect();
    assert_eq!(distinct.len(), 4, "{names:?}");
    for a in &out {
        match a.group {
            0 => assert_eq!(nodes[a.node].site, "ams"),
            1 => assert_eq!(nodes[a.node].site, "fra", "ams is full under anti-affinity"),
            _ => assert_eq!(nodes[a.node].name, "sin-n5", "nrt lacks memory"),
        }
    }
}

#[test]
fn unsatisfiable_group_is_named_with_reasons_and_alternatives() {
    let mut nodes = registry();
    nodes[4].state = NodeState::Down;
    let req = PlacementRequest {
        groups: vec![
            group(1),
            PlacementGroup {
                regions: vec!["asia".into()],
                ..group(2)
            },
        ],
        anti_affinity: AntiAffinity::Node,
        ..Default::default()
    };
    let err = place(&req, &nodes, &HashSet::new()).unwrap_err();
    assert_eq!(err.group, Some(1));
    assert_eq!(err.needed, 2);
    assert_eq!(err.available, 0);
    assert!(
        err.excluded
            .contains(&"1 down (not heard from recently)".to_string()),
        "{err:?}"
    );
    assert!(
        err.excluded.contains(&"1 lack free memory".to_string()),
        "{err:?}"
    );
    assert!(
        err.available_instead
            .iter()
            .any(|s| s == "region eu: 3 nodes at 2 sites"),
        "{err:?}"
    );
    assert!(err.message.contains("region=asia"), "{}", err.message);
    assert!(
        err.message.contains("Nothing was allocated"),
        "{}",
        err.message
    );
}

#[test]
fn without_anti_affinity_slivers_share_nodes_up_to_capacity() {
    let nodes = vec![node(1, "ams", "eu", 4, 1024)];
    let req = PlacementRequest {
        groups: vec![group(4)],
        ..Default::default()
    };
    let out = place(&req, &nodes, &HashSet::new()).unwrap();
    assert_eq!(out.len(), 4);
    let five = PlacementRequest {
        groups: vec![group(5)],
        ..Default::default()
    };
    let err = place(&five, &nodes, &HashSet::new()).unwrap_err();
    assert_eq!(err.available, 4);
}

#[test]
fn site_anti_affinity_uses_distinct_sites() {
    let nodes = registry();
    let req = PlacementRequest {
        groups: vec![PlacementGroup {
            regions: vec!["eu".into()],
            ..group(2)
        }],
        anti_affinity: AntiAffinity::Site,
        ..Default::default()
    };
    let out = place(&req, &nodes, &HashSet::new()).unwrap();
    let sites: HashSet<_> = out.iter().map(|a| nodes[a.node].site.as_str()).collect();
    assert_eq!(sites.len(), 2);
    let three = PlacementRequest {
        groups: vec![PlacementGroup {
            regions: vec!["eu".into()],
            ..group(3)
        }],
        anti_affinity: AntiAffinity::Site,
        ..Default::default()
    };
    assert_eq!(
        place(&three, &nodes, &HashSet::new())
            .unwrap_err()
            .available,
        2
    );
}

#[test]
fn radius_and_country_filters_select_by_location() {
    let nodes = registry();
    let near_tokyo = PlacementRequest {
        groups: vec![PlacementGroup {
            near: Some(Near {
                latitude: 35.68,
                longitude: 139.69,
                radius_km: 500.0,
            }),
            ..group(1)
        }],
        resources: Some(Resources {
            vcpus: 1,
            memory_mib: 64,
            disk_gib: 1,
            bandwidth_mbps: 1,
        }),
        ..Default::default()
    };
    let out = place(&near_tokyo, &nodes, &HashSet::new()).unwrap();
    assert_eq!(nodes[out[0].node].country, "JP");
    let us = PlacementRequest {
        groups: vec![PlacementGroup {
            countries: vec!["us".into()],
            ..group(1)
        }],
        ..Default::default()
    };
    assert_eq!(
        nodes[place(&us, &nodes, &HashSet::new()).unwrap()[0].node].site,
        "iad"
    );
}

#[test]
fn unknown_names_and_bad_resources_are_invalid_requests() {
    let nodes = registry();
    let bad_site = PlacementRequest {
        groups: vec![PlacementGroup {
            sites: vec!["xyz".into()],
            ..group(1)
        }],
        ..Default::default()
    };
    let err = place(&bad_site, &nodes, &HashSet::new()).unwrap_err();
    assert!(
        err.group.is_none() && err.message.contains("\"xyz\""),
        "{err:?}"
    );
    let zero = PlacementRequest {
        groups: vec![group(0)],
        ..Default::default()
    };
    assert!(place(&zero, &nodes, &HashSet::new()).is_err());
    let absurd = PlacementRequest {
        groups: vec![group(1)],
        resources: Some(Resources {
            vcpus: 100_000,
            memory_mib: 1,
            disk_gib: 0,
            bandwidth_mbps: 0,
        }),
        ..Default::default()
    };
    assert!(place(&absurd, &nodes, &HashSet::new()).is_err());
}

#[test]
fn occupied_nodes_are_avoided_under_node_anti_affinity() {
    let nodes = registry();
    let req = PlacementRequest {
        groups: vec![PlacementGroup {
            sites: vec!["ams".into()],
            ..group(1)
        }],
        anti_affinity: AntiAffinity::Node,
        ..Default::default()
    };
    let occupied: HashSet<usize> = [0].into();
    let out = place(&req, &nodes, &occupied).unwrap();
    assert_eq!(out[0].node, 1);
    let both: HashSet<usize> = [0, 1].into();
    let err = place(&req, &nodes, &both).unwrap_err();
    assert!(err.message.contains("anti-affinity"), "{}", err.message);
}

/// Brute force: does an assignment of slots to distinct nodes exist?
fn exists(slots: &[Vec<usize>], used: &mut Vec<bool>, k: usize) -> bool {
    if k == slots.len() {
        return true;
    }
    for &n in &slots[k] {
        if !used[n] {
            used[n] = true;
            if exists(slots, used, k + 1) {
                used[n] = false;
                return true;
            }
            used[n] = false;
        }
    }
    false
}

#[test]
fn node_anti_affinity_is_refused_only_when_no_assignment_exists() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let sites = ["a", "b", "c", "d"];
    for round in 0..400 {
        let nodes: Vec<NodeView> = (0..6)
            .map(|i| node(i, sites[rng.random_range(0..4)], "eu", 2, 1024))
            .collect();
        let groups: Vec<PlacementGroup> = (0..rng.random_range(1..4))
            .map(|_| {
                let mut s: Vec<String> = sites
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .map(|s| s.to_string())
                    .collect();
                if s.is_empty() {
                    s.push("a".into());
                }
                s.retain(|x| nodes.iter().any(|n| &n.site == x));
                PlacementGroup {
                    sites: s,
                    ..group(rng.random_range(1..3))
                }
            })
            .filter(|g| !g.sites.is_empty())
            .collect();
        if groups.is_empty() {
            continue;
        }
        let req = PlacementRequest {
            groups,
            anti_affinity: AntiAffinity::Node,
            ..Default::default()
        };
        let slots: Vec<Vec<usize>> = req
            .groups
            .iter()
            .flat_map(|g| {
                let c: Vec<usize> = (0..nodes.len())
                    .filter(|&i| g.sites.contains(&nodes[i].site))
                    .collect();
                std::iter::repeat_n(c, g.count as usize)
            })
            .collect();
        let possible = exists(&slots, &mut vec![false; nodes.len()], 0);
        let result = place(&req, &nodes, &HashSet::new());
        assert_eq!(
            result.is_ok(),
            possible,
            "round {round}: {req:?} {result:?}"
        );
        if let Ok(out) = result {
            let distinct: HashSet<_> = out.iter().map(|a| a.node).collect();
            assert_eq!(distinct.len(), out.len());
            for a in &out {
                assert!(req.groups[a.group].sites.contains(&nodes[a.node].site));
            }
        }
    }
}

#[test]
fn three_hundred_slivers_place_quickly_enough_for_a_unit_test() {
    // Correctness at scale (the timing figure lives in the benchmark).
    let regions = ["eu", "na", "asia"];
    let nodes: Vec<NodeView> = (0..1000)
        .map(|i| {
            node(
                i,
                &format!("s{}", i % 320),
                regions[(i % 3) as usize],
                8,
                16384,
            )
        })
        .collect();
    let req = PlacementRequest {
        groups: regions
            .iter()
            .map(|r| PlacementGroup {
                regions: vec![r.to_string()],
                ..group(100)
            })
            .collect(),
        anti_affinity: AntiAffinity::Node,
        ..Default::default()
    };
    let out = place(&req, &nodes, &HashSet::new()).unwrap();
    assert_eq!(out.len(), 300);
}
