//! Keys at rest. A branch's data keys (one for its SQLite files, one for the vault that
//! holds national ids and the SMS log) are random and live in `data.keys` in the data
//! dir, wrapped (ChaCha20-Poly1305, the branch id bound in) by a key-encryption key
//! (KEK) that never lives there: a key file the operator keeps elsewhere (owner-only), a
//! command's output (a KMS or HSM client), or a passphrase (argon2id; its salt and
//! parameters are kept beside the wrapped keys). `data.keys` records which, so `run`,
//! `backup`, `verify` and the rest need no flag; a flag overrides it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use wire::BranchId;
use zeroize::{Zeroize, Zeroizing};

/// The wrapped data keys in a data dir (and beside each backup, as `FILE.keys`).
pub const KEYS_FILE: &str = "data.keys";
/// Where the passphrase of a passphrase-wrapped data dir is read from when set.
pub const PASSPHRASE_ENV: &str = "BANKMATE_PASSPHRASE";
/// Where `rekey` reads a new passphrase from when set.
pub const NEW_PASSPHRASE_ENV: &str = "BANKMATE_NEW_PASSPHRASE";
/// argon2id for a passphrase KEK: 64 MiB, 3 passes, 1 lane (about 0.2 s here).
const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
const ARGON2_PASSES: u32 = 3;
const ARGON2_LANES: u32 = 1;
/// The format of `data.keys`.
const FORMAT: u32 = 1;
/// The most a key command may print, in bytes (more is refused, and not read).
const COMMAND_OUTPUT_MAX: u64 = 4096;
/// How long a key command may take to print the key (a KMS that never answers must
/// not hold a start forever).
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// ChaCha20-Poly1305's nonce and tag, in bytes.
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// What `data.keys` wraps: the store key and the vault key.
const KEYS_BYTES: usize = 64;
/// Shortest passphrase accepted.
const PASSPHRASE_CHARS_MIN: usize = 12;

/// Why keys could not be made, read or used. Nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0} has no {KEYS_FILE}: without it the store cannot be read (put back the .keys file kept with a backup)"
    )]
    Missing(PathBuf),
    #[error("{path} is damaged ({why}): put back the .keys file kept with a backup")]
    Damaged { path: PathBuf, why: String },
    #[error("the key-encryption key does not open {0} (wrong key file, key command or passphrase)")]
    WrongKek(PathBuf),
    #[error("{path} holds the keys of branch {found}, not of branch {expected}")]
    OtherBranch {
        path: PathBuf,
        found: u16,
        expected: u16,
    },
    #[error(
        "key file {path} may be read or written by group or others (mode {mode:o}): chmod 600 it"
    )]
    KeyFileOpen { path: PathBuf, mode: u32 },
    #[error("key file {0} must hold 64 hex digits (make one with `branch-node keygen FILE`)")]
    KeyFileBad(PathBuf),
    #[error("key command `{command}` failed: {why}")]
    Command { command: String, why: String },
    #[error(
        "the keys are wrapped by a passphrase: set {PASSPHRASE_ENV} or run on a terminal to be asked"
    )]
    NoPassphrase,
    #[error(
        "{0} holds a store made before encryption at rest: convert it with `branch-node encrypt --data-dir DIR --key-file FILE` (or --key-command, --passphrase)"
    )]
    NotEncrypted(PathBuf),
    #[error("the passphrase must be at least {PASSPHRASE_CHARS_MIN} characters")]
    ShortPassphrase,
    #[error("the two passphrases differ")]
    PassphrasesDiffer,
    #[error(
        "a key-encryption key is needed: --key-file FILE (make one with `branch-node keygen FILE`), --key-command CMD or --passphrase"
    )]
    NoKek,
    #[error("{0} exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl KeyError {
    /// The stable code an operator's script may match on.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Missing(_) => "keys_missing",
            KeyError::NotEncrypted(_) => "not_encrypted",
            KeyError::Damaged { .. } => "keys_damaged",
            KeyError::WrongKek(_) => "wrong_key",
            KeyError::OtherBranch { .. } => "keys_of_other_branch",
            KeyError::KeyFileOpen { .. } => "key_file_not_private",
            KeyError::KeyFileBad(_) => "key_file_bad",
            KeyError::Command { .. } => "key_command_failed",
            KeyError::NoPassphrase | KeyError::ShortPassphrase | KeyError::PassphrasesDiffer => {
                "passphrase"
            }
            KeyError::NoKek => "no_key",
            KeyError::Exists(_) => "exists",
            KeyError::Io { .. } => "io",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the key-encryption key comes from, as the operator names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSource {
    /// 64 hex digits in a file only its owner may read.
    File(PathBuf),
    /// The standard output of `sh -c COMMAND`: 64 hex digits.
    Command(String),
    /// A passphrase from `BANKMATE_PASSPHRASE`, or asked on the terminal.
    Passphrase,
}

