//! The control API: newline-delimited JSON over a unix stream socket, one request per line.
//!
//! Requests: `{"op":"status"}`, `{"op":"stop"}`, `{"op":"state"}` (device and VM state as
//! serializable structs), `{"op":"console"}` (after the reply line the connection becomes
//! the raw serial console: bytes written go to the guest's UART, guest output comes back).
//! Replies: `{"ok":true, ...}` or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted (bytes).
pub const MAX_REQUEST: usize = 4096;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ApiRequest {
    /// Report what the VM is doing.
    Status,
    /// Stop the VM (the VMM exits with status 12).
    Stop,
    /// Dump VM and device state.
    State,
    /// Turn this connection into the serial console.
    Console,
}

/// Parses one request line; the error text is sent back to the client.
pub fn parse_request(line: &[u8]) -> Result<ApiRequest, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let invalid = |e: String| {
        format!("invalid request ({e}); send one JSON object per line, e.g. {{\"op\":\"status\"}}")
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
    // Every request today is just an "op"; anything else is a client bug worth reporting.
    if let Some(extra) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| k.as_str() != "op"))
    {
        return Err(invalid(format!("unknown field {extra:?}")));
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// An error reply.
pub fn error_reply(message: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": message })
}

/// Why a control request from a client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("control socket {path}: {source} (is the VMM running?)")]
    Connect {
        /// The socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}: {reason}")]
    Exchange {
        /// The socket.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sends one request and returns the reply (client side, used by `slicenet-vmm ctl`).
pub fn request(api_sock: &Path, request: &ApiRequest) -> Result<serde_json::Value, ClientError> {
    let path = api_sock.display().to_string();
    let exchange = |reason: String| ClientError::Exchange {
        path: path.clone(),
        reason,
    };
    let mut stream = UnixStream::connect(api_sock).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| exchange(e.to_string()))?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| exchange(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| exchange(e.to_string()))?;
    if reply.is_empty() {
        return Err(exchange(
            "the VMM closed the connection without replying".into(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| exchange(format!("unparsable reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_refused() {
        assert_eq!(parse_request(br#"{"op":"status"}"#), Ok(ApiRequest::Status));
        assert_eq!(parse_request(br#"{"op":"stop"}"#), Ok(ApiRequest::Stop));
        assert_eq!(
            parse_request(br#"{"op":"console"}"#),
            Ok(ApiRequest::Console)
        );
        for bad in [
            &b"{"[..],
            b"",
            b"null",
            br#"{"op":"reboot"}"#,
            br#"{"op":"stop","x":1}"#,
            &[0xff, 0xfe],
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_request(&vec![b' '; MAX_REQUEST + 1]).is_err());
    }
}
