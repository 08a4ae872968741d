//! A hostile libp2p peer speaks the membership protocols to honest nodes:
//! forged, mis-bound, stale, replayed, oversized and malformed input is dropped
//! and counted, and lying about a live node does not evict it. A raw peer that
//! an honest node declared down, and that talks to it again, is told so.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, noise, request_response, tcp, yamux, Multiaddr, StreamProtocol};
use sha2::{Digest as _, Sha256};
use slicenet_node::membership::message::{GossipMessage, SyncRequest, SyncResponse};
use slicenet_node::membership::{
    Capacity, Counters, GeoLocation, Membership, MembershipConfig, MembershipHandle, NodeIdentity,
    NodeInfo, NodeRecord, PeerAddr, WgPublicKey,
};

fn info(i: u8) -> NodeInfo {
    NodeInfo {
        site: format!("site{i}"),
        region: "eu".into(),
        location: GeoLocation::default(),
        capacity: Capacity::default(),
        wireguard_key: WgPublicKey::from_bytes([i; 32]),
        tunnel_addr: Ipv4Addr::new(198, 19, 255, i),
        underlay: vec![],
        software_version: "test".into(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(id: &NodeIdentity, seq: u64, timestamp_ms: u64, wg: u8) -> Vec<u8> {
    NodeRecord {
        node_id: id.node_id(),
        seq,
        timestamp_ms,
        leaving: false,
        info: info(wg),
        contacts: vec![],
    }
    .sign(id)
    .unwrap()
    .bytes()
    .to_vec()
}

async fn read_framed<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let mut b = vec![0u8; (u32::from_be_bytes(len) as usize).min(1 << 24)];
    io.read_exact(&mut b).await?;
    Ok(b)
}

/// Raw-bytes codec for the sync protocol, as an attacker would write it.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_framed(io).await
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_framed(io).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&(req.len() as u32).to_be_bytes()).await?;
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&(res.len() as u32).to_be_bytes()).await?;
        io.write_all(&res).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Hostile {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<RawCodec>,
}

fn hostile_swarm(identity: &NodeIdentity) -> libp2p::Swarm<Hostile> {
    let mut seed = identity_seed(identity);
    let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .max_transmit_size(1 << 20)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(&Sha256::digest(&m.data)[..20])
                })
                .build()
                .unwrap();
            Hostile {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Anonymous,
                    config,
                )
                .unwrap(),
                sync: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(
                        StreamProtocol::new("/slicenet/membership/sync/2"),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default(),
                ),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn identity_seed(identity: &NodeIdentity) -> [u8; 32] {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(identity.seed_base64())
        .unwrap()
        .try_into()
        .unwrap()
}

async fn start_honest(i: u8, bootstrap: Vec<PeerAddr>) -> (Membership, MembershipHandle) {
    let mut config = MembershipConfig::new(NodeIdentity::generate(), info(i))
        .listen("127.0.0.1:0".parse().unwrap());
    config.bootstrap = bootstrap;
    let (m, mut events) = Membership::start(config).await.unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let h = m.handle();
    (m, h)
}

/// Where a hostile swarm reaches `node`: its TCP address and its peer id.
fn dial_target(node: &Membership) -> (Multiaddr, libp2p::PeerId) {
    let PeerAddr::Tcp(tcp) = node.listen_addrs()[0] else {
        panic!("tcp listener")
    };
    let addr = format!("/ip4/{}/tcp/{}", tcp.ip(), tcp.port())
        .parse()
        .unwrap();
    (addr, node.node_id().peer_id_string().parse().unwrap())
}

