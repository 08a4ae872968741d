//! The appliance manifest (`appliance.toml`), its validation, and hash-checked loading.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mac::{derive_mac, MacAddr};

/// File name of the manifest inside an appliance directory.
pub const MANIFEST_FILE: &str = "appliance.toml";
/// The manifest format this code reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const MAX_CMDLINE_BYTES: usize = 2048;
const MAX_VCPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 32;
const MAX_MEMORY_MIB: u32 = 1024 * 1024;
const MAX_NICS: usize = 8;

/// One file of an appliance, named relative to the appliance directory and pinned by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// Path relative to the appliance directory (no `..`, not absolute).
    pub path: String,
    /// Lower-case hex SHA-256 of the file's contents.
    pub sha256: String,
}

/// The optional disk image of an appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The image file and its hash.
    #[serde(flatten)]
    pub part: PartSpec,
    /// Attach the disk read-only (the default: appliances are shared, slivers copy on write).
    #[serde(default = "default_true")]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

/// One guest NIC; the MAC is derived from the sliver id when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// A fixed MAC address, or `None` to derive one per sliver with [`derive_mac`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// The manifest of an appliance, as stored in `appliance.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must equal [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Appliance name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Free-form version string of the appliance.
    pub version: String,
    /// Kernel command line the appliance needs (the runtime appends per-sliver parameters).
    pub cmdline: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The kernel (a bzImage).
    pub kernel: PartSpec,
    /// The same kernel uncompressed (its vmlinux ELF with a PVH entry point), extracted from
    /// the bzImage when the appliance was built; VMMs that can start it directly skip the
    /// in-guest decompression. Absent in older appliances: the bzImage is then booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<PartSpec>,
    /// The initramfs.
    pub initrd: PartSpec,
    /// An optional disk image, attached as a virtio-blk device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSpec>,
    /// Network interfaces, in guest order.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
}

/// Why an appliance could not be loaded. Every variant names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// The directory has no manifest.
    #[error("appliance {dir}: no {MANIFEST_FILE} found; is this an appliance directory? (build one with `slicenet appliance build default`)")]
    ManifestMissing {
        /// The appliance directory.
        dir: PathBuf,
    },
    /// The manifest could not be read.
    #[error("appliance manifest {path}: cannot read it: {source}")]
    ManifestUnreadable {
        /// The manifest file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML of the expected shape, or a field is out of range.
    #[error("appliance manifest {path}: {reason}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// A part file is absent.
    #[error("appliance {part} {path}: file is missing; rebuild or re-fetch the appliance")]
    PartMissing {
        /// Which part (`kernel`, `initrd`, `disk`).
        part: &'static str,
        /// The expected file.
        path: PathBuf,
    },
    /// A part file exists but cannot be read.
    #[error("appliance {part} {path}: cannot read it: {source}")]
    PartUnreadable {
        /// Which part.
        part: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A part file's contents do not match the manifest's hash.
    #[error("appliance {part} {path}: SHA-256 mismatch (manifest says {expected}, file has {actual}); the file is corrupt or was modified: rebuild or re-fetch the appliance")]
    HashMismatch {
        /// Which part.
        part: &'static str,
        /// The file.
        path: PathBuf,
        /// Hash from the manifest.
        expected: String,
        /// Hash of the file as found.
        actual: String,
    },
}

impl Manifest {
    /// Parses and validates manifest text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ApplianceError> {
        let invalid = |reason: String| ApplianceError::ManifestInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    /// Renders the manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Checks every field's range and form; the error says which field and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {} is not supported (this slicenet reads format {MANIFEST_FORMAT})",
                self.format
            ));
        }
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!(
                "name {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                self.name
            ));
        }
        if self.version.len() > 128 || self.version.chars().any(char::is_control) {
            return Err("version must be at most 128 printable characters".into());
        }
        if self.cmdline.len() > MAX_CMDLINE_BYTES
            || self
                .cmdline
                .chars()
                .any(|c| c.is_control() || !c.is_ascii())
        {
            return Err(format!(
                "cmdline must be at most {MAX_CMDLINE_BYTES} printable ASCII characters"
            ));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(format!("vcpus = {} is outside 1..={MAX_VCPUS}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(format!(
                "memory_mib = {} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                self.memory_mib
            ));
        }
        if self.nics.len() > MAX_NICS {
            return Err(format!(
                "{} NICs requested; at most {MAX_NICS} are supported",
                self.nics.len()
            ));
        }
        check_part("kernel", &self.kernel)?;
        if let Some(vmlinux) = &self.vmlinux {
            check_part("vmlinux", vmlinux)?;
        }
        check_part("initrd", &self.initrd)?;
        if let Some(disk) = &self.disk {
            check_part("disk", &disk.part)?;
        }
        Ok(())
    }
}

