//! A replica's Raft log, its vote and its committed mark, in an SQLite file of their
//! own beside the branch store (`synchronous=FULL`: an entry is on disk before Raft is
//! told it is, which is what "durable at a majority" rests on).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, Vote};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ReplicaId, ReplicaStorageError, Replicated, read_error, write_error};

/// The log file's tables: entries by index, and a few named values.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
";

/// A replica's log. Cloning shares the one connection (the reader and the writer are
/// one file).
#[derive(Clone, Debug)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
}

impl LogStore {
    /// Opens (or makes) the log file at `path`, encrypted under `keys` like the store.
    pub fn open(
        path: &Path,
        keys: &crate::keys::DataKeys,
    ) -> Result<LogStore, crate::store::StoreError> {
        let conn = crate::store::connect_rw(path, keys)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<T: DeserializeOwned + Serialize>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ReplicaStorageError> {
        let bytes: Option<Vec<u8>> = self
            .conn()
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| read_error(&e))?;
        decoded(bytes)
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), ReplicaStorageError> {
        let bytes = wire::codec::encode_record(value).map_err(|e| write_error(&e))?;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)",
                params![key, bytes],
            )
            .map_err(|e| write_error(&e))?;
        Ok(())
    }

    fn last_entry(&self) -> Result<Option<Entry<Replicated>>, ReplicaStorageError> {
        let bytes: Option<Vec<u8>> = self
            .conn()
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| read_error(&e))?;
        decoded(bytes)
    }
}

/// A stored record, if there is one, decoded.
fn decoded<T: DeserializeOwned + Serialize>(
    bytes: Option<Vec<u8>>,
) -> Result<Option<T>, ReplicaStorageError> {
    bytes
        .map(|b| wire::codec::decode_record(&b).map_err(|e| read_error(&e)))
        .transpose()
}

/// SQLite wants signed integers; log indexes stay far below `i64::MAX`.
fn sql_index(i: u64) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

impl RaftLogReader<Replicated> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Replicated>>, ReplicaStorageError> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
            .map_err(|e| read_error(&e))?;
        let rows = stmt
            .query_map(params![sql_index(from), sql_index(to)], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map_err(|e| read_error(&e))?;
        let mut out = Vec::new();
        for bytes in rows {
            let bytes = bytes.map_err(|e| read_error(&e))?;
            out.push(wire::codec::decode_record(&bytes).map_err(|e| read_error(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<Replicated> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Replicated>, ReplicaStorageError> {
        let last_purged_log_id = self.get::<Option<LogId<ReplicaId>>>("purged")?.flatten();
        let last_log_id = match self.last_entry()? {
            Some(e) => Some(*e.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), ReplicaStorageError> {
        self.put("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, ReplicaStorageError> {
        self.get("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<ReplicaId>>,
    ) -> Result<(), ReplicaStorageError> {
        self.put("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<ReplicaId>>, ReplicaStorageError> {
        Ok(self.get::<Option<LogId<ReplicaId>>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Replicated>,
    ) -> Result<(), ReplicaStorageError>
    where
        I: IntoIterator<Item = Entry<Replicated>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| write_error(&e))?;
        for entry in entries {
            let bytes = wire::codec::encode_record(&entry).map_err(|e| write_error(&e))?;
            tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![sql_index(entry.log_id.index), bytes]))
                .map_err(|e| write_error(&e))?;
        }
        tx.commit().map_err(|e| write_error(&e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> Result<(), ReplicaStorageError> {
        self.conn()
            .execute("DELETE FROM log WHERE idx >= ?1", [sql_index(log_id.index)])
            .map_err(|e| write_error(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> Result<(), ReplicaStorageError> {
        self.put("purged", &Some(log_id))?;
        self.conn()
            .execute("DELETE FROM log WHERE idx <= ?1", [sql_index(log_id.index)])
            .map_err(|e| write_error(&e))?;
        Ok(())
    }
}
