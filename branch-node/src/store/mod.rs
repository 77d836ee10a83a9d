//! The branch store: one SQLite file holding the branch's customers, accounts, users,
//! ledger, 2PC records and notification outbox. Implements `coordinator::Shard`.
//!
//! Opening sets WAL and `synchronous=FULL` ([`Durability::Full`]; `Normal` exists for
//! benchmarks and must be asked for), turns foreign keys on, refuses a file that fails
//! `PRAGMA integrity_check`, and applies the numbered migrations of `schema.rs`.
//!
//! Every operation is a function over a `&Connection` that checks first and writes
//! after, so a refusal writes nothing to accounts or the ledger. [`Store`] runs each in
//! its own SQLite transaction; [`writer::Writer`] runs many queued ones in one
//! transaction (group commit, one fsync) with a savepoint around each.

pub mod audit;
pub(crate) mod auth;
pub(crate) mod bank;
pub mod copy;
pub mod evidence;
pub mod fence;
pub(crate) mod ledger;
pub mod ops;
pub mod outbox;
pub mod reader;
pub mod recover;
mod schema;
pub(crate) mod sessions;
pub mod syncer;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub(crate) mod trace;
pub(crate) mod twopc;
pub mod writer;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use wire::{AccountNumber, BranchId, TransferId};

use crate::keys::DataKeys;

pub use auth::{LoginOutcome, LoginRow, UserInfo, hash_password};
pub use bank::{Movement, SealedId, audit_trail};
pub use ledger::{LedgerReport, LedgerViolation, SMS_PER_PHONE_PER_HOUR_MAX};
pub use sessions::SessionRow;
pub use twopc::IdRecord;

/// How hard a `sql_commit` pushes data to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a returned commit survives power loss. The default.
    Full,
    /// `synchronous=NORMAL`: a returned commit may be lost on power loss (not on a
    /// process crash). For benchmarks only; never chosen silently.
    Normal,
}

/// A failure of the store itself. Business refusals are `wire::Refusal` values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database failed its integrity check, refusing to serve it: {0}")]
    Corrupt(String),
    #[error("database belongs to branch {found}, not {expected}")]
    WrongBranch { found: BranchId, expected: BranchId },
    #[error(
        "{0} is missing: a running branch never starts on an empty database (restore it, or make a new branch with `branch-node init`)"
    )]
    Missing(String),
    /// SQLCipher could not read the file with the key it was given.
    #[error(
        "{0} cannot be read with this data dir's key (a wrong key, another branch's store, or not a store)"
    )]
    Unreadable(String),
    /// The data keys could not be unwrapped or found.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("database has no branch id: it was not made by `branch-node init`")]
    NotInitialized,
    #[error("database schema version {found} is newer than this program ({known})")]
    TooNew { found: usize, known: usize },
    #[error("stored record is malformed: {0}")]
    Malformed(String),
    #[error("password hashing failed: {0}")]
    Password(String),
    #[error("the store's writer thread has stopped")]
    WriterGone,
    #[error("the store's read-only connections are gone")]
    ReaderGone,
    /// The write batch this change was in failed (every change of it is undone): the
    /// batch's one SQLite error, shared by all its callers.
    #[error("group commit failed: {0}")]
    Batch(std::sync::Arc<rusqlite::Error>),
    /// A 2PC storage command failed inside a write.
    #[error("2pc storage failed: {0}")]
    Shard(coordinator::ShardError),
    /// Copying the store's pages failed (a snapshot, a backup).
    #[error("copying the store failed: {0}")]
    Copy(#[from] copy::CopyError),
    /// The replicas could not take a write (Raft's own error).
    #[error("replication failed: {0}")]
    Replication(String),
    /// Applying a log entry failed: the apply's error, shared by its entries' callers.
    #[error("{0}")]
    Applied(std::sync::Arc<StoreError>),
    /// The 2PC engine's task ended by panicking or being cancelled.
    #[error("2pc engine task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A file beside the store could not be read or written.
    #[error("{verb} {path}: {source}")]
    File {
        verb: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The writer broke its own contract (a job answered without running): a bug.
    #[error("store contract broken: {0}")]
    Defensive(&'static str),
    #[error("this replica is not its branch's leader: the change may still be made by the leader")]
    NotLeader,
}

impl StoreError {
    /// `verb` (reading, writing) the file at `path` failed with `source`.
    pub fn file(verb: &'static str, path: &std::path::Path, source: std::io::Error) -> StoreError {
        StoreError::File {
            verb,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<StoreError> for coordinator::ShardError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Shard(e) => e,
            e => coordinator::ShardError::Io(coordinator::StoreFailure::new(e)),
        }
    }
}

/// The page size of every store file (SQLCipher's `cipher_page_size`): each page a
/// commit changes is encrypted and authenticated whole (see ARCHITECTURE.md "Keys at
/// rest" for what it costs).
pub const PAGE_BYTES: i64 = 4096;

/// How long a statement waits for another connection's lock, in milliseconds.
pub(crate) const BUSY_TIMEOUT_MS: u64 = 5_000;

/// One branch's database, used by one owner at a time.
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    me: BranchId,
    keys: DataKeys,
}

/// Opens the SQLCipher database at `path` under `keys`' store key with `flags`, and
/// reads its first page: a wrong key (or a file that is no store) is refused here, in
/// one line, before anything is written.
pub fn connect(path: &Path, keys: &DataKeys, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = keyed(path, keys, flags)?;
    // Each page's HMAC with SHA-256 rather than SQLCipher's default SHA-512: as strong
    // for a 256-bit key, and twice as fast where the CPU has SHA instructions (local
    // transfers: see ARCHITECTURE.md "Keys at rest").
    conn.pragma_update(None, "cipher_hmac_algorithm", "HMAC_SHA256")?;
    conn.pragma_update(None, "cipher_page_size", PAGE_BYTES)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            Err(StoreError::Unreadable(path.display().to_string()))
        }
        r => r.map(drop).map_err(StoreError::from),
    }?;
    Ok(conn)
}

