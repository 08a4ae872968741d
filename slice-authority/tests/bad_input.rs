//! Bad input gets a 4xx with a message that says what is wrong, and
//! nothing is half-written.

mod common;

use common::*;
use slicenet_authority::config::Config;
use slicenet_authority::keys;

async fn audit_len(env: &Env) -> usize {
    env.admin.audit(10_000).await.unwrap().len()
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_change_nothing() {
    let env = start(Config {
        max_body_bytes: 4096,
        ..test_config()
    })
    .await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_node(&env.admin, "ams-n1", "ams", caps(4, 4096)).await;
    let url = env.url();
    let key = keys::read_secret_key(&env.authority.admin_key_path).unwrap();
    let before = audit_len(&env).await;

    // (method, path, body, status, code, a phrase the message must contain)
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("POST", "/v1/sites", b"{not json".to_vec(), 400, "invalid_json", "not valid JSON"),
        ("POST", "/v1/sites", br#"{"name":"fra","region":"eu","country":"DE","latitude":50,"longitude":8,"colour":"red"}"#.to_vec(), 400, "invalid_json", "unknown field `colour`"),
        ("POST", "/v1/sites", br#"{"name":"Bad Name","region":"eu","country":"DE","latitude":50,"longitude":8}"#.to_vec(), 400, "invalid_request", "site name"),
        ("POST", "/v1/sites", br#"{"name":"fra","region":"eu","country":"DE","latitude":500,"longitude":8}"#.to_vec(), 400, "invalid_request", "not on Earth"),
        ("POST", "/v1/sites", br#"{"name":"ams","region":"eu","country":"NL","latitude":50,"longitude":8}"#.to_vec(), 409, "conflict", "already exists"),
        ("POST", "/v1/nodes", br#"{"name":"ams-n2","site":"ams","public_key":"AAAA","capacity":{"vcpus":1,"memory_mib":512}}"#.to_vec(), 400, "invalid_json", "32 bytes"),
        ("POST", "/v1/slices", br#"{"name":"ams_x","placement":{"groups":[{"count":1}],"resources":{"vcpus":-1,"memory_mib":256}}}"#.to_vec(), 400, "invalid_json", "-1"),
        ("POST", "/v1/slices", br#"{"name":"ams_x","placement":{"groups":[{"count":1}],"resources":{"vcpus":1,"memory_mib":99999999999}}}"#.to_vec(), 400, "invalid_placement", "units"),
        ("POST", "/v1/slices", br#"{"name":"ams_x","placement":{"groups":[{"count":1,"sites":["zzz"]}]}}"#.to_vec(), 400, "invalid_placement", "\"zzz\""),
        ("POST", "/v1/slices", br#"{"name":"ams_x","placement":{"groups":[{"count":5}],"resources":{"vcpus":1,"memory_mib":256}}}"#.to_vec(), 409, "placement_failed", "Nothing was allocated"),
        ("POST", "/v1/slices", br#"{"name":"ams_x","members":["nobody"]}"#.to_vec(), 404, "not_found", "user nobody"),
        ("POST", "/v1/slices", br#"{"name":"xyz_x"}"#.to_vec(), 404, "not_found", "site xyz"),
        ("POST", "/v1/slices", br#"{"name":"ams_x","lease_secs":0}"#.to_vec(), 400, "invalid_request", "at least 1 second"),
        ("POST", "/v1/sites", vec![b' '; 5000], 413, "body_too_large", "4096"),
        ("GET", "/v2/nothing", vec![], 404, "no_such_endpoint", "/v1"),
        ("PUT", "/v1/sites", vec![], 405, "method_not_allowed", "HTTP method"),
        ("DELETE", "/v1/slices/ams_x/slivers/abc", vec![], 400, "invalid_request", "numbers"),
        ("GET", "/v1/audit?limit=lots", vec![], 400, "invalid_request", "query"),
    ];
    for (method, path, body, status, expected_code, needle) in cases {
        let (got, reply) = raw(&url, &key, method, path, &body).await;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            (got, code(&reply)),
            (status, expected_code),
            "{method} {path}: {reply}"
        );
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} lacks {needle:?}"
        );
    }
    // The registry is exactly as before: one site, one node, no slices, no new audit entries.
    assert_eq!(env.admin.sites().await.unwrap().len(), 1);
    assert_eq!(env.admin.nodes(None).await.unwrap().len(), 1);
    assert!(env.admin.slices().await.unwrap().is_empty());
    assert_eq!(audit_len(&env).await, before);
}

#[tokio::test]
async fn a_failing_enclave_request_leaves_no_enclave_behind() {
    let env = start(test_config()).await;
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_node(&env.admin, "ams-n1", "ams", caps(4, 4096)).await;
    let created = env
        .admin
        .create_slice(&slicenet_authority::api::NewSlice {
            name: "ams_e".into(),
            description: String::new(),
            lease_secs: None,
            members: vec![],
            placement: Some(slicenet_authority::api::PlacementRequest {
                groups: vec![slicenet_authority::api::PlacementGroup {
                    count: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            dry_run: false,
        })
        .await
        .unwrap();
    let good = created.slice.unwrap().slivers[0].id;
    // The second sliver does not exist: the whole request fails, the first is not added.
    let err = env
        .admin
        .create_enclave(
            "ams_e",
            &slicenet_authority::api::NewEnclave {
                name: "lan".into(),
                slivers: vec![good, 999],
                subnet: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(env.admin.enclaves("ams_e").await.unwrap().is_empty());
    let err = env
        .admin
        .create_enclave(
            "ams_e",
            &slicenet_authority::api::NewEnclave {
                name: "lan".into(),
                slivers: vec![good, good],
                subnet: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = env
        .admin
        .create_enclave(
            "ams_e",
            &slicenet_authority::api::NewEnclave {
                name: "lan".into(),
                slivers: vec![],
                subnet: Some("198.19.255.0/24".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tunnel address pool"), "{err}");
    assert!(env.admin.enclaves("ams_e").await.unwrap().is_empty());
}
