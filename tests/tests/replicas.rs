//! Branches that run as three replicas each (real `branch-node` processes, Raft over
//! libp2p, a store per replica): the leader of a branch is killed with SIGKILL while
//! cross-branch transfers run, a new leader serves within 3 s, and no transfer a teller
//! was told is committed is lost; a branch that loses a majority of its replicas
//! refuses ("not done") instead of answering wrongly, while the others serve on. Every
//! test ends with the invariant checker and with every branch's replicas compared row
//! for row.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use scenarios::check;
use scenarios::cluster::Cluster;
use teller_cli::money::{self, MoneyAnswer, RetryPolicy};
use teller_cli::{Teller, new_transfer_id};
use wire::teller::{TellerOp, TellerResponse, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, TransferId};

/// Bound on recovery: every transfer settles within it once the branches can talk.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// A branch whose leader is killed serves again within this.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);
const PASSWORD: &str = "customer-pw";

fn amt(minor: i64) -> Amount {
    Amount::from_minor(minor).expect("non-negative")
}

/// Opens a funded account at branch index `b`; returns it.
async fn funded(c: &Cluster, b: usize, n: u32, minor: i64) -> AccountNumber {
    let customer = wire::teller::NewCustomer {
        national_id: format!("R{b}-{n}"),
        phone: "+1 555 0100".into(),
        first_name: "Rep".into(),
        last_name: format!("{n}"),
        sms_opt_in: false,
    };
    open_funded(c, b, customer, minor).await
}

/// Opens `customer`'s account at branch index `b` with `minor` deposited (committed).
async fn open_funded(
    c: &Cluster,
    b: usize,
    customer: wire::teller::NewCustomer,
    minor: i64,
) -> AccountNumber {
    let admin = c.admin_of_branch(b).await.expect("admin login");
    let opened = admin
        .call(TellerOp::OpenAccount {
            customer,
            password: PASSWORD.into(),
            existing: None,
        })
        .await
        .expect("opens");
    let TellerResponse::AccountOpened(view) = opened else {
        panic!("open account: {opened:?}");
    };
    let deposit = TellerOp::Deposit {
        id: new_transfer_id(),
        account: view.number,
        amount: amt(minor),
    };
    let r = admin.call(deposit).await.expect("deposits");
    assert!(
        matches!(
            r,
            TellerResponse::Receipt {
                state: TransferState::Committed,
                ..
            }
        ),
        "{r:?}"
    );
    view.number
}

/// The replica (node index) of branch `id` that serves it now, from the nodes' logs.
fn leader(c: &Cluster, id: BranchId) -> usize {
    c.serving_replica(id).expect("a replica serves the branch")
}

/// One customer sending `count` transfers of 1.00 from `from` to `to`, each under the
/// teller's money policy; every answer is kept.
async fn sender(
    c: &Cluster,
    from_branch: usize,
    from: AccountNumber,
    to: AccountNumber,
    count: usize,
) -> Vec<MoneyAnswer> {
    let mut t = Teller::connect(&c.branch_target(from_branch).expect("target"))
        .await
        .expect("connects");
    t.login(&from.to_string(), PASSWORD).await.expect("logs in");
    let policy = RetryPolicy::default();
    let mut answers = Vec::new();
    for _ in 0..count {
        let spec = TransferSpec {
            id: new_transfer_id(),
            from,
            to,
            amount: amt(100),
        };
        answers.push(money::send(&mut t, TellerOp::Transfer(spec), &policy).await);
    }
    answers
}

/// The final answers: the ids answered committed, and those answered aborted. A
/// transfer the killed leader had begun but not decided is aborted `interrupted` by the
/// new leader's recovery, and that is what its teller is told; funds always suffice,
/// so any other refusal, or "not done", is a failure.
fn outcomes(answers: &[MoneyAnswer]) -> (BTreeSet<TransferId>, BTreeSet<TransferId>) {
    let (mut committed, mut aborted) = (BTreeSet::new(), BTreeSet::new());
    for a in answers {
        match a {
            MoneyAnswer::Committed { id } => {
                committed.insert(*id);
            }
            MoneyAnswer::Refused {
                id,
                reason: wire::Refusal::Interrupted,
            } => {
                aborted.insert(*id);
            }
            MoneyAnswer::Unknown { .. } => {}
            other => panic!("a transfer was not carried out: {other:?}"),
        }
    }
    (committed, aborted)
}

