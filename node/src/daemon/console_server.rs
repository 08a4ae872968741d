//! The node's remote console port: where `slicenet console SLICE SLIVER`
//! presents a console grant and, once the node accepts it, talks to the
//! sliver's serial console.
//!
//! Each TCP connection runs the node side of the console handshake
//! ([`slicenet_authority::grant::handshake`]): the node sends a fresh
//! challenge; the client answers with a grant and its proof of holding the
//! grant's principal key; the node checks the authority's signature, that
//! the grant names this node (its identity key and name) and is within its
//! validity, the proof, and that the sliver runs here in the grant's slice.
//! Then it proves its own key and proxies bytes both ways between the
//! connection and the sliver's serial console socket. Anything else gets a
//! refusal naming the reason, and the connection closes.
//!
//! Bounds: the handshake must finish within a timeout, frames are read by
//! their bounded declared length, and at most `max_sessions` connections
//! (handshakes and sessions) are open at once; more are refused at once as
//! busy. Every accepted and refused connection is logged.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use slicenet_authority::grant::handshake::{self, CLIENT_HELLO, HEADER_LEN};
use slicenet_authority::grant::{ConsoleGrant, GrantError};
use slicenet_authority::keys::PublicKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::{unix_now, until_set};

/// How long a client has from connecting to sending its grant and proof.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The console of one sliver this node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliverConsole {
    /// The slice the sliver belongs to (from its ticket).
    pub slice: String,
    /// The unix socket of its serial console.
    pub socket: PathBuf,
}

/// Finds the consoles of the slivers this node runs (the node daemon's
/// sliver supervisor; a fixed table in tests).
pub trait SliverConsoles: Send + Sync + 'static {
    /// Sliver `sliver_id`'s console, when the sliver runs on this node.
    fn find(&self, sliver_id: u64) -> impl Future<Output = Option<SliverConsole>> + Send;
}

/// What the console port checks grants against.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// This node's name, as the authority knows it.
    pub node_name: String,
    /// This node's identity key (grants name its public half; the node
    /// proves it holds it).
    pub identity: SigningKey,
    /// The authority's public key (the one tickets are checked with).
    pub authority_key: PublicKey,
    /// Connections open at once, handshakes included.
    pub max_sessions: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// Why the node refused a console connection (sent to the client, then logged).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// As many connections as allowed are open.
    #[error("node {node} has {limit} console connections open, its limit; try again later")]
    Busy {
        /// This node.
        node: String,
        /// The configured limit.
        limit: usize,
    },
    /// The client did not finish the handshake in time.
    #[error("the console handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The grant or the proof of possession failed a check.
    #[error("{0}")]
    Grant(#[from] GrantError),
    /// Signed for this node's key but under another name (the registry and
    /// this node's configuration disagree).
    #[error("the console grant names node {grant_node}, but this node is {node}; check the node's `name` against the authority's registry")]
    NodeName {
        /// The name in the grant.
        grant_node: String,
        /// This node's name.
        node: String,
    },
    /// The sliver does not run here (any more).
    #[error("sliver {sliver} does not run on node {node}; `slicenet slice show {slice}` shows where its slivers run")]
    UnknownSliver {
        /// The sliver in the grant.
        sliver: u64,
        /// This node.
        node: String,
        /// The slice in the grant.
        slice: String,
    },
    /// The sliver runs here, but for a different slice than the grant says.
    #[error("sliver {sliver} belongs to slice {actual} on this node, not to {granted}")]
    WrongSlice {
        /// The sliver.
        sliver: u64,
        /// The slice its ticket names.
        actual: String,
        /// The slice the grant names.
        granted: String,
    },
    /// The sliver's VM has no console socket to connect to right now.
    #[error("sliver {sliver}'s console is not available ({reason}); its VM may be starting or stopped: try again in a few seconds")]
    ConsoleUnavailable {
        /// The sliver.
        sliver: u64,
        /// Why connecting to its console socket failed.
        reason: String,
    },
    /// The connection failed during the handshake.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one handshake frame whose magic is one of `expected`: the header,
/// then exactly the payload it announces (bounded by the handshake's
/// largest frame). Both sides of the handshake read with it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    expected: &[[u8; 4]],
) -> Result<Vec<u8>, ReadFrameError> {
    let mut frame = vec![0; HEADER_LEN];
    reader.read_exact(&mut frame).await?;
    let magic = expected
        .iter()
        .copied()
        .find(|m| frame[..4] == m[..])
        .unwrap_or(expected[0]);
    let len = handshake::payload_len(&frame, magic)?;
    frame.resize(HEADER_LEN + len, 0);
    reader.read_exact(&mut frame[HEADER_LEN..]).await?;
    Ok(frame)
}

/// Why a handshake frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The header is not one this side expects.
    #[error("{0}")]
    Frame(#[from] GrantError),
}

