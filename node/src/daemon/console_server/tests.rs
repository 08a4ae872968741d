//! The console port against real loopback TCP and a unix-socket "serial
//! console" that answers what it is sent, with grants signed by a real
//! authority key: what it accepts, and every reason it refuses.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use slicenet_authority::api::ConsoleGrantReply;
use slicenet_authority::grant::{self, ConsoleGrant};
use slicenet_authority::keys;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;

use super::*;
use crate::daemon::console_client::{self, OpenError};

const SLIVER: u64 = 42;

/// The slivers "running" on the test node: a fixed table.
struct Table(HashMap<u64, SliverConsole>);

impl SliverConsoles for Table {
    async fn find(&self, sliver_id: u64) -> Option<SliverConsole> {
        self.0.get(&sliver_id).cloned()
    }
}

/// A serial console socket that answers each line with `console: LINE`.
fn serial_console(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut lines = BufReader::new(rd).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if wr
                        .write_all(format!("console: {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    })
}

struct Fixture {
    authority: SigningKey,
    node: SigningKey,
    alice: SigningKey,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

impl Fixture {
    /// A console port for node `ams-n1` running sliver 42 of slice `ams_c`.
    async fn start(max_sessions: usize, handshake_timeout: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s42.console.sock");
        serial_console(&socket);
        let mut table = HashMap::new();
        table.insert(
            SLIVER,
            SliverConsole {
                slice: "ams_c".into(),
                socket,
            },
        );
        // A sliver whose VM has no console socket (not started yet).
        table.insert(
            7,
            SliverConsole {
                slice: "ams_c".into(),
                socket: dir.path().join("s7.console.sock"),
            },
        );
        let authority = keys::generate();
        let node = keys::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(
            Arc::new(Table(table)),
            ConsoleSettings {
                node_name: "ams-n1".into(),
                identity: node.clone(),
                authority_key: PublicKey::of(&authority),
                max_sessions,
                handshake_timeout,
            },
            listener,
            shutdown,
        ));
        Fixture {
            authority,
            node,
            alice: keys::generate(),
            addr,
            _dir: dir,
            _stop: stop,
        }
    }

    /// A fresh grant for alice to sliver 42 on this node, valid for a minute.
    fn grant(&self) -> ConsoleGrant {
        let now = unix_now();
        ConsoleGrant {
            grant_id: [9; 16],
            issued_at: now,
            expires_at: now + 60,
            sliver_id: SLIVER,
            slice: "ams_c".into(),
            node: "ams-n1".into(),
            node_key: PublicKey::of(&self.node),
            principal: "alice".into(),
            principal_key: PublicKey::of(&self.alice),
        }
    }

    /// What the authority would answer for `grant`, signed by `self.authority`.
    fn reply(&self, grant: &ConsoleGrant) -> ConsoleGrantReply {
        ConsoleGrantReply {
            grant: base64::engine::general_purpose::STANDARD
                .encode(grant::sign(grant, &self.authority)),
            grant_id: grant.grant_id_hex(),
            sliver_id: grant.sliver_id,
            slice: grant.slice.clone(),
            node: grant.node.clone(),
            node_key: grant.node_key,
            console: self.addr,
            expires_at: grant.expires_at,
        }
    }

    async fn open_as(
        &self,
        grant: &ConsoleGrant,
        key: &SigningKey,
    ) -> Result<TcpStream, OpenError> {
        console_client::open(
            &self.reply(grant),
            &PublicKey::of(&self.authority),
            key,
            Duration::from_secs(10),
        )
        .await
    }

    /// Opens `grant` as alice and returns the node's refusal reason.
    async fn refusal(&self, grant: &ConsoleGrant) -> String {
        self.refusal_as(grant, &self.alice.clone()).await
    }

    async fn refusal_as(&self, grant: &ConsoleGrant, key: &SigningKey) -> String {
        match self.open_as(grant, key).await {
            Err(OpenError::Grant(GrantError::Refused { reason })) => reason,
            Err(other) => panic!("expected the node's refusal, got: {other}"),
            Ok(_) => panic!("the node accepted a grant it must refuse: {grant:?}"),
        }
    }
}

async fn round_trip(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut answer))
        .await
        .expect("console answer in time")
        .unwrap();
    answer
}

#[tokio::test]
async fn a_valid_grant_opens_the_slivers_console_both_ways() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let mut console = f.open_as(&f.grant(), &f.alice).await.unwrap();
    assert_eq!(round_trip(&mut console, "uname").await, "console: uname\n");
    assert_eq!(round_trip(&mut console, "again").await, "console: again\n");
}

