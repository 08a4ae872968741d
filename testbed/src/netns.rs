//! A named network namespace (`ip netns`), and ways to run things inside it.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::command::{ip, CommandError};

/// Errors from creating, entering or removing a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// An `ip` command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The namespace file could not be opened (the namespace does not exist).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` refused to move this thread into the namespace.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    /// A tokio runtime could not be built inside the namespace.
    #[error("cannot start an async runtime inside namespace {name}: {source}")]
    Runtime {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A network namespace created with `ip netns add`. It is *not* removed on
/// drop by itself; the owning [`crate::Testbed`] removes it.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Refers to an existing namespace by name without creating it.
    pub fn existing(name: &str) -> Self {
        NetNs {
            name: name.to_string(),
        }
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace.
    ///
    /// The child joins the namespace with `setns(2)` just before `exec`.
    /// Unlike `ip netns exec` this keeps the host's mounts — notably
    /// `/sys/fs/cgroup`, which node daemons need for resource limits.
    /// When the namespace cannot be opened, the command runs through
    /// `ip netns exec`, whose error then says what is wrong.
    pub fn command(&self, program: &str) -> Command {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let Ok(file) = File::open(self.path()) else {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name, program]);
            return cmd;
        };
        let ns: OwnedFd = file.into();
        let mut cmd = Command::new(program);
        // SAFETY: setns(2) is async-signal-safe and the closure touches
        // nothing but a file descriptor owned by the command.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Moves the *calling thread* into this namespace. Sockets and TAP
    /// devices the thread creates afterwards belong to the namespace, and
    /// threads it spawns inherit it.
    pub fn enter_current_thread(&self) -> Result<(), NetNsError> {
        let path = self.path();
        let file = File::open(&path).map_err(|source| NetNsError::Open { path, source })?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetNsError::Enter {
                name: self.name.clone(),
                source,
            }
        })
    }

    /// Runs `f` on a new OS thread inside this namespace and returns its
    /// join handle.
    pub fn spawn_thread<F, T>(&self, f: F) -> std::thread::JoinHandle<Result<T, NetNsError>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                ns.enter_current_thread()?;
                Ok(f())
            })
            .expect("spawning a thread")
    }

    /// Runs the future built by `make` to completion on a current-thread
    /// tokio runtime inside this namespace, blocking the caller.
    pub fn block_on<F, Fut, T>(&self, make: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.name.clone();
        let handle = self.spawn_thread(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetNsError::Runtime { name, source })
                .map(|rt| rt.block_on(make()))
        });
        match handle.join() {
            Ok(result) => result?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        match ip(&["netns", "pids", &self.name]) {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Kills every process inside the namespace (TERM, then KILL after a
    /// grace period) and deletes the namespace. Errors are ignored except a
    /// failure of the final delete, which is returned.
    pub fn destroy(&self) -> Result<(), NetNsError> {
        let own = std::process::id() as i32;
        let signal_all = |sig: nix::sys::signal::Signal| {
            for pid in self.pids() {
                if pid != own {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        };
        signal_all(nix::sys::signal::Signal::SIGTERM);
        for _ in 0..30 {
            if self.pids().iter().all(|&p| p == own) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_all(nix::sys::signal::Signal::SIGKILL);
        if !self.path().exists() {
            return Ok(());
        }
        ip(&["netns", "del", &self.name])?;
        Ok(())
    }
}
