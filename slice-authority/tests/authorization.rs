//! The authorisation matrix: every role tries every operation; allowed ones
//! succeed, the others get 403 with a message naming who may.

mod common;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::client::{Client, ClientError};
use slicenet_authority::keys::{self, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    SiteCreate,
    SiteRemove,
    NodeCreate,
    NodeDisable,
    NodeRemove,
    UserCreate,
    UserRemove,
    SliceCreate,
    SliceRenew,
    SliceMembers,
    SliverAdd,
    SliverRemove,
    EnclaveCreate,
    SliceDelete,
    AuditRead,
    TicketsRead,
    NodeRegister,
    SitesList,
    ConsoleGrant,
}

const ROLES: [&str; 6] = ["admin", "pi", "member", "outsider", "other_pi", "node"];

/// Which roles may do what.
fn allowed(op: Op) -> &'static [&'static str] {
    use Op::*;
    match op {
        SiteCreate | SiteRemove | UserRemove | AuditRead => &["admin"],
        NodeCreate | NodeDisable | NodeRemove | UserCreate | SliceCreate | SliceMembers
        | SliceDelete => &["admin", "pi"],
        SliceRenew | SliverAdd | SliverRemove | EnclaveCreate | ConsoleGrant => {
            &["admin", "pi", "member"]
        }
        TicketsRead => &["admin", "node"],
        NodeRegister => &["node"],
        SitesList => &["admin", "pi", "member", "outsider", "other_pi", "node"],
    }
}

