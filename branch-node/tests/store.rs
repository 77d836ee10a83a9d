//! The SQLite store: Shard conformance (direct and through the group-commit writer),
//! refusals that change nothing, ledger verification, corrupt files, logins, outbox and
//! concurrency on a hot account, the writer's batch-end hook.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use branch_node::store::writer::Writer;
use branch_node::store::{Durability, LedgerViolation, Movement, Store, StoreError, hash_password};
use coordinator::Shard;
use coordinator::testing::{Fixture, HERE, run_all};
use wire::teller::{NewCustomer, Role, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

/// One argon2 hash shared by every test account (hashing costs ~30 ms).
fn shared_hash() -> &'static str {
    branch_node::store::testing::shared_hash()
}

fn customer(national_id: &str, sms: bool) -> NewCustomer {
    NewCustomer {
        national_id: national_id.into(),
        phone: "+91 98765 43210".into(),
        first_name: "Asha".into(),
        last_name: "Rao".into(),
        sms_opt_in: sms,
    }
}

fn amt(minor: i64) -> Amount {
    Amount::from_minor(minor).expect("non-negative")
}

fn acct(serial: u32) -> AccountNumber {
    AccountNumber::new(HERE, serial).expect("valid")
}

fn open(path: &Path) -> Store {
    branch_node::store::testing::open_keyed(path, HERE, Durability::Full).expect("opens")
}

fn fund_store(s: &mut Store, number: AccountNumber, minor: i64) {
    Fixture::open_account(s, number, minor);
}

fn fresh_path(dir: &tempfile::TempDir, n: &Cell<u32>) -> PathBuf {
    n.set(n.get() + 1);
    dir.path().join(format!("store-{}.db", n.get()))
}

#[test]
fn sqlite_store_passes_the_shard_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Cell::new(0);
    run_all(|| open(&fresh_path(&dir, &n)));
}

#[test]
fn group_commit_writer_passes_the_shard_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Cell::new(0);
    let writers = RefCell::new(Vec::new());
    run_all(|| {
        let w = Writer::spawn(open(&fresh_path(&dir, &n)));
        let h = w.handle();
        writers.borrow_mut().push(w);
        h
    });
}

/// Every row a refusal must leave alone (the `transfers` table may gain the refused
/// id's outcome, so a retry of the id gets the same answer).
fn snapshot(path: &Path) -> String {
    let c = branch_node::store::testing::raw(path);
    let mut out = String::new();
    for table in [
        "accounts",
        "ledger",
        "customers",
        "users",
        "legs",
        "coordinated",
        "outbox",
    ] {
        let mut stmt = c
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .expect("prepares");
        let cols = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..cols)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("queries");
        for row in rows {
            out.push_str(&format!("{table}: {:?}\n", row.expect("row")));
        }
    }
    out
}

