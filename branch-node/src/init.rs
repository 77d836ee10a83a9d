//! `branch-node init`: makes a branch's data dir: the key (mode 0600), the database and
//! the first admin, and says what to add to the network file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use wire::limits::{ACCOUNT_BRANCH_MAX, PASSWORD_BYTES_MAX, TEXT_FIELD_BYTES_MAX};
use wire::{Amount, BranchId, BranchKey, BranchPublicKey, PeerId, Refusal};

use crate::keys::{KEYS_FILE, KekSource};
use crate::store::{Durability, Store, StoreError, hash_password};

/// The key file in a data dir: the 32-byte secret as 64 hex digits.
pub const KEY_FILE: &str = "branch.key";
/// The database file in a data dir.
pub const DB_FILE: &str = "branch.db";
/// The first admin's login.
pub const ADMIN_LOGIN: &str = "admin";
/// Length of a generated admin password, in characters.
const GENERATED_PASSWORD_CHARS: usize = 20;

/// Why `init` refused. Nothing is created when it does.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("branch id must be 1..={ACCOUNT_BRANCH_MAX} (account numbers carry it in 3 digits)")]
    BranchId,
    #[error("branch name must be 1..={TEXT_FIELD_BYTES_MAX} bytes of printable text")]
    Name,
    #[error(
        "admin password must be at least 8 characters, at most {PASSWORD_BYTES_MAX} bytes, and not a commonly used one"
    )]
    Password,
    #[error(
        "{0} is already initialized (it has {KEY_FILE}, {KEYS_FILE} or {DB_FILE}); refusing to overwrite"
    )]
    AlreadyInitialized(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    pub branch: BranchId,
    pub name: String,
    pub public_key: BranchPublicKey,
    pub peer_id: PeerId,
    /// Set when the admin password was generated (shown once).
    pub generated_password: Option<String>,
    /// The admin's `otpauth://` URI when `init --totp` enrolled it for one-time codes.
    pub otp_uri: Option<String>,
}

impl Initialized {
    /// The block to add to `network.toml` for this branch.
    pub fn network_entry(&self) -> String {
        self.network_entry_at(&[])
    }

    /// The `[[branch]]` block with `listen` as its addresses, ready to paste; with no
    /// address, an empty list and a comment saying what goes there.
    pub fn network_entry_at(&self, listen: &[multiaddr::Multiaddr]) -> String {
        let addresses = if listen.is_empty() {
            "[]  # where it listens, e.g. \"/ip4/127.0.0.1/tcp/7001\"".to_owned()
        } else {
            let quoted: Vec<String> = listen
                .iter()
                .map(|a| format!("{:?}", a.to_string()))
                .collect();
            format!("[{}]", quoted.join(", "))
        };
        format!(
            "[[branch]]\nid = {}\nname = {:?}\npublic_key = \"{}\"\npeer_id = \"{}\"\naddresses = {addresses}\n",
            self.branch.0, self.name, self.public_key, self.peer_id
        )
    }
}

