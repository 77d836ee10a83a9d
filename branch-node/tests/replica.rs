//! Replicas of one branch store under openraft, in one process: entries a majority
//! holds are applied to every replica's own SQLite file and give the same rows; a
//! leader that goes is replaced and nothing committed is lost; a new, empty replica
//! catches up by snapshot once the log it needs is compacted away. (The network here
//! is an in-process router beside the real one; the stores and logs are real files.)

// openraft's network traits answer with its `RPCError` (over 200 bytes).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use branch_node::replica::log_store::LogStore;
use branch_node::replica::state_machine::StateMachine;
use branch_node::replica::{Raft, ReplicaId, Replicated, proposer};
use branch_node::store::ops::WriteOp;
use branch_node::store::writer::{Writer, WriterHandle};
use branch_node::store::{Durability, Movement, StoreError};
use coordinator::testing::HERE;
use coordinator::{Command, Input};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, SnapshotPolicy};
use wire::teller::{NewCustomer, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, TransferId};

/// The in-process network: every live replica's Raft by id.
#[derive(Clone, Default)]
struct Router(Arc<Mutex<HashMap<ReplicaId, Raft>>>);

impl Router {
    fn get(&self, id: ReplicaId) -> Option<Raft> {
        self.0.lock().expect("router").get(&id).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("replica {0} is gone")]
struct Gone(ReplicaId);

struct Link {
    router: Router,
    to: ReplicaId,
}

type RpcError<E = openraft::error::Infallible> =
    RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>;

impl Link {
    fn target<E: std::error::Error>(&self) -> Result<Raft, RpcError<E>> {
        self.router
            .get(self.to)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&Gone(self.to))))
    }
}

impl RaftNetworkFactory<Replicated> for Router {
    type Network = Link;
    async fn new_client(&mut self, to: ReplicaId, _node: &BasicNode) -> Link {
        Link {
            router: self.clone(),
            to,
        }
    }
}

impl RaftNetwork<Replicated> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Replicated>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RpcError> {
        let raft = self.target()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Replicated>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<ReplicaId>, RpcError<InstallSnapshotError>> {
        let raft = self.target()?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RpcError> {
        let raft = self.target()?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

/// One replica: its Raft, its writer, its store file, and the handle its node would
/// write through (to its proposer).
struct Replica {
    raft: Raft,
    writer: Writer,
    store: PathBuf,
    handle: WriterHandle,
}

fn config(snapshots: SnapshotPolicy) -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: snapshots,
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    Arc::new(config.validate().expect("valid config"))
}

async fn start(dir: &Path, id: ReplicaId, router: &Router, snapshots: SnapshotPolicy) -> Replica {
    let store = dir.join(format!("replica-{id}.db"));
    let writer = Writer::spawn(
        branch_node::store::testing::open_keyed(&store, HERE, Durability::Full).expect("opens"),
    );
    let log = LogStore::open(&dir.join(format!("replica-{id}.log")), writer.keys()).expect("opens");
    let sm = StateMachine::new(writer.handle());
    let waiting = sm.waiting();
    let raft = Raft::new(id, config(snapshots), router.clone(), log, sm)
        .await
        .expect("starts");
    router.0.lock().expect("router").insert(id, raft.clone());
    let (propose, _) = proposer::spawn(raft.clone(), waiting);
    let handle = writer.handle().replicated(propose);
    Replica {
        raft,
        writer,
        store,
        handle,
    }
}

async fn leader_among(replicas: &BTreeMap<ReplicaId, Replica>) -> ReplicaId {
    let any = replicas.values().next().expect("a replica");
    let m = any
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| replicas.contains_key(&l)),
            "a live leader",
        )
        .await
        .expect("a leader is elected");
    m.current_leader.expect("leader")
}

fn number(serial: u32) -> AccountNumber {
    AccountNumber::new(HERE, serial).expect("valid")
}

