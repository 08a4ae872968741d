//! `slicenet overlay run`: the data plane of one node, set up from a
//! configuration file, with a control socket for `slicenet overlay status`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::DaemonConfig;
use crate::control;
use crate::overlay::{Overlay, PortKind};

/// A running daemon: the overlay plus its control socket.
pub struct Daemon {
    /// The data plane (for further runtime changes).
    pub overlay: Overlay,
    control: tokio::task::JoinHandle<()>,
    control_path: PathBuf,
}

impl Daemon {
    /// Starts everything `config` describes on the current tokio runtime:
    /// the underlay socket, peers, enclaves, ports and the control socket.
    pub fn start(config: &DaemonConfig) -> anyhow::Result<Daemon> {
        let file = config.file.display().to_string();
        let overlay = Overlay::start(config.overlay.clone())
            .with_context(|| format!("starting the overlay of {file}"))?;
        for p in &config.peers {
            overlay
                .add_peer(p.clone())
                .with_context(|| format!("{file}: adding peer {}", p.public_key))?;
            tracing::info!(
                peer = p.name.as_deref().unwrap_or("?"),
                endpoint = ?p.endpoint,
                tunnel = %p.tunnel_address,
                "peer added"
            );
        }
        for e in &config.enclaves {
            overlay
                .add_enclave(e.vni, e.members.iter().copied())
                .with_context(|| format!("{file}: adding enclave {}", e.vni))?;
            for p in &e.ports {
                let info = overlay
                    .add_port(p.clone())
                    .with_context(|| format!("{file}: enclave {}: port {}", e.vni, p.name))?;
                let device = match &p.kind {
                    PortKind::Tap { ifname, .. } => format!("TAP {ifname}"),
                    PortKind::UnixDgram { switch_sock, .. } => {
                        format!("unix socket {}", switch_sock.display())
                    }
                };
                tracing::info!(
                    enclave = e.vni,
                    port = %p.name,
                    mac = ?info.mac,
                    mtu = info.mtu,
                    "port ready on {device}"
                );
            }
            tracing::info!(enclave = e.vni, members = e.members.len(), "enclave ready");
        }
        let listener = control::bind(&config.control_socket).with_context(|| {
            format!(
                "binding the control socket {} (set control_socket in {file} to move it)",
                config.control_socket.display()
            )
        })?;
        let control = tokio::spawn(control::serve(overlay.clone(), listener));
        Ok(Daemon {
            overlay,
            control,
            control_path: config.control_socket.clone(),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.control.abort();
        let _ = std::fs::remove_file(&self.control_path);
        self.overlay.shutdown();
    }
}

/// Runs the daemon of `config_path` until SIGINT or SIGTERM.
pub fn run(config_path: &Path, threads: usize) -> anyhow::Result<()> {
    let config = DaemonConfig::load(config_path)?;
    // One thread runs everything on a current-thread runtime (no hand-offs
    // between workers); more spread receive and port tasks over workers.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("slicenet-overlay")
            .build()
    }
    .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(&config)?;
        tracing::info!(
            listen = %daemon.overlay.local_addr(),
            public_key = %daemon.overlay.public_key(),
            control = %config.control_socket.display(),
            "overlay daemon running; `slicenet overlay status` shows its state"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        drop(daemon);
        Ok(())
    })
}
