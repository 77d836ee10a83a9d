//! A one-protocol libp2p client for programs that talk *to* a branch: `teller-cli` on
//! the teller protocol, scenario drivers, and the rogue peers of the tests on the link
//! protocols. It dials one branch with its PeerId pinned (Noise refuses any other key)
//! and sends every request over one long-lived stream of tagged frames ([`pipe`]), many
//! in flight at once; a task owns the swarm and redials when the connection is gone. A
//! branch that runs as replicas is several candidates (each pinned): when the one in
//! use cannot be reached, the next is dialled.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::pipe::{self, Failure, OpenError, Slot};
use crate::{CANDIDATE_CONNECT_MS, IDLE_CONNECTION_TIMEOUT_MS, PIPE_IDLE_MS, REQUEST_TIMEOUT_MS};

/// Most requests to redial waiting for the swarm's task (callers past it wait their turn).
const DIALS_WAITING_MAX: usize = 64;

/// Why a client could not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing was sent: the branch could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: Multiaddr, reason: String },
    /// The request may have arrived (and been acted on), but no answer came back.
    #[error("no answer from {addr}: {reason}")]
    NoAnswer { addr: Multiaddr, reason: String },
    #[error("client setup failed: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether the branch may have received the request and acted on it.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, ClientError::NoAnswer { .. })
    }
}

/// A connection to one branch, sending `Req` and reading `Resp`. Cheap to clone; the
/// swarm stops when every clone is gone.
pub struct PeerClient<Req, Resp> {
    inner: Arc<Inner>,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// A dial request for the swarm's task: whom, where, and who waits for it to settle.
type Dial = (PeerId, Multiaddr, oneshot::Sender<()>);

struct Inner {
    control: libp2p_stream::Control,
    dial: mpsc::Sender<Dial>,
    slot: Slot,
    protocol: StreamProtocol,
    /// Where the branch can be reached: one address and pinned PeerId per replica.
    candidates: Arc<[(Multiaddr, PeerId)]>,
    /// The candidate in use.
    current: Arc<std::sync::atomic::AtomicUsize>,
    connect_timeout: Duration,
}

impl Inner {
    fn current(&self) -> &(Multiaddr, PeerId) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.candidates[i % self.candidates.len()]
    }

    /// How long one candidate may take to connect: short when there are others to try.
    fn candidate_timeout(&self) -> Duration {
        candidate_timeout(self.candidates.len(), self.connect_timeout)
    }
}

/// How long connecting to one of `n` candidates may take, `timeout` in all.
fn candidate_timeout(n: usize, timeout: Duration) -> Duration {
    match n {
        0 | 1 => timeout,
        _ => timeout.min(Duration::from_millis(CANDIDATE_CONNECT_MS)),
    }
}

impl<Req, Resp> Clone for PeerClient<Req, Resp> {
    fn clone(&self) -> Self {
        PeerClient {
            inner: Arc::clone(&self.inner),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for PeerClient<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (addr, peer) = self.inner.current();
        f.debug_struct("PeerClient")
            .field("addr", addr)
            .field("peer", peer)
            .finish()
    }
}

/// `addr` with `/p2p/peer` at the end (once).
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

type ClientSwarm = libp2p::Swarm<libp2p_stream::Behaviour>;

fn client_swarm(key: libp2p::identity::Keypair) -> Result<ClientSwarm, ClientError> {
    let setup = |e: String| ClientError::Setup(e);
    Ok(SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(e.to_string()))?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| setup(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_millis(IDLE_CONNECTION_TIMEOUT_MS))
        })
        .build())
}

/// Waits, at most `timeout`, until a connection to `peer` is up.
async fn connected(swarm: &mut ClientSwarm, peer: PeerId, timeout: Duration) -> Result<(), String> {
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error.to_string()),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Err(_) => Err(format!("no connection within {timeout:?}")),
        Ok(r) => r,
    }
}

impl<Req: Serialize, Resp: Serialize + DeserializeOwned> PeerClient<Req, Resp> {
    /// Dials `peer` at `addr` with identity `key` and waits, at most `timeout`, until the
    /// Noise handshake has proved the peer's key and a stream on `protocol` is open.
    pub async fn connect(
        key: libp2p::identity::Keypair,
        protocol: StreamProtocol,
        addr: Multiaddr,
        peer: PeerId,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        PeerClient::connect_any(key, protocol, vec![(addr, peer)], timeout).await
    }

