//! End-to-end: three real `branch-node` processes on 127.0.0.1 talking libp2p
//! (TCP + Noise + Yamux), driven by real tellers. Cross-branch transfers both ways and
//! through a third branch, concurrent transfers, and kill -9 of a coordinator after its
//! decision is durable and of a participant after it voted; each test ends with the
//! invariant checker over every branch's SQLite file.

use std::collections::BTreeSet;
use std::time::Duration;

use scenarios::check;
use scenarios::cluster::Cluster;
use teller_cli::{Teller, TellerError, new_transfer_id};
use wire::teller::{TellerOp, TellerResponse, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, TransferId};

/// Bound on recovery after a restart: every transfer settles within it.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

fn amt(minor: i64) -> Amount {
    Amount::from_minor(minor).expect("non-negative")
}

/// Opens a customer account at node `i` with `deposit` minor units in it; returns the
/// account and a teller logged in as its customer at node `at`.
async fn customer(
    c: &Cluster,
    i: usize,
    n: u32,
    deposit: i64,
    at: usize,
) -> (AccountNumber, Teller) {
    let account = c
        .open_account(i, &format!("N{i}-{n}"), "customer-pw", n.is_multiple_of(2))
        .await
        .expect("open account");
    let admin = c.admin(i).await.expect("admin login");
    let deposited = admin
        .call(TellerOp::Deposit {
            id: new_transfer_id(),
            account,
            amount: amt(deposit),
        })
        .await
        .expect("deposit");
    assert!(matches!(
        deposited,
        TellerResponse::Receipt {
            state: TransferState::Committed,
            ..
        }
    ));
    let mut t = Teller::connect(&c.target(at).expect("target"))
        .await
        .expect("connect");
    t.login(&account.to_string(), "customer-pw")
        .await
        .expect("customer login");
    (account, t)
}

async fn transfer(
    t: &Teller,
    from: AccountNumber,
    to: AccountNumber,
    minor: i64,
) -> (TransferId, Result<TransferState, String>) {
    let spec = TransferSpec {
        id: new_transfer_id(),
        from,
        to,
        amount: amt(minor),
    };
    let r = match t.call(TellerOp::Transfer(spec)).await {
        Ok(TellerResponse::Receipt { state, .. }) => Ok(state),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    };
    (spec.id, r)
}

async fn balance(t: &Teller, account: AccountNumber) -> i64 {
    match t.call(TellerOp::Balance { account }).await {
        Ok(TellerResponse::Account(a)) => a.balance.minor(),
        other => panic!("{other:?}"),
    }
}