fn one_at(site: &str) -> PlacementRequest {
    PlacementRequest {
        groups: vec![PlacementGroup {
            count: 1,
            sites: vec![site.into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn attempt(op: Op, who: &Client, i: usize, admin: &Client) -> Result<(), ClientError> {
    match op {
        Op::SiteCreate => who
            .create_site(&NewSite {
                name: format!("new{i}"),
                region: "eu".into(),
                country: "NL".into(),
                latitude: 0.0,
                longitude: 0.0,
                description: String::new(),
            })
            .await
            .map(drop),
        Op::SiteRemove => {
            add_site(admin, &format!("rm{i}"), "eu", "NL", 0.0, 0.0).await;
            who.remove_site(&format!("rm{i}")).await.map(drop)
        }
        Op::NodeCreate => who
            .create_node(&NewNode {
                name: format!("ams-new{i}"),
                site: "ams".into(),
                public_key: PublicKey::of(&keys::generate()),
                capacity: caps(1, 512),
            })
            .await
            .map(drop),
        Op::NodeDisable => {
            let r = who.set_node_enabled("ams-n2", false).await.map(drop);
            admin.set_node_enabled("ams-n2", true).await.unwrap();
            r
        }
        Op::NodeRemove => {
            add_node(admin, &format!("ams-rm{i}"), "ams", caps(1, 512)).await;
            who.remove_node(&format!("ams-rm{i}")).await.map(drop)
        }
        Op::UserCreate => who
            .create_principal(&NewPrincipal {
                name: format!("user{i}"),
                public_key: PublicKey::of(&keys::generate()),
                admin: false,
                sites: vec![SiteRole {
                    site: "ams".into(),
                    role: Role::User,
                }],
            })
            .await
            .map(drop),
        Op::UserRemove => {
            admin
                .create_principal(&NewPrincipal {
                    name: format!("gone{i}"),
                    public_key: PublicKey::of(&keys::generate()),
                    admin: false,
                    sites: vec![],
                })
                .await
                .unwrap();
            who.remove_principal(&format!("gone{i}")).await.map(drop)
        }
        Op::SliceCreate => who
            .create_slice(&NewSlice {
                name: format!("ams_new{i}"),
                description: String::new(),
                lease_secs: Some(600),
                members: vec![],
                placement: None,
                dry_run: false,
            })
            .await
            .map(drop),
        Op::SliceRenew => who
            .renew_slice("ams_x", std::time::Duration::from_secs(3600))
            .await
            .map(drop),
        Op::SliceMembers => who
            .change_members(
                "ams_x",
                &MemberChange {
                    add: vec!["outsider".into()],
                    remove: vec![],
                },
            )
            .await
            .map(drop),
        Op::SliverAdd => who
            .add_slivers(
                "ams_x",
                &AddSlivers {
                    placement: one_at("ams"),
                    dry_run: false,
                },
            )
            .await
            .map(drop),
        Op::SliverRemove => {
            let added = admin
                .add_slivers(
                    "ams_x",
                    &AddSlivers {
                        placement: one_at("ams"),
                        dry_run: false,
                    },
                )
                .await
                .unwrap();
            let id = added
                .slice
                .unwrap()
                .slivers
                .iter()
                .map(|s| s.id)
                .max()
                .unwrap();
            who.remove_sliver("ams_x", id).await.map(drop)
        }
        Op::EnclaveCreate => who
            .create_enclave(
                "ams_x",
                &NewEnclave {
                    name: format!("e{i}"),
                    slivers: vec![],
                    subnet: None,
                },
            )
            .await
            .map(drop),
        Op::SliceDelete => {
            admin
                .create_slice(&NewSlice {
                    name: format!("ams_del{i}"),
                    description: String::new(),
                    lease_secs: Some(600),
                    members: vec!["member".into()],
                    placement: Some(one_at("ams")),
                    dry_run: false,
                })
                .await
                .unwrap();
            who.delete_slice(&format!("ams_del{i}")).await.map(drop)
        }
        Op::AuditRead => who.audit(10).await.map(drop),
        Op::TicketsRead => who
            .poll_tickets("ams-n1", 0, std::time::Duration::ZERO)
            .await
            .map(drop),
        Op::NodeRegister => who
            .register_node(
                "ams-n1",
                &NodeRegistration {
                    wg_public_key: PublicKey([5; 32]),
                    endpoint: None,
                    tunnel_address: None,
                    software: None,
                    capacity: None,
                    console: Some("127.0.0.1:7000".parse().unwrap()),
                },
            )
            .await
            .map(drop),
        Op::SitesList => who.sites().await.map(drop),
        Op::ConsoleGrant => {
            // On ams-n1, which registered a console address.
            let mut on_n1 = one_at("ams");
            on_n1.groups[0].nodes = vec!["ams-n1".into()];
            let added = admin
                .add_slivers(
                    "ams_x",
                    &AddSlivers {
                        placement: on_n1,
                        dry_run: false,
                    },
                )
                .await
                .unwrap();
            let id = added
                .slice
                .unwrap()
                .slivers
                .iter()
                .map(|s| s.id)
                .max()
                .unwrap();
            who.console_grant("ams_x", id).await.map(drop)
        }
    }
}

#[tokio::test]
async fn every_role_may_do_exactly_what_its_role_allows() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_site(&env.admin, "nrt", "asia", "JP", 35.68, 139.69).await;
    let node_key = add_node(&env.admin, "ams-n1", "ams", caps(64, 65536)).await;
    add_node(&env.admin, "ams-n2", "ams", caps(64, 65536)).await;
    let pi = add_user(&env, &env.admin, "pi", false, &[("ams", Role::Pi)]).await;
    let member = add_user(&env, &env.admin, "member", false, &[("ams", Role::User)]).await;
    let outsider = add_user(&env, &env.admin, "outsider", false, &[("ams", Role::User)]).await;
    let other_pi = add_user(&env, &env.admin, "other_pi", false, &[("nrt", Role::Pi)]).await;
    let node = env.client(node_key);
    node.register_node(
        "ams-n1",
        &NodeRegistration {
            wg_public_key: PublicKey([5; 32]),
            endpoint: None,
            tunnel_address: None,
            software: None,
            capacity: None,
            console: Some("127.0.0.1:7000".parse().unwrap()),
        },
    )
    .await
    .unwrap();
    pi.create_slice(&NewSlice {
        name: "ams_x".into(),
        description: String::new(),
        lease_secs: Some(3600),
        members: vec!["member".into()],
        placement: Some(one_at("ams")),
        dry_run: false,
    })
    .await
    .unwrap();
    let clients = [&env.admin, &pi, &member, &outsider, &other_pi, &node];
    use Op::*;
    let ops = [
        SiteCreate,
        SiteRemove,
        NodeCreate,
        NodeDisable,
        NodeRemove,
        UserCreate,
        UserRemove,
        SliceCreate,
        SliceRenew,
        SliceMembers,
        SliverAdd,
        SliverRemove,
        EnclaveCreate,
        SliceDelete,
        AuditRead,
        TicketsRead,
        NodeRegister,
        SitesList,
        ConsoleGrant,
    ];
    let mut failures = Vec::new();
    let mut i = 0;
    for op in ops {
        for (role, who) in ROLES.iter().zip(clients) {
            i += 1;
            let expect = allowed(op).contains(role);
            let result = attempt(op, who, i, &env.admin).await;
            match (&result, expect) {
                (Ok(()), true) => {}
                (
                    Err(ClientError::Api {
                        status: 403,
                        message,
                        ..
                    }),
                    false,
                ) => {
                    assert!(
                        message.contains("may"),
                        "{op:?}/{role}: unhelpful message {message}"
                    );
                }
                _ => failures.push(format!(
                    "{op:?} by {role}: expected {}, got {result:?}",
                    if expect { "success" } else { "403" }
                )),
            }
            if op == SliceMembers && expect {
                // Undo, so the next role's attempt is a real change again.
                env.admin
                    .change_members(
                        "ams_x",
                        &MemberChange {
                            add: vec![],
                            remove: vec!["outsider".into()],
                        },
                    )
                    .await
                    .unwrap();
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorisation matrix violations:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_pi_may_add_only_plain_users_of_their_own_site() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_site(&env.admin, "nrt", "asia", "JP", 35.68, 139.69).await;
    let pi = add_user(&env, &env.admin, "pi", false, &[("ams", Role::Pi)]).await;
    for (admin, site, role) in [
        (true, "ams", Role::User),
        (false, "ams", Role::Pi),
        (false, "nrt", Role::User),
    ] {
        let err = pi
            .create_principal(&NewPrincipal {
                name: "x".into(),
                public_key: PublicKey::of(&keys::generate()),
                admin,
                sites: vec![SiteRole {
                    site: site.into(),
                    role,
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(403), "{admin} {site} {role}: {err}");
    }
}
