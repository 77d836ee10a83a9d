//! The branch node's network: `new()` gives a [`Client`] (cheap to clone) and an
//! [`EventLoop`] (one task owns the swarm). Inbound requests go out as [`Inbound`] on
//! two bounded queues ([`InboundQueues`]): 2PC envelopes on one, teller and forwarded
//! requests on the other, so a teller flood can fill only its own. A request that
//! finds its queue full is answered "overloaded" at once, never dropped unanswered.
//! Answers come back through the client. Nothing here panics on a network event:
//! failures are logged and answered with errors.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, mdns};
use tokio::sync::{mpsc, oneshot};
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::teller::{LinkFault, Unavailable};
use wire::{TellerRequest, TellerResponse};

use super::{NodeBehaviour, NodeBehaviourEvent};
use crate::network_file::NetworkFile;

/// Most inbound requests of each queue waiting for the node to pick them up; more are
/// answered "overloaded".
pub const INBOUND_QUEUE_MAX: usize = 16_384;

/// The two inbound queues: 2PC envelopes, and everything a teller caused.
#[derive(Debug)]
pub struct InboundQueues {
    pub twopc: mpsc::Receiver<Inbound>,
    pub requests: mpsc::Receiver<Inbound>,
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
    fn of(request: &LinkRequest) -> Via {
        match request {
            LinkRequest::TwoPc(_) => Via::Link,
            LinkRequest::Forward(_) => Via::Forward,
        }
    }
}
/// Most client commands waiting for the event loop.
const COMMAND_QUEUE_MAX: usize = 16_384;

