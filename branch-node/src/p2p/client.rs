//! A one-protocol libp2p client for programs that talk *to* a branch: `teller-cli` on
//! the teller protocol, scenario drivers, and the rogue peers of the tests on the link
//! protocol. It dials one branch with its PeerId pinned (Noise refuses any other key)
//! and sends requests over that connection; a task owns the swarm.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Codec, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use super::{IDLE_CONNECTION_TIMEOUT_MS, REQUEST_TIMEOUT_MS};

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

/// Why one request failed: the reason, and whether it may have arrived.
type Failure = (String, bool);

type Pending<Resp> = oneshot::Sender<Result<Resp, Failure>>;

struct Request<C: Codec> {
    request: C::Request,
    reply: Pending<C::Response>,
}

/// A connection to one branch. Cheap to clone; the swarm stops when every clone is gone.
pub struct PeerClient<C: Codec> {
    tx: mpsc::Sender<Request<C>>,
    addr: Multiaddr,
    peer: PeerId,
}

impl<C: Codec> Clone for PeerClient<C> {
    fn clone(&self) -> Self {
        PeerClient {
            tx: self.tx.clone(),
            addr: self.addr.clone(),
            peer: self.peer,
        }
    }
}

impl<C: Codec> std::fmt::Debug for PeerClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("addr", &self.addr)
            .field("peer", &self.peer)
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

impl<C> PeerClient<C>
where
    C: Codec<Protocol = StreamProtocol> + Default + Clone + Send + 'static,
    C::Request: Send + 'static,
    C::Response: Send + 'static,
{
    /// Dials `peer` at `addr` with identity `key` and waits, at most `timeout`, until the
    /// Noise handshake has proved the peer's key.
    pub async fn connect(
        key: libp2p::identity::Keypair,
        protocol: StreamProtocol,
        addr: Multiaddr,
        peer: PeerId,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_behaviour(|_| {
                request_response::Behaviour::<C>::new(
                    [(protocol, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)),
                )
            })
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_millis(IDLE_CONNECTION_TIMEOUT_MS))
            })
            .build();
        swarm
            .dial(with_peer(&addr, peer))
            .map_err(|e| unreachable(e.to_string()))?;
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                        return Ok(());
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await;
        match connected {
            Err(_) => return Err(unreachable(format!("no connection within {timeout:?}"))),
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Ok(Ok(())) => {}
        }
        let (tx, rx) = mpsc::channel(1_024);
        tokio::spawn(drive(swarm, rx, peer, addr.clone()));
        Ok(PeerClient { tx, addr, peer })
    }

    /// Sends one request and waits for its answer (bounded by the request timeout).
    pub async fn request(&self, request: C::Request) -> Result<C::Response, ClientError> {
        let failed = |(reason, arrived): Failure| {
            let addr = self.addr.clone();
            if arrived {
                ClientError::NoAnswer { addr, reason }
            } else {
                ClientError::Unreachable { addr, reason }
            }
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { request, reply })
            .await
            .map_err(|_| failed(("client stopped".into(), false)))?;
        rx.await
            .map_err(|_| failed(("client stopped".into(), true)))?
            .map_err(failed)
    }

    /// The branch this client talks to.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

async fn drive<C>(
    mut swarm: libp2p::Swarm<request_response::Behaviour<C>>,
    mut rx: mpsc::Receiver<Request<C>>,
    peer: PeerId,
    addr: Multiaddr,
) where
    C: Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
    C::Request: Send,
    C::Response: Send,
{
    let mut pending: HashMap<OutboundRequestId, Pending<C::Response>> = HashMap::new();
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(Request { request, reply }) => {
                    // The address goes with every request, so a restarted branch is
                    // redialled (libp2p forgets a cached address after a failed dial).
                    let id = swarm
                        .behaviour_mut()
                        .send_request_with_addresses(&peer, request, vec![addr.clone()]);
                    pending.insert(id, reply);
                }
                None => return,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id, error, ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let arrived = super::may_have_arrived(&error);
                        let _ = reply.send(Err((error.to_string(), arrived)));
                    }
                }
                _ => {}
            },
        }
    }
}