/// The data keys of one branch, shared by its replicas. Cheap to clone; the bytes are
/// wiped when the last clone goes.
#[derive(Clone)]
pub struct DataKeys(Arc<Secret>);

struct Secret {
    store: [u8; 32],
    vault: [u8; 32],
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.store.zeroize();
        self.vault.zeroize();
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

impl DataKeys {
    /// Fresh random keys.
    pub fn generate() -> DataKeys {
        DataKeys(Arc::new(Secret {
            store: rand::random(),
            vault: rand::random(),
        }))
    }

    /// These keys with a fresh store key (the vault key kept): a data-key rotation.
    pub fn with_new_store_key(&self) -> DataKeys {
        DataKeys(Arc::new(Secret {
            store: rand::random(),
            vault: self.0.vault,
        }))
    }

    /// The value of SQLCipher's `PRAGMA key` for the store key: a raw key, so opening
    /// costs no key derivation.
    pub fn sqlcipher_key(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("x'{}'", hex::encode(self.0.store)))
    }

    /// `plain` encrypted under the vault key for `purpose` (a random nonce first).
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        self.seal_with(rand::random(), purpose, plain)
    }

    /// [`DataKeys::seal`] with the nonce given: it must never be given again for
    /// another `plain` (a nonce drawn from a keyed hash of `plain` is never).
    pub fn seal_with(&self, nonce: [u8; 12], purpose: &str, plain: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0.vault));
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: purpose.as_bytes(),
                },
            )
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// What [`DataKeys::seal`] sealed for `purpose`; `None` if it was not sealed by
    /// these keys for it, or was changed.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_at_checked(NONCE_BYTES)?;
        ChaCha20Poly1305::new(Key::from_slice(&self.0.vault))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: purpose.as_bytes(),
                },
            )
            .ok()
    }

    /// A keyed hash of `value` for `purpose` (HMAC-SHA256 under the vault key): equal
    /// values give equal hashes, so a store finds a row by it without holding the value.
    pub fn lookup_hash(&self, purpose: &str, value: &str) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0.vault) else {
            return [0; 32];
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new([self.0.store.as_slice(), &self.0.vault].concat())
    }

    fn from_bytes(b: &[u8]) -> Option<DataKeys> {
        let (store, vault) = (b.get(..32)?, b.get(32..64)?);
        (b.len() == KEYS_BYTES).then(|| {
            DataKeys(Arc::new(Secret {
                store: store.try_into().unwrap_or([0; 32]),
                vault: vault.try_into().unwrap_or([0; 32]),
            }))
        })
    }
}

/// `data.keys` on disk.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct KeysFile {
    format: u32,
    branch: u16,
    kek: KekRecord,
    nonce: String,
    wrapped: String,
}

/// Which KEK wrapped the keys, and what is needed to make it again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum KekRecord {
    File {
        path: PathBuf,
    },
    Command {
        command: String,
    },
    Passphrase {
        salt: String,
        memory_kib: u32,
        passes: u32,
        lanes: u32,
    },
}

