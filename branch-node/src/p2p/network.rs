//! The branch node's network: `new()` gives a [`Client`] (cheap to clone) and an
//! [`EventLoop`] (one task owns the swarm). Inbound requests arrive on long-lived
//! streams ([`pipe`]), one task per stream, and go out as [`Inbound`] on two bounded
//! queues ([`InboundQueues`]): 2PC envelopes on one, teller and forwarded requests on
//! the other, so a teller flood can fill only its own. A request that finds its queue
//! full is answered "overloaded" at once, never dropped unanswered. Each request comes
//! with its [`Responder`], which writes the answer back on its stream. Nothing here
//! panics on a network event: failures are logged and answered with errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm, mdns};
use tokio::sync::{mpsc, oneshot};
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::teller::{LinkFault, Unavailable};
use wire::{BranchId, TellerRequest, TellerResponse};

use super::{NodeBehaviour, NodeBehaviourEvent};
use client::network_file::{BranchEntry, NetworkFile, ReplicaEntry};
use client::pipe::{self, OpenError, Responder, Slot};

/// Most inbound requests of each queue waiting for the node to pick them up; more are
/// answered "overloaded".
pub const INBOUND_QUEUE_MAX: usize = 16_384;

/// The two inbound queues: 2PC envelopes, and everything a teller caused.
#[derive(Debug)]
pub struct InboundQueues {
    pub twopc: mpsc::Receiver<Inbound>,
    pub requests: mpsc::Receiver<Inbound>,
    /// Raft streams from other replicas of this branch (one call each).
    pub raft: mpsc::Receiver<(PeerId, Stream)>,
}

/// Which branch-to-branch protocol a request or an answer travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// `LINK_PROTOCOL`: 2PC envelopes.
    Link,
    /// `FORWARD_PROTOCOL`: teller requests passed on.
    Forward,
}

impl Via {
    fn protocol(self) -> StreamProtocol {
        match self {
            Via::Link => super::LINK_PROTOCOL,
            Via::Forward => super::FORWARD_PROTOCOL,
        }
    }

    /// Most unanswered requests on one stream of this protocol.
    fn in_flight_max(self) -> usize {
        match self {
            Via::Link => super::LINK_IN_FLIGHT_MAX,
            Via::Forward => wire::limits::FORWARDS_PER_BRANCH_MAX,
        }
    }

    fn of(request: &LinkRequest) -> Via {
        match request {
            LinkRequest::TwoPc { .. } | LinkRequest::Fence(_) => Via::Link,
            LinkRequest::Forward(_) => Via::Forward,
        }
    }
}
/// How long a replicated branch's replica may take to accept a 2PC envelope before the
/// sender tries the next replica (a branch accepts one as soon as it has checked it).
pub const TWOPC_ATTEMPT_MS: u64 = 1_500;

/// Most client commands waiting for the event loop.
const COMMAND_QUEUE_MAX: usize = 16_384;

/// A request that arrived, with the channel its answer goes back on.
#[derive(Debug)]
pub enum Inbound {
    /// From a branch listed in the network file (the event loop checked the peer).
    Link {
        peer: PeerId,
        request: LinkRequest,
        reply: Responder,
    },
    Teller {
        peer: PeerId,
        request: TellerRequest,
        reply: Responder,
    },
}

/// Why a request to another branch got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("link blocked by the fault switch")]
    Blocked,
    /// The request never left: a failed dial, or a peer without the protocol.
    #[error("request not sent: {0}")]
    NotSent(String),
    /// No stream to the peer could be opened: the request never left.
    #[error("request not sent: {0}")]
    NotOpened(#[from] OpenError),
    /// The request may have arrived (and been acted on), but no answer came back.
    #[error("no answer: {0}")]
    NoAnswer(String),
    #[error("network event loop has stopped")]
    Stopped,
}

impl LinkError {
    /// Whether the other branch may have received the request and acted on it.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, LinkError::NoAnswer(_))
    }
}

