//! Keeps the connections to chosen peers open (our monitoring subjects and
//! watchers) while every other connection closes once idle, refuses to open
//! connections to anyone else, and runs the heartbeat on the connections to
//! our subjects.
//!
//! libp2p closes a connection when none of its handlers needs it. Gossipsub
//! only holds its mesh peers, and Kademlia and the sync
//! protocol only hold a connection while they use it; so without this
//! behaviour a node would either keep every connection it ever made (and ping
//! them all: O(N) work per node at scale) or lose the ones failure detection
//! depends on.
//!
//! The refusal bounds the degree of a node: Kademlia's lookups (its bootstrap
//! refreshes every bucket, asking 20 peers per lookup) would otherwise dial
//! almost every node of a small overlay and hundreds of a large one, each
//! dial a handshake, an identify exchange and a pinged connection. With it,
//! Kademlia queries run over the connections a node already has (a peer it
//! cannot reach that way counts as a failed query step), and the only dials
//! are those of failure detection (to our subjects) and to bootstrap
//! addresses (which carry no peer id). Inbound connections are not refused
//! here: [`libp2p::connection_limits`] caps those.

//!
//! The heartbeat (`/slicenet/heartbeat/2`) replaces libp2p's ping, which pings
//! every connection in both directions: a watcher sends 8 bytes to each
//! subject every `ping_interval` and the subject echoes them. So a node sends
//! at most `watchers` heartbeats per period whatever its degree. Healthy
//! heartbeats raise no event at all: each handler keeps the time of the last
//! echo where the driver can read it ([`Behaviour::last_echo`]), and reports
//! only changes: a subject's first echo, a subject that stayed silent for the
//! silence limit ([`Event::Silent`], repeated every period while it lasts), and
//! its return. So at a thousand nodes per host the membership tasks are not
//! woken several thousand times a second for news that nothing changed.
//!
//! Each echo also carries how late the subject's own event loop runs (see
//! [`crate::membership::health`]), and the watcher allows that subject twice as
//! much extra silence, at most [`MAX_SLACK`]. An overloaded host answers late but
//! answers; without the slack its watchers suspect it, and the suspicion and its
//! refutation are two floods through the whole overlay, which load every node
//! further (Lifeguard, Dadgar et al. 2018, makes the same point for the prober's
//! own health; this is the subject's side). A subject that was punctual before it
//! froze is judged on the plain limit; a subject can delay only its own
//! detection, and by at most [`MAX_SLACK`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

/// Heartbeat protocol name.
pub const HEARTBEAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/slicenet/heartbeat/2");
/// Bytes in one heartbeat (echoed unchanged, followed by the subject's lateness).
const HEARTBEAT_LEN: usize = 8;
/// Bytes of lateness (milliseconds, big-endian) after the echo.
const LAG_LEN: usize = 2;
/// Extra silence allowed per unit of lateness the subject reported.
const SLACK_PER_LAG: u32 = 2;
/// Most extra silence a subject's reported lateness earns it.
pub const MAX_SLACK: Duration = Duration::from_millis(1500);
/// Most heartbeats echoed in one poll of a connection's handler.
const MAX_ECHOES_PER_POLL: usize = 4;

/// What a connection is for, as far as this behaviour is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    /// Keep the connection open (the peer is a subject or a watcher).
    pub keep_alive: bool,
    /// Send heartbeats on it (the peer is a subject).
    pub heartbeat: bool,
}

/// A change in a subject's heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The subject echoed its first heartbeat on a connection, or echoed again after
    /// a silence.
    Answered {
        /// The subject.
        peer: PeerId,
    },
    /// No echo for the silence limit (repeated every period while it lasts).
    Silent {
        /// The subject.
        peer: PeerId,
    },
}

/// When a peer last echoed a heartbeat, in microseconds after the behaviour's epoch
/// (0: never); written by the connection handlers, read by the driver.
type EchoClock = Arc<AtomicU64>;

/// How late our own event loop runs, in milliseconds; written by the driver, sent
/// with every echo by the connection handlers.
type LagGauge = Arc<AtomicU32>;

/// Extra silence a subject that reported `lag` is allowed.
fn slack_for(lag: Duration) -> Duration {
    (lag * SLACK_PER_LAG).min(MAX_SLACK)
}

