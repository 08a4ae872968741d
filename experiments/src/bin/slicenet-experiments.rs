//! `slicenet-experiments`: the three user scenarios as subcommands, each a
//! real deployment on this machine (run as root after ./scripts/setup.sh):
//!
//! ```text
//! slicenet-experiments noc      [--sites N] [--out DIR] [--quick]
//! slicenet-experiments enclave  [--sites N] [--out DIR] [--quick]
//! slicenet-experiments research [--sites N] [--out DIR] [--quick] [--repeat FILE]
//! ```
//!
//! Each prints its progress on stderr, its tables on stdout and its wall
//! time per phase, and writes JSON and PNG results into `--out`.

use clap::{Parser, Subcommand};
use slicenet_experiments::cluster::request_cancel;
use slicenet_experiments::scenarios::{self, enclave, noc, research, CommonArgs, Settings};
use slicenet_testbed::privilege_report;

#[derive(Debug, Parser)]
#[command(
    name = "slicenet-experiments",
    version,
    about = "The user scenarios of slicenet on a local multi-site testbed"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// NOC probes at every site measure a service and each other; one link is degraded and the summary must find it.
    Noc {
        #[command(flatten)]
        common: CommonArgs,
        /// The link to degrade, as SITE-SITE (default: first and last site).
        #[arg(long)]
        fault_link: Option<String>,
        /// One-way delay the fault adds, in ms.
        #[arg(long, default_value_t = 100.0)]
        fault_delay_ms: f64,
        /// Loss the fault adds, in percent per direction.
        #[arg(long, default_value_t = 10.0)]
        fault_loss: f64,
        /// Rounds before and again during the fault (default 3, 2 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds between round starts (default 10, 0 with --quick).
        #[arg(long)]
        interval: Option<f64>,
    },
    /// A security enclave over three sites: isolation, port scans from every site, revocation, audit log.
    Enclave {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// A researcher's slice placed one per region: iperf3 and ping matrix, reproducible results, lease renewal and expiry.
    Research {
        #[command(flatten)]
        common: CommonArgs,
        /// Repeat the run described by a research.json written earlier.
        #[arg(long)]
        repeat: Option<std::path::PathBuf>,
    },
}

fn install_ctrl_c() {
    std::thread::spawn(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("\ninterrupted: tearing down");
                request_cancel();
            }
        }
    });
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(missing) = privilege_report().missing() {
        anyhow::bail!(
            "the scenarios build network namespaces, TAP devices and VMs, so this {missing}. \
             Run it as root, after ./scripts/setup.sh"
        );
    }
    install_ctrl_c();
    match cli.scenario {
        Scenario::Noc {
            common,
            fault_link,
            fault_delay_ms,
            fault_loss,
            rounds,
            interval,
        } => {
            let settings = Settings::from_args("noc", &common)?;
            let mut config = noc::NocConfig::new(settings);
            if let Some(link) = fault_link {
                let (a, b) = link.split_once('-').ok_or_else(|| {
                    anyhow::anyhow!("--fault-link {link:?}: write it as SITE-SITE, e.g. ams-nrt")
                })?;
                config.settings.site(a)?;
                config.settings.site(b)?;
                config.fault.a = a.to_string();
                config.fault.b = b.to_string();
            }
            config.fault.extra_delay_ms = fault_delay_ms;
            config.fault.loss_percent = fault_loss;
            if let Some(r) = rounds {
                anyhow::ensure!(r > 0, "--rounds must be at least 1");
                config.baseline_rounds = r;
                config.fault_rounds = r;
            }
            if let Some(s) = interval {
                anyhow::ensure!(
                    s.is_finite() && s >= 0.0,
                    "--interval must be a number of seconds"
                );
                config.interval = std::time::Duration::from_secs_f64(s);
            }
            let outcome = noc::run(&config)?;
            noc::write_summary(&outcome, &config.settings.out_dir)?;
            finish(&outcome.phases, &outcome.teardown)
        }
        Scenario::Enclave { common } => {
            let settings = Settings::from_args("enclave", &common)?;
            let config = enclave::EnclaveConfig::new(settings);
            let outcome = enclave::run(&config)?;
            enclave::write_summary(&outcome, &config.settings.out_dir)?;
            finish(&outcome.phases, &outcome.teardown)
        }
        Scenario::Research { common, repeat } => {
            let settings = Settings::from_args("research", &common)?;
            let config = match repeat {
                Some(path) => research::ResearchConfig::repeat(settings, &path)?,
                None => research::ResearchConfig::new(settings),
            };
            let outcome = research::run(&config)?;
            research::write_results(&outcome, &config)?;
            finish(&outcome.phases, &outcome.teardown)
        }
    }
}

fn finish(
    phases: &scenarios::PhaseTimes,
    teardown: &scenarios::TeardownReport,
) -> anyhow::Result<()> {
    println!("\nphases: {phases}");
    anyhow::ensure!(teardown.clean(), "{teardown}");
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