#[derive(Debug)]
enum Command {
    /// Dial a listed branch at its addresses unless connected; `done` once started.
    Dial {
        peer: PeerId,
        done: oneshot::Sender<()>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
}

/// The stream to each other branch, per protocol.
type Pipes = HashMap<(PeerId, Via), Arc<Slot>>;

/// The fault switch of each link (in-process partitions for the scenarios).
type Faults = Arc<Mutex<HashMap<PeerId, LinkFault>>>;
/// The replica last found leading each replicated branch.
type Leaders = Arc<Mutex<HashMap<BranchId, u64>>>;

fn fault_of(faults: &Faults, peer: &PeerId) -> LinkFault {
    let faults = faults.lock().unwrap_or_else(PoisonError::into_inner);
    faults.get(peer).copied().unwrap_or(LinkFault::Healthy)
}

/// Talks to the event loop, and sends to other branches on one stream per branch and
/// protocol. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    pipes: Arc<Mutex<Pipes>>,
    faults: Faults,
    network: Arc<NetworkFile>,
    /// The replica of each replicated branch last found leading it.
    leaders: Leaders,
    /// Each peer's connections, and whether each comes from this machine (loopback).
    origins: Origins,
}

/// Each connected peer's connections, and whether each comes from this machine.
type Origins = Arc<Mutex<HashMap<PeerId, HashMap<libp2p::swarm::ConnectionId, bool>>>>;