/// How many times a connection is opened when SQLCipher refuses to attach its key.
const KEY_ATTACH_TRIES: u32 = 3;

/// A connection to `path` with the store key attached (nothing read yet). SQLCipher's
/// `PRAGMA key` failed, rarely, while many connections were opened at once in one
/// process (one run of the unit tests in three); a failed attach leaves that connection
/// unusable, and nothing was read or written, so a fresh connection is tried again.
fn keyed(path: &Path, keys: &DataKeys, flags: OpenFlags) -> Result<Connection, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let conn = Connection::open_with_flags(path, flags)?;
        // A wrong key is our error to report, once, not SQLCipher's lines on stderr.
        conn.pragma_update(None, "cipher_log_level", "NONE")?;
        match conn.pragma_update(None, "key", &*keys.sqlcipher_key()) {
            Ok(()) => return Ok(conn),
            Err(e) if tries >= KEY_ATTACH_TRIES => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "SQLCipher refused the key once; opening again");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Opens the store (or Raft log) file `path` of a data dir with that data dir's keys,
/// unwrapped by the key-encryption key its `data.keys` names: for offline tools and
/// tests that are handed a file.
pub fn connect_in_dir(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let keys = crate::keys::unlock(dir, None, None)?;
    connect(path, &keys, flags)
}

/// [`connect`] with SQLite's default flags (read-write, created if missing).
pub fn connect_rw(path: &Path, keys: &DataKeys) -> Result<Connection, StoreError> {
    connect(path, keys, OpenFlags::default())
}

/// Milliseconds since the Unix epoch (the store stamps rows with it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A `u64` milliseconds value as SQLite's signed integer.
pub(crate) fn sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(crate) fn id_blob(id: TransferId) -> [u8; 16] {
    id.0.to_be_bytes()
}

pub(crate) fn blob_id(blob: &[u8]) -> Result<TransferId, StoreError> {
    let bytes: [u8; 16] = blob
        .try_into()
        .map_err(|_| StoreError::Malformed("transfer id is not 16 bytes".into()))?;
    Ok(TransferId(u128::from_be_bytes(bytes)))
}