/// One refusing operation on a store.
type Op = Box<dyn Fn(&mut Store) -> Result<TransferState, Refusal>>;
type Case = (&'static str, Op);

fn movement(kind: Movement, id: u128, n: AccountNumber, minor: i64) -> Op {
    Box::new(move |s| {
        Ok(s.movement(kind, TransferId(id), n, amt(minor))
            .expect("works"))
    })
}

fn local(id: u128, from: AccountNumber, to: AccountNumber, minor: i64) -> Op {
    let spec = TransferSpec {
        id: TransferId(id),
        from,
        to,
        amount: amt(minor),
    };
    Box::new(move |s| Ok(s.transfer_local(&[spec]).expect("works")[0]))
}

#[test]
fn every_refusal_leaves_accounts_ledger_and_people_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let (a, b, closed) = (acct(1), acct(2), acct(3));
    fund_store(&mut s, a, 1_000);
    fund_store(&mut s, b, 0);
    fund_store(&mut s, closed, 0);
    s.close_account(closed).expect("works").expect("closes");
    let five = s
        .movement(Movement::Deposit, TransferId(50), a, amt(5))
        .expect("works");
    assert_eq!(five, TransferState::Committed);
    let unknown = acct(77);
    let elsewhere = AccountNumber::new(BranchId(2), 1).expect("valid");
    let before = snapshot(&path);
    let aborted = |r| Ok(TransferState::Aborted(r));
    fn done<T>(_: T) -> TransferState {
        TransferState::Committed
    }
    let cases: Vec<(Case, Result<TransferState, Refusal>)> = vec![
        (
            (
                "deposit to unknown account",
                movement(Movement::Deposit, 1, unknown, 1),
            ),
            aborted(Refusal::AccountNotFound),
        ),
        (
            (
                "deposit to another branch",
                movement(Movement::Deposit, 2, elsewhere, 1),
            ),
            aborted(Refusal::AccountNotFound),
        ),
        (
            (
                "deposit to closed account",
                movement(Movement::Deposit, 3, closed, 1),
            ),
            aborted(Refusal::AccountClosed),
        ),
        (
            ("deposit of zero", movement(Movement::Deposit, 4, a, 0)),
            aborted(Refusal::InvalidAmount),
        ),
        (
            (
                "withdraw above balance",
                movement(Movement::Withdrawal, 5, a, 1_006),
            ),
            aborted(Refusal::InsufficientFunds),
        ),
        (
            (
                "withdraw from closed",
                movement(Movement::Withdrawal, 6, closed, 1),
            ),
            aborted(Refusal::AccountClosed),
        ),
        (
            (
                "reused id, other content",
                movement(Movement::Deposit, 50, a, 6),
            ),
            aborted(Refusal::IdConflict),
        ),
        (
            ("transfer above balance", local(7, a, b, 2_000)),
            aborted(Refusal::InsufficientFunds),
        ),
        (
            ("transfer to same account", local(8, a, a, 1)),
            aborted(Refusal::SameAccount),
        ),
        (
            ("transfer to closed", local(9, a, closed, 1)),
            aborted(Refusal::AccountClosed),
        ),
        (
            (
                "close a funded account",
                Box::new(move |s: &mut Store| s.close_account(a).expect("works").map(done)),
            ),
            Err(Refusal::AccountNotEmpty),
        ),
        (
            (
                "close unknown",
                Box::new(move |s: &mut Store| s.close_account(unknown).expect("works").map(done)),
            ),
            Err(Refusal::AccountNotFound),
        ),
        (
            (
                "open for a taken national id",
                Box::new(move |s: &mut Store| {
                    s.open_account(&customer("N1", false), shared_hash(), None)
                        .expect("works")
                        .map(done)
                }),
            ),
            Err(Refusal::UserExists),
        ),
        (
            (
                "open beside an unknown account",
                Box::new(move |s: &mut Store| {
                    s.open_account(&customer("NEW", false), shared_hash(), Some(unknown))
                        .expect("works")
                        .map(done)
                }),
            ),
            Err(Refusal::AccountNotFound),
        ),
    ];
    for ((name, case), want) in &cases {
        assert_eq!(&case(&mut s), want, "{name}");
        assert_eq!(snapshot(&path), before, "{name} changed the store");
    }
    let again = s
        .movement(Movement::Withdrawal, TransferId(5), a, amt(1_006))
        .expect("works");
    assert_eq!(
        again,
        TransferState::Aborted(Refusal::InsufficientFunds),
        "a refused id keeps its answer"
    );
    assert!(s.verify_ledger().expect("reads").is_ok());
}

