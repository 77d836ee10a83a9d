//! `branch-node init` as a user runs it: the data dir, the key file's mode, the network
//! file entry, the first admin's login, and refusals that create nothing.

use std::path::Path;
use std::process::{Command, Output};

use branch_node::init::{DB_FILE, KEY_FILE, read_key};
use branch_node::store::Durability;
use wire::BranchId;

fn branch_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_branch-node"))
        .args(args)
        .output()
        .expect("runs")
}

/// A key-encryption key file for data dir `dir`, beside it (`DIR.kek`), made once.
fn kek_for(dir: &Path) -> String {
    let kek = format!("{}.kek", dir.display());
    if !Path::new(&kek).exists() {
        branch_node::keys::keygen(Path::new(&kek)).expect("keygen");
    }
    kek
}

fn init(dir: &Path, id: &str, extra: &[&str]) -> Output {
    let kek = kek_for(dir);
    let mut args = vec![
        "init",
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--branch-id",
        id,
        "--name",
        "Mumbai Fort",
        "--key-file",
        &kek,
    ];
    args.extend_from_slice(extra);
    branch_node(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_makes_key_database_admin_and_network_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("b1");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "correct horse\n").expect("writes");
    let out = init(
        &data,
        "1",
        &["--admin-password-file", pw.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let key = read_key(&data).expect("key reads");
    assert!(
        text.contains(&format!("public_key = \"{}\"", key.public())),
        "{text}"
    );
    assert!(
        text.contains(&format!("peer_id = \"{}\"", key.peer_id())),
        "{text}"
    );
    assert!(
        text.contains("[[branch]]\nid = 1\nname = \"Mumbai Fort\""),
        "{text}"
    );
    assert!(
        !text.contains("admin password:"),
        "a given password is never printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key file readable by its owner only");
    }
    let mut store =
        branch_node::store::testing::open_keyed(&data.join(DB_FILE), BranchId(1), Durability::Full)
            .expect("opens");
    let admin = store
        .login("admin", "correct horse", None, 0)
        .expect("works")
        .expect("logs in");
    assert_eq!(admin.role, wire::teller::Role::Admin);
}

#[test]
fn init_generates_a_password_when_none_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = init(dir.path(), "7", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("admin password: "))
        .expect("printed once");
    let password = line
        .trim_start_matches("admin password: ")
        .split_whitespace()
        .next()
        .expect("a word");
    assert_eq!(password.len(), 20);
    let mut store = branch_node::store::testing::open_keyed(
        &dir.path().join(DB_FILE),
        BranchId(7),
        Durability::Full,
    )
    .expect("opens");
    assert!(
        store
            .login("admin", password, None, 0)
            .expect("works")
            .is_ok()
    );
}

/// `again`, run over the initialized data dir `data`, is refused as already
/// initialized and leaves its key as it was.
fn refused_over_itself(data: &Path, again: impl FnOnce() -> Output) {
    let key_before = std::fs::read(data.join(KEY_FILE)).expect("reads");
    let out = again();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already initialized"),
        "{}",
        stderr(&out)
    );
    let key_after = std::fs::read(data.join(KEY_FILE)).expect("reads");
    assert_eq!(key_after, key_before, "key untouched");
}

#[test]
fn init_refuses_to_overwrite_and_bad_input_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("b2");
    assert!(init(&data, "2", &[]).status.success());
    refused_over_itself(&data, || init(&data, "2", &[]));
    for (id, words) in [("0", "branch id must be"), ("1000", "branch id must be")] {
        let fresh = dir.path().join(format!("bad-{id}"));
        let out = init(&fresh, id, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "one-line error");
        assert!(!fresh.exists(), "nothing created for a refused init");
    }
    let empty_pw = dir.path().join("empty");
    std::fs::write(&empty_pw, "\n").expect("writes");
    let fresh = dir.path().join("bad-pw");
    let out = init(
        &fresh,
        "3",
        &["--admin-password-file", empty_pw.to_str().expect("utf-8")],
    );
    assert!(
        stderr(&out).contains("admin password must be"),
        "{}",
        stderr(&out)
    );
    assert!(!fresh.exists());
}

