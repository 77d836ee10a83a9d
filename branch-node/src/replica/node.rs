//! A branch node's replica side: its Raft over the libp2p transport, its proposer, and
//! the membership kept equal to the replicas the network file lists. The node serves
//! the branch (tellers, 2PC) only while [`Replica::serving`] says so: this replica
//! leads a membership of more than one voter, and its store applied everything
//! committed before it led.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::mpsc;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::transport::{self, Transport};
use super::{Raft, ReplicaId, proposer};
use crate::p2p::network::Client;
use crate::store::writer::{Writer, WriterHandle};
use client::network_file::BranchEntry;

/// The replica's Raft log file, in its data dir.
pub const LOG_FILE: &str = "raft.db";
/// Present in the data dir of the replica that starts a new replicated branch: its
/// first `run` makes the branch's log, then removes the file.
pub const BOOTSTRAP_FILE: &str = "bootstrap";

/// Heartbeats every this many milliseconds.
pub const HEARTBEAT_MS: u64 = 100;
/// A follower that hears no leader for a random time in this range stands for election:
/// a lost leader is replaced within about a second.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (400, 800);
/// A snapshot of the store is made after this many entries, and the log before it goes.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;

/// How long a new branch's first replica waits to lead alone and apply its first entries.
const BOOTSTRAP_STEP_WAIT: Duration = Duration::from_secs(10);
/// How long it waits for its first snapshot (a copy of its store file).
const BOOTSTRAP_SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// A follower whose store is more log entries than this behind its log is not ready.
pub const READY_LAG_MAX: u64 = 1_000;
/// How often a leader compares the membership with the network file.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(1);