/// Holds connections to our subjects and watchers open, runs heartbeats to our
/// subjects, and refuses dials to any other peer.
pub struct Behaviour {
    interval: Duration,
    silence_limit: Duration,
    epoch: Instant,
    echoes: HashMap<PeerId, EchoClock>,
    own_lag: LagGauge,
    subjects: HashSet<PeerId>,
    watchers: HashSet<PeerId>,
    /// Dials to peers outside the set that were refused.
    refused: u64,
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    notify: VecDeque<(PeerId, ConnectionId, Role)>,
    events: VecDeque<Event>,
}

impl Behaviour {
    /// A behaviour whose heartbeats go out every `interval` and that reports a subject
    /// silent after `silence_limit` without an echo.
    pub fn new(interval: Duration, silence_limit: Duration) -> Self {
        Self {
            interval,
            silence_limit,
            epoch: Instant::now(),
            echoes: HashMap::new(),
            own_lag: LagGauge::default(),
            subjects: HashSet::new(),
            watchers: HashSet::new(),
            refused: 0,
            connections: HashMap::new(),
            notify: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Replaces the peers we watch and the peers that watch us.
    pub fn set_neighbours(&mut self, subjects: HashSet<PeerId>, watchers: HashSet<PeerId>) {
        let old: HashMap<PeerId, Role> = self
            .connections
            .keys()
            .map(|peer| (*peer, self.role(peer)))
            .collect();
        self.subjects = subjects;
        self.watchers = watchers;
        for (peer, connections) in &self.connections {
            let role = self.role(peer);
            if old.get(peer) != Some(&role) {
                for connection in connections {
                    self.notify.push_back((*peer, *connection, role));
                }
            }
        }
    }

    /// Records how late our own event loop runs; our echoes tell our watchers.
    pub fn set_own_lag(&self, lag: Duration) {
        let millis = u32::try_from(lag.as_millis()).unwrap_or(u32::MAX);
        self.own_lag.store(millis, Ordering::Relaxed);
    }

    /// When `peer` last echoed one of our heartbeats, if it ever did on a connection
    /// that is still open.
    pub fn last_echo(&self, peer: &PeerId) -> Option<Instant> {
        let micros = self.echoes.get(peer)?.load(Ordering::Relaxed);
        (micros > 0).then(|| self.epoch + Duration::from_micros(micros))
    }

    /// How many dials to peers outside the set were refused so far.
    pub fn refused_dials(&self) -> u64 {
        self.refused
    }

    fn role(&self, peer: &PeerId) -> Role {
        Role {
            keep_alive: self.wanted(peer),
            heartbeat: self.subjects.contains(peer),
        }
    }

    fn wanted(&self, peer: &PeerId) -> bool {
        self.subjects.contains(peer) || self.watchers.contains(peer)
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().insert(connection);
        let clock = self.echoes.entry(peer).or_default().clone();
        Handler::new(
            self.role(&peer),
            self.interval,
            self.silence_limit,
            (self.epoch, clock),
            self.own_lag.clone(),
        )
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        match peer {
            Some(peer) if !self.wanted(&peer) => {
                self.refused += 1;
                Err(ConnectionDenied::new(NotAContact(peer)))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            if let Some(set) = self.connections.get_mut(&closed.peer_id) {
                set.remove(&closed.connection_id);
                if set.is_empty() {
                    self.connections.remove(&closed.peer_id);
                    self.echoes.remove(&closed.peer_id);
                }
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.events.push_back(match event {
            HandlerEvent::Answered => Event::Answered { peer },
            HandlerEvent::Silent => Event::Silent { peer },
        });
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        match self.notify.pop_front() {
            Some((peer_id, connection, role)) => Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: role,
            }),
            None => Poll::Pending,
        }
    }
}

/// Why a dial was refused: the peer is not one we watch or that watches us.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a monitoring neighbour: membership does not dial it")]
pub struct NotAContact(PeerId);

/// What a connection's handler reports to the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    /// The first echo on this connection, or the first after a silence.
    Answered,
    /// No echo for the silence limit.
    Silent,
}

/// Echoing one heartbeat on a stream; gives the stream back for the next one.
type Echo = BoxFuture<'static, std::io::Result<Stream>>;
/// One heartbeat sent and answered; gives back the stream and the lateness the
/// subject reported.
type Beat = BoxFuture<'static, std::io::Result<(Stream, Duration)>>;

/// The sending side of the heartbeat on one connection.
enum Outbound {
    /// The peer is not our subject.
    Off,
    /// A stream is to be requested.
    Start,
    /// A stream was requested and is being negotiated.
    Requested,
    /// Waiting for the next period.
    Idle {
        stream: Stream,
        next: Pin<Box<tokio::time::Sleep>>,
    },
    /// A heartbeat is out.
    Sent { exchange: Beat },
    /// The stream failed; a new one is requested after a period.
    Backoff { next: Pin<Box<tokio::time::Sleep>> },
}

fn send_heartbeat(mut stream: Stream) -> Beat {
    async move {
        let payload: [u8; HEARTBEAT_LEN] = rand::random();
        stream.write_all(&payload).await?;
        stream.flush().await?;
        let mut answer = [0u8; HEARTBEAT_LEN + LAG_LEN];
        stream.read_exact(&mut answer).await?;
        let lag = parse_answer(&payload, &answer)?;
        Ok((stream, lag))
    }
    .boxed()
}

/// The answer to `payload`: the payload echoed, then our lateness.
fn encode_answer(payload: &[u8; HEARTBEAT_LEN], lag_ms: u32) -> [u8; HEARTBEAT_LEN + LAG_LEN] {
    let mut answer = [0u8; HEARTBEAT_LEN + LAG_LEN];
    answer[..HEARTBEAT_LEN].copy_from_slice(payload);
    let lag = u16::try_from(lag_ms).unwrap_or(u16::MAX);
    answer[HEARTBEAT_LEN..].copy_from_slice(&lag.to_be_bytes());
    answer
}

/// The lateness in an answer to `payload`; an error if the echo does not match.
fn parse_answer(
    payload: &[u8; HEARTBEAT_LEN],
    answer: &[u8; HEARTBEAT_LEN + LAG_LEN],
) -> std::io::Result<Duration> {
    if answer[..HEARTBEAT_LEN] != payload[..] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "heartbeat echo does not match",
        ));
    }
    let lag = u16::from_be_bytes([answer[HEARTBEAT_LEN], answer[HEARTBEAT_LEN + 1]]);
    Ok(Duration::from_millis(u64::from(lag)))
}

