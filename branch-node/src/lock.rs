//! One process per data dir: every `branch-node` command that reads or changes a data
//! dir holds advisory locks (`flock`) on two files in it for as long as it works there,
//! so a second `run`, or a `restore` or `verify` under a running node, fails at once
//! with the holder named, instead of two processes serving one store.
//!
//! - `serve.lock`, exclusive: a node serves this dir (`run`), or no node may while the
//!   command works (`verify`, `restore`, `init`, `init-replica`).
//! - `data.lock`: shared while the dir's files stay as they are (`run`, `backup`,
//!   `verify`); exclusive while they are made or replaced (`restore`, `init`,
//!   `init-replica`).
//!
//! The kernel drops a lock when its process ends, however it ends, so a lock left by a
//! dead process never blocks a restart. The lock files stay (removing one would let two
//! processes lock two different files of one name). Who holds a lock is read from
//! `/proc/locks` (its PID and command line), where the system has it.

use std::fs::File;
use std::path::{Path, PathBuf};

/// The file `run` locks exclusively for as long as it serves.
pub const SERVE_LOCK_FILE: &str = "serve.lock";
/// The file whose lock says whether the data dir's files may change under a command.
pub const DATA_LOCK_FILE: &str = "data.lock";

/// What a command does with a data dir, and so which locks it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// `branch-node run`: serves the dir's store.
    Serve,
    /// `branch-node backup`: reads the store, beside a running node or not.
    Read,
    /// `branch-node verify`: reads the whole dir with no node running.
    Audit,
    /// `restore`, `init`, `init-replica`: makes or replaces the dir's files.
    Replace,
}

impl Use {
    /// (serve.lock, data.lock): `None` not taken, `Some(true)` exclusive, `Some(false)` shared.
    fn modes(self) -> [(&'static str, Option<bool>); 2] {
        let (serve, data) = match self {
            Use::Serve => (Some(true), Some(false)),
            Use::Read => (None, Some(false)),
            Use::Audit => (Some(true), Some(false)),
            Use::Replace => (Some(true), Some(true)),
        };
        [(SERVE_LOCK_FILE, serve), (DATA_LOCK_FILE, data)]
    }
}

/// Why a data dir could not be locked. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds a lock this command needs (code `dir_in_use`).
    #[error("{dir} is in use by {holder}: {advice}")]
    InUse {
        dir: PathBuf,
        holder: String,
        advice: &'static str,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LockError {
    /// The stable code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            LockError::InUse { .. } => "dir_in_use",
            LockError::Io { .. } => "lock_failed",
        }
    }
}

/// The locks a command holds on a data dir; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct DirLock {
    _files: Vec<File>,
}

/// Takes the locks `what` needs on data dir `dir` (which must exist), without
/// waiting: held by another process, it fails at once naming that process.
pub fn lock(dir: &Path, what: Use) -> Result<DirLock, LockError> {
    let mut files = Vec::new();
    for (name, mode) in what.modes() {
        let Some(exclusive) = mode else { continue };
        let path = dir.join(name);
        let file = open(&path)?;
        let taken = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match taken {
            Ok(()) => files.push(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    holder: holder(&path),
                    advice: advice(what, name),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LockError::Io { path, source });
            }
        }
    }
    Ok(DirLock { _files: files })
}

/// The lock file at `path`, created owner-only if missing.
fn open(path: &Path) -> Result<File, LockError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|source| LockError::Io {
        path: path.to_owned(),
        source,
    })
}

/// What an operator should do when `what` finds lock file `name` held.
fn advice(what: Use, name: &str) -> &'static str {
    match (what, name) {
        (Use::Serve, SERVE_LOCK_FILE) => {
            "a branch node already serves this data dir; stop it first (one process per data dir)"
        }
        (Use::Serve | Use::Read, _) => "a restore or init is replacing its files; wait for it",
        (Use::Audit, SERVE_LOCK_FILE) => {
            "stop the node first (verify audits a stopped data dir), or verify a backup"
        }
        (Use::Audit, _) => "a restore or init is replacing its files; wait for it",
        (Use::Replace, _) => {
            "stop the node or command using it first; nothing may run on a data dir while it is made or restored"
        }
    }
}

