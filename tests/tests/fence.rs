//! What an operator can do around a running network without doubling or losing money,
//! with real processes: one process per data dir, ports no two nodes share, a restore
//! refused beside the running branch, an old copy fenced once a restore replaced it,
//! and a restore that puts back every cross-branch transfer the other branches hold
//! and counts what only the lost disk knew.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scenarios::check;
use scenarios::cluster::{Cluster, branch_node_bin};
use teller_cli::{Target, Teller, TellerError};
use tests::branch_node;
use wire::teller::{TellerOp, TellerResponse, TransferState, Unavailable};
use wire::{AccountNumber, Amount, TransferId};

const PASSWORD: &str = "fence-customer-pw";

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A free port on loopback.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `branch-node run` on `dir` with `extra` flags, as a process of the test's own.
fn spawn_run(c: &Cluster, dir: &Path, extra: &[&str]) -> Child {
    Command::new(branch_node_bin().expect("branch-node"))
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        .arg("--network")
        .arg(&c.network_file)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn branch-node")
}

/// Waits at most `wait` for `child` to exit: its status code and what it printed.
fn exited(mut child: Child, wait: Duration) -> Option<(i32, String)> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            return Some((status.code().unwrap_or(-1), text));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `child`'s stdout until it says it serves (its fence confirmed it).
fn until_serving(child: &mut Child) {
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("serving:") => break,
            Some(Ok(_)) => {}
            other => panic!("the copy never served: {other:?}"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
}

/// A withdrawal by `account`'s customer over `t`: its id and answer.
async fn withdraw(
    t: &Teller,
    account: AccountNumber,
    minor: i64,
) -> (TransferId, Result<TransferState, String>) {
    let id = teller_cli::new_transfer_id();
    let r = t
        .call(TellerOp::Withdraw {
            id,
            account,
            amount: Amount::from_minor(minor).expect("amount"),
        })
        .await;
    let state = match r {
        Ok(TellerResponse::Receipt { state, .. }) => Ok(state),
        other => Err(format!("{other:?}")),
    };
    (id, state)
}

async fn customer_at(target: &Target, account: AccountNumber) -> Result<Teller, TellerError> {
    let mut t = Teller::connect(target).await?;
    t.login(&account.to_string(), PASSWORD).await?;
    Ok(t)
}

/// The fence meta a stopped branch's store holds (read without changing it).
fn instance_of(db: &Path) -> i64 {
    let c = branch_node::store::connect_in_dir(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    c.query_row(
        "SELECT coalesce((SELECT value FROM meta WHERE key = 'instance'), 0)",
        [],
        |r| r.get(0),
    )
    .expect("instance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_per_data_dir_and_no_shared_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let pid = c.pids()[0];

    // A second `run` on b1's dir: refused at once, naming the first.
    let second = spawn_run(&c, &c.nodes[0].dir, &[]);
    let (code, said) = exited(second, Duration::from_secs(10)).expect("exits at once");
    assert_ne!(code, 0, "{said}");
    assert!(said.contains("[dir_in_use]"), "{said}");
    assert!(
        said.contains(&format!("pid {pid}")),
        "names the holder: {said}"
    );
    // Neither may a restore or a verify work under it.
    let (code, said) = tests::verify(&c.nodes[0].dir, &c.network_file);
    assert!(code != 0 && said.contains("stop the node first"), "{said}");

    // b2 stopped, then started on b1's port: refused before anything is written.
    c.kill(1);
    let db = c.nodes[1].dir.join(branch_node::init::DB_FILE);
    let before = instance_of(&db);
    let taken = format!("/ip4/127.0.0.1/tcp/{}", c.nodes[0].port);
    let clash = spawn_run(&c, &c.nodes[1].dir, &["--listen", &taken]);
    let (code, said) = exited(clash, Duration::from_secs(10)).expect("exits at once");
    assert!(code != 0 && said.contains("[address_in_use]"), "{said}");
    assert!(said.contains(&taken), "names the address: {said}");
    let metrics_taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics_addr = metrics_taken.local_addr().expect("addr").to_string();
    let free = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let clash = spawn_run(
        &c,
        &c.nodes[1].dir,
        &["--listen", &free, "--metrics-listen", &metrics_addr],
    );
    let (code, said) = exited(clash, Duration::from_secs(10)).expect("exits at once");
    assert!(code != 0 && said.contains("--metrics-listen"), "{said}");
    assert_eq!(instance_of(&db), before, "a refused start writes nothing");

    // A killed node leaves no lock behind: it starts again and serves.
    c.kill(0);
    c.start_node(0, &[]).expect("b1 again");
    c.start_node(1, &[]).expect("b2 again");
    for i in 0..2 {
        c.wait_node_serving(i, Duration::from_secs(30))
            .expect("serves again");
    }
    let (a, b, deposit) = tests::funded_pair(&c, "LCK", PASSWORD, 10_000).await;
    let sent = transfer(&c, 0, a, b, 2_500).await;
    let report =
        check::finish(&mut c, &[deposit, sent].into(), Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "{:#?}", report.violations);
}

/// A backup of node `i`'s branch, taken while it runs.
fn backup(c: &Cluster, i: usize, to: &Path) {
    let (code, said) = branch_node(&[
        os("backup"),
        os("--data-dir"),
        c.nodes[i].dir.as_os_str(),
        os("--to"),
        to.as_os_str(),
    ]);
    assert_eq!(code, 0, "{said}");
}

/// `branch-node restore` of `file` into `dir` (which must hold the key).
fn restore(c: &Cluster, file: &Path, dir: &Path, wait_secs: u64) -> (i32, String) {
    branch_node(&[
        os("restore"),
        os("--from"),
        file.as_os_str(),
        os("--data-dir"),
        dir.as_os_str(),
        os("--network"),
        c.network_file.as_os_str(),
        os("--wait-secs"),
        os(&wait_secs.to_string()),
    ])
}

/// A new data dir holding node `i`'s key and nothing else.
fn keyed_copy(c: &Cluster, i: usize, at: &Path) -> PathBuf {
    std::fs::create_dir_all(at).expect("mkdir");
    let key = branch_node::init::KEY_FILE;
    std::fs::copy(c.nodes[i].dir.join(key), at.join(key)).expect("key");
    at.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_branch_never_spends_money_the_original_spent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, _, deposit) = tests::funded_pair(&c, "DBL", PASSWORD, 10_000).await;
    let mut committed: BTreeSet<TransferId> = [deposit].into();
    let file = dir.path().join("b1.backup");
    backup(&c, 0, &file);

    // Restored beside the running b1: refused (it keeps renewing its lease), and
    // nothing is left to run.
    let copy = keyed_copy(&c, 0, &dir.path().join("copy"));
    let (code, said) = restore(&c, &file, &copy, 3);
    assert!(code != 0 && said.contains("[branch_in_use]"), "{said}");
    assert!(
        !copy.join(branch_node::init::DB_FILE).exists(),
        "nothing restored"
    );
    let run = spawn_run(&c, &copy, &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let (code, _) = exited(run, Duration::from_secs(10)).expect("exits");
    assert_ne!(code, 0, "the copy has no database to serve");
    // The original serves on: the customer's one withdrawal.
    let at_b1 = customer_at(&c.target(0).expect("target"), a)
        .await
        .expect("login");
    let (first, state) = withdraw(&at_b1, a, 8_000).await;
    assert_eq!(state, Ok(TransferState::Committed));
    committed.insert(first);
    drop(at_b1);

    // b1 dies; the copy is restored (the restore waits out b1's lease) and serves
    // from another address; then b1 is started again by a tired operator.
    c.kill(0);
    let file = dir.path().join("b1-after.backup");
    let (code, said) = branch_node(&[
        os("backup"),
        os("--data-dir"),
        c.nodes[0].dir.as_os_str(),
        os("--to"),
        file.as_os_str(),
    ]);
    assert_eq!(code, 0, "{said}");
    let (code, said) = restore(&c, &file, &copy, 60);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("epoch is now 2"), "{said}");
    let port = free_port();
    let mut copy_node = spawn_run(
        &c,
        &copy,
        &["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")],
    );
    until_serving(&mut copy_node);
    let old = spawn_run(&c, &c.nodes[0].dir, &[]);
    let (code, said) = exited(old, Duration::from_secs(30)).expect("the old copy stops");
    assert!(code != 0 && said.contains("[fenced]"), "{said}");
    let again = spawn_run(&c, &c.nodes[0].dir, &[]);
    let (code, said) = exited(again, Duration::from_secs(10)).expect("refused at once");
    assert!(code != 0 && said.contains("was fenced"), "{said}");

    // The customer has 20.00 left wherever they go: the copy refuses a second 80.00.
    let copy_target = Target {
        addr: format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr"),
        peer: c.target(0).expect("target").peer,
        others: Vec::new(),
        branch: Some(wire::BranchId(1)),
        network: None,
    };
    let at_copy = customer_at(&copy_target, a)
        .await
        .expect("login at the copy");
    let (_, second) = withdraw(&at_copy, a, 8_000).await;
    assert!(
        matches!(
            second,
            Ok(TransferState::Aborted(wire::Refusal::InsufficientFunds))
        ),
        "{second:?}"
    );
    let (rest, state) = withdraw(&at_copy, a, 2_000).await;
    assert_eq!(state, Ok(TransferState::Committed));
    committed.insert(rest);
    let _ = copy_node.kill();
    let _ = copy_node.wait();
    // The copy is the branch now: the audit reads its store, not the fenced one.
    c.nodes[0].dir = copy;
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "{:#?}", report.violations);
    assert_eq!(report.network_total, report.expected_total);
    assert_eq!(report.network_total, 10_000 - 8_000 - 2_000);
}

