//! Key files and the text form of keys (contract 2): one line of standard,
//! padded base64 — the 32-byte ed25519 seed for a secret key, the 32-byte
//! public key for a public key — in a file of mode 0600.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not base64 of exactly 32 bytes.
    #[error("{what} is not base64 of 32 bytes ({reason}); keys are one line of standard padded base64, as `slicenet keygen` writes them")]
    BadEncoding {
        /// Which key (a file name or "public key").
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("{what} is not a valid ed25519 public key (not a curve point)")]
    NotAPoint {
        /// Which key.
        what: String,
    },
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// An ed25519 public key: of a principal, a node, or the authority.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The dalek verifying key, or an error when the bytes are not a curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::NotAPoint {
            what: format!("public key {self}"),
        })
    }

    /// The public key of a signing key.
    pub fn of(key: &SigningKey) -> Self {
        PublicKey(key.verifying_key().to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(PublicKey(decode32(s.trim(), "public key")?))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Decodes one line of base64 into exactly 32 bytes.
pub fn decode32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let bytes = B64.decode(text).map_err(|e| KeyError::BadEncoding {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::BadEncoding {
            what: what.to_string(),
            reason: format!("{} bytes instead of 32", b.len()),
        })
}

/// A fresh random ed25519 signing key (the OS-seeded CSPRNG of `rand`).
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// The one-line text form of a signing key (base64 of its seed).
pub fn secret_to_text(key: &SigningKey) -> String {
    B64.encode(key.to_bytes())
}

/// Parses the one-line text form of a signing key.
pub fn secret_from_text(text: &str, what: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&decode32(text.trim(), what)?))
}

/// Reads a secret key file written by [`write_secret_key`] or `slicenet keygen`.
pub fn read_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    secret_from_text(&text, &format!("key file {}", path.display()))
}

/// Reads a public key file (one line of base64).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(PublicKey(decode32(
        text.trim(),
        &format!("public key file {}", path.display()),
    )?))
}

/// Writes a secret key file with mode 0600; refuses to overwrite an existing file.
pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    write_new(path, &format!("{}\n", secret_to_text(key)), 0o600)
}

/// Writes a public key file (mode 0644 would do, but 0600 keeps one rule for key files).
pub fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), KeyError> {
    write_new(path, &format!("{key}\n"), 0o600)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate();
        let path = dir.path().join("k");
        write_secret_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(read_secret_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(write_secret_key(&path, &key).is_err(), "must not overwrite");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(text.trim().len(), 44);
    }

    #[test]
    fn public_keys_parse_only_32_byte_base64() {
        let key = PublicKey::of(&generate());
        assert_eq!(key.to_string().parse::<PublicKey>().unwrap(), key);
        assert!("AAAA".parse::<PublicKey>().is_err());
        assert!("not base64!".parse::<PublicKey>().is_err());
    }
}