#[test]
fn help_describes_every_command() {
    let top = branch_node(&["--help"]);
    assert!(top.status.success());
    assert!(stdout(&top).contains("init"));
    let sub = branch_node(&["init", "--help"]);
    assert!(sub.status.success());
    for flag in [
        "--data-dir",
        "--branch-id",
        "--name",
        "--admin-password-file",
    ] {
        assert!(
            stdout(&sub).contains(flag),
            "{flag} missing from init --help"
        );
    }
}

/// The network file entry `init` printed, listening on a free loopback port.
fn network_entry(out: &Output) -> String {
    stdout(out)
        .split("add this branch to network.toml:")
        .nth(1)
        .expect("entry printed")
        .replace("addresses = []", "addresses = [\"/ip4/127.0.0.1/tcp/0\"]")
}

fn run_node(data: &Path, network: &Path) -> Output {
    branch_node(&[
        "run",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--network",
        network.to_str().expect("utf-8"),
    ])
}

#[test]
fn run_refuses_a_data_dir_without_its_database_or_key_or_with_another_branchs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b1, b2) = (dir.path().join("b1"), dir.path().join("b2"));
    let (i1, i2) = (init(&b1, "1", &[]), init(&b2, "2", &[]));
    assert!(i1.status.success() && i2.status.success());
    let network = dir.path().join("network.toml");
    let second = network_entry(&i2).replace("Mumbai Fort", "Pune Camp");
    std::fs::write(&network, network_entry(&i1) + &second).expect("writes");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&b1).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "init makes the data dir owner-only");
        std::fs::set_permissions(&b1, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let db = b1.join(DB_FILE);
    let saved = dir.path().join("saved.db");
    std::fs::rename(&db, &saved).expect("moves");
    let out = run_node(&b1, &network);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is missing"), "{}", stderr(&out));
    assert!(!db.exists(), "no empty database is made in its place");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&b1).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "run tightens an opened-up data dir");
    }

    std::fs::copy(b2.join(DB_FILE), &db).expect("copies");
    let out = run_node(&b1, &network);
    assert_eq!(out.status.code(), Some(1));
    // Another branch's store is under another key: refused before a byte is read.
    assert!(
        stderr(&out).contains("cannot be read with this data dir's key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    std::fs::rename(&saved, &db).expect("moves back");

    let key = b1.join(KEY_FILE);
    std::fs::remove_file(&key).expect("removes");
    let out = run_node(&b1, &network);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(KEY_FILE), "{}", stderr(&out));
}

#[test]
fn a_database_file_that_is_not_a_branch_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DB_FILE);
    branch_node::store::testing::raw(&path);
    let err =
        branch_node::store::testing::open_existing_keyed(&path, BranchId(1), Durability::Full)
            .expect_err("refused");
    assert!(err.to_string().contains("not made by"), "{err}");
    let err = branch_node::store::testing::open_existing_keyed(
        &dir.path().join("none.db"),
        BranchId(1),
        Durability::Full,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("is missing"), "{err}");
}

#[cfg(unix)]
#[test]
fn files_the_node_appends_to_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sms.log");
    drop(branch_node::init::owner_only_append(&path).expect("creates"));
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn init_replica_makes_a_key_and_an_empty_store_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The branch's keys, as its first replica's data dir holds them.
    let first = dir.path().join("r1");
    std::fs::create_dir(&first).expect("mkdir");
    let kek = kek_for(&first);
    let source = branch_node::keys::KekSource::File(kek.clone().into());
    branch_node::keys::create(&first, BranchId(2), &source).expect("keys");
    let keys_from = first.join(branch_node::keys::KEYS_FILE);
    let replica = |data: &Path, id: &str, n: &str| {
        let data = data.to_str().expect("utf-8");
        branch_node(&[
            "init-replica",
            "--data-dir",
            data,
            "--branch-id",
            id,
            "--replica",
            n,
            "--key-file",
            &kek,
            "--keys-from",
            keys_from.to_str().expect("utf-8"),
        ])
    };
    let data = dir.path().join("r2");
    let made = replica(&data, "2", "2");
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(
        stdout(&made).contains("[[branch.replica]]\nid = 2\n"),
        "{}",
        stdout(&made)
    );
    assert!(data.join(KEY_FILE).is_file());
    // An empty store of branch 2: no admin, no account; the leader's snapshot fills it.
    let store =
        branch_node::store::testing::open_keyed(&data.join(DB_FILE), BranchId(2), Durability::Full)
            .expect("opens");
    assert!(store.accounts().expect("reads").is_empty());
    drop(store);
    refused_over_itself(&data, || replica(&data, "2", "2"));
    for (id, n, words) in [
        ("2", "1", "replica 1 is made by"),
        ("0", "2", "branch id must be"),
    ] {
        let fresh = dir.path().join(format!("bad-{id}-{n}"));
        let out = replica(&fresh, id, n);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "one-line error");
        assert!(
            !fresh.exists(),
            "nothing created for a refused init-replica"
        );
    }
}

