//! Node identity: the ed25519 key that names a node, signs its records and is
//! also its libp2p identity (contract 2), plus the public key types that appear
//! in node records.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

/// Errors loading, parsing or saving identities and keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64 of exactly 32 bytes.
    #[error("{what} must be standard base64 of 32 bytes (like `wg genkey` prints), got {len} characters that do not decode to 32 bytes")]
    BadBase64 {
        /// Which key was being parsed.
        what: &'static str,
        /// Length of the rejected text.
        len: usize,
    },
    /// The 32 bytes are not a valid ed25519 public key (not a curve point).
    #[error("node id {0} is not a valid ed25519 public key")]
    NotAPublicKey(String),
    /// Reading or writing the key file failed.
    #[error(
        "key file {path}: {source} (create one with `slicenet membership keygen --key {path}`)"
    )]
    Io {
        /// The key file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn decode32(what: &'static str, text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bad = || KeyError::BadBase64 {
        what,
        len: text.len(),
    };
    let bytes = BASE64.decode(text).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// A node's name: its ed25519 public key (the same key its libp2p `PeerId` derives from).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps 32 raw public-key bytes (not checked to be a curve point; verification does that).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first characters of the base64 form, for logs and tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// The libp2p peer id of this node (base58 `12D3KooW...`), as other libp2p tools print it.
    pub fn peer_id_string(&self) -> String {
        super::net::node_to_peer(self)
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("<invalid key {self}>"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32("node id (ed25519 public key)", s).map(Self)
    }
}

/// A WireGuard (x25519) public key, printed like `wg pubkey` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPublicKey([u8; 32]);

impl WgPublicKey {
    /// Wraps 32 raw x25519 public-key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes, as boringtun's `PublicKey::from` takes them.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl FromStr for WgPublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32("WireGuard public key", s).map(Self)
    }
}

/// The node's secret identity: an ed25519 signing key kept as its 32-byte seed.
#[derive(Clone)]
pub struct NodeIdentity {
    signing: SigningKey,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.node_id())
    }
}

impl NodeIdentity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The identity with this 32-byte ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Parses the key-file form: standard base64 of the 32-byte seed.
    pub fn from_base64_seed(text: &str) -> Result<Self, KeyError> {
        decode32("node key (ed25519 seed)", text).map(Self::from_seed)
    }

    /// Reads a key file (one line: base64 of the seed).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_base64_seed(&text)
    }

    /// Writes the key file with mode 0600, refusing to overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{}", self.seed_base64()).map_err(io)
    }

    /// The seed in key-file form (secret: handle with care).
    pub fn seed_base64(&self) -> String {
        BASE64.encode(self.signing.to_bytes())
    }

    /// The node id (public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` with the node key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The 32-byte seed, for building the libp2p keypair.
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
}

/// Verifies an ed25519 signature by `node` over `message` (strict: no malleable encodings).
pub(crate) fn verify(node: &NodeId, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(node.as_bytes()) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let id = NodeIdentity::generate();
        id.save_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeIdentity::load(&path).unwrap().node_id(), id.node_id());
        assert!(
            id.save_new(&path).is_err(),
            "an existing key must not be overwritten"
        );
    }

    #[test]
    fn seed_matches_rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1: the public key of this seed is fixed.
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let id = NodeIdentity::from_seed(seed);
        assert_eq!(
            id.node_id().to_string(),
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        let again = NodeIdentity::from_base64_seed(&id.seed_base64()).unwrap();
        assert_eq!(again.node_id(), id.node_id());
    }

    #[test]
    fn malformed_keys_are_typed_errors() {
        assert!(matches!(
            "not base64!".parse::<NodeId>(),
            Err(KeyError::BadBase64 { .. })
        ));
        assert!(matches!(
            "AAAA".parse::<WgPublicKey>(),
            Err(KeyError::BadBase64 { .. })
        ));
        assert!(NodeIdentity::from_base64_seed("").is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signer_and_message() {
        let a = NodeIdentity::generate();
        let b = NodeIdentity::generate();
        let sig = a.sign(b"hello");
        assert!(verify(&a.node_id(), b"hello", &sig));
        assert!(!verify(&b.node_id(), b"hello", &sig));
        assert!(!verify(&a.node_id(), b"hellO", &sig));
    }
}
