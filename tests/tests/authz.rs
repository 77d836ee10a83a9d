//! Authorization with real nodes: every operation on one customer's account, by every
//! kind of session (the account's customer, another customer of the same branch and of
//! another branch, the admin of the account's branch and of another branch), sent over
//! every kind of connection (the one the session was made on, and a second connection
//! with the same key to the account's branch, to another branch, and to a third branch
//! that only forwards). Every denial must leave every branch's accounts, ledger, people
//! and records unchanged. Also: sessions survive a restart, closing an account ends its
//! login and sessions, and `transfer-status` answers only whom a transfer concerns.

use std::path::PathBuf;
use std::time::Duration;

use scenarios::check;
use scenarios::cluster::{ADMIN_PASSWORD, Cluster};
use teller_cli::{Teller, TellerError, new_transfer_id};
use wire::teller::{
    LineAnswer, NewCustomer, PageRequest, TellerOp, TellerResponse, TransferState, Unavailable,
};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, BranchKey, Refusal, TransferId};

const PW: &str = "customer-pw";

fn amt(minor: i64) -> Amount {
    Amount::from_minor(minor).expect("non-negative")
}

/// Opens an account at node `i` for a new customer, with `deposit` minor units in it.
async fn open(c: &Cluster, i: usize, national_id: &str, deposit: i64) -> AccountNumber {
    let account = c
        .open_account(i, national_id, PW, false)
        .await
        .expect("open");
    if deposit > 0 {
        let admin = c.admin(i).await.expect("admin");
        let r = admin
            .call(TellerOp::Deposit {
                id: new_transfer_id(),
                account,
                amount: amt(deposit),
            })
            .await
            .expect("deposit");
        assert!(matches!(
            r,
            TellerResponse::Receipt {
                state: TransferState::Committed,
                ..
            }
        ));
    }
    account
}

/// Every row of the tables a teller request could change (not sessions), per branch.
fn fingerprint(dbs: &[(BranchId, PathBuf)]) -> Vec<String> {
    const TABLES: [&str; 9] = [
        "audit_trail",
        "accounts",
        "ledger",
        "customers",
        "users",
        "transfers",
        "coordinated",
        "legs",
        "outbox",
    ];
    let mut out = Vec::new();
    for (_, path) in dbs {
        let conn =
            branch_node::store::connect_in_dir(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open read-only");
        for t in TABLES {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {t} ORDER BY rowid"))
                .expect("select");
            let n = stmt.column_count();
            let mut rows = stmt.query([]).expect("query");
            while let Some(r) = rows.next().expect("row") {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).expect("cell")))
                    .collect();
                out.push(format!("{t}: {}", cells.join("|")));
            }
        }
    }
    out
}

/// A person with a session, made over a connection with `key` to `login_at`.
struct Actor {
    name: &'static str,
    key: BranchKey,
    session: Teller,
}

impl Actor {
    async fn new(c: &Cluster, name: &'static str, login_at: usize, user: &str, pw: &str) -> Actor {
        let key = BranchKey::from_secret(rand::random());
        let mut session = Teller::connect_with_key(&c.target(login_at).expect("target"), &key)
            .await
            .expect("connect");
        session
            .login(user, pw)
            .await
            .unwrap_or_else(|e| panic!("{name} login: {e}"));
        Actor { name, key, session }
    }

    /// The session over a second connection, with the same key, to node `i`.
    async fn via(&self, c: &Cluster, i: usize) -> Teller {
        let conn = Teller::connect_with_key(&c.target(i).expect("target"), &self.key)
            .await
            .expect("connect");
        conn.with_session_of(&self.session)
    }
}

/// The operations of the matrix, on account `v` (at b1), by name.
fn operations(
    v: AccountNumber,
    to: AccountNumber,
    status_of: TransferId,
) -> Vec<(&'static str, TellerOp)> {
    let one = amt(100);
    vec![
        ("balance", TellerOp::Balance { account: v }),
        (
            "deposit",
            TellerOp::Deposit {
                id: new_transfer_id(),
                account: v,
                amount: one,
            },
        ),
        (
            "withdraw",
            TellerOp::Withdraw {
                id: new_transfer_id(),
                account: v,
                amount: one,
            },
        ),
        (
            "transfer",
            TellerOp::Transfer(TransferSpec {
                id: new_transfer_id(),
                from: v,
                to,
                amount: one,
            }),
        ),
        (
            "transfer-batch",
            TellerOp::TransferBatch {
                transfers: vec![TransferSpec {
                    id: new_transfer_id(),
                    from: v,
                    to,
                    amount: one,
                }],
            },
        ),
        (
            "history",
            TellerOp::History {
                account: v,
                page: PageRequest {
                    before: None,
                    limit: 10,
                },
            },
        ),
        (
            "transfer-status",
            TellerOp::TransferStatus { id: status_of },
        ),
        (
            "open-account",
            TellerOp::OpenAccount {
                customer: NewCustomer {
                    national_id: "unused".into(),
                    phone: "1".into(),
                    first_name: "A".into(),
                    last_name: "B".into(),
                    sms_opt_in: false,
                },
                password: PW.into(),
                existing: Some(v),
            },
        ),
        (
            "close-account",
            TellerOp::CloseAccount {
                account: v,
                admin_password: ADMIN_PASSWORD.into(),
            },
        ),
        (
            "reveal-national-id",
            TellerOp::RevealNationalId {
                account: v,
                admin_password: ADMIN_PASSWORD.into(),
            },
        ),
    ]
}