/// The writes a leader's node would make: an account opened and funded, and a local
/// transfer from it to the first account when there is one.
fn writes(serial: u32, hash: &str) -> Vec<WriteOp> {
    let now = 1_700_000_000_000 + u64::from(serial);
    let customer = NewCustomer {
        national_id: format!("R{serial}"),
        phone: "+15550100".into(),
        first_name: "Rep".into(),
        last_name: "Lica".into(),
        sms_opt_in: serial.is_multiple_of(2),
    };
    let mut ops = vec![
        WriteOp::OpenAccount {
            customer,
            // Deterministic, as a leader's sealed id is to its followers.
            national_id: branch_node::store::SealedId {
                hash: format!("R{serial}"),
                sealed: Vec::new(),
                masked: "**".into(),
            },
            password_hash: hash.into(),
            existing: None,
            now_ms: now,
        },
        WriteOp::Movement {
            kind: Movement::Deposit,
            id: TransferId(u128::from(serial)),
            account: number(serial),
            amount: Amount::from_minor(10_000).expect("amount"),
            now_ms: now,
        },
    ];
    if serial > 1 {
        let spec = TransferSpec {
            id: TransferId(1_000 + u128::from(serial)),
            from: number(serial),
            to: number(1),
            amount: Amount::from_minor(250).expect("amount"),
        };
        ops.push(WriteOp::TwoPc {
            now_ms: now,
            commands: vec![Command::TransferLocal {
                items: vec![(0, spec)],
            }],
        });
    }
    ops
}

/// Every row of every table (a replica's place in its log aside), in a fixed order.
fn dump(path: &Path) -> String {
    branch_node::replica::check::dump(path).expect("reads")
}

/// Waits until the leader applied every entry of its log (at least `index`) and every
/// replica applied as much, then checks their stores are the same row for row.
async fn same_everywhere(replicas: &BTreeMap<ReplicaId, Replica>, index: u64) {
    let leader = leader_among(replicas).await;
    let m = replicas[&leader]
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                let applied = m.last_applied.map(|l| l.index);
                applied >= Some(index) && applied == m.last_log_index
            },
            "the leader applied its whole log",
        )
        .await
        .expect("applies");
    let index = m.last_log_index.expect("an entry");
    for r in replicas.values() {
        r.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "applied")
            .await
            .expect("applies");
    }
    let mut dumps = replicas.iter().map(|(id, r)| (id, dump(&r.store)));
    let (first_id, first) = dumps.next().expect("a replica");
    assert!(first.contains("ledger:"), "the ledger has entries");
    for (id, d) in dumps {
        let differ = first.lines().zip(d.lines()).find(|(a, b)| a != b);
        assert_eq!(differ, None, "replica {id} against replica {first_id}");
        assert_eq!(first, d, "replica {id} against replica {first_id}");
    }
}

