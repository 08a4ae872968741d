//! CPU and memory limits of sliver VM processes through cgroups: v2 where
//! its controllers are available, v1 (`cpu`, `memory` hierarchies) where
//! the host still runs those, and a clear statement when neither is.

use std::path::{Path, PathBuf};

/// Memory a VM process needs beyond its guest's RAM (VMM or QEMU code,
/// device buffers, TCG's translation cache).
const PROCESS_OVERHEAD_MIB: u64 = 256;
const CPU_PERIOD_US: u64 = 100_000;

/// Where the node puts sliver processes' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// Unified hierarchy with the `cpu` and `memory` controllers.
    V2 { base: PathBuf },
    /// Legacy per-controller hierarchies.
    V1 { cpu: PathBuf, memory: PathBuf },
    /// No limits can be enforced; the sentence says why.
    Unavailable { reason: String },
}

fn has_v2_controllers(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .map(|c| {
            let set: Vec<&str> = c.split_whitespace().collect();
            set.contains(&"cpu") && set.contains(&"memory")
        })
        .unwrap_or(false)
}

impl Limits {
    /// Detects the cgroup layout under /sys/fs/cgroup and prepares a
    /// `slicenet` group in it.
    pub fn detect() -> Limits {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(root: &Path) -> Limits {
        if !nix::unistd::geteuid().is_root() {
            return Limits::Unavailable {
                reason: "the node does not run as root".into(),
            };
        }
        if has_v2_controllers(root) {
            let base = root.join("slicenet");
            let enabled = std::fs::create_dir_all(&base).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory").is_ok()
                && std::fs::write(base.join("cgroup.subtree_control"), "+cpu +memory").is_ok();
            if enabled {
                return Limits::V2 { base };
            }
        }
        let (cpu, memory) = (root.join("cpu/slicenet"), root.join("memory/slicenet"));
        if root.join("cpu/cpu.cfs_quota_us").exists()
            && root.join("memory/memory.limit_in_bytes").exists()
            && std::fs::create_dir_all(&cpu).is_ok()
            && std::fs::create_dir_all(&memory).is_ok()
        {
            return Limits::V1 { cpu, memory };
        }
        Limits::Unavailable {
            reason: "no cgroup v2 cpu+memory controllers and no cgroup v1 cpu and memory \
                     hierarchies under /sys/fs/cgroup"
                .into(),
        }
    }

    /// One sentence for the node's start-up output.
    pub fn describe(&self) -> String {
        match self {
            Limits::V2 { base } => format!("cgroup v2 at {}", base.display()),
            Limits::V1 { cpu, memory } => {
                format!("cgroup v1 ({} and {})", cpu.display(), memory.display())
            }
            Limits::Unavailable { reason } => {
                format!("not enforced ({reason}); slivers are bounded only by their VM size")
            }
        }
    }

    /// Puts process `pid` of sliver `name` under a limit of `vcpus` CPUs
    /// and its guest memory plus overhead. The error is a sentence for the
    /// sliver's status; the VM keeps running without the limit.
    pub fn apply(&self, name: &str, pid: u32, vcpus: u32, memory_mib: u32) -> Result<(), String> {
        let quota = u64::from(vcpus.max(1)) * CPU_PERIOD_US;
        let memory = (u64::from(memory_mib) + PROCESS_OVERHEAD_MIB) << 20;
        let write = |path: PathBuf, value: String| {
            std::fs::write(&path, value)
                .map_err(|e| format!("resource limits not applied: {}: {e}", path.display()))
        };
        match self {
            Limits::V2 { base } => {
                let dir = base.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
                write(dir.join("memory.max"), memory.to_string())?;
                write(dir.join("cgroup.procs"), pid.to_string())
            }
            Limits::V1 { cpu, memory: mem } => {
                let (cpu_dir, mem_dir) = (cpu.join(name), mem.join(name));
                for dir in [&cpu_dir, &mem_dir] {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                write(cpu_dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                write(cpu_dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                write(mem_dir.join("memory.limit_in_bytes"), memory.to_string())?;
                write(cpu_dir.join("cgroup.procs"), pid.to_string())?;
                write(mem_dir.join("cgroup.procs"), pid.to_string())
            }
            Limits::Unavailable { reason } => {
                Err(format!("resource limits not enforced: {reason}"))
            }
        }
    }

    /// Removes a sliver's (now empty) cgroups.
    pub fn remove(&self, name: &str) {
        match self {
            Limits::V2 { base } => {
                let _ = std::fs::remove_dir(base.join(name));
            }
            Limits::V1 { cpu, memory } => {
                let _ = std::fs::remove_dir(cpu.join(name));
                let _ = std::fs::remove_dir(memory.join(name));
            }
            Limits::Unavailable { .. } => {}
        }
    }

    /// The limits a sliver's process is under, read back from the cgroup
    /// files: `(cpu quota in CPUs, memory limit in MiB)`.
    pub fn read_back(&self, name: &str) -> Option<(f64, u64)> {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        match self {
            Limits::V2 { base } => {
                let cpu = read(base.join(name).join("cpu.max"))?;
                let quota: f64 = cpu.split_whitespace().next()?.parse().ok()?;
                let mem: u64 = read(base.join(name).join("memory.max"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((quota / CPU_PERIOD_US as f64, mem >> 20))
            }
            Limits::V1 { cpu, memory } => {
                let quota: f64 = read(cpu.join(name).join("cpu.cfs_quota_us"))?
                    .trim()
                    .parse()
                    .ok()?;
                let mem: u64 = read(memory.join(name).join("memory.limit_in_bytes"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((quota / CPU_PERIOD_US as f64, mem >> 20))
            }
            Limits::Unavailable { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_limited_and_the_limits_read_back() {
        let limits = Limits::detect();
        if let Limits::Unavailable { reason } = &limits {
            println!("SKIPPED: a_process_is_limited_and_the_limits_read_back: {reason}");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let name = format!("test-{}", std::process::id());
        limits.apply(&name, child.id(), 2, 256).unwrap();
        assert_eq!(
            limits.read_back(&name),
            Some((2.0, 256 + PROCESS_OVERHEAD_MIB))
        );
        child.kill().unwrap();
        child.wait().unwrap();
        limits.remove(&name);
        assert_eq!(limits.read_back(&name), None);
    }
}
