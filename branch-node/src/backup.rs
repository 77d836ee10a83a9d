//! `branch-node backup` and `branch-node restore`: a consistent copy of a branch's
//! database taken while the node runs (SQLite's online backup API, all pages in one
//! step inside one read transaction, so the copy is one moment of the branch), and
//! its way back into a data dir.
//!
//! What a restore means: the branch is back as it was at the backup. Transfers in doubt
//! then are finished by the node's recovery when it starts (it asks their
//! coordinators). Whatever the branch did after the backup is gone from it, committed
//! answers included: a backup is for a lost disk, and the newer it is the less is lost.
//! The backup is encrypted like the store (SQLCipher, the branch's store key); beside it
//! goes `FILE.keys`, a copy of the data dir's wrapped data keys, useless without the
//! key-encryption key, which never goes with a backup. The signing key file is not in
//! the backup either (keep it apart, as safely as the backup).
//!
//! A replicated branch's backup (taken from any of its replicas) is one copy of the
//! branch, not of a replica's place in the branch's Raft log: it is restored only when
//! every replica is lost, and starts a new log. One restored replica makes that log from
//! the backup; the others restore with `join` (their store is replaced by the new
//! leader's snapshot) or are made anew with `init-replica`.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use crate::keys::{DataKeys, KEYS_FILE, KekSource};
use crate::store::connect;

use crate::init::{DB_FILE, KEY_FILE, mark_bootstrap, owner_only_file};
use crate::lock::{Use, lock};
use crate::replica::node::LOG_FILE;
use crate::store::copy::copy_pages;

/// What a backup or restore copied, for the operator.
#[derive(Debug, Clone)]
pub struct Copied {
    pub branch: i64,
    pub accounts: i64,
    pub ledger_entries: i64,
    pub legs_in_doubt: i64,
    /// Taken from a replica of a replicated branch.
    pub replicated: bool,
}

/// How a restored replica of a replicated branch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Not replicated: the branch runs from the restored store as before.
    Alone,
    /// Makes the branch's new log from the restored store, alone, at its first run.
    NewLog,
    /// Waits for the replica that makes the new log, and takes its snapshot.
    Join,
}

/// The keys file that goes with backup file `backup`: `FILE.keys`.
pub fn keys_beside(backup: &Path) -> std::path::PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".keys");
    name.into()
}

/// Reads what `db` holds, and refuses a file that is not a sound branch database.
fn describe(db: &Path, keys: &DataKeys) -> anyhow::Result<Copied> {
    let conn = connect(db, keys, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    anyhow::ensure!(
        check == "ok",
        "{} fails SQLite's integrity check: {check}",
        db.display()
    );
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    Ok(Copied {
        branch: count("SELECT value FROM meta WHERE key = 'branch_id'")
            .with_context(|| format!("{} is not a branch database", db.display()))?,
        accounts: count("SELECT count(*) FROM accounts")?,
        ledger_entries: count("SELECT count(*) FROM ledger")?,
        legs_in_doubt: count(
            "SELECT count(*) FROM legs WHERE decision IS NULL AND vote IS NOT NULL",
        )?,
        replicated: count(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'replica_state'",
        )? > 0
            && count("SELECT count(*) FROM replica_state")? > 0,
    })
}

/// Copies the database of data dir `data_dir` to the new file `to` (readable by its
/// owner only, encrypted), and its wrapped keys to `to.keys`, while the node may be
/// running. `kek` unwraps the keys where not the one they name.
pub fn backup(data_dir: &Path, to: &Path, kek: Option<&KekSource>) -> anyhow::Result<Copied> {
    let db = data_dir.join(DB_FILE);
    anyhow::ensure!(
        db.is_file(),
        "{} has no database ({DB_FILE})",
        data_dir.display()
    );
    let _lock = lock(data_dir, Use::Read)?;
    let keys = crate::keys::unlock(data_dir, None, kek)?;
    let src = connect(&db, &keys, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let beside = keys_beside(to);
    anyhow::ensure!(
        !beside.exists(),
        "{} exists; refusing to overwrite it",
        beside.display()
    );
    // Made first, owner-only, never over an existing file; removed if the copy fails.
    drop(owner_only_file(to).with_context(|| format!("cannot create {}", to.display()))?);
    copy_into(&src, to, &keys)
        .and_then(|()| Ok(crate::keys::copy(&data_dir.join(KEYS_FILE), &beside)?))
        .and_then(|()| describe(to, &keys))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(to);
            let _ = std::fs::remove_file(&beside);
        })
}

fn copy_into(src: &Connection, to: &Path, keys: &DataKeys) -> anyhow::Result<()> {
    let mut dst = crate::store::connect_rw(to, keys)?;
    copy_pages(src, &mut dst)?;
    dst.execute_batch("PRAGMA journal_mode = DELETE")?;
    // The backup's moment, on this machine's clock: a restore asks the other branches
    // for what happened since.
    dst.execute(
        "INSERT INTO meta (key, value) VALUES ('backup_at_ms', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [crate::store::sql_ms(crate::node::now_ms())],
    )?;
    Ok(())
}