/// Sends one account's writes through `leader`'s proposer, all at once (so they share
/// entries), checks each answer, and gives the index of the leader's last entry (its
/// callers are answered as the entry is applied, before Raft's metrics say so).
async fn write(leader: &Replica, serial: u32, hash: &str) -> u64 {
    let answers = futures::future::join_all(
        writes(serial, hash)
            .into_iter()
            .map(|op| leader.handle.call_write(op)),
    )
    .await;
    let mut answers = answers.into_iter().map(|a| a.expect("a majority takes it"));
    let opened = answers
        .next()
        .expect("opened")
        .into_account()
        .expect("kind");
    assert_eq!(opened.expect("opens").number, number(serial));
    let funded = answers.next().expect("funded").into_state().expect("kind");
    assert_eq!(funded, TransferState::Committed);
    if let Some(moved) = answers.next() {
        match moved.into_two_pc().expect("kind").expect("runs").pop() {
            Some(Some(Input::LocalDone { states, .. })) => {
                assert_eq!(states, vec![TransferState::Committed]);
            }
            other => panic!("a local transfer answers LocalDone, not {other:?}"),
        }
    }
    leader
        .raft
        .metrics()
        .borrow()
        .last_applied
        .expect("applied")
        .index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_survive_their_leader_and_a_new_one_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = branch_node::store::hash_password("replica password").expect("hashes");
    let router = Router::default();
    let never = SnapshotPolicy::Never;
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        replicas.insert(id, start(dir.path(), id, &router, never.clone()).await);
    }
    let members: BTreeMap<ReplicaId, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(format!("replica-{id}"))))
        .collect();
    replicas[&1]
        .raft
        .initialize(members)
        .await
        .expect("initializes");

    // Entries committed by a majority reach every replica's store the same way.
    let leader = leader_among(&replicas).await;
    let mut last = 0;
    for serial in 1..=20 {
        last = write(&replicas[&leader], serial, &hash).await;
    }
    same_everywhere(&replicas, last).await;

    // A follower takes no writes: its callers are told it is not the leader.
    let follower = replicas
        .keys()
        .find(|&&id| id != leader)
        .copied()
        .expect("one");
    let refused = replicas[&follower]
        .handle
        .call_write(writes(99, &hash).remove(0))
        .await;
    assert!(matches!(refused, Err(StoreError::NotLeader)), "{refused:?}");

    // The leader goes: the other two elect one and lose nothing committed.
    let old = replicas.remove(&leader).expect("leader");
    router.0.lock().expect("router").remove(&leader);
    old.raft.shutdown().await.expect("stops");
    let leader = leader_among(&replicas).await;
    for serial in 21..=30 {
        last = write(&replicas[&leader], serial, &hash).await;
    }
    same_everywhere(&replicas, last).await;

    // Compact the log into a snapshot; a new, empty replica joins and catches up.
    let raft = replicas[&leader].raft.clone();
    raft.trigger()
        .snapshot()
        .await
        .expect("asks for a snapshot");
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot built",
        )
        .await
        .expect("snapshot built");
    raft.trigger().purge_log(last).await.expect("purges");
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .expect("log purged");
    let joined = start(dir.path(), 4, &router, never).await;
    replicas.insert(4, joined);
    raft.add_learner(4, BasicNode::new("replica-4"), true)
        .await
        .expect("adds a learner");
    let members: std::collections::BTreeSet<ReplicaId> = replicas.keys().copied().collect();
    raft.change_membership(members, false)
        .await
        .expect("changes membership");
    let purged = last;
    last = write(&replicas[&leader], 31, &hash).await;
    same_everywhere(&replicas, last).await;
    let installed = replicas[&4].raft.metrics().borrow().snapshot;
    assert!(
        installed.is_some_and(|s| s.index >= purged),
        "the new replica caught up by snapshot: {installed:?}"
    );

    for (_, r) in replicas {
        r.raft.shutdown().await.expect("stops");
        drop(r.writer);
    }
}

/// A fresh log store and state machine (a new branch store behind its writer) in a
/// directory of their own, for openraft's storage suite; the guard keeps both alive.
struct FreshStores;

struct Kept {
    _dir: tempfile::TempDir,
    _writer: Writer,
}

impl openraft::testing::StoreBuilder<Replicated, LogStore, StateMachine, Kept> for FreshStores {
    async fn build(
        &self,
    ) -> Result<(Kept, LogStore, StateMachine), openraft::StorageError<ReplicaId>> {
        // One branch's replicas share its keys: a snapshot is its store's pages.
        static KEYS: std::sync::OnceLock<branch_node::keys::DataKeys> = std::sync::OnceLock::new();
        let keys = KEYS.get_or_init(branch_node::keys::DataKeys::generate);
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            branch_node::store::Store::open(&dir.path().join("b.db"), keys, HERE, Durability::Full)
                .expect("opens");
        let writer = Writer::spawn(store);
        let sm = StateMachine::new(writer.handle());
        let log = LogStore::open(&dir.path().join("raft.db"), writer.keys()).expect("opens");
        let kept = Kept {
            _dir: dir,
            _writer: writer,
        };
        Ok((kept, log, sm))
    }
}

/// openraft's own storage suite (its log, vote, membership, apply, purge and snapshot
/// contract) passes on the log store and the state machine, as the 2PC stores pass the
/// coordinator's conformance suite.
#[test]
fn log_store_and_state_machine_pass_openraft_storage_suite() {
    openraft::testing::Suite::test_all(FreshStores).expect("openraft's storage suite");
}
