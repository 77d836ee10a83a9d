//! The libp2p side of a branch node: the swarm's behaviour, how it is built, and the
//! event loop that owns it (see [`network`]). Transport: TCP + Noise + Yamux.
//!
//! Three protocols run over each connection, each as long-lived streams of tagged,
//! pipelined frames ([`pipe`]): the teller protocol (any key may speak it), the link
//! protocol for 2PC envelopes and the forward protocol for teller requests one branch
//! passes to another (both only for branches in the network file; checked on every
//! request). identify and ping run too, and mDNS when asked for (it finds
//! addresses, never trust). Connection limits bound what any peer can open.

pub mod network;

pub use client::{
    Dials, FORWARD_PROTOCOL, IDLE_CONNECTION_TIMEOUT_MS, LINK_PROTOCOL, PIPE_IDLE_MS,
    REQUEST_TIMEOUT_MS, TELLER_PROTOCOL,
};

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Swarm, SwarmBuilder, identify, mdns, noise, ping, tcp, yamux};

/// Most connections being set up (Noise handshake) at once from outside.
pub const PENDING_INCOMING_CONNECTIONS_MAX: u32 = 128;

/// Most established connections in all.
pub const CONNECTIONS_MAX: u32 = 1_024;

/// Most established connections with one peer (one key).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// How long opening a stream (and redialling for it) may take.
pub const OPEN_TIMEOUT_MS: u64 = 5_000;

/// Most open streams of one protocol from one peer; more are closed at once.
pub const STREAMS_PER_PEER_MAX: usize = 8;

/// Most unanswered requests on one teller stream: past it the node stops reading that
/// stream (the teller's further requests wait on its side, not in the node).
pub const TELLER_IN_FLIGHT_MAX: usize = 64;

/// Most unanswered 2PC envelopes on one link stream: every prepare, vote and decision
/// between two branches; a batch carries up to 1,024 transfers.
pub const LINK_IN_FLIGHT_MAX: usize = 1_024;

/// Most bytes a node holds for one stream: its requests read and not yet answered and
/// written, and their answers waiting to be written. Past it the node stops reading
/// that stream, so a requester that never reads holds at most this much (and its
/// in-flight places) in the node. One request or answer larger than this still goes,
/// alone.
pub const STREAM_HELD_BYTES_MAX: usize = 256 * 1024;

/// The same, across every teller stream of one peer (its connections and streams).
pub const TELLER_HELD_BYTES_PER_PEER_MAX: usize = 4 << 20;

/// The same, across every teller stream of the node: many peers that send and never
/// read hold at most this much together. (Branch-to-branch streams are bounded per
/// stream only: their peers are the listed branches.)
pub const TELLER_HELD_BYTES_MAX: usize = 64 << 20;

/// How long writing answers to a stream may make no progress (its requester does not
/// read them) before the node closes the stream and drops what waited.
pub const WRITE_STALL_MS: u64 = 15_000;

/// A listen address another process already listens on (code `address_in_use`).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {why}; choose another {flag} (or stop what holds it)")]
pub struct AddressInUse {
    pub addr: String,
    pub why: String,
    /// The flag that names the address (`--listen`, `--metrics-listen`).
    pub flag: &'static str,
}

/// Refuses, before anything listens, an address of `addrs` that another process holds.
///
/// libp2p's TCP transport sets `SO_REUSEPORT` on its listeners (to dial from the port it
/// listens on), so a second node told the same port binds it too and the kernel splits
/// the incoming connections between the two. A plain socket (no `SO_REUSEPORT`) cannot
/// bind a port anyone listens on, so binding one first, and closing it, finds the clash.
pub fn check_addresses_free(addrs: &[libp2p::Multiaddr]) -> Result<(), AddressInUse> {
    use libp2p::multiaddr::Protocol;
    for addr in addrs {
        let mut parts = addr.iter();
        let ip: std::net::IpAddr = match parts.next() {
            Some(Protocol::Ip4(ip)) => ip.into(),
            Some(Protocol::Ip6(ip)) => ip.into(),
            _ => continue,
        };
        let Some(Protocol::Tcp(port)) = parts.next() else {
            continue;
        };
        if port == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind((ip, port)) {
            return Err(AddressInUse {
                addr: addr.to_string(),
                why: e.to_string(),
                flag: "--listen",
            });
        }
    }
    Ok(())
}

/// Everything a branch node's swarm runs. The teller, link and forward protocols are
/// streams (`libp2p_stream`), served by the event loop's accept tasks.
#[allow(missing_debug_implementations)] // the derive's generated event type has none either
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    pub limits: connection_limits::Behaviour,
    pub streams: libp2p_stream::Behaviour,
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
                streams: libp2p_stream::Behaviour::new(),
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