#[test]
fn ledger_verification_finds_the_first_bad_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let (a, b) = (acct(1), acct(2));
    fund_store(&mut s, a, 1_000);
    fund_store(&mut s, b, 500);
    for i in 0..5 {
        let t = TransferSpec {
            id: TransferId(i),
            from: a,
            to: b,
            amount: amt(10),
        };
        assert_eq!(
            s.transfer_local(&[t]).expect("works"),
            vec![TransferState::Committed]
        );
    }
    let report = s.verify_ledger().expect("reads").expect("verifies");
    assert_eq!((report.entries, report.accounts), (12, 2));
    let raw = branch_node::store::testing::raw(&path);
    assert!(
        raw.execute("DELETE FROM ledger", []).is_err(),
        "append-only"
    );
    assert!(
        raw.execute("UPDATE ledger SET amount = 1", []).is_err(),
        "append-only"
    );
    raw.execute_batch(
        "DROP TRIGGER ledger_no_update; UPDATE ledger SET amount = 11 WHERE seq = 4;",
    )
    .expect("tampers");
    assert_eq!(
        s.verify_ledger().expect("reads"),
        Err(LedgerViolation::BrokenChain { seq: 4 })
    );
    raw.execute_batch("UPDATE ledger SET amount = 10 WHERE seq = 4; UPDATE accounts SET balance = balance + 1 WHERE serial = 2;")
        .expect("tampers");
    assert!(matches!(
        s.verify_ledger().expect("reads"),
        Err(LedgerViolation::AccountBalance { .. })
    ));
}

#[test]
fn a_corrupt_or_foreign_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42u8; 8192]).expect("writes");
    let err = branch_node::store::testing::open_keyed(&junk, HERE, Durability::Full)
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Unreadable(_) | StoreError::Corrupt(_)),
        "{text}"
    );
    let path = dir.path().join("b.db");
    drop(open(&path));
    // Its keys, but another branch's id asked for: the store's own record refuses it.
    let keys = branch_node::store::testing::folder_keys(&path, HERE);
    let err = Store::open(&path, &keys, BranchId(2), Durability::Full).expect_err("refused");
    assert_eq!(err.to_string(), "database belongs to branch 001, not 002");
}

#[test]
fn logins_check_passwords_and_every_failure_is_one_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("b.db"));
    let admin_hash = hash_password("admin-pw").expect("hashes");
    s.create_admin("admin", &admin_hash)
        .expect("works")
        .expect("created");
    assert_eq!(
        s.create_admin("admin", shared_hash()).expect("works"),
        Err(Refusal::UserExists)
    );
    let a = acct(1);
    fund_store(&mut s, a, 10);
    let now = 1_000_000;
    let admin = s
        .login("admin", "admin-pw", None, now)
        .expect("works")
        .expect("logs in");
    assert_eq!((admin.role, admin.accounts.len()), (Role::Admin, 0));
    let cust = s
        .login(&a.to_string(), "secret", None, now)
        .expect("works")
        .expect("logs in");
    assert_eq!((cust.role, cust.accounts), (Role::Customer, vec![a]));
    assert_eq!(
        s.login("nobody", "x", None, now).expect("works"),
        Err(Refusal::BadCredentials)
    );
    assert_eq!(
        s.login("admin", "wrong", None, now).expect("works"),
        Err(Refusal::BadCredentials),
        "a wrong password and an unknown login get one answer"
    );
}