/// Whether `addr` is a loopback address (127.0.0.0/8 or ::1).
fn loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// `m`, locked; a panic elsewhere while it was held left nothing half-done in it (every
/// change is one map operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Whether `peer` is connected to this node from this machine only (every one of
    /// its connections comes from a loopback address).
    pub fn from_this_machine(&self, peer: &PeerId) -> bool {
        lock(&self.origins)
            .get(peer)
            .is_some_and(|conns| !conns.is_empty() && conns.values().all(|&local| local))
    }

    /// Sends `request` to branch `to` (to its leader, if it runs as replicas) and waits
    /// for its answer. A replica that answers it is not the leader did nothing with the
    /// request, and neither did one that could not be reached: the request goes to the
    /// replica it names, or the next, once each at most. A 2PC envelope (which a branch
    /// takes at most once, whoever delivers it) also moves on when a replica does not
    /// accept it within [`TWOPC_ATTEMPT_MS`]: a leader cut off by a silent partition
    /// keeps its connections looking open.
    pub async fn link_branch(
        &self,
        to: BranchId,
        request: LinkRequest,
    ) -> Result<LinkResponse, LinkError> {
        let Some(branch) = self.network.get(to) else {
            return Err(LinkError::NotSent(format!("branch {to} is not listed")));
        };
        if !branch.is_replicated() {
            return self.link(branch.first().peer_id, request).await;
        }
        let mut last = LinkError::NotSent(format!("branch {to} has no leader now"));
        let envelope = matches!(request, LinkRequest::TwoPc { .. });
        for _ in 0..=branch.replicas.len() {
            let replica = self.leader_of(branch);
            let sent = self.link(replica.peer_id, request.clone());
            let answer = if envelope {
                tokio::time::timeout(Duration::from_millis(TWOPC_ATTEMPT_MS), sent)
                    .await
                    .unwrap_or_else(|_| Err(LinkError::NoAnswer("not accepted in time".into())))
            } else {
                sent.await
            };
            match answer {
                Err(e @ LinkError::NoAnswer(_)) if envelope => {
                    self.next_leader(branch, replica.id, None);
                    last = e;
                }
                Ok(LinkResponse::NotLeader { leader }) => {
                    self.next_leader(branch, replica.id, leader)
                }
                Err(e @ (LinkError::NotSent(_) | LinkError::NotOpened(_) | LinkError::Blocked)) => {
                    self.next_leader(branch, replica.id, None);
                    last = e;
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// The replica of `branch` last found leading it (the first at the start).
    pub fn leader_of<'b>(&self, branch: &'b BranchEntry) -> &'b ReplicaEntry {
        let leaders = self.leaders.lock().unwrap_or_else(PoisonError::into_inner);
        leaders
            .get(&branch.id)
            .and_then(|id| branch.replica(*id))
            .unwrap_or_else(|| branch.first())
    }

    /// After replica `tried` of `branch` did not take a request: the one it named as
    /// leader, or else the replica after it.
    fn next_leader(&self, branch: &BranchEntry, tried: u64, named: Option<u64>) {
        let named = named.filter(|&n| n != tried && branch.replica(n).is_some());
        let next = named.unwrap_or_else(|| {
            let at = branch
                .replicas
                .iter()
                .position(|r| r.id == tried)
                .unwrap_or(0);
            branch.replicas[(at + 1) % branch.replicas.len()].id
        });
        let mut leaders = self.leaders.lock().unwrap_or_else(PoisonError::into_inner);
        leaders.insert(branch.id, next);
    }

    /// Sends `request` to the node `peer` and waits for its answer.
    pub async fn link(
        &self,
        peer: PeerId,
        request: LinkRequest,
    ) -> Result<LinkResponse, LinkError> {
        if let LinkFault::Delayed { delay_ms } = fault_of(&self.faults, &peer) {
            tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
        }
        if fault_of(&self.faults, &peer) == LinkFault::Blocked {
            return Err(LinkError::Blocked);
        }
        let via = Via::of(&request);
        let body = wire::encode(&request).map_err(|e| LinkError::NotSent(e.to_string()))?;
        drop(request);
        let pipe = self.pipe(peer, via).await?;
        let timeout = Duration::from_millis(super::REQUEST_TIMEOUT_MS);
        let answer = pipe
            .call(body, timeout)
            .await
            .map_err(|(reason, arrived)| {
                if arrived {
                    LinkError::NoAnswer(reason)
                } else {
                    LinkError::NotSent(reason)
                }
            })?;
        wire::decode(&answer).map_err(|e| LinkError::NoAnswer(format!("bad answer: {e}")))
    }

    /// A new stream to `peer` on `protocol` (dialling first if need be): a pipe's, or a
    /// call's on a protocol that opens one stream per call.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream, OpenError> {
        if fault_of(&self.faults, &peer) == LinkFault::Blocked {
            return Err(OpenError::Blocked);
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Dial { peer, done })
            .await
            .map_err(|_| OpenError::Stopped)?;
        let timeout = Duration::from_millis(super::OPEN_TIMEOUT_MS);
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r.map_err(|_| OpenError::Stopped)?,
            Err(_) => return Err(OpenError::ConnectTimeout(timeout)),
        }
        pipe::open_stream(self.control.clone(), peer, protocol, timeout).await
    }

    /// The open stream to `peer` on `via`'s protocol, or a new one.
    async fn pipe(&self, peer: PeerId, via: Via) -> Result<pipe::Pipe, OpenError> {
        let slot = {
            let mut pipes = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(pipes.entry((peer, via)).or_default())
        };
        let open = || self.open_stream(peer, via.protocol());
        let timeout = Duration::from_millis(super::OPEN_TIMEOUT_MS);
        slot.pipe(Duration::from_millis(super::PIPE_IDLE_MS), timeout, open)
            .await
    }

    /// Sets the fault switch for the link with `peer`.
    pub async fn set_fault(&self, peer: PeerId, fault: LinkFault) {
        tracing::warn!(%peer, ?fault, "fault switch set");
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if fault == LinkFault::Healthy {
            faults.remove(&peer);
        } else {
            faults.insert(peer, fault);
        }
    }

    /// The addresses the swarm listens on now.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::ListenAddrs { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<NodeBehaviour>,
    network: Arc<NetworkFile>,
    commands: mpsc::Receiver<Command>,
    twopc: mpsc::Sender<Inbound>,
    requests: mpsc::Sender<Inbound>,
    raft: mpsc::Sender<(PeerId, Stream)>,
    faults: Faults,
    /// Where each listed branch can be dialled: the network file, plus mDNS finds.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Listed peers (replicas of any branch) with at least one open connection.
    connected: std::collections::HashSet<PeerId>,
    origins: Origins,
    /// The client's record of which replica leads each branch.
    leaders: Leaders,
    /// Requests waiting for a dial to settle before they open a stream.
    dials: super::Dials,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

