//! Scenario `noc` end to end, short version: probes at three sites measure
//! a service and each other; the ams–nrt link is degraded and the summary
//! must name that link and nrt as the site whose users suffer.

use std::path::Path;

use slicenet_experiments::scenarios::noc::{self, Check, NocConfig, Period, ProbeRecord};
use slicenet_experiments::scenarios::{require_qemu, Settings};
use slicenet_testbed::require_privileged;

#[test]
fn noc_probes_find_the_degraded_link_and_the_site_behind_it() {
    let name = "noc_probes_find_the_degraded_link_and_the_site_behind_it";
    if !require_privileged(name) || !require_qemu(name) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let settings =
        Settings::quick(3, out.path(), Path::new(env!("CARGO_BIN_EXE_slicenet"))).unwrap();
    let config = NocConfig::new(settings);
    assert_eq!(
        (config.fault.a.as_str(), config.fault.b.as_str()),
        ("ams", "nrt")
    );
    let outcome = noc::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    noc::write_summary(&outcome, out.path()).unwrap();
    let report = &outcome.result;
    assert!(outcome.teardown.clean(), "{}", outcome.teardown);

    // Every probe measured every target with every check in every round:
    // pings to the service and 2 other probes, DNS, HTTP, traceroute.
    let rounds = config.baseline_rounds + config.fault_rounds;
    assert_eq!(report.records.len(), rounds * 3 * 6);
    let lines = std::fs::read_to_string(out.path().join("noc.jsonl")).unwrap();
    let parsed: Vec<ProbeRecord> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one record"))
        .collect();
    assert_eq!(parsed, report.records);

    // Before the fault everything answers: pings, the service's DNS name
    // resolves to its address, its page loads.
    for r in report
        .records
        .iter()
        .filter(|r| r.period == Period::Baseline)
    {
        assert_eq!(r.status, "ok", "baseline check failed: {r:?}");
        match &r.result {
            Check::Dns { answers, .. } => assert_eq!(answers, &vec![report.service.address]),
            Check::Http { res, .. } => assert_eq!(*res, 200),
            _ => {}
        }
    }

    // The fault adds 100 ms each way on ams–nrt: nrt's RTT to the service
    // grows by about 200 ms.
    let cell = |probe: &str, target: &str, check: &str| {
        report
            .cells
            .iter()
            .find(|c| c.probe == probe && c.target == target && c.check == check)
            .unwrap_or_else(|| panic!("no cell {probe} -> {target} ({check})"))
    };
    let nrt_svc = cell("nrt", "service", "ping");
    let grew = nrt_svc.fault.median_ms.unwrap() - nrt_svc.baseline.median_ms.unwrap();
    assert!(grew > 150.0, "nrt -> service RTT grew by {grew:.1} ms only");

    // The summary names the link and the site, and nothing else.
    let d = &report.diagnosis;
    assert_eq!(
        d.degraded_links,
        vec![("ams".to_string(), "nrt".to_string())],
        "{d:?}"
    );
    assert_eq!(d.problem_site.as_deref(), Some("nrt"), "{}", d.verdict);
    for c in report.cells.iter().filter(|c| c.degraded) {
        let mut ends = [c.probe.as_str(), c.target_site.as_str()];
        ends.sort();
        assert_eq!(ends, ["ams", "nrt"], "a healthy path was flagged: {c:?}");
    }
    assert!(cell("nrt", "service", "http").degraded);
    assert!(!cell("iad", "service", "http").degraded);

    let png = std::fs::read(out.path().join("noc.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "noc.png is not a PNG");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("noc-summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["report"]["diagnosis"]["problem_site"], "nrt");
    assert!(summary["phases"]["boot_s"].as_f64().unwrap() > 0.0);
}
