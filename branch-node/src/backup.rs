//! `branch-node backup` and `branch-node restore`: a consistent copy of a branch's
//! database taken while the node runs (SQLite's online backup API, all pages in one
//! step inside one read transaction, so the copy is one moment of the branch), and
//! its way back into a data dir.
//!
//! What a restore means: the branch is back as it was at the backup. Transfers in doubt
//! then are finished by the node's recovery when it starts (it asks their
//! coordinators). Whatever the branch did after the backup is gone from it, committed
//! answers included: a backup is for a lost disk, and the newer it is the less is lost.
//! The key file is not in the backup (keep it apart, as safely as the backup).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use crate::init::{DB_FILE, KEY_FILE, owner_only_file};

/// How often a busy database is tried again, and how long apart (milliseconds).
const BACKUP_TRIES_MAX: u32 = 500;
const BACKUP_RETRY_MS: u64 = 10;

/// What a backup or restore copied, for the operator.
#[derive(Debug, Clone)]
pub struct Copied {
    pub branch: i64,
    pub accounts: i64,
    pub ledger_entries: i64,
    pub legs_in_doubt: i64,
}

/// Reads what `db` holds, and refuses a file that is not a sound branch database.
fn describe(db: &Path) -> anyhow::Result<Copied> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", db.display()))?;
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
    })
}

/// Copies the database of data dir `data_dir` to the new file `to` (readable by its
/// owner only), while the node may be running.
pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<Copied> {
    let db = data_dir.join(DB_FILE);
    anyhow::ensure!(
        db.is_file(),
        "{} has no database ({DB_FILE})",
        data_dir.display()
    );
    let src = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // Made first, owner-only, never over an existing file; removed if the copy fails.
    drop(owner_only_file(to).with_context(|| format!("cannot create {}", to.display()))?);
    copy_into(&src, to)
        .and_then(|()| describe(to))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(to);
        })
}

fn copy_into(src: &Connection, to: &Path) -> anyhow::Result<()> {
    let mut dst = Connection::open(to)?;
    copy_pages(src, &mut dst)?;
    dst.execute_batch("PRAGMA journal_mode = DELETE")?;
    Ok(())
}

/// Copies every page of `src`'s database over `dst`'s with SQLite's backup API, in
/// one step, so no write to `src` lands between pages of the copy. Busy or locked
/// (the node checkpointing): tries again a few times.
pub(crate) fn copy_pages(src: &Connection, dst: &mut Connection) -> anyhow::Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let b = Backup::new(src, dst)?;
    let mut tries = 0;
    loop {
        match b.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            _ if tries < BACKUP_TRIES_MAX => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(BACKUP_RETRY_MS));
            }
            other => anyhow::bail!("the database stayed busy ({other:?}); try again"),
        }
    }
}

/// Puts backup `from` into data dir `data_dir` as its database. The data dir must hold
/// the branch's key and no database (move a damaged one away first).
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Copied> {
    anyhow::ensure!(
        data_dir.join(KEY_FILE).is_file(),
        "{} has no {KEY_FILE}: restore into the data dir that holds the branch's key",
        data_dir.display()
    );
    let db = data_dir.join(DB_FILE);
    for f in [db.clone(), data_dir.join(format!("{DB_FILE}-wal"))] {
        anyhow::ensure!(
            !f.exists(),
            "{} exists: move it away before restoring",
            f.display()
        );
    }
    let copied = describe(from)?;
    let mut file = owner_only_file(&db)?;
    let mut src = std::fs::File::open(from)?;
    std::io::copy(&mut src, &mut file)?;
    file.sync_all()?;
    Ok(copied)
}