/// Who holds the lock on `path`, as well as the system says: "pid 123 (branch-node run
/// --data-dir ...)".
fn holder(path: &Path) -> String {
    let pids = lock_holders(path);
    if pids.is_empty() {
        return "another process".to_owned();
    }
    let named: Vec<String> = pids
        .iter()
        .map(|pid| match command_line(*pid) {
            Some(cmd) => format!("pid {pid} ({cmd})"),
            None => format!("pid {pid}"),
        })
        .collect();
    named.join(", ")
}

/// The PIDs `/proc/locks` gives for flock locks on the file at `path` (empty where the
/// system has no `/proc/locks`).
fn lock_holders(path: &Path) -> Vec<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(meta), Ok(locks)) = (
            std::fs::metadata(path),
            std::fs::read_to_string("/proc/locks"),
        ) else {
            return Vec::new();
        };
        let wanted = device_inode(meta.dev(), meta.ino());
        let mut pids: Vec<u32> = locks
            .lines()
            .filter_map(|line| holder_of(line, &wanted))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Vec::new()
    }
}

/// A file as `/proc/locks` names it: "major:minor:inode", the device numbers in hex.
fn device_inode(dev: u64, ino: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// The PID of one `/proc/locks` line (`1: FLOCK ADVISORY WRITE 1845 fe:00:5431644 0
/// EOF`) when it is a flock lock on the file `wanted`.
fn holder_of(line: &str, wanted: &str) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // A waiting lock's line has "->" after the number; held locks only.
    match fields.as_slice() {
        [_, "FLOCK", _, _, pid, file, ..] if *file == wanted => pid.parse().ok(),
        _ => None,
    }
}

/// A process's command line, spaces between its arguments, at most 120 characters.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let mut text = words.join(" ");
    if text.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_use(r: Result<DirLock, LockError>) -> String {
        match r {
            Err(e @ LockError::InUse { .. }) => e.to_string(),
            other => panic!("expected in use, got {other:?}"),
        }
    }

    #[test]
    fn uses_that_conflict_are_refused_and_those_that_share_are_not() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let serving = lock(dir, Use::Serve).expect("first run");
        let err = in_use(lock(dir, Use::Serve));
        assert!(err.contains("already serves"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "names the holder: {err}"
        );
        let backup = lock(dir, Use::Read).expect("a backup beside a running node");
        assert!(in_use(lock(dir, Use::Audit)).contains("stop the node first"));
        assert!(in_use(lock(dir, Use::Replace)).contains("stop the node"));
        drop(serving);
        assert!(
            in_use(lock(dir, Use::Replace)).contains("in use"),
            "a backup still reads it"
        );
        let audit = lock(dir, Use::Audit).expect("verify beside a backup");
        drop((backup, audit));
        let replacing = lock(dir, Use::Replace).expect("nothing else holds it");
        for u in [Use::Serve, Use::Read, Use::Audit] {
            in_use(lock(dir, u));
        }
        drop(replacing);
        lock(dir, Use::Serve).expect("free again once dropped");
    }

    #[test]
    fn lock_files_are_owner_only_and_a_missing_dir_is_an_io_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let _held = lock(tmp.path(), Use::Serve).expect("lock");
        #[cfg(unix)]
        for name in [SERVE_LOCK_FILE, DATA_LOCK_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(name))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let err = lock(&tmp.path().join("absent"), Use::Read).expect_err("no dir");
        assert_eq!(err.code(), "lock_failed");
    }

    #[test]
    fn proc_locks_lines_name_their_holder() {
        let line = "1: FLOCK  ADVISORY  WRITE 1845 fe:00:5431644 0 EOF";
        assert_eq!(holder_of(line, "fe:00:5431644"), Some(1845));
        assert_eq!(holder_of(line, "fe:00:1"), None);
        let posix = "2: POSIX  ADVISORY  WRITE 99 fe:00:5431644 0 EOF";
        assert_eq!(holder_of(posix, "fe:00:5431644"), None);
        assert_eq!(device_inode(0xfe00, 7), "fe:00:7");
    }
}
