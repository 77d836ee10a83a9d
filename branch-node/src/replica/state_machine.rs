//! A replica's state machine is its branch store. Committed entries are applied through
//! the store's writer, all the entries of one call in one SQLite transaction, together
//! with the id of the last one (`replica_state`), so after a crash a replica knows
//! exactly which entries its store holds. A snapshot is a copy of the whole store file
//! made between writer batches; installing one replaces the store's contents with it.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageIOError, StoredMembership,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::BranchId;

use super::proposer::Waiting;
use super::{ReplicaId, ReplicaStorageError, Replicated, read_error, write_error};
use crate::store::copy::copy_pages;
use crate::store::ops::WriteResult;
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};

/// The membership as a replica stores it.
type Membership = StoredMembership<ReplicaId, openraft::BasicNode>;
/// The id of the last entry a store holds, and the membership it holds.
type Applied = (Option<LogId<ReplicaId>>, Membership);
/// A snapshot's description as openraft wants it.
type Meta = SnapshotMeta<ReplicaId, openraft::BasicNode>;

/// The last snapshot built or installed here: its description and the store file.
type Current = Arc<Mutex<Option<(Meta, Vec<u8>)>>>;

/// A replica's branch store, as Raft's state machine.
#[derive(Clone, Debug)]
pub struct StateMachine {
    writer: WriterHandle,
    /// The callers of this replica's own proposals, answered once applied here.
    waiting: Waiting,
    /// The last snapshot built or installed here.
    current: Current,
}

impl StateMachine {
    /// The state machine over the store behind `writer`.
    pub fn new(writer: WriterHandle) -> StateMachine {
        StateMachine {
            writer,
            waiting: Waiting::default(),
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// The callers of proposals made here, for this replica's proposer.
    pub fn waiting(&self) -> Waiting {
        self.waiting.clone()
    }

    fn keep(&self, meta: &Meta, bytes: &[u8]) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = Some((meta.clone(), bytes.to_vec()));
    }
}

/// Reads a value of the replica's state from the store.
pub(super) fn state_get<T: DeserializeOwned + Serialize>(
    c: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let bytes: Option<Vec<u8>> = c
        .prepare_cached("SELECT value FROM replica_state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| wire::codec::decode_record(&b).map_err(|e| StoreError::Malformed(e.to_string())))
        .transpose()
}

/// Writes a value of the replica's state, in the caller's transaction.
fn state_put<T: Serialize>(c: &Connection, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes =
        wire::codec::encode_record(value).map_err(|e| StoreError::Malformed(e.to_string()))?;
    c.prepare_cached("INSERT OR REPLACE INTO replica_state (key, value) VALUES (?1, ?2)")?
        .execute(params![key, bytes])?;
    Ok(())
}

/// The last applied entry's id and the membership, as the store holds them.
fn applied(c: &Connection) -> Result<Applied, StoreError> {
    Ok((
        state_get(c, "applied")?,
        state_get(c, "membership")?.unwrap_or_default(),
    ))
}

/// The answers of one applied entry's ops, for the callers of its proposal.
type Answers = (u64, Vec<WriteResult>);

/// Applies committed entries in order, in the writer's transaction: each op in its own
/// savepoint (a refusal undoes that op alone, as on the leader), then the last id.
fn apply_entries(
    c: &Connection,
    me: BranchId,
    entries: Vec<Entry<Replicated>>,
) -> Result<Vec<Answers>, StoreError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry.payload {
            EntryPayload::Normal(batch) => {
                let mut results = Vec::with_capacity(batch.ops.len());
                for op in batch.ops {
                    c.execute_batch("SAVEPOINT entry_op")?;
                    let result = op.apply(c, me)?;
                    if !result.keeps() {
                        c.execute_batch("ROLLBACK TO entry_op")?;
                    }
                    c.execute_batch("RELEASE entry_op")?;
                    results.push(result);
                }
                out.push((batch.proposal, results));
            }
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(entry.log_id), m);
                state_put(c, "membership", &stored)?;
            }
            EntryPayload::Blank => {}
        }
        state_put(c, "applied", &entry.log_id)?;
    }
    Ok(out)
}

/// The store file copied between batches, with the applied id and membership it holds.
fn copy_store(store: &mut Store) -> Result<(Vec<u8>, Applied), StoreError> {
    let applied = applied(&store.conn)?;
    let path = store_path(&store.conn)?.with_extension("snapshot");
    let _ = std::fs::remove_file(&path);
    {
        let mut dst = crate::store::connect_rw(&path, store.keys())?;
        copy_pages(&store.conn, &mut dst)?;
        dst.execute_batch("PRAGMA journal_mode = DELETE")?;
    }
    let bytes = std::fs::read(&path).map_err(|e| StoreError::file("reading", &path, e));
    let _ = std::fs::remove_file(&path);
    Ok((bytes?, applied))
}

/// Replaces the store's contents with a snapshot's copy of the file.
fn restore_store(store: &mut Store, bytes: &[u8]) -> Result<(), StoreError> {
    let path = store_path(&store.conn)?.with_extension("incoming");
    std::fs::write(&path, bytes).map_err(|e| StoreError::file("writing", &path, e))?;
    let restored = (|| {
        let src = crate::store::connect(
            &path,
            store.keys(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(copy_pages(&src, &mut store.conn)?)
    })();
    let _ = std::fs::remove_file(&path);
    restored
}

fn store_path(c: &Connection) -> Result<std::path::PathBuf, StoreError> {
    c.path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .ok_or_else(|| StoreError::Malformed("the store has no file".into()))
}

impl RaftSnapshotBuilder<Replicated> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Replicated>, ReplicaStorageError> {
        let (bytes, (last_log_id, last_membership)) = self
            .writer
            .exclusive(copy_store)
            .await
            .and_then(|r| r)
            .map_err(|e| read_error(&e))?;
        let snapshot_id = last_log_id.map_or_else(|| "empty".into(), |l| l.to_string());
        let meta = Meta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.keep(&meta, &bytes);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<Replicated> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<Applied, ReplicaStorageError> {
        self.writer
            .call_local(|c, _| applied(c))
            .await
            .map_err(|e| read_error(&e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, ReplicaStorageError>
    where
        I: IntoIterator<Item = Entry<Replicated>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let count = entries.len();
        let proposals: Vec<u64> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(b) => Some(b.proposal),
                _ => None,
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = self.waiting.clone();
        // Answered on the writer thread once the transaction committed, before the
        // writer's batch-end hooks run (as a single branch's writes are).
        let applied = self.writer.local_then(
            move |c, me| apply_entries(c, me, entries),
            move |r| {
                let r = match r {
                    Ok(answers) => {
                        for (proposal, results) in answers {
                            waiting.answer(proposal, results);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let e = std::sync::Arc::new(e);
                        for p in proposals {
                            waiting.fail(p, &e);
                        }
                        Err(StoreError::Applied(e))
                    }
                };
                let _ = tx.send(r);
            },
        );
        applied
            .and(rx.await.map_err(|_| StoreError::WriterGone))
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(vec![(); count])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, ReplicaStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), ReplicaStorageError> {
        let bytes = snapshot.into_inner();
        let copy = bytes.clone();
        self.writer
            .exclusive(move |store| restore_store(store, &copy))
            .await
            .and_then(|r| r)
            .map_err(|e| write_error(&e))?;
        self.keep(meta, &bytes);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Replicated>>, ReplicaStorageError> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        Ok(current.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
