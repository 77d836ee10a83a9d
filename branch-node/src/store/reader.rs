//! Reads beside the writer: a few read-only connections to the same WAL database, so a
//! balance, a history page, a listing or a login's user row never waits in the
//! writer's queue behind a batch of transfers. WAL gives each read one consistent
//! snapshot of the last committed batch, and a read is answered only once that batch is
//! durable (the writer's [`Watermark`]): a read shows nothing that is not durable.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;
use wire::BranchId;

use super::syncer::Watermark;
use super::{BUSY_TIMEOUT_MS, StoreError};
use crate::keys::DataKeys;

/// A pool of read-only connections; cheap to clone.
#[derive(Clone, Debug)]
pub struct Reader {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
    me: BranchId,
    /// The writer's: a read is answered once every batch it may have seen is durable.
    mark: Arc<Watermark>,
}

impl Reader {
    /// Opens `connections` read-only connections to the database at `path`, which the
    /// writer has already opened (and migrated).
    pub fn open(
        path: &Path,
        keys: &DataKeys,
        me: BranchId,
        connections: usize,
        mark: Arc<Watermark>,
    ) -> Result<Reader, StoreError> {
        let mut idle = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let conn = super::connect(
                path,
                keys,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )?;
            idle.push(conn);
        }
        Ok(Reader {
            inner: Arc::new(Pool {
                slots: Semaphore::new(idle.len()),
                idle: Mutex::new(idle),
                me,
                mark,
            }),
        })
    }

    /// Runs `f` on an idle connection, on the blocking pool; waits for one if all are busy.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let slot = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| StoreError::ReaderGone)?;
        let pool = Arc::clone(&self.inner);
        let (result, seen) = tokio::task::spawn_blocking(move || {
            let conn = pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .ok_or(StoreError::ReaderGone)?;
            let result = f(&conn, pool.me);
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            Ok::<_, StoreError>((result, pool.mark.begun()))
        })
        .await
        .map_err(|_| StoreError::ReaderGone)??;
        // The connection is free for the next read while this one waits: the writer
        // commits a batch before its fsync, so what this read saw may not be durable
        // yet, and an answer never shows what a crash could undo.
        drop(slot);
        self.inner.mark.wait_durable(seen).await?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store};

    #[tokio::test]
    async fn a_read_is_answered_only_once_what_it_may_have_seen_is_durable() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (keys, me) = (DataKeys::generate(), BranchId(1));
        let path = tmp.path().join("b.db");
        let _store = Store::open(&path, &keys, me, Durability::Full).expect("store");
        let mark = Arc::new(Watermark::default());
        let reader = Reader::open(&path, &keys, me, 1, Arc::clone(&mark)).expect("reader");
        let one = || reader.read(|c, _| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?));
        assert_eq!(one().await.expect("nothing to wait for"), 1);
        // A batch whose commit began, not yet synced: the read runs, its answer waits.
        let n = mark.begin();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), one()).await;
        assert!(waiting.is_err(), "answered before the batch was durable");
        mark.made_durable(n);
        assert_eq!(one().await.expect("durable now"), 1);
    }
}