impl From<ReadFrameError> for Refusal {
    fn from(e: ReadFrameError) -> Self {
        match e {
            ReadFrameError::Io(e) => Refusal::Io(e),
            ReadFrameError::Frame(e) => Refusal::Grant(e),
        }
    }
}

/// Serves the console port until `shutdown` becomes true.
pub async fn serve<C: SliverConsoles>(
    consoles: Arc<C>,
    settings: ConsoleSettings,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_sessions));
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("console port: accept: {e}");
                    // e.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = until_set(&mut shutdown) => break,
        };
        // Reap finished sessions so the set stays as small as the limit.
        while sessions.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refusal = Refusal::Busy {
                node: settings.node_name.clone(),
                limit: settings.max_sessions,
            };
            tracing::warn!(%peer, "console connection refused: {refusal}");
            // A fresh socket's send buffer takes the short frame without waiting.
            let _ = stream.try_write(&handshake::refuse(&refusal.to_string()));
            continue;
        };
        let consoles = consoles.clone();
        let settings = settings.clone();
        let session_shutdown = shutdown.clone();
        sessions.spawn(async move {
            let _slot = slot;
            session(consoles.as_ref(), &settings, stream, peer, session_shutdown).await;
        });
    }
    sessions.shutdown().await;
}

/// One connection: handshake, then the console until either side ends it
/// or the node shuts down.
async fn session<C: SliverConsoles>(
    consoles: &C,
    settings: &ConsoleSettings,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let accepted = match tokio::time::timeout(
        settings.handshake_timeout,
        handshake_node_side(consoles, settings, &mut stream),
    )
    .await
    {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(refusal)) => return refuse(&mut stream, peer, refusal).await,
        Err(_) => {
            let refusal = Refusal::HandshakeTimeout(settings.handshake_timeout);
            return refuse(&mut stream, peer, refusal).await;
        }
    };
    let (grant, mut console) = accepted;
    tracing::info!(
        %peer,
        principal = %grant.principal,
        slice = %grant.slice,
        sliver = grant.sliver_id,
        grant = %grant.grant_id_hex(),
        "console session accepted"
    );
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut console) => r,
        _ = until_set(&mut shutdown) => Err(std::io::Error::other("the node is shutting down")),
    };
    match result {
        Ok((to_vm, from_vm)) => tracing::info!(
            %peer,
            principal = %grant.principal,
            sliver = grant.sliver_id,
            to_vm,
            from_vm,
            "console session ended"
        ),
        Err(e) => tracing::info!(
            %peer,
            principal = %grant.principal,
            sliver = grant.sliver_id,
            "console session ended: {e}"
        ),
    }
}

/// Tells the client why (best effort: it may be gone) and logs it.
async fn refuse(stream: &mut TcpStream, peer: SocketAddr, refusal: Refusal) {
    tracing::warn!(%peer, "console connection refused: {refusal}");
    if matches!(refusal, Refusal::Io(_)) {
        return;
    }
    let frame = handshake::refuse(&refusal.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
    let _ = stream.shutdown().await;
}

/// The node's side of the handshake; on success the connection is answered
/// and the sliver's console is open.
async fn handshake_node_side<C: SliverConsoles>(
    consoles: &C,
    settings: &ConsoleSettings,
    stream: &mut TcpStream,
) -> Result<(ConsoleGrant, UnixStream), Refusal> {
    let node_challenge = handshake::challenge();
    stream
        .write_all(&handshake::node_hello(&node_challenge))
        .await?;
    let hello = read_frame(stream, &[CLIENT_HELLO]).await?;
    let own_key = PublicKey::of(&settings.identity);
    let client = handshake::verify_client_hello(
        &hello,
        &settings.authority_key,
        &own_key,
        &node_challenge,
        unix_now(),
    )?;
    let grant = &client.grant;
    if grant.node != settings.node_name {
        return Err(Refusal::NodeName {
            grant_node: grant.node.clone(),
            node: settings.node_name.clone(),
        });
    }
    let Some(console) = consoles.find(grant.sliver_id).await else {
        return Err(Refusal::UnknownSliver {
            sliver: grant.sliver_id,
            node: settings.node_name.clone(),
            slice: grant.slice.clone(),
        });
    };
    if console.slice != grant.slice {
        return Err(Refusal::WrongSlice {
            sliver: grant.sliver_id,
            actual: console.slice,
            granted: grant.slice.clone(),
        });
    }
    let console =
        UnixStream::connect(&console.socket)
            .await
            .map_err(|e| Refusal::ConsoleUnavailable {
                sliver: grant.sliver_id,
                reason: e.to_string(),
            })?;
    stream
        .write_all(&handshake::accept(
            &settings.identity,
            &client,
            &node_challenge,
        ))
        .await?;
    Ok((client.grant, console))
}

#[cfg(test)]
mod tests;
