//! The libp2p side of a branch node: the swarm's behaviour, how it is built, and the
//! event loop that owns it (see [`network`]). Transport: TCP + Noise + Yamux.
//!
//! Three protocols run over each connection: the teller protocol (any key may speak it),
//! the link protocol for 2PC envelopes and the forward protocol for teller requests one
//! branch passes to another (both only for branches in the network file; checked on
//! every request). identify and ping run too, and mDNS when asked for (it finds
//! addresses, never trust). Connection limits bound what any peer can open.

pub mod client;
pub mod codec;
pub mod network;

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Swarm, SwarmBuilder, identify, mdns, noise, ping, tcp, yamux};
use wire::link::{LinkRequest, LinkResponse};
use wire::{TellerRequest, TellerResponse};

pub use codec::{FORWARD_PROTOCOL, LINK_PROTOCOL, TELLER_PROTOCOL, WireCodec};

/// How long an idle connection stays open. libp2p's default (10 s) would close branch
/// links between bursts and make every quiet spell cost a new Noise handshake; an hour
/// let an idle stranger hold a connection slot that long.
pub const IDLE_CONNECTION_TIMEOUT_MS: u64 = 5 * 60 * 1_000;

/// Most connections being set up (Noise handshake) at once from outside.
pub const PENDING_INCOMING_CONNECTIONS_MAX: u32 = 128;

/// Most established connections in all.
pub const CONNECTIONS_MAX: u32 = 1_024;

/// Most established connections with one peer (one key).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// How long a request may wait for its response before it fails, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Most concurrent request streams per connection and protocol (a teller's requests
/// beyond it wait in its own connection, not in the node).
pub const STREAMS_PER_CONNECTION_MAX: usize = 64;

/// Most concurrent 2PC streams per link connection: every prepare, vote and decision
/// between two branches; a batch carries up to 1,024 transfers.
pub const LINK_STREAMS_PER_CONNECTION_MAX: usize = 1_024;

/// The teller protocol's behaviour.
pub type TellerBehaviour = request_response::Behaviour<WireCodec<TellerRequest, TellerResponse>>;
/// The link protocol's behaviour.
pub type LinkBehaviour = request_response::Behaviour<WireCodec<LinkRequest, LinkResponse>>;

/// Everything a branch node's swarm runs.
#[allow(missing_debug_implementations)] // the derive's generated event type has none either
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    pub limits: connection_limits::Behaviour,
    pub link: LinkBehaviour,
    pub forward: LinkBehaviour,
    pub teller: TellerBehaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Errors building a swarm.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("transport setup failed: {0}")]
    Transport(String),
}

/// Whether a request that failed may still have reached the peer (and been acted on):
/// only a failed dial or a refused protocol prove that it never left.
pub fn may_have_arrived(failure: &request_response::OutboundFailure) -> bool {
    use request_response::OutboundFailure as F;
    !matches!(failure, F::DialFailure | F::UnsupportedProtocols)
}

fn rr_config(streams: usize) -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .with_max_concurrent_streams(streams)
}

fn limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_pending_incoming(Some(PENDING_INCOMING_CONNECTIONS_MAX))
            .with_max_established(Some(CONNECTIONS_MAX))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX)),
    )
}

/// Builds a branch node's swarm on the node's own key.
pub fn node_swarm(
    key: libp2p::identity::Keypair,
    with_mdns: bool,
) -> Result<Swarm<NodeBehaviour>, BuildError> {
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| BuildError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let mdns = if with_mdns {
                mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
                    .map_err(|e| tracing::warn!("mdns is off: {e}"))
                    .ok()
            } else {
                None
            };
            NodeBehaviour {
                limits: limits(),
                link: request_response::Behaviour::new(
                    [(LINK_PROTOCOL, ProtocolSupport::Full)],
                    rr_config(LINK_STREAMS_PER_CONNECTION_MAX),
                ),
                // A branch forwards at most this many to one other at once: never more
                // streams than the receiving side takes, so none is cut off.
                forward: request_response::Behaviour::new(
                    [(FORWARD_PROTOCOL, ProtocolSupport::Full)],
                    rr_config(wire::limits::FORWARDS_PER_BRANCH_MAX),
                ),
                teller: request_response::Behaviour::new(
                    [(TELLER_PROTOCOL, ProtocolSupport::Inbound)],
                    rr_config(STREAMS_PER_CONNECTION_MAX),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/bankmate/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                mdns: Toggle::from(mdns),
            }
        })
        .map_err(|e| BuildError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_millis(IDLE_CONNECTION_TIMEOUT_MS))
        })
        .build();
    Ok(swarm)
}