/// Polls `check` on `handle`'s counters until it holds, or panics after 15 s.
async fn wait_counters(handle: &MembershipHandle, what: &str, check: impl Fn(&Counters) -> bool) {
    let start = Instant::now();
    loop {
        let c = handle.status().await.unwrap().counters;
        if check(&c) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: {c:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_refused_counted_and_evict_nobody() {
    let (a, a_handle) = start_honest(1, vec![]).await;
    let (b, b_handle) = start_honest(2, a.listen_addrs().to_vec()).await;
    // Wait until a and b know each other.
    let start = Instant::now();
    while a_handle.status().await.unwrap().live_members < 1
        || b_handle.status().await.unwrap().live_members < 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "a and b never met"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let attacker = NodeIdentity::generate();
    let victim = NodeIdentity::generate();
    let mut swarm = hostile_swarm(&attacker);
    let topic = gossipsub::IdentTopic::new("slicenet/membership/1");
    swarm.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
    let (addr, a_peer) = dial_target(&a);
    swarm.dial(addr).unwrap();

    // Wait for a's subscription so publishing reaches it.
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let SwarmEvent::Behaviour(HostileEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                ..
            })) = swarm.select_next_some().await
            {
                if peer_id == a_peer {
                    break;
                }
            }
        }
    })
    .await
    .expect("a subscribed");

    let now = unix_ms();
    let gossip = |payload: Vec<u8>| payload;
    let mut forged = record(&attacker, 5, now, 50);
    forged[18..50].copy_from_slice(victim.node_id().as_bytes());
    let third = NodeIdentity::generate();
    let messages = vec![
        // Forged: claims the victim's id, signed by the attacker.
        gossip(GossipMessage::Record(&forged).to_bytes()),
        // Replayed: a genuine record signed twenty minutes ago (beyond the record TTL).
        gossip(GossipMessage::Record(&record(&third, 1, now - 1_200_000, 51)).to_bytes()),
        // From the future.
        gossip(GossipMessage::Record(&record(&third, 2, now + 3_600_000, 52)).to_bytes()),
        // Oversized.
        gossip({
            let mut m = vec![0x01];
            m.extend_from_slice(&[0u8; 4000]);
            m
        }),
        // Malformed.
        gossip(vec![0x09, 1, 2, 3]),
        // Claims b's WireGuard key for the attacker's own id.
        gossip(GossipMessage::Record(&record(&attacker, 7, now, 2)).to_bytes()),
        // A lie: b is unreachable (b is alive and must refute).
        gossip(
            GossipMessage::Suspect {
                node: b.node_id(),
                seq: u64::MAX,
            }
            .to_bytes(),
        ),
    ];
    for m in messages {
        swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), m)
            .expect("published to a");
    }
    // Mis-bound: the attacker's connection presents someone else's genuine record as its own.
    let misbound = SyncRequest::encode_pull(&record(&third, 9, now, 53), std::iter::empty());
    swarm.behaviour_mut().sync.send_request(&a_peer, misbound);
    let swarm_task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    wait_counters(&a_handle, "every hostile message counted", |c| {
        c.dropped_bad_signature >= 1
            && c.dropped_stale >= 1
            && c.dropped_from_future >= 1
            && c.dropped_oversized >= 1
            && c.dropped_malformed >= 1
            && c.dropped_key_conflict >= 1
            && c.dropped_wrong_binding >= 1
            && c.suspicions_received >= 1
    })
    .await;

    // Refusals changed nothing: a knows exactly b (live) and nobody else.
    let members = a_handle.members().await.unwrap();
    let ids: Vec<_> = members.iter().map(|m| m.record.node_id()).collect();
    assert_eq!(ids, vec![b.node_id()], "only b is a member of a's table");
    // b heard the lie about itself and refuted it; it outlives the suspicion timeout.
    wait_counters(&b_handle, "b refuted", |c| c.refutations_sent >= 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        a_handle.status().await.unwrap().live_members,
        1,
        "b is still up at a"
    );

    swarm_task.abort();
    a.shutdown().await;
    b.shutdown().await;
}

/// Pulls from `peer` presenting `own` as our record, driving the swarm meanwhile;
/// returns the seq at which the answer says `peer` holds us down, if it does.
async fn pull_as(
    swarm: &mut libp2p::Swarm<Hostile>,
    peer: libp2p::PeerId,
    own: &[u8],
) -> Option<u64> {
    let request = SyncRequest::encode_pull(own, std::iter::empty());
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        while !swarm.is_connected(&peer) {
            swarm.select_next_some().await;
        }
        swarm.behaviour_mut().sync.send_request(&peer, request);
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(HostileEvent::Sync(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => return response,
                SwarmEvent::Behaviour(HostileEvent::Sync(
                    request_response::Event::OutboundFailure { error, .. },
                )) => panic!("sync request failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("answered");
    SyncResponse::parse(&answer).unwrap().requester_down
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_held_down_hears_it_from_the_next_node_it_talks_to() {
    let (a, a_handle) = start_honest(1, vec![]).await;
    let ghost = NodeIdentity::generate();
    let mut swarm = hostile_swarm(&ghost);
    let (addr, a_peer) = dial_target(&a);
    swarm.dial(addr.clone()).unwrap();
    let own = record(&ghost, 5, unix_ms(), 60);
    assert_eq!(
        pull_as(&mut swarm, a_peer, &own).await,
        None,
        "a holds the ghost up"
    );
    assert_eq!(a_handle.status().await.unwrap().live_members, 1);

    // The ghost is a's only member, so a watches it; the ghost never echoes a
    // heartbeat, so a suspects it, probes it (it listens nowhere) and declares it down.
    let start = Instant::now();
    loop {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if a_handle.status().await.unwrap().live_members == 0 {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(15), "a never declared the ghost down");
            }
        }
    }

    // The ghost connects again and talks to a with the same record. Its connection
    // brings it back up at a, but everyone a told holds it down at seq 5 until it
    // re-signs, so a tells it.
    if !swarm.is_connected(&a_peer) {
        swarm.dial(addr).unwrap();
    }
    assert_eq!(
        pull_as(&mut swarm, a_peer, &own).await,
        Some(5),
        "a declared the ghost failed at seq 5"
    );
    // A re-signed record settles it.
    let newer = record(&ghost, 6, unix_ms(), 60);
    assert_eq!(pull_as(&mut swarm, a_peer, &newer).await, None);
    assert_eq!(a_handle.status().await.unwrap().live_members, 1);
    a.shutdown().await;
}