/// Stops the network (SIGTERM), then checks every invariant.
fn finish(mut c: Cluster, committed: &BTreeSet<TransferId>) -> check::Report {
    let report = check::finish(&mut c, committed, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_branch_transfers_both_ways_through_a_third_and_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let (a, ta) = customer(&c, 0, 1, 100_000, 0).await;
    let (b, tb) = customer(&c, 1, 2, 100_000, 1).await;
    let mut committed = BTreeSet::new();

    // b1 -> b2 coordinated at b1, b2 -> b1 at b2.
    let (id, r) = transfer(&ta, a, b, 1_000).await;
    assert_eq!(r, Ok(TransferState::Committed));
    committed.insert(id);
    let (id, r) = transfer(&tb, b, a, 300).await;
    assert_eq!(r, Ok(TransferState::Committed));
    committed.insert(id);
    // Through a third branch: the customer of b1 connected to b3.
    let mut t3 = Teller::connect(&c.target(2).expect("target"))
        .await
        .expect("connect");
    t3.login(&a.to_string(), "customer-pw")
        .await
        .expect("login via b3");
    let (id, r) = transfer(&t3, a, b, 200).await;
    assert_eq!(r, Ok(TransferState::Committed));
    committed.insert(id);
    // "Committed" is the coordinator's durable decision; the legs apply right after.
    let settled = check::wait_settled(&c.databases(), SETTLE_BOUND).expect("audit");
    assert!(settled.is_some());
    assert_eq!(balance(&ta, a).await, 100_000 - 1_000 + 300 - 200);
    assert_eq!(balance(&tb, b).await, 100_000 + 1_000 - 300 + 200);

    // A refusal at the remote branch reaches the teller and moves nothing.
    let (_, r) = transfer(&tb, b, a, 10_000_000).await;
    assert_eq!(
        r,
        Ok(TransferState::Aborted(wire::Refusal::InsufficientFunds))
    );
    // A customer may not move another customer's money.
    let (_, r) = transfer(&ta, b, a, 1).await;
    assert!(r.is_err_and(|e| e.contains("not authorized")));

    // Concurrent: 60 transfers both ways from three tellers at once.
    let mut tasks = Vec::new();
    for k in 0..60 {
        let (t, from, to) = match k % 3 {
            0 => (ta.clone(), a, b),
            1 => (tb.clone(), b, a),
            _ => (t3.clone(), a, b),
        };
        tasks.push(tokio::spawn(
            async move { transfer(&t, from, to, 10 + k).await },
        ));
    }
    for task in tasks {
        let (id, r) = task.await.expect("task");
        assert_eq!(r, Ok(TransferState::Committed), "{id}");
        committed.insert(id);
    }
    let report = finish(c, &committed);
    assert_eq!(report.network_total, 200_000);
    assert!(report.proofs_checked >= 60, "{report:?}");
}

/// Runs one crash test: node `victim` is restarted with `failpoint`, a transfer from
/// an account at b1 to one at b2 (so b1 coordinates it) is sent through node `entry`,
/// the victim crashes there, is restarted, and everything must settle.
async fn crash_test(
    victim: usize,
    entry: usize,
    failpoint: &str,
) -> (check::Report, Result<TransferState, String>, TransferState) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let (a, _) = customer(&c, 0, 1, 50_000, entry).await;
    let (b, _) = customer(&c, 1, 2, 50_000, 1).await;
    c.kill(victim);
    c.start_node(victim, &[("FAILPOINTS", &format!("{failpoint}=panic"))])
        .expect("restart with failpoint");
    // Logged in after the restart: the entry's connection stays up throughout.
    let mut t = Teller::connect(&c.target(entry).expect("target"))
        .await
        .expect("connect");
    t.login(&a.to_string(), "customer-pw").await.expect("login");
    let (id, answer) = transfer(&t, a, b, 7_000).await;
    assert!(
        c.wait_exit(victim, Duration::from_secs(20)),
        "{failpoint} did not crash branch {victim}"
    );
    c.start_node(victim, &[]).expect("restart");
    let dbs = c.databases();
    let settled = check::wait_settled(&dbs, SETTLE_BOUND).expect("audit");
    assert!(
        settled.is_some(),
        "still in doubt {SETTLE_BOUND:?} after restart"
    );
    let mut t = Teller::connect(&c.target(entry).expect("target"))
        .await
        .expect("connect");
    t.login(&a.to_string(), "customer-pw").await.expect("login");
    let status = match t.call(TellerOp::TransferStatus { id }).await {
        Ok(TellerResponse::Status { state, .. }) => state,
        other => panic!("{other:?}"),
    };
    let mut committed = BTreeSet::new();
    if answer == Ok(TransferState::Committed) {
        committed.insert(id);
    }
    (finish(c, &committed), answer, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_its_decision_is_durable_commits_after_restart() {
    // b1 coordinates a transfer from b1 to b2 sent through b3, and dies right after
    // its commit decision is durable, before telling anyone.
    let (report, answer, status) = crash_test(0, 2, "after_decision_durable").await;
    assert!(
        answer.is_err(),
        "b3 got no answer from the coordinator: {answer:?}"
    );
    assert_eq!(
        status,
        TransferState::Committed,
        "the durable decision survives the crash"
    );
    assert_eq!(report.network_total, 100_000);
    assert_eq!(report.proofs_checked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_after_voting_yes_applies_the_commit_after_restart() {
    // b1 coordinates; b2 (the credit side) dies right after its yes vote was received.
    let (report, answer, status) = crash_test(1, 2, "after_vote_sent").await;
    assert_eq!(answer, Ok(TransferState::Committed));
    assert_eq!(status, TransferState::Committed);
    assert_eq!(
        report.committed_checked, 1,
        "the committed answer is durable"
    );
    assert_eq!(report.network_total, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teller_errors_are_typed_and_unreachable_branches_fail_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let mut t = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connect");
    let wrong = t.login("admin", "wrong").await;
    assert!(
        matches!(
            wrong,
            Err(TellerError::Refused(wire::Refusal::BadCredentials))
        ),
        "{wrong:?}"
    );
    // The fault switch is off unless the node was started with --fault-switch.
    let admin = c.admin(0).await.expect("admin");
    let fault = admin
        .call(TellerOp::SetLinkFault {
            branch: wire::BranchId(2),
            fault: wire::teller::LinkFault::Blocked,
        })
        .await;
    assert!(
        matches!(
            fault,
            Err(TellerError::Refused(wire::Refusal::Unauthorized))
        ),
        "{fault:?}"
    );
    // A listing without a session is not done (log in first): nothing happened.
    let listing = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connect")
        .call(TellerOp::ListAccounts {
            scope: wire::teller::Scope::Branch,
            page: wire::teller::AccountsPage {
                after: None,
                limit: 10,
            },
        })
        .await;
    assert!(
        matches!(
            listing,
            Err(TellerError::Unavailable(
                wire::teller::Unavailable::SessionExpired
            ))
        ),
        "{listing:?}"
    );
    let target = c.target(1).expect("target");
    c.kill(1);
    let started = std::time::Instant::now();
    let r = Teller::connect(&target).await;
    assert!(matches!(r, Err(TellerError::Connection(_))), "{r:?}");
    let message = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("127.0.0.1"),
        "names the address tried: {message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
