//! Hostile tellers against real nodes: parallel password guesses, unknown logins that
//! must look like known ones, a stranger who must not lock the owner out, a stolen
//! password against a login enrolled for one-time codes, and weak new passwords.

use scenarios::cluster::{ADMIN_PASSWORD, Cluster};
use teller_cli::{Teller, TellerError};
use wire::Refusal;
use wire::limits::LOGIN_FREE_FAILURES;
use wire::teller::{NewCustomer, Scope, TellerOp, TellerResponse, Unavailable};

const PW: &str = "customer-pw";

/// What `n` guesses sent at once from `n` fresh tellers got, plus the right password
/// sent 300 ms later, while the guesses' wait (1 s from the last counted failure) runs:
/// (bad credentials, throttled, logged in, the last one's answer).
async fn parallel_guesses(c: &Cluster, user: &str, n: usize) -> (usize, usize, usize, String) {
    let target = c.target(0).expect("target");
    let mut tellers = Vec::new();
    for _ in 0..=n {
        tellers.push(Teller::connect(&target).await.expect("connects"));
    }
    let mut last = tellers.pop().expect("one more");
    let guesses: Vec<_> = tellers
        .into_iter()
        .map(|mut t| {
            let user = user.to_owned();
            tokio::spawn(async move { t.login(&user, "wrong-guess").await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let right = last.login(user, PW).await;
    let guesses = futures::future::join_all(guesses).await;
    let last = match &right {
        Ok(_) => "logged in".to_owned(),
        Err(e) => e.code().to_owned(),
    };
    let (mut bad, mut throttled, mut ok) = (0, 0, 0);
    for g in guesses
        .into_iter()
        .map(|g| g.expect("joins"))
        .chain([right])
    {
        match g {
            Err(TellerError::Refused(Refusal::BadCredentials)) => bad += 1,
            Err(TellerError::Unavailable(Unavailable::Throttled { .. })) => throttled += 1,
            Ok(TellerResponse::LoggedIn { .. }) => ok += 1,
            other => panic!("unexpected answer to a guess: {other:?}"),
        }
    }
    (bad, throttled, ok, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_stop_at_the_limit_and_unknown_logins_look_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let account = c.open_account(0, "HOST-1", PW, false).await.expect("open");
    // The owner logs in once from their usual teller, which is then trusted.
    let mut owner = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connects");
    owner
        .login(&account.to_string(), PW)
        .await
        .expect("owner logs in");

    let (bad, throttled, ok, last) = parallel_guesses(&c, &account.to_string(), 60).await;
    assert_eq!(bad, LOGIN_FREE_FAILURES as usize, "guesses checked");
    assert_eq!((throttled, ok), (61 - bad, 0));
    assert_eq!(
        last, "throttled",
        "a stranger with the right password waits too"
    );

    // An account number nobody has gets exactly the same answers.
    let unknown = format!(
        "{}",
        wire::AccountNumber::new(wire::BranchId(1), 999).expect("valid")
    );
    let (ubad, uthrottled, uok, ulast) = parallel_guesses(&c, &unknown, 60).await;
    assert_eq!((ubad, uthrottled, uok), (bad, throttled, 0));
    assert_eq!(ulast, "throttled");

    // The owner, at the teller they used before, is not delayed by the stranger.
    owner.logout().await.expect("logs out");
    owner
        .login(&account.to_string(), PW)
        .await
        .expect("the owner still logs in at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_password_does_not_open_an_enrolled_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let account = c.open_account(0, "HOST-2", PW, false).await.expect("open");
    let target = c.target(0).expect("target");
    let mut customer = Teller::connect(&target).await.expect("connects");
    customer
        .login(&account.to_string(), PW)
        .await
        .expect("logs in");
    let enroll = |user: String, password: &str| TellerOp::EnrollOtp {
        user,
        password: password.into(),
    };
    // Enrolling another login is not a customer's to do.
    let other = customer.call(enroll("admin".into(), PW)).await;
    assert!(
        matches!(other, Err(TellerError::Refused(Refusal::Unauthorized))),
        "{other:?}"
    );
    let enrolled = customer
        .call(enroll(account.to_string(), PW))
        .await
        .expect("enrols");
    let TellerResponse::OtpEnrolled { uri, .. } = enrolled else {
        panic!("{enrolled:?}")
    };
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let again = customer.call(enroll(account.to_string(), PW)).await;
    assert!(matches!(
        again,
        Err(TellerError::Refused(Refusal::AlreadyEnrolled))
    ));

    // A thief with the password, at another teller, gets nowhere without the code.
    let mut thief = Teller::connect(&target).await.expect("connects");
    let stolen = thief.login(&account.to_string(), PW).await;
    assert!(
        matches!(stolen, Err(TellerError::Refused(Refusal::OneTimeCode))),
        "{stolen:?}"
    );
    let guessed = thief
        .login_with_code(&account.to_string(), PW, Some("123456"))
        .await;
    assert!(matches!(
        guessed,
        Err(TellerError::Refused(Refusal::BadCredentials))
    ));
    // A wrong password gets the same answers: no oracle for the password.
    let wrong = thief.login(&account.to_string(), "not-her-password").await;
    assert!(
        matches!(wrong, Err(TellerError::Refused(Refusal::OneTimeCode))),
        "{wrong:?}"
    );

    // The admin can replace the customer's device; the customer cannot do it twice.
    let admin = c.admin(0).await.expect("admin");
    let replaced = admin
        .call(enroll(account.to_string(), ADMIN_PASSWORD))
        .await
        .expect("admin replaces");
    assert!(matches!(replaced, TellerResponse::OtpEnrolled { .. }));
}

/// Strangers' guesses at the admin login throttle it for every new teller, but the
/// admin at the branch's own machine, with password and one-time code, logs in: those
/// attempts are counted apart. (Before, the right password at a new teller got
/// `throttled` for a minute and more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_on_the_branchs_machine_logs_in_through_strangers_guesses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let admin = c.admin(0).await.expect("admin");
    let enrolled = admin
        .call(TellerOp::EnrollOtp {
            user: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .expect("enrols");
    let TellerResponse::OtpEnrolled { uri, .. } = enrolled else {
        panic!("{enrolled:?}")
    };
    let secret = tests::otp_secret(&uri);
    let target = c.target(0).expect("target");
    for _ in 0..2 * LOGIN_FREE_FAILURES {
        let mut stranger = Teller::connect(&target).await.expect("connects");
        let r = stranger.login("admin", "a-wrong-guess").await;
        assert!(
            matches!(
                r,
                Err(TellerError::Refused(Refusal::OneTimeCode)
                    | TellerError::Unavailable(Unavailable::Throttled { .. }))
            ),
            "{r:?}"
        );
    }
    let mut new_teller = Teller::connect(&target).await.expect("connects");
    let r = new_teller.login("admin", ADMIN_PASSWORD).await;
    assert!(
        matches!(
            r,
            Err(TellerError::Unavailable(Unavailable::Throttled { .. }))
        ),
        "without a code the admin waits like anyone: {r:?}"
    );
    let now = branch_node::node::now_ms();
    let code = branch_node::totp::code_at(&secret, branch_node::totp::step_at(now));
    let r = new_teller
        .login_with_code("admin", ADMIN_PASSWORD, Some(&code))
        .await;
    assert!(matches!(r, Ok(TellerResponse::LoggedIn { .. })), "{r:?}");
}

/// The throttle's counts and trusted tellers are kept in the store: after a kill -9 and
/// a restart a stranger is still throttled where it was, and the owner's usual teller
/// is still trusted. (Before, a restart forgot both: the stranger got fresh guesses.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_forgets_no_failed_login_and_no_trusted_teller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let account = c.open_account(0, "HOST-5", PW, false).await.expect("open");
    let user = account.to_string();
    let usual = wire::BranchKey::from_secret(rand::random());
    let target = c.target(0).expect("target");
    let mut owner = Teller::connect_with_key(&target, &usual)
        .await
        .expect("connects");
    owner.login(&user, PW).await.expect("owner logs in");
    // Guesses, each from a new teller, waiting out each throttle, until 8 failed.
    let mut failed = 0;
    while failed < LOGIN_FREE_FAILURES + 3 {
        let mut stranger = Teller::connect(&target).await.expect("connects");
        match stranger.login(&user, "a-wrong-guess").await {
            Err(TellerError::Refused(Refusal::BadCredentials)) => failed += 1,
            Err(TellerError::Unavailable(Unavailable::Throttled { retry_after_ms })) => {
                tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms + 50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    c.kill(0);
    c.start_node(0, &[]).expect("restart");
    let mut stranger = Teller::connect(&target).await.expect("connects");
    let r = stranger.login(&user, PW).await;
    assert!(
        matches!(
            r,
            Err(TellerError::Unavailable(Unavailable::Throttled { .. }))
        ),
        "still throttled after the restart, right password or not: {r:?}"
    );
    let mut owner = Teller::connect_with_key(&target, &usual)
        .await
        .expect("connects");
    let r = owner.login(&user, PW).await;
    assert!(matches!(r, Ok(TellerResponse::LoggedIn { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_new_passwords_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let admin = c.admin(0).await.expect("admin");
    for weak in ["short", "password123", "Qwertyuiop"] {
        let r = admin
            .call(TellerOp::OpenAccount {
                customer: NewCustomer {
                    national_id: "WEAK-1".into(),
                    phone: "+1 555 0100".into(),
                    first_name: "W".into(),
                    last_name: "K".into(),
                    sms_opt_in: false,
                },
                password: weak.into(),
                existing: None,
            })
            .await;
        assert!(
            matches!(r, Err(TellerError::Refused(Refusal::WeakPassword))),
            "{weak}: {r:?}"
        );
    }
    let mut admin = admin;
    let listed = admin
        .all_accounts(wire::teller::Scope::Branch)
        .await
        .expect("lists");
    assert!(matches!(listed, TellerResponse::Accounts { accounts, .. } if accounts.is_empty()));
}

/// A branch with 30,000 accounts lists them all, page by page (one message could not
/// hold them), and a network listing with a branch down names that branch and shows
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_listings_page_and_a_missing_branch_is_named() {
    const MANY: u32 = 30_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::create(dir.path(), 2, &[]).expect("cluster");
    {
        let db = c.nodes[0].dir.join(branch_node::init::DB_FILE);
        let mut conn =
            branch_node::store::connect_in_dir(&db, rusqlite::OpenFlags::default()).expect("opens");
        let tx = conn.transaction().expect("tx");
        tx.execute(
            "INSERT INTO customers (id, national_id_hash, phone, first_name, last_name, sms_opt_in, created_at_ms)
             VALUES (1, 'BULK', '+1 555 0100', 'Bulk', 'Owner', 0, 0)",
            [],
        )
        .expect("customer");
        for serial in 1..=MANY {
            tx.execute(
                "INSERT INTO accounts (serial, customer_id, balance, status, opened_at_ms)
                 VALUES (?1, 1, 0, 'open', 0)",
                [serial],
            )
            .expect("account");
        }
        tx.commit().expect("commits");
    }
    c.start_node(0, &[]).expect("b1");
    c.start_node(1, &[]).expect("b2");
    let other = c.open_account(1, "B2-ONE", PW, false).await.expect("open");
    let mut admin = c.admin(0).await.expect("admin");
    let all = admin.all_accounts(Scope::Network).await.expect("lists");
    let TellerResponse::Accounts {
        accounts,
        unreachable,
        ..
    } = all
    else {
        panic!()
    };
    assert_eq!(accounts.len(), MANY as usize + 1);
    assert_eq!(accounts.last().map(|a| a.number), Some(other));
    assert!(unreachable.is_empty());

    c.kill(1);
    let partial = admin
        .all_accounts(Scope::Network)
        .await
        .expect("lists what it can");
    let TellerResponse::Accounts {
        accounts,
        unreachable,
        ..
    } = partial
    else {
        panic!()
    };
    assert_eq!(accounts.len(), MANY as usize);
    assert_eq!(unreachable, vec![wire::BranchId(2)]);
    let entries = admin
        .call(TellerOp::ListTransactions {
            scope: Scope::Network,
            page: wire::teller::PageRequest {
                before: None,
                limit: 10,
            },
            filter: wire::teller::EntryFilter::default(),
            network: Vec::new(),
        })
        .await
        .expect("lists what it can");
    assert!(
        matches!(entries, TellerResponse::Entries { unreachable, .. } if unreachable == vec![wire::BranchId(2)])
    );
}
