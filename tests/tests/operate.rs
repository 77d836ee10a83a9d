//! Operating a branch: the metrics endpoint of real `branch-node run --metrics-listen`
//! processes is scraped before and during a workload of cross-branch transfers, a
//! refused transfer, a wrong password and SMS alerts, and the values must move; the
//! health and readiness answers say what they promise.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use scenarios::check;
use scenarios::cluster::{Cluster, teller_cli_bin};
use teller_cli::{Teller, TellerError, new_transfer_id};
use tests::{branch_node, verify};
use wire::teller::{TellerOp, TellerResponse, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, Refusal};

mod common;
use common::{fetch, sample};

const PASSWORD: &str = "operate-customer-pw";

fn base(c: &Cluster, i: usize) -> String {
    let url = c.nodes[i].metrics_url.clone().expect("a metrics address");
    url.trim_end_matches("/metrics").to_owned()
}

/// `account`'s customer, logged in over a new connection to branch `at`.
async fn customer(c: &Cluster, at: usize, account: wire::AccountNumber) -> Teller {
    let mut t = Teller::connect(&c.target(at).expect("target"))
        .await
        .expect("connect");
    t.login(&account.to_string(), PASSWORD)
        .await
        .expect("login");
    t
}

/// A transfer of `minor` from `from` to `to` under a new id.
fn spec(from: wire::AccountNumber, to: wire::AccountNumber, minor: i64) -> TransferSpec {
    TransferSpec {
        id: new_transfer_id(),
        from,
        to,
        amount: Amount::from_minor(minor).expect("amount"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_work_and_health_says_what_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &["--metrics-listen", "127.0.0.1:0"]).expect("cluster");
    let b1 = base(&c, 0);
    let (status, text) = fetch(&format!("{b1}/healthz")).await;
    assert_eq!((status, text.as_str()), (200, "ok\n"));
    let before = fetch(&format!("{b1}/metrics")).await.1;
    let committed_series = r#"bankmate_money_answers_total{kind="transfer",outcome="committed"}"#;
    assert_eq!(sample(&before, committed_series), 0.0);

    let (a, b, deposit) = tests::funded_pair(&c, "OPS", PASSWORD, 100_000).await;
    let mut t = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connect");
    let wrong = t.login(&a.to_string(), "wrong-password").await;
    assert!(matches!(
        wrong,
        Err(TellerError::Refused(Refusal::BadCredentials))
    ));
    t.login(&a.to_string(), PASSWORD).await.expect("login");
    let mut committed: BTreeSet<_> = [deposit].into();
    for amount in [100, 200, 300, 400, 500, 10_000_000] {
        let spec = spec(a, b, amount);
        match t.call(TellerOp::Transfer(spec)).await.expect("an answer") {
            TellerResponse::Receipt {
                state: TransferState::Committed,
                ..
            } => {
                committed.insert(spec.id);
            }
            TellerResponse::Receipt {
                state: TransferState::Aborted(Refusal::InsufficientFunds),
                ..
            } => assert_eq!(amount, 10_000_000),
            other => panic!("{other:?}"),
        }
    }
    // An account with SMS alerts: its deposit leaves a message for the notifier.
    let sms = c
        .open_account(0, "OPS-SMS", PASSWORD, true)
        .await
        .expect("open");
    let id = new_transfer_id();
    let admin = c.admin(0).await.expect("admin");
    let op = TellerOp::Deposit {
        id,
        account: sms,
        amount: Amount::from_minor(700).expect("amount"),
    };
    assert!(matches!(
        admin.call(op).await.expect("deposit"),
        TellerResponse::Receipt {
            state: TransferState::Committed,
            ..
        }
    ));
    committed.insert(id);

    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let text = fetch(&format!("{b1}/metrics")).await.1;
        if sample(&text, "bankmate_sms_sent_total") >= 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let got = |series: &str| sample(&after, series);
    assert_eq!(got(committed_series), 5.0, "{after}");
    let refused = r#"bankmate_money_answers_total{kind="transfer",outcome="insufficient_funds"}"#;
    assert_eq!(got(refused), 1.0);
    assert_eq!(got(r#"bankmate_money_seconds_count{kind="transfer"}"#), 6.0);
    assert!(got(r#"bankmate_money_answers_total{kind="deposit",outcome="committed"}"#) >= 2.0);
    assert!(got(r#"bankmate_twopc_durable_seconds_count{kind="prepare"}"#) >= 1.0);
    assert!(got(r#"bankmate_twopc_durable_seconds_count{kind="decision"}"#) >= 1.0);
    // b1 coordinated six transfers (one refused at its own leg): six voting phases, each
    // decided before its answer; the acks of the last may still be on their way.
    assert_eq!(
        got(r#"bankmate_twopc_phase_seconds_count{kind="voting"}"#),
        6.0,
        "{after}"
    );
    assert!(got(r#"bankmate_twopc_phase_seconds_count{kind="acks"}"#) >= 5.0);
    assert!(got("bankmate_twopc_messages_sent_total") >= 5.0);
    assert!(got("bankmate_writer_batch_ops_count") >= 6.0);
    assert!(got("bankmate_writer_commit_seconds_count") >= 6.0);
    assert!(got(r#"bankmate_logins_total{kind="bad_credentials"}"#) >= 1.0);
    assert!(got(r#"bankmate_logins_total{kind="ok"}"#) >= 1.0);
    assert_eq!(got("bankmate_peers_connected"), 1.0);
    assert_eq!(got("bankmate_in_doubt_legs"), 0.0);
    assert!(got("bankmate_sms_sent_total") >= 1.0, "{after}");
    assert_eq!(got("bankmate_sms_outbox"), 0.0);

    let (status, ready) = fetch(&format!("{b1}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("engine: running") && ready.contains("other branches connected: 1 of 1")
    );
    // The log (not a terminal) has no colour codes, and a money line names its id.
    let log = std::fs::read_to_string(c.nodes[0].dir.join("node.log")).expect("node.log");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    let some = committed
        .iter()
        .find(|id| **id != deposit)
        .expect("a transfer");
    assert!(
        log.contains(&format!("id={some}")) && log.contains("money answered"),
        "{log}"
    );
    // With b2 gone, b1 is still ready (peers are reported, not required).
    let mut c = c;
    c.kill(1);
    let (status, ready) = fetch(&format!("{b1}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    c.start_node(1, &[]).expect("restart b2");
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

/// A transfer `from` -> `to` of `minor` sent by `from`'s customer through branch `at`;
/// it must be answered committed. Its id.
async fn committed_transfer(
    c: &Cluster,
    at: usize,
    from: wire::AccountNumber,
    to: wire::AccountNumber,
    minor: i64,
) -> wire::TransferId {
    tests::committed_transfer(c, at, PASSWORD, (from, to), minor).await
}

/// `branch-node verify` on `data_dir`: (exit code, report).
/// A copy of data dir `from` (key, database and its WAL) at `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Cross-branch transfers both ways, so each branch coordinated commits and applied
/// others' commits; the network is then stopped and checked.
async fn settled_network(dir: &std::path::Path) -> Cluster {
    let mut c = Cluster::start(dir, 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "VER", PASSWORD, 100_000).await;
    let id = new_transfer_id();
    let admin2 = c.admin(1).await.expect("admin b2");
    let op = TellerOp::Deposit {
        id,
        account: b,
        amount: Amount::from_minor(50_000).expect("amount"),
    };
    admin2.call(op).await.expect("deposit at b2");
    let mut committed: BTreeSet<_> = [deposit, id].into();
    for (from, to, at) in [(a, b, 0), (b, a, 1), (a, b, 0)] {
        committed.insert(committed_transfer(&c, at, from, to, 1_000).await);
    }
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    c
}

/// The damage that changes one byte of every stored envelope (a forged signature).
const FORGE: &str = "forge";

fn forge(db: &rusqlite::Connection) {
    let mut stmt = db
        .prepare("SELECT hash, bytes FROM envelopes")
        .expect("select");
    let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("envelopes");
    for (hash, mut bytes) in rows {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        db.execute(
            "UPDATE envelopes SET bytes = ?2 WHERE hash = ?1",
            rusqlite::params![hash, bytes],
        )
        .expect("forge");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_clean_branch_and_reports_each_planted_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = settled_network(dir.path()).await;
    for n in &c.nodes {
        let (code, text) = verify(&n.dir, &c.network_file);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("verified: every check holds"), "{text}");
        assert!(!text.contains("FAIL"), "{text}");
        eprintln!("{text}");
    }
    let damages: [(&str, &str); 7] = [
        (
            "DROP TRIGGER ledger_no_update; UPDATE ledger SET amount = amount + 1 WHERE seq = 1",
            "ledger chain and balances",
        ),
        (
            "UPDATE accounts SET balance = balance + 100 WHERE serial = 1",
            "ledger chain and balances",
        ),
        (
            "DELETE FROM evidence WHERE what = 'vote'",
            "signed votes for commits coordinated here",
        ),
        (FORGE, "signed votes for commits coordinated here"),
        (
            "DELETE FROM evidence WHERE what = 'decision'",
            "signed decisions for commits applied here",
        ),
        (
            "UPDATE legs SET decision = 'abort' WHERE decision = 'commit'",
            "nothing half-applied",
        ),
        (
            "UPDATE accounts SET held = 1 WHERE serial = 1",
            "nothing half-applied",
        ),
    ];
    for (i, (sql, check_name)) in damages.iter().enumerate() {
        let copy = dir.path().join(format!("damaged-{i}"));
        copy_dir(&c.nodes[0].dir, &copy);
        let db = branch_node::store::connect_in_dir(
            &copy.join(branch_node::init::DB_FILE),
            rusqlite::OpenFlags::default(),
        )
        .expect("open copy");
        if *sql == FORGE {
            forge(&db);
        } else {
            db.execute_batch(sql).expect("plant damage");
        }
        drop(db);
        let (code, text) = verify(&copy, &c.network_file);
        assert_eq!(code, 1, "{sql}: {text}");
        assert!(
            text.contains(&format!("FAIL  {check_name}")),
            "{sql}: {text}"
        );
    }
    // Bytes overwritten in the middle of the file: SQLite's own check says so.
    let copy = dir.path().join("damaged-file");
    copy_dir(&c.nodes[0].dir, &copy);
    let db = copy.join(branch_node::init::DB_FILE);
    branch_node::store::connect_in_dir(&db, rusqlite::OpenFlags::default())
        .expect("open")
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let mut bytes = std::fs::read(&db).expect("read");
    // Every page after the first gets a garbage b-tree header.
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    for start in (page..bytes.len()).step_by(page) {
        bytes[start..start + 8].fill(0xA5);
    }
    std::fs::write(&db, bytes).expect("write");
    let (code, text) = verify(&copy, &c.network_file);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL  sqlite integrity") || text.contains("malformed"),
        "{text}"
    );
}

/// Legs branch `i` voted yes on with no decision yet, read beside the running node.
fn in_doubt(c: &Cluster, i: usize) -> i64 {
    let db = branch_node::store::connect_in_dir(
        &c.databases()[i].1,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open");
    db.query_row(
        "SELECT count(*) FROM legs WHERE decision IS NULL AND vote IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .expect("count")
}

async fn wait_in_doubt(c: &Cluster, i: usize, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_doubt(c, i) != want {
        assert!(
            Instant::now() < deadline,
            "branch {i} never had {want} in doubt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts b2 to crash before its decision is durable, sends `from` -> `to` there
/// as `from`'s customer, and waits for the crash: b1 has voted yes and waits on b2.
async fn crash_b2_deciding(
    c: &mut Cluster,
    from: wire::AccountNumber,
    to: wire::AccountNumber,
    minor: i64,
) -> TransferSpec {
    c.kill(1);
    c.start_node(1, &[("FAILPOINTS", "before_decision_durable=panic")])
        .expect("b2 with a failpoint");
    let t = customer(c, 1, from).await;
    let spec = spec(from, to, minor);
    let _ = t.call(TellerOp::Transfer(spec)).await; // no answer: b2 is gone
    assert!(
        c.wait_exit(1, Duration::from_secs(10)),
        "b2 crashed at the failpoint"
    );
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_a_transfer_is_in_doubt_restores_and_the_network_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "BAK", PASSWORD, 100_000).await;
    let id = tests::deposit(&c, 1, b, 50_000).await;
    let committed: BTreeSet<_> = [deposit, id].into();

    // b2 coordinates b -> a and dies before its decision is durable: b1 voted yes and
    // holds the credit in doubt.
    crash_b2_deciding(&mut c, b, a, 1_234).await;
    wait_in_doubt(&c, 0, 1).await;

    // The backup, taken from the running b1.
    let file = dir.path().join("b1.backup");
    let (code, said) = branch_node(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        c.nodes[0].dir.as_os_str(),
        "--to".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("1 legs in doubt"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the backup is owner-only");
    let again = branch_node(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        c.nodes[0].dir.as_os_str(),
        "--to".as_ref(),
        file.as_os_str(),
    ]);
    assert_ne!(again.0, 0, "an existing file is never overwritten");

    // b2 comes back: its recovery aborts the transfer (presumed abort) and tells b1.
    c.start_node(1, &[]).expect("b2 again");
    wait_in_doubt(&c, 0, 0).await;

    // b1's disk is lost; its database comes back from the backup, in doubt again.
    c.kill(0);
    for f in ["", "-wal", "-shm"] {
        let path = c.nodes[0]
            .dir
            .join(format!("{}{f}", branch_node::init::DB_FILE));
        let _ = std::fs::remove_file(path);
    }
    let restore = |c: &Cluster| {
        branch_node(&[
            "restore".as_ref(),
            "--from".as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            c.nodes[0].dir.as_os_str(),
            "--network".as_ref(),
            c.network_file.as_os_str(),
        ])
    };
    let (code, said) = restore(&c);
    assert_eq!(code, 0, "{said}");
    let (code, said) = restore(&c);
    assert_ne!(code, 0, "never over a database: {said}");
    let (code, report) = verify(&c.nodes[0].dir, &c.network_file);
    assert_eq!(code, 0, "{report}");
    c.start_node(0, &[]).expect("b1 from its backup");
    wait_in_doubt(&c, 0, 0).await;
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    for n in &c.nodes {
        let (code, text) = verify(&n.dir, &c.network_file);
        assert_eq!(code, 0, "{text}");
    }
}

/// `teller-cli --json` as branch `branch`'s admin: the parsed answer.
fn admin_json(c: &Cluster, branch: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(teller_cli_bin().expect("teller-cli"))
        .arg("--network-file")
        .arg(&c.network_file)
        .args([
            "--branch",
            branch,
            "--user",
            "admin",
            "--password-env",
            "PW",
            "--json",
            "admin",
        ])
        .args(args)
        .env("PW", scenarios::cluster::ADMIN_PASSWORD)
        .output()
        .expect("run teller-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_in_doubt_follow_a_transfer_across_branches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "TRC", PASSWORD, 100_000).await;
    let id = committed_transfer(&c, 0, a, b, 4_321).await;
    let mut committed: BTreeSet<_> = [deposit, id].into();

    // The trace from b2: b1 coordinated and holds b2's signed vote; b2 holds b1's signed
    // decision; both have their ledger line.
    let deadline = Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let v = admin_json(&c, "b2", &["trace", &id.to_string()]);
        if v["branches"][0]["coordinated"]["ended"] == true || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (b1, b2) = (&trace["branches"][0], &trace["branches"][1]);
    assert_eq!(b1["coordinated"]["decision"], "Commit", "{trace}");
    assert_eq!(b1["coordinated"]["ended"], true, "{trace}");
    let signed = |t: &serde_json::Value, what: &str, by: u64| {
        t["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|e| e["what"] == what && e["signer"] == by && e["verified"] == true)
    };
    assert!(signed(b1, "vote", 2), "{trace}");
    assert!(signed(b2, "decision", 1), "{trace}");
    assert_eq!(b2["leg"]["decision"], "Commit", "{trace}");
    assert_eq!(b2["leg"]["vote"], "yes", "{trace}");
    assert_eq!(b1["ledger"][0]["kind"], "TransferDebit", "{trace}");
    assert_eq!(b2["ledger"][0]["kind"], "TransferCredit", "{trace}");
    assert_eq!(trace["unreachable"], serde_json::json!([]));

    // A refused withdrawal leaves no ledger line, but its branch's record of the id is
    // traced, as transfer-status finds it.
    let refused = new_transfer_id();
    let r = customer(&c, 0, a)
        .await
        .call(TellerOp::Withdraw {
            id: refused,
            account: a,
            amount: Amount::from_minor(90_000_000).expect("amount"),
        })
        .await;
    assert!(
        matches!(
            r,
            Ok(TellerResponse::Receipt {
                state: TransferState::Aborted(_),
                ..
            })
        ),
        "{r:?}"
    );
    let v = admin_json(&c, "b2", &["trace", &refused.to_string()]);
    let movement = &v["branches"][0]["movement"];
    assert_eq!(
        movement["accounts"],
        serde_json::json!([a.to_string()]),
        "{v}"
    );
    assert!(
        movement["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("insufficient_funds")),
        "{v}"
    );

    // b2 coordinates b -> a and dies before deciding: b1 waits on it.
    assert_eq!(
        admin_json(&c, "b1", &["in-doubt"])["in_doubt"],
        serde_json::json!([])
    );
    let stuck = crash_b2_deciding(&mut c, b, a, 1_000).await;
    let v = admin_json(&c, "b1", &["in-doubt"]);
    let item = &v["in_doubt"][0];
    assert_eq!(item["id"], stuck.id.to_string(), "{v}");
    assert_eq!(item["role"], "AwaitingDecision", "{v}");
    assert_eq!(item["waiting_on"], serde_json::json!([2]), "{v}");
    assert_eq!(v["unreachable"], serde_json::json!([2]), "{v}");

    c.start_node(1, &[]).expect("b2 again");
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin_json(&c, "b1", &["in-doubt"])["in_doubt"] != serde_json::json!([]) {
        assert!(Instant::now() < deadline, "recovery finishes it");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    committed.retain(|id| *id != stuck.id);
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_prints_a_ready_block_and_json_logs_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "lan-admin-password\n").expect("pw");
    let data = dir.path().join("lan");
    let (code, said) = branch_node(&[
        "init".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--branch-id".as_ref(),
        "9".as_ref(),
        "--name".as_ref(),
        "lan".as_ref(),
        "--listen".as_ref(),
        "/ip4/127.0.0.1/tcp/7001".as_ref(),
        "--admin-password-file".as_ref(),
        pw.as_os_str(),
        "--key-file".as_ref(),
        scenarios::cluster::kek_file(dir.path())
            .expect("kek")
            .as_os_str(),
    ]);
    assert_eq!(code, 0, "{said}");
    let block = &said[said.find("[[branch]]").expect("a block")..];
    assert!(!block.contains('#'), "no placeholder to edit: {block}");
    let file = dir.path().join("network.toml");
    std::fs::write(&file, block).expect("write");
    let net = client::network_file::NetworkFile::load(&file).expect("the block is a network file");
    let lan = net.by_name("lan").expect("lan");
    assert_eq!(
        lan.first().addresses[0].to_string(),
        "/ip4/127.0.0.1/tcp/7001"
    );

    let mut c =
        Cluster::start(&dir.path().join("net"), 1, &["--log-format", "json"]).expect("cluster");
    let account = c
        .open_account(0, "JSON-1", PASSWORD, false)
        .await
        .expect("open");
    let id = new_transfer_id();
    let op = TellerOp::Deposit {
        id,
        account,
        amount: Amount::from_minor(100).expect("amount"),
    };
    c.admin(0)
        .await
        .expect("admin")
        .call(op)
        .await
        .expect("deposit");
    c.stop();
    let log = std::fs::read_to_string(c.nodes[0].dir.join("node.log")).expect("node.log");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(
        log.contains(&id.to_string()),
        "the deposit's line names its id"
    );
}

/// `teller-cli admin reconcile --settle-secs 0 --json` at b1: (exit code, report).
fn reconcile(c: &Cluster) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(teller_cli_bin().expect("teller-cli"))
        .arg("--network-file")
        .arg(&c.network_file)
        .args([
            "--branch",
            "b1",
            "--user",
            "admin",
            "--password-env",
            "PW",
            "--json",
        ])
        .args(["admin", "reconcile", "--settle-secs", "0"])
        .env("PW", scenarios::cluster::ADMIN_PASSWORD)
        .output()
        .expect("run teller-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code().unwrap_or(-1), v)
}

/// `n` transfers of 0.01 from `from` to `to` as node `at`'s admin, in bulk payments of
/// 1,000, each with a random id (no time in it, as a client may choose): all committed.
async fn random_id_payments(
    c: &Cluster,
    at: usize,
    from: AccountNumber,
    to: AccountNumber,
    n: usize,
) {
    let admin = c.admin(at).await.expect("admin");
    for _ in 0..n / 1_000 {
        let transfers = (0..1_000)
            .map(|_| TransferSpec {
                id: wire::TransferId::from_random_bytes(rand::random()),
                from,
                to,
                amount: Amount::from_minor(1).expect("amount"),
            })
            .collect();
        let r = admin
            .call(TellerOp::TransferBatch { transfers })
            .await
            .expect("answer");
        let TellerResponse::Receipts(lines) = r else {
            panic!("{r:?}")
        };
        let committed = |l: &&wire::teller::LineReceipt| {
            matches!(
                l.answer,
                wire::teller::LineAnswer::State(TransferState::Committed)
            )
        };
        assert_eq!(lines.iter().filter(committed).count(), 1_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_compares_every_transfer_whatever_its_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, _) = tests::funded_pair(&c, "UID", PASSWORD, 100_000).await;
    tests::deposit(&c, 1, b, 100_000).await;
    random_id_payments(&c, 0, a, b, 3_000).await;
    random_id_payments(&c, 1, b, a, 1_000).await;
    let (code, v) = reconcile(&c);
    assert_eq!(
        (code, &v["all_agree"]),
        (0, &serde_json::json!(true)),
        "{v}"
    );
    let pair = |from: u64| {
        v["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .find(|p| p["from"] == from)
            .expect("pair")
            .clone()
    };
    assert_eq!(
        pair(1)["compared"],
        3_000,
        "every one, though the ids carry no time"
    );
    assert_eq!(pair(1)["sent_total"], "30.00");
    assert_eq!(pair(2)["compared"], 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_agrees_then_names_a_transfer_one_side_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, _) = tests::funded_pair(&c, "REC", PASSWORD, 100_000).await;
    let mut sent = Vec::new();
    for amount in [1_000, 2_500] {
        sent.push(committed_transfer(&c, 0, a, b, amount).await);
    }
    // Every leg applied at both branches before the statements are taken.
    for _ in 0..100 {
        if in_doubt(&c, 1) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, v) = reconcile(&c);
    assert_eq!(
        (code, &v["all_agree"]),
        (0, &serde_json::json!(true)),
        "{v}"
    );
    let out = v["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .find(|p| p["from"] == 1)
        .expect("1 -> 2")
        .clone();
    assert_eq!(
        (out["sent_count"].clone(), out["sent_total"].clone()),
        (serde_json::json!(2), serde_json::json!("35.00")),
        "{v}"
    );

    // b2 loses the ledger line of one credit (planted while it is stopped).
    c.kill(1);
    let db =
        branch_node::store::connect_in_dir(&c.databases()[1].1, rusqlite::OpenFlags::default())
            .expect("open b2");
    let blob = sent[1].0.to_be_bytes().to_vec();
    db.execute_batch("DROP TRIGGER ledger_no_delete")
        .expect("drop trigger");
    let gone = db
        .execute("DELETE FROM ledger WHERE transfer_id = ?1", [blob])
        .expect("delete");
    assert_eq!(gone, 1);
    drop(db);
    c.start_node(1, &[]).expect("b2 again");
    let (code, v) = reconcile(&c);
    assert_eq!(code, 1, "{v}");
    let out = v["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .find(|p| p["from"] == 1)
        .expect("1 -> 2")
        .clone();
    assert_eq!(out["agree"], false, "{v}");
    let named = out["only_sender_lists"].as_array().expect("names").clone();
    assert_eq!(named.len(), 1, "{v}");
    assert!(
        named[0]
            .as_str()
            .expect("id")
            .starts_with(&sent[1].to_string()),
        "{v}"
    );
    c.stop();
}

/// Transfers sent at once over one connection under one session travel together (the
/// node's batch histogram counts requests of many lines), and each caller gets exactly
/// the answer a transfer of its own would: committed, refused for funds, refused as not
/// theirs to move, the same outcome for an id sent twice, and one outcome for an id
/// sent with two contents. The money moved is what the answers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_at_once_over_one_connection_travel_together_with_their_own_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &["--metrics-listen", "127.0.0.1:0"]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "COAL", PASSWORD, 10_000).await;
    let t = customer(&c, 0, a).await;
    // (transfer, the answer it must get: Some(refusal) or None for committed)
    let mut sends: Vec<(TransferSpec, Option<Refusal>)> = Vec::new();
    for i in 0..200 {
        let s = spec(a, b, 10);
        sends.push((s, None));
        if i % 10 == 0 {
            sends.push((s, None)); // the same id again, at once
        }
    }
    sends.extend((0..40).map(|_| (spec(a, b, 1_000_000), Some(Refusal::InsufficientFunds))));
    sends.extend((0..30).map(|_| (spec(b, a, 1), Some(Refusal::Unauthorized))));
    let twin = spec(a, b, 20);
    let other_content = TransferSpec {
        amount: Amount::from_minor(21).expect("amount"),
        ..twin
    };
    let calls = sends
        .iter()
        .map(|(s, _)| *s)
        .chain([twin, other_content])
        .map(|s| {
            let t = t.clone();
            async move { t.call(TellerOp::Transfer(s)).await }
        });
    let answers = futures::future::join_all(calls).await;
    let mut committed: BTreeSet<_> = [deposit].into();
    for ((s, expected), answer) in sends.iter().zip(&answers) {
        match (expected, answer) {
            (
                None,
                Ok(TellerResponse::Receipt {
                    id,
                    state: TransferState::Committed,
                }),
            ) => {
                assert_eq!(*id, s.id);
                committed.insert(s.id);
            }
            (Some(Refusal::InsufficientFunds), Ok(TellerResponse::Receipt { state, .. })) => {
                assert_eq!(*state, TransferState::Aborted(Refusal::InsufficientFunds));
            }
            (Some(Refusal::Unauthorized), Err(TellerError::Refused(Refusal::Unauthorized))) => {}
            other => panic!("{s:?}: {other:?}"),
        }
    }
    let twins: Vec<_> = answers[sends.len()..].iter().collect();
    let won = twins
        .iter()
        .filter(|a| {
            matches!(
                a,
                Ok(TellerResponse::Receipt {
                    state: TransferState::Committed,
                    ..
                })
            )
        })
        .count();
    let conflict = twins.iter().filter(|a| {
        matches!(
            a,
            Ok(TellerResponse::Receipt {
                state: TransferState::Aborted(Refusal::IdConflict),
                ..
            })
        )
    });
    assert_eq!((won, conflict.count()), (1, 1), "{twins:?}");
    committed.insert(twin.id);

    let text = fetch(&format!("{}/metrics", base(&c, 0))).await.1;
    let (requests, lines) = (
        sample(&text, "bankmate_transfer_batch_lines_count"),
        sample(&text, "bankmate_transfer_batch_lines_sum"),
    );
    let batch_series: Vec<&str> = text.lines().filter(|l| l.contains("batch_lines")).collect();
    assert!(
        requests >= 1.0 && lines > requests,
        "{requests} batches of {lines} lines: {batch_series:#?}"
    );
    // The debits apply once each decision reaches the legs: wait for nothing in flight.
    check::wait_settled(&c.databases(), Duration::from_secs(30)).expect("settled");
    let view = t
        .call(TellerOp::Balance { account: a })
        .await
        .expect("balance");
    let TellerResponse::Account(view) = view else {
        panic!("{view:?}")
    };
    // 200 transfers of 0.10 and one of 0.20 or 0.21 left the rest of 100.00.
    let left = view.balance.minor();
    assert!(
        left == 10_000 - 2_000 - 20 || left == 10_000 - 2_000 - 21,
        "{left}"
    );
    let mut c = c;
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "{:?}", report.violations);
}

/// Node `i`'s `/readyz`, once it is 200 (within 10 s): its body.
async fn ready(c: &Cluster, i: usize) -> String {
    let url = format!("{}/readyz", base(c, i));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = fetch(&url).await;
        if status == 200 {
            return text;
        }
        assert!(Instant::now() < deadline, "node {i} never ready: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a data dir's database and Raft log (the disk is lost; the key was kept apart).
/// Every file and dir under `dir` is its owner's alone (no group or other bits).
fn owner_only(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("entry");
        let mode = e.metadata().expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is {:o}",
            e.path().display(),
            mode & 0o777
        );
        if e.file_type().expect("type").is_dir() {
            owner_only(&e.path());
        }
    }
}

fn lose_disk(dir: &std::path::Path, files: &[&str]) {
    for name in files {
        for f in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}{f}")));
        }
    }
}

/// Deletes one log entry in the middle of a copy of replica dir `dir`: verify must
/// name the gap.
fn verify_finds_a_log_gap(
    dir: &std::path::Path,
    copy: &std::path::Path,
    network: &std::path::Path,
) {
    copy_dir(dir, copy);
    let log =
        branch_node::store::connect_in_dir(&copy.join("raft.db"), rusqlite::OpenFlags::default())
            .expect("log");
    let (first, last): (i64, i64) = log
        .query_row("SELECT min(idx), max(idx) FROM log", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("span");
    assert!(last - first >= 2, "a log of at least three entries");
    log.execute("DELETE FROM log WHERE idx = ?1", [last - 1])
        .expect("plant a gap");
    drop(log);
    let (code, report) = verify(copy, network);
    assert_ne!(code, 0, "{report}");
    assert!(report.contains("1 missing"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_branch_that_lost_every_replica_comes_back_from_one_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let mut c = Cluster::start_replicated(dir.path(), 2, 3, &metrics)
        .await
        .expect("network");
    let b1 = c.replicas_of(wire::BranchId(1));
    let lead = c.serving_replica(wire::BranchId(1)).expect("b1 serves");
    for &i in &b1 {
        let said = ready(&c, i).await;
        let role = if i == lead {
            "leader, serving".to_owned()
        } else {
            format!("follower of replica {}", c.nodes[lead].replica)
        };
        assert!(said.contains(&role), "node {i}: {said}");
    }

    let (a, b, deposit) = tests::funded_pair_at(&c, (0, 3), "RBK", PASSWORD, 100_000).await;
    let mut committed: BTreeSet<_> = [deposit].into();
    committed.insert(committed_transfer(&c, 0, a, b, 1_000).await);
    committed.insert(committed_transfer(&c, 3, b, a, 400).await);
    // The leader counts b2 once, however many of b2's replicas it is connected to, and
    // not its own branch's replicas.
    let scrape = fetch(&format!("{}/metrics", base(&c, lead))).await.1;
    assert_eq!(sample(&scrape, "bankmate_peers_connected"), 1.0, "{scrape}");

    // The backup, from a follower while the branch runs; then every replica's disk goes.
    let follower = *b1.iter().find(|&&i| i != lead).expect("a follower");
    let file = dir.path().join("b1.backup");
    let (code, said) = branch_node(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        c.nodes[follower].dir.as_os_str(),
        "--to".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(code, 0, "{said}");
    // Restored beside the live group (replica 1's key, a new dir): refused, since the
    // branch keeps renewing its lease; nothing is left behind.
    let beside = dir.path().join("beside");
    std::fs::create_dir_all(&beside).expect("mkdir");
    let key = branch_node::init::KEY_FILE;
    std::fs::copy(c.nodes[b1[0]].dir.join(key), beside.join(key)).expect("key");
    let (code, said) = branch_node(&[
        "restore".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        beside.as_os_str(),
        "--network".as_ref(),
        c.network_file.as_os_str(),
        "--wait-secs".as_ref(),
        "2".as_ref(),
    ]);
    assert!(code != 0 && said.contains("[branch_in_use]"), "{said}");
    assert!(!beside.join(branch_node::init::DB_FILE).exists(), "{said}");
    for &i in &b1 {
        c.kill(i);
        lose_disk(&c.nodes[i].dir, &[branch_node::init::DB_FILE]);
    }
    let restore = |i: usize, join: bool| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "restore".as_ref(),
            "--from".as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            c.nodes[i].dir.as_os_str(),
            "--network".as_ref(),
            c.network_file.as_os_str(),
        ];
        if join {
            args.push("--join".as_ref());
        }
        branch_node(&args)
    };
    let (code, said) = restore(b1[0], false);
    assert!(code != 0 && said.contains("Raft log"), "a kept log: {said}");
    for &i in &b1 {
        lose_disk(&c.nodes[i].dir, &["raft.db"]);
    }
    let (code, said) = restore(b1[0], false);
    assert!(code == 0 && said.contains("new log"), "{said}");
    for &i in &b1[1..] {
        let (code, said) = restore(i, true);
        assert!(code == 0 && said.contains("takes the branch"), "{said}");
    }
    let (code, report) = verify(&c.nodes[b1[0]].dir, &c.network_file);
    assert_eq!(code, 0, "{report}");

    for &i in &b1 {
        c.start_node(i, &[]).expect("b1 replica from the backup");
    }
    c.wait_serving(0, scenarios::cluster::SERVE_WAIT)
        .await
        .expect("b1 serves its new log");
    committed.insert(committed_transfer(&c, 0, a, b, 250).await);
    committed.insert(committed_transfer(&c, 3, b, a, 100).await);
    let disagree = check::replicas_agree(&c, Duration::from_secs(15)).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    let report = check::finish(&mut c, &committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    for n in &c.nodes {
        let (code, text) = verify(&n.dir, &c.network_file);
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("ok    replica's store and Raft log"),
            "{text}"
        );
        owner_only(&n.dir);
    }
    verify_finds_a_log_gap(
        &c.nodes[b1[1]].dir,
        &dir.path().join("gap"),
        &c.network_file,
    );
}