/// Puts backup `from` into data dir `data_dir` as its database. The data dir must hold
/// the branch's key and no database or Raft log (move a damaged one away first). A
/// replicated branch's backup forgets its place in the old log: the replica makes the
/// branch's new log at its first run, or with `join` waits to be given it.
///
/// The backup's keys (`FROM.keys`, unwrapped with `kek` or the KEK they name) become
/// the data dir's, which must have none or the same.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    join: bool,
    kek: Option<&KekSource>,
) -> anyhow::Result<(Copied, Rejoin)> {
    let lock = lock_for_restore(data_dir)?;
    restore_locked(from, data_dir, (join, kek), &lock)
}

/// Locks data dir `data_dir` for a restore: it must hold the branch's key.
pub fn lock_for_restore(data_dir: &Path) -> anyhow::Result<crate::lock::DirLock> {
    anyhow::ensure!(
        data_dir.join(KEY_FILE).is_file(),
        "{} has no {KEY_FILE}: restore into the data dir that holds the branch's key",
        data_dir.display()
    );
    Ok(lock(data_dir, Use::Replace)?)
}

/// [`restore`], with the data dir's lock already held (`_lock`), so the network's part
/// of the restore (`crate::restore`) can follow under the same lock.
pub fn restore_locked(
    from: &Path,
    data_dir: &Path,
    (join, kek): (bool, Option<&KekSource>),
    _lock: &crate::lock::DirLock,
) -> anyhow::Result<(Copied, Rejoin)> {
    let db = data_dir.join(DB_FILE);
    for f in [db.clone(), data_dir.join(format!("{DB_FILE}-wal"))] {
        anyhow::ensure!(
            !f.exists(),
            "{} exists: move it away before restoring",
            f.display()
        );
    }
    anyhow::ensure!(
        !data_dir.join(LOG_FILE).exists(),
        "{} holds a replica's Raft log ({LOG_FILE}): a replica that kept its log is not \
         restored; if only some replicas are lost, make them anew with init-replica",
        data_dir.display()
    );
    let keys = backup_keys(from, data_dir, kek)?;
    let copied = describe(from, &keys)?;
    anyhow::ensure!(
        copied.replicated || !join,
        "{} is a backup of a branch that is not replicated: restore it without --join",
        from.display()
    );
    let mut file = owner_only_file(&db)?;
    let mut put = || -> anyhow::Result<Rejoin> {
        std::io::copy(&mut std::fs::File::open(from)?, &mut file)?;
        file.sync_all()?;
        take_keys(from, data_dir)?;
        rejoin((&db, &keys), data_dir, copied.replicated, join)
    };
    // A restore that fails half-way leaves no database behind (it can be run again).
    let rejoin = put().inspect_err(|_| {
        let _ = std::fs::remove_file(&db);
    })?;
    Ok((copied, rejoin))
}

/// The keys of backup `from` (its `FROM.keys`), which must also be the data dir's where
/// it has keys already (a restore never leaves a store its keys do not open).
fn backup_keys(from: &Path, data_dir: &Path, kek: Option<&KekSource>) -> anyhow::Result<DataKeys> {
    let beside = keys_beside(from);
    anyhow::ensure!(
        beside.is_file(),
        "{} is missing: a backup cannot be read without the keys file made beside it",
        beside.display()
    );
    let keys = crate::keys::unlock_file(&beside, None, kek)?;
    let own = data_dir.join(KEYS_FILE);
    if own.is_file() {
        let mine = crate::keys::unlock(data_dir, None, kek)?;
        anyhow::ensure!(
            *mine.sqlcipher_key() == *keys.sqlcipher_key(),
            "{} holds other data keys than the backup's: move it away to restore with {}",
            own.display(),
            beside.display()
        );
    }
    Ok(keys)
}

/// Copies the backup's keys file into the data dir where it has none.
fn take_keys(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let own = data_dir.join(KEYS_FILE);
    if !own.exists() {
        crate::keys::copy(&keys_beside(from), &own)?;
    }
    Ok(())
}

/// Takes a restore back: the database (and SQLite's files beside it) and the marker it
/// made go, so it can be run again.
pub fn undo_restore(data_dir: &Path, rejoin: Rejoin) {
    for f in [
        DB_FILE.to_owned(),
        format!("{DB_FILE}-wal"),
        format!("{DB_FILE}-shm"),
    ] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    if rejoin == Rejoin::NewLog {
        let _ = std::fs::remove_file(data_dir.join(crate::replica::node::BOOTSTRAP_FILE));
    }
}

