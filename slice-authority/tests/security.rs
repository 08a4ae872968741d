//! Forged, tampered, stale, replayed and unknown requests are rejected with
//! clear errors, also across a restart; tickets from the API are rejected
//! once tampered with, signed by another key, or expired.

mod common;

use std::time::Duration;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::auth::{now_ms, sign_request, sign_request_at};
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::server::Authority;
use slicenet_authority::ticket::{self, TicketError};

const SITE: &[u8] =
    br#"{"name":"ams","region":"eu","country":"NL","latitude":52.37,"longitude":4.9}"#;

fn admin_key(env: &Env) -> ed25519_dalek::SigningKey {
    keys::read_secret_key(&env.authority.admin_key_path).unwrap()
}

#[tokio::test]
async fn forged_tampered_stale_and_unknown_requests_are_rejected() {
    let env = start(test_config()).await;
    let url = env.url();
    let admin = admin_key(&env);

    // Forged: claims the admin's key, signed with another.
    let mut forged = sign_request(&keys::generate(), "POST", "/v1/sites", SITE);
    forged.key = PublicKey::of(&admin);
    let (status, body) = send_signed(&url, &forged, "POST", "/v1/sites", SITE).await;
    assert_eq!((status, code(&body)), (401, "bad_signature"), "{body}");

    // Tampered: a signed body, another body sent.
    let h = sign_request(&admin, "POST", "/v1/sites", SITE);
    let other = SITE
        .to_vec()
        .iter()
        .map(|b| if *b == b'a' { b'b' } else { *b })
        .collect::<Vec<u8>>();
    let (status, body) = send_signed(&url, &h, "POST", "/v1/sites", &other).await;
    assert_eq!((status, code(&body)), (401, "bad_signature"), "{body}");
    // Tampered path: signed for one endpoint, sent to another.
    let (status, _) = send_signed(&url, &h, "DELETE", "/v1/sites/ams", b"").await;
    assert_eq!(status, 401);

    // Stale: signed ten minutes ago.
    let stale = sign_request_at(
        &admin,
        "POST",
        "/v1/sites",
        SITE,
        now_ms() - 600_000,
        "ab".repeat(16),
    );
    let (status, body) = send_signed(&url, &stale, "POST", "/v1/sites", SITE).await;
    assert_eq!((status, code(&body)), (401, "stale_request"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("clock"),
        "{body}"
    );

    // Unknown key.
    let (status, body) = raw(&url, &keys::generate(), "GET", "/v1/sites", b"").await;
    assert_eq!((status, code(&body)), (401, "unknown_key"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slicenet user add"),
        "{body}"
    );

    // Unsigned mutation.
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/sites"))
        .body(SITE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Nothing of the above wrote anything.
    assert!(env.admin.sites().await.unwrap().is_empty());
}

#[tokio::test]
async fn replayed_mutations_are_rejected_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open(dir.path(), Some(test_config()))
        .await
        .unwrap();
    let admin = keys::read_secret_key(&authority.admin_key_path()).unwrap();
    let running = authority
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = running.url();
    let h = sign_request(&admin, "POST", "/v1/sites", SITE);
    let (status, _) = send_signed(&url, &h, "POST", "/v1/sites", SITE).await;
    assert_eq!(status, 201);
    let (status, body) = send_signed(&url, &h, "POST", "/v1/sites", SITE).await;
    assert_eq!((status, code(&body)), (401, "replayed_request"), "{body}");
    running.shutdown().await;

    let running = Authority::open(dir.path(), Some(test_config()))
        .await
        .unwrap()
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (status, body) = send_signed(&running.url(), &h, "POST", "/v1/sites", SITE).await;
    assert_eq!((status, code(&body)), (401, "replayed_request"), "{body}");
    running.shutdown().await;
}

#[tokio::test]
async fn tickets_from_the_api_are_rejected_when_forged_tampered_or_expired() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    let node_key = add_node(&env.admin, "ams-n1", "ams", caps(4, 4096)).await;
    env.admin
        .create_slice(&NewSlice {
            name: "ams_t".into(),
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
    let batch = env
        .client(node_key.clone())
        .poll_tickets("ams-n1", 0, Duration::ZERO)
        .await
        .unwrap();
    let bytes = batch.tickets[0].bytes().unwrap();
    let authority = env.admin.authority_info().await.unwrap().public_key;
    let now = slicenet_authority::auth::now_secs();
    let t = ticket::verify_for_node(&bytes, &authority, &PublicKey::of(&node_key), now).unwrap();

    let mut tampered = bytes.clone();
    tampered[40] ^= 0xff;
    assert_eq!(
        ticket::verify(&tampered, &authority, now),
        Err(TicketError::BadSignature)
    );
    let forged = ticket::sign(&t, &keys::generate());
    assert_eq!(
        ticket::verify(&forged, &authority, now),
        Err(TicketError::BadSignature)
    );
    assert!(matches!(
        ticket::verify(&bytes, &authority, t.expires_at),
        Err(TicketError::Expired { .. })
    ));
    assert!(matches!(
        ticket::verify(&bytes[..bytes.len() - 1], &authority, now),
        Err(TicketError::LengthMismatch { .. })
    ));
    // Another node cannot use it.
    assert!(matches!(
        ticket::verify_for_node(&bytes, &authority, &PublicKey::of(&keys::generate()), now),
        Err(TicketError::WrongNode { .. })
    ));
}