impl Initialized {
    /// The `[[branch.replica]]` table of this data dir as replica `id`, ready to paste
    /// under its branch's `[[branch]]` (which then lists no key or address of its own).
    pub fn replica_entry_at(&self, id: u64, listen: &[multiaddr::Multiaddr]) -> String {
        let entry = self.network_entry_at(listen);
        let own = entry
            .lines()
            .filter(|l| {
                ["public_key", "peer_id", "addresses"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("[[branch.replica]]\nid = {id}\n{own}\n")
    }
}

/// Makes the data dir of a new replica of branch `branch`: its own key and an empty
/// store (the branch id pinned). It joins the branch once the network file lists it:
/// the leader adds it, and it catches up by snapshot and log.
///
/// A branch's replicas share its data keys (a snapshot is the store's pages, encrypted):
/// `keys_from` is another replica's `data.keys`, unwrapped with `kek`, and the new
/// replica's copy is wrapped with `kek` too.
pub fn init_replica(
    data_dir: &Path,
    branch: BranchId,
    keys_from: &Path,
    kek: &KekSource,
) -> Result<Initialized, InitError> {
    if branch.0 == 0 || branch.0 > ACCOUNT_BRANCH_MAX {
        return Err(InitError::BranchId);
    }
    let keys = crate::keys::unlock_file(keys_from, Some(branch), Some(kek))?;
    let (key_path, db_path) = (data_dir.join(KEY_FILE), data_dir.join(DB_FILE));
    if key_path.exists() || db_path.exists() {
        return Err(InitError::AlreadyInitialized(data_dir.to_owned()));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    owner_only_dir(data_dir)?;
    let _lock = crate::lock::lock(data_dir, crate::lock::Use::Replace)?;
    crate::keys::write(data_dir, &keys, branch, kek)?;
    let key = BranchKey::from_secret(rand::random());
    write_key(&key_path, &key)?;
    owner_only_file(&db_path).map_err(io(&db_path))?;
    drop(Store::open(&db_path, &keys, branch, Durability::Full)?);
    Ok(Initialized {
        branch,
        name: String::new(),
        public_key: key.public(),
        peer_id: key.peer_id(),
        generated_password: None,
        otp_uri: None,
    })
}

/// Marks a data dir made by [`init`] as the first replica of a new replicated branch:
/// its first `run` makes the branch's log from its store.
pub fn mark_bootstrap(data_dir: &Path) -> Result<(), InitError> {
    let marker = data_dir.join(crate::replica::node::BOOTSTRAP_FILE);
    owner_only_file(&marker).map_err(io(&marker))?;
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_owned(),
        source,
    }
}

fn generated_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..GENERATED_PASSWORD_CHARS)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// Makes a data dir for branch `branch` called `name`, with `admin_password` (or a
/// generated one) for the first admin.
pub fn init(
    data_dir: &Path,
    branch: BranchId,
    name: &str,
    admin_password: Option<String>,
    totp: bool,
    kek: &KekSource,
) -> Result<Initialized, InitError> {
    let max = Amount::from_minor(wire::limits::CUSTOMER_DEPOSIT_MAX_DEFAULT_MINOR)
        .unwrap_or(Amount::ZERO);
    init_with(data_dir, (branch, name), admin_password, (totp, max), kek)
}

/// [`init`] with `customer_deposit_max`, the largest deposit a customer may make into
/// their own account (larger ones are an admin's).
pub fn init_with(
    data_dir: &Path,
    (branch, name): (BranchId, &str),
    admin_password: Option<String>,
    (totp, customer_deposit_max): (bool, Amount),
    kek: &KekSource,
) -> Result<Initialized, InitError> {
    if branch.0 == 0 || branch.0 > ACCOUNT_BRANCH_MAX {
        return Err(InitError::BranchId);
    }
    if name.trim().is_empty()
        || name.len() > TEXT_FIELD_BYTES_MAX
        || name.chars().any(char::is_control)
    {
        return Err(InitError::Name);
    }
    if admin_password
        .as_deref()
        .is_some_and(|p| wire::teller::new_password_ok(p).is_err())
    {
        return Err(InitError::Password);
    }
    let (key_path, db_path) = (data_dir.join(KEY_FILE), data_dir.join(DB_FILE));
    if key_path.exists() || db_path.exists() || data_dir.join(KEYS_FILE).exists() {
        return Err(InitError::AlreadyInitialized(data_dir.to_owned()));
    }
    let generated = admin_password.is_none().then(generated_password);
    let password = admin_password
        .or_else(|| generated.clone())
        .unwrap_or_default();
    let hash = hash_password(&password)?;
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    owner_only_dir(data_dir)?;
    let _lock = crate::lock::lock(data_dir, crate::lock::Use::Replace)?;
    let keys = crate::keys::create(data_dir, branch, kek)?;
    let key = BranchKey::from_secret(rand::random());
    write_key(&key_path, &key).inspect_err(|_| {
        let _ = std::fs::remove_file(data_dir.join(KEYS_FILE));
    })?;
    // The database holds password hashes and balances: owner-only too. SQLite gives its
    // -wal and -shm files the database file's permissions.
    owner_only_file(&db_path).map_err(io(&db_path))?;
    let made = Store::open(&db_path, &keys, branch, Durability::Full)
        .map_err(InitError::from)
        .and_then(|mut store| {
            store.set_customer_deposit_max(customer_deposit_max)?;
            Ok(store)
        })
        .and_then(|mut store| match store.create_admin(ADMIN_LOGIN, &hash)? {
            Ok(()) if totp => {
                let secret = crate::totp::new_secret();
                store
                    .enroll_otp(ADMIN_LOGIN, &secret, false)?
                    .map_err(|r| InitError::Io {
                        path: db_path.clone(),
                        source: std::io::Error::other(r.to_string()),
                    })?;
                Ok(Some(crate::totp::otpauth_uri(&secret, name, ADMIN_LOGIN)))
            }
            Ok(()) => Ok(None),
            Err(Refusal::UserExists) => Err(InitError::AlreadyInitialized(data_dir.to_owned())),
            Err(other) => Err(InitError::Io {
                path: db_path.clone(),
                source: std::io::Error::other(other.to_string()),
            }),
        });
    let otp_uri = match made {
        Ok(uri) => uri,
        Err(e) => {
            // Leave no half-made data dir behind: a retry must start clean.
            for f in [
                KEY_FILE,
                KEYS_FILE,
                DB_FILE,
                "branch.db-wal",
                "branch.db-shm",
            ] {
                let _ = std::fs::remove_file(data_dir.join(f));
            }
            return Err(e);
        }
    };
    Ok(Initialized {
        branch,
        name: name.to_owned(),
        public_key: key.public(),
        peer_id: key.peer_id(),
        generated_password: generated,
        otp_uri,
    })
}

/// Creates an empty file readable and writable by its owner only; never overwrites.
/// Makes `dir` readable by its owner only (0700): the data dir holds the key, the
/// database and `sms.log`, which name customers, phones and balances. Files in it are
/// created 0600 (SQLite gives its `-wal` and `-shm` files the database's mode). A
/// `run` tightens a dir that was opened up, and says so.
pub fn owner_only_dir(dir: &Path) -> Result<(), InitError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(io(dir))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
            tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "data dir made owner-only (0700)");
        }
    }
    Ok(())
}

/// Opens `path` for appending, creating it readable by its owner only (0600).
pub fn owner_only_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

pub fn owner_only_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes the key readable by its owner only, and never over an existing file.
fn write_key(path: &Path, key: &BranchKey) -> Result<(), InitError> {
    let mut file = owner_only_file(path).map_err(io(path))?;
    writeln!(file, "{}", hex::encode(key.secret_bytes())).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Reads a data dir's key.
pub fn read_key(data_dir: &Path) -> Result<BranchKey, InitError> {
    let path = data_dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| InitError::Io {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "key file is not 64 hex digits",
        ),
    })?;
    Ok(BranchKey::from_secret(secret))
}