#[test]
fn an_enrolled_login_needs_its_one_time_code_and_a_code_works_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("b.db"));
    let hash = hash_password("admin-pw").expect("hashes");
    s.create_admin("admin", &hash)
        .expect("works")
        .expect("created");
    let secret = [9u8; branch_node::totp::SECRET_BYTES];
    s.enroll_otp("admin", &secret, false)
        .expect("works")
        .expect("enrolled");
    assert_eq!(
        s.enroll_otp("admin", &[1u8; 20], false).expect("works"),
        Err(Refusal::AlreadyEnrolled)
    );
    assert_eq!(
        s.enroll_otp("nobody", &[1u8; 20], true).expect("works"),
        Err(Refusal::AccountNotFound)
    );
    let now = 1_700_000_000_000;
    let code = branch_node::totp::code_at(&secret, branch_node::totp::step_at(now));
    let login =
        |s: &mut Store, otp: Option<&str>| s.login("admin", "admin-pw", otp, now).expect("works");
    assert_eq!(
        login(&mut s, None),
        Err(Refusal::OneTimeCode),
        "a stolen password alone fails"
    );
    assert_eq!(
        s.login("admin", "wrong", None, now).expect("works"),
        Err(Refusal::OneTimeCode),
        "a wrong password without a code is answered as a right one: no oracle"
    );
    assert_eq!(
        login(&mut s, Some("000000")).err(),
        Some(Refusal::BadCredentials),
        "a wrong code is answered as a wrong password"
    );
    assert!(login(&mut s, Some(&code)).is_ok());
    assert_eq!(
        login(&mut s, Some(&code)),
        Err(Refusal::BadCredentials),
        "used once"
    );
    assert_eq!(
        s.login("admin", "wrong", Some(&code), now).expect("works"),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn opted_in_customers_get_an_outbox_message_per_ledger_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("b.db"));
    let yes = s
        .open_account(&customer("SMS", true), shared_hash(), None)
        .expect("works")
        .expect("opens")
        .number;
    let no = s
        .open_account(&customer("QUIET", false), shared_hash(), None)
        .expect("works")
        .expect("opens")
        .number;
    s.movement(Movement::Deposit, TransferId(1), yes, amt(12_345))
        .expect("works");
    s.movement(Movement::Deposit, TransferId(2), no, amt(100))
        .expect("works");
    let t = TransferSpec {
        id: TransferId(3),
        from: yes,
        to: no,
        amount: amt(45),
    };
    s.transfer_local(&[t]).expect("works");
    let outbox = s.outbox().expect("reads");
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!(
        outbox[0].1,
        format!("BankMate: deposit of 123.45 on {yes}; balance 123.45")
    );
    assert_eq!(
        outbox[1].1,
        format!("BankMate: transfer out of 0.45 on {yes}; balance 123.00")
    );
}

#[test]
fn a_phone_gets_at_most_its_hourly_sms_maximum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("b.db"));
    let yes = s
        .open_account(&customer("CAP", true), shared_hash(), None)
        .expect("works")
        .expect("opens")
        .number;
    let max = branch_node::store::SMS_PER_PHONE_PER_HOUR_MAX;
    for i in 0..max + 5 {
        let id = TransferId(100 + u128::try_from(i).expect("small"));
        let state = s
            .movement(Movement::Deposit, id, yes, amt(1))
            .expect("works");
        assert_eq!(
            state,
            TransferState::Committed,
            "every deposit still commits"
        );
    }
    let outbox = s.outbox().expect("reads");
    assert_eq!(outbox.len() as i64, max, "texts capped, money not");
    assert_eq!(
        s.account(yes).expect("reads").expect("exists").balance,
        amt(max + 5)
    );
}

