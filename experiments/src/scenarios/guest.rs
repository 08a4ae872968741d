//! Working inside guests through their serial consoles (the node daemon's
//! control socket): commands on many guests at once, files written into
//! guests, enclave connectivity checks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use slicenet_authority::api::{Enclave, Sliver};
use slicenet_node::daemon::control;

use crate::cluster::{Cluster, PlacedSliver};
use crate::rtt::parse_ping;

use super::ensure_running;

/// The busybox shell's line editor keeps at most 1024 characters of a
/// typed line; file contents are sent in pieces well below that.
const CONSOLE_CHUNK: usize = 768;

/// The control socket of the node running `sliver`.
pub fn control_socket(cluster: &Cluster, sliver: &PlacedSliver) -> anyhow::Result<PathBuf> {
    let i = cluster
        .node_index(&sliver.node)
        .with_context(|| format!("sliver {} is on unknown node {}", sliver.id, sliver.node))?;
    Ok(cluster.nodes[i].control_socket())
}

/// The slivers of `slivers` that are members of `enclave`, with their
/// enclave addresses, in the order of `slivers`.
pub fn placed(slivers: &[Sliver], enclave: &Enclave) -> Vec<PlacedSliver> {
    slivers
        .iter()
        .filter_map(|s| {
            let member = enclave.members.iter().find(|m| m.sliver_id == s.id)?;
            Some(PlacedSliver {
                id: s.id,
                node: s.node.clone(),
                site: s.site.clone(),
                address: member.address,
            })
        })
        .collect()
}

/// Runs one command on each of several guests at the same time (at most
/// one command per guest: a console carries one conversation) and returns
/// each one's output, in order.
pub fn exec_all(
    cluster: &Cluster,
    jobs: &[(PlacedSliver, String)],
    timeout: Duration,
) -> Vec<anyhow::Result<String>> {
    let mut tasks = Vec::new();
    for (sliver, command) in jobs {
        match control_socket(cluster, sliver) {
            Ok(path) => tasks.push(Ok((path, sliver.id, command.clone()))),
            Err(e) => tasks.push(Err(e)),
        }
    }
    cluster.run(async move {
        let handles: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                tokio::spawn(async move {
                    let (path, id, command) = task?;
                    control::console_exec(&path, id, &command, timeout)
                        .await
                        .with_context(|| format!("running `{command}` on sliver {id}"))
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(
                h.await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("console task failed: {e}"))),
            );
        }
        out
    })
}

/// Runs one command on one guest.
pub fn exec(
    cluster: &Cluster,
    sliver: &PlacedSliver,
    command: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    exec_all(cluster, &[(sliver.clone(), command.to_string())], timeout)
        .pop()
        .expect("one job, one result")
}

/// Writes `content` to `path` (mode 0755) inside every guest of `slivers`,
/// through their consoles, and checks the size that arrived.
pub fn write_file_all(
    cluster: &Cluster,
    slivers: &[PlacedSliver],
    path: &str,
    content: &str,
) -> anyhow::Result<()> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let staging = format!("{path}.b64");
    let mut commands = vec![format!("rm -f {staging}")];
    for chunk in encoded.as_bytes().chunks(CONSOLE_CHUNK) {
        let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
        commands.push(format!("printf %s '{chunk}' >>{staging}"));
    }
    commands.push(format!(
        "base64 -d {staging} >{path} && rm -f {staging} && chmod 755 {path} && echo SIZE=$(wc -c <{path})"
    ));
    let last = commands.len() - 1;
    for (k, command) in commands.iter().enumerate() {
        ensure_running()?;
        let jobs: Vec<_> = slivers
            .iter()
            .map(|s| (s.clone(), command.clone()))
            .collect();
        for (s, out) in slivers
            .iter()
            .zip(exec_all(cluster, &jobs, Duration::from_secs(20)))
        {
            let out = out.with_context(|| format!("writing {path} into sliver {}", s.id))?;
            if k == last {
                let want = format!("SIZE={}", content.len());
                anyhow::ensure!(
                    out.lines().any(|l| l.trim() == want),
                    "writing {path} into sliver {}: expected {want}, the guest said {out:?}",
                    s.id
                );
            }
        }
    }
    Ok(())
}

/// Waits until every guest of `slivers` answers a ping from the first one
/// and the first answers every other one, through the enclave.
pub fn wait_connected(
    cluster: &Cluster,
    slivers: &[PlacedSliver],
    timeout: Duration,
) -> anyhow::Result<()> {
    let Some((first, rest)) = slivers.split_first() else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&PlacedSliver> = rest.iter().collect();
    while !pending.is_empty() {
        ensure_running()?;
        // Both directions at once: `first` pings the next pending guest
        // while that guest pings `first`.
        let to = pending[0];
        let jobs = vec![
            (first.clone(), format!("ping -c 1 -W 1 -q {}", to.address)),
            (to.clone(), format!("ping -c 1 -W 1 -q {}", first.address)),
        ];
        let outs = exec_all(cluster, &jobs, Duration::from_secs(10));
        let answered = outs.iter().all(|o| {
            o.as_ref()
                .ok()
                .and_then(|text| parse_ping(text))
                .is_some_and(|p| p.received > 0)
        });
        if answered {
            pending.remove(0);
            continue;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "guests {} (sliver {}) and {} (sliver {}) did not reach each other through the enclave within {timeout:?}",
            first.address,
            first.id,
            to.address,
            to.id
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
