//! A running VM process owned by the node.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

/// A VM process. Dropping it kills the process, so no VM outlives the
/// node task that owns it by accident.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    pid: u32,
}

impl VmProcess {
    /// Starts `program` with `args` as a VM process: its output goes to
    /// `log`, it is killed when dropped and when the node daemon dies.
    pub(crate) fn spawn(
        program: &std::path::Path,
        args: Vec<String>,
        log: &std::path::Path,
    ) -> Result<VmProcess, super::RuntimeError> {
        let prepare = |source| super::RuntimeError::Prepare {
            path: log.to_path_buf(),
            source,
        };
        let out = std::fs::File::create(log).map_err(prepare)?;
        let err = out.try_clone().map_err(prepare)?;
        let mut command = tokio::process::Command::new(program);
        die_with_parent(&mut command);
        let child = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| super::RuntimeError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        Ok(VmProcess { child, pid })
    }

    /// Process id of the VM process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the VM to end on its own.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// `Some(status)` when the VM has already ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Asks the VM process to end (SIGTERM), and kills it when it is still
    /// running after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await
            }
        }
    }
}

/// Makes the VM process receive SIGKILL when the node daemon dies, so a
/// crashed or killed daemon leaves no VM behind; the restarted daemon
/// boots the slivers again from its tickets.
///
/// Linux delivers the signal when the *thread* that spawned the child
/// ends, so spawn VMs from the daemon's long-lived runtime threads, never
/// from a `spawn_blocking` thread (those end when idle).
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
