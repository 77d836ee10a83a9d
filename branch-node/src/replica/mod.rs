//! Replicas of one branch: Raft (openraft) over a log of the writer's batches of
//! [`WriteOp`]s. Each replica keeps the log in its own SQLite file (`log_store`) and
//! applies committed entries to its own branch store (`state_machine`), so a change is
//! durable once a majority holds its entry on disk, and every replica's store is the
//! same after the same entries (the ops carry every input they need).

// openraft's storage traits answer with its `StorageError` (over 200 bytes); the
// helpers that build those answers return it too.
#![allow(clippy::result_large_err)]

pub mod check;
pub mod log_store;
pub mod node;
pub mod proposer;
pub mod state_machine;
pub mod transport;

use openraft::{StorageError, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::store::ops::WriteOp;

/// One log entry's payload: writes the leader's proposer gathered, applied together in
/// one transaction on every replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Names the proposal on the replica that made it, whose callers wait for the
    /// answers; another replica ignores it.
    pub proposal: u64,
    pub ops: Vec<WriteOp>,
}

openraft::declare_raft_types!(
    /// The types a branch's Raft group uses: entries carry a [`Batch`], a replica is
    /// named by a `u64` and reached at a text address.
    pub Replicated:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<Replicated>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's id within its branch.
pub type ReplicaId = u64;
/// The Raft node of one replica.
pub type Raft = openraft::Raft<Replicated>;
/// What a storage call of a replica fails with.
pub type ReplicaStorageError = StorageError<ReplicaId>;

/// A failed read of the log or the replica's state.
fn read_error(e: &(impl std::error::Error + 'static)) -> ReplicaStorageError {
    StorageIOError::read(e).into()
}

/// A failed write of the log or the replica's state.
fn write_error(e: &(impl std::error::Error + 'static)) -> ReplicaStorageError {
    StorageIOError::write(e).into()
}
