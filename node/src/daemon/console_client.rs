//! The client side of the remote console: present a console grant at the
//! node's console port, prove the principal's key, check the node proves
//! the key the authority named, and hand back the open console stream.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use slicenet_authority::api::ConsoleGrantReply;
use slicenet_authority::grant::handshake::{self, NODE_ANSWER, NODE_HELLO};
use slicenet_authority::grant::{self, GrantError};
use slicenet_authority::keys::PublicKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::console_server::{read_frame, ReadFrameError};

/// Why a console could not be opened at the node.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The grant in the authority's reply is not base64.
    #[error("the authority's console grant is not valid base64: {0}")]
    GrantEncoding(#[from] base64::DecodeError),
    /// The grant, the handshake or the node's answer failed a check
    /// (including the node's refusal and its reason).
    #[error("{0}")]
    Grant(#[from] GrantError),
    /// No TCP connection to the node's console port.
    #[error("cannot connect to node {node}'s console port {addr}: {source}; is the node up, and its console port open in the firewall?")]
    Connect {
        /// The node.
        node: String,
        /// Its console address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed or closed during the handshake.
    #[error(
        "node {node}'s console port {addr} closed the connection during the handshake: {source}"
    )]
    Io {
        /// The node.
        node: String,
        /// Its console address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Connecting plus the handshake took too long.
    #[error("node {node}'s console port {addr} did not finish the handshake within {timeout:?}")]
    Timeout {
        /// The node.
        node: String,
        /// Its console address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// Opens the console a grant reply names: connects to `reply.console`,
/// runs the client side of the handshake with `principal` (the key the
/// grant names) and returns the stream, which then carries the sliver's
/// serial console. The grant's signature is checked with `authority_key`
/// first, so the node key the node must prove comes from the authority's
/// signature, not from the unsigned reply around it.
pub async fn open(
    reply: &ConsoleGrantReply,
    authority_key: &PublicKey,
    principal: &SigningKey,
    timeout: Duration,
) -> Result<TcpStream, OpenError> {
    let grant_bytes = reply.bytes()?;
    let grant = grant::verify_grant_signature(&grant_bytes, authority_key)?;
    let (node, addr) = (grant.node.clone(), reply.console);
    let io = |source: std::io::Error| OpenError::Io {
        node: node.clone(),
        addr,
        source,
    };
    let handshake = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| OpenError::Connect {
                node: node.clone(),
                addr,
                source,
            })?;
        // A busy node answers with a refusal instead of its hello.
        let first = read_frame(&mut stream, &[NODE_HELLO, NODE_ANSWER])
            .await
            .map_err(|e| frame_error(e, &io))?;
        if first.starts_with(&NODE_ANSWER) {
            handshake::verify_node_answer(&first, &grant, &grant_bytes, &[0; 32], &[0; 32])?;
            return Err(OpenError::Grant(GrantError::Malformed {
                field: "node answer",
                reason: "the node answered before the handshake".into(),
            }));
        }
        let node_challenge = handshake::parse_node_hello(&first)?;
        let hello = handshake::client_hello(principal, &grant_bytes, &node_challenge);
        stream.write_all(&hello.bytes).await.map_err(&io)?;
        let answer = read_frame(&mut stream, &[NODE_ANSWER])
            .await
            .map_err(|e| frame_error(e, &io))?;
        handshake::verify_node_answer(
            &answer,
            &grant,
            &grant_bytes,
            &node_challenge,
            &hello.client_challenge,
        )?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| OpenError::Timeout {
            node: grant.node.clone(),
            addr,
            timeout,
        })?
}

fn frame_error(e: ReadFrameError, io: &dyn Fn(std::io::Error) -> OpenError) -> OpenError {
    match e {
        ReadFrameError::Io(e) => io(e),
        ReadFrameError::Frame(e) => OpenError::Grant(e),
    }
}
