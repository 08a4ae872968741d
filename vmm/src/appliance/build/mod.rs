//! Builds the default appliance from Debian packages only: the stock cloud kernel, its virtio
//! modules, busybox-static, an init script, and optionally the binaries (with their shared
//! libraries) of extra packages. Nothing is installed on the host: packages are fetched with
//! `apt-get download` and unpacked with `dpkg -x` into a cache directory.
//!
//! Results are cached under `<cache>/appliances/<name>-<key>` where `key` is a SHA-256 over
//! every input (recipe version, init script, package versions, module list, package list), so
//! a second build with the same inputs returns at once and a package update builds anew.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::read::elf::{Dyn, FileHeader, SectionHeader};
use sha2::{Digest, Sha256};

use super::manifest::{sha256_file, Appliance, ApplianceError, Manifest, NicSpec, PartSpec};
use super::vmlinux::{extract_vmlinux, Vmlinux};
use super::{MANIFEST_FILE, MANIFEST_FORMAT};

mod cpio;
pub use cpio::{CpioWriter, Entry as CpioEntry};

/// Bumped whenever the recipe's output changes for the same inputs.
const RECIPE_VERSION: &str = "slicenet-default-appliance-6";
/// The Debian metapackage that names the current cloud kernel image package.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Kernel modules the init loads (dependencies are added from each module's `.modinfo`), so
/// that one image boots on virtio-mmio (slicenet-vmm) and virtio-pci (QEMU q35).
const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "pvpanic_mmio",
];
/// Kernel command line every default appliance carries; runtimes append per-sliver parameters.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=1 quiet";

/// The init of the default appliance (contract 3 of the workspace).
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Appliance name written to the manifest.
    pub name: String,
    /// Extra Debian packages whose programs (and their shared libraries) go into the image.
    pub packages: Vec<String>,
    /// Cache root (debs, unpacked trees, finished appliances).
    pub cache_dir: PathBuf,
    /// Guest memory written to the manifest.
    pub memory_mib: u32,
    /// vCPUs written to the manifest.
    pub vcpus: u32,
    /// NICs written to the manifest (MACs derived per sliver).
    pub nics: usize,
}

