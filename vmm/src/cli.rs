//! `slicenet appliance ...`: build, show and verify appliances from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::appliance::build::{build_default, copy_appliance, default_cache_dir, BuildOptions};
use crate::appliance::Appliance;

/// The `slicenet appliance` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApplianceCommand {
    /// Build an appliance from Debian packages (cached by the hash of its inputs).
    Build(BuildArgs),
    /// Print an appliance's manifest (without hashing its parts).
    Show(DirArgs),
    /// Check that every part of an appliance is present and matches its SHA-256.
    Verify(DirArgs),
}

/// Recipes `slicenet appliance build` knows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Recipe {
    /// Stock Debian cloud kernel + busybox + the virtio modules + slicenet's init.
    Default,
}

/// Arguments of `slicenet appliance build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe.
    pub recipe: Recipe,
    /// Appliance name (default: the recipe's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Extra Debian packages whose programs and libraries go into the image,
    /// e.g. `iperf3,iputils-ping,curl,dnsutils,traceroute`.
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Cache directory (default: $XDG_CACHE_HOME/slicenet or ~/.cache/slicenet).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Also copy the finished appliance into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Guest memory in MiB written to the manifest.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u32,
    /// vCPUs written to the manifest.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Number of NICs written to the manifest.
    #[arg(long, default_value_t = 1)]
    pub nics: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments naming one appliance directory.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// The appliance directory (holding appliance.toml).
    pub dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs one `slicenet appliance` subcommand.
pub fn run(command: ApplianceCommand) -> anyhow::Result<()> {
    match command {
        ApplianceCommand::Build(args) => build(args),
        ApplianceCommand::Show(args) => {
            let appliance = Appliance::load_unverified(&args.dir)?;
            print_appliance(&appliance, args.json, None);
            Ok(())
        }
        ApplianceCommand::Verify(args) => {
            let appliance = Appliance::load(&args.dir)?;
            print_appliance(&appliance, args.json, Some(true));
            Ok(())
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let Recipe::Default = args.recipe;
    let mut options = BuildOptions::new(args.name.as_deref().unwrap_or("default"));
    options.packages = args.packages;
    options.cache_dir = args.cache_dir.unwrap_or_else(default_cache_dir);
    options.memory_mib = args.memory_mib;
    options.vcpus = args.vcpus;
    options.nics = args.nics;
    let started = std::time::Instant::now();
    let mut step = 0;
    let output = build_default(&options, &mut |line| {
        step += 1;
        eprintln!("[{step}] {line} ({:.1} s)", started.elapsed().as_secs_f64());
    })
    .with_context(|| format!("building appliance {:?}", options.name))?;
    let dir = match &args.out {
        Some(out) => {
            copy_appliance(&output.dir, out)?;
            out.clone()
        }
        None => output.dir.clone(),
    };
    let appliance = Appliance::load(&dir)?;
    if args.json {
        let value = serde_json::json!({
            "dir": dir,
            "cached": output.cached,
            "key": output.key,
            "manifest": appliance.manifest(),
        });
        println!("{value}");
    } else {
        println!("{}", dir.display());
    }
    Ok(())
}

fn print_appliance(appliance: &Appliance, json: bool, verified: Option<bool>) {
    let manifest = appliance.manifest();
    if json {
        let mut value = serde_json::json!({
            "dir": appliance.dir(),
            "manifest": manifest,
        });
        if let Some(v) = verified {
            value["verified"] = v.into();
        }
        println!("{value}");
        return;
    }
    println!("appliance  {} {}", manifest.name, manifest.version);
    println!("dir        {}", appliance.dir().display());
    println!(
        "machine    {} vCPU, {} MiB, {} NIC",
        manifest.vcpus,
        manifest.memory_mib,
        manifest.nics.len()
    );
    println!("cmdline    {}", manifest.cmdline);
    for (part, spec) in appliance.parts() {
        println!("{part:<10} {}  sha256 {}", spec.path, spec.sha256);
    }
    if verified == Some(true) {
        println!("verified   every part matches its SHA-256");
    }
}