fn echo_heartbeat(mut stream: Stream, own_lag: LagGauge) -> Echo {
    async move {
        let mut payload = [0u8; HEARTBEAT_LEN];
        stream.read_exact(&mut payload).await?;
        let answer = encode_answer(&payload, own_lag.load(Ordering::Relaxed));
        stream.write_all(&answer).await?;
        stream.flush().await?;
        Ok(stream)
    }
    .boxed()
}

/// Keeps the connection open while the peer is a neighbour and runs the heartbeat.
pub struct Handler {
    role: Role,
    interval: Duration,
    silence_limit: Duration,
    /// The behaviour's epoch and where we record the time of each echo.
    echo_clock: (Instant, EchoClock),
    /// Our own lateness, sent with every echo.
    own_lag: LagGauge,
    /// Extra silence the subject earned by the lateness it reported last.
    slack: Duration,
    /// Fires when the subject has been silent too long (armed while we send heartbeats).
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether we reported the subject silent and it has not answered since.
    silent: bool,
    /// Whether any echo arrived on this connection.
    answered: bool,
    outbound: Outbound,
    /// The echo side: one stream from the peer at a time (a newer one replaces it).
    inbound: Option<Echo>,
}

impl Handler {
    fn new(
        role: Role,
        interval: Duration,
        silence_limit: Duration,
        echo_clock: (Instant, EchoClock),
        own_lag: LagGauge,
    ) -> Self {
        Self {
            role,
            interval,
            silence_limit,
            echo_clock,
            own_lag,
            slack: Duration::ZERO,
            silence: None,
            silent: false,
            answered: false,
            outbound: if role.heartbeat {
                Outbound::Start
            } else {
                Outbound::Off
            },
            inbound: None,
        }
    }

    fn later(&self) -> Pin<Box<tokio::time::Sleep>> {
        Box::pin(tokio::time::sleep(self.interval))
    }

    /// Starts judging silence (when we start sending heartbeats).
    fn arm_silence(&mut self) {
        if self.silence.is_none() {
            self.silence = Some(Box::pin(tokio::time::sleep(self.silence_limit)));
        }
    }

    /// An echo arrived, with the subject's lateness: records it, re-arms the silence
    /// timer, and says whether the behaviour must hear of it (the first echo, or the
    /// first after a silence).
    fn on_echo(&mut self, lag: Duration) -> bool {
        let now = Instant::now();
        self.slack = slack_for(lag);
        let (epoch, clock) = &self.echo_clock;
        let micros = now.duration_since(*epoch).as_micros().max(1) as u64;
        clock.fetch_max(micros, Ordering::Relaxed);
        if let Some(timer) = self.silence.as_mut() {
            timer.as_mut().reset(tokio::time::Instant::from_std(
                now + self.silence_limit + self.slack,
            ));
        }
        let report = self.silent || !self.answered;
        self.silent = false;
        self.answered = true;
        report
    }

