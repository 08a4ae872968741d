//! The real binary: the whole lifecycle through the CLI, and a kill -9 in
//! the middle of writes that loses nothing acknowledged and leaves a
//! consistent database.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use slicenet_authority::api::*;
use slicenet_authority::client::Client;
use slicenet_authority::keys;

const BIN: &str = env!("CARGO_BIN_EXE_slicenet-authority");

/// Starts `slicenet-authority authority` on a free loopback port; returns the child and its URL.
fn spawn_authority(dir: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["authority", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line
                .split(" on ")
                .nth(1)
                .filter(|u| u.starts_with("http://"))
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.to_string());
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("authority printed its URL");
    (child, url)
}

struct Cli {
    url: String,
    key: std::path::PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("SLICENET_AUTHORITY", &self.url)
            .env("SLICENET_KEY", &self.key)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "slicenet-authority {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut with = args.to_vec();
        with.push("--json");
        serde_json::from_str(&self.ok(&with)).unwrap()
    }
}

#[test]
fn slice_lifecycle_through_the_cli_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_authority(&dir.path().join("data"));
    let admin = Cli {
        url: url.clone(),
        key: dir.path().join("data/admin.key"),
    };
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    admin.ok(&[
        "site",
        "add",
        "ams",
        "--region",
        "eu",
        "--country",
        "NL",
        "--lat",
        "52.37",
        "--lon",
        "4.90",
    ]);
    admin.ok(&[
        "site",
        "add",
        "gru",
        "--region",
        "sa",
        "--country",
        "BR",
        "--lat",
        "-23.55",
        "--lon",
        "-46.63",
    ]);
    for (node, site) in [("ams-n1", "ams"), ("ams-n2", "ams"), ("gru-n1", "gru")] {
        let key = p(&format!("{node}.key"));
        let generated = admin.json(&["keygen", &key]);
        assert_eq!(generated["public_key"].as_str().unwrap().len(), 44);
        admin.ok(&[
            "node",
            "add",
            node,
            "--site",
            site,
            "--node-key",
            &format!("{key}.pub"),
            "--vcpus",
            "4",
            "--memory",
            "4G",
        ]);
    }
    admin.ok(&["keygen", &p("alice.key")]);
    admin.ok(&[
        "user",
        "add",
        "alice",
        "--public-key",
        &p("alice.key.pub"),
        "--pi",
        "ams",
    ]);
    let alice = Cli {
        url: url.clone(),
        key: dir.path().join("alice.key"),
    };
    let table = alice.ok(&["node", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("gru-n1"),
        "{table}"
    );

    let dry = alice.json(&[
        "slice",
        "create",
        "ams_cli",
        "--place",
        "2:site=ams",
        "--place",
        "1:near=-23.5/-46.6/100",
        "--anti-affinity",
        "node",
        "--dry-run",
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["placement"].as_array().unwrap().len(), 3);
    assert_eq!(alice.json(&["slice", "list"]).as_array().unwrap().len(), 0);

    let created = alice.json(&[
        "slice",
        "create",
        "ams_cli",
        "--place",
        "2:site=ams",
        "--place",
        "1:region=sa",
        "--anti-affinity",
        "node",
        "--lease",
        "1d",
        "--memory",
        "512M",
    ]);
    let slivers: Vec<String> = created["slice"]["slivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].to_string())
        .collect();
    assert_eq!(slivers.len(), 3);

    let mut args = vec!["enclave", "create", "ams_cli", "lan"];
    for s in &slivers {
        args.extend(["--sliver", s.as_str()]);
    }
    let enclave = alice.json(&args);
    assert_eq!(enclave["members"].as_array().unwrap().len(), 3);
    let export: serde_json::Value =
        serde_json::from_str(&alice.ok(&["enclave", "export", "ams_cli", "lan"])).unwrap();
    assert_eq!(export["vni"], enclave["vni"]);

    let renewed = alice.json(&["slice", "renew", "ams_cli", "--lease", "365d"]);
    assert_eq!(renewed["capped"], true);
    let human = alice.ok(&["slice", "renew", "ams_cli", "--lease", "2d"]);
    assert!(human.contains("renewed for 2d"), "{human}");

    alice.ok(&["sliver", "remove", "ams_cli", &slivers[0]]);
    let shown = alice.json(&["slice", "show", "ams_cli"]);
    assert_eq!(shown["slivers"].as_array().unwrap().len(), 2);

    // A failure is a sentence on stderr with a non-zero exit, never a backtrace.
    let out = alice.run(&[
        "slice",
        "create",
        "ams_big",
        "--place",
        "9:site=gru",
        "--anti-affinity",
        "node",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot place group 0"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    let out = Cli {
        url: url.clone(),
        key: dir.path().join("missing.key"),
    }
    .run(&["site", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));

    alice.ok(&["slice", "delete", "ams_cli"]);
    let nodes = admin.json(&["node", "list"]);
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["slivers"] == 0),
        "{nodes}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, url) = spawn_authority(&data);
    let admin = Client::new(
        &url,
        keys::read_secret_key(&data.join("admin.key")).unwrap(),
    );
    add_site(&admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_node(&admin, "ams-n1", "ams", caps(1000, 1 << 20)).await;

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (admin, acked) = (admin.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..500 {
                let name = format!("ams_w{w}_{i}");
                let req = NewSlice {
                    name: name.clone(),
                    description: String::new(),
                    lease_secs: Some(3600),
                    members: vec![],
                    placement: Some(PlacementRequest {
                        groups: vec![PlacementGroup {
                            count: 2,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    dry_run: false,
                };
                match admin.create_slice(&req).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return, // the authority died
                }
            }
        }));
    }
    eventually(
        "40 acknowledged writes",
        Duration::from_secs(60),
        || async { (acked.lock().unwrap().len() >= 40).then_some(()) },
    )
    .await;
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let (mut child, url) = spawn_authority(&data);
    let admin = Client::new(
        &url,
        keys::read_secret_key(&data.join("admin.key")).unwrap(),
    );
    let slices = admin.slices().await.unwrap();
    for name in &acked {
        assert!(
            slices.iter().any(|s| &s.name == name),
            "acknowledged slice {name} was lost"
        );
    }
    // All or nothing: every slice that exists has both of its slivers.
    assert!(
        slices.iter().all(|s| s.slivers == 2),
        "a half-written slice survived"
    );
    let node = admin.node("ams-n1").await.unwrap();
    assert_eq!(node.slivers as usize, 2 * slices.len());
    assert_eq!(node.allocated.vcpus as usize, 2 * slices.len());

    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data.join("authority.db"))
                .read_only(true),
        )
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let fk: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(&db)
            .await
            .unwrap_or_default();
    assert!(fk.is_empty(), "foreign key violations: {fk:?}");
    let tickets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tickets WHERE revoked = 0")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        tickets as usize,
        2 * slices.len(),
        "every sliver has its ticket"
    );
    let audited: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'slice.create'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        audited as usize,
        slices.len(),
        "every committed creation is audited, nothing else"
    );
    let drifted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes n WHERE used_vcpus != (SELECT COALESCE(SUM(vcpus), 0) FROM slivers WHERE node_id = n.id) OR used_memory_mib != (SELECT COALESCE(SUM(memory_mib), 0) FROM slivers WHERE node_id = n.id) OR sliver_count != (SELECT COUNT(*) FROM slivers WHERE node_id = n.id)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        drifted, 0,
        "every node's usage equals its slivers' reservations"
    );
    // And it keeps working.
    admin.delete_slice(&slices[0].name).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
