//! Request authentication: every request carries the caller's ed25519 public
//! key, a timestamp, a random nonce and a signature over all of them plus
//! the method, the path with its query, and the SHA-256 of the body.
//!
//! Why this and not bearer tokens or TLS client certificates: the keys
//! principals and nodes already have (contract 2) are the credentials, so
//! there is nothing else to issue, leak or expire; a captured request is
//! useless for anything but the exact same request within the skew window,
//! and the server remembers every nonce of a mutating request it accepted
//! (persistently, so a restart does not reopen the window).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::keys::PublicKey;

/// Header with the caller's base64 public key.
pub const HEADER_KEY: &str = "x-slicenet-key";
/// Header with the unix time of signing in milliseconds.
pub const HEADER_TIMESTAMP: &str = "x-slicenet-timestamp";
/// Header with 16 random bytes in hex, unique per request.
pub const HEADER_NONCE: &str = "x-slicenet-nonce";
/// Header with the base64 ed25519 signature.
pub const HEADER_SIGNATURE: &str = "x-slicenet-signature";

/// The four authentication headers of one request.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    /// Caller's public key.
    pub key: PublicKey,
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// Hex nonce.
    pub nonce: String,
    /// Base64 signature.
    pub signature: String,
}

/// Why a request's authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or unreadable.
    #[error("authentication header {header} is missing or malformed ({reason}); sign requests with `slicenet` or slicenet_authority::client::Client")]
    BadHeader {
        /// Which header.
        header: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The signature does not match the request.
    #[error("request signature does not verify: the request was modified in transit or signed with a different key than {key}")]
    BadSignature {
        /// The key the request claimed.
        key: String,
    },
    /// Timestamp outside the allowed skew.
    #[error("request timestamp is {skew_ms} ms away from the authority's clock (at most {allowed_ms} ms allowed); fix the client's clock (e.g. enable NTP) and retry")]
    Stale {
        /// Measured skew.
        skew_ms: i64,
        /// Allowed skew.
        allowed_ms: i64,
    },
}

/// The exact bytes a request signature covers.
pub fn signing_message(
    method: &str,
    path_and_query: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = hex::encode(Sha256::digest(body));
    format!(
        "slicenet request v1\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query,
        timestamp_ms,
        nonce,
        body_hash
    )
    .into_bytes()
}

/// Signs a request now, with a fresh random nonce.
pub fn sign_request(
    key: &SigningKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> SignedHeaders {
    let timestamp_ms = now_ms();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    sign_request_at(key, method, path_and_query, body, timestamp_ms, nonce)
}

/// Signs a request with a given timestamp and nonce (tests use it to build stale or replayed requests).
pub fn sign_request_at(
    key: &SigningKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timestamp_ms: i64,
    nonce: String,
) -> SignedHeaders {
    let msg = signing_message(method, path_and_query, timestamp_ms, &nonce, body);
    SignedHeaders {
        key: PublicKey::of(key),
        timestamp_ms,
        signature: B64.encode(key.sign(&msg).to_bytes()),
        nonce,
    }
}

/// Checks a request's headers against its content and the clock; returns the caller's key.
pub fn verify_request(
    headers: &SignedHeaders,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_ms: i64,
    allowed_skew_ms: i64,
) -> Result<PublicKey, AuthError> {
    let skew_ms = (now_ms - headers.timestamp_ms).abs();
    if skew_ms > allowed_skew_ms {
        return Err(AuthError::Stale {
            skew_ms,
            allowed_ms: allowed_skew_ms,
        });
    }
    let nonce_ok = headers.nonce.len() >= 16
        && headers.nonce.len() <= 64
        && headers.nonce.bytes().all(|b| b.is_ascii_hexdigit());
    if !nonce_ok {
        return Err(AuthError::BadHeader {
            header: HEADER_NONCE,
            reason: "16 to 64 hex digits expected".into(),
        });
    }
    let bad_signature = || AuthError::BadSignature {
        key: headers.key.to_string(),
    };
    let sig_bytes: [u8; 64] = B64
        .decode(&headers.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuthError::BadHeader {
            header: HEADER_SIGNATURE,
            reason: "base64 of 64 bytes expected".into(),
        })?;
    let key = headers.key.verifying_key().map_err(|_| bad_signature())?;
    let msg = signing_message(
        method,
        path_and_query,
        headers.timestamp_ms,
        &headers.nonce,
        body,
    );
    key.verify_strict(&msg, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| bad_signature())?;
    Ok(headers.key)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix time in seconds.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    #[test]
    fn signed_requests_verify_only_unchanged() {
        let key = keys::generate();
        let h = sign_request(&key, "POST", "/v1/slices", b"{}");
        let now = h.timestamp_ms;
        assert_eq!(
            verify_request(&h, "POST", "/v1/slices", b"{}", now, 1000).unwrap(),
            PublicKey::of(&key)
        );
        for (m, p, b) in [
            ("DELETE", "/v1/slices", &b"{}"[..]),
            ("POST", "/v1/slices?x=1", b"{}"),
            ("POST", "/v1/slices", b"{ }"),
        ] {
            assert!(matches!(
                verify_request(&h, m, p, b, now, 1000),
                Err(AuthError::BadSignature { .. })
            ));
        }
        let mut other = h.clone();
        other.key = PublicKey::of(&keys::generate());
        assert!(verify_request(&other, "POST", "/v1/slices", b"{}", now, 1000).is_err());
    }

    #[test]
    fn old_requests_are_stale() {
        let key = keys::generate();
        let h = sign_request_at(&key, "GET", "/v1/sites", b"", 1_000_000, "00".repeat(16));
        assert!(matches!(
            verify_request(&h, "GET", "/v1/sites", b"", 1_000_000 + 301_000, 300_000),
            Err(AuthError::Stale { .. })
        ));
    }
}