    /// Whether the subject just went (or is still) silent: due once per silence limit,
    /// then once per period while the silence lasts.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = self.silence.as_mut() else {
            return false;
        };
        if timer.poll_unpin(cx).is_pending() {
            return false;
        }
        let next = tokio::time::Instant::now() + self.interval;
        timer.as_mut().reset(next);
        // Re-polled so that the new deadline wakes us.
        let _ = timer.poll_unpin(cx);
        self.silent = true;
        true
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Role;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(HEARTBEAT_PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, role: Role) {
        if role.heartbeat != self.role.heartbeat {
            self.outbound = if role.heartbeat {
                Outbound::Start
            } else {
                self.silence = None;
                self.silent = false;
                Outbound::Off
            };
        }
        self.role = role;
    }

    fn connection_keep_alive(&self) -> bool {
        self.role.keep_alive
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), HandlerEvent>> {
        // Echo what has arrived; a peer sending faster than it should gets a bounded
        // number of echoes per poll, the rest on the next one.
        for echoed in 0.. {
            let Some(exchange) = self.inbound.as_mut() else {
                break;
            };
            if echoed == MAX_ECHOES_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
            match exchange.poll_unpin(cx) {
                Poll::Ready(Ok(stream)) => {
                    self.inbound = Some(echo_heartbeat(stream, self.own_lag.clone()))
                }
                Poll::Ready(Err(_)) => self.inbound = None,
                Poll::Pending => break,
            }
        }
        if self.role.heartbeat && self.poll_silence(cx) {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                HandlerEvent::Silent,
            ));
        }
        loop {
            match &mut self.outbound {
                Outbound::Off | Outbound::Requested => return Poll::Pending,
                Outbound::Start => {
                    self.arm_silence();
                    self.outbound = Outbound::Requested;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(ReadyUpgrade::new(HEARTBEAT_PROTOCOL), ()),
                    });
                }
                Outbound::Backoff { next } => match next.poll_unpin(cx) {
                    Poll::Ready(()) => self.outbound = Outbound::Start,
                    Poll::Pending => return Poll::Pending,
                },
                Outbound::Idle { next, .. } => match next.poll_unpin(cx) {
                    Poll::Ready(()) => {
                        let Outbound::Idle { stream, .. } =
                            std::mem::replace(&mut self.outbound, Outbound::Off)
                        else {
                            unreachable!("matched Idle above");
                        };
                        self.outbound = Outbound::Sent {
                            exchange: send_heartbeat(stream),
                        };
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Outbound::Sent { exchange } => match exchange.poll_unpin(cx) {
                    Poll::Ready(Ok((stream, lag))) => {
                        self.outbound = Outbound::Idle {
                            stream,
                            next: self.later(),
                        };
                        if self.on_echo(lag) {
                            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                                HandlerEvent::Answered,
                            ));
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        self.outbound = Outbound::Backoff { next: self.later() };
                    }
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.inbound = Some(echo_heartbeat(stream, self.own_lag.clone())),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                if matches!(self.outbound, Outbound::Requested) {
                    // The first heartbeat goes out at once.
                    self.outbound = Outbound::Sent {
                        exchange: send_heartbeat(stream),
                    };
                }
            }
            ConnectionEvent::DialUpgradeError(_) => {
                if matches!(self.outbound, Outbound::Requested) {
                    self.outbound = Outbound::Backoff { next: self.later() };
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_echo_and_the_lateness() {
        let payload = [7u8; HEARTBEAT_LEN];
        let answer = encode_answer(&payload, 640);
        assert_eq!(
            parse_answer(&payload, &answer).unwrap(),
            Duration::from_millis(640)
        );
        let saturated = encode_answer(&payload, u32::MAX);
        assert_eq!(
            parse_answer(&payload, &saturated).unwrap(),
            Duration::from_millis(u64::from(u16::MAX))
        );
        let mut forged = answer;
        forged[0] ^= 1;
        assert!(
            parse_answer(&payload, &forged).is_err(),
            "a wrong echo is an error"
        );
    }

    #[test]
    fn slack_doubles_the_reported_lateness_up_to_a_cap() {
        assert_eq!(slack_for(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            slack_for(Duration::from_millis(300)),
            Duration::from_millis(600)
        );
        assert_eq!(slack_for(Duration::from_secs(60)), MAX_SLACK);
    }
}
