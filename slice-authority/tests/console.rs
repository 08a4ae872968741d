//! Console grants through the API, and the console handshake over a real
//! loopback TCP connection: who gets a grant, what it says, what the audit
//! log records, and that a node accepts exactly the grant's principal.

mod common;

use std::time::Duration;

use common::*;
use ed25519_dalek::SigningKey;
use slicenet_authority::api::*;
use slicenet_authority::client::ClientError;
use slicenet_authority::grant::handshake::{self, CLIENT_HELLO, HEADER_LEN, NODE_ANSWER};
use slicenet_authority::grant::{self, GrantError, Party};
use slicenet_authority::keys::PublicKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Reads one handshake frame from a stream: header, then the payload it announces.
async fn read_frame(stream: &mut TcpStream, magic: [u8; 4]) -> Result<Vec<u8>, GrantError> {
    let mut frame = vec![0; HEADER_LEN];
    stream.read_exact(&mut frame).await.unwrap();
    let len = handshake::payload_len(&frame, magic)?;
    frame.resize(HEADER_LEN + len, 0);
    stream.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
    Ok(frame)
}

/// A node's console port as the node daemon would run it: hello, check the
/// client's grant and proof, answer, then the "console" says hello.
async fn serve_one(
    listener: &TcpListener,
    authority: PublicKey,
    node: &SigningKey,
) -> Result<u64, GrantError> {
    let (mut stream, _) = listener.accept().await.unwrap();
    let nc = handshake::challenge();
    stream.write_all(&handshake::node_hello(&nc)).await.unwrap();
    let hello = read_frame(&mut stream, CLIENT_HELLO).await?;
    let now = slicenet_authority::auth::now_secs();
    match handshake::verify_client_hello(&hello, &authority, &PublicKey::of(node), &nc, now) {
        Ok(client) => {
            stream
                .write_all(&handshake::accept(node, &client, &nc))
                .await
                .unwrap();
            stream
                .write_all(format!("console of sliver {}\n", client.grant.sliver_id).as_bytes())
                .await
                .unwrap();
            Ok(client.grant.sliver_id)
        }
        Err(e) => {
            stream
                .write_all(&handshake::refuse(&e.to_string()))
                .await
                .unwrap();
            Err(e)
        }
    }
}

/// What `slicenet console` does with a grant reply: connect, prove, check the node, read.
async fn attach(
    reply: &ConsoleGrantReply,
    authority: &PublicKey,
    key: &SigningKey,
) -> Result<String, GrantError> {
    let bytes = reply.bytes().unwrap();
    // The node's key comes from the authority's signature, not from the reply around it.
    let g = grant::verify_grant_signature(&bytes, authority)?;
    let mut stream = TcpStream::connect(reply.console).await.unwrap();
    let mut hello = vec![0; HEADER_LEN + grant::CHALLENGE_LEN];
    stream.read_exact(&mut hello).await.unwrap();
    let nc = handshake::parse_node_hello(&hello)?;
    let client = handshake::client_hello(key, &bytes, &nc);
    stream.write_all(&client.bytes).await.unwrap();
    let answer = read_frame(&mut stream, NODE_ANSWER).await?;
    handshake::verify_node_answer(&answer, &g, &bytes, &nc, &client.client_challenge)?;
    let mut line = String::new();
    let mut console = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(10), console.read_line(&mut line))
        .await
        .expect("console line in time")
        .unwrap();
    Ok(line)
}

