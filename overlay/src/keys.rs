//! WireGuard keys (x25519) in the text form `wg genkey` / `wg pubkey` use:
//! standard padded base64 of 32 bytes, one per line, files mode 0600.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use boringtun::x25519;

/// A key string or key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not 32 bytes of standard base64.
    #[error("not a WireGuard key: expected 44 characters of base64 encoding 32 bytes (as `wg genkey` and `wg pubkey` print them)")]
    Malformed,
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds something that is not a key.
    #[error("key file {path}: not a WireGuard key: expected one line of 44 base64 characters (as `wg genkey` or `slicenet overlay keygen` writes)")]
    BadFile {
        /// The file.
        path: PathBuf,
    },
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| KeyError::Malformed)?;
    bytes.try_into().map_err(|_| KeyError::Malformed)
}

fn encode(bytes: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A node's WireGuard private key.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh random key.
    pub fn generate() -> PrivateKey {
        let mut bytes: [u8; 32] = rand::random();
        // Clamp like `wg genkey` so the text form matches other tools'.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(x25519::StaticSecret::from(bytes))
    }

    /// Parses the base64 text form.
    pub fn from_base64(s: &str) -> Result<PrivateKey, KeyError> {
        Ok(PrivateKey(x25519::StaticSecret::from(decode32(s)?)))
    }

    /// The base64 text form (a secret: handle with care).
    pub fn to_base64(&self) -> String {
        encode(&self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// Reads a key file (one line of base64). Warns when others can read it.
    pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "private key file {} is readable by others; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
        Self::from_base64(&text).map_err(|_| KeyError::BadFile {
            path: path.to_path_buf(),
        })
    }

    /// Writes the key to a new file with mode 0600 (refuses to overwrite).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(f, "{}", self.to_base64()).map_err(io)
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// A WireGuard public key: identifies a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 text form.
    pub fn from_base64(s: &str) -> Result<PublicKey, KeyError> {
        decode32(s).map(PublicKey)
    }

    /// The base64 text form.
    pub fn to_base64(&self) -> String {
        encode(&self.0)
    }

    /// The first characters of the text form, enough to tell keys apart in tables.
    pub fn short(&self) -> String {
        self.to_base64()[..8].to_string()
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_round_trip_and_match_rfc7748() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let alice_priv =
            hex_bytes("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pub =
            hex_bytes("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let key = PrivateKey::from_base64(&encode(&alice_priv)).unwrap();
        assert_eq!(key.public_key().0, alice_pub);
        assert_eq!(
            PrivateKey::from_base64(&key.to_base64())
                .unwrap()
                .public_key(),
            key.public_key()
        );
    }

    fn hex_bytes(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn public_keys_parse_only_32_bytes_of_base64() {
        let k = PrivateKey::generate().public_key();
        assert_eq!(k.to_string().len(), 44);
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
        assert!("not a key".parse::<PublicKey>().is_err());
        assert!("AAAA".parse::<PublicKey>().is_err());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), k);
    }

    #[test]
    fn saved_keys_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = PrivateKey::generate();
        key.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            PrivateKey::load(&path).unwrap().public_key(),
            key.public_key()
        );
        assert!(key.save(&path).is_err(), "must not overwrite a key");
        std::fs::write(dir.path().join("bad"), "hello\n").unwrap();
        let err = PrivateKey::load(&dir.path().join("bad")).unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
    }
}
