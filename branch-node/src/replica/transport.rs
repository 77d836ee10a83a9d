//! Raft between the replicas of one branch over libp2p: the `/bankmate/raft/1`
//! protocol, one stream per call (a length-prefixed request, a length-prefixed answer;
//! Raft's calls are few: heartbeats and batches of entries), on the same connections,
//! Noise-authenticated, as everything else. Only replicas the network file lists for
//! this branch may call; a call's body may be as large as a record
//! ([`wire::limits::RECORD_BYTES_MAX`]), since one entry carries a writer batch.

use std::io;
use std::time::Duration;

use client::RAFT_PROTOCOL;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use wire::limits::RECORD_BYTES_MAX;

use super::{Raft, ReplicaId, Replicated};
use crate::p2p::network::Client;
use client::network_file::BranchEntry;

/// How long an answering replica waits for a call's bytes.
const READ_TIMEOUT_MS: u64 = 10_000;

/// A Raft call from one replica to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Append(AppendEntriesRequest<Replicated>),
    Vote(VoteRequest<ReplicaId>),
    Snapshot(InstallSnapshotRequest<Replicated>),
}

/// The answer to a [`Call`], as the called replica's Raft gave it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Append(Result<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>>),
    Vote(Result<VoteResponse<ReplicaId>, RaftError<ReplicaId>>),
    Snapshot(
        Result<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>>,
    ),
}

/// Writes one length-prefixed record.
async fn write_record<W: AsyncWrite + Unpin, T: Serialize>(
    io: &mut W,
    value: &T,
) -> io::Result<()> {
    let bytes = wire::codec::encode_record(value).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

/// Reads one length-prefixed record of at most [`RECORD_BYTES_MAX`] bytes.
async fn read_record<R: AsyncRead + Unpin, T: Serialize + serde::de::DeserializeOwned>(
    io: &mut R,
) -> io::Result<T> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > RECORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record too large",
        ));
    }
    let mut bytes = Vec::new();
    io.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    wire::codec::decode_record(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// How long after it starts a replica votes for no one. Its vote record is its log
/// file's: started from an old copy of its data dir (an operator's mistake), it has
/// forgotten any vote it cast since, and could vote twice in one term. Every election
/// of such a term is over once a candidate's election timeout and its vote call have
/// passed (a candidate stands again in a newer term), so staying out for twice the
/// longest election timeout makes the forgotten vote harmless. It delays only an
/// election that needs this replica's vote right after it starts.
pub const VOTE_QUIET_AFTER_START_MS: u64 = 2 * super::node::ELECTION_TIMEOUT_MS.1;

/// Serves one inbound Raft stream from `peer`: one call, one answer. A peer that is not
/// a replica of this branch gets nothing, nor does a vote call within
/// [`VOTE_QUIET_AFTER_START_MS`] of `started`.
pub async fn serve(
    raft: Raft,
    branch: &BranchEntry,
    (peer, started): (PeerId, std::time::Instant),
    mut stream: Stream,
) {
    if branch.replica_by_peer(&peer).is_none() {
        tracing::warn!(%peer, "raft stream refused: not a replica of this branch");
        return;
    }
    let timeout = Duration::from_millis(READ_TIMEOUT_MS);
    let call = match tokio::time::timeout(timeout, read_record::<_, Call>(&mut stream)).await {
        Ok(Ok(call)) => call,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "raft call unreadable: {e}");
            return;
        }
        Err(_) => return,
    };
    let answer = match call {
        Call::Append(rpc) => Answer::Append(raft.append_entries(rpc).await),
        Call::Vote(_) if started.elapsed() < Duration::from_millis(VOTE_QUIET_AFTER_START_MS) => {
            tracing::info!(%peer, "vote call left unanswered: this replica has just started");
            return;
        }
        Call::Vote(rpc) => Answer::Vote(raft.vote(rpc).await),
        Call::Snapshot(rpc) => Answer::Snapshot(raft.install_snapshot(rpc).await),
    };
    if let Err(e) = write_record(&mut stream, &answer).await {
        tracing::debug!(%peer, "raft answer not sent: {e}");
    }
    let _ = stream.close().await;
}

/// Makes the connections of one replica to the others of its branch.
#[derive(Clone, Debug)]
pub struct Transport {
    client: Client,
    branch: BranchEntry,
}

impl Transport {
    /// Calls go through `client`'s connections to the replicas `branch` lists.
    pub fn new(client: Client, branch: BranchEntry) -> Transport {
        Transport { client, branch }
    }
}

/// A connection to one other replica.
#[derive(Debug)]
pub struct Link {
    client: Client,
    to: ReplicaId,
    peer: Option<PeerId>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallFailed(String);

type Failed<E = openraft::error::Infallible> =
    RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>;

impl Link {
    /// Sends `call` and reads its answer, within `ttl`.
    async fn call<E: std::error::Error>(
        &self,
        call: Call,
        ttl: Duration,
    ) -> Result<Answer, Failed<E>> {
        let unreachable = |e: String| RPCError::Unreachable(Unreachable::new(&CallFailed(e)));
        let peer = self
            .peer
            .ok_or_else(|| unreachable(format!("replica {} is not listed", self.to)))?;
        let mut stream = self
            .client
            .open_stream(peer, RAFT_PROTOCOL)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            write_record(&mut stream, &call).await?;
            read_record::<_, Answer>(&mut stream).await
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(_) => Err(RPCError::Network(NetworkError::new(&CallFailed(format!(
                "no answer within {ttl:?}"
            ))))),
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<ReplicaId, E>>,
    ) -> Result<T, Failed<E>> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

fn mismatched<E: std::error::Error>() -> Failed<E> {
    RPCError::Network(NetworkError::new(&CallFailed(
        "the answer is of another kind".into(),
    )))
}

impl RaftNetworkFactory<Replicated> for Transport {
    type Network = Link;

    async fn new_client(&mut self, to: ReplicaId, _node: &BasicNode) -> Link {
        Link {
            client: self.client.clone(),
            to,
            peer: self.branch.replica(to).map(|r| r.peer_id),
        }
    }
}

impl RaftNetwork<Replicated> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Replicated>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, Failed> {
        match self.call(Call::Append(rpc), option.hard_ttl()).await? {
            Answer::Append(r) => self.remote(r),
            _ => Err(mismatched()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Replicated>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<ReplicaId>, Failed<InstallSnapshotError>> {
        match self.call(Call::Snapshot(rpc), option.hard_ttl()).await? {
            Answer::Snapshot(r) => self.remote(r),
            _ => Err(mismatched()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, Failed> {
        match self.call(Call::Vote(rpc), option.hard_ttl()).await? {
            Answer::Vote(r) => self.remote(r),
            _ => Err(mismatched()),
        }
    }
}
