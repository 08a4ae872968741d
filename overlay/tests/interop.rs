//! A plain Linux host joins an enclave as a gateway with stock tools only:
//! wireguard-go (via wg-quick) and the kernel's VXLAN device and bridge,
//! configured by the script `slicenet overlay export-gateway` prints.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use slicenet_overlay::config::DaemonConfig;
use slicenet_overlay::daemon::Daemon;
use slicenet_overlay::{control, gateway, PrivateKey};
use slicenet_testbed::{require_privileged, Testbed};

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs the node daemon from `config` inside site 1; returns what keeps it alive.
fn start_daemon(bed: &Testbed, config: &Path) -> (tokio::runtime::Runtime, Daemon) {
    let config = config.to_path_buf();
    bed.site(1)
        .ns()
        .spawn_thread(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let cfg = DaemonConfig::load(&config).expect("config loads");
            let daemon = rt
                .block_on(async { Daemon::start(&cfg) })
                .expect("daemon starts");
            (rt, daemon)
        })
        .join()
        .unwrap()
        .unwrap()
}

#[test]
fn a_stock_linux_host_joins_an_enclave_with_wireguard_go_and_kernel_vxlan() {
    let name = "a_stock_linux_host_joins_an_enclave_with_wireguard_go_and_kernel_vxlan";
    if !require_privileged(name) {
        return;
    }
    for tool in ["wireguard-go", "wg-quick", "wg", "bridge"] {
        if !have(tool) {
            assert!(
                std::env::var("SLICENET_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{tool} is missing (scripts/setup.sh installs it)"
            );
            println!("SKIPPED: {name}: {tool} is not installed (run scripts/setup.sh)");
            return;
        }
    }
    let bed = Testbed::builder(2).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node_key = PrivateKey::generate();
    node_key.save(&dir.path().join("node.key")).unwrap();
    let gw_key = PrivateKey::generate();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
private_key_file = "node.key"
listen = "198.18.0.1:{PORT}"
tunnel_address = "198.19.255.1"
control_socket = "control.sock"

[[peer]]
name = "gw"
public_key = "{}"
tunnel_address = "198.19.255.100"

[[enclave]]
vni = 42
members = ["gw"]

[[enclave.port]]
name = "vm"
kind = "tap"
ifname = "tap42"
address = "198.19.42.1/24"
"#,
            gw_key.public_key()
        ),
    )
    .unwrap();
    let (_rt, daemon) = start_daemon(&bed, &config);

    // The gateway side: exactly the script export-gateway prints.
    let interface = format!("sngw{}", std::process::id() % 100_000);
    let cfg = DaemonConfig::load(&config).unwrap();
    let export = gateway::export(&cfg, 42, "gw", Some(&gw_key), Some(&interface)).unwrap();
    assert_eq!(export.mtu, 1440);
    let script = dir.path().join("gateway.sh");
    std::fs::write(&script, export.script()).unwrap();
    let out = bed
        .site(2)
        .command("env")
        .arg(format!("CONF_DIR={}", dir.path().join("wg").display()))
        .args(["sh", "-x"])
        .arg(&script)
        .output()
        .unwrap();
    let cleanup = scopeguard(&interface);
    assert!(
        out.status.success(),
        "gateway script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ip(&[
        "-n",
        bed.site(2).ns().name(),
        "addr",
        "add",
        "198.19.42.2/24",
        "dev",
        "br42",
    ]);

    let ping = |site: usize, dst: &str| {
        bed.site(site)
            .command("ping")
            .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", dst])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        wait_until(Duration::from_secs(10), || ping(2, "198.19.42.1")),
        "the gateway reaches the slicenet port:\n{}",
        daemon.overlay.status().render()
    );
    assert!(
        ping(1, "198.19.42.2"),
        "the slicenet port reaches the gateway"
    );

    // And the daemon's control socket reports the gateway as a live peer.
    let status = control::query_status(&dir.path().join("control.sock")).unwrap();
    let gw = status.peer(&gw_key.public_key()).unwrap();
    assert!(gw.last_handshake_secs.is_some());
    assert!(gw.rx_frames >= 3 && gw.tx_frames >= 3, "{gw:?}");
    // During setup two things are expected: frames the TAP flooded before
    // the gateway first made contact had nowhere to go (the node does not
    // know its address yet), and the gateway's kernel may answer VXLAN that
    // arrives before its VXLAN device exists with an ICMP error (not VXLAN).
    // Nothing else may be dropped.
    let mut drops = data_drops(&status);
    drops.remove("peer_endpoint_unknown");
    drops.remove("inner_not_vxlan");
    assert!(drops.is_empty(), "{:?}", status.drops);
    assert!(status.render().contains("gw"));
    drop(cleanup);
}

/// Removes wireguard-go's UAPI socket (shared by all namespaces) at the end.
struct UapiSocket(String);

fn scopeguard(interface: &str) -> UapiSocket {
    UapiSocket(format!("/var/run/wireguard/{interface}.sock"))
}

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