/// Makes the client, the event loop and the channel of inbound requests. Requests to a
/// branch are dialled at the addresses `network` lists for it.
pub fn new(
    swarm: Swarm<NodeBehaviour>,
    network: NetworkFile,
) -> (Client, EventLoop, InboundQueues) {
    let me = *swarm.local_peer_id();
    let addresses = network
        .branches()
        .flat_map(|b| &b.replicas)
        .filter(|r| r.peer_id != me)
        .map(|r| (r.peer_id, r.addresses.clone()))
        .collect();
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (twopc, twopc_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let (requests, requests_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let (raft, raft_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let faults = Faults::default();
    let network = Arc::new(network);
    let client = Client {
        tx,
        control: swarm.behaviour().streams.new_control(),
        pipes: Arc::default(),
        faults: Arc::clone(&faults),
        network: Arc::clone(&network),
        leaders: Arc::default(),
        origins: Arc::default(),
    };
    let event_loop = EventLoop {
        origins: Arc::clone(&client.origins),
        leaders: Arc::clone(&client.leaders),
        swarm,
        network,
        commands,
        twopc,
        requests,
        raft,
        faults,
        addresses,
        connected: std::collections::HashSet::new(),
        dials: super::Dials::default(),
    };
    let queues = InboundQueues {
        twopc: twopc_rx,
        requests: requests_rx,
        raft: raft_rx,
    };
    (client, event_loop, queues)
}

impl EventLoop {
    /// Sets the gauge of other branches with at least one replica connected (a
    /// replica's own branch-mates are not counted).
    fn count_connected(&self) {
        let me = self
            .network
            .by_peer(self.swarm.local_peer_id())
            .map(|b| b.id);
        let branches: std::collections::HashSet<_> = self
            .connected
            .iter()
            .filter_map(|p| self.network.by_peer(p).map(|b| b.id))
            .filter(|&b| Some(b) != me)
            .collect();
        let n = i64::try_from(branches.len()).unwrap_or(i64::MAX);
        crate::metrics::get().peers_connected.set(n);
    }

    /// Runs until `shutdown` resolves or every client is gone.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let accepting = match self.accept_all() {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::error!(%e, "cannot accept streams");
                return;
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        for task in accepting {
            task.abort();
        }
    }

    /// On a replica of a replicated branch, the task that passes Raft streams from the
    /// branch's other replicas on (any other peer's is closed at once). Elsewhere Raft is
    /// not offered at all: opening a stream for it fails in the negotiation.
    fn accept_raft(
        &self,
        control: &mut libp2p_stream::Control,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, libp2p_stream::AlreadyRegistered> {
        let me = *self.swarm.local_peer_id();
        let Some(branch) = self.network.by_peer(&me).filter(|b| b.is_replicated()) else {
            return Ok(None);
        };
        let replicas: std::collections::HashSet<PeerId> = branch
            .replicas
            .iter()
            .map(|r| r.peer_id)
            .filter(|p| *p != me)
            .collect();
        let mut raft_streams = control.accept(client::RAFT_PROTOCOL)?;
        let raft = self.raft.clone();
        let faults = Arc::clone(&self.faults);
        Ok(Some(tokio::spawn(async move {
            while let Some((peer, stream)) = raft_streams.next().await {
                if !replicas.contains(&peer) {
                    pipe::refused("raft_stranger");
                    tracing::warn!(%peer, "raft stream closed: not a replica of this branch");
                    continue;
                }
                // The fault switch cuts replicas apart too (in-process partitions).
                if fault_of(&faults, &peer) != LinkFault::Blocked {
                    let _ = raft.try_send((peer, stream));
                }
            }
        })))
    }

    /// Starts one task per protocol that serves every stream opened to this node.
    fn accept_all(
        &mut self,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, libp2p_stream::AlreadyRegistered> {
        let mut control = self.swarm.behaviour().streams.new_control();
        let teller = control.accept(super::TELLER_PROTOCOL)?;
        let requests = self.requests.clone();
        let held = TellerHeld::new();
        let mut tasks = vec![tokio::spawn(accept(teller, move |peer, stream| {
            serve_teller(peer, stream, requests.clone(), held.of(peer))
        }))];
        if let Some(task) = self.accept_raft(&mut control)? {
            tasks.push(task);
        }
        for via in [Via::Link, Via::Forward] {
            let incoming = control.accept(via.protocol())?;
            let link = LinkSide {
                via,
                queue: match via {
                    Via::Link => self.twopc.clone(),
                    Via::Forward => self.requests.clone(),
                },
                network: Arc::clone(&self.network),
                faults: Arc::clone(&self.faults),
                leaders: Arc::clone(&self.leaders),
            };
            tasks.push(tokio::spawn(accept(incoming, move |peer, stream| {
                link.clone().serve(peer, stream)
            })));
        }
        Ok(tasks)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { peer, done } => {
                let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
                self.dials.dial(&mut self.swarm, peer, addrs, done);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if self.network.by_peer(&peer).is_some() {
                        let known = self.addresses.entry(peer).or_default();
                        if !known.contains(&addr) {
                            tracing::info!(%peer, %addr, "mdns found a listed branch");
                            known.push(addr);
                        }
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => self.dials.settle(&peer),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let local = loopback(endpoint.get_remote_address());
                lock(&self.origins)
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, local);
                self.dials.settle(&peer_id);
                tracing::debug!(%peer_id, "connected");
                if self.network.by_peer(&peer_id).is_some() {
                    self.connected.insert(peer_id);
                    self.count_connected();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                let mut origins = lock(&self.origins);
                if let Some(conns) = origins.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        origins.remove(&peer_id);
                    }
                }
                drop(origins);
                tracing::debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 && self.connected.remove(&peer_id) {
                    self.count_connected();
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }
}

/// Open inbound streams per peer, for one protocol.
#[derive(Clone, Default)]
struct OpenStreams(Arc<Mutex<HashMap<PeerId, usize>>>);

impl OpenStreams {
    /// Counts one more stream from `peer`, or `false` at the limit.
    fn take(&self, peer: PeerId) -> bool {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(peer).or_default();
        if *n >= super::STREAMS_PER_PEER_MAX {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, peer: PeerId) {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// Serves every stream `incoming` gives with `serve`, at most
/// [`super::STREAMS_PER_PEER_MAX`] at once per peer (more are closed at once).
async fn accept<F, Fut>(mut incoming: libp2p_stream::IncomingStreams, serve: F)
where
    F: Fn(PeerId, Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = OpenStreams::default();
    while let Some((peer, stream)) = incoming.next().await {
        if !open.take(peer) {
            pipe::refused("peer_limit");
            tracing::warn!(%peer, "stream refused: too many open from this peer");
            continue;
        }
        let served = serve(peer, stream);
        let open = open.clone();
        tokio::spawn(async move {
            served.await;
            open.give_back(peer);
        });
    }
}

/// How a stream with at most `in_flight` requests in flight is served; its bytes also
/// count in `shared`.
fn bounds(in_flight: usize, shared: Vec<Arc<pipe::Held>>) -> pipe::Bounds {
    pipe::Bounds {
        in_flight,
        held_bytes: super::STREAM_HELD_BYTES_MAX,
        shared,
        idle: Duration::from_millis(super::IDLE_CONNECTION_TIMEOUT_MS),
        write_stall: Duration::from_millis(super::WRITE_STALL_MS),
    }
}

/// The bytes held for teller streams: per peer (while it has a stream) and in all.
#[derive(Debug)]
struct TellerHeld {
    all: Arc<pipe::Held>,
    peers: std::sync::Mutex<HashMap<PeerId, std::sync::Weak<pipe::Held>>>,
}

impl TellerHeld {
    fn new() -> Arc<TellerHeld> {
        Arc::new(TellerHeld {
            all: pipe::Held::new(super::TELLER_HELD_BYTES_MAX),
            peers: std::sync::Mutex::default(),
        })
    }

    /// The counts a stream of `peer` shares: the peer's and the node's.
    fn of(&self, peer: PeerId) -> Vec<Arc<pipe::Held>> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = peers.get(&peer).and_then(std::sync::Weak::upgrade);
        let mine = mine.unwrap_or_else(|| {
            // A peer's count lives while one of its streams does; forget the others.
            peers.retain(|_, h| h.strong_count() > 0);
            let h = pipe::Held::new(super::TELLER_HELD_BYTES_PER_PEER_MAX);
            peers.insert(peer, Arc::downgrade(&h));
            h
        });
        vec![mine, Arc::clone(&self.all)]
    }
}

/// Serves one teller stream: each request goes on the requests queue, or is answered
/// "overloaded" (or "stopping") at once.
async fn serve_teller(
    peer: PeerId,
    stream: Stream,
    requests: mpsc::Sender<Inbound>,
    shared: Vec<Arc<pipe::Held>>,
) {
    pipe::serve(
        stream,
        bounds(super::TELLER_IN_FLIGHT_MAX, shared),
        |body, reply| {
            let Ok(request) = wire::decode::<TellerRequest>(&body) else {
                tracing::warn!(%peer, "teller stream closed: a request does not decode");
                return false;
            };
            let inbound = Inbound::Teller {
                peer,
                request,
                reply,
            };
            if let Err(e) = requests.try_send(inbound) {
                let busy = match e {
                    mpsc::error::TrySendError::Full(_) => Unavailable::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => Unavailable::Stopping,
                };
                tracing::warn!(%peer, ?busy, "teller request not queued");
                if let Inbound::Teller { reply, .. } = e.into_inner() {
                    reply.answer(&TellerResponse::Unavailable(busy));
                }
            }
            true
        },
    )
    .await;
}

/// What serving a branch-to-branch stream needs.
#[derive(Clone)]
struct LinkSide {
    via: Via,
    queue: mpsc::Sender<Inbound>,
    network: Arc<NetworkFile>,
    faults: Faults,
    /// The client's record of which replica leads each branch.
    leaders: Leaders,
}

impl LinkSide {
    /// A 2PC message or a fence claim comes only from the replica that serves its
    /// branch: from now on this node sends to that branch there, without first trying
    /// the replica it knew (which may have stopped answering).
    fn note_leader(&self, peer: &PeerId, request: &LinkRequest) {
        if !matches!(request, LinkRequest::TwoPc { .. } | LinkRequest::Fence(_)) {
            return;
        }
        if let Some((branch, replica)) = self.network.replica_by_peer(peer)
            && branch.is_replicated()
        {
            let mut leaders = self.leaders.lock().unwrap_or_else(PoisonError::into_inner);
            leaders.insert(branch.id, replica.id);
        }
    }

    /// Why a request from `peer` is refused before the node sees it, if it is.
    fn refusal(&self, peer: &PeerId, request: &LinkRequest) -> Option<EnvelopeRefusal> {
        if self.network.by_peer(peer).is_none() {
            Some(EnvelopeRefusal::PeerNotListed)
        } else if fault_of(&self.faults, peer) == LinkFault::Blocked {
            Some(EnvelopeRefusal::LinkBlocked)
        } else if Via::of(request) != self.via {
            Some(EnvelopeRefusal::Malformed)
        } else {
            None
        }
    }

    /// Serves one stream of the link or forward protocol.
    async fn serve(self, peer: PeerId, stream: Stream) {
        let via = self.via;
        pipe::serve(
            stream,
            bounds(via.in_flight_max(), Vec::new()),
            |body, reply| {
                let Ok(request) = wire::decode::<LinkRequest>(&body) else {
                    tracing::warn!(%peer, ?via, "link stream closed: a request does not decode");
                    return false;
                };
                if let Some(r) = self.refusal(&peer, &request) {
                    tracing::warn!(%peer, refusal = %r, "link request refused");
                    reply.answer(&LinkResponse::Refused(r));
                    return true;
                }
                self.note_leader(&peer, &request);
                let inbound = Inbound::Link {
                    peer,
                    request,
                    reply,
                };
                if let Err(full) = self.queue.try_send(inbound) {
                    tracing::warn!(%peer, ?via, "inbound queue full: answered overloaded");
                    if let Inbound::Link { reply, .. } = full.into_inner() {
                        reply.answer(&LinkResponse::Refused(EnvelopeRefusal::Overloaded));
                    }
                }
                true
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_this_machine() {
        let is = |a: &str| loopback(&a.parse().expect("multiaddr"));
        assert!(is("/ip4/127.0.0.1/tcp/7001"));
        assert!(is("/ip4/127.9.8.7/tcp/7001"));
        assert!(is("/ip6/::1/tcp/7001"));
        assert!(!is("/ip4/192.168.1.20/tcp/7001"));
        assert!(!is("/ip4/10.0.0.1/tcp/7001"));
        assert!(
            !is("/dns4/localhost/tcp/7001"),
            "names are not resolved: not trusted"
        );
    }
}