/// Waits for nothing in flight, checks every branch's replicas hold the same branch,
/// that no transfer answered aborted moved money anywhere, stops the network and checks
/// every invariant against the committed answers.
fn finish(mut c: Cluster, committed: &BTreeSet<TransferId>, aborted: &BTreeSet<TransferId>) {
    let settled = check::wait_settled(&c.databases(), SETTLE_BOUND).expect("audit");
    assert!(
        settled.is_some(),
        "transfers still unfinished after the bound"
    );
    for audit in check::audit_all(&c.databases()).expect("audit") {
        let moved: Vec<_> = aborted
            .iter()
            .filter(|id| audit.debits.contains_key(id) || audit.credits.contains_key(id))
            .collect();
        assert!(moved.is_empty(), "answered aborted, yet applied: {moved:?}");
    }
    let disagree = check::replicas_agree(&c, Duration::from_secs(15)).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    let report = check::finish(&mut c, committed, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_within_3_s_and_no_committed_transfer_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start_replicated(dir.path(), 2, 3, &[])
        .await
        .expect("network");
    let mut accounts = Vec::new();
    for n in 0..4 {
        accounts.push((
            funded(&c, 0, n, 100_000).await,
            funded(&c, 1, n, 100_000).await,
        ));
    }
    let c_ref = &c;
    let senders = accounts
        .iter()
        .enumerate()
        .map(|(n, &(a1, a2))| async move {
            match n % 2 {
                0 => sender(c_ref, 0, a1, a2, 25).await,
                _ => sender(c_ref, 1, a2, a1, 25).await,
            }
        });
    let work = futures::future::join_all(senders);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let old = leader(c_ref, BranchId(1));
        let pid = c_ref.nodes[old].child.as_ref().map(std::process::Child::id);
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.expect("running").to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let at = Instant::now();
        c_ref
            .wait_serving(0, Duration::from_secs(10))
            .await
            .expect("a new leader serves");
        (old, at.elapsed())
    };
    let (answers, (old, failover)) = tokio::join!(work, kill);
    assert!(
        failover < FAILOVER_BOUND,
        "a new leader served after {failover:?}"
    );
    let answers: Vec<MoneyAnswer> = answers.into_iter().flatten().collect();
    let (ok, aborted) = outcomes(&answers);
    assert!(ok.len() > 80, "most transfers committed: {}", ok.len());
    // The old leader comes back as a follower and catches up.
    c.kill(old);
    c.start_node(old, &[]).expect("restarts");
    finish(c, &ok, &aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_branch_without_a_majority_refuses_and_the_others_serve_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--metrics-listen", "127.0.0.1:0"];
    let mut c = Cluster::start_replicated(dir.path(), 2, 3, &flags)
        .await
        .expect("network");
    // Each replica says its role: one leader (3) and two followers (1) per branch.
    for id in [BranchId(1), BranchId(2)] {
        let mut roles = Vec::new();
        for i in c.replicas_of(id) {
            let url = c.nodes[i].metrics_url.clone().expect("metrics address");
            let text = common::fetch(&url).await.1;
            roles.push(common::sample(&text, "bankmate_replica_role"));
            assert!(text.contains("bankmate_replica_lag_entries"), "{text}");
        }
        roles.sort_by(f64::total_cmp);
        assert_eq!(roles, [1.0, 1.0, 3.0], "branch {id}");
    }
    let (a1, b1) = (
        funded(&c, 0, 1, 10_000).await,
        funded(&c, 0, 2, 10_000).await,
    );
    let (a2, b2) = (
        funded(&c, 1, 1, 10_000).await,
        funded(&c, 1, 2, 10_000).await,
    );
    // Two of branch 1's three replicas go: it has no majority.
    let gone: Vec<usize> = c.replicas_of(BranchId(1)).into_iter().take(2).collect();
    for &i in &gone {
        c.kill(i);
    }
    let policy = RetryPolicy {
        wait: Duration::from_secs(4),
        ..RetryPolicy::default()
    };
    let mut t = Teller::connect(&c.branch_target(1).expect("target"))
        .await
        .expect("connects");
    t.login(&a2.to_string(), PASSWORD).await.expect("logs in");
    // Inside branch 2: served.
    let local = TellerOp::Transfer(TransferSpec {
        id: new_transfer_id(),
        from: a2,
        to: b2,
        amount: amt(100),
    });
    let answer = money::send(&mut t, local, &policy).await;
    assert!(
        matches!(answer, MoneyAnswer::Committed { .. }),
        "{answer:?}"
    );
    // Branch 1 itself: its last replica takes no request ("not done", nothing happened).
    let lone = Teller::connect(&c.branch_target(0).expect("target")).await;
    let refused = match lone {
        Ok(mut t) => t.login(&a1.to_string(), PASSWORD).await.map(drop),
        Err(e) => Err(e),
    };
    let err = refused.expect_err("no majority, no service");
    assert!(!err.may_have_happened(), "{err}");
    // Into branch 1 from branch 2: not committed, and never half-applied.
    let across = TellerOp::Transfer(TransferSpec {
        id: new_transfer_id(),
        from: a2,
        to: b1,
        amount: amt(100),
    });
    let answer = money::send(&mut t, across, &policy).await;
    assert!(
        !matches!(answer, MoneyAnswer::Committed { .. }),
        "no branch 1 majority, no commit: {answer:?}"
    );
    for i in gone {
        c.start_node(i, &[]).expect("restarts");
    }
    c.wait_serving(0, Duration::from_secs(15))
        .await
        .expect("serves again");
    finish(c, &BTreeSet::new(), &BTreeSet::new());
}

/// Sends `count` transfers of 1.00 each way between `a1` (branch index 0) and `a2`
/// (branch index 1); the final answers.
/// Two branches of three replicas, started, with a funded account at each.
async fn two_funded_branches(dir: &std::path::Path) -> (Cluster, AccountNumber, AccountNumber) {
    let c = Cluster::start_replicated(dir, 2, 3, &[])
        .await
        .expect("network");
    let (a1, a2) = (
        funded(&c, 0, 1, 100_000).await,
        funded(&c, 1, 1, 100_000).await,
    );
    (c, a1, a2)
}

/// A replica of branch 1 that does not lead it now (a node index).
fn a_follower(c: &Cluster) -> usize {
    let leads = leader(c, BranchId(1));
    c.replicas_of(BranchId(1))
        .into_iter()
        .find(|&i| i != leads)
        .expect("a follower")
}

async fn both_ways(
    c: &Cluster,
    a1: AccountNumber,
    a2: AccountNumber,
    count: usize,
) -> Vec<MoneyAnswer> {
    let (there, back) = tokio::join!(sender(c, 0, a1, a2, count), sender(c, 1, a2, a1, count));
    there.into_iter().chain(back).collect()
}

/// A customer whose details no file may hold in clear (nor their password, `PASSWORD`).
const PLANTED: [&str; 4] = [
    "PLANTED-NID-84127730",
    "+1 555 739 1026",
    "Zebulonica",
    "Quartermaine-Vex",
];

/// Opens [`PLANTED`]'s account at branch 1 (SMS alerts on), funds it, and logs them in;
/// returns the account and the session token's spellings (decimal and hex).
async fn plant(c: &Cluster) -> (AccountNumber, Vec<String>) {
    let customer = wire::teller::NewCustomer {
        national_id: PLANTED[0].into(),
        phone: PLANTED[1].into(),
        first_name: PLANTED[2].into(),
        last_name: PLANTED[3].into(),
        sms_opt_in: true,
    };
    let account = open_funded(c, 0, customer, 250_000).await;
    let mut me = Teller::connect(&c.branch_target(0).expect("target"))
        .await
        .expect("connects");
    me.login(&account.to_string(), PASSWORD)
        .await
        .expect("the customer logs in");
    let token = me.session().expect("a session").0;
    (account, vec![token.to_string(), format!("{token:x}")])
}

/// Every file under `dir` (data dirs, stores and their WAL, Raft logs, backups and
/// their keys files, node logs, SMS logs): none holds a planted value in clear.
fn nothing_in_clear(dir: &std::path::Path, token: &[String]) -> usize {
    let mut files = vec![dir.to_owned()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
            continue;
        }
        let bytes = std::fs::read(&path).expect("reads");
        let token = token.iter().map(String::as_str);
        for value in PLANTED.into_iter().chain([PASSWORD]).chain(token) {
            let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "{} holds {value:?} in clear", path.display());
        }
        read += 1;
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_replica_is_replaced_by_an_empty_one_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, a1, a2) = two_funded_branches(dir.path()).await;
    let (planted, token) = plant(&c).await;
    let mut answers = both_ways(&c, a1, a2, 10).await;

    // A follower's machine is gone, data dir and all; a new, empty replica takes its
    // place in the network file, and every node restarts, one at a time, to read it.
    let lost = a_follower(&c);
    c.replace_replica(lost).expect("replaced");
    let others: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != lost).collect();
    for i in others {
        c.kill(i);
        c.start_node(i, &[]).expect("restarts");
        let b = usize::from(c.nodes[i].id.0) - 1;
        c.wait_serving(b, Duration::from_secs(20))
            .await
            .expect("serves");
    }
    c.start_node(lost, &[]).expect("the new replica starts");
    answers.extend(both_ways(&c, a1, a2, 10).await);
    let backup = c.backup(leader(&c, BranchId(1))).expect("a backup");
    // The new replica caught up (by snapshot and log) and holds what the others hold.
    let settled = check::wait_settled(&c.databases(), SETTLE_BOUND).expect("audit");
    assert!(settled.is_some(), "transfers still unfinished");
    let disagree = check::replicas_agree(&c, Duration::from_secs(20)).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    let mut listed: Vec<u64> = c
        .replicas_of(BranchId(1))
        .iter()
        .map(|&i| c.nodes[i].replica)
        .collect();
    listed.sort_unstable();
    let db = c.nodes[lost].dir.join(branch_node::init::DB_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let voters = branch_node::replica::check::voters(&db).expect("reads");
        if voters == listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the voters {voters:?} are not the replicas listed {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Then the leader goes: nothing acknowledged is lost.
    let leader_now = leader(&c, BranchId(1));
    c.kill(leader_now);
    c.wait_serving(0, Duration::from_secs(10))
        .await
        .expect("a new leader serves");
    answers.extend(both_ways(&c, a1, a2, 10).await);
    c.start_node(leader_now, &[]).expect("restarts");
    let (ok, aborted) = outcomes(&answers);
    assert!(ok.len() >= 50, "most transfers committed: {}", ok.len());
    let first = c.nodes[c.replicas_of(BranchId(1))[0]].dir.clone();
    finish(c, &ok, &aborted);

    // Encrypted at rest: the stores, their WAL, the Raft logs (the new replica's came by
    // snapshot), the backup, the node logs and the SMS log hold nothing in clear; yet
    // the backup and the SMS log read back with the branch's keys.
    assert!(
        nothing_in_clear(dir.path(), &token) >= 20,
        "the files were read"
    );
    let keys = branch_node::keys::unlock(&first, None, None).expect("keys");
    let sms = branch_node::store::outbox::read_log(&first.join("sms.log"), &keys).expect("sms log");
    assert!(
        sms.iter().any(|l| l.contains(PLANTED[1])),
        "the planted customer was sent an alert: {sms:?}"
    );
    let copy =
        branch_node::store::connect(&backup, &keys, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the backup opens with the keys");
    let serial: i64 = copy
        .query_row(
            "SELECT count(*) FROM accounts WHERE serial = ?1",
            [planted.serial()],
            |r| r.get(0),
        )
        .expect("reads");
    assert_eq!(serial, 1, "the backup holds the planted account");
}

/// Copies directory `from` (flat: a data dir) into a new directory `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("copy dir");
    for entry in std::fs::read_dir(from).expect("data dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copies");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_from_an_old_copy_of_its_data_dir_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, a1, a2) = two_funded_branches(dir.path()).await;
    let mut answers = both_ways(&c, a1, a2, 5).await;

    // An operator keeps a copy of a follower's data dir (stopped, so it is whole)...
    let f = a_follower(&c);
    let old_copy = dir.path().join("old-copy");
    c.kill(f);
    copy_dir(&c.nodes[f].dir, &old_copy);
    c.start_node(f, &[]).expect("restarts");
    // ...the branch moves on...
    answers.extend(both_ways(&c, a1, a2, 10).await);
    // ...and later starts the follower from that old copy, by mistake.
    c.kill(f);
    let live = c.nodes[f].dir.clone();
    std::fs::remove_dir_all(&live).expect("removes");
    copy_dir(&old_copy, &live);
    c.start_node(f, &[]).expect("starts from the old copy");
    answers.extend(both_ways(&c, a1, a2, 5).await);

    // It caught up: with the leader gone, it is one of the majority that serves on.
    let now = leader(&c, BranchId(1));
    c.kill(now);
    c.wait_serving(0, Duration::from_secs(10))
        .await
        .expect("the other two serve");
    answers.extend(both_ways(&c, a1, a2, 5).await);
    c.start_node(now, &[]).expect("restarts");
    let (ok, aborted) = outcomes(&answers);
    assert!(ok.len() >= 40, "most transfers committed: {}", ok.len());
    finish(c, &ok, &aborted);
}