#[tokio::test]
async fn a_grant_for_another_node_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let mut other_key = f.grant();
    other_key.node = "iad-n1".into();
    other_key.node_key = PublicKey::of(&keys::generate());
    let reason = f.refusal(&other_key).await;
    assert!(reason.contains("for node iad-n1, not this one"), "{reason}");

    // This node's key but a name the registry gave someone else.
    let mut other_name = f.grant();
    other_name.node = "ams-n2".into();
    let reason = f.refusal(&other_name).await;
    assert!(
        reason.contains("names node ams-n2, but this node is ams-n1"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_sliver_that_does_not_run_here_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let mut g = f.grant();
    g.sliver_id = 99;
    let reason = f.refusal(&g).await;
    assert!(
        reason.contains("sliver 99 does not run on node ams-n1"),
        "{reason}"
    );

    let mut wrong_slice = f.grant();
    wrong_slice.slice = "iad_x".into();
    let reason = f.refusal(&wrong_slice).await;
    assert!(
        reason.contains("belongs to slice ams_c on this node, not to iad_x"),
        "{reason}"
    );

    let mut not_up = f.grant();
    not_up.sliver_id = 7;
    let reason = f.refusal(&not_up).await;
    assert!(
        reason.contains("sliver 7's console is not available"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_expired_grant_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let mut g = f.grant();
    g.issued_at -= 120;
    g.expires_at = unix_now() - 1;
    let reason = f.refusal(&g).await;
    assert!(reason.contains("console grant expired"), "{reason}");

    let mut future = f.grant();
    future.issued_at += 3600;
    future.expires_at += 3600;
    let reason = f.refusal(&future).await;
    assert!(reason.contains("in the future"), "{reason}");
}

#[tokio::test]
async fn a_client_without_the_principals_key_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let thief = keys::generate();
    let reason = f.refusal_as(&f.grant(), &thief).await;
    assert!(
        reason.contains("the client did not prove it holds the key"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_grant_not_signed_by_the_nodes_authority_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let g = f.grant();
    // Signed by another authority; the client checks with that one's key
    // (as a client of the wrong authority would), the node with its own.
    let rogue = keys::generate();
    let mut reply = f.reply(&g);
    reply.grant = base64::engine::general_purpose::STANDARD.encode(grant::sign(&g, &rogue));
    let err = console_client::open(
        &reply,
        &PublicKey::of(&rogue),
        &f.alice,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    match err {
        OpenError::Grant(GrantError::Refused { reason }) => {
            assert!(reason.contains("signature is invalid"), "{reason}")
        }
        other => panic!("expected the node's refusal, got: {other}"),
    }
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_refused() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let mut stream = TcpStream::connect(f.addr).await.unwrap();
    read_frame(&mut stream, &[handshake::NODE_HELLO])
        .await
        .unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let answer = read_frame(&mut stream, &[handshake::NODE_ANSWER])
        .await
        .unwrap();
    let reason = String::from_utf8_lossy(&answer[HEADER_LEN..]).into_owned();
    assert!(reason.contains("bad magic"), "{reason}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_as_busy_and_slow_handshakes_time_out() {
    let f = Fixture::start(1, Duration::from_millis(500)).await;
    // A client that connects and then says nothing holds the only slot.
    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    read_frame(&mut silent, &[handshake::NODE_HELLO])
        .await
        .unwrap();
    let reason = f.refusal(&f.grant()).await;
    assert!(
        reason.contains("node ams-n1 has 1 console connections open, its limit"),
        "{reason}"
    );
    // It is cut off when its handshake time is up, with the reason.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut silent, &[handshake::NODE_ANSWER]),
    )
    .await
    .expect("the node ends a stalled handshake")
    .unwrap();
    let reason = String::from_utf8_lossy(&answer[HEADER_LEN..]).into_owned();
    assert!(reason.contains("did not finish within 500ms"), "{reason}");
    // The slot is free again: a proper client gets in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut console = loop {
        match f.open_as(&f.grant(), &f.alice).await {
            Ok(console) => break console,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(round_trip(&mut console, "hi").await, "console: hi\n");
}

#[tokio::test]
async fn a_node_that_cannot_prove_the_granted_key_is_not_trusted() {
    let f = Fixture::start(4, HANDSHAKE_TIMEOUT).await;
    let g = f.grant();
    let grant_bytes = grant::sign(&g, &f.authority);
    // An impostor at the console address: accepts anything, signs with its own key.
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut reply = f.reply(&g);
    reply.console = impostor.local_addr().unwrap();
    let fake_node = tokio::spawn(async move {
        let (mut stream, _) = impostor.accept().await.unwrap();
        let nc = handshake::challenge();
        stream.write_all(&handshake::node_hello(&nc)).await.unwrap();
        let hello = read_frame(&mut stream, &[CLIENT_HELLO]).await.unwrap();
        let client_challenge: [u8; 32] = hello[hello.len() - 96..hello.len() - 64]
            .try_into()
            .unwrap();
        let client = handshake::VerifiedClient {
            grant: g,
            grant_bytes,
            client_challenge,
        };
        let answer = handshake::accept(&keys::generate(), &client, &nc);
        stream.write_all(&answer).await.unwrap();
        stream
    });
    let err = console_client::open(
        &reply,
        &PublicKey::of(&f.authority),
        &f.alice,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Grant(GrantError::BadPossession {
                party: grant::Party::Node
            })
        ),
        "{err}"
    );
    drop(fake_node.await.unwrap());
}