/// Makes `data.keys` in `data_dir` for branch `branch`, wrapped by `source` (never over
/// an existing file), and returns the keys.
pub fn create(data_dir: &Path, branch: BranchId, source: &KekSource) -> Result<DataKeys, KeyError> {
    let keys = DataKeys::generate();
    let (record, kek) = new_kek(source)?;
    write_new(
        &data_dir.join(KEYS_FILE),
        &wrap(&keys, branch, record, &kek),
    )?;
    Ok(keys)
}

/// Writes `keys` as `data.keys` of `data_dir` (a new replica of the branch, or a
/// rotation's new keys), wrapped by `source`.
pub fn write(
    data_dir: &Path,
    keys: &DataKeys,
    branch: BranchId,
    source: &KekSource,
) -> Result<(), KeyError> {
    write_to(&data_dir.join(KEYS_FILE), keys, branch, source)
}

/// Writes `keys` wrapped by `source` to the new file `path`.
pub fn write_to(
    path: &Path,
    keys: &DataKeys,
    branch: BranchId,
    source: &KekSource,
) -> Result<(), KeyError> {
    let (record, kek) = new_kek(source)?;
    write_new(path, &wrap(keys, branch, record, &kek))
}

/// The keys of `data_dir`, unwrapped with `over` or else the KEK `data.keys` names;
/// `branch` (where known) must be the branch they were made for.
pub fn unlock(
    data_dir: &Path,
    branch: Option<BranchId>,
    over: Option<&KekSource>,
) -> Result<DataKeys, KeyError> {
    let path = data_dir.join(KEYS_FILE);
    if !path.is_file() && is_plain_sqlite(&data_dir.join(STORE_FILE)) {
        return Err(KeyError::NotEncrypted(data_dir.to_owned()));
    }
    if !path.is_file() {
        return Err(KeyError::Missing(data_dir.to_owned()));
    }
    unlock_file(&path, branch, over)
}

/// The branch store's file name in a data dir (`init::DB_FILE`; named here too, as this
/// module stands below `init`).
const STORE_FILE: &str = "branch.db";

/// Whether the file at `path` is a plain (unencrypted) SQLite database: SQLite's own
/// header, which an encrypted file never shows.
pub fn is_plain_sqlite(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

/// The keys in the keys file at `path` (a data dir's, or a backup's `FILE.keys`).
pub fn unlock_file(
    path: &Path,
    branch: Option<BranchId>,
    over: Option<&KekSource>,
) -> Result<DataKeys, KeyError> {
    let file = read(path)?;
    if let Some(b) = branch.filter(|b| b.0 != file.branch) {
        return Err(KeyError::OtherBranch {
            path: path.to_owned(),
            found: file.branch,
            expected: b.0,
        });
    }
    let kek = kek_for(&file.kek, over)?;
    unwrap(&file, &kek).ok_or_else(|| KeyError::WrongKek(path.to_owned()))
}

/// The branch the keys file at `path` was made for.
pub fn branch_of(path: &Path) -> Result<BranchId, KeyError> {
    Ok(BranchId(read(path)?.branch))
}

/// Wraps `data_dir`'s keys by the KEK `new` instead (the old one from `old` or as
/// recorded): the store is not touched. The file is replaced in one rename.
pub fn rekey(data_dir: &Path, old: Option<&KekSource>, new: &KekSource) -> Result<(), KeyError> {
    let path = data_dir.join(KEYS_FILE);
    let file = read(&path)?;
    let keys = unlock(data_dir, None, old)?;
    let (record, kek) = new_kek(new)?;
    let next = path.with_extension("keys.next");
    let _ = std::fs::remove_file(&next);
    write_new(&next, &wrap(&keys, BranchId(file.branch), record, &kek))?;
    std::fs::rename(&next, &path).map_err(io(&path))?;
    sync_dir(data_dir)
}

/// The KEK record of the keys file at `path`, as a source (for writing new keys the
/// same way, as a rotation does).
pub fn source_of(path: &Path) -> Result<KekSource, KeyError> {
    Ok(match read(path)?.kek {
        KekRecord::File { path } => KekSource::File(path),
        KekRecord::Command { command } => KekSource::Command(command),
        KekRecord::Passphrase { .. } => KekSource::Passphrase,
    })
}

/// The keys of folder `dir`, made where missing with a generated key file in it,
/// `local.kek`: for tools and tests that handle a bare store file (a key file beside
/// the data is no protection; a branch's data dir never has one).
pub fn unlock_or_make(dir: &Path, branch: BranchId) -> Result<DataKeys, KeyError> {
    if dir.join(KEYS_FILE).is_file() {
        return unlock(dir, Some(branch), None);
    }
    let kek = dir.join("local.kek");
    if !kek.is_file() {
        keygen(&kek)?;
    }
    create(dir, branch, &KekSource::File(kek))
}

/// Makes a new KEK file at `path`: 32 random bytes as 64 hex digits, owner-only.
pub fn keygen(path: &Path) -> Result<(), KeyError> {
    let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    write_new(path, &format!("{}\n", hex::encode(*key)))
}

fn read(path: &Path) -> Result<KeysFile, KeyError> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing(path.to_owned()));
        }
        r => r.map_err(io(path))?,
    };
    let damaged = |why: String| KeyError::Damaged {
        path: path.to_owned(),
        why,
    };
    let file: KeysFile = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
    if file.format != FORMAT {
        return Err(damaged(format!("unknown format {}", file.format)));
    }
    let sizes = (hex::decode(&file.nonce), hex::decode(&file.wrapped));
    match sizes {
        (Ok(n), Ok(w)) if n.len() == NONCE_BYTES && w.len() == KEYS_BYTES + TAG_BYTES => Ok(file),
        _ => Err(damaged("the wrapped keys are not whole".into())),
    }
}