#[test]
fn concurrent_deposits_and_transfers_on_a_hot_account_stay_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("b.db"));
    let (hot, sink) = (acct(1), acct(2));
    fund_store(&mut store, hot, 500);
    fund_store(&mut store, sink, 0);
    let writer = Writer::spawn(store);
    let threads: Vec<_> = (0..8u128)
        .map(|t| {
            let mut h = writer.handle();
            std::thread::spawn(move || {
                let mut moved_out = 0;
                for i in 0..100u128 {
                    let id = TransferId(t * 1_000 + i);
                    if i % 2 == 0 {
                        let state = h
                            .movement(Movement::Deposit, id, hot, amt(100))
                            .expect("works");
                        assert_eq!(state, TransferState::Committed);
                        continue;
                    }
                    let spec = TransferSpec {
                        id,
                        from: hot,
                        to: sink,
                        amount: amt(150),
                    };
                    match h.transfer_local(&[spec]).expect("works")[0] {
                        TransferState::Committed => moved_out += 150,
                        TransferState::Aborted(Refusal::InsufficientFunds) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                moved_out
            })
        })
        .collect();
    let out: i64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    let store = writer.stop().expect("store back");
    let h = store.account(hot).expect("reads").expect("exists");
    let k = store.account(sink).expect("reads").expect("exists");
    assert_eq!(h.balance.minor(), 500 + 8 * 50 * 100 - out);
    assert_eq!(k.balance.minor(), out);
    assert!(out > 0, "some transfers went through");
    assert!(store.verify_ledger().expect("reads").is_ok());
}

#[test]
fn every_answer_waits_for_its_batch_fsync_and_the_store_comes_back_syncing_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("b.db"));
    fund_store(&mut store, acct(1), 10_000);
    fund_store(&mut store, acct(2), 0);
    let writer = Writer::spawn(store);
    let mark = writer.watermark();
    let threads: Vec<_> = (0..4u128)
        .map(|t| {
            let (mut h, mark) = (writer.handle(), mark.clone());
            std::thread::spawn(move || {
                for i in 0..50u128 {
                    let (seen, run_mark) = (std::sync::mpsc::channel(), mark.clone());
                    let seen_tx = seen.0;
                    // Runs inside a batch: that batch's commit has not begun yet.
                    h.run_local(move |_, _| {
                        seen_tx.send(run_mark.begun()).expect("sends");
                        Ok(())
                    })
                    .expect("runs");
                    let begun_before = seen.1.recv().expect("ran");
                    assert!(mark.durable() > begun_before, "answered before its fsync");
                    let spec = TransferSpec {
                        id: TransferId(t * 1_000 + i),
                        from: acct(1),
                        to: acct(2),
                        amount: amt(1),
                    };
                    let state = h.transfer_local(&[spec]).expect("works")[0];
                    assert_eq!(state, TransferState::Committed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(
        mark.durable(),
        mark.begun(),
        "every batch synced by the end"
    );
    let store = writer.stop().expect("store back");
    let level: i64 = branch_node::store::testing::conn(&store)
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("reads");
    assert_eq!(level, 2, "FULL again for whoever writes without the writer");
    assert_eq!(
        store
            .account(acct(2))
            .expect("reads")
            .expect("exists")
            .balance,
        amt(200)
    );
}

#[test]
fn a_failing_operation_in_a_group_commit_batch_rolls_back_alone() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let writer = Writer::spawn(open(&path));
    // Hold the writer thread so the next three jobs queue up and form one batch.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let h = writer.handle();
    let holder = std::thread::spawn(move || {
        h.run_local(move |_, _| {
            held_tx.send(()).expect("signals");
            release_rx.recv().expect("released");
            Ok(())
        })
    });
    held_rx.recv().expect("writer is held");
    let insert = |key: &'static str, fail: bool| {
        let (tx, rx) = mpsc::channel();
        writer
            .handle()
            .local_then(
                move |c, _| {
                    c.execute("INSERT INTO meta (key, value) VALUES (?1, 1)", [key])?;
                    if fail {
                        return Err(StoreError::Malformed(
                            "this operation fails after writing".into(),
                        ));
                    }
                    Ok(())
                },
                move |r| tx.send(r).expect("answers"),
            )
            .expect("queued");
        rx
    };
    // All three are queued behind the held job, so they form the next batch.
    let jobs = [
        insert("first", false),
        insert("failing", true),
        insert("last", false),
    ];
    release_tx.send(()).expect("releases");
    holder.join().expect("thread").expect("holder ran");
    let results: Vec<bool> = jobs
        .into_iter()
        .map(|j| j.recv().expect("answered").is_ok())
        .collect();
    assert_eq!(results, vec![true, false, true]);
    drop(writer);
    let raw = branch_node::store::testing::raw(&path);
    let mut stmt = raw
        .prepare("SELECT key FROM meta WHERE key NOT IN ('branch_id', 'epoch') ORDER BY key")
        .expect("prepares");
    let keys: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("queries")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(keys, vec!["first".to_string(), "last".to_string()]);
}

#[test]
fn signed_envelopes_are_stored_once_and_linked_to_every_record_they_justify() {
    use coordinator::{BeginItem, DecisionRecord, Evidence};
    use std::sync::Arc;
    use wire::Decision;
    use wire::twopc::{DecisionItem, PrepareItem};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let a = acct(1);
    fund_store(&mut s, a, 1_000);
    let there = AccountNumber::new(BranchId(2), 1).expect("valid");
    let coordinator = BranchId(2);
    let specs: Vec<TransferSpec> = (1..=3)
        .map(|i| TransferSpec {
            id: TransferId(i),
            from: a,
            to: there,
            amount: amt(10),
        })
        .collect();
    let items: Vec<PrepareItem> = specs
        .iter()
        .map(|t| PrepareItem {
            transfer: *t,
            deadline_ms: 5_000,
        })
        .collect();
    let prepare_envelope: Evidence = Some(Arc::from(vec![1u8; 4096]));
    let votes = s
        .prepare(coordinator, &items, 0, &prepare_envelope)
        .expect("works");
    assert_eq!(votes.len(), 3);
    let decisions: Vec<DecisionItem> = specs
        .iter()
        .map(|t| DecisionItem {
            id: t.id,
            decision: Decision::Commit,
        })
        .collect();
    let decision_envelope: Evidence = Some(Arc::from(vec![2u8; 64]));
    s.apply(coordinator, &decisions, &decision_envelope)
        .expect("works");
    // Coordinator side: a commit keeps the participants' signed yes votes.
    let spec = TransferSpec {
        id: TransferId(9),
        from: a,
        to: there,
        amount: amt(1),
    };
    s.begin(
        &[BeginItem {
            spec,
            deadline_ms: 5,
        }],
        0,
    )
    .expect("works");
    let vote_envelope: Evidence = Some(Arc::from(vec![3u8; 64]));
    let commit = DecisionRecord {
        id: TransferId(9),
        decision: Decision::Commit,
        reason: None,
        votes: vec![vote_envelope.clone(), vote_envelope],
    };
    s.record_decisions(&[commit]).expect("works");
    let raw = branch_node::store::testing::raw(&path);
    let count = |sql: &str| -> i64 { raw.query_row(sql, [], |r| r.get(0)).expect("counts") };
    assert_eq!(
        count("SELECT count(*) FROM envelopes"),
        3,
        "each envelope stored once"
    );
    assert_eq!(
        count("SELECT count(*) FROM evidence WHERE what = 'prepare'"),
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM evidence WHERE what = 'decision'"),
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM evidence WHERE what = 'vote'"),
        2
    );
    let stored: Vec<u8> = raw
        .query_row(
            "SELECT e.bytes FROM evidence v JOIN envelopes e ON e.hash = v.envelope_hash WHERE v.what = 'prepare' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("linked");
    assert_eq!(stored, vec![1u8; 4096], "the exact signed bytes are kept");
}

#[test]
fn money_that_would_overflow_a_balance_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let (a, full) = (acct(1), acct(2));
    fund_store(&mut s, a, 1_000);
    fund_store(&mut s, full, 0);
    // No sequence of permitted deposits gets here quickly: set it directly.
    let raw = branch_node::store::testing::raw(&path);
    raw.execute(
        "UPDATE accounts SET balance = ?1 WHERE serial = 2",
        [i64::MAX - 5],
    )
    .expect("sets");
    let before = snapshot(&path);
    let deposit = s
        .movement(Movement::Deposit, TransferId(1), full, amt(10))
        .expect("works");
    assert_eq!(deposit, TransferState::Aborted(Refusal::BalanceOverflow));
    let t = TransferSpec {
        id: TransferId(2),
        from: a,
        to: full,
        amount: amt(10),
    };
    assert_eq!(
        s.transfer_local(&[t]).expect("works"),
        vec![TransferState::Aborted(Refusal::BalanceOverflow)]
    );
    assert_eq!(snapshot(&path), before);
}

#[test]
fn the_batch_end_hook_runs_once_per_batch_after_its_answers() {
    use std::sync::{Arc, Mutex, mpsc};
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Writer::spawn(open(&dir.path().join("b.db")));
    let log = Arc::new(Mutex::new(Vec::<&str>::new()));
    let l = Arc::clone(&log);
    writer
        .handle()
        .on_batch_end(move || l.lock().expect("log").push("end"))
        .expect("hook");
    // Hold the writer so the next three jobs queue up and form one batch.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let l = Arc::clone(&log);
    writer
        .handle()
        .local_then(
            move |_, _| {
                held_tx.send(()).expect("signals");
                release_rx.recv().expect("released");
                Ok(())
            },
            move |_: Result<(), StoreError>| l.lock().expect("log").push("held"),
        )
        .expect("queued");
    held_rx.recv().expect("writer is held");
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for _ in 0..3 {
        let (l, done) = (Arc::clone(&log), done_tx.clone());
        writer
            .handle()
            .local_then(
                |_, _| Ok(()),
                move |_: Result<(), StoreError>| {
                    l.lock().expect("log").push("job");
                    done.send(()).expect("signals");
                },
            )
            .expect("queued");
    }
    release_tx.send(()).expect("releases");
    for _ in 0..3 {
        done_rx.recv().expect("answered");
    }
    drop(writer); // joins the thread, so the last hook has run
    assert_eq!(
        *log.lock().expect("log"),
        vec!["held", "end", "job", "job", "job", "end"]
    );
}

/// A listed branch sending aborts for ids it never prepared cannot grow the legs table
/// past the per-coordinator bound; the abort is still acknowledged (presumed abort).
#[test]
fn abort_only_legs_stop_at_their_bound_per_coordinator() {
    use wire::limits::ABORT_ONLY_LEGS_PER_PEER_MAX;
    use wire::twopc::DecisionItem;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let count = |sql: &str| -> i64 {
        branch_node::store::testing::raw(&path)
            .query_row(sql, [], |r| r.get(0))
            .expect("counts")
    };
    {
        let mut raw = branch_node::store::testing::raw(&path);
        let tx = raw.transaction().expect("tx");
        for i in 0..ABORT_ONLY_LEGS_PER_PEER_MAX - 1 {
            tx.execute(
                "INSERT INTO legs (id, coordinator, deadline_ms, decision) VALUES (?1, 2, 0, 'abort')",
                [u128::from(i + 1_000_000).to_be_bytes().to_vec()],
            )
            .expect("inserts");
        }
        tx.commit().expect("commits");
    }
    let abort = |id: u128| DecisionItem {
        id: TransferId(id),
        decision: wire::Decision::Abort,
    };
    let outcomes = s
        .apply(BranchId(2), &[abort(1), abort(2)], &None)
        .expect("works");
    assert_eq!(outcomes, vec![coordinator::ApplyOutcome::Applied; 2]);
    let kept = count("SELECT count(*) FROM legs WHERE coordinator = 2 AND spec IS NULL");
    assert_eq!(
        kept,
        i64::try_from(ABORT_ONLY_LEGS_PER_PEER_MAX).expect("fits")
    );
    // Another coordinator has its own bound.
    s.apply(BranchId(3), &[abort(3)], &None).expect("works");
    assert_eq!(count("SELECT count(*) FROM legs WHERE coordinator = 3"), 1);
}

/// Refused prepares from one coordinator stop being stored at their bound; the vote is
/// still no, and nothing is held.
#[test]
fn no_vote_legs_stop_at_their_bound_per_coordinator() {
    use wire::limits::NO_VOTE_LEGS_PER_PEER_MAX;
    use wire::twopc::{PrepareItem, Vote};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let no = wire::encode(&Vote::No(Refusal::AccountNotFound)).expect("encodes");
    {
        let mut raw = branch_node::store::testing::raw(&path);
        let tx = raw.transaction().expect("tx");
        for i in 0..NO_VOTE_LEGS_PER_PEER_MAX {
            tx.execute(
                "INSERT INTO legs (id, coordinator, deadline_ms, vote) VALUES (?1, 2, 0, ?2)",
                rusqlite::params![u128::from(i + 1_000_000).to_be_bytes().to_vec(), no],
            )
            .expect("inserts");
        }
        tx.commit().expect("commits");
    }
    let item = PrepareItem {
        transfer: TransferSpec {
            id: TransferId(7),
            from: AccountNumber::new(BranchId(2), 1).expect("account"),
            to: acct(424_242),
            amount: Amount::from_minor(100).expect("amount"),
        },
        deadline_ms: 5_000,
    };
    let votes = s.prepare(BranchId(2), &[item], 0, &None).expect("works");
    assert_eq!(votes, vec![Vote::No(Refusal::AccountNotFound)]);
    let stored: i64 = branch_node::store::testing::raw(&path)
        .query_row("SELECT count(*) FROM legs WHERE coordinator = 2", [], |r| {
            r.get(0)
        })
        .expect("counts");
    assert_eq!(
        stored,
        i64::try_from(NO_VOTE_LEGS_PER_PEER_MAX).expect("fits")
    );
}

/// Every page of `account`'s history (all accounts' with `None`), `limit` at a time.
fn all_pages(s: &Store, account: Option<AccountNumber>, limit: u32) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut before = None;
    loop {
        let page = wire::teller::PageRequest { before, limit };
        let (entries, next) = s.history(account, page).expect("reads");
        seqs.extend(entries.iter().map(|e| e.seq));
        match next {
            Some(n) => before = Some(n),
            None => return seqs,
        }
    }
}

#[test]
fn each_accounts_history_follows_its_links_page_by_page_and_an_old_store_gets_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let accounts = [acct(1), acct(2), acct(3)];
    for a in accounts {
        fund_store(&mut s, a, 1_000);
    }
    for i in 0..30u128 {
        let spec = TransferSpec {
            id: TransferId(10_000 + i),
            from: accounts[i as usize % 3],
            to: accounts[(i as usize + 1 + i as usize / 3) % 3],
            amount: amt(1),
        };
        s.transfer_local(&[spec]).expect("works");
    }
    // Each account's entries: the newest first, exactly those of the whole ledger.
    let everything = all_pages(&s, None, 7);
    let expected = |a: AccountNumber| -> Vec<u64> {
        let (all, _) = s
            .history(
                None,
                wire::teller::PageRequest {
                    before: None,
                    limit: 500,
                },
            )
            .expect("reads");
        all.iter()
            .filter(|e| e.account == a)
            .map(|e| e.seq)
            .collect()
    };
    let before: Vec<Vec<u64>> = accounts.iter().map(|&a| expected(a)).collect();
    for (a, want) in accounts.iter().zip(&before) {
        assert_eq!(&all_pages(&s, Some(*a), 4), want, "{a}");
        assert!(want.windows(2).all(|w| w[0] > w[1]), "newest first");
    }
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), everything.len());
    assert!(s.verify_ledger().expect("reads").is_ok());
    drop(s);

    // The same store as it was before the links (schema 9): they are made on open.
    let raw = branch_node::store::testing::raw(&path);
    raw.execute_batch(
        "DROP TRIGGER ledger_account_tail;
         DROP TRIGGER ledger_no_update;
         ALTER TABLE ledger DROP COLUMN account_prev;
         CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
             BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
         ALTER TABLE accounts DROP COLUMN last_seq;
         CREATE INDEX ledger_by_account ON ledger(account_serial, seq);
         PRAGMA user_version = 9;",
    )
    .expect("made old");
    drop(raw);
    let s = open(&path);
    assert!(
        s.verify_ledger().expect("reads").is_ok(),
        "links and tails made"
    );
    for (a, want) in accounts.iter().zip(&before) {
        assert_eq!(&all_pages(&s, Some(*a), 5), want, "{a} after the migration");
    }
}

#[test]
fn a_wrong_account_link_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    fund_store(&mut s, acct(1), 100);
    fund_store(&mut s, acct(2), 100);
    drop(s);
    let raw = branch_node::store::testing::raw(&path);
    raw.execute_batch("UPDATE accounts SET last_seq = 1 WHERE serial = 2")
        .expect("tampered");
    drop(raw);
    let s = open(&path);
    assert!(
        matches!(
            s.verify_ledger().expect("reads"),
            Err(LedgerViolation::AccountTail { .. })
        ),
        "a wrong newest entry is reported"
    );
}
