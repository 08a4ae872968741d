//! The MAC table of one enclave's learning switch.
//!
//! Entries map a MAC address to where it was last seen: a local port or a
//! remote node. Local ports with anti-spoofing have their MAC *pinned*: it
//! can never be learned anywhere else, so nobody can hijack a VM's traffic
//! by sending frames with its address. Dynamic entries age out. The table
//! has a size limit so that a flood of random source addresses cannot grow
//! memory without bound (beyond it, unknown destinations are flooded).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::node::{Peer, Port};
use crate::wire::ethernet::MacAddr;

/// Where a MAC address lives.
#[derive(Clone)]
pub(crate) enum Attachment {
    /// A port on this node.
    Local(Arc<Port>),
    /// A remote node.
    Remote(Arc<Peer>),
}

impl Attachment {
    /// The port's or peer's id (one id space for both).
    pub(crate) fn id(&self) -> u64 {
        match self {
            Attachment::Local(p) => p.id,
            Attachment::Remote(p) => p.id,
        }
    }
}

struct Entry {
    at: Attachment,
    last_seen: AtomicU64,
    pinned: bool,
}

/// Outcome of learning a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// The table now says the address lives where the frame came from
    /// (or the table is full and nothing changed).
    Ok,
    /// The address is pinned to a different local port: the frame is spoofed.
    PinnedElsewhere,
}

/// Maximum dynamic entries per enclave.
pub(crate) const MAC_TABLE_CAPACITY: usize = 8192;

/// One enclave's MAC table.
#[derive(Default)]
pub(crate) struct MacTable {
    entries: RwLock<HashMap<MacAddr, Entry>>,
}

impl MacTable {
    /// Records that `mac` was seen at `at` at time `now` (seconds).
    /// `make` builds the attachment only when the table changes.
    pub(crate) fn learn(
        &self,
        mac: MacAddr,
        id: u64,
        make: impl FnOnce() -> Attachment,
        now: u64,
    ) -> Learned {
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = entries.get(&mac) {
                if e.at.id() == id {
                    // Refresh without the write lock: the common case.
                    if e.last_seen.load(Ordering::Relaxed) != now {
                        e.last_seen.store(now, Ordering::Relaxed);
                    }
                    return Learned::Ok;
                }
                if e.pinned {
                    return Learned::PinnedElsewhere;
                }
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get_mut(&mac) {
            Some(e) if e.pinned && e.at.id() != id => Learned::PinnedElsewhere,
            Some(e) => {
                if e.at.id() != id {
                    e.at = make();
                }
                e.last_seen.store(now, Ordering::Relaxed);
                Learned::Ok
            }
            None => {
                if entries.len() < MAC_TABLE_CAPACITY {
                    entries.insert(
                        mac,
                        Entry {
                            at: make(),
                            last_seen: AtomicU64::new(now),
                            pinned: false,
                        },
                    );
                }
                Learned::Ok
            }
        }
    }

    /// Where `mac` lives, unless unknown or older than `aging` seconds.
    pub(crate) fn lookup(&self, mac: MacAddr, now: u64, aging: u64) -> Option<Attachment> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let e = entries.get(&mac)?;
        if !e.pinned && now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) > aging {
            return None;
        }
        Some(e.at.clone())
    }

    /// Binds `mac` to a local port for good (anti-spoofing).
    pub(crate) fn pin(&self, mac: MacAddr, port: &Arc<Port>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            mac,
            Entry {
                at: Attachment::Local(port.clone()),
                last_seen: AtomicU64::new(0),
                pinned: true,
            },
        );
    }

    /// Forgets every address attached to the port or peer with this id.
    pub(crate) fn forget(&self, id: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| e.at.id() != id);
    }

    /// Forgets every remote address whose peer fails `keep`.
    pub(crate) fn retain_remotes(&self, keep: impl Fn(&Peer) -> bool) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| match &e.at {
            Attachment::Remote(p) => keep(p),
            Attachment::Local(_) => true,
        });
    }

    /// Drops dynamic entries not seen for more than `aging` seconds.
    pub(crate) fn expire(&self, now: u64, aging: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| {
            e.pinned || now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) <= aging
        });
    }

    /// Number of entries (pinned included).
    pub(crate) fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