/// Whether `r` is the answer of an allowed `op` (the money moved, the data came back; a
/// close of a non-empty account passes authorization and is refused for its balance).
fn allowed(op: &str, r: &Result<TellerResponse, TellerError>) -> bool {
    match (op, r) {
        ("balance", Ok(TellerResponse::Account(_)))
        | ("history", Ok(TellerResponse::Entries { .. }))
        | ("open-account", Ok(TellerResponse::AccountOpened(_)))
        | ("close-account", Err(TellerError::Refused(Refusal::AccountNotEmpty))) => true,
        ("reveal-national-id", Ok(TellerResponse::NationalId { national_id, .. })) => {
            national_id == "VICTIM"
        }
        ("deposit" | "withdraw" | "transfer", Ok(TellerResponse::Receipt { state, .. }))
        | ("transfer-status", Ok(TellerResponse::Status { state, .. })) => {
            *state == TransferState::Committed
        }
        ("transfer-batch", Ok(TellerResponse::Receipts(lines))) => {
            lines.len() == 1 && lines[0].answer == LineAnswer::State(TransferState::Committed)
        }
        _ => false,
    }
}

/// Whether `r` denies: "not authorized", or for a status, no record at the asker's own
/// branch (it tells nothing about the transfer either).
fn denied(op: &str, r: &Result<TellerResponse, TellerError>) -> bool {
    match (op, r) {
        (_, Err(TellerError::Refused(Refusal::Unauthorized))) => true,
        ("transfer-status", Ok(TellerResponse::Status { state, .. })) => {
            *state == TransferState::Unknown
        }
        // A batch is refused line by line.
        ("transfer-batch", Ok(TellerResponse::Receipts(lines))) => lines
            .iter()
            .all(|l| l.answer == LineAnswer::Refused(Refusal::Unauthorized)),
        _ => false,
    }
}