fn aad(branch: u16, kek: &KekRecord) -> Vec<u8> {
    let kek = serde_json::to_string(kek).unwrap_or_default();
    format!("bankmate data keys v{FORMAT} branch {branch} kek {kek}").into_bytes()
}

fn wrap(keys: &DataKeys, branch: BranchId, kek: KekRecord, key: &[u8; 32]) -> String {
    let nonce: [u8; 12] = rand::random();
    let wrapped = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &keys.bytes(),
                aad: &aad(branch.0, &kek),
            },
        )
        .unwrap_or_default();
    let file = KeysFile {
        format: FORMAT,
        branch: branch.0,
        kek,
        nonce: hex::encode(nonce),
        wrapped: hex::encode(wrapped),
    };
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

fn unwrap(file: &KeysFile, key: &[u8; 32]) -> Option<DataKeys> {
    let nonce = hex::decode(&file.nonce).ok()?;
    let wrapped = hex::decode(&file.wrapped).ok()?;
    let plain = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &wrapped,
                    aad: &aad(file.branch, &file.kek),
                },
            )
            .ok()?,
    );
    DataKeys::from_bytes(&plain)
}

/// A fresh KEK record for `source` and the KEK it gives.
fn new_kek(source: &KekSource) -> Result<(KekRecord, Zeroizing<[u8; 32]>), KeyError> {
    let record = match source {
        KekSource::File(p) => KekRecord::File {
            path: std::path::absolute(p).map_err(io(p))?,
        },
        KekSource::Command(c) => KekRecord::Command { command: c.clone() },
        KekSource::Passphrase => KekRecord::Passphrase {
            salt: hex::encode(rand::random::<[u8; 16]>()),
            memory_kib: ARGON2_MEMORY_KIB,
            passes: ARGON2_PASSES,
            lanes: ARGON2_LANES,
        },
    };
    let kek = match &record {
        KekRecord::Passphrase { .. } => passphrase_kek(&record, &new_passphrase()?)?,
        r => kek_for(r, None)?,
    };
    Ok((record, kek))
}

