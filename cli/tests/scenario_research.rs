//! Scenario `research` end to end, short version: slivers placed one per
//! region, a ping matrix and iperf3 inside their enclave, results saved
//! with the slice description for a repeat, lease renewal and expiry.

use std::path::Path;

use slicenet_experiments::catalog;
use slicenet_experiments::scenarios::research::{self, ResearchConfig};
use slicenet_experiments::scenarios::{require_qemu, Settings};
use slicenet_testbed::require_privileged;

#[test]
fn research_slice_is_placed_by_region_measured_saved_and_expires() {
    let name = "research_slice_is_placed_by_region_measured_saved_and_expires";
    if !require_privileged(name) || !require_qemu(name) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let settings =
        Settings::quick(3, out.path(), Path::new(env!("CARGO_BIN_EXE_slicenet"))).unwrap();
    let config = ResearchConfig::new(settings.clone());
    let outcome = research::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    let saved = research::write_results(&outcome, &config).unwrap();
    let record = &outcome.result;
    assert!(outcome.teardown.clean(), "{}", outcome.teardown);

    // One sliver in each region, each at a different site.
    let mut regions: Vec<&str> = record.placement.iter().map(|p| p.region.as_str()).collect();
    regions.sort();
    assert_eq!(regions, vec!["asia", "eu", "na"]);
    let mut sites: Vec<&str> = record.placement.iter().map(|p| p.site.as_str()).collect();
    sites.sort();
    sites.dedup();
    assert_eq!(sites.len(), 3);

    // Every pair answered, and no RTT is below what the emulated WAN link
    // between the two sites imposes: the traffic crossed it.
    assert_eq!(record.pings.len(), 6);
    for c in &record.pings {
        let (_, a) = settings.site(&c.from).unwrap();
        let (_, b) = settings.site(&c.to).unwrap();
        let floor = 2.0 * catalog::one_way_delay_ms(a, b, settings.delay_scale);
        let rtt = c
            .avg_ms
            .unwrap_or_else(|| panic!("{} -> {} lost", c.from, c.to));
        assert!(
            c.received > 0 && rtt >= 0.9 * floor,
            "{c:?}: link RTT is {floor:.1} ms"
        );
    }
    assert_eq!(record.throughput.len(), 3);
    for t in &record.throughput {
        assert!(t.mbps.is_some_and(|m| m > 0.0), "iperf3 {t:?}");
    }

    // A year is capped by policy and the reply says so; the short renewal
    // is granted as asked; the slice then expires and is reclaimed.
    let lease = &record.lease;
    assert_eq!(lease.renewals.len(), 2);
    let (long, short) = (&lease.renewals[0], &lease.renewals[1]);
    assert!(
        long.capped && long.granted_expires_at < long.requested_expires_at,
        "{long:?}"
    );
    assert!(
        !short.capped && short.granted_expires_at == short.requested_expires_at,
        "{short:?}"
    );
    let gone = lease.slice_gone_after_s.expect("slice reclaimed");
    let stopped = lease.slivers_stopped_after_s.expect("slivers stopped");
    assert!(
        (-1.0..10.0).contains(&gone),
        "slice gone {gone:.1} s after expiry"
    );
    assert!(
        stopped < 10.0,
        "slivers stopped {stopped:.1} s after expiry"
    );
    assert!(lease.capacity_returned);
    assert!(lease
        .audit
        .as_deref()
        .is_some_and(|a| a.contains("slice.expire")));

    // The saved file describes the run well enough to repeat it.
    let repeat = ResearchConfig::repeat(settings, &saved).unwrap();
    assert_eq!(
        serde_json::to_value(&repeat.spec).unwrap(),
        serde_json::to_value(&record.spec).unwrap()
    );
    let saved_record = repeat.previous.unwrap().1;
    assert_eq!(saved_record.placement, record.placement);
    assert!(saved_record.phases.measure_s > 0.0);
    for png in ["research-rtt.png", "research-throughput.png"] {
        let bytes = std::fs::read(out.path().join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
}