    /// Like [`PeerClient::connect`], to the first of `candidates` (a branch's replicas)
    /// that can be reached; later, when the one in use cannot be, to the next.
    pub async fn connect_any(
        key: libp2p::identity::Keypair,
        protocol: StreamProtocol,
        candidates: Vec<(Multiaddr, PeerId)>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let Some(first) = candidates.first().cloned() else {
            return Err(ClientError::Setup("no address to connect to".into()));
        };
        let mut swarm = client_swarm(key)?;
        let mut reached = Err(ClientError::Unreachable {
            addr: first.0,
            reason: "not tried".into(),
        });
        // Each replica briefly first (one that is paused must not hold the others up),
        // then, if none answered, each with the whole timeout (a slow machine).
        let short = candidate_timeout(candidates.len(), timeout);
        let passes = if short < timeout {
            vec![short, timeout]
        } else {
            vec![timeout]
        };
        'passes: for wait in passes {
            for (i, (addr, peer)) in candidates.iter().enumerate() {
                let tried = match swarm.dial(with_peer(addr, *peer)) {
                    Ok(()) => connected(&mut swarm, *peer, wait).await,
                    Err(e) => Err(e.to_string()),
                };
                match tried {
                    Ok(()) => {
                        reached = Ok(i);
                        break 'passes;
                    }
                    Err(reason) => {
                        reached = Err(ClientError::Unreachable {
                            addr: addr.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        let current = reached?;
        let control = swarm.behaviour().new_control();
        let (dial, dials) = mpsc::channel(DIALS_WAITING_MAX);
        tokio::spawn(drive(swarm, dials));
        let client = PeerClient {
            inner: Arc::new(Inner {
                control,
                dial,
                slot: Slot::default(),
                protocol,
                candidates: candidates.into(),
                current: Arc::new(std::sync::atomic::AtomicUsize::new(current)),
                connect_timeout: timeout,
            }),
            _types: PhantomData,
        };
        client.pipe().await?;
        Ok(client)
    }

    /// Dials candidate `i` (unless connected) and opens a stream to it.
    async fn open_at(&self, i: usize) -> Result<libp2p::Stream, OpenError> {
        let inner = &self.inner;
        let (addr, peer) = inner.candidates[i].clone();
        let (done, wait) = oneshot::channel();
        inner
            .dial
            .send((peer, addr, done))
            .await
            .map_err(|_| OpenError::Stopped)?;
        let timeout = inner.candidate_timeout();
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r.map_err(|_| OpenError::Stopped)?,
            Err(_) => return Err(OpenError::ConnectTimeout(timeout)),
        }
        let control = inner.control.clone();
        pipe::open_stream(control, peer, inner.protocol.clone(), timeout).await
    }

    /// The open stream, or a new one (redialling the branch first if need be): to the
    /// candidate in use, or else to the next that can be reached.
    async fn pipe(&self) -> Result<pipe::Pipe, ClientError> {
        let inner = &self.inner;
        let open = || async {
            let n = inner.candidates.len();
            let start = inner.current.load(std::sync::atomic::Ordering::Relaxed);
            let mut last = OpenError::NoCandidate;
            for k in 0..n {
                let i = (start + k) % n;
                match self.open_at(i).await {
                    Ok(stream) => {
                        inner.current.store(i, std::sync::atomic::Ordering::Relaxed);
                        return Ok(stream);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        inner
            .slot
            .pipe(
                Duration::from_millis(PIPE_IDLE_MS),
                inner.candidate_timeout(),
                open,
            )
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: inner.current().0.clone(),
                reason: e.to_string(),
            })
    }

    fn failed(&self, (reason, arrived): Failure) -> ClientError {
        let addr = self.inner.current().0.clone();
        if arrived {
            ClientError::NoAnswer { addr, reason }
        } else {
            ClientError::Unreachable { addr, reason }
        }
    }

    /// Sends one request and waits for its answer (bounded by the request timeout).
    pub async fn request(&self, request: Req) -> Result<Resp, ClientError> {
        self.request_within(request, Duration::from_millis(REQUEST_TIMEOUT_MS))
            .await
    }

    /// Sends one request and waits at most `timeout` for its answer.
    pub async fn request_within(
        &self,
        request: Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = wire::encode(&request).map_err(|e| self.failed((e.to_string(), false)))?;
        drop(request);
        let pipe = self.pipe().await?;
        let answer = pipe.call(body, timeout).await.map_err(|f| self.failed(f))?;
        wire::decode(&answer).map_err(|e| self.failed((format!("bad answer: {e}"), true)))
    }

    /// Sends `body` as it is, as a request's bytes, and returns the answer's bytes: for
    /// tests that send what no honest encoder would.
    pub async fn request_raw(&self, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let pipe = self.pipe().await?;
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        pipe.call(body, timeout).await.map_err(|f| self.failed(f))
    }

    /// How many candidates (replicas) this client may use.
    pub fn candidates(&self) -> usize {
        self.inner.candidates.len()
    }

    /// The index of the candidate in use.
    pub fn current_index(&self) -> usize {
        self.inner
            .current
            .load(std::sync::atomic::Ordering::Relaxed)
            % self.candidates()
    }

    /// Moves from candidate `from` (which did not answer, or said it does not lead) to
    /// the next one for the requests that follow; nothing if another caller moved
    /// already. The choice is remembered: later requests stay with the one that serves.
    pub async fn move_on_from(&self, from: usize) {
        let n = self.candidates();
        self.move_to(from, (from + 1) % n).await;
    }

    /// Moves from candidate `from` to the one whose key is `peer` (the replica named as
    /// leader), if it is one of them.
    pub async fn move_to_peer(&self, from: usize, peer: PeerId) {
        if let Some(to) = self.inner.candidates.iter().position(|(_, p)| *p == peer) {
            self.move_to(from, to).await;
        }
    }

    /// The candidate in use becomes `to` if it still is `from` (the index kept is
    /// always below the count, so it compares as it is).
    async fn move_to(&self, from: usize, to: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let moved = from != to
            && self
                .inner
                .current
                .compare_exchange(from, to, Relaxed, Relaxed)
                .is_ok();
        if moved {
            self.inner.slot.clear().await;
        }
    }

    /// A stream of its own on this client's protocol to the candidate in use, as it is
    /// (the node's hello not yet read): for tests that write frames and read nothing.
    pub async fn raw_stream(&self) -> Result<libp2p::Stream, ClientError> {
        let i = self
            .inner
            .current
            .load(std::sync::atomic::Ordering::Relaxed);
        self.open_at(i).await.map_err(|e| ClientError::Unreachable {
            addr: self.inner.current().0.clone(),
            reason: e.to_string(),
        })
    }

    /// A client over the same connection with a stream of its own (opened at its first
    /// request): for callers that want their requests apart from this one's, and for
    /// tests of the per-peer stream limit.
    pub fn another_stream(&self) -> Self {
        let inner = &self.inner;
        PeerClient {
            inner: Arc::new(Inner {
                control: inner.control.clone(),
                dial: inner.dial.clone(),
                slot: Slot::default(),
                protocol: inner.protocol.clone(),
                candidates: Arc::clone(&inner.candidates),
                current: Arc::clone(&inner.current),
                connect_timeout: inner.connect_timeout,
            }),
            _types: PhantomData,
        }
    }

    /// The branch (replica) this client talks to now.
    pub fn peer(&self) -> PeerId {
        self.inner.current().1
    }
}

/// Polls the swarm; on each dial request, dials the branch unless connected and
/// answers once the dial has settled ([`crate::Dials`]).
async fn drive(mut swarm: ClientSwarm, mut dials: mpsc::Receiver<Dial>) {
    let mut waiting = crate::Dials::default();
    loop {
        tokio::select! {
            d = dials.recv() => match d {
                Some((peer, addr, done)) => waiting.dial(&mut swarm, peer, vec![addr], done),
                None => return,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => waiting.settle(&peer_id),
                SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } => waiting.settle(&p),
                _ => {}
            },
        }
    }
}