/// A transfer `from` -> `to` sent by `from`'s customer through node `at`, committed.
async fn transfer(
    c: &Cluster,
    at: usize,
    from: AccountNumber,
    to: AccountNumber,
    minor: i64,
) -> TransferId {
    tests::committed_transfer(c, at, PASSWORD, (from, to), minor).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_puts_back_what_the_network_knows_and_counts_what_it_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let (a1, a2, d1) = tests::funded_pair(&c, "RST", PASSWORD, 50_000).await;
    let a3 = c
        .open_account(2, "RST-C", PASSWORD, false)
        .await
        .expect("open");
    let a1b = c
        .open_account(0, "RST-D", PASSWORD, false)
        .await
        .expect("open");
    let d2 = tests::deposit(&c, 1, a2, 30_000).await;
    let d3 = tests::deposit(&c, 2, a3, 20_000).await;
    let mut committed: BTreeSet<TransferId> = [d1, d2, d3].into();
    let file = dir.path().join("b1.backup");
    backup(&c, 0, &file);

    // After the backup: transfers with both other branches, both ways, and b1's own
    // deposit and local transfer, which no other branch ever hears of.
    committed.insert(transfer(&c, 0, a1, a2, 1_100).await);
    committed.insert(transfer(&c, 1, a2, a1, 2_200).await);
    committed.insert(transfer(&c, 2, a3, a1, 3_300).await);
    committed.insert(transfer(&c, 0, a1, a3, 400).await);
    let lost_local = transfer(&c, 0, a1, a1b, 500).await;
    let lost_deposit = tests::deposit(&c, 0, a1b, 700).await;

    // b1's disk is lost; its backup comes back. Its fence claims, once a second, carry
    // its last head to the other branches: two of them pass first.
    std::thread::sleep(Duration::from_millis(
        2 * wire::limits::FENCE_RENEW_MS + 500,
    ));
    c.kill(0);
    for f in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(
            c.nodes[0]
                .dir
                .join(format!("{}{f}", branch_node::init::DB_FILE)),
        );
    }
    let (code, said) = restore(&c, &file, &c.nodes[0].dir.clone(), 60);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("4 committed cross-branch transfers (70.00)"),
        "{said}"
    );
    assert!(said.contains("deposits lost: 1 (7.00)"), "{said}");
    assert!(said.contains("local transfers lost: 1 (5.00)"), "{said}");
    assert!(
        said.contains("cross-branch debits not put back: 0 (0.00)"),
        "{said}"
    );
    let kept = std::fs::read_to_string(c.nodes[0].dir.join(branch_node::restore::REPORT_FILE))
        .expect("the report is kept");
    assert!(kept.contains("local transfers lost: 1 (5.00)"), "{kept}");
    let (code, report) = tests::verify(&c.nodes[0].dir, &c.network_file);
    assert_eq!(code, 0, "{report}");

    c.start_node(0, &[]).expect("b1 from its backup");
    c.wait_node_serving(0, Duration::from_secs(30))
        .expect("serves");
    // A recovered transfer's outcome, asked at b1.
    let t = customer_at(&c.target(0).expect("target"), a1)
        .await
        .expect("login");
    let last = *committed.last().expect("a transfer");
    let status = t.call(TellerOp::TransferStatus { id: last }).await;
    assert!(
        matches!(
            status,
            Ok(TellerResponse::Status {
                state: TransferState::Committed,
                ..
            })
        ),
        "{status:?}"
    );
    // The lost ones are gone: not known at b1, and its authority.
    for id in [lost_local, lost_deposit] {
        let r = t.call(TellerOp::TransferStatus { id }).await;
        assert!(
            !matches!(
                r,
                Ok(TellerResponse::Status {
                    state: TransferState::Committed,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    drop(t);
    reconcile_agrees(&c);
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "{:#?}", report.violations);
    assert_eq!(
        report.network_total, 100_000,
        "every deposit but the lost one"
    );
    for n in &c.nodes {
        let (code, text) = tests::verify(&n.dir, &c.network_file);
        assert_eq!(code, 0, "{text}");
    }
}

/// `admin reconcile` from b2 once every transfer's deadline has passed: every pair agrees.
fn reconcile_agrees(c: &Cluster) {
    std::thread::sleep(Duration::from_millis(
        wire::limits::PREPARE_TIMEOUT_MS + 500,
    ));
    let out = Command::new(scenarios::cluster::teller_cli_bin().expect("teller-cli"))
        .arg("--network-file")
        .arg(&c.network_file)
        .args(["--branch", "b2", "--user", "admin", "--password-env", "PW"])
        .args(["admin", "reconcile", "--settle-secs", "0"])
        .env("PW", scenarios::cluster::ADMIN_PASSWORD)
        .output()
        .expect("reconcile");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("DISAGREE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_answers_tellers_not_confirmed() {
    // A branch alone among listed branches that never answer: it listens, but its fence
    // is never confirmed, so it moves no money and says why.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::create(dir.path(), 2, &[]).expect("cluster");
    let mut lone = spawn_run(&c, &c.nodes[0].dir, &[]);
    let out = lone.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(ready.starts_with("ready:"), "{ready}");
    let mut admin = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connect");
    let r = admin
        .login("admin", scenarios::cluster::ADMIN_PASSWORD)
        .await;
    assert!(
        matches!(r, Err(TellerError::Unavailable(Unavailable::NotConfirmed))),
        "{r:?}"
    );
    let _ = lone.kill();
    let _ = lone.wait();
}