#[tokio::test]
async fn members_get_grants_their_node_accepts_and_others_do_not() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    let node_key = add_node(&env.admin, "ams-n1", "ams", caps(8, 8192)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    env.client(node_key.clone())
        .register_node(
            "ams-n1",
            &NodeRegistration {
                wg_public_key: PublicKey([5; 32]),
                endpoint: None,
                tunnel_address: None,
                software: None,
                capacity: None,
                console: Some(listener.local_addr().unwrap()),
            },
        )
        .await
        .unwrap();
    let alice_key = slicenet_authority::keys::generate();
    env.admin
        .create_principal(&NewPrincipal {
            name: "alice".into(),
            public_key: PublicKey::of(&alice_key),
            admin: false,
            sites: vec![SiteRole {
                site: "ams".into(),
                role: Role::User,
            }],
        })
        .await
        .unwrap();
    let alice = env.client(alice_key.clone());
    let outsider = add_user(&env, &env.admin, "mallory", false, &[("ams", Role::User)]).await;
    let created = env
        .admin
        .create_slice(&NewSlice {
            name: "ams_c".into(),
            description: String::new(),
            lease_secs: Some(3600),
            members: vec!["alice".into()],
            placement: Some(PlacementRequest {
                groups: vec![PlacementGroup {
                    count: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            dry_run: false,
        })
        .await
        .unwrap();
    let sliver = created.slice.unwrap().slivers[0].id;

    // The grant: signed by the authority, for this node, this sliver, alice's key, 60 s.
    let reply = alice.console_grant("ams_c", sliver).await.unwrap();
    let authority = env.admin.authority_info().await.unwrap().public_key;
    let g = grant::verify_grant(
        &reply.bytes().unwrap(),
        &authority,
        &PublicKey::of(&node_key),
        slicenet_authority::auth::now_secs(),
    )
    .unwrap();
    assert_eq!(
        (g.sliver_id, g.slice.as_str(), g.node.as_str()),
        (sliver, "ams_c", "ams-n1")
    );
    assert_eq!(
        (g.principal.as_str(), g.principal_key),
        ("alice", PublicKey::of(&alice_key))
    );
    assert_eq!(g.expires_at - g.issued_at, 60);
    assert_eq!(
        (reply.expires_at, reply.node_key),
        (g.expires_at, g.node_key)
    );
    assert_eq!(reply.console, listener.local_addr().unwrap());
    assert_eq!(reply.grant_id, g.grant_id_hex());

    // The handshake over TCP: the node accepts alice and proves itself.
    let node = serve_one(&listener, authority, &node_key);
    let (served, line) = tokio::join!(node, attach(&reply, &authority, &alice_key));
    assert_eq!(served, Ok(sliver));
    assert_eq!(line.unwrap(), format!("console of sliver {sliver}\n"));

    // Someone who got hold of alice's grant but not her key is refused, and told why.
    let node = serve_one(&listener, authority, &node_key);
    let thief = slicenet_authority::keys::generate();
    let (served, attached) = tokio::join!(node, attach(&reply, &authority, &thief));
    let refused = GrantError::BadPossession {
        party: Party::Principal,
    };
    assert_eq!(served, Err(refused.clone()));
    assert_eq!(
        attached,
        Err(GrantError::Refused {
            reason: refused.to_string()
        })
    );

    // Others get clear typed errors from the authority.
    let err = outsider.console_grant("ams_c", sliver).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(
        err.to_string().contains("may not open sliver consoles"),
        "{err}"
    );
    let err = env
        .client(node_key.clone())
        .console_grant("ams_c", sliver)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    let err = alice
        .console_grant("ams_c", sliver + 100)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, code, .. } if code == "not_found"),
        "{err}"
    );

    // The audit log names who got which grant.
    let audit = env.admin.audit(50).await.unwrap();
    let issued: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "sliver.console")
        .collect();
    assert_eq!(issued.len(), 1, "{audit:?}");
    assert_eq!(issued[0].actor, "alice");
    assert_eq!(issued[0].detail["grant_id"], reply.grant_id.as_str());
    assert_eq!(issued[0].detail["sliver"], sliver);
}

#[tokio::test]
async fn a_node_without_a_console_address_gets_no_grants() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_node(&env.admin, "ams-n1", "ams", caps(8, 8192)).await;
    let created = env
        .admin
        .create_slice(&NewSlice {
            name: "ams_c".into(),
            description: String::new(),
            lease_secs: Some(3600),
            members: vec![],
            placement: Some(PlacementRequest {
                groups: vec![PlacementGroup {
                    count: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            dry_run: false,
        })
        .await
        .unwrap();
    let sliver = created.slice.unwrap().slivers[0].id;
    let err = env.admin.console_grant("ams_c", sliver).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, code, .. } if code == "console_unavailable"),
        "{err}"
    );
    assert!(err.to_string().contains("ams-n1"), "{err}");
    let audit = env.admin.audit(50).await.unwrap();
    assert!(audit.iter().all(|e| e.action != "sliver.console"));
}