impl BuildOptions {
    /// Defaults: 256 MiB, 1 vCPU, 1 NIC, no extra packages, the per-user cache.
    pub fn new(name: &str) -> BuildOptions {
        BuildOptions {
            name: name.to_string(),
            packages: Vec::new(),
            cache_dir: default_cache_dir(),
            memory_mib: 256,
            vcpus: 1,
            nics: 1,
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A host tool could not be run or failed.
    #[error("{what} failed: {detail}")]
    Tool {
        /// The command that failed.
        what: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// A Debian package is unknown to apt.
    #[error("Debian package {0:?} is unknown to apt; check the name, and run `apt-get update` if the package lists are empty")]
    UnknownPackage(String),
    /// Something expected inside a package was not there.
    #[error("package contents: {0}")]
    Contents(String),
    /// A file operation in the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The freshly built appliance did not verify (a bug or a disk problem).
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// An invalid option.
    #[error("{0}")]
    Options(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$XDG_CACHE_HOME/slicenet`, else `$HOME/.cache/slicenet`, else a directory under the
/// system temporary directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("slicenet");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("slicenet");
    }
    std::env::temp_dir().join("slicenet-cache")
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The appliance directory (inside the cache).
    pub dir: PathBuf,
    /// True when the cache already held it.
    pub cached: bool,
    /// The cache key.
    pub key: String,
}

/// Builds (or finds in the cache) the default appliance; `progress` receives one line per step.
pub fn build_default(
    options: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildOutput, BuildError> {
    if options.name.is_empty()
        || !options
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(BuildError::Options(format!(
            "appliance name {:?} must be letters, digits, '.', '_' or '-'",
            options.name
        )));
    }
    for package in &options.packages {
        if package.is_empty()
            || !package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(BuildError::Options(format!(
                "{package:?} is not a Debian package name"
            )));
        }
    }
    let cache = &options.cache_dir;
    fs::create_dir_all(cache).map_err(io_err(cache))?;
    let _lock = CacheLock::acquire(cache)?;

    progress("resolving Debian packages");
    let kernel_package = match kernel_image_package() {
        Ok(package) => package,
        // A fresh machine may have empty package lists; refresh them once when allowed to.
        // SAFETY: geteuid has no preconditions.
        Err(_) if unsafe { libc::geteuid() } == 0 => {
            progress("package lists look empty: running apt-get update");
            run_tool(Command::new("apt-get").args(["update", "-qq"]))?;
            kernel_image_package()?
        }
        Err(e) => return Err(e),
    };
    let mut wanted: BTreeSet<String> = [kernel_package.clone(), "busybox-static".to_string()]
        .into_iter()
        .collect();
    // Extra package -> its direct non-library dependencies, whose programs are used when the
    // package itself ships none (transitional packages: dnsutils -> bind9-dnsutils).
    let mut program_packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut library_packages: BTreeSet<String> = BTreeSet::new();
    if !options.packages.is_empty() {
        let graph = dependency_graph(&options.packages)?;
        for package in &options.packages {
            let fallbacks = graph[package]
                .iter()
                .filter(|dep| !dep.contains("lib"))
                .cloned()
                .collect();
            program_packages.insert(package.clone(), fallbacks);
        }
        // Shared libraries live in lib* packages and in a few "-libs" ones (bind9-libs).
        for package in graph.into_keys() {
            if package.contains("lib") {
                library_packages.insert(package);
            }
        }
    }
    for (package, fallbacks) in &program_packages {
        wanted.insert(package.clone());
        wanted.extend(fallbacks.iter().cloned());
    }
    wanted.extend(library_packages.iter().cloned());
    let versions = package_versions(&wanted)?;

    let mut hasher = Sha256::new();
    hasher.update(RECIPE_VERSION);
    hasher.update([0]);
    hasher.update(INIT_SCRIPT);
    hasher.update([0]);
    hasher.update(GUEST_MODULES.join(","));
    hasher.update([0]);
    hasher.update(format!(
        "{}|{}|{}|{}|{:?}",
        options.name, options.memory_mib, options.vcpus, options.nics, options.packages
    ));
    for (package, version) in &versions {
        hasher.update(format!("\0{package}={version}"));
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let out_dir = cache
        .join("appliances")
        .join(format!("{}-{key}", options.name));
    if out_dir.join(MANIFEST_FILE).exists() {
        progress(&format!("found in cache: {}", out_dir.display()));
        if Appliance::load(&out_dir).is_ok() {
            return Ok(BuildOutput {
                dir: out_dir,
                cached: true,
                key,
            });
        }
        progress("cached copy does not verify; rebuilding it");
        fs::remove_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    }

    progress(&format!("downloading {} Debian packages", versions.len()));
    let debs = download(cache, &versions)?;

    progress("unpacking packages");
    let unpack_root = cache.join("unpacked");
    let mut trees = BTreeMap::new();
    for (package, deb) in &debs {
        trees.insert(package.clone(), unpack(&unpack_root, deb)?);
    }

    let staging = cache
        .join("staging")
        .join(format!("{}-{key}", options.name));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io_err(&staging))?;

    progress("assembling the initramfs");
    let kernel_tree = &trees[&kernel_package];
    let (kernel_path, modules_dir) = find_kernel(kernel_tree)?;
    let mut image = CpioImage::default();
    image.base_layout();
    let module_order = resolve_modules(&modules_dir, GUEST_MODULES)?;
    for (name, path) in &module_order {
        image.file(
            &format!("usr/lib/modules/slicenet/{name}.ko"),
            read(path)?,
            0o644,
        );
    }
    let order_text: String = module_order
        .iter()
        .map(|(name, _)| format!("{name}.ko\n"))
        .collect();
    image.file("etc/slicenet/modules", order_text.into_bytes(), 0o644);

    let busybox = trees["busybox-static"].join("bin/busybox");
    let applets = busybox_applets(&busybox)?;
    image.file("usr/bin/busybox", read(&busybox)?, 0o755);

    let mut programs = Vec::new();
    for (package, fallbacks) in &program_packages {
        let mut found = package_programs(&trees[package])?;
        if found.is_empty() {
            for dep in fallbacks {
                found.extend(package_programs(&trees[dep])?);
            }
        }
        if found.is_empty() {
            return Err(BuildError::Contents(format!(
                "package {package} (and its direct dependencies) ships no programs"
            )));
        }
        programs.extend(found);
    }
    if !programs.is_empty() {
        let lib_dirs: Vec<PathBuf> = library_packages
            .iter()
            .flat_map(|p| {
                [
                    "lib/x86_64-linux-gnu",
                    "usr/lib/x86_64-linux-gnu",
                    "lib",
                    "usr/lib",
                    "lib64",
                ]
                .map(|d| trees[p].join(d))
            })
            .filter(|d| d.is_dir())
            .collect();
        let mut needed = VecDeque::new();
        for (name, path, mode) in &programs {
            match path {
                ProgramFile::Regular(path) => {
                    let data = read(path)?;
                    needed.extend(elf_needed(&data));
                    image.file(name, data, *mode);
                }
                ProgramFile::Link(target) => image.symlink(name, target),
            }
        }
        needed.push_back("ld-linux-x86-64.so.2".to_string());
        let mut copied = BTreeSet::new();
        while let Some(lib) = needed.pop_front() {
            if !copied.insert(lib.clone()) {
                continue;
            }
            let found = lib_dirs.iter().map(|d| d.join(&lib)).find(|p| p.exists());
            let Some(path) = found else {
                return Err(BuildError::Contents(format!(
                    "shared library {lib} needed by the extra packages is in none of the packages {library_packages:?}"
                )));
            };
            let data = read(&path)?;
            needed.extend(elf_needed(&data));
            image.file(&format!("usr/lib/x86_64-linux-gnu/{lib}"), data, 0o755);
        }
        image.symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
    }
    // Busybox applets fill in whatever the extra packages did not provide.
    for applet in applets {
        let path = applet.trim_start_matches('/');
        let merged = merged_usr_path(path);
        if merged != "usr/bin/busybox" && !image.contains(&merged) {
            image.symlink(&merged, "/usr/bin/busybox");
        }
    }
    image.file("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755);

    progress("writing the appliance");
    let initrd_path = staging.join("initrd.img");
    image.write(&initrd_path)?;
    let vmlinuz = staging.join("vmlinuz");
    fs::copy(&kernel_path, &vmlinuz).map_err(io_err(&kernel_path))?;
    // The uncompressed kernel, for VMMs that start it at its PVH entry point (no in-guest
    // decompression). Optional: without a PVH entry the bzImage alone is booted.
    let vmlinux = match extract_vmlinux(&read(&vmlinuz)?) {
        Ok(Vmlinux {
            elf,
            pvh_entry: Some(entry),
        }) => {
            progress(&format!(
                "extracted vmlinux ({} MiB, PVH entry {entry:#x})",
                elf.len() >> 20
            ));
            let path = staging.join("vmlinux");
            fs::write(&path, &elf).map_err(io_err(&path))?;
            Some(PartSpec {
                path: "vmlinux".into(),
                sha256: sha256_file(&path).map_err(io_err(&path))?,
            })
        }
        Ok(_) => {
            progress("the kernel has no PVH entry point: only the bzImage is stored");
            None
        }
        Err(e) => {
            progress(&format!(
                "no vmlinux extracted ({e}): only the bzImage is stored"
            ));
            None
        }
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: options.name.clone(),
        version: format!(
            "kernel {} busybox {}",
            versions[&kernel_package], versions["busybox-static"]
        ),
        cmdline: DEFAULT_CMDLINE.to_string(),
        vcpus: options.vcpus,
        memory_mib: options.memory_mib,
        kernel: PartSpec {
            path: "vmlinuz".into(),
            sha256: sha256_file(&vmlinuz).map_err(io_err(&vmlinuz))?,
        },
        vmlinux,
        initrd: PartSpec {
            path: "initrd.img".into(),
            sha256: sha256_file(&initrd_path).map_err(io_err(&initrd_path))?,
        },
        disk: None,
        nics: vec![NicSpec::default(); options.nics],
    };
    manifest.validate().map_err(BuildError::Options)?;
    let manifest_path = staging.join(MANIFEST_FILE);
    fs::write(&manifest_path, manifest.to_toml()).map_err(io_err(&manifest_path))?;
    Appliance::load(&staging)?;
    fs::create_dir_all(cache.join("appliances")).map_err(io_err(cache))?;
    fs::rename(&staging, &out_dir).map_err(io_err(&out_dir))?;
    progress(&format!("built {}", out_dir.display()));
    Ok(BuildOutput {
        dir: out_dir,
        cached: false,
        key,
    })
}

/// Holds an exclusive `flock` on the cache so concurrent builds (parallel tests) do not
/// interleave; released on drop.
struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    fn acquire(cache: &Path) -> Result<CacheLock, BuildError> {
        let path = cache.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&path)(std::io::Error::last_os_error()));
        }
        Ok(CacheLock { _file: file })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(io_err(path))
}

fn run_tool(command: &mut Command) -> Result<String, BuildError> {
    let what = format!("{command:?}");
    let output = command.output().map_err(|e| BuildError::Tool {
        what: what.clone(),
        detail: format!("{e} (is it installed? this needs Debian's apt and dpkg)"),
    })?;
    if !output.status.success() {
        return Err(BuildError::Tool {
            what,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn apt_depends_command() -> Command {
    let mut command = Command::new("apt-cache");
    command.args([
        "depends",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ]);
    command
}

/// Parses `apt-cache depends` output: package -> its Depends/PreDepends (first alternative
/// and real packages only).
fn parse_depends(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            current = (!line.starts_with('<') && !line.is_empty()).then(|| line.trim().to_string());
            if let Some(name) = &current {
                graph.entry(name.clone()).or_default();
            }
            continue;
        }
        let item = line.trim_start();
        // "|Depends:" marks an alternative that is not the first choice: skip it.
        let dep = item
            .strip_prefix("Depends:")
            .or_else(|| item.strip_prefix("PreDepends:"))
            .map(str::trim);
        if let (Some(name), Some(dep)) = (&current, dep) {
            if !dep.starts_with('<') {
                graph.get_mut(name).expect("inserted").push(dep.to_string());
            }
        }
    }
    graph
}

fn direct_dependencies(package: &str) -> Result<Vec<String>, BuildError> {
    let out = run_tool(apt_depends_command().arg(package))
        .map_err(|_| BuildError::UnknownPackage(package.to_string()))?;
    Ok(parse_depends(&out).remove(package).unwrap_or_default())
}

fn kernel_image_package() -> Result<String, BuildError> {
    direct_dependencies(KERNEL_META_PACKAGE)?
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            BuildError::Contents(format!(
                "{KERNEL_META_PACKAGE} does not depend on a linux-image package"
            ))
        })
}

/// The dependency closure of `packages` with each package's direct dependencies, from one
/// `apt-cache depends --recurse` call.
fn dependency_graph(packages: &[String]) -> Result<BTreeMap<String, Vec<String>>, BuildError> {
    let out = run_tool(apt_depends_command().arg("--recurse").args(packages))
        .map_err(|_| BuildError::UnknownPackage(packages.join(",")))?;
    let graph = parse_depends(&out);
    if let Some(unknown) = packages.iter().find(|p| !graph.contains_key(*p)) {
        return Err(BuildError::UnknownPackage(unknown.clone()));
    }
    Ok(graph)
}

fn package_versions(packages: &BTreeSet<String>) -> Result<BTreeMap<String, String>, BuildError> {
    // One apt-cache call for all packages: it answers in sections "name:\n  Installed: ..
    // \n  Candidate: ..".
    let out = run_tool(Command::new("apt-cache").arg("policy").args(packages))?;
    let mut versions = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            current = line.strip_suffix(':').map(|name| name.to_string());
        } else if let (Some(name), Some(candidate)) =
            (&current, line.trim().strip_prefix("Candidate:"))
        {
            let candidate = candidate.trim();
            if candidate != "(none)" && packages.contains(name) {
                versions.insert(name.clone(), candidate.to_string());
            }
        }
    }
    if let Some(missing) = packages.iter().find(|p| !versions.contains_key(*p)) {
        return Err(BuildError::UnknownPackage(missing.clone()));
    }
    Ok(versions)
}

fn download(
    cache: &Path,
    versions: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, PathBuf>, BuildError> {
    let debs_dir = cache.join("debs");
    fs::create_dir_all(&debs_dir).map_err(io_err(&debs_dir))?;
    let find = |package: &str, version: &str| -> Option<PathBuf> {
        // apt writes the epoch colon as %3a in file names.
        let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
        fs::read_dir(&debs_dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
        })
    };
    let missing: Vec<String> = versions
        .iter()
        .filter(|(p, v)| find(p, v).is_none())
        .map(|(p, v)| format!("{p}={v}"))
        .collect();
    if !missing.is_empty() {
        run_tool(
            Command::new("apt-get")
                .arg("download")
                .arg("-q")
                .args(&missing)
                .current_dir(&debs_dir),
        )?;
    }
    versions
        .iter()
        .map(|(p, v)| {
            find(p, v).map(|deb| (p.clone(), deb)).ok_or_else(|| {
                BuildError::Contents(format!("apt-get download did not produce {p} {v}"))
            })
        })
        .collect()
}

fn unpack(root: &Path, deb: &Path) -> Result<PathBuf, BuildError> {
    let stem = deb
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let dir = root.join(&stem);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    run_tool(Command::new("dpkg").arg("-x").arg(deb).arg(&dir))?;
    fs::write(dir.join(".complete"), b"").map_err(io_err(&dir))?;
    Ok(dir)
}

fn find_kernel(tree: &Path) -> Result<(PathBuf, PathBuf), BuildError> {
    let boot = tree.join("boot");
    let kernel = fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| BuildError::Contents(format!("no vmlinuz-* in {}", boot.display())))?;
    let version = kernel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = tree.join("lib/modules").join(&version).join("kernel");
    if !modules.is_dir() {
        return Err(BuildError::Contents(format!(
            "no modules directory {}",
            modules.display()
        )));
    }
    Ok((kernel, modules))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err(&path))?;
        if file_type.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Orders `roots` and their dependencies (from each module's `.modinfo depends=`) so every
/// module comes after the modules it needs.
fn resolve_modules(
    modules_dir: &Path,
    roots: &[&str],
) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let mut files = Vec::new();
    walk(modules_dir, &mut files)?;
    let by_name: BTreeMap<String, PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .map(|p| {
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .replace('-', "_");
            (name, p)
        })
        .collect();
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, PathBuf>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<(), BuildError> {
        if done.contains(name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(BuildError::Contents(format!(
                "module dependency loop at {name}"
            )));
        }
        let path = by_name
            .get(name)
            .ok_or_else(|| BuildError::Contents(format!("kernel module {name} not found")))?;
        let data = read(path)?;
        for dep in module_depends(&data) {
            visit(&dep, by_name, done, order, depth + 1)?;
        }
        done.insert(name.to_string());
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for root in roots {
        visit(root, &by_name, &mut done, &mut order, 0)?;
    }
    Ok(order)
}

/// The `depends=` list of a kernel module's `.modinfo` section (empty when absent/unparsable).
pub fn module_depends(data: &[u8]) -> Vec<String> {
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(data) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let Ok(sections) = header.sections(endian, data) else {
        return Vec::new();
    };
    let Some((_, section)) = sections.section_by_name(endian, b".modinfo") else {
        return Vec::new();
    };
    let Ok(info) = section.data(endian, data) else {
        return Vec::new();
    };
    info.split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `DT_NEEDED` libraries of an ELF file (empty for non-ELF or static files).
pub fn elf_needed(data: &[u8]) -> Vec<String> {
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(data) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let Ok(sections) = header.sections(endian, data) else {
        return Vec::new();
    };
    let Ok(Some((dynamic, index))) = sections.dynamic(endian, data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, data, index) else {
        return Vec::new();
    };
    dynamic
        .iter()
        .filter(|d| d.tag32(endian) == Some(object::elf::DT_NEEDED))
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, BuildError> {
    let out = run_tool(Command::new(busybox).arg("--list-full"))?;
    Ok(out.lines().map(|l| l.trim().to_string()).collect())
}

enum ProgramFile {
    Regular(PathBuf),
    Link(String),
}

/// Executables (and symlinks to them) in a package's bin/sbin directories, as merged-/usr
/// paths inside the image.
fn package_programs(tree: &Path) -> Result<Vec<(String, ProgramFile, u32)>, BuildError> {
    let mut out = Vec::new();
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin"] {
        let full = tree.join(dir);
        let Ok(entries) = fs::read_dir(&full) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = format!(
                "{}/{}",
                merged_usr_path(dir),
                entry.file_name().to_string_lossy()
            );
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                out.push((
                    name,
                    ProgramFile::Link(target.to_string_lossy().into_owned()),
                    0o777,
                ));
            } else if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                out.push((name, ProgramFile::Regular(path), 0o755));
            }
        }
    }
    Ok(out)
}

/// Maps `bin/x`, `sbin/x` to `usr/bin/x`, `usr/sbin/x` (the image uses a merged /usr).
fn merged_usr_path(path: &str) -> String {
    if path.starts_with("usr/") || path == "usr" {
        path.to_string()
    } else {
        format!("usr/{path}")
    }
}

/// The initramfs being assembled: path -> entry, written as a deterministic newc archive.
#[derive(Default)]
struct CpioImage {
    entries: BTreeMap<String, cpio::Entry>,
}

impl CpioImage {
    fn base_layout(&mut self) {
        for dir in [
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "etc",
            "root",
            "mnt",
            "var",
            "usr",
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "usr/lib/modules",
            "usr/lib/x86_64-linux-gnu",
            "etc/slicenet",
        ] {
            self.entries
                .insert(dir.into(), cpio::Entry::Dir { mode: 0o755 });
        }
        self.entries
            .insert("tmp".into(), cpio::Entry::Dir { mode: 0o1777 });
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            self.symlink(link, target);
        }
        // The kernel opens /dev/console for init before devtmpfs is mounted.
        self.entries.insert(
            "dev/console".into(),
            cpio::Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        self.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        );
        self.file("etc/group", b"root:x:0:\n".to_vec(), 0o644);
        self.file("etc/hosts", b"127.0.0.1 localhost\n".to_vec(), 0o644);
        self.file(
            "etc/nsswitch.conf",
            b"hosts: files dns\npasswd: files\ngroup: files\n".to_vec(),
            0o644,
        );
    }

    fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Adds the missing parent directories of `path`: the kernel's unpacker creates none.
    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            end += pos;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(cpio::Entry::Dir { mode: 0o755 });
            end += 1;
        }
    }

    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), cpio::Entry::File { mode, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries.insert(
            path.to_string(),
            cpio::Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    fn write(&self, path: &Path) -> Result<(), BuildError> {
        let file = fs::File::create(path).map_err(io_err(path))?;
        let mut writer = CpioWriter::new(std::io::BufWriter::new(file));
        for (name, entry) in &self.entries {
            writer.entry(name, entry).map_err(io_err(path))?;
        }
        writer
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(io_err(path))?;
        Ok(())
    }
}

/// Copies an appliance directory to `dest` (for `--out`), keeping file names.
pub fn copy_appliance(src: &Path, dest: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    for entry in fs::read_dir(src).map_err(io_err(src))?.flatten() {
        let to = dest.join(entry.file_name());
        fs::copy(entry.path(), &to).map_err(io_err(&to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_paths() {
        assert_eq!(merged_usr_path("bin/ping"), "usr/bin/ping");
        assert_eq!(merged_usr_path("usr/sbin/ip"), "usr/sbin/ip");
    }

    #[test]
    fn apt_depends_output_becomes_a_graph() {
        let out = "dnsutils\n  Depends: bind9-dnsutils\nbind9-dnsutils\n  Depends: bind9-libs\n |Depends: libc6\n  Depends: <libfoo>\n  PreDepends: libc6\n<virtual>\nbind9-libs\n";
        let graph = parse_depends(out);
        assert_eq!(graph["dnsutils"], vec!["bind9-dnsutils"]);
        assert_eq!(graph["bind9-dnsutils"], vec!["bind9-libs", "libc6"]);
        assert!(graph["bind9-libs"].is_empty());
        assert_eq!(graph.len(), 3);
    }

    #[test]
    fn elf_parsers_return_nothing_for_garbage() {
        assert!(elf_needed(b"not an elf").is_empty());
        assert!(module_depends(&[0x7f, b'E', b'L', b'F', 2, 1, 1]).is_empty());
    }

    #[test]
    fn elf_needed_reads_a_real_binary() {
        // The test binary itself is a dynamically linked ELF that needs libc.
        let exe = std::env::current_exe().unwrap();
        let needed = elf_needed(&fs::read(exe).unwrap());
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
    }
}