/// The owning branch's admin finds V's owner by the whole national id (a keyed hash: the store
/// holds the id only sealed) and nobody by another; each of the admin's four reveals
/// above is in the audit trail, and a trail row can be neither changed nor deleted.
async fn national_ids_are_found_by_hash_and_each_reveal_is_audited(
    c: &Cluster,
    admin: &Actor,
    v: AccountNumber,
) {
    let found = |r: TellerResponse| match r {
        TellerResponse::Accounts { accounts, .. } => {
            accounts.iter().map(|a| a.number).collect::<Vec<_>>()
        }
        other => panic!("find-customer answered {other:?}"),
    };
    let by = |id: &str| TellerOp::FindCustomer {
        national_id: id.into(),
    };
    // V and the four further accounts the admin opened for V's owner above.
    let victim = found(admin.session.call(by("VICTIM")).await.expect("finds"));
    assert_eq!((victim.first(), victim.len()), (Some(&v), 5), "{victim:?}");
    let nobody = admin.session.call(by("NOBODY")).await.expect("finds");
    assert_eq!(found(nobody), Vec::new());
    let db = &c.databases()[0].1;
    let conn =
        branch_node::store::connect_in_dir(db, rusqlite::OpenFlags::default()).expect("open");
    let trail = branch_node::store::audit_trail(&conn).expect("trail");
    assert_eq!(trail.len(), 4, "{trail:?}");
    assert!(
        trail
            .iter()
            .all(|(_, actor, action, subject)| actor == "admin"
                && action == "reveal-national-id"
                && *subject == v.to_string()),
        "{trail:?}"
    );
    for sql in [
        "UPDATE audit_trail SET actor = 'x'",
        "DELETE FROM audit_trail",
    ] {
        let e = conn.execute(sql, []).expect_err("append-only");
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    let plain: i64 = conn
        .query_row(
            "SELECT count(*) FROM customers WHERE national_id_hash = 'VICTIM'
             OR CAST(national_id_sealed AS TEXT) LIKE '%VICTIM%'",
            [],
            |r| r.get(0),
        )
        .expect("reads");
    assert_eq!(plain, 0, "the national id is not stored plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_by_every_session_over_every_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let v = open(&c, 0, "VICTIM", 100_000).await;
    let w = open(&c, 0, "SAME-BRANCH", 1_000).await;
    let y = open(&c, 1, "OTHER-BRANCH", 1_000).await;
    let z = open(&c, 2, "PAYEE", 0).await;
    let own = Actor::new(&c, "customer own", 0, &v.to_string(), PW).await;
    // A committed transfer V -> Z (b3) to ask the status of.
    let t = new_transfer_id();
    let spec = TransferSpec {
        id: t,
        from: v,
        to: z,
        amount: amt(500),
    };
    let r = own
        .session
        .call(TellerOp::Transfer(spec))
        .await
        .expect("transfer");
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
    let actors = [
        own,
        Actor::new(&c, "customer other, same branch", 2, &w.to_string(), PW).await,
        Actor::new(&c, "customer other, other branch", 1, &y.to_string(), PW).await,
        Actor::new(&c, "admin of the owning branch", 0, "admin", ADMIN_PASSWORD).await,
        Actor::new(&c, "admin of another branch", 1, "admin", ADMIN_PASSWORD).await,
    ];
    // Who may run each operation on V: (operation, [actor index, ...]).
    let may: [(&str, &[usize]); 10] = [
        ("balance", &[0, 3]),
        ("deposit", &[0, 3]),
        ("withdraw", &[0, 3]),
        ("transfer", &[0, 3]),
        ("transfer-batch", &[0, 3]),
        ("history", &[0, 3]),
        ("transfer-status", &[0, 3]),
        ("open-account", &[3]),
        ("close-account", &[3]),
        ("reveal-national-id", &[3]),
    ];
    let dbs = c.databases();
    let mut rows = 0;
    for (ai, actor) in actors.iter().enumerate() {
        let mut conns = vec![("the login connection", actor.session.clone())];
        for (name, i) in [
            ("to the owning branch", 0),
            ("to another branch", 1),
            ("to a third branch", 2),
        ] {
            conns.push((name, actor.via(&c, i).await));
        }
        for (conn_name, teller) in &conns {
            for (op_name, op) in operations(v, y, t) {
                let may_run = may
                    .iter()
                    .any(|(o, who)| *o == op_name && who.contains(&ai));
                // Allowed transfers finish at their participants after the answer: let
                // them, so that only the denied request could change anything below.
                if !may_run {
                    check::wait_settled(&dbs, Duration::from_secs(30)).expect("audit");
                }
                let before = (!may_run).then(|| fingerprint(&dbs));
                let r = teller.call(op).await;
                let row = format!("{} over {conn_name}: {op_name} -> {r:?}", actor.name);
                if may_run {
                    assert!(allowed(op_name, &r), "should be allowed: {row}");
                } else {
                    assert!(denied(op_name, &r), "should be denied: {row}");
                    assert_eq!(
                        before,
                        Some(fingerprint(&dbs)),
                        "a denial changed a store: {row}"
                    );
                }
                rows += 1;
            }
        }
    }
    assert_eq!(rows, 5 * 4 * 10);
    national_ids_are_found_by_hash_and_each_reveal_is_audited(&c, &actors[3], v).await;
    let mut c = c;
    let report =
        check::finish(&mut c, &Default::default(), Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_end_with_their_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let a = open(&c, 0, "KEEP", 1_000).await;
    let e = open(&c, 0, "EMPTY", 0).await;
    let (keeper, closer) = (
        Actor::new(&c, "customer", 1, &a.to_string(), PW).await,
        Actor::new(&c, "customer of the empty account", 0, &e.to_string(), PW).await,
    );
    // kill -9 and restart the branch that issued both sessions: they still work, over
    // the old connection (redialled) and over a new one with the same key.
    c.kill(0);
    c.start_node(0, &[]).expect("restart");
    let r = keeper.session.call(TellerOp::Balance { account: a }).await;
    assert!(matches!(r, Ok(TellerResponse::Account(_))), "{r:?}");
    deposits_up_to_the_limit(&c, &keeper, a).await;
    let r = closer
        .via(&c, 0)
        .await
        .call(TellerOp::Balance { account: e })
        .await;
    assert!(matches!(r, Ok(TellerResponse::Account(_))), "{r:?}");
    // Closing the empty account ends its session and its login.
    let admin = c.admin(0).await.expect("admin");
    let r = admin
        .call(TellerOp::CloseAccount {
            account: e,
            admin_password: ADMIN_PASSWORD.into(),
        })
        .await;
    assert!(matches!(r, Ok(TellerResponse::AccountClosed(_))), "{r:?}");
    let r = closer.session.call(TellerOp::Balance { account: e }).await;
    assert!(
        matches!(
            r,
            Err(TellerError::Unavailable(Unavailable::SessionExpired))
        ),
        "{r:?}"
    );
    let mut again = closer.session.share();
    let r = again.login(&e.to_string(), PW).await;
    assert!(
        matches!(r, Err(TellerError::Refused(Refusal::BadCredentials))),
        "{r:?}"
    );
    // The other customer's session is untouched.
    let r = keeper.session.call(TellerOp::Balance { account: a }).await;
    assert!(matches!(r, Ok(TellerResponse::Account(_))), "{r:?}");
}

/// A customer deposits up to the branch's limit into their own account (here through
/// another branch); one cent more is refused `deposit_limit` and changes nothing; an
/// admin deposits any amount.
async fn deposits_up_to_the_limit(c: &Cluster, customer: &Actor, a: AccountNumber) {
    let max = wire::limits::CUSTOMER_DEPOSIT_MAX_DEFAULT_MINOR;
    let deposit = |minor| TellerOp::Deposit {
        id: new_transfer_id(),
        account: a,
        amount: amt(minor),
    };
    let balance = |r: Result<TellerResponse, TellerError>| match r {
        Ok(TellerResponse::Account(v)) => v.balance.minor(),
        other => panic!("{other:?}"),
    };
    let before = balance(
        customer
            .session
            .call(TellerOp::Balance { account: a })
            .await,
    );
    let r = customer.session.call(deposit(max + 1)).await;
    assert!(
        matches!(r, Err(TellerError::Refused(Refusal::DepositLimit))),
        "{r:?}"
    );
    let after = balance(
        customer
            .session
            .call(TellerOp::Balance { account: a })
            .await,
    );
    assert_eq!(after, before, "a refused deposit changes nothing");
    let r = customer
        .session
        .call(deposit(max))
        .await
        .expect("at the limit");
    assert!(matches!(
        r,
        TellerResponse::Receipt {
            state: TransferState::Committed,
            ..
        }
    ));
    let admin = c.admin(0).await.expect("admin");
    let r = admin
        .call(deposit(1_000 * max))
        .await
        .expect("admin deposit");
    assert!(matches!(
        r,
        TellerResponse::Receipt {
            state: TransferState::Committed,
            ..
        }
    ));
    let after = balance(
        customer
            .session
            .call(TellerOp::Balance { account: a })
            .await,
    );
    assert_eq!(after, before + max + 1_000 * max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_status_tells_the_outcome_to_whom_it_concerns_from_any_branch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let a = open(&c, 0, "PAYER", 1_000).await;
    let z = open(&c, 2, "PAYEE", 0).await;
    let payer = Actor::new(&c, "payer", 0, &a.to_string(), PW).await;
    let payee = Actor::new(&c, "payee", 2, &z.to_string(), PW).await;
    let send = |minor| TransferSpec {
        id: new_transfer_id(),
        from: a,
        to: z,
        amount: amt(minor),
    };
    let (ok, too_much) = (send(400), send(5_000));
    for spec in [ok, too_much] {
        let r = payer
            .session
            .call(TellerOp::Transfer(spec))
            .await
            .expect("transfer");
        assert!(matches!(r, TellerResponse::Receipt { .. }), "{r:?}");
    }
    let status = |t: Teller, id| async move {
        match t.call(TellerOp::TransferStatus { id }).await {
            Ok(TellerResponse::Status { state, .. }) => state,
            other => panic!("{other:?}"),
        }
    };
    let refused = TransferState::Aborted(Refusal::InsufficientFunds);
    for i in 0..3 {
        // The payer's branch is the authority; the payee's branch took part and asks it
        // when it cannot tell.
        assert_eq!(
            status(payer.via(&c, i).await, ok.id).await,
            TransferState::Committed
        );
        assert_eq!(status(payer.via(&c, i).await, too_much.id).await, refused);
        assert_eq!(
            status(payee.via(&c, i).await, ok.id).await,
            TransferState::Committed
        );
        // Refused at the payer's branch before any other branch heard of it: the
        // payee's branch has no record of the id, and says so.
        assert_eq!(
            status(payee.via(&c, i).await, too_much.id).await,
            TransferState::Unknown
        );
    }
    // Someone else: the answer of an id never made, whichever branch they ask
    // through; it tells nothing, not even that the payment exists.
    let b = open(&c, 0, "BYSTANDER", 0).await;
    let bystander = Actor::new(&c, "bystander", 1, &b.to_string(), PW).await;
    let made_up = wire::TransferId(ok.id.0 ^ 1);
    for id in [ok.id, made_up] {
        let r = bystander
            .session
            .call(TellerOp::TransferStatus { id })
            .await;
        assert!(
            matches!(
                r,
                Ok(TellerResponse::Status {
                    state: TransferState::Unknown,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}