/// A request that arrived, with the channel its answer goes back on.
#[derive(Debug)]
pub enum Inbound {
    /// From a branch listed in the network file (the event loop checked the peer).
    Link {
        peer: PeerId,
        request: LinkRequest,
        channel: ResponseChannel<LinkResponse>,
        via: Via,
    },
    Teller {
        peer: PeerId,
        request: TellerRequest,
        channel: ResponseChannel<TellerResponse>,
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
    Link {
        peer: PeerId,
        request: LinkRequest,
        reply: oneshot::Sender<Result<LinkResponse, LinkError>>,
        delayed: bool,
    },
    RespondLink {
        channel: ResponseChannel<LinkResponse>,
        response: LinkResponse,
        via: Via,
    },
    RespondTeller {
        channel: ResponseChannel<TellerResponse>,
        response: TellerResponse,
    },
    SetFault {
        peer: PeerId,
        fault: LinkFault,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
}

/// Talks to the event loop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
}

impl Client {
    /// Sends `request` to branch `peer` and waits for its answer.
    pub async fn link(
        &self,
        peer: PeerId,
        request: LinkRequest,
    ) -> Result<LinkResponse, LinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Link {
                peer,
                request,
                reply,
                delayed: false,
            })
            .await
            .map_err(|_| LinkError::Stopped)?;
        // Taken by the event loop, which stopped before answering: it may have gone out.
        rx.await
            .map_err(|_| LinkError::NoAnswer("network event loop stopped".into()))?
    }

    /// Answers an inbound link request on the protocol it came by.
    pub async fn respond_link(
        &self,
        channel: ResponseChannel<LinkResponse>,
        response: LinkResponse,
        via: Via,
    ) {
        let _ = self
            .tx
            .send(Command::RespondLink {
                channel,
                response,
                via,
            })
            .await;
    }

    /// Answers an inbound teller request.
    pub async fn respond_teller(
        &self,
        channel: ResponseChannel<TellerResponse>,
        response: TellerResponse,
    ) {
        let _ = self
            .tx
            .send(Command::RespondTeller { channel, response })
            .await;
    }

    /// Sets the fault switch for the link with `peer`.
    pub async fn set_fault(&self, peer: PeerId, fault: LinkFault) {
        let _ = self.tx.send(Command::SetFault { peer, fault }).await;
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
    network: NetworkFile,
    commands: mpsc::Receiver<Command>,
    self_tx: mpsc::Sender<Command>,
    twopc: mpsc::Sender<Inbound>,
    requests: mpsc::Sender<Inbound>,
    pending: HashMap<(Via, OutboundRequestId), oneshot::Sender<Result<LinkResponse, LinkError>>>,
    faults: HashMap<PeerId, LinkFault>,
    /// Where each listed branch can be dialled: the network file, plus mDNS finds.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Listed branches with at least one open connection (the metrics' gauge).
    connected: std::collections::HashSet<PeerId>,
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
        .filter(|b| b.peer_id != me)
        .map(|b| (b.peer_id, b.addresses.clone()))
        .collect();
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (twopc, twopc_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let (requests, requests_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let client = Client { tx: tx.clone() };
    let event_loop = EventLoop {
        swarm,
        network,
        commands,
        self_tx: tx,
        twopc,
        requests,
        pending: HashMap::new(),
        faults: HashMap::new(),
        addresses,
        connected: std::collections::HashSet::new(),
    };
    let queues = InboundQueues {
        twopc: twopc_rx,
        requests: requests_rx,
    };
    (client, event_loop, queues)
}

impl EventLoop {
    fn count_connected(&self) {
        let n = i64::try_from(self.connected.len()).unwrap_or(i64::MAX);
        crate::node::metrics::get().peers_connected.set(n);
    }

    /// Runs until `shutdown` resolves or every client is gone.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                () = &mut shutdown => return,
            }
        }
    }

    fn link_behaviour(&mut self, via: Via) -> &mut super::LinkBehaviour {
        match via {
            Via::Link => &mut self.swarm.behaviour_mut().link,
            Via::Forward => &mut self.swarm.behaviour_mut().forward,
        }
    }

    fn fault(&self, peer: &PeerId) -> LinkFault {
        self.faults.get(peer).copied().unwrap_or(LinkFault::Healthy)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Link {
                peer,
                request,
                reply,
                delayed,
            } => match self.fault(&peer) {
                LinkFault::Blocked => {
                    let _ = reply.send(Err(LinkError::Blocked));
                }
                LinkFault::Delayed { delay_ms } if !delayed => {
                    let tx = self.self_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
                        let command = Command::Link {
                            peer,
                            request,
                            reply,
                            delayed: true,
                        };
                        let _ = tx.send(command).await;
                    });
                }
                _ => {
                    // Addresses go with every request: libp2p drops a cached address after
                    // one failed dial, which would cut a restarted branch off for good.
                    let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
                    let via = Via::of(&request);
                    let id = self
                        .link_behaviour(via)
                        .send_request_with_addresses(&peer, request, addrs);
                    self.pending.insert((via, id), reply);
                }
            },
            Command::RespondLink {
                channel,
                response,
                via,
            } => {
                respond(self.link_behaviour(via), channel, response, "link");
            }
            Command::RespondTeller { channel, response } => {
                respond(
                    &mut self.swarm.behaviour_mut().teller,
                    channel,
                    response,
                    "teller",
                );
            }
            Command::SetFault { peer, fault } => {
                tracing::warn!(%peer, ?fault, "fault switch set");
                if fault == LinkFault::Healthy {
                    self.faults.remove(&peer);
                } else {
                    self.faults.insert(peer, fault);
                }
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::Link(e)) => self.on_link(Via::Link, e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Forward(e)) => self.on_link(Via::Forward, e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Teller(e)) => self.on_teller(e),
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
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(%peer_id, "connected");
                if self.network.by_peer(&peer_id).is_some() {
                    self.connected.insert(peer_id);
                    self.count_connected();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
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

    fn on_link(&mut self, via: Via, event: request_response::Event<LinkRequest, LinkResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let refusal = if self.network.by_peer(&peer).is_none() {
                    Some(EnvelopeRefusal::PeerNotListed)
                } else if self.fault(&peer) == LinkFault::Blocked {
                    Some(EnvelopeRefusal::LinkBlocked)
                } else if Via::of(&request) != via {
                    Some(EnvelopeRefusal::Malformed)
                } else {
                    None
                };
                if let Some(r) = refusal {
                    tracing::warn!(%peer, refusal = %r, "link request refused");
                    let _ = self
                        .link_behaviour(via)
                        .send_response(channel, LinkResponse::Refused(r));
                    return;
                }
                let queue = match via {
                    Via::Link => &self.twopc,
                    Via::Forward => &self.requests,
                };
                let inbound = Inbound::Link {
                    peer,
                    request,
                    channel,
                    via,
                };
                if let Err(full) = queue.try_send(inbound) {
                    tracing::warn!(%peer, ?via, "inbound queue full: answered overloaded");
                    if let Inbound::Link { channel, .. } = full.into_inner() {
                        let refused = LinkResponse::Refused(EnvelopeRefusal::Overloaded);
                        let _ = self.link_behaviour(via).send_response(channel, refused);
                    }
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending.remove(&(via, request_id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "link request failed");
                if let Some(reply) = self.pending.remove(&(via, request_id)) {
                    let e = if super::may_have_arrived(&error) {
                        LinkError::NoAnswer(error.to_string())
                    } else {
                        LinkError::NotSent(error.to_string())
                    };
                    let _ = reply.send(Err(e));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "inbound link request refused");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_teller(&mut self, event: request_response::Event<TellerRequest, TellerResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let inbound = Inbound::Teller {
                    peer,
                    request,
                    channel,
                };
                if let Err(full) = self.requests.try_send(inbound) {
                    tracing::warn!(%peer, "inbound queue full: teller answered overloaded");
                    if let Inbound::Teller { channel, .. } = full.into_inner() {
                        let busy = TellerResponse::Unavailable(Unavailable::Overloaded);
                        respond(
                            &mut self.swarm.behaviour_mut().teller,
                            channel,
                            busy,
                            "teller",
                        );
                    }
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "inbound teller request refused");
            }
            _ => {}
        }
    }
}

/// Answers an inbound request of either protocol; a requester that went away is normal.
fn respond<C: request_response::Codec + Clone + Send + 'static>(
    behaviour: &mut request_response::Behaviour<C>,
    channel: ResponseChannel<C::Response>,
    response: C::Response,
    protocol: &str,
) {
    if behaviour.send_response(channel, response).is_err() {
        tracing::debug!(protocol, "response dropped: the requester went away");
    }
}