/// `branch-node ARGS` with the environment `env` added; stdin is not a terminal.
fn branch_node_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_branch-node"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs")
}

/// The refusal `out` ends with: exit 1, one line, and its code in brackets.
fn refused_with(out: &Output, code: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&format!("[{code}]")), "{code}: {err}");
}

#[test]
fn a_short_absent_or_wrong_passphrase_and_a_shared_key_file_are_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("b1");
    let d = data.to_str().expect("utf-8");
    let pass = ("BANKMATE_PASSPHRASE", "a long enough passphrase");
    let args = ["init", "--data-dir", d, "--branch-id", "1", "--name", "P"];
    let init =
        |env: &[(&str, &str)]| branch_node_env(&[&args[..], &["--passphrase"]].concat(), env);
    refused_with(&init(&[("BANKMATE_PASSPHRASE", "short")]), "passphrase");
    assert!(
        !data.join(KEY_FILE).exists(),
        "a refused init makes nothing"
    );
    assert!(init(&[pass]).status.success());
    let backup = dir.path().join("b1.backup");
    let b = backup.to_str().expect("utf-8");
    let take = |env: &[(&str, &str)]| branch_node_env(&["backup", "--data-dir", d, "--to", b], env);
    refused_with(&take(&[]), "passphrase");
    refused_with(
        &take(&[("BANKMATE_PASSPHRASE", "another passphrase!")]),
        "wrong_key",
    );
    assert!(!backup.exists(), "nothing written");
    // A key file instead of the passphrase: the store is not rewritten.
    let db_before = std::fs::read(data.join(DB_FILE)).expect("db");
    let kek = kek_for(&data);
    let rekey = ["rekey", "--data-dir", d, "--new-key-file", &kek];
    assert!(branch_node_env(&rekey, &[pass]).status.success());
    assert_eq!(std::fs::read(data.join(DB_FILE)).expect("db"), db_before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        refused_with(&take(&[]), "key_file_not_private");
        assert!(!backup.exists(), "nothing written");
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    assert!(
        take(&[]).status.success(),
        "the key file data.keys names opens it"
    );
}

#[test]
fn a_rotated_store_key_leaves_old_keys_behind_and_a_cut_or_missing_keys_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("b1");
    let d = data.to_str().expect("utf-8");
    assert!(init(&data, "1", &[]).status.success());
    let copy = dir.path().join("copy.db");
    let c = copy.to_str().expect("utf-8");
    assert!(
        branch_node_env(&["backup", "--data-dir", d, "--to", c], &[])
            .status
            .success()
    );
    // A new store key: the old one no longer opens the store; the backup keeps its own.
    let rotated = branch_node_env(&["rotate-data-key", "--data-dir", d], &[]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let old = branch_node::keys::unlock_file(Path::new(&format!("{c}.keys")), None, None)
        .expect("the copy's keys");
    let read_only = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let stale = branch_node::store::connect(&data.join(DB_FILE), &old, read_only);
    assert!(
        stale.is_err(),
        "the old store key no longer opens the store"
    );
    branch_node::store::connect(&copy, &old, read_only).expect("the backup opens with its keys");
    // Keys file cut short, then gone: one line each, nothing written.
    let backup = dir.path().join("b1.backup");
    let b = backup.to_str().expect("utf-8");
    let take = || branch_node_env(&["backup", "--data-dir", d, "--to", b], &[]);
    let keys = data.join(branch_node::keys::KEYS_FILE);
    let text = std::fs::read_to_string(&keys).expect("keys");
    std::fs::write(&keys, &text[..text.len() / 3]).expect("cut");
    refused_with(&take(), "keys_damaged");
    std::fs::remove_file(&keys).expect("rm");
    refused_with(&take(), "keys_missing");
    assert!(!backup.exists(), "nothing written");
}
