//! The three user scenarios, each a real deployment on one machine (an
//! authority and one node daemon per namespaced site, QEMU guests):
//!
//! - [`noc`]: measurement probes at every site watch a service and each
//!   other; a degraded link is injected and the summary names it;
//! - [`enclave`]: a security enclave across three sites — isolation from
//!   another slice, port scans from every site, revocation, audit log;
//! - [`research`]: slivers placed by constraint, an iperf3 + ping
//!   experiment, results saved with the slice description for a repeat,
//!   lease renewal and expiry.
//!
//! Every scenario runs in four timed phases (setup, boot, measure,
//! teardown) through [`drive`], which tears down whatever was built when
//! any phase fails or Ctrl-C arrives, checks that nothing is left, and
//! says which phase failed and why.

pub mod appliances;
pub mod enclave;
pub mod guest;
pub mod noc;
pub mod plot;
pub mod research;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, SiteInfo};
use crate::cluster::{cancelled, Cluster, ClusterOptions};

/// Options every scenario subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Number of sites (each a network namespace with one node daemon).
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Directory for the results (JSON, JSON lines, PNG); default `scenario-results/<scenario>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A short run (what CI runs): fewer rounds, shorter measurements, smaller WAN delays.
    #[arg(long)]
    pub quick: bool,
    /// Scale of the WAN delays between sites (1.0 = realistic for the sites' cities; default 1.0, 0.2 with --quick).
    #[arg(long)]
    pub delay_scale: Option<f64>,
    /// The `slicenet` executable (default: next to this program, then PATH).
    #[arg(long)]
    pub slicenet: Option<PathBuf>,
    /// Keep the working directory (daemon logs, guest consoles, keys) after teardown.
    #[arg(long)]
    pub keep: bool,
}

/// What a scenario needs to know about where and how to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The testbed's sites, in order (site 1 hosts the authority).
    pub sites: Vec<SiteInfo>,
    /// WAN delay scale (see [`catalog::one_way_delay_ms`]).
    pub delay_scale: f64,
    /// Short run.
    pub quick: bool,
    /// Where results are written.
    pub out_dir: PathBuf,
    /// The `slicenet` executable the daemons run from.
    pub slicenet_bin: PathBuf,
    /// Keep the working directory after teardown.
    pub keep_work_dir: bool,
}

impl Settings {
    /// Settings from the command line for scenario `name`.
    pub fn from_args(name: &str, args: &CommonArgs) -> anyhow::Result<Settings> {
        Ok(Settings {
            sites: catalog::sites(args.sites)?.to_vec(),
            delay_scale: args
                .delay_scale
                .unwrap_or(if args.quick { 0.2 } else { 1.0 }),
            quick: args.quick,
            out_dir: args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("scenario-results").join(name)),
            slicenet_bin: find_slicenet(args.slicenet.clone())?,
            keep_work_dir: args.keep,
        })
    }

    /// The short run CI does (`--quick`, WAN delays scaled by 0.2) over
    /// the first `sites` sites, writing into `out_dir`.
    pub fn quick(sites: usize, out_dir: &Path, slicenet_bin: &Path) -> anyhow::Result<Settings> {
        Ok(Settings {
            sites: catalog::sites(sites)?.to_vec(),
            delay_scale: 0.2,
            quick: true,
            out_dir: out_dir.to_path_buf(),
            slicenet_bin: slicenet_bin.to_path_buf(),
            keep_work_dir: false,
        })
    }

    /// The site named `name`, 1-based index and info.
    pub fn site(&self, name: &str) -> anyhow::Result<(usize, &SiteInfo)> {
        self.sites
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .map(|(i, s)| (i + 1, s))
            .ok_or_else(|| {
                let names: Vec<&str> = self.sites.iter().map(|s| s.name).collect();
                anyhow::anyhow!(
                    "no site {name:?} in this testbed (sites: {})",
                    names.join(", ")
                )
            })
    }
}

/// Finds the `slicenet` executable: the path given, else the one next to
/// this program, else the first on PATH.
pub fn find_slicenet(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            path.is_file(),
            "--slicenet {}: no such file",
            path.display()
        );
        return Ok(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("slicenet")))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("slicenet"))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find the slicenet executable next to this program or on PATH; build both with \
             `cargo build --release --bin slicenet --bin slicenet-experiments` or pass --slicenet PATH"
        )
    })
}

/// The four timed phases of every scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Appliances, sites, authority, node daemons.
    Setup,
    /// Slices created until every guest is up and its enclave connected.
    Boot,
    /// The scenario's measurements.
    Measure,
    /// Everything stopped and removed.
    Teardown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Setup => "setup",
            Phase::Boot => "boot",
            Phase::Measure => "measure",
            Phase::Teardown => "teardown",
        })
    }
}

/// Wall time of each phase, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Setup.
    pub setup_s: f64,
    /// Boot.
    pub boot_s: f64,
    /// Measure.
    pub measure_s: f64,
    /// Teardown.
    pub teardown_s: f64,
}

impl PhaseTimes {
    fn add(&mut self, phase: Phase, d: Duration) {
        let slot = match phase {
            Phase::Setup => &mut self.setup_s,
            Phase::Boot => &mut self.boot_s,
            Phase::Measure => &mut self.measure_s,
            Phase::Teardown => &mut self.teardown_s,
        };
        *slot += d.as_secs_f64();
    }

    /// Sum of all phases.
    pub fn total_s(&self) -> f64 {
        self.setup_s + self.boot_s + self.measure_s + self.teardown_s
    }
}

impl fmt::Display for PhaseTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setup {:.1} s, boot {:.1} s, measure {:.1} s, teardown {:.1} s (total {:.1} s)",
            self.setup_s,
            self.boot_s,
            self.measure_s,
            self.teardown_s,
            self.total_s()
        )
    }
}

/// Progress lines on stderr and the phase clock of one run.
pub struct Progress {
    started: Instant,
    phase: Cell<Phase>,
    phase_started: Cell<Instant>,
    times: RefCell<PhaseTimes>,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            phase: Cell::new(Phase::Setup),
            phase_started: Cell::new(now),
            times: RefCell::new(PhaseTimes::default()),
        }
    }

    /// Ends the current phase and starts `phase`; prints what it does.
    pub fn enter(&self, phase: Phase, what: &str) {
        let now = Instant::now();
        self.times
            .borrow_mut()
            .add(self.phase.get(), now - self.phase_started.get());
        self.phase.set(phase);
        self.phase_started.set(now);
        self.note(&format!("phase {phase}: {what}"));
    }

    /// The phase running now.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Prints one progress line with the time since the start.
    pub fn note(&self, line: &str) {
        eprintln!("[{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
    }

    fn finish(&self) -> PhaseTimes {
        let now = Instant::now();
        self.times
            .borrow_mut()
            .add(self.phase.get(), now - self.phase_started.get());
        self.phase_started.set(now);
        self.times.borrow().clone()
    }
}

/// Fails with "interrupted" once Ctrl-C was pressed (see [`crate::cluster::request_cancel`]).
pub fn ensure_running() -> anyhow::Result<()> {
    anyhow::ensure!(!cancelled(), "interrupted (Ctrl-C)");
    Ok(())
}

/// Sleeps up to `d`, waking early (with an error) on Ctrl-C.
pub fn pause(d: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        ensure_running()?;
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
    }
    ensure_running()
}

/// Unix time in seconds (fractional).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a run built: its working directory and, once started, the cluster.
pub struct Deployment {
    work: Option<tempfile::TempDir>,
    work_dir: PathBuf,
    cluster: Option<Cluster>,
}

impl Deployment {
    /// Starts the cluster (sites, authority, nodes) with `appliance_dirs`.
    pub fn start(
        &mut self,
        settings: &Settings,
        shapeable: bool,
        appliance_dirs: Vec<PathBuf>,
        progress: &Progress,
    ) -> anyhow::Result<&Cluster> {
        let mut dirs = appliance_dirs;
        dirs.sort();
        dirs.dedup();
        let cluster = Cluster::start(
            ClusterOptions {
                sites: settings.sites.clone(),
                delay_scale: settings.delay_scale,
                shapeable,
                slicenet_bin: settings.slicenet_bin.clone(),
                work_dir: self.work_dir.clone(),
                appliance_dirs: dirs,
                runtime: None,
            },
            &mut |l| progress.note(l),
        )?;
        Ok(self.cluster.insert(cluster))
    }

    /// The running cluster; an error before [`Deployment::start`].
    pub fn cluster(&self) -> anyhow::Result<&Cluster> {
        self.cluster
            .as_ref()
            .context("the cluster is not running (a bug in the scenario)")
    }

    /// The working directory (daemon data, logs, consoles).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
}

/// What teardown left behind (nothing, when it worked).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TeardownReport {
    /// Network namespaces of the run's testbed that still exist.
    pub namespaces: Vec<String>,
    /// Processes (pid, command) still running from the run's working directory.
    pub processes: Vec<(i32, String)>,
    /// The working directory, when it still exists and was not to be kept.
    pub leftover_dir: Option<PathBuf>,
    /// The working directory, when kept on request.
    pub kept_dir: Option<PathBuf>,
}

impl TeardownReport {
    /// True when nothing was left behind.
    pub fn clean(&self) -> bool {
        self.namespaces.is_empty() && self.processes.is_empty() && self.leftover_dir.is_none()
    }
}

impl fmt::Display for TeardownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clean() {
            f.write_str(
                "teardown removed everything it created (no namespaces, processes or temporary files left)",
            )?;
        } else {
            f.write_str("teardown LEFT BEHIND")?;
            if !self.namespaces.is_empty() {
                write!(f, " namespaces {}", self.namespaces.join(", "))?;
            }
            for (pid, cmd) in &self.processes {
                write!(f, " process {pid} ({cmd})")?;
            }
            if let Some(dir) = &self.leftover_dir {
                write!(f, " directory {}", dir.display())?;
            }
        }
        if let Some(dir) = &self.kept_dir {
            write!(f, "; kept {} as asked", dir.display())?;
        }
        Ok(())
    }
}

/// Namespaces whose names start with `prefix`.
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// Processes whose command line mentions `dir` (daemons and VMs of a run).
fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(&needle).then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// Stops everything a run built and checks that nothing is left.
fn tear_down(deployment: Deployment, keep: bool) -> TeardownReport {
    let Deployment {
        work,
        work_dir,
        cluster,
    } = deployment;
    let bed_prefix = cluster.as_ref().map(|c| format!("{}-", c.bed.id()));
    drop(cluster);
    let mut report = TeardownReport::default();
    if let Some(work) = work {
        if keep {
            report.kept_dir = Some(work.keep());
        } else if let Err(e) = work.close() {
            eprintln!("removing {}: {e}", work_dir.display());
        }
    }
    // Processes may take a moment to go after their parents did.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        report.namespaces = bed_prefix
            .as_deref()
            .map(namespaces_with_prefix)
            .unwrap_or_default();
        report.processes = processes_mentioning(&work_dir);
        if report.namespaces.is_empty() && report.processes.is_empty() || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !keep && work_dir.exists() {
        report.leftover_dir = Some(work_dir);
    }
    report
}

/// A finished run: the scenario's result, phase times and the teardown check.
#[derive(Debug)]
pub struct Outcome<T> {
    /// What the scenario measured.
    pub result: T,
    /// Wall time per phase.
    pub phases: PhaseTimes,
    /// What teardown left behind.
    pub teardown: TeardownReport,
}

impl<T: Serialize> Outcome<T> {
    /// Writes `file` into `out_dir`: the scenario's name, what it measured,
    /// its phase times and the teardown check.
    pub fn write_summary(&self, scenario: &str, out_dir: &Path, file: &str) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Summary<'a, T> {
            scenario: &'a str,
            report: &'a T,
            phases: &'a PhaseTimes,
            teardown: &'a TeardownReport,
        }
        Outputs::create(out_dir)?.json(
            file,
            &Summary {
                scenario,
                report: &self.result,
                phases: &self.phases,
                teardown: &self.teardown,
            },
        )?;
        Ok(())
    }
}

/// A failed run: which phase failed and why, after teardown.
#[derive(Debug, thiserror::Error)]
#[error("{scenario}: phase {phase} failed: {error:#}\n{teardown}")]
pub struct ScenarioFailure {
    /// The scenario.
    pub scenario: String,
    /// The phase that failed.
    pub phase: Phase,
    /// Why.
    pub error: anyhow::Error,
    /// Wall time per phase up to the failure and of the teardown.
    pub phases: PhaseTimes,
    /// What teardown left behind.
    pub teardown: TeardownReport,
}

/// Runs a scenario's body in a fresh working directory, then tears down
/// (also when the body fails or is interrupted) and checks the teardown.
/// The body moves through the phases with [`Progress::enter`].
pub fn drive<T>(
    scenario: &str,
    settings: &Settings,
    body: impl FnOnce(&Progress, &mut Deployment) -> anyhow::Result<T>,
) -> Result<Outcome<T>, Box<ScenarioFailure>> {
    let progress = Progress::new();
    progress.note(&format!(
        "phase setup: scenario {scenario}, {} sites, WAN delay scale {}{}",
        settings.sites.len(),
        settings.delay_scale,
        if settings.quick { ", quick" } else { "" }
    ));
    let work = tempfile::Builder::new()
        .prefix(&format!("slicenet-{scenario}-"))
        .tempdir();
    let result = match work {
        Ok(work) => {
            let mut deployment = Deployment {
                work_dir: work.path().to_path_buf(),
                work: Some(work),
                cluster: None,
            };
            let result = body(&progress, &mut deployment);
            let failed_in = progress.phase();
            progress.enter(Phase::Teardown, "stopping guests, daemons and sites");
            let teardown = tear_down(deployment, settings.keep_work_dir);
            progress.note(&teardown.to_string());
            (result, failed_in, teardown)
        }
        Err(e) => (
            Err(anyhow::Error::new(e).context("creating the working directory")),
            Phase::Setup,
            TeardownReport::default(),
        ),
    };
    let phases = progress.finish();
    let (result, failed_in, teardown) = result;
    eprintln!("phases: {phases}");
    match result {
        Ok(result) => Ok(Outcome {
            result,
            phases,
            teardown,
        }),
        Err(error) => Err(Box::new(ScenarioFailure {
            scenario: scenario.to_string(),
            phase: failed_in,
            error,
            phases,
            teardown,
        })),
    }
}

/// Writes results into the output directory.
pub struct Outputs {
    dir: PathBuf,
}

impl Outputs {
    /// Creates the output directory.
    pub fn create(dir: &Path) -> anyhow::Result<Outputs> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output directory {}", dir.display()))?;
        Ok(Outputs {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of output file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `value` as pretty JSON to `name`.
    pub fn json<T: Serialize>(&self, name: &str, value: &T) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Writes one JSON document per line to `name`.
    pub fn json_lines<T: Serialize>(&self, name: &str, values: &[T]) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        let mut text = String::new();
        for v in values {
            text.push_str(&serde_json::to_string(v)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// For tests that boot guests: true when `qemu-system-x86_64` runs here;
/// otherwise prints `SKIPPED: <test>: ...` and returns false, or panics
/// when `SLICENET_REQUIRE_PRIVILEGED=1` (the same rule as
/// [`slicenet_testbed::require_privileged`]).
pub fn require_qemu(test: &str) -> bool {
    let ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let reason = "needs qemu-system-x86_64 (scripts/setup.sh installs it)";
        if std::env::var("SLICENET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: SLICENET_REQUIRE_PRIVILEGED=1 but this test {reason}");
        }
        println!("SKIPPED: {test}: {reason}");
    }
    ok
}

/// Median of `values` (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_inputs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn phases_add_up_in_the_order_entered() {
        let p = Progress::new();
        std::thread::sleep(Duration::from_millis(20));
        p.enter(Phase::Boot, "boot");
        std::thread::sleep(Duration::from_millis(20));
        p.enter(Phase::Measure, "measure");
        let t = p.finish();
        assert!(t.setup_s >= 0.02 && t.boot_s >= 0.02, "{t:?}");
        assert_eq!(t.teardown_s, 0.0);
        assert_eq!(p.phase(), Phase::Measure);
    }

    #[test]
    fn a_failing_body_reports_its_phase_and_leaves_nothing() {
        let settings = Settings {
            sites: catalog::sites(2).unwrap().to_vec(),
            delay_scale: 0.0,
            quick: true,
            out_dir: PathBuf::from("unused"),
            slicenet_bin: PathBuf::from("unused"),
            keep_work_dir: false,
        };
        let mut seen_dir = PathBuf::new();
        let failure = drive(
            "unit",
            &settings,
            |progress, deployment| -> anyhow::Result<()> {
                seen_dir = deployment.work_dir().to_path_buf();
                std::fs::write(seen_dir.join("scratch"), b"x")?;
                progress.enter(Phase::Boot, "pretending to boot");
                anyhow::bail!("the guests would not boot")
            },
        )
        .unwrap_err();
        assert_eq!(failure.phase, Phase::Boot);
        assert!(failure.teardown.clean(), "{}", failure.teardown);
        assert!(!seen_dir.exists());
        let text = failure.to_string();
        assert!(
            text.contains("phase boot failed: the guests would not boot"),
            "{text}"
        );
    }

    #[test]
    fn teardown_reports_processes_left_in_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        // The directory is the shell's $0, so it shows in the command line.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(dir.path())
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours: look again for
        // a while rather than racing the exec.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = processes_mentioning(dir.path());
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = processes_mentioning(dir.path());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.iter().any(|(pid, _)| *pid == child.id() as i32),
            "{found:?}"
        );
    }
}