/// The KEK for `record`, from `over` where given.
fn kek_for(record: &KekRecord, over: Option<&KekSource>) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    match (over, record) {
        (Some(KekSource::File(p)), _) => file_kek(p),
        (Some(KekSource::Command(c)), _) => command_kek(c),
        (Some(KekSource::Passphrase), KekRecord::Passphrase { .. })
        | (None, KekRecord::Passphrase { .. }) => passphrase_kek(record, &passphrase()?),
        (Some(KekSource::Passphrase), _) => Err(KeyError::NoKek),
        (None, KekRecord::File { path }) => file_kek(path),
        (None, KekRecord::Command { command }) => command_kek(command),
    }
}

fn file_kek(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::KeyFileOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    hex_key(&text).ok_or_else(|| KeyError::KeyFileBad(path.to_owned()))
}

fn command_kek(command: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let failed = |why: String| KeyError::Command {
        command: command.to_owned(),
        why,
    };
    let mut child = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let read = stdout.map(|out| {
            std::io::Read::read_to_end(
                &mut std::io::Read::take(out, COMMAND_OUTPUT_MAX + 1),
                &mut text,
            )
        });
        let _ = tx.send((read.is_some_and(|r| r.is_ok()), Zeroizing::new(text)));
    });
    let Ok((read, text)) = rx.recv_timeout(COMMAND_WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(failed(format!(
            "it gave no key within {} s",
            COMMAND_WAIT.as_secs()
        )));
    };
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    if !status.success() || !read {
        return Err(failed(format!("it exited with {status}")));
    }
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > COMMAND_OUTPUT_MAX {
        return Err(failed("it printed more than a key".into()));
    }
    let text = Zeroizing::new(String::from_utf8_lossy(&text).into_owned());
    hex_key(&text).ok_or_else(|| failed("it did not print 64 hex digits".into()))
}

fn hex_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), key.as_mut_slice()).ok()?;
    Some(key)
}

fn passphrase_kek(record: &KekRecord, phrase: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let KekRecord::Passphrase {
        salt,
        memory_kib,
        passes,
        lanes,
    } = record
    else {
        return Err(KeyError::NoKek);
    };
    let damaged = |why: String| KeyError::Damaged {
        path: PathBuf::from(KEYS_FILE),
        why,
    };
    let salt = hex::decode(salt).map_err(|e| damaged(e.to_string()))?;
    let params = argon2::Params::new(*memory_kib, *passes, *lanes, Some(32))
        .map_err(|e| damaged(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(phrase.as_bytes(), &salt, kek.as_mut_slice())
        .map_err(|e| damaged(e.to_string()))?;
    Ok(kek)
}

/// The passphrase from the environment, or asked once on the terminal.
fn passphrase() -> Result<Zeroizing<String>, KeyError> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(KeyError::NoPassphrase);
    }
    rpassword::prompt_password("Passphrase for the data keys: ")
        .map(Zeroizing::new)
        .map_err(|_| KeyError::NoPassphrase)
}

/// A new passphrase: from `BANKMATE_NEW_PASSPHRASE` (a rekey's, beside the old one)
/// or `BANKMATE_PASSPHRASE`, or asked twice on the terminal.
fn new_passphrase() -> Result<Zeroizing<String>, KeyError> {
    if let Ok(p) = std::env::var(NEW_PASSPHRASE_ENV) {
        return long_enough(Zeroizing::new(p));
    }
    let first = passphrase()?;
    if std::env::var(PASSPHRASE_ENV).is_err() {
        let again = rpassword::prompt_password("The same passphrase again: ")
            .map(Zeroizing::new)
            .map_err(|_| KeyError::NoPassphrase)?;
        if again != first {
            return Err(KeyError::PassphrasesDiffer);
        }
    }
    long_enough(first)
}

fn long_enough(phrase: Zeroizing<String>) -> Result<Zeroizing<String>, KeyError> {
    if phrase.chars().count() < PASSPHRASE_CHARS_MIN {
        return Err(KeyError::ShortPassphrase);
    }
    Ok(phrase)
}

/// Writes `text` to the new owner-only file `path` and makes it durable.
fn write_new(path: &Path, text: &str) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.to_owned()),
        _ => KeyError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Copies the keys file `from` to the new file `to` as it is (still wrapped).
