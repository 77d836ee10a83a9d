//! `branch-node rotate-data-key`: the store key replaced and every SQLite file of the
//! data dir (`branch.db`, a replica's `raft.db`) re-encrypted under it, during a short
//! stop: SQLCipher encrypts each page as it is written, so a store cannot be half under
//! one key while a node writes to it, and the copy of every page under the new key
//! needs the files to hold still (a few seconds per GiB here).
//!
//! Crash safety: each file is copied to `FILE.new` under the new key and made durable,
//! then the new keys are written to `data.keys.new`; only then are the files renamed
//! over the old ones, `data.keys.new` last. [`finish`] (run by `run` and by this
//! command before anything else) completes a rotation that `data.keys.new` proves was
//! ready, and otherwise removes its leftovers: the store is always under the key
//! `data.keys` names.

use std::path::{Path, PathBuf};

use rusqlite::OpenFlags;

use crate::init::DB_FILE;
use crate::keys::{DataKeys, KEYS_FILE, KekSource};
use crate::lock::{Use, lock};
use crate::replica::node::LOG_FILE;
use crate::store::copy::copy_pages;
use crate::store::{connect, connect_rw};

/// The files a rotation re-encrypts, where they exist.
const FILES: [&str; 2] = [DB_FILE, LOG_FILE];

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Rotates data dir `data_dir`'s store key (a stopped node: its lock is taken). With
/// `keys_from` (another replica's `data.keys`, already rotated) its store key is taken
/// instead of a new one: a branch's replicas share keys. Returns how many files were
/// re-encrypted.
pub fn rotate(
    data_dir: &Path,
    kek: Option<&KekSource>,
    keys_from: Option<&Path>,
) -> anyhow::Result<usize> {
    let _lock = lock(data_dir, Use::Replace)?;
    finish(data_dir)?;
    let keys_path = data_dir.join(KEYS_FILE);
    let branch = crate::keys::branch_of(&keys_path)?;
    let keys = crate::keys::unlock(data_dir, Some(branch), kek)?;
    let next = match keys_from {
        Some(f) => crate::keys::unlock_file(f, Some(branch), kek)?,
        None => keys.with_new_store_key(),
    };
    let source = match kek {
        Some(k) => k.clone(),
        None => crate::keys::source_of(&keys_path)?,
    };
    let files: Vec<PathBuf> = FILES
        .iter()
        .map(|f| data_dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    let copied = files.iter().try_for_each(|f| copy_under(f, &keys, &next));
    if let Err(e) = copied {
        files
            .iter()
            .for_each(|f| drop(std::fs::remove_file(with_suffix(f, ".new"))));
        return Err(e);
    }
    crate::keys::write_to(&with_suffix(&keys_path, ".new"), &next, branch, &source)?;
    finish(data_dir)?;
    Ok(files.len())
}

/// Copies every page of `file` (under `keys`) to `FILE.new` under `next`, durably.
fn copy_under(file: &Path, keys: &DataKeys, next: &DataKeys) -> anyhow::Result<()> {
    let src = connect(file, keys, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    src.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let to = with_suffix(file, ".new");
    let _ = std::fs::remove_file(&to);
    {
        let mut dst = connect_rw(&to, next)?;
        copy_pages(&src, &mut dst)?;
        dst.execute_batch("PRAGMA journal_mode = DELETE")?;
    }
    std::fs::File::open(&to)?.sync_all()?;
    Ok(())
}

/// Completes or undoes a rotation that stopped part way (see the module's doc).
pub fn finish(data_dir: &Path) -> anyhow::Result<()> {
    let keys_path = data_dir.join(KEYS_FILE);
    let ready = with_suffix(&keys_path, ".new");
    for f in FILES.iter().map(|f| data_dir.join(f)) {
        let new = with_suffix(&f, ".new");
        if !new.exists() {
            continue;
        }
        if ready.exists() {
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(with_suffix(&f, side));
            }
            std::fs::rename(&new, &f)?;
        } else {
            std::fs::remove_file(&new)?;
        }
    }
    if ready.exists() {
        std::fs::rename(&ready, &keys_path)?;
    }
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store};
    use wire::BranchId;

    /// A data dir with a store of branch 1 under keys wrapped by a key file beside it.
    fn data_dir(root: &Path) -> PathBuf {
        let dir = root.join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        let keys = crate::keys::unlock_or_make(&dir, BranchId(1)).expect("keys");
        drop(Store::open(&dir.join(DB_FILE), &keys, BranchId(1), Durability::Full).expect("store"));
        dir
    }

    fn opens(dir: &Path) -> bool {
        crate::store::connect_in_dir(&dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .is_ok_and(|c| {
                c.query_row("SELECT count(*) FROM meta", [], |_| Ok(()))
                    .is_ok()
            })
    }

    #[test]
    fn a_rotation_re_encrypts_the_store_and_the_old_key_no_longer_opens_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = data_dir(tmp.path());
        let old = crate::keys::unlock(&dir, None, None).expect("keys");
        assert_eq!(rotate(&dir, None, None).expect("rotates"), 1);
        assert!(
            opens(&dir),
            "the store opens under the keys data.keys names"
        );
        let stale = connect(&dir.join(DB_FILE), &old, OpenFlags::SQLITE_OPEN_READ_ONLY);
        assert!(matches!(
            stale,
            Err(crate::store::StoreError::Unreadable(_))
        ));
    }

    #[test]
    fn a_rotation_cut_short_is_undone_before_its_keys_and_finished_after() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = data_dir(tmp.path());
        let keys = crate::keys::unlock(&dir, None, None).expect("keys");
        let next = keys.with_new_store_key();
        let db = dir.join(DB_FILE);
        // Cut before the new keys were written: the copy is dropped.
        copy_under(&db, &keys, &next).expect("copies");
        finish(&dir).expect("finishes");
        assert!(!with_suffix(&db, ".new").exists() && opens(&dir));
        // Cut after: the rotation completes.
        copy_under(&db, &keys, &next).expect("copies");
        let source = crate::keys::source_of(&dir.join(KEYS_FILE)).expect("source");
        let ready = with_suffix(&dir.join(KEYS_FILE), ".new");
        crate::keys::write_to(&ready, &next, BranchId(1), &source).expect("keys");
        finish(&dir).expect("finishes");
        assert!(!ready.exists() && opens(&dir));
        let now = crate::keys::unlock(&dir, None, None).expect("keys");
        assert_eq!(*now.sqlcipher_key(), *next.sqlcipher_key());
    }
}
