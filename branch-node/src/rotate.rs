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
/// The SMS log (`node::SMS_LOG_FILE`), sealed by `encrypt` with the stores.
const SMS_LOG: &str = "sms.log";

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

/// `branch-node encrypt`: converts a stopped data dir made before encryption at rest
/// (its stores plain SQLite) as a rotation would: new data keys, wrapped by `kek`;
/// every store file copied under them to `FILE.new`; the keys to `data.keys.new`; then
/// all renamed into place by [`finish`]. The national ids are sealed when the store is
/// next opened (its vault migration). Returns how many files were converted.
pub fn encrypt(data_dir: &Path, kek: &KekSource) -> anyhow::Result<usize> {
    let _lock = lock(data_dir, Use::Replace)?;
    finish(data_dir)?;
    let keys_path = data_dir.join(KEYS_FILE);
    anyhow::ensure!(
        !keys_path.exists(),
        "{} has {KEYS_FILE}: it is encrypted already",
        data_dir.display()
    );
    let db = data_dir.join(DB_FILE);
    anyhow::ensure!(
        crate::keys::is_plain_sqlite(&db),
        "{} is not a plain SQLite store",
        db.display()
    );
    let branch: i64 = rusqlite::Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?
        .query_row("SELECT value FROM meta WHERE key = 'branch_id'", [], |r| {
            r.get(0)
        })?;
    let branch = wire::BranchId(u16::try_from(branch)?);
    let keys = DataKeys::generate();
    let files: Vec<PathBuf> = FILES
        .iter()
        .map(|f| data_dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    let sms = data_dir.join(SMS_LOG);
    let sealed_sms = || -> anyhow::Result<()> {
        if sms.is_file() {
            let text = crate::store::outbox::sealed_log(&sms, &keys)?;
            let to = with_suffix(&sms, ".new");
            let _ = std::fs::remove_file(&to);
            let mut f = crate::init::owner_only_file(&to)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
        }
        Ok(())
    };
    let converted = files.iter().try_for_each(|f| export_plain(f, &keys));
    if let Err(e) = converted.and_then(|()| sealed_sms()) {
        let _ = std::fs::remove_file(with_suffix(&sms, ".new"));
        files
            .iter()
            .for_each(|f| drop(std::fs::remove_file(with_suffix(f, ".new"))));
        return Err(e);
    }
    crate::keys::write_to(&with_suffix(&keys_path, ".new"), &keys, branch, kek)?;
    finish(data_dir)?;
    Ok(files.len())
}

/// Copies the plain SQLite file `file` to `FILE.new` under `keys` (SQLCipher's export:
/// its backup API does not copy between plain and encrypted files), durably.
fn export_plain(file: &Path, keys: &DataKeys) -> anyhow::Result<()> {
    rusqlite::Connection::open(file)?
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let to = with_suffix(file, ".new");
    let _ = std::fs::remove_file(&to);
    {
        let enc = connect_rw(&to, keys)?;
        enc.execute(
            "ATTACH DATABASE ?1 AS plain KEY ''",
            [file.to_string_lossy()],
        )?;
        enc.query_row("SELECT sqlcipher_export('main', 'plain')", [], |_| Ok(()))?;
        let version: i64 = enc.query_row("PRAGMA plain.user_version", [], |r| r.get(0))?;
        enc.pragma_update(None, "user_version", version)?;
        enc.execute_batch("DETACH DATABASE plain; PRAGMA journal_mode = DELETE")?;
    }
    std::fs::File::open(&to)?.sync_all()?;
    Ok(())
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
    for f in FILES.iter().chain(&[SMS_LOG]).map(|f| data_dir.join(f)) {
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

#[cfg(test)]
mod encrypt_tests {
    use super::*;
    use crate::store::{Durability, Store};
    use wire::BranchId;

    const NATIONAL_ID: &str = "OLD-NID-55501234";
    const PHONE: &str = "+1 555 321 9876";

    /// A data dir as this program made them before encryption at rest: a plain store
    /// holding one customer, and a plain SMS log.
    fn old_data_dir(root: &Path) -> PathBuf {
        let dir = root.join("old");
        std::fs::create_dir(&dir).expect("mkdir");
        let conn = crate::store::plain_store_before_vault(&dir.join(DB_FILE), BranchId(1));
        conn.execute(
            "INSERT INTO customers (national_id, phone, first_name, last_name, sms_opt_in, created_at_ms)
             VALUES (?1, ?2, 'Old', 'Timer', 1, 0)",
            [NATIONAL_ID, PHONE],
        )
        .expect("customer");
        drop(conn);
        std::fs::write(dir.join(SMS_LOG), format!("5\tto={PHONE}\tYour balance\n")).expect("sms");
        dir
    }

    fn holds(path: &Path, value: &str) -> bool {
        let bytes = std::fs::read(path).unwrap_or_default();
        bytes.windows(value.len()).any(|w| w == value.as_bytes())
    }

    #[test]
    fn an_old_plain_data_dir_is_refused_until_encrypted_and_then_holds_nothing_in_clear() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = old_data_dir(tmp.path());
        let refused = crate::keys::unlock(&dir, None, None).expect_err("plain");
        assert_eq!(refused.code(), "not_encrypted", "{refused}");
        let kek = tmp.path().join("kek");
        crate::keys::keygen(&kek).expect("keygen");
        assert_eq!(
            encrypt(&dir, &KekSource::File(kek.clone())).expect("encrypts"),
            1
        );
        let again = encrypt(&dir, &KekSource::File(kek)).expect_err("twice");
        assert!(again.to_string().contains("encrypted already"), "{again}");
        let keys = crate::keys::unlock(&dir, Some(BranchId(1)), None).expect("keys");
        let store =
            Store::open(&dir.join(DB_FILE), &keys, BranchId(1), Durability::Full).expect("opens");
        let hash = crate::store::SealedId::new(&keys, NATIONAL_ID).hash;
        let stored: String = store
            .conn()
            .query_row("SELECT national_id_hash FROM customers", [], |r| r.get(0))
            .expect("row");
        assert_eq!(stored, hash, "sealed and hashed by the vault migration");
        drop(store);
        let sms = crate::store::outbox::read_log(&dir.join(SMS_LOG), &keys).expect("log");
        assert!(sms[0].contains(PHONE), "{sms:?}");
        for f in std::fs::read_dir(&dir).expect("dir") {
            let f = f.expect("entry").path();
            assert!(
                !holds(&f, NATIONAL_ID) && !holds(&f, PHONE),
                "{} in clear",
                f.display()
            );
        }
    }
}