pub fn copy(from: &Path, to: &Path) -> Result<(), KeyError> {
    let text = std::fs::read_to_string(from).map_err(io(from))?;
    read(from)?;
    write_new(to, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek_file(dir: &Path) -> PathBuf {
        let p = dir.join("kek");
        keygen(&p).expect("keygen");
        p
    }

    #[test]
    fn keys_unwrap_with_their_kek_only() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (kek_file(tmp.path()), tmp.path().join("other"));
        keygen(&b).expect("keygen");
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        let keys = create(&dir, BranchId(1), &KekSource::File(a.clone())).expect("create");
        let again = unlock(&dir, Some(BranchId(1)), None).expect("unlock");
        assert_eq!(keys.sqlcipher_key(), again.sqlcipher_key());
        let wrong = unlock(&dir, None, Some(&KekSource::File(b.clone()))).expect_err("wrong");
        assert_eq!(wrong.code(), "wrong_key");
        let other = unlock(&dir, Some(BranchId(2)), None).expect_err("branch");
        assert_eq!(other.code(), "keys_of_other_branch");
        rekey(&dir, None, &KekSource::File(b.clone())).expect("rekey");
        assert_eq!(
            unlock(&dir, None, None).expect("after").sqlcipher_key(),
            keys.sqlcipher_key()
        );
        assert_eq!(
            unlock(&dir, None, Some(&KekSource::File(a)))
                .expect_err("old")
                .code(),
            "wrong_key"
        );
    }

    #[test]
    fn a_shared_or_short_key_file_and_a_cut_keys_file_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kek = kek_file(tmp.path());
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        create(&dir, BranchId(1), &KekSource::File(kek.clone())).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o640)).expect("chmod");
            let e = unlock(&dir, None, None).expect_err("open to group");
            assert_eq!(e.code(), "key_file_not_private", "{e}");
            std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let path = dir.join(KEYS_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, &text[..text.len() / 2]).expect("cut");
        assert_eq!(
            unlock(&dir, None, None).expect_err("cut").code(),
            "keys_damaged"
        );
        let short = tmp.path().join("short");
        write_new(&short, "abcd\n").expect("short");
        let e = create(&tmp.path().join("d2"), BranchId(1), &KekSource::File(short))
            .expect_err("short");
        assert_eq!(e.code(), "key_file_bad");
    }

    #[test]
    fn a_key_command_and_a_passphrase_give_the_keys_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let kek = kek_file(tmp.path());
        let cmd = format!("cat {}", kek.display());
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        let keys = create(&dir, BranchId(3), &KekSource::Command(cmd)).expect("create");
        let same = unlock(&dir, None, Some(&KekSource::File(kek))).expect("file opens it");
        assert_eq!(keys.sqlcipher_key(), same.sqlcipher_key());
        let bad =
            unlock(&dir, None, Some(&KekSource::Command("exit 3".into()))).expect_err("fails");
        assert_eq!(bad.code(), "key_command_failed");
        let record = KekRecord::Passphrase {
            salt: "00".repeat(16),
            memory_kib: 1024,
            passes: 1,
            lanes: 1,
        };
        let a = passphrase_kek(&record, "correct horse battery").expect("kek");
        let b = passphrase_kek(&record, "correct horse batterY").expect("kek");
        assert_ne!(*a, *b);
    }

    #[test]
    fn sealed_values_open_for_their_purpose_only() {
        let keys = DataKeys::generate();
        let sealed = keys.seal("national_id", b"19850312-1234");
        assert_eq!(
            keys.open("national_id", &sealed).as_deref(),
            Some(&b"19850312-1234"[..])
        );
        assert_eq!(keys.open("sms", &sealed), None);
        assert_eq!(DataKeys::generate().open("national_id", &sealed), None);
        assert_eq!(keys.lookup_hash("n", "x"), keys.lookup_hash("n", "x"));
        assert_ne!(keys.lookup_hash("n", "x"), keys.lookup_hash("n", "y"));
    }
}
