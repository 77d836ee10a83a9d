//! What a program needs to talk to a branch, and nothing of a branch's insides: the
//! network file ([`network_file`]), the framing of the long-lived, pipelined streams
//! every protocol runs on ([`pipe`]), a pinned libp2p client ([`peer`]), and the names
//! and timings both ends of those streams must agree on. `teller-cli`, the scenario
//! drivers and the tests build on this crate; `branch-node` serves the same protocols
//! with the same framing.

pub mod network_file;
pub mod peer;
pub mod pipe;

use libp2p::swarm::{NetworkBehaviour, Swarm};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::oneshot;

pub use network_file::NetworkFile;
pub use peer::{ClientError, PeerClient};

/// The teller protocol: `TellerRequest` in, `TellerResponse` out, as tagged frames on
/// one long-lived stream ([`pipe`]).
pub const TELLER_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/teller/5");
/// The branch-to-branch protocol for 2PC envelopes: `LinkRequest` in, `LinkResponse`
/// out, framed the same way.
pub const LINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/link/5");
/// Requests one branch forwards to another for tellers (`LinkRequest::Forward`): their
/// own protocol, with their own streams and inbound queue, so that a teller flood
/// passed on by a branch can never hold up that link's 2PC messages.
pub const FORWARD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/forward/4");
/// The replicas' protocol: Raft messages between the replicas of one branch.
pub const RAFT_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/raft/1");

/// How long an idle connection stays open. libp2p's default (10 s) would close branch
/// links between bursts and make every quiet spell cost a new Noise handshake; an hour
/// let an idle stranger hold a connection slot that long. A stream with nothing sent
/// on it for this long is closed by the answering side too.
pub const IDLE_CONNECTION_TIMEOUT_MS: u64 = 5 * 60 * 1_000;

/// How long a requester keeps a stream with nothing in flight before closing it (well
/// before the answering side would, so a request never meets a stream being closed).
pub const PIPE_IDLE_MS: u64 = 60 * 1_000;

/// How long a request may wait for its response before it fails, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long connecting to one replica of a branch that has several may take before the
/// next is tried: a replica that is paused (or its machine is) accepts the connection
/// but never completes the handshake, and the others serve meanwhile.
pub const CANDIDATE_CONNECT_MS: u64 = 1_000;

const _: () = assert!(
    PIPE_IDLE_MS < IDLE_CONNECTION_TIMEOUT_MS,
    "a requester closes an idle stream before the answering side would"
);
const _: () = assert!(
    wire::limits::FORWARD_TIMEOUT_MS < REQUEST_TIMEOUT_MS,
    "a teller hears that a forward timed out before its own wait ends"
);

/// Dials `peer` at `addrs` unless connected or already dialling, and calls `done` once
/// the peer is connected or the dial has failed ([`Dials::settle`]). A stream must not
/// be opened before that: `libp2p-stream` asked for a stream while a connection is
/// being set up parks the request where that connection never looks, and it hangs.
/// The addresses go with every dial: libp2p drops a cached address after one failed
/// dial, which would cut a restarted branch off for good.
#[derive(Debug, Default)]
pub struct Dials(std::collections::HashMap<PeerId, Vec<oneshot::Sender<()>>>);

impl Dials {
    /// Dials if need be; `done` is called now when connected (or when no dial could
    /// start), else when the dial settles.
    pub fn dial<B: NetworkBehaviour>(
        &mut self,
        swarm: &mut Swarm<B>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<()>,
    ) {
        use libp2p::swarm::DialError;
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
        if swarm.is_connected(&peer) {
            let _ = done.send(());
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                self.0.entry(peer).or_default().push(done);
            }
            Err(e) => {
                tracing::debug!(%peer, %e, "dial not started");
                let _ = done.send(());
            }
        }
    }

    /// The peer is connected, or a dial to it failed: everyone waiting goes on.
    pub fn settle(&mut self, peer: &PeerId) {
        for done in self.0.remove(peer).unwrap_or_default() {
            let _ = done.send(());
        }
    }
}

/// `text` percent-encoded for a URI's path or query (RFC 3986 unreserved characters
/// kept): the `otpauth://` URIs a branch makes and the console shows.
pub fn uri_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