fn check_part(part: &str, spec: &PartSpec) -> Result<(), String> {
    let path = Path::new(&spec.path);
    let safe = !spec.path.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !safe {
        return Err(format!(
            "{part}.path {:?} must be a relative path inside the appliance directory",
            spec.path
        ));
    }
    if spec.sha256.len() != 64
        || !spec
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "{part}.sha256 {:?} must be 64 lower-case hex digits",
            spec.sha256
        ));
    }
    Ok(())
}

/// A loaded appliance whose every part was present and matched its hash at load time.
#[derive(Debug, Clone)]
pub struct Appliance {
    dir: PathBuf,
    manifest: Manifest,
}

impl Appliance {
    /// Reads `dir/appliance.toml`, validates it and checks the SHA-256 of every part.
    pub fn load(dir: &Path) -> Result<Appliance, ApplianceError> {
        let appliance = Self::load_unverified(dir)?;
        appliance.verify()?;
        Ok(appliance)
    }

    /// Reads and validates the manifest without hashing the parts (for `show`).
    pub fn load_unverified(dir: &Path) -> Result<Appliance, ApplianceError> {
        let path = dir.join(MANIFEST_FILE);
        let file = File::open(&path).map_err(|source| match source.kind() {
            ErrorKind::NotFound => ApplianceError::ManifestMissing {
                dir: dir.to_path_buf(),
            },
            _ => ApplianceError::ManifestUnreadable {
                path: path.clone(),
                source,
            },
        })?;
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ApplianceError::ManifestUnreadable {
                path: path.clone(),
                source,
            })?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ApplianceError::ManifestInvalid {
                path,
                reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let manifest = Manifest::parse(&text, &path)?;
        Ok(Appliance {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Checks that every part exists and is readable, without hashing (the quick part of
    /// [`Appliance::verify`], for callers that hash later).
    pub fn check_parts_present(&self) -> Result<(), ApplianceError> {
        for (part, spec) in self.parts() {
            let path = self.dir.join(&spec.path);
            File::open(&path).map_err(|source| part_io_error(part, &path, source))?;
        }
        Ok(())
    }

    /// Hashes every part and compares it with the manifest.
    pub fn verify(&self) -> Result<(), ApplianceError> {
        self.verify_parts(&self.parts())
    }

    /// Hashes the parts a VMM booting the kernel `kernel_part` (`"kernel"` or `"vmlinux"`)
    /// uses: that kernel, the initramfs and the disk. The other kernel file is not read.
    pub fn verify_for_boot(&self, kernel_part: &str) -> Result<(), ApplianceError> {
        let used: Vec<_> = self
            .parts()
            .into_iter()
            .filter(|(part, _)| !matches!(*part, "kernel" | "vmlinux") || *part == kernel_part)
            .collect();
        self.verify_parts(&used)
    }

    fn verify_parts(&self, parts: &[(&'static str, &PartSpec)]) -> Result<(), ApplianceError> {
        for &(part, spec) in parts {
            let path = self.dir.join(&spec.path);
            let actual = sha256_file(&path).map_err(|source| part_io_error(part, &path, source))?;
            if actual != spec.sha256 {
                return Err(ApplianceError::HashMismatch {
                    part,
                    path,
                    expected: spec.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// The parts with their role names: kernel, vmlinux (if any), initrd and disk (if any).
    pub fn parts(&self) -> Vec<(&'static str, &PartSpec)> {
        let mut parts = vec![("kernel", &self.manifest.kernel)];
        if let Some(vmlinux) = &self.manifest.vmlinux {
            parts.push(("vmlinux", vmlinux));
        }
        parts.push(("initrd", &self.manifest.initrd));
        if let Some(disk) = &self.manifest.disk {
            parts.push(("disk", &disk.part));
        }
        parts
    }

    /// The appliance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Absolute (or dir-relative) path of the kernel.
    pub fn kernel_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.kernel.path)
    }

    /// Path of the uncompressed kernel (vmlinux ELF), if the appliance has one.
    pub fn vmlinux_path(&self) -> Option<PathBuf> {
        self.manifest
            .vmlinux
            .as_ref()
            .map(|v| self.dir.join(&v.path))
    }

    /// Path of the initramfs.
    pub fn initrd_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.initrd.path)
    }

    /// Path of the disk image and whether it is read-only, if the appliance has one.
    pub fn disk_path(&self) -> Option<(PathBuf, bool)> {
        self.manifest
            .disk
            .as_ref()
            .map(|d| (self.dir.join(&d.part.path), d.read_only))
    }

    /// The MACs of the appliance's NICs for one sliver: fixed ones as written, the others
    /// derived from `sliver_id` and the NIC's index.
    pub fn nic_macs(&self, sliver_id: &str) -> Vec<MacAddr> {
        self.manifest
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| nic.mac.unwrap_or_else(|| derive_mac(sliver_id, i)))
            .collect()
    }
}

/// A part that could not be opened or read: missing, or unreadable for another reason.
fn part_io_error(part: &'static str, path: &Path, source: std::io::Error) -> ApplianceError {
    match source.kind() {
        ErrorKind::NotFound => ApplianceError::PartMissing {
            part,
            path: path.to_path_buf(),
        },
        _ => ApplianceError::PartUnreadable {
            part,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Lower-case hex SHA-256 of a file's contents, read in 128 KiB chunks (small enough to stay
/// out of the VMM's resident memory once freed).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_appliance(dir: &Path) -> Manifest {
        std::fs::write(dir.join("vmlinuz"), b"kernel bytes").unwrap();
        std::fs::write(dir.join("initrd.img"), b"initrd bytes").unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "test".into(),
            version: "1".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel: PartSpec {
                path: "vmlinuz".into(),
                sha256: sha256_file(&dir.join("vmlinuz")).unwrap(),
            },
            vmlinux: None,
            initrd: PartSpec {
                path: "initrd.img".into(),
                sha256: sha256_file(&dir.join("initrd.img")).unwrap(),
            },
            disk: None,
            nics: vec![
                NicSpec::default(),
                NicSpec {
                    mac: super::super::parse_mac("02:00:00:00:00:07"),
                },
            ],
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_toml()).unwrap();
        manifest
    }

    #[test]
    fn intact_appliance_loads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_appliance(dir.path());
        let appliance = Appliance::load(dir.path()).unwrap();
        assert_eq!(appliance.manifest(), &manifest);
        let macs = appliance.nic_macs("sliver-9");
        assert_eq!(macs[0], derive_mac("sliver-9", 0));
        assert_eq!(macs[1].to_string(), "02:00:00:00:00:07");
    }

    #[test]
    fn modified_part_is_a_hash_mismatch_naming_the_part() {
        let dir = tempfile::tempdir().unwrap();
        write_appliance(dir.path());
        std::fs::write(dir.path().join("vmlinuz"), b"kernel byte").unwrap();
        let err = Appliance::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ApplianceError::HashMismatch { part: "kernel", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("vmlinuz"));
    }

    #[test]
    fn a_vmlinux_part_is_optional_hashed_and_only_the_booted_kernel_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = write_appliance(dir.path());
        assert!(
            !manifest.to_toml().contains("vmlinux"),
            "older manifests unchanged"
        );
        std::fs::write(dir.path().join("vmlinux"), b"elf bytes").unwrap();
        manifest.vmlinux = Some(PartSpec {
            path: "vmlinux".into(),
            sha256: sha256_file(&dir.path().join("vmlinux")).unwrap(),
        });
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest.to_toml()).unwrap();
        let appliance = Appliance::load(dir.path()).unwrap();
        assert_eq!(appliance.manifest(), &manifest);
        assert_eq!(appliance.vmlinux_path(), Some(dir.path().join("vmlinux")));

        // A modified bzImage fails a full check and a bzImage boot's, not a PVH boot's.
        std::fs::write(dir.path().join("vmlinuz"), b"other kernel").unwrap();
        assert!(appliance.verify_for_boot("vmlinux").is_ok());
        let err = appliance.verify_for_boot("kernel").unwrap_err();
        assert!(matches!(
            err,
            ApplianceError::HashMismatch { part: "kernel", .. }
        ));
        assert!(appliance.verify().is_err());
        // A truncated vmlinux fails a PVH boot's check, naming it.
        std::fs::write(dir.path().join("vmlinux"), b"elf").unwrap();
        let err = appliance.verify_for_boot("vmlinux").unwrap_err();
        assert!(
            matches!(
                err,
                ApplianceError::HashMismatch {
                    part: "vmlinux",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_part_and_missing_manifest_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_appliance(dir.path());
        std::fs::remove_file(dir.path().join("initrd.img")).unwrap();
        let err = Appliance::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ApplianceError::PartMissing { part: "initrd", .. }),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = Appliance::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ApplianceError::ManifestMissing { .. }),
            "{err}"
        );
    }

    #[test]
    fn hostile_manifests_are_rejected_with_the_field_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_appliance(dir.path());
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|m| m.kernel.path = "../../etc/shadow".into()),
                "kernel.path",
            ),
            (
                Box::new(|m| m.initrd.path = "/etc/passwd".into()),
                "initrd.path",
            ),
            (
                Box::new(|m| m.kernel.sha256 = "XYZ".into()),
                "kernel.sha256",
            ),
            (Box::new(|m| m.vcpus = 0), "vcpus"),
            (Box::new(|m| m.memory_mib = 1), "memory_mib"),
            (Box::new(|m| m.cmdline = "a\nb".into()), "cmdline"),
            (Box::new(|m| m.name = "a/b".into()), "name"),
            (Box::new(|m| m.format = 99), "format"),
        ];
        for (mutate, field) in cases {
            let mut m = good.clone();
            mutate(&mut m);
            let err = Manifest::parse(&m.to_toml(), Path::new("x")).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        for text in ["", "format = 1", "not toml [[[", "format = 1\nname = 5"] {
            assert!(Manifest::parse(text, Path::new("x")).is_err(), "{text:?}");
        }
    }
}
