//! Scenario `enclave` end to end, short version: a security enclave over
//! three sites is isolated from another slice, every scanner finds exactly
//! the service's open ports, removing a member cuts it off within a
//! second, and the audit log says who did what.

use std::path::Path;

use slicenet_experiments::scenarios::enclave::{self, EnclaveConfig};
use slicenet_experiments::scenarios::{require_qemu, Settings};
use slicenet_testbed::require_privileged;

#[test]
fn enclave_is_isolated_scanned_revoked_and_audited() {
    let name = "enclave_is_isolated_scanned_revoked_and_audited";
    if !require_privileged(name) || !require_qemu(name) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let settings =
        Settings::quick(3, out.path(), Path::new(env!("CARGO_BIN_EXE_slicenet"))).unwrap();
    let config = EnclaveConfig::new(settings);
    let outcome = enclave::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    enclave::write_summary(&outcome, out.path()).unwrap();
    let report = &outcome.result;
    assert!(outcome.teardown.clean(), "{}", outcome.teardown);

    // The service listens where it was told to.
    assert_eq!(report.service.listening, config.open_ports);

    // Another slice's slivers at every site reach their own enclave but
    // nothing of the service, even from an address inside its subnet.
    assert_eq!(report.isolation.len(), 3);
    for r in &report.isolation {
        assert!(r.own_enclave_reachable, "control failed: {r:?}");
        assert!(r.isolated(), "another slice reached the service: {r:?}");
    }

    // Every scanner, from every site, finds exactly the open ports.
    assert_eq!(report.scans.len(), 3);
    for s in &report.scans {
        assert_eq!(s.scanned, 1024, "{s:?}");
        assert_eq!(s.open, report.service.listening, "scanner at {}", s.site);
    }

    // Removing the last scanner cuts its access within 1 s; the others keep theirs.
    let r = &report.revocation;
    assert!(r.replies_before >= config.stream_warmup, "{r:?}");
    assert!(
        r.cut_within_ms < 1000.0,
        "access lasted {:.0} ms",
        r.cut_within_ms
    );
    assert!(
        r.rescan_revoked.is_empty(),
        "revoked scanner still reaches {:?}",
        r.rescan_revoked
    );
    assert_eq!(r.rescan_member, report.service.listening);

    // The audit log names who did what, in order.
    let actions: Vec<(String, String, String)> = report
        .audit
        .iter()
        .map(|e| (e.actor.clone(), e.action.clone(), e.target.clone()))
        .collect();
    let expected = [
        ("alice", "slice.create", "ams_secops"),
        ("bob", "sliver.add", "ams_secops"),
        ("bob", "enclave.create", "ams_secops/sec"),
        ("carol", "slice.create", "iad_tenant"),
        ("alice", "enclave.remove", "ams_secops/sec"),
    ];
    let mut at = 0;
    for (actor, action, target) in expected {
        let found = actions[at..]
            .iter()
            .position(|(a, b, c)| a == actor && b == action && c == target)
            .unwrap_or_else(|| panic!("no {actor} {action} {target} in order in {actions:?}"));
        at += found + 1;
    }

    for png in ["enclave-revocation.png", "enclave-reach.png"] {
        let bytes = std::fs::read(out.path().join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    assert!(out.path().join("enclave.json").is_file());
}