/// One running replica.
#[derive(Clone)]
pub struct Replica {
    pub id: ReplicaId,
    pub raft: Raft,
    /// Writes through the proposer (for the serving stack).
    pub writes: WriterHandle,
    branch: BranchEntry,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the raft log: {0}")]
    Log(#[from] rusqlite::Error),
    #[error("raft's configuration is refused: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft stopped: {0}")]
    Raft(#[from] openraft::error::Fatal<ReplicaId>),
    /// Making a new branch's log (this replica alone, then its first snapshot) failed.
    #[error("cannot make the branch's log: {0}")]
    Bootstrap(Box<dyn std::error::Error + Send + Sync>),
}

/// A step of making the branch's log failed.
fn bootstrap_failed(e: impl std::error::Error + Send + Sync + 'static) -> StartError {
    StartError::Bootstrap(Box::new(e))
}

fn config() -> Result<Arc<Config>, StartError> {
    let config = Config {
        cluster_name: "bankmate-branch".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: 1_000,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

fn node(branch: &BranchEntry, id: ReplicaId) -> BasicNode {
    let addr = branch
        .replica(id)
        .map(|r| r.peer_id.to_string())
        .unwrap_or_default();
    BasicNode::new(addr)
}

impl Replica {
    /// Starts replica `id` of `branch` over the store behind `writer`, its log in
    /// `data_dir`, calling the others through `client`; Raft streams from them arrive
    /// on `streams`.
    pub async fn start(
        data_dir: &Path,
        branch: BranchEntry,
        id: ReplicaId,
        writer: &Writer,
        client: Client,
        streams: mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
    ) -> Result<Replica, StartError> {
        let log = LogStore::open(&data_dir.join(LOG_FILE))?;
        let sm = StateMachine::new(writer.handle());
        let waiting = sm.waiting();
        let transport = Transport::new(client, branch.clone());
        let raft = Raft::new(id, config()?, transport, log, sm).await?;
        tokio::spawn(serve_streams(raft.clone(), branch.clone(), streams));
        let (propose, _) = proposer::spawn(raft.clone(), waiting);
        let writes = writer.handle().replicated(propose);
        let replica = Replica {
            id,
            raft,
            writes,
            branch,
        };
        let marker = data_dir.join(BOOTSTRAP_FILE);
        if marker.exists() && !replica.raft.is_initialized().await? {
            replica.bootstrap().await?;
        }
        let _ = std::fs::remove_file(&marker);
        tokio::spawn(replica.clone().keep_membership());
        tokio::spawn(gauges(replica.raft.clone()));
        Ok(replica)
    }

    /// While this replica leads, keeps the membership equal to the network file's list,
    /// checking once a second; ends when Raft stops.
    async fn keep_membership(self) {
        let mut rx = self.raft.metrics();
        loop {
            if rx
                .wait_for(|m| m.state == ServerState::Leader)
                .await
                .is_err()
            {
                return;
            }
            self.follow_network_file().await;
            tokio::time::sleep(MEMBERSHIP_CHECK).await;
        }
    }

    /// Makes a new branch's log: this replica alone, then a snapshot of its store (the
    /// branch as `init` made it) with the log before it compacted away, so every other
    /// replica starts from that snapshot. The others join as the membership follows the
    /// network file (see [`Replica::follow_network_file`]).
    async fn bootstrap(&self) -> Result<(), StartError> {
        let me = BTreeMap::from([(self.id, node(&self.branch, self.id))]);
        self.raft.initialize(me).await.map_err(bootstrap_failed)?;
        let wait = self.raft.wait(Some(BOOTSTRAP_STEP_WAIT));
        let m = wait
            .metrics(|m| m.state == ServerState::Leader, "leads alone")
            .await
            .map_err(bootstrap_failed)?;
        let applied = m.last_log_index.unwrap_or(0);
        self.raft
            .wait(Some(BOOTSTRAP_STEP_WAIT))
            .applied_index_at_least(Some(applied), "applied")
            .await
            .map_err(bootstrap_failed)?;
        self.raft.trigger().snapshot().await?;
        self.raft
            .wait(Some(BOOTSTRAP_SNAPSHOT_WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot made",
            )
            .await
            .map_err(bootstrap_failed)?;
        self.raft.trigger().purge_log(applied).await?;
        tracing::info!(
            replica = self.id,
            "made the branch's log and its first snapshot"
        );
        Ok(())
    }

    /// While leader: makes the voting membership the replicas the network file lists
    /// (adding new ones as learners first, who catch up by snapshot and log). Returns
    /// once done, or when this replica no longer leads.
    pub async fn follow_network_file(&self) {
        let listed: BTreeSet<ReplicaId> = self.branch.replicas.iter().map(|r| r.id).collect();
        let voters: BTreeSet<ReplicaId> = self.metrics().membership_config.voter_ids().collect();
        if voters == listed {
            return;
        }
        tracing::info!(
            ?voters,
            ?listed,
            "changing the replicas to those the network file lists"
        );
        for &id in listed.difference(&voters) {
            if let Err(e) = self
                .raft
                .add_learner(id, node(&self.branch, id), false)
                .await
            {
                tracing::warn!(replica = id, "cannot add a replica: {e}");
                return;
            }
        }
        match self.raft.change_membership(listed, false).await {
            Ok(_) => tracing::info!("replicas now as the network file lists"),
            Err(e) => tracing::warn!("membership not changed: {e}"),
        }
    }

    fn metrics(&self) -> RaftMetrics<ReplicaId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this replica may serve the branch now: it leads, and a majority of more
    /// than one replica holds what it writes (a replicated branch never answers from one
    /// copy alone, as while its log is being made).
    pub fn serving(&self, m: &RaftMetrics<ReplicaId, BasicNode>) -> bool {
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.membership_config.voter_ids().count() > 1
    }

    /// The branch this is a replica of.
    pub fn branch(&self) -> wire::BranchId {
        self.branch.id
    }

    /// What `/readyz` says of this replica: whether tellers may use it (it leads and
    /// its serving stack runs, or it follows a known leader, which it forwards them to,
    /// with its store no more than [`READY_LAG_MAX`] entries behind its log), and a line
    /// for the operator.
    pub fn readiness(&self, serving: bool) -> (bool, String) {
        let m = self.metrics();
        let (applied, behind) = unapplied(&m);
        let leader = m.current_leader.filter(|&l| l != self.id);
        let (ready, role) = match m.state {
            ServerState::Leader if serving => (true, "leader, serving".to_owned()),
            ServerState::Leader => (false, "leader, not serving yet".to_owned()),
            ServerState::Follower => match leader {
                Some(l) => (behind <= READY_LAG_MAX, format!("follower of replica {l}")),
                None => (false, "follower, no leader known".to_owned()),
            },
            ServerState::Candidate => (false, "candidate, electing a leader".to_owned()),
            _ => (false, "learner, catching up".to_owned()),
        };
        let line = format!(
            "{} {role}; applied entry {applied}, {behind} behind its log",
            self.id
        );
        (ready, line)
    }

    /// The replica this one believes leads, for "not the leader" answers.
    pub fn leader_hint(&self) -> Option<ReplicaId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until this replica may serve and its store applied every entry of its log
    /// (its predecessors' and, after a restart that kept its leadership, its own last
    /// ones): the serving stack's recovery must see every transfer begun before it.
    /// `false` if Raft stopped.
    pub async fn until_serving(&self) -> bool {
        let mut rx = self.raft.metrics();
        loop {
            if rx.wait_for(|m| self.serving(m)).await.is_err() {
                return false;
            }
            if self.raft.ensure_linearizable().await.is_ok() && self.applied_whole_log().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
        }
    }

    /// Whether the store applies every entry the log holds now, within an election
    /// timeout (they commit once a majority holds them).
    async fn applied_whole_log(&self) -> bool {
        let last = self.raft.metrics().borrow().last_log_index;
        let wait = Duration::from_millis(ELECTION_TIMEOUT_MS.1);
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(last, "the whole log applied")
            .await
            .is_ok()
    }

    /// Resolves when this replica may no longer serve: it no longer leads, or it could
    /// not confirm with a majority, within an election timeout, that it still does (a
    /// leader cut off from the others: its writes could not commit anyway, and its reads
    /// could be stale).
    pub async fn until_not_serving(&self) {
        let mut rx = self.raft.metrics();
        let lost = async {
            let _ = rx.wait_for(|m| !self.serving(m)).await;
        };
        let lease = Duration::from_millis(ELECTION_TIMEOUT_MS.1);
        let cut_off = async {
            loop {
                tokio::time::sleep(lease).await;
                let confirmed = tokio::time::timeout(lease, self.raft.ensure_linearizable()).await;
                if !matches!(confirmed, Ok(Ok(_))) {
                    return;
                }
            }
        };
        tokio::select! {
            () = lost => {}
            () = cut_off => tracing::warn!("no majority confirms this leader: it stops serving"),
        }
    }
}

/// The last entry the store applied, and how many entries the log holds past it.
fn unapplied(m: &RaftMetrics<ReplicaId, BasicNode>) -> (u64, u64) {
    let applied = m.last_applied.map_or(0, |l| l.index);
    (
        applied,
        m.last_log_index.unwrap_or(0).saturating_sub(applied),
    )
}

/// Keeps the metrics' replica role and lag current; ends when Raft stops.
async fn gauges(raft: Raft) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            let metrics = crate::metrics::get();
            metrics.replica_role.set(match m.state {
                ServerState::Leader => 3,
                ServerState::Candidate => 2,
                _ => 1,
            });
            let behind = unapplied(&m).1;
            metrics
                .replica_lag_entries
                .set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Hands each Raft stream from another replica to Raft, one task each.
async fn serve_streams(
    raft: Raft,
    branch: BranchEntry,
    mut streams: mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
) {
    let branch = Arc::new(branch);
    while let Some((peer, stream)) = streams.recv().await {
        let (raft, branch) = (raft.clone(), Arc::clone(&branch));
        tokio::spawn(async move { transport::serve(raft, &branch, peer, stream).await });
    }
}