/// How the store just restored at `db` starts: a replicated branch's forgets its place
/// in the old log, and unless it joins, its replica is marked to make the new one.
fn rejoin(
    (db, keys): (&Path, &DataKeys),
    data_dir: &Path,
    replicated: bool,
    join: bool,
) -> anyhow::Result<Rejoin> {
    if !replicated {
        return Ok(Rejoin::Alone);
    }
    crate::store::connect_rw(db, keys)?.execute("DELETE FROM replica_state", [])?;
    if join {
        return Ok(Rejoin::Join);
    }
    mark_bootstrap(data_dir)?;
    Ok(Rejoin::NewLog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::node::BOOTSTRAP_FILE;
    use crate::store::{Durability, Store};

    /// A fresh branch database at `path`; `replicated` gives it a place in a log.
    fn database(path: &Path, replicated: bool) {
        let dir = path.parent().expect("a folder");
        let keys = crate::keys::unlock_or_make(dir, wire::BranchId(1)).expect("keys");
        drop(Store::open(path, &keys, wire::BranchId(1), Durability::Full).expect("store"));
        crate::keys::copy(&dir.join(KEYS_FILE), &keys_beside(path)).expect("keys beside");
        if replicated {
            crate::store::connect_rw(path, &keys)
                .expect("open")
                .execute(
                    "INSERT INTO replica_state (key, value) VALUES ('applied', x'00')",
                    [],
                )
                .expect("place");
        }
    }

    /// A data dir with only a key file in it (restore reads no more of it).
    fn keyed_dir(root: &Path, name: &str) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(KEY_FILE), b"key").expect("key");
        dir
    }

    fn places(db: &Path) -> i64 {
        crate::store::connect_in_dir(db, OpenFlags::default())
            .expect("open")
            .query_row("SELECT count(*) FROM replica_state", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn a_plain_backup_restores_alone_and_refuses_join() {
        let tmp = tempfile::tempdir().expect("tmp");
        let from = tmp.path().join("plain.db");
        database(&from, false);
        let dir = keyed_dir(tmp.path(), "a");
        let err = restore(&from, &dir, true, None).expect_err("join of a plain backup");
        assert!(err.to_string().contains("not replicated"), "{err}");
        assert!(!dir.join(DB_FILE).exists(), "a refusal writes nothing");
        let (copied, rejoin) = restore(&from, &dir, false, None).expect("restores");
        assert_eq!((copied.replicated, rejoin), (false, Rejoin::Alone));
        assert!(!dir.join(BOOTSTRAP_FILE).exists());
        let err = restore(&from, &dir, false, None).expect_err("over a database");
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn a_replica_backup_starts_a_new_log_at_one_replica_and_the_others_join() {
        let tmp = tempfile::tempdir().expect("tmp");
        let from = tmp.path().join("replica.db");
        database(&from, true);
        let first = keyed_dir(tmp.path(), "r1");
        let (copied, rejoin) = restore(&from, &first, false, None).expect("restores");
        assert_eq!((copied.replicated, rejoin), (true, Rejoin::NewLog));
        assert!(first.join(BOOTSTRAP_FILE).is_file(), "makes the new log");
        assert_eq!(
            places(&first.join(DB_FILE)),
            0,
            "the old log's place is gone"
        );
        let other = keyed_dir(tmp.path(), "r2");
        let (_, rejoin) = restore(&from, &other, true, None).expect("joins");
        assert_eq!(rejoin, Rejoin::Join);
        assert!(
            !other.join(BOOTSTRAP_FILE).exists(),
            "only one makes the log"
        );
        assert_eq!(places(&other.join(DB_FILE)), 0);
        assert_eq!(places(&from), 1, "the backup itself is unchanged");
    }

    #[test]
    fn a_replica_that_kept_its_log_is_not_restored() {
        let tmp = tempfile::tempdir().expect("tmp");
        let from = tmp.path().join("replica.db");
        database(&from, true);
        let dir = keyed_dir(tmp.path(), "kept");
        std::fs::write(dir.join(LOG_FILE), b"").expect("log");
        let err = restore(&from, &dir, false, None).expect_err("a kept log");
        assert!(err.to_string().contains("Raft log"), "{err}");
        assert!(!dir.join(DB_FILE).exists() && !dir.join(BOOTSTRAP_FILE).exists());
        // A failure after the copy (here: a marker already there) leaves no database.
        let marked = keyed_dir(tmp.path(), "marked");
        std::fs::write(marked.join(BOOTSTRAP_FILE), b"").expect("marker");
        restore(&from, &marked, false, None).expect_err("cannot mark");
        assert!(!marked.join(DB_FILE).exists(), "nothing half-restored");
        let nokey = tmp.path().join("nokey");
        std::fs::create_dir_all(&nokey).expect("mkdir");
        let err = restore(&from, &nokey, false, None).expect_err("no key");
        assert!(err.to_string().contains("has no"), "{err}");
    }
}
