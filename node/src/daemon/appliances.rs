//! Finding the appliance a ticket names among the appliances a node has.
//!
//! A ticket names an appliance by name and content hash:
//! `sha256:<hex>` of its `appliance.toml`, which itself pins every part
//! (kernel, initramfs, disk) by SHA-256 — so the manifest's hash is the
//! hash of the whole appliance. An empty hash means "the node's appliance
//! of that name".

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slicenet_vmm::appliance::{Appliance, MANIFEST_FILE};

/// Why no usable appliance was found.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceLookupError {
    /// Nothing of that name (and hash) in any appliance directory.
    #[error(
        "appliance {name:?}{} not found in {dirs}; build it with `slicenet appliance build` \
         or copy it into one of those directories",
        if hash.is_empty() { String::new() } else { format!(" with hash {hash}") }
    )]
    NotFound {
        name: String,
        hash: String,
        dirs: String,
    },
    /// Found, but a part does not match its manifest.
    #[error("appliance {dir} is damaged: {message}")]
    Damaged { dir: PathBuf, message: String },
}

/// The content hash of an appliance directory: `sha256:` + hex of its manifest.
pub fn appliance_hash(dir: &Path) -> std::io::Result<String> {
    let manifest = std::fs::read(dir.join(MANIFEST_FILE))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&manifest))))
}

/// Appliance directories under `roots` (each root itself, and its direct
/// subdirectories, when they hold a manifest).
fn candidates(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in roots {
        if root.join(MANIFEST_FILE).is_file() {
            out.push(root.clone());
        }
        if let Ok(entries) = std::fs::read_dir(root) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(MANIFEST_FILE).is_file())
                .collect();
            dirs.sort();
            out.extend(dirs);
        }
    }
    out
}

/// Finds and fully verifies the appliance `name` with content hash `hash`
/// (any hash when empty).
pub fn find_appliance(
    roots: &[PathBuf],
    name: &str,
    hash: &str,
) -> Result<Appliance, ApplianceLookupError> {
    for dir in candidates(roots) {
        let Ok(unverified) = Appliance::load_unverified(&dir) else {
            continue;
        };
        if unverified.manifest().name != name {
            continue;
        }
        if !hash.is_empty() && appliance_hash(&dir).ok().as_deref() != Some(hash) {
            continue;
        }
        return Appliance::load(&dir).map_err(|e| ApplianceLookupError::Damaged {
            dir: dir.clone(),
            message: e.to_string(),
        });
    }
    Err(ApplianceLookupError::NotFound {
        name: name.to_string(),
        hash: hash.to_string(),
        dirs: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
