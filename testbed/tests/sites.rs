//! The testbed really builds reachable, shaped sites and removes them again.

use std::process::Command;

use slicenet_testbed::{require_privileged, LinkShape, Testbed};

fn ping_rtt_ms(bed: &Testbed, from: usize, to: usize) -> f64 {
    let out = bed
        .site(from)
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "-q"])
        .arg(bed.site(to).addr().to_string())
        .output()
        .expect("ping runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping {from}->{to} failed: {text}");
    // rtt min/avg/max/mdev = 40.1/40.2/40.3/0.1 ms
    let stats = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .expect("ping summary");
    let avg = stats
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap();
    avg.parse().unwrap()
}

fn namespace_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn every_site_reaches_every_other_with_the_configured_delay() {
    if !require_privileged("every_site_reaches_every_other_with_the_configured_delay") {
        return;
    }
    let bed = Testbed::builder(3)
        .shapeable()
        .link_shape(1, 3, LinkShape::delay(15.0))
        .build()
        .expect("testbed builds");
    for a in 1..=3 {
        for b in 1..=3 {
            if a != b {
                let rtt = ping_rtt_ms(&bed, a, b);
                if (a, b) == (1, 3) || (a, b) == (3, 1) {
                    assert!(rtt >= 29.0, "shaped link RTT {rtt} ms is below 2 x 15 ms");
                } else {
                    assert!(rtt < 10.0, "unshaped link RTT {rtt} ms");
                }
            }
        }
    }
    // Injecting a fault at runtime changes the link.
    bed.set_link_shape(1, 2, LinkShape::delay(25.0)).unwrap();
    assert!(ping_rtt_ms(&bed, 1, 2) >= 49.0);
    let (delivered, lost, _) = bed.link_counters(1, 2).expect("emulated link");
    assert!(delivered >= 6, "emulator delivered {delivered} frames");
    assert_eq!(lost, 0);
}

#[test]
fn a_lossy_link_drops_about_the_configured_share() {
    if !require_privileged("a_lossy_link_drops_about_the_configured_share") {
        return;
    }
    let shape = LinkShape {
        loss_percent: 50.0,
        ..Default::default()
    };
    let bed = Testbed::builder(2).link_shape(1, 2, shape).build().unwrap();
    let out = bed
        .site(1)
        .command("ping")
        .args(["-c", "100", "-i", "0.002", "-W", "1", "-q"])
        .arg(bed.site(2).addr().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(',')
        .find(|p| p.contains("received"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ping summary");
    // Each echo crosses the link twice: P(success) = 0.25.
    assert!((5..=50).contains(&received), "{received}/100 replies");
    let (_, lost, _) = bed.link_counters(1, 2).unwrap();
    assert!(lost > 20, "only {lost} frames counted as lost");
}

#[test]
fn async_code_runs_inside_a_site_and_binds_its_address() {
    if !require_privileged("async_code_runs_inside_a_site_and_binds_its_address") {
        return;
    }
    let bed = Testbed::builder(2).build().unwrap();
    let addr1 = bed.site(1).addr();
    let addr2 = bed.site(2).addr();
    let server = bed.site(2).ns().spawn_thread(move || {
        let sock = std::net::UdpSocket::bind((addr2, 9999)).expect("bind in site 2");
        let mut buf = [0u8; 64];
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (n, from) = sock.recv_from(&mut buf).expect("datagram arrives");
        (buf[..n].to_vec(), from.ip())
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    bed.site(1)
        .block_on(move || async move {
            let sock = tokio::net::UdpSocket::bind((addr1, 0)).await.unwrap();
            sock.send_to(b"hello", (addr2, 9999)).await.unwrap();
        })
        .unwrap();
    let (payload, from) = server.join().unwrap().unwrap();
    assert_eq!(payload, b"hello");
    assert_eq!(from, std::net::IpAddr::V4(addr1));
}

#[test]
fn dropping_the_testbed_removes_namespaces_even_after_a_panic() {
    if !require_privileged("dropping_the_testbed_removes_namespaces_even_after_a_panic") {
        return;
    }
    let names = std::sync::Mutex::new(Vec::new());
    let child = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let bed = Testbed::builder(2).build().unwrap();
        // a long-running process inside a site is killed on teardown
        *child.lock().unwrap() = Some(bed.site(1).command("sleep").arg("30").spawn().unwrap());
        for s in bed.sites() {
            names.lock().unwrap().push(s.ns().name().to_string());
        }
        panic!("test body fails");
    });
    assert!(result.is_err());
    let status = child.into_inner().unwrap().unwrap().wait().unwrap();
    assert!(
        !status.success(),
        "the process inside the site was not killed"
    );
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in names {
        assert!(!namespace_exists(&name), "{name} left behind");
    }
}
