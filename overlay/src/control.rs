//! The daemon's control socket: a unix stream socket speaking one JSON
//! request and one JSON response per line. `slicenet overlay status` is
//! its client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::overlay::Overlay;
use crate::status::OverlayStatus;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Report the status.
    Status,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The status snapshot.
    Status(Box<OverlayStatus>),
    /// The request could not be served.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens on the socket.
    #[error("cannot reach the overlay daemon at {path}: {source} (is `slicenet overlay run` running with this control socket?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke off or made no sense.
    #[error("overlay daemon at {path}: {problem}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// Serves requests on `path` until the task is dropped.
pub async fn serve(overlay: Overlay, listener: tokio::net::UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let overlay = overlay.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            // One request per connection keeps the protocol trivial.
            let line = match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                _ => return,
            };
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Status) => Response::Status(Box::new(overlay.status())),
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

/// Binds the control socket, replacing a stale one from an earlier run.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another daemon is serving this control socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Asks the daemon at `path` for its status (blocking).
pub fn query_status(path: &Path) -> Result<OverlayStatus, ControlError> {
    use std::io::{BufRead, Write};
    let proto = |problem: String| ControlError::Protocol {
        path: path.to_path_buf(),
        problem,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| proto(e.to_string()))?;
    let mut req = serde_json::to_string(&Request::Status).map_err(|e| proto(e.to_string()))?;
    req.push('\n');
    stream
        .write_all(req.as_bytes())
        .map_err(|e| proto(format!("sending the request: {e}")))?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| proto(format!("reading the answer: {e}")))?;
    match serde_json::from_str::<Response>(&line) {
        Ok(Response::Status(s)) => Ok(*s),
        Ok(Response::Error { message }) => Err(proto(message)),
        Err(e) => Err(proto(format!("unreadable answer: {e}"))),
    }
}
