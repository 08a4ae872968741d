//! The node daemon's control socket: status for `slicenet node status`
//! and serial-console access for `slicenet console`.
//!
//! Protocol: the client sends one JSON request line; the daemon answers
//! one JSON line. After a successful `console` answer the connection
//! carries the raw bytes of the sliver's serial console both ways.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::{console_io, until_set, Node, NodeStatusReport};

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The node's status.
    Status,
    /// Attach to a sliver's serial console.
    Console { sliver: u64 },
}

/// A control reply (the first line of every answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<Box<NodeStatusReport>>,
}

impl Reply {
    /// Success, with the node's status when asked for.
    fn ok(status: Option<NodeStatusReport>) -> Reply {
        Reply {
            ok: true,
            error: None,
            status: status.map(Box::new),
        }
    }

    /// A refusal saying why.
    fn error(error: String) -> Reply {
        Reply {
            ok: false,
            error: Some(error),
            status: None,
        }
    }
}

/// Errors talking to a node daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the node daemon at {path}: {source} (is `slicenet node run` running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node daemon connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node daemon answered something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
    #[error("no `{marker}` from the console within {timeout:?}; output so far: {output}")]
    Timeout {
        marker: String,
        timeout: Duration,
        output: String,
    },
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Serves control connections until shutdown.
pub async fn serve(node: Arc<Node>, listener: UnixListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    continue;
                }
            },
            _ = until_set(&mut shutdown) => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, stream).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("reply serializes");
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn handle(node: Arc<Node>, mut stream: UnixStream) -> std::io::Result<()> {
    let mut line = Vec::new();
    {
        let mut reader = BufReader::new(&mut stream).take(MAX_REQUEST as u64);
        reader.read_until(b'\n', &mut line).await?;
    }
    let request: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let error = format!("bad request: {e}; send {{\"op\":\"status\"}} or {{\"op\":\"console\",\"sliver\":N}}");
            return write_reply(&mut stream, &Reply::error(error)).await;
        }
    };
    match request {
        Request::Status => {
            let status = node.status().await;
            write_reply(&mut stream, &Reply::ok(Some(status))).await
        }
        Request::Console { sliver } => {
            let Some(path) = node.console_socket(sliver).await else {
                let error = format!("sliver {sliver} does not run on this node");
                return write_reply(&mut stream, &Reply::error(error)).await;
            };
            let mut console = match UnixStream::connect(&path).await {
                Ok(c) => c,
                Err(e) => {
                    let error = format!("sliver {sliver}'s console is not available yet: {e}");
                    return write_reply(&mut stream, &Reply::error(error)).await;
                }
            };
            write_reply(&mut stream, &Reply::ok(None)).await?;
            tokio::io::copy_bidirectional(&mut stream, &mut console)
                .await
                .map(|_| ())
        }
    }
}

async fn request(
    path: &Path,
    request: &Request,
) -> Result<(Reply, BufReader<UnixStream>), ControlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let mut line = serde_json::to_vec(request).expect("request serializes");
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).await?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if !reply.ok {
        return Err(ControlError::Refused(reply.error.unwrap_or_default()));
    }
    Ok((reply, reader))
}

/// Asks a node daemon for its status.
pub async fn query_status(path: &Path) -> Result<NodeStatusReport, ControlError> {
    let (reply, _) = request(path, &Request::Status).await?;
    reply
        .status
        .map(|s| *s)
        .ok_or_else(|| ControlError::Protocol("status reply without a status".into()))
}

/// Opens a sliver's console through the node daemon: the returned stream
/// carries the console's bytes both ways.
pub async fn open_console(path: &Path, sliver: u64) -> Result<BufReader<UnixStream>, ControlError> {
    let (_, stream) = request(path, &Request::Console { sliver }).await?;
    Ok(stream)
}

/// Runs a shell command on a sliver's serial console through the node
/// daemon and returns what it printed (see [`console_io::exec`]).
pub async fn console_exec(
    path: &Path,
    sliver: u64,
    command: &str,
    timeout: Duration,
) -> Result<String, ControlError> {
    let mut console = open_console(path, sliver).await?;
    Ok(console_io::exec(&mut console, command, timeout).await?)
}

impl From<console_io::ExecError> for ControlError {
    fn from(e: console_io::ExecError) -> Self {
        match e {
            console_io::ExecError::Io(e) => ControlError::Io(e),
            console_io::ExecError::Closed { output } => {
                ControlError::Protocol(format!("console closed; output so far: {output}"))
            }
            console_io::ExecError::Timeout {
                marker,
                timeout,
                output,
            } => ControlError::Timeout {
                marker,
                timeout,
                output,
            },
        }
    }
}