impl Store {
    /// Opens the database of an initialized branch `me`, for `branch-node run`: a missing
    /// file, a database without a branch id or with another branch's is refused, so
    /// that a lost file never turns into an empty branch that answers "presumed
    /// abort" for transfers it had committed.
    pub fn open_existing(
        path: &Path,
        keys: &DataKeys,
        me: BranchId,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let conn = connect(
            path,
            keys,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let branch: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'branch_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .unwrap_or(None);
        if branch.is_none() {
            return Err(StoreError::NotInitialized);
        }
        drop(conn);
        Store::open(path, keys, me, durability)
    }

    /// Opens (creating if needed) the database of branch `me` at `path`, encrypted
    /// under `keys`.
    pub fn open(
        path: &Path,
        keys: &DataKeys,
        me: BranchId,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        let mut conn = connect_rw(path, keys)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Savepoint sub-journals in memory: the writer opens one savepoint per queued
        // operation, and with the default they were a temp file written page by page
        // (half of all pwrite calls under cross-branch load). They only serve a
        // rollback inside the open transaction, so a crash loses nothing by it.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        // Query planner stability: plans never depend on bound values. Without it the
        // bundled SQLite (built with STAT4) re-parses hot statements whenever a new
        // value is bound to some parameters: that was 43% of a local transfer's time.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(check));
        }
        migrate(&mut conn, keys)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'branch_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('branch_id', ?1)",
                    [i64::from(me.0)],
                )?;
            }
            Some(b) if b == i64::from(me.0) => {}
            Some(b) => {
                let found = BranchId(u16::try_from(b).unwrap_or(u16::MAX));
                return Err(StoreError::WrongBranch {
                    found,
                    expected: me,
                });
            }
        }
        Ok(Store {
            conn,
            me,
            keys: keys.clone(),
        })
    }

    /// The branch this store belongs to.
    pub fn branch(&self) -> BranchId {
        self.me
    }

    /// The keys it is encrypted under (and seals vault values with).
    pub fn keys(&self) -> &DataKeys {
        &self.keys
    }

    /// Runs `f` in one SQLite transaction: durable when this returns `Ok`, rolled back
    /// entirely on `Err`.
    pub(crate) fn in_tx<R>(
        &mut self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = f(&tx, self.me)?;
        tx.commit()?;
        Ok(r)
    }

    /// The teller sessions live at `now_ms` (expired ones are deleted), for the node's
    /// session table at start.
    pub fn live_sessions(&self, now_ms: u64) -> Result<Vec<(SessionRow, UserInfo)>, StoreError> {
        sessions::live(&self.conn, self.me, now_ms)
    }

    /// Read-only access for queries.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn account_number(&self, serial: i64) -> Result<AccountNumber, StoreError> {
        account_number(self.me, serial)
    }
}

pub(crate) fn account_number(me: BranchId, serial: i64) -> Result<AccountNumber, StoreError> {
    let serial = u32::try_from(serial)
        .map_err(|_| StoreError::Malformed(format!("account serial {serial}")))?;
    AccountNumber::new(me, serial).map_err(|e| StoreError::Malformed(e.to_string()))
}

fn migrate(conn: &mut Connection, keys: &DataKeys) -> Result<(), StoreError> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?
        .try_into()
        .unwrap_or(0);
    if applied > schema::MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: applied,
            known: schema::MIGRATIONS.len(),
        });
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i + 1 == schema::VAULT_MIGRATION {
            bank::seal_national_ids(&tx, keys)?;
        }
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// A plain (unencrypted) store of branch `me` at `path` as this program made them
/// before encryption at rest: the migrations before the vault's, nothing encrypted.
#[cfg(test)]
pub(crate) fn plain_store_before_vault(path: &Path, me: BranchId) -> Connection {
    let conn = Connection::open(path).expect("a plain file");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    for sql in &schema::MIGRATIONS[..schema::VAULT_MIGRATION - 1] {
        conn.execute_batch(sql).expect("migration");
    }
    let version = i64::try_from(schema::VAULT_MIGRATION - 1).unwrap_or(0);
    conn.pragma_update(None, "user_version", version)
        .expect("version");
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('branch_id', ?1)",
        [i64::from(me.0)],
    )
    .expect("branch id");
    conn
}
