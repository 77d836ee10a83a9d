//! The libp2p side of a branch node: the swarm's behaviour, how it is built, and the
//! event loop that owns it (see [`network`]). Transport: TCP + Noise + Yamux.
//!
//! Two protocols run over each connection: the teller protocol (any key may speak it)
//! and the link protocol (only branches in the network file; checked on every request).
//! identify and ping run too, and mDNS when asked for (it finds addresses, never trust).

pub mod client;
pub mod codec;
pub mod network;

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Swarm, SwarmBuilder, identify, mdns, noise, ping, tcp, yamux};
use wire::link::{LinkRequest, LinkResponse};
use wire::{TellerRequest, TellerResponse};

pub use codec::{LINK_PROTOCOL, TELLER_PROTOCOL, WireCodec};

/// How long an idle connection stays open. libp2p's default (10 s) would close branch
/// links between bursts and make every quiet spell cost a new Noise handshake.
pub const IDLE_CONNECTION_TIMEOUT_MS: u64 = 60 * 60 * 1_000;

/// How long a request may wait for its response before it fails, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Most concurrent request streams per connection and protocol.
pub const STREAMS_PER_CONNECTION_MAX: usize = 1_024;

/// The teller protocol's behaviour.
pub type TellerBehaviour = request_response::Behaviour<WireCodec<TellerRequest, TellerResponse>>;
/// The link protocol's behaviour.
pub type LinkBehaviour = request_response::Behaviour<WireCodec<LinkRequest, LinkResponse>>;

/// Everything a branch node's swarm runs.
#[allow(missing_debug_implementations)] // the derive's generated event type has none either
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    pub link: LinkBehaviour,
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

fn rr_config() -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
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
                link: request_response::Behaviour::new(
                    [(LINK_PROTOCOL, ProtocolSupport::Full)],
                    rr_config(),
                ),
                teller: request_response::Behaviour::new(
                    [(TELLER_PROTOCOL, ProtocolSupport::Inbound)],
                    rr_config(),
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
