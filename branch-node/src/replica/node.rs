//! A branch node's replica side: its Raft over the libp2p transport, its proposer, and
//! the membership kept equal to the replicas the network file lists. The node serves
//! the branch (tellers, 2PC) only while [`Replica::serving`] says so: this replica
//! leads a membership of more than one voter, and its store applied everything
//! committed before it led.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Heartbeats every this many milliseconds (Raft's timer ticks every one and a half).
/// It is also how long Raft lets one append call take, so it stays well above a
/// follower's fsync on a busy machine.
pub const HEARTBEAT_MS: u64 = 100;
/// Raft's election timeout range. A follower stands for election once it has heard no
/// leader for the upper bound (the time it refuses to vote for anyone else: the
/// leader's lease) plus a random time in this range, so a lost leader is replaced
/// within about 0.5 to 0.8 s. Measured with `scenarios failover` (see the README): the
/// earlier 400-800 ms took 1.2 to 1.6 s, and up to 3 s when a candidate with a shorter
/// log had to wait for another.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (150, 300);
/// A snapshot of the store is made after this many entries, and the log before it goes.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;

/// How long a new branch's first replica waits to lead alone and apply its first entries.
const BOOTSTRAP_STEP_WAIT: Duration = Duration::from_secs(10);
/// How long it waits for its first snapshot (a copy of its store file).
const BOOTSTRAP_SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// A follower whose store is more log entries than this behind its log is not ready.
pub const READY_LAG_MAX: u64 = 1_000;
/// A leader holds its lease (serves, says it is ready) only while a majority
/// acknowledged its heartbeats less than this long ago, by this process's monotonic
/// clock. Followers refuse to vote for anyone else for an election timeout's upper
/// bound after they last heard the leader, so nobody else can lead within the lease;
/// a leader cut off from the others (or paused, and just resumed) stops serving and
/// answers "not the leader" after at most this long.
pub const LEASE_MS: u64 = ELECTION_TIMEOUT_MS.1 - HEARTBEAT_MS / 2;
const _: () = assert!(LEASE_MS < ELECTION_TIMEOUT_MS.1 && LEASE_MS > 2 * HEARTBEAT_MS);
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
    /// When a majority last acknowledged this replica as leader (by its heartbeats),
    /// on this process's clock; `None` while it does not lead.
    acked: Arc<std::sync::Mutex<Option<Instant>>>,
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
    #[error("cannot open the raft log: {0}")]
    LogFile(#[from] crate::store::StoreError),
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
        let log = LogStore::open(&data_dir.join(LOG_FILE), writer.keys())?;
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
            acked: Arc::default(),
        };
        let marker = data_dir.join(BOOTSTRAP_FILE);
        if marker.exists() && !replica.raft.is_initialized().await? {
            replica.bootstrap().await?;
        }
        let _ = std::fs::remove_file(&marker);
        tokio::spawn(replica.clone().keep_membership());
        tokio::spawn(gauges(replica.raft.clone(), Arc::clone(&replica.acked)));
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

    /// Whether this replica leads and holds its lease: a majority acknowledged it less
    /// than [`LEASE_MS`] ago. A leader cut off from the others, or one just resumed
    /// from a pause, does not: it answers "not the leader" (nothing done) meanwhile.
    pub fn holds_lease(&self) -> bool {
        let m = self.raft.metrics();
        if !self.serving(&m.borrow()) {
            return false;
        }
        let acked = *self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        within_lease(acked)
    }

    /// What `/readyz` says of this replica: whether tellers may use it (it leads, holds
    /// its lease and its serving stack runs, or it follows a known leader, which it
    /// forwards them to, with its store no more than [`READY_LAG_MAX`] entries behind
    /// its log), and a line for the operator.
    pub fn readiness(&self, serving: bool) -> (bool, String) {
        let m = self.metrics();
        let (applied, behind) = unapplied(&m);
        let leader = m.current_leader.filter(|&l| l != self.id);
        let (ready, role) = match m.state {
            ServerState::Leader if !self.holds_lease() => (
                false,
                "leader without a lease (no majority heard it lately), not serving".to_owned(),
            ),
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

    /// Why Raft stopped, as it said.
    pub fn stopped_why(&self) -> String {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => "stopped".to_owned(),
            Err(fatal) => fatal.to_string(),
        }
    }

    /// The replica this one believes leads, for "not the leader" answers.
    pub fn leader_hint(&self) -> Option<ReplicaId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Resolves once this replica no longer believes `leader` leads (an election began,
    /// or another replica leads), or Raft stopped.
    pub fn until_leader_is_not(
        &self,
        leader: Option<ReplicaId>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.raft.metrics();
        async move {
            let _ = rx.wait_for(|m| m.current_leader != leader).await;
        }
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

    /// Resolves when this replica may no longer serve: it no longer leads, or it has
    /// been without its lease for an election timeout's upper bound (a leader cut off
    /// from the others: its writes cannot commit, its reads could be stale, and the
    /// others are electing another). Requests find it without its lease at once and are
    /// answered "not the leader"; the stack itself stops only after this grace, so a
    /// lease that lapses for a moment on a busy machine does not restart it.
    pub async fn until_not_serving(&self) {
        let mut rx = self.raft.metrics();
        let lost = async {
            let _ = rx.wait_for(|m| !self.serving(m)).await;
        };
        let grace = Duration::from_millis(ELECTION_TIMEOUT_MS.1);
        let cut_off = async {
            let mut lapsed: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                if self.holds_lease() {
                    lapsed = None;
                } else if lapsed.get_or_insert_with(Instant::now).elapsed() >= grace {
                    return;
                }
            }
        };
        tokio::select! {
            () = lost => {}
            () = cut_off => tracing::warn!("no majority heard this leader lately: it stops serving"),
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

/// Keeps the metrics' replica role and lag current, and when a majority last
/// acknowledged this replica as leader; ends when Raft stops.
async fn gauges(raft: Raft, acked: Arc<std::sync::Mutex<Option<Instant>>>) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            note_acked(&m, &acked);
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

/// Whether a leader a majority last acknowledged at `acked` still holds its lease.
fn within_lease(acked: Option<Instant>) -> bool {
    acked.is_some_and(|at| at.elapsed() < Duration::from_millis(LEASE_MS))
}

/// Stamps when a majority last acknowledged this leader: Raft reports how long ago, as
/// of the report; the report is read as it comes, so a process paused since keeps the
/// stamp from before its pause (its lease then has run out when it resumes).
fn note_acked(m: &RaftMetrics<ReplicaId, BasicNode>, acked: &std::sync::Mutex<Option<Instant>>) {
    let leads = m.state == ServerState::Leader && m.current_leader == Some(m.id);
    let at = m
        .millis_since_quorum_ack
        .filter(|_| leads)
        .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
    let mut stamp = acked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *stamp = match (leads, at, *stamp) {
        (false, _, _) => None,
        (true, Some(at), Some(was)) => Some(at.max(was)),
        (true, at, was) => at.or(was),
    };
}

/// Hands each Raft stream from another replica to Raft, one task each.
async fn serve_streams(
    raft: Raft,
    branch: BranchEntry,
    mut streams: mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
) {
    let (branch, started) = (Arc::new(branch), Instant::now());
    while let Some((peer, stream)) = streams.recv().await {
        let (raft, branch) = (raft.clone(), Arc::clone(&branch));
        tokio::spawn(async move { transport::serve(raft, &branch, (peer, started), stream).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_metrics(acked_ms_ago: Option<u64>) -> RaftMetrics<ReplicaId, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.millis_since_quorum_ack = acked_ms_ago;
        m
    }

    #[test]
    fn a_leader_is_stamped_when_a_majority_last_acked_it_and_never_later() {
        let acked = std::sync::Mutex::new(None);
        note_acked(&leader_metrics(Some(40)), &acked);
        let at = acked.lock().expect("lock").expect("stamped");
        assert!(at.elapsed() >= Duration::from_millis(40));
        assert!(at.elapsed() < Duration::from_millis(LEASE_MS));
        // A report of an older acknowledgement does not move the stamp back, and one
        // without any keeps it.
        note_acked(&leader_metrics(Some(5_000)), &acked);
        assert_eq!(*acked.lock().expect("lock"), Some(at));
        note_acked(&leader_metrics(None), &acked);
        assert_eq!(*acked.lock().expect("lock"), Some(at));
    }

    #[test]
    fn a_replica_that_does_not_lead_holds_no_stamp() {
        let acked = std::sync::Mutex::new(None);
        note_acked(&leader_metrics(Some(10)), &acked);
        let mut follower = leader_metrics(Some(10));
        follower.state = ServerState::Follower;
        follower.current_leader = Some(2);
        note_acked(&follower, &acked);
        assert_eq!(*acked.lock().expect("lock"), None);
        // A replica whose metrics call it leader but name another is not stamped either.
        let mut confused = leader_metrics(Some(10));
        confused.current_leader = Some(2);
        note_acked(&confused, &acked);
        assert_eq!(*acked.lock().expect("lock"), None);
    }

    #[test]
    fn a_stamp_from_before_a_pause_is_no_lease() {
        // What a process resumed after a pause holds: the last stamp it took, long ago.
        let before_pause = Instant::now().checked_sub(Duration::from_secs(10));
        assert!(!within_lease(before_pause));
        assert!(within_lease(Some(Instant::now())));
        assert!(!within_lease(None));
    }
}
