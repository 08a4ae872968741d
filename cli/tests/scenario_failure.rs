//! A scenario interrupted (Ctrl-C) while its guests boot says which phase
//! failed and leaves nothing behind: no namespaces, no daemons or VMs, no
//! working directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slicenet_experiments::cluster::{default_appliance, request_cancel};
use slicenet_experiments::scenarios::{drive, require_qemu, Phase, Settings};
use slicenet_testbed::require_privileged;

#[test]
fn an_interrupted_boot_tears_down_everything_it_built() {
    let name = "an_interrupted_boot_tears_down_everything_it_built";
    if !require_privileged(name) || !require_qemu(name) {
        return;
    }
    let settings = Settings::quick(
        2,
        Path::new("unused"),
        Path::new(env!("CARGO_BIN_EXE_slicenet")),
    )
    .unwrap();
    let mut work_dir = PathBuf::new();
    let mut bed_prefix = String::new();
    let failure = drive(
        "failure",
        &settings,
        |progress, deployment| -> anyhow::Result<()> {
            let (dir, appliance) = default_appliance(&mut |l| progress.note(l))?;
            work_dir = deployment.work_dir().to_path_buf();
            // Shapeable: links are TAP devices bridged by the emulator, so the
            // teardown has those to remove too.
            let cluster = deployment.start(&settings, true, vec![dir], progress)?;
            bed_prefix = format!("{}-", cluster.bed.id());
            progress.enter(Phase::Boot, "a slice, interrupted while its guests start");
            let slivers = cluster.create_slice("ams_doomed", appliance, "interrupted")?;
            // Wait until the VMs run, then press "Ctrl-C".
            let deadline = Instant::now() + Duration::from_secs(60);
            while !slivers
                .iter()
                .all(|s| cluster.sliver_status(s).and_then(|st| st.pid).is_some())
            {
                anyhow::ensure!(Instant::now() < deadline, "the VMs never started");
                std::thread::sleep(Duration::from_millis(50));
            }
            request_cancel();
            cluster.wait_ready(&slivers, Duration::from_secs(300), &mut |l| {
                progress.note(l)
            })?;
            anyhow::bail!("the boot was not interrupted")
        },
    )
    .expect_err("an interrupted run fails");

    assert_eq!(failure.phase, Phase::Boot, "{failure}");
    assert!(
        format!("{:#}", failure.error).contains("interrupted"),
        "{failure}"
    );
    assert!(failure.teardown.clean(), "{}", failure.teardown);
    assert!(
        failure.to_string().contains("phase boot failed"),
        "{failure}"
    );
    assert!(!work_dir.as_os_str().is_empty() && !work_dir.exists());
    let namespaces = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!namespaces.contains(&bed_prefix), "{namespaces}");
    let qemus = std::process::Command::new("pgrep")
        .args(["-f", &work_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        qemus.stdout.is_empty(),
        "processes left: {:?}",
        String::from_utf8_lossy(&qemus.stdout)
    );
}
