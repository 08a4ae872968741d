//! What a node keeps on disk so it comes back on its own after a restart
//! or through an authority outage: its keys, its registration, and the
//! signed tickets it holds (re-verified every time they are read).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slicenet_authority::keys::PublicKey;
use slicenet_authority::ticket::{self, Ticket};

/// Errors of the node's state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what the node wrote.
    #[error("{path} is corrupt: {message} (remove it; the node fetches it again)")]
    Corrupt { path: PathBuf, message: String },
}

/// What the authority told the node when it registered, cached for the
/// times the authority cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedRegistration {
    /// The stable tunnel address the authority assigned.
    pub tunnel_address: Ipv4Addr,
    /// The authority key the tickets are signed with.
    pub authority_key: PublicKey,
}

/// Tickets read back from disk.
#[derive(Debug, Default)]
pub struct KeptTickets {
    /// Verified tickets with their signed bytes, oldest epoch first.
    pub good: Vec<(Ticket, Vec<u8>)>,
    /// Files that did not verify, each with the reason (they were removed).
    pub refused: Vec<String>,
}

/// The node's data directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename), so a
/// crash leaves the old or the new content, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl StateDir {
    /// Opens (creating when needed) the directory and its subdirectories.
    pub fn open(root: &Path) -> Result<StateDir, StoreError> {
        let dir = StateDir {
            root: root.to_path_buf(),
        };
        for sub in [dir.root.clone(), dir.tickets_dir(), dir.run_dir()] {
            std::fs::create_dir_all(&sub).map_err(io(&sub))?;
        }
        Ok(dir)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's ed25519 identity key (also its libp2p identity).
    pub fn identity_key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The node's WireGuard private key.
    pub fn wireguard_key_path(&self) -> PathBuf {
        self.root.join("wireguard.key")
    }

    /// The node daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// Sockets, consoles and logs of running slivers.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn tickets_dir(&self) -> PathBuf {
        self.root.join("tickets")
    }

    fn registration_path(&self) -> PathBuf {
        self.root.join("registration.json")
    }

    /// The cached registration, if the node ever registered.
    pub fn registration(&self) -> Result<Option<CachedRegistration>, StoreError> {
        let path = self.registration_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Caches the registration.
    pub fn save_registration(&self, reg: &CachedRegistration) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(reg).expect("registration serializes");
        write_atomic(&self.registration_path(), &bytes)
    }

    fn ticket_path(&self, sliver_id: u64) -> PathBuf {
        self.tickets_dir().join(format!("{sliver_id}.ticket"))
    }

    /// Keeps the signed bytes of a sliver's current ticket.
    pub fn save_ticket(&self, sliver_id: u64, signed: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.ticket_path(sliver_id), signed)
    }

    /// Forgets a sliver's ticket (revoked or expired).
    pub fn remove_ticket(&self, sliver_id: u64) -> Result<(), StoreError> {
        let path = self.ticket_path(sliver_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Loads every kept ticket that still verifies against `authority`
    /// for `node_key` at `now`. Files that do not verify (tampered,
    /// expired, another authority's) are removed and reported, not obeyed.
    pub fn load_tickets(
        &self,
        authority: &PublicKey,
        node_key: &PublicKey,
        now: i64,
    ) -> Result<KeptTickets, StoreError> {
        let dir = self.tickets_dir();
        let mut good = Vec::new();
        let mut refused = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("ticket") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            match ticket::verify_for_node(&bytes, authority, node_key, now) {
                Ok(t) => good.push((t, bytes)),
                Err(e) => {
                    refused.push(format!("{}: {e}", path.display()));
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        good.sort_by_key(|(t, _)| t.epoch);
        Ok(KeptTickets { good, refused })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_round_trips_and_a_missing_one_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.registration().unwrap(), None);
        let reg = CachedRegistration {
            tunnel_address: Ipv4Addr::new(198, 19, 255, 3),
            authority_key: PublicKey([7; 32]),
        };
        dir.save_registration(&reg).unwrap();
        assert_eq!(dir.registration().unwrap(), Some(reg));
        std::fs::write(tmp.path().join("registration.json"), b"{").unwrap();
        assert!(matches!(
            dir.registration(),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn tickets_that_do_not_verify_are_refused_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save_ticket(7, b"not a ticket").unwrap();
        let kept = dir
            .load_tickets(&PublicKey([1; 32]), &PublicKey([2; 32]), 0)
            .unwrap();
        assert!(kept.good.is_empty());
        assert_eq!(kept.refused.len(), 1);
        assert!(!tmp.path().join("tickets/7.ticket").exists());
    }
}
