//! Short forms of `scenarios demo` and of every shipped fault scenario, each on its own
//! network of real processes and each ending with every invariant checked; and a check
//! of the checker: damage planted in the SQLite files by hand is reported.

use std::collections::BTreeSet;
use std::path::PathBuf;

use client::network_file::NetworkFile;
use scenarios::cluster::Cluster;
use scenarios::scenario::{self, RunOptions, Scenario};
use scenarios::workload::{self, Tellers, Workload};
use scenarios::{answers, check};

fn file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

/// Runs the scenario in `name`, its times multiplied by `scale`, and asserts it passed.
async fn play(name: &str, scale: f64) -> scenarios::report::Summary {
    let s = Scenario::load(&file(name))
        .expect("scenario file")
        .scaled(scale);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = scenario::run(&s, dir.path(), &RunOptions::default())
        .await
        .expect("scenario ran");
    println!("{}", summary.table());
    assert!(summary.ok(), "{}", summary.table());
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_branches_lose_their_leaders() {
    let s = play("files/replicas-leaders-crash.toml", 0.7).await;
    assert!(
        s.faults
            .iter()
            .any(|f| f.contains("crashed at after_decision_durable"))
    );
    assert!(s.faults.iter().any(|f| f.contains("killed -9")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_short() {
    let s = play("demo.toml", 0.5).await;
    assert!(s.faults.iter().any(|f| f.contains("killed -9")));
    assert!(s.faults.iter().any(|f| f.contains("restarted")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_coordinator_before_decision() {
    play("files/crash-coordinator-before-decision.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_coordinator_after_decision_durable() {
    play("files/crash-coordinator-after-decision-durable.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_coordinator_after_decision_sent() {
    play("files/crash-coordinator-after-decision-sent.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_participant_after_vote() {
    play("files/crash-participant-after-vote.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_during_prepare() {
    play("files/partition-during-prepare.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_during_decision() {
    play("files/partition-during-decision.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_a_branch() {
    play("files/pause-branch.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_on_a_hot_account() {
    play("files/hot-account.toml", 0.7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_peer() {
    let s = play("files/rogue-peer.toml", 0.7).await;
    assert!(
        s.faults
            .iter()
            .any(|f| f.contains("rogue attacked b1: 0 wrong answers")),
        "{:?}",
        s.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_each_branch_while_customers_retry_across_branches() {
    let s = play("files/kill-each-branch.toml", 0.8).await;
    for b in 1..=3 {
        assert!(
            s.faults
                .iter()
                .any(|f| f.starts_with(&format!("b{b} killed -9"))),
            "{:?}",
            s.faults
        );
    }
    assert!(s.answers.resent > 0, "some answered ids were sent again");
    assert!(s.answers.asked > 0, "ids were asked about after the heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_payments_through_crashes() {
    let s = play("files/bulk-payments-crash.toml", 0.8).await;
    assert!(s.faults.len() >= 2, "{:?}", s.faults);
    assert!(s.answers.resent > 0, "some batches were sent again");
    assert!(s.answers.committed > 200, "{:?}", s.answers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restores_a_branch_mid_run() {
    let s = play("files/restore-a-branch.toml", 0.7).await;
    let restored = s
        .faults
        .iter()
        .find(|f| f.contains("restored from the backup"))
        .expect("the restore ran");
    assert!(restored.contains("epoch 2"), "{restored}");
    assert!(
        s.answers.lost_by_restore > 0,
        "the restore lost answered work: {:?}",
        s.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    // A quarter of the minute-long soak: still a handful of random faults.
    let s = play("files/soak.toml", 0.25).await;
    assert!(s.faults.len() >= 4, "{:?}", s.faults);
}

#[test]
fn every_shipped_scenario_file_parses() {
    let dir = file("files");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("scenario folder") {
        let path = entry.expect("entry").path();
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        n += 1;
    }
    assert!(n >= 10, "{n} scenario files");
    // A file naming a branch that does not exist, or an unknown failpoint, is refused.
    let bad =
        "name = \"x\"\n[[faults]]\nkind = \"pause\"\nbranch = 4\nat_ms = 0\nduration_ms = 1\n";
    assert!(Scenario::parse(bad).is_err());
    let bad = "name = \"x\"\n[[faults]]\nkind = \"kill\"\nbranch = 1\nfailpoint = \"nope\"\nrestart_after_ms = 1\n";
    assert!(Scenario::parse(bad).is_err());
    let bad =
        "name = \"x\"\n[[faults]]\nkind = \"rogue\"\ntarget = 1\nimpersonate = 1\nat_ms = 0\n";
    assert!(
        Scenario::parse(bad).is_err(),
        "a rogue impersonating its target"
    );
    assert!(Scenario::parse("name = \"x\"\nbranches = 0\n").is_err());
    assert!(Scenario::parse("name = \"x\"\n[accounts]\nper_branch = 1\n").is_err());
    assert!(
        Scenario::parse("name = \"x\"\nbogus = 1\n").is_err(),
        "unknown keys"
    );
}

/// The binary's refusals: a missing file, a malformed one, a folder already in use.
/// Each exits 2 with one line, before starting anything.
#[test]
fn scenarios_binary_refuses_bad_input() {
    let bin = scenarios::cluster::workspace_bin("scenarios", "scenarios").expect("binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = 3\n").expect("write");
    std::fs::write(dir.path().join("in-use"), "").expect("write");
    // Two replicas per branch, and a rogue peer (one branch's key) among replicas.
    let even = dir.path().join("even.toml");
    std::fs::write(&even, "name = \"two\"\nreplicas = 2\n").expect("write");
    let rogue = dir.path().join("rogue.toml");
    let text = "name = \"r\"\nreplicas = 3\n[[faults]]\nkind = \"rogue\"\ntarget = 1\nimpersonate = 2\nat_ms = 10\n";
    std::fs::write(&rogue, text).expect("write");
    for args in [
        vec!["run".to_string(), "no-such-file.toml".into()],
        vec!["run".to_string(), bad.display().to_string()],
        vec!["run".to_string(), even.display().to_string()],
        vec!["run".to_string(), rogue.display().to_string()],
        vec![
            "up".to_string(),
            "--dir".into(),
            dir.path().display().to_string(),
        ],
    ] {
        let o = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("scenarios: "), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        let why = match args[1].as_str() {
            a if a.ends_with("even.toml") => "replicas must be 1, 3 or 5",
            a if a.ends_with("rogue.toml") => "branches of one replica only",
            _ => "",
        };
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").count() == 4,
        "nothing was created"
    );
    // A branch runs 1, 3 or 5 replicas: anything else is refused before anything starts.
    let o = std::process::Command::new(&bin)
        .args(["up", "--replicas", "2", "--dir"])
        .arg(dir.path().join("never"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("a branch runs 1, 3 or 5 replicas"), "{err}");
    assert!(!dir.path().join("never").exists(), "nothing was created");
}

/// The checker reports damage planted by hand: money created, a rewritten ledger entry,
/// a "committed" answer no ledger has, and a commit whose signed proof was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_planted_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let targets = vec![c.target(0).expect("t"), c.target(1).expect("t")];
    let (accounts, mut committed) = workload::open_accounts(&targets, 2, 10_000)
        .await
        .expect("accounts");
    let tellers = Tellers::connect(&targets, 1).await.expect("tellers");
    let w = Workload {
        clients: 2,
        count: Some(40),
        ..Workload::default()
    };
    let records = workload::run(&w, &accounts, &tellers, Default::default())
        .await
        .expect("workload");
    committed.extend(
        records
            .iter()
            .filter(|r| r.answer == workload::Answer::Committed)
            .map(|r| r.id),
    );
    let dbs = c.databases();
    check::wait_settled(&dbs, std::time::Duration::from_secs(30)).expect("settle");
    c.stop();
    let network = NetworkFile::load(&c.network_file).expect("network");
    let check_now = |committed: &BTreeSet<_>| {
        check::check(&network, &check::audit_all(&dbs).expect("audit"), committed)
    };
    let clean = check_now(&committed);
    assert!(clean.ok(), "{:?}", clean.violations);
    // The answer checker over the same ledgers: clean, then with answers that lie.
    let audits = check::audit_all(&dbs).expect("audit");
    let no_statuses = Default::default();
    let answered = answers::check(&records, &no_statuses, &audits, &[]);
    assert!(answered.violations.is_empty(), "{:?}", answered.violations);
    let mut lies = records.clone();
    let moved = lies
        .iter_mut()
        .find(|r| r.answer == workload::Answer::Committed && r.kind == workload::Kind::Cross)
        .expect("a committed cross-branch transfer");
    moved.answer = workload::Answer::Refused(wire::Refusal::InsufficientFunds);
    let mut made_up = *moved;
    made_up.id = teller_cli::new_transfer_id();
    made_up.answer = workload::Answer::Committed;
    lies.push(made_up);
    let found = answers::check(&lies, &no_statuses, &audits, &[]).violations;
    assert!(
        found
            .iter()
            .any(|v| v.contains("refused, but it moved money")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("committed, but its money is not")),
        "{found:?}"
    );
    assert!(
        clean.proofs_checked > 0,
        "the workload made cross-branch commits"
    );

    let sql = |i: usize, q: &str| {
        let conn = branch_node::store::connect_in_dir(&dbs[i].1, rusqlite::OpenFlags::default())
            .expect("open");
        conn.execute_batch(q).expect("plant");
    };
    let says = |r: &check::Report, what: &str| {
        assert!(
            r.violations.iter().any(|v| v.contains(what)),
            "expected a {what} violation, got {:?}",
            r.violations
        );
    };
    // A made-up "committed" answer.
    let mut fake = committed.clone();
    fake.insert(teller_cli::new_transfer_id());
    says(&check_now(&fake), "durability");
    // Money created out of nothing.
    sql(
        0,
        "UPDATE accounts SET balance = balance + 1 WHERE serial = 1",
    );
    says(&check_now(&committed), "conservation");
    sql(
        0,
        "UPDATE accounts SET balance = balance - 1 WHERE serial = 1",
    );
    assert!(check_now(&committed).ok());
    // The signed evidence behind cross-branch commits deleted on branch 2.
    sql(1, "DELETE FROM evidence");
    says(&check_now(&committed), "proof");
    // A ledger entry rewritten (past the append-only trigger).
    sql(
        0,
        "DROP TRIGGER ledger_no_update; UPDATE ledger SET amount = amount + 1 WHERE rowid = 1",
    );
    says(&check_now(&committed), "ledger does not verify");
}

/// The leader of a replicated branch crashes at a 2PC failpoint, as coordinator or as
/// participant: a follower takes over with the recovery a restart runs, and every
/// answer and invariant holds, every replica the same. The suite runs four of the ten
/// failpoints; `REPLICA_FAILPOINTS=all` runs every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_leader_crashes_at_2pc_failpoints() {
    let all = branch_node::node::engine::FAILPOINTS;
    let chosen: Vec<&str> = match std::env::var("REPLICA_FAILPOINTS").as_deref() {
        Ok("all") => all.to_vec(),
        _ => vec![
            "after_prepare_durable",
            "after_vote_sent",
            "before_decision_durable",
            "after_apply",
        ],
    };
    for fp in chosen {
        let text = format!(
            "name = \"replicated leader crashes at {fp}\"\nbranches = 2\nreplicas = 3\n\
             [workload]\nclients = 6\nduration_ms = 4000\n\
             mix = {{ local = 20, cross = 80 }}\nseed = 21\n\
             [[faults]]\nkind = \"kill\"\nbranch = 1\nfailpoint = \"{fp}\"\n\
             after_hits = 30\nrestart_after_ms = 800\n"
        );
        let s = Scenario::parse(&text).expect("scenario");
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = scenario::run(&s, dir.path(), &RunOptions::default())
            .await
            .expect("scenario ran");
        println!("{}", summary.table());
        assert!(summary.ok(), "{fp}: {}", summary.table());
        assert!(
            summary
                .faults
                .iter()
                .any(|f| f.contains(&format!("crashed at {fp}"))),
            "{fp} fired"
        );
    }
}
