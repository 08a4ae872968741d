//! Detecting whether this process may build testbeds (root, /dev/net/tun,
//! network namespaces), and the skip rule every privileged test follows.

use std::path::Path;
use std::sync::OnceLock;

/// What this machine and process allow.
#[derive(Debug, Clone)]
pub struct PrivilegeReport {
    /// Effective uid is 0.
    pub root: bool,
    /// `/dev/net/tun` exists (TAP devices can be created).
    pub tun: bool,
    /// A network namespace could be created and removed.
    pub netns: bool,
    /// `ip` (iproute2) is installed.
    pub iproute2: bool,
}

impl PrivilegeReport {
    /// `None` when everything is available, otherwise a sentence saying
    /// what is missing.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.root {
            missing.push("root privileges (run as root, e.g. with sudo)");
        }
        if !self.tun {
            missing.push("/dev/net/tun");
        }
        if !self.iproute2 {
            missing.push("iproute2's `ip` command (apt-get install iproute2)");
        }
        if self.root && self.iproute2 && !self.netns {
            missing.push("network namespaces (`ip netns add` failed)");
        }
        if missing.is_empty() {
            None
        } else {
            Some(format!("needs {}", missing.join(", ")))
        }
    }
}

fn probe() -> PrivilegeReport {
    let root = nix::unistd::geteuid().is_root();
    let tun = Path::new("/dev/net/tun").exists();
    let iproute2 = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let netns = root && iproute2 && {
        let name = format!("snprobe-{}", std::process::id());
        let ok = crate::command::ip(&["netns", "add", &name]).is_ok();
        let _ = crate::command::ip(&["netns", "del", &name]);
        ok
    };
    PrivilegeReport {
        root,
        tun,
        netns,
        iproute2,
    }
}

/// The (cached) privilege report of this process.
pub fn privilege_report() -> &'static PrivilegeReport {
    static REPORT: OnceLock<PrivilegeReport> = OnceLock::new();
    REPORT.get_or_init(probe)
}

/// Returns `true` when `test` may run privileged work. Otherwise prints
/// `SKIPPED: <test>: <reason>` and returns `false` — unless
/// `SLICENET_REQUIRE_PRIVILEGED=1`, in which case a missing privilege is a
/// test failure (CI sets it where the privileges exist).
pub fn require_privileged(test: &str) -> bool {
    match privilege_report().missing() {
        None => true,
        Some(reason) => {
            if std::env::var("SLICENET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("{test}: SLICENET_REQUIRE_PRIVILEGED=1 but this test {reason}");
            }
            println!("SKIPPED: {test}: {reason}");
            false
        }
    }
}
