//! The web teller console over HTTP: every route, every refusal and the CSRF check,
//! against real branch processes. The console runs in the test process on loopback,
//! connected to branch 1 by libp2p as `teller-cli web` is; an HTTP client plays the
//! browser. Every money answer a page gave is held against the ledgers at the end
//! (the scenarios' answer checker), after the stores' invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use scenarios::answers::{self, Statuses};
use scenarios::check;
use scenarios::cluster::{ADMIN_PASSWORD, Cluster};
use scenarios::workload::{Answer, Kind, Record};
use teller_cli::money::RetryPolicy;
use teller_cli::web::{WebConfig, serve};
use teller_cli::{Teller, say};
use wire::teller::TransferState;
use wire::{AccountNumber, Refusal, TransferId};

const PASSWORD: &str = "web-customer-pw";
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// One answer of the console.
#[derive(Debug)]
struct Page {
    status: u16,
    body: String,
    location: Option<String>,
}

impl Page {
    /// The value of the first `attr="..."` in the page.
    fn attr(&self, attr: &str) -> Option<String> {
        let start = self.body.find(&format!("{attr}=\""))? + attr.len() + 2;
        let len = self.body[start..].find('"')?;
        Some(self.body[start..start + len].to_owned())
    }

    /// The problem's stable code, if the page shows one.
    fn code(&self) -> Option<String> {
        self.attr("data-code")
    }

    /// `(outcome, id)` of a money answer or a status.
    fn outcome(&self) -> (String, TransferId) {
        let outcome = self.attr("data-outcome").expect("an outcome");
        let id = self.attr("data-id").expect("an id").parse().expect("id");
        (outcome, id)
    }

    /// Asserts the page's HTTP status and problem code.
    fn says(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_deref()),
            (status, Some(code)),
            "{}",
            self.body
        );
    }

    fn has(&self, text: &str) -> bool {
        self.body.contains(text)
    }
}

/// What a person sees of a page: its text without the tags (and attributes).
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// A browser without JavaScript: keeps the visit cookie and the latest CSRF token.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: String,
}

impl Browser {
    fn new(base: &str) -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            http,
            base: base.to_owned(),
            cookie: None,
            csrf: String::new(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c.as_str()),
            None => req,
        };
        let r = req.send().await.expect("the console answers");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(set) = header("set-cookie") {
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        let (status, location) = (r.status().as_u16(), header("location"));
        let body = r.text().await.expect("body");
        let page = Page {
            status,
            body,
            location,
        };
        // People read every page: none may name the machinery.
        if page.body.starts_with("<!DOCTYPE") {
            let text = visible_text(&page.body);
            assert_eq!(say::internal_word(&text), None, "{text}");
        }
        if let Some(t) = page.attr("name=\"csrf\" value") {
            self.csrf = t;
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// Posts `fields` with this visit's CSRF token.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf.clone();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// Posts exactly `fields` (no token added).
    async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.send(req).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Page {
        self.get("/login").await;
        self.post("/login", &[("user", user), ("password", password)])
            .await
    }

    /// The transfer id a money form was shown with.
    async fn form_id(&mut self, path: &str) -> String {
        let form = self.get(path).await;
        assert_eq!(form.status, 200, "{}", form.body);
        form.attr("name=\"id\" value")
            .expect("the form carries its id")
    }
}

/// A console for branch `i` of `c`, serving until the test ends; its base URL.
async fn console(c: &Cluster, i: usize, policy: RetryPolicy) -> String {
    let teller = Teller::connect(&c.target(i).expect("target"))
        .await
        .expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let config = WebConfig {
        teller,
        branch_name: format!("b{}", i + 1),
        policy,
    };
    tokio::spawn(serve(listener, config, std::future::pending()));
    base
}

/// Every money answer the pages gave, for the answer checker.
#[derive(Default)]
struct Told {
    records: Vec<Record>,
}

impl Told {
    fn note(&mut self, kind: Kind, owner: AccountNumber, page: &Page) -> (String, TransferId) {
        let (outcome, id) = page.outcome();
        let answer = match outcome.as_str() {
            "committed" => Answer::Committed,
            "refused" => Answer::Refused(refusal(&page.code().expect("a code"))),
            "not_done" => Answer::NotDone,
            _ => Answer::Unknown,
        };
        let resend = self.records.iter().any(|r| r.id == id);
        self.records.push(Record {
            kind,
            id,
            owner,
            branch: 0,
            answer,
            latency: Duration::ZERO,
            resend,
            sent_at: std::time::Instant::now(),
        });
        (outcome, id)
    }

    /// An id answered committed outside the console (the test's set-up).
    fn committed_before(&mut self, kind: Kind, id: TransferId, owner: AccountNumber) {
        self.records.push(Record {
            kind,
            id,
            owner,
            branch: 0,
            answer: Answer::Committed,
            latency: Duration::ZERO,
            resend: false,
            sent_at: std::time::Instant::now(),
        });
    }

    fn committed(&self) -> BTreeSet<TransferId> {
        let done = |r: &&Record| r.answer == Answer::Committed;
        self.records.iter().filter(done).map(|r| r.id).collect()
    }
}

fn refusal(code: &str) -> Refusal {
    Refusal::ALL
        .into_iter()
        .find(|r| r.code() == code)
        .unwrap_or_else(|| panic!("{code} is not a refusal code"))
}

/// What the status page says of `id`, as a transfer state.
async fn status_of(b: &mut Browser, id: TransferId) -> TransferState {
    let page = b.get(&format!("/status?id={id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    match page.outcome().0.as_str() {
        "committed" => TransferState::Committed,
        "refused" => TransferState::Aborted(refusal(&page.code().expect("code"))),
        _ => TransferState::Pending,
    }
}

/// Sends `count` cookieless `GET /login`, 16 at a time: each makes a visit.
async fn flood_login_page(base: &str, count: usize) {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    let url = format!("{base}/login");
    let statuses: Vec<u16> = futures::stream::iter(0..count)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.expect("answers");
                r.status().as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
}

/// Stops the network, then checks the stores and every answer the pages gave.
fn finish(mut c: Cluster, told: &Told, statuses: &Statuses) {
    let (report, audits) =
        check::finish_audited(&mut c, &told.committed(), SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    let answers = answers::check(&told.records, statuses, &audits, &[]);
    assert!(
        answers.violations.is_empty(),
        "answers violated: {:#?}",
        answers.violations
    );
}

/// Short enough that a transfer waiting on a stopped branch is answered "unknown"
/// well before its coordinator gives up on the vote (`PREPARE_TIMEOUT_MS`, 5 s).
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        wait: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(1_500),
        ..RetryPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_moves_money_and_every_answer_is_the_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, funded) = tests::funded_pair(&c, "WEB", PASSWORD, 10_000).await;
    let base = console(&c, 0, quick_policy()).await;
    let mut br = Browser::new(&base);
    let mut told = Told::default();
    told.committed_before(Kind::Deposit, funded, a);
    let (a_text, b_text) = (a.to_string(), b.to_string());

    // Not logged in: every screen sends the browser to the login page.
    let p = br.get("/accounts").await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/login")));
    // A wrong password is refused with its code, and nothing else happens.
    let p = br.login(&a_text, "wrong-password").await;
    p.says(422, "bad_credentials");
    // The login gives the visit a new cookie: one planted before it is worth nothing.
    let planted = br.cookie.clone();
    let p = br.login(&a_text, PASSWORD).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/")));
    assert_ne!(br.cookie, planted, "the visit id changes at login");

    let p = br.get("/accounts").await;
    assert!(p.has(&a_text) && p.has("Refresh balances"), "{}", p.body);

    // Deposit; the same form sent again (a double click) gets the same answer, once.
    let id = br.form_id("/deposit").await;
    let deposit = [
        ("id", id.as_str()),
        ("account", a_text.as_str()),
        ("amount", "1250.50"),
    ];
    let p = br.post("/deposit", &deposit).await;
    assert_eq!(told.note(Kind::Deposit, a, &p).0, "committed", "{}", p.body);
    let p = br.post("/deposit", &deposit).await;
    assert_eq!(told.note(Kind::Deposit, a, &p).0, "committed", "{}", p.body);
    let p = br.get("/accounts").await;
    assert!(p.has("1,350.50"), "deposited once: {}", p.body);

    // A transfer to the other branch, then the history and the status show it.
    let id = br.form_id("/transfer").await;
    let fields = [
        ("id", id.as_str()),
        ("account", &a_text),
        ("to", &b_text),
        ("amount", "250.50"),
    ];
    // First, whom it pays, masked as banks show it; nothing is sent yet.
    let p = br.post("/transfer", &fields).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(
        p.attr("data-payee").as_deref(),
        Some("Test W."),
        "{}",
        p.body
    );
    assert!(p.attr("data-outcome").is_none(), "not sent yet: {}", p.body);
    // An account the bank does not know is said at once, and nothing is sent.
    let nobody = AccountNumber::new(wire::BranchId(2), 999_999)
        .expect("number")
        .to_string();
    let unknown_to = [fields[0], fields[1], ("to", &nobody), fields[3]];
    let p = br.post("/transfer", &unknown_to).await;
    p.says(422, "unknown_account");
    let confirmed = [
        fields[0],
        fields[1],
        fields[2],
        fields[3],
        ("confirmed", "yes"),
    ];
    let p = br.post("/transfer", &confirmed).await;
    let (outcome, transfer) = told.note(Kind::Cross, a, &p);
    assert_eq!(outcome, "committed", "{}", p.body);
    // The answer comes once the decision is durable; the legs apply just after it.
    let mut p = br.get(&format!("/history?account={a}")).await;
    for _ in 0..40 {
        if p.has("transfer out") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        p = br.get(&format!("/history?account={a}")).await;
    }
    assert!(
        p.has("transfer out") && p.has(&b_text) && p.has("1,100.00"),
        "{}",
        p.body
    );
    assert_eq!(status_of(&mut br, transfer).await, TransferState::Committed);

    // Refusals: each says why, with its code, and moves nothing.
    let id = br.form_id("/withdraw").await;
    let p = br
        .post(
            "/withdraw",
            &[("id", &id), ("account", &a_text), ("amount", "5000")],
        )
        .await;
    p.says(422, "insufficient_funds");
    told.note(Kind::Withdraw, a, &p);
    let mistyped = format!("{}9", &b_text[..b_text.len() - 1]);
    let id = br.form_id("/transfer").await;
    let p = br
        .post(
            "/transfer",
            &[
                ("id", &id),
                ("account", &a_text),
                ("to", &mistyped),
                ("amount", "1"),
            ],
        )
        .await;
    p.says(422, "invalid_input");
    assert!(
        p.has(&format!("value=\"{id}\"")),
        "the form comes back with its id"
    );
    let p = br
        .post(
            "/deposit",
            &[("id", &id), ("account", &a_text), ("amount", "1.234")],
        )
        .await;
    p.says(422, "invalid_input");
    let p = br
        .post(
            "/deposit",
            &[("id", &id), ("account", &a_text), ("amount", "0")],
        )
        .await;
    p.says(422, "invalid_input");
    let p = br.get("/status?id=not-an-id").await;
    assert_eq!(p.code().as_deref(), Some("invalid_input"));
    // Another customer's account: not this login's to move.
    let id = br.form_id("/withdraw").await;
    let p = br
        .post(
            "/withdraw",
            &[("id", &id), ("account", &b_text), ("amount", "1")],
        )
        .await;
    p.says(422, "unauthorized");
    // A customer has no admin screens.
    let p = br.get("/admin/accounts").await;
    p.says(403, "unauthorized");

    // A form without the visit's token, or with another visit's, does nothing.
    let id = br.form_id("/deposit").await;
    let p = br
        .post_raw(
            "/deposit",
            &[("id", &id), ("account", &a_text), ("amount", "7")],
        )
        .await;
    p.says(403, "csrf");
    let mut other = Browser::new(&base);
    other.get("/login").await;
    let foreign = other.csrf.clone();
    let p = br
        .post_raw(
            "/deposit",
            &[
                ("csrf", &foreign),
                ("id", &id),
                ("account", &a_text),
                ("amount", "7"),
            ],
        )
        .await;
    p.says(403, "csrf");
    assert_eq!(
        status_of(&mut br, id.parse().expect("id")).await,
        TransferState::Pending
    );

    // Branch 2 stops answering: the console says the outcome is not known, with the id
    // and a way to ask; after the heal the status is final.
    c.pause(1).expect("pause b2");
    let id = br.form_id("/transfer").await;
    let fields = [
        ("id", id.as_str()),
        ("account", &a_text),
        ("to", &b_text),
        ("amount", "10"),
        ("confirmed", "yes"),
    ];
    let p = br.post("/transfer", &fields).await;
    c.resume(1).expect("resume b2");
    let (outcome, unknown) = told.note(Kind::Cross, a, &p);
    assert_eq!((p.status, outcome.as_str()), (202, "unknown"), "{}", p.body);
    assert!(p.has("Check status"), "{}", p.body);
    let mut statuses = BTreeMap::new();
    let deadline = std::time::Instant::now() + SETTLE_BOUND;
    let state = loop {
        let s = status_of(&mut br, unknown).await;
        if s.is_final() || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(state.is_final(), "{unknown} settles");
    statuses.insert(unknown, Ok(state));

    // A stranger floods the login page without cookies: more anonymous visits than
    // the console keeps. The logged-in customer stays in.
    flood_login_page(&base, teller_cli::web::ANONYMOUS_VISITS_MAX + 500).await;
    let p = br.get("/accounts").await;
    assert_eq!(p.status, 200, "still logged in after the flood: {}", p.body);

    // An account opened for this customer after the login shows on the accounts page,
    // and the money forms take it.
    let mut admin = c.admin(0).await.expect("admin");
    let customer = wire::teller::NewCustomer {
        national_id: "WEB-A".into(),
        phone: "+1 555 0100".into(),
        first_name: "Test".into(),
        last_name: "WEB-A".into(),
        sms_opt_in: false,
    };
    let second = admin
        .open_account(customer, PASSWORD.into(), Some(a))
        .await
        .expect("a second account")
        .number;
    let p = br.get("/accounts").await;
    assert!(p.has(&format!("data-balance=\"{second}\"")), "{}", p.body);
    let id = br.form_id("/deposit").await;
    let second_text = second.to_string();
    let fields = [
        ("id", id.as_str()),
        ("account", &second_text),
        ("amount", "5"),
    ];
    let p = br.post("/deposit", &fields).await;
    assert_eq!(
        told.note(Kind::Deposit, second, &p).0,
        "committed",
        "{}",
        p.body
    );
    // Payee lookups are limited per login: reading names by trying numbers stops.
    for _ in 0..wire::limits::PAYEE_LOOKUPS_PER_WINDOW {
        admin.payee(b).await.expect("a lookup within the limit");
    }
    let over = admin.payee(b).await;
    assert!(
        matches!(
            over,
            Err(teller_cli::TellerError::Unavailable(
                wire::teller::Unavailable::Throttled { retry_after_ms }
            )) if retry_after_ms > 0
        ),
        "{over:?}"
    );

    // Logging out ends the visit's login: its cookie no longer opens a screen.
    let p = br.post("/logout", &[]).await;
    assert_eq!(p.location.as_deref(), Some("/login"));
    let p = br.get("/accounts").await;
    assert_eq!(p.location.as_deref(), Some("/login"));
    finish(c, &told, &statuses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_opens_and_closes_and_every_refusal_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "ADM", PASSWORD, 12_345).await;
    let base = console(&c, 0, quick_policy()).await;
    let mut br = Browser::new(&base);
    let p = br.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(p.location.as_deref(), Some("/"));
    let p = br.get("/").await;
    assert_eq!(p.location.as_deref(), Some("/admin/accounts"));

    // Accounts with the customer's details; the national id leaves the branch masked.
    let p = br.get("/admin/accounts").await;
    assert!(
        p.has(&a.to_string()) && !p.has(&b.to_string()),
        "{}",
        p.body
    );
    assert!(p.has(">*DM-A</td>"), "masked national id: {}", p.body);
    assert!(p.has("+1 555 0100") && p.has("123.45"), "{}", p.body);
    let p = br.get("/admin/accounts?scope=network").await;
    assert!(p.has(&a.to_string()) && p.has(&b.to_string()), "{}", p.body);

    // Transactions, filtered by kind, account and dates.
    let p = br.get("/admin/transactions?kind=deposit").await;
    assert!(p.has(&deposit.to_string()), "{}", p.body);
    let p = br.get("/admin/transactions?kind=withdrawal").await;
    assert!(p.has("No entries."), "{}", p.body);
    let p = br
        .get(&format!("/admin/transactions?account={b}&scope=network"))
        .await;
    assert!(p.has("No entries."), "{}", p.body);
    let p = br
        .get("/admin/transactions?since=1970-01-01&until=1970-01-02")
        .await;
    assert!(p.has("No entries."), "{}", p.body);
    let p = br.get("/admin/transactions?since=2020-01-01").await;
    assert!(p.has(&deposit.to_string()), "{}", p.body);
    for bad in [
        "since=2026-02-30",
        "since=2026-02-02&until=2026-02-01",
        "kind=gift",
        "account=1",
    ] {
        let p = br.get(&format!("/admin/transactions?{bad}")).await;
        p.says(422, "invalid_input");
    }

    // Opening: every form error is refused before anything is sent.
    let form = |pw: &'static str, pw2: &'static str, id: &'static str| {
        vec![
            ("first_name", "Ada"),
            ("last_name", "Web"),
            ("national_id", id),
            ("phone", "+46 70 123"),
            ("sms_opt_in", "yes"),
            ("password", pw),
            ("password2", pw2),
        ]
    };
    br.get("/admin/open").await;
    let p = br
        .post(
            "/admin/open",
            &form("long-enough-1", "long-enough-2", "WEB-NEW"),
        )
        .await;
    p.says(422, "invalid_input");
    assert!(p.has("value=\"WEB-NEW\""), "the form keeps what was typed");
    let p = br
        .post("/admin/open", &form("password", "password", "WEB-NEW"))
        .await;
    p.says(422, "invalid_input");
    let p = br
        .post(
            "/admin/open",
            &form("long-enough-1", "long-enough-1", "ADM-A"),
        )
        .await;
    assert_eq!(
        p.status, 422,
        "a national id already a customer: {}",
        p.body
    );
    let p = br
        .post(
            "/admin/open",
            &form("long-enough-1", "long-enough-1", "WEB-NEW"),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let opened = p
        .body
        .split("Opened ")
        .nth(1)
        .and_then(|s| s.get(..15))
        .expect("number");
    let opened: AccountNumber = opened.parse().expect("account number");
    let p = br.get("/admin/accounts").await;
    assert!(
        p.has(&opened.to_string()) && p.has("+46 70 123"),
        "{}",
        p.body
    );

    // Closing: the password again; a non-empty account stays open.
    br.get("/admin/close").await;
    let opened_text = opened.to_string();
    let p = br
        .post(
            "/admin/close",
            &[
                ("account", &opened_text),
                ("admin_password", "wrong-password"),
            ],
        )
        .await;
    p.says(422, "bad_credentials");
    let a_text = a.to_string();
    let p = br
        .post(
            "/admin/close",
            &[("account", &a_text), ("admin_password", ADMIN_PASSWORD)],
        )
        .await;
    p.says(422, "account_not_empty");
    let p = br
        .post(
            "/admin/close",
            &[
                ("account", "001-00000001-00"),
                ("admin_password", ADMIN_PASSWORD),
            ],
        )
        .await;
    p.says(422, "invalid_input");
    let p = br
        .post(
            "/admin/close",
            &[
                ("account", &opened_text),
                ("admin_password", ADMIN_PASSWORD),
            ],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.has(&format!("Closed {opened}")), "{}", p.body);
    let p = br.get("/admin/accounts").await;
    assert!(p.has("closed"), "{}", p.body);
    // Without the token nothing is opened or closed.
    let rows = |p: &Page| p.body.matches("<tr>").count();
    let before = rows(&br.get("/admin/accounts").await);
    let p = br
        .post_raw(
            "/admin/open",
            &form("long-enough-1", "long-enough-1", "WEB-CSRF"),
        )
        .await;
    p.says(403, "csrf");
    let p = br
        .post_raw(
            "/admin/close",
            &[("account", &a_text), ("admin_password", ADMIN_PASSWORD)],
        )
        .await;
    p.says(403, "csrf");
    assert_eq!(rows(&br.get("/admin/accounts").await), before);

    // Another site's page, its name resolved to loopback, is not answered.
    let r = reqwest::Client::new()
        .get(format!("{base}/login"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 421);

    // A form larger than the console reads is refused whole, nothing done.
    let r = reqwest::Client::new()
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=x&password={}", "x".repeat(3 << 20)))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 413);
    assert!(r.text().await.expect("body").contains("too_large"));

    // Pages that do not exist, and assets that do.
    let p = br.get("/nowhere").await;
    p.says(404, "not_found");
    let p = br.get("/static/app.js").await;
    assert!(p.status == 200 && p.has("accountProblem"));
    let mut told = Told::default();
    told.committed_before(Kind::Deposit, deposit, a);
    finish(c, &told, &BTreeMap::new());
}

/// Decodes RFC 4648 base32 (the secret in an `otpauth://` URI).
fn base32(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base32 digit");
        value = (value << 5) | u32::try_from(v).expect("small");
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((value >> bits) & 0xff).expect("byte"));
        }
    }
    out
}

/// Sessions the branch keeps for `login` (they are stored, to survive a restart).
fn branch_sessions(c: &Cluster, login: &str) -> i64 {
    let db =
        branch_node::store::connect_in_dir(&c.databases()[0].1, rusqlite::OpenFlags::default())
            .expect("open the branch db");
    db.query_row(
        "SELECT count(*) FROM sessions WHERE login = ?1",
        [login],
        |r| r.get(0),
    )
    .expect("count")
}

fn rows(p: &Page) -> usize {
    p.body.matches("<tr>").count().saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_continue_one_time_codes_work_and_logout_ends_the_branch_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let account = c
        .open_account(0, "PAGE-0", PASSWORD, true)
        .await
        .expect("open");
    let admin = c.admin(0).await.expect("admin");
    let mut told = Told::default();
    for _ in 0..30 {
        let id = teller_cli::new_transfer_id();
        let op = wire::teller::TellerOp::Deposit {
            id,
            account,
            amount: wire::Amount::from_minor(100).expect("amount"),
        };
        admin.call(op).await.expect("deposit");
        told.committed_before(Kind::Deposit, id, account);
    }
    for i in 1..=55 {
        c.open_account(0, &format!("PAGE-{i}"), PASSWORD, false)
            .await
            .expect("open");
    }
    let base = console(&c, 0, quick_policy()).await;

    // History: 25 entries a page, then the older ones by the link.
    let mut br = Browser::new(&base);
    let me = account.to_string();
    br.login(&me, PASSWORD).await;
    assert_eq!(branch_sessions(&c, &me), 1);
    let p = br.get("/history").await;
    assert_eq!(rows(&p), 25, "{}", p.body);
    let next = p
        .attr("rel=\"next\" href")
        .expect("a next page")
        .replace("&amp;", "&");
    let p = br.get(&next).await;
    assert_eq!(rows(&p), 5, "{}", p.body);
    assert!(p.attr("rel=\"next\" href").is_none());

    // One-time codes: the password again, then every login needs the code.
    let p = br.get("/otp").await;
    assert_eq!(p.status, 200);
    let p = br.post("/otp", &[("password", "wrong-password")]).await;
    p.says(422, "bad_credentials");
    let p = br.post("/otp", &[("password", PASSWORD)]).await;
    assert_eq!(p.status, 200, "{}", p.body);
    let uri = p
        .body
        .split("otpauth://")
        .nth(1)
        .expect("a URI")
        .split('<')
        .next()
        .expect("uri");
    let secret = uri
        .split("secret=")
        .nth(1)
        .expect("secret")
        .split('&')
        .next()
        .expect("secret");
    let secret = base32(secret);

    // Logging out ends the branch session too, not only the visit's.
    br.post("/logout", &[]).await;
    assert_eq!(branch_sessions(&c, &me), 0, "the branch session ended");
    let p = br.login(&me, PASSWORD).await;
    p.says(422, "one_time_code");
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let code = branch_node::totp::code_at(&secret, branch_node::totp::step_at(now));
    br.get("/login").await;
    let p = br
        .post(
            "/login",
            &[("user", &me), ("password", PASSWORD), ("otp", &code)],
        )
        .await;
    assert_eq!(p.location.as_deref(), Some("/"), "{}", p.body);

    // Accounts: 50 a page, then the rest.
    let mut ad = Browser::new(&base);
    ad.login("admin", ADMIN_PASSWORD).await;
    let p = ad.get("/admin/accounts").await;
    assert_eq!(rows(&p), 50, "{}", p.body);
    let next = p
        .attr("rel=\"next\" href")
        .expect("a next page")
        .replace("&amp;", "&");
    let p = ad.get(&next).await;
    assert_eq!(rows(&p), 6, "{}", p.body);
    finish(c, &told, &BTreeMap::new());
}

/// Every `data-outcome` of a bulk-payment answer's rows, in order, with the row's id.
fn bulk_rows(p: &Page) -> Vec<(String, String)> {
    p.body
        .split("<tr data-outcome=\"")
        .skip(1)
        .map(|row| {
            let outcome = row.split('"').next().unwrap_or_default().to_owned();
            let id = row
                .split("data-id=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned();
            (outcome, id)
        })
        .collect()
}

/// Bulk payments in the console: the CSRF check, a wrong line refusing the whole list
/// (nothing moves), then every line answered on its own (committed, refused for funds)
/// and the same lines sent again answered the same, moving nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_payments_are_answered_line_by_line_and_safe_to_send_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "BULK", PASSWORD, 10_000).await;
    let base = console(&c, 0, quick_policy()).await;
    let mut br = Browser::new(&base);
    br.login("admin", ADMIN_PASSWORD).await;
    let p = br.get("/bulk").await;
    assert!(p.status == 200 && p.has("Bulk payments"), "{}", p.body);
    let ids: Vec<TransferId> = (0..3).map(|_| teller_cli::new_transfer_id()).collect();
    let csv = format!(
        "id,from,to,amount\n{},{a},{b},10.00\n{},{a},{b},5000.00\n{},{a},{b},20.00\n",
        ids[0], ids[1], ids[2]
    );
    let p = br.post_raw("/bulk", &[("csv", &csv)]).await;
    p.says(403, "csrf");
    let typo = csv.replace("20.00", "20.001");
    let p = br.post("/bulk", &[("csv", &typo)]).await;
    p.says(422, "invalid_input");
    assert!(p.has("Line 4: ") && p.has("nothing was sent"), "{}", p.body);
    let balance = async || {
        let r = c.admin(0).await.expect("admin");
        match r.call(wire::teller::TellerOp::Balance { account: a }).await {
            Ok(wire::teller::TellerResponse::Account(v)) => v.balance.minor(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(balance().await, 10_000);

    let expected = [
        ("committed", ids[0]),
        ("refused", ids[1]),
        ("committed", ids[2]),
    ]
    .map(|(o, id)| (o.to_owned(), id.to_string()));
    for _ in 0..2 {
        let p = br.post("/bulk", &[("csv", &csv)]).await;
        p.says(422, "some_lines_not_committed");
        assert_eq!(bulk_rows(&p), expected, "{}", p.body);
        assert!(p.has("Insufficient"), "{}", p.body);
        assert_eq!(balance().await, 10_000 - 3_000);
    }
    // A list without ids: each line gets one, the same when the form is sent again (a
    // resubmitted page), and the answer gives the list back with them.
    let form = br.get("/bulk").await;
    let batch = form
        .attr("name=\"batch\" value")
        .expect("the form's base id");
    let plain = format!("from,to,amount\n{a},{b},1.00\n{a},{b},2.00\n");
    let first = br
        .post("/bulk", &[("batch", &batch), ("csv", &plain)])
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let made = bulk_rows(&first);
    assert_eq!(made.len(), 2);
    assert!(first.has("payments-with-ids.csv") && first.has(&made[1].1));
    let again = br
        .post("/bulk", &[("batch", &batch), ("csv", &plain)])
        .await;
    assert_eq!(bulk_rows(&again), made, "{}", again.body);
    assert_eq!(balance().await, 10_000 - 3_000 - 300);
    let made: Vec<TransferId> = made.iter().map(|(_, id)| id.parse().expect("id")).collect();
    let mut c = c;
    let committed = [deposit, ids[0], ids[2], made[0], made[1]].into();
    let report = check::finish(&mut c, &committed, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "{:?}", report.violations);
}

/// The transfer ids a transactions page lists (the id column's text).
fn listed_ids(p: &Page) -> Vec<String> {
    p.body
        .split("<code class=\"id\">")
        .skip(1)
        .filter_map(|s| s.split("</code>").next())
        .filter(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_transactions_page_through_every_branch_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let mut deposited = BTreeSet::new();
    for (i, count) in [(0, 40), (1, 31)] {
        let account = c
            .open_account(i, &format!("NETPAGE-{i}"), PASSWORD, false)
            .await
            .expect("open");
        for _ in 0..count {
            deposited.insert(tests::deposit(&c, i, account, 100).await);
        }
    }
    let base = console(&c, 0, quick_policy()).await;
    let mut ad = Browser::new(&base);
    ad.login("admin", ADMIN_PASSWORD).await;
    let mut listed = Vec::new();
    let mut next = Some("/admin/transactions?scope=network".to_owned());
    let mut sizes = Vec::new();
    while let Some(url) = next.take() {
        let p = ad.get(&url).await;
        assert_eq!(p.status, 200, "{}", p.body);
        sizes.push(rows(&p));
        listed.extend(listed_ids(&p));
        next = p.attr("rel=\"next\" href").map(|h| h.replace("&amp;", "&"));
        assert!(sizes.len() <= 3, "the pages end");
    }
    assert_eq!(sizes, vec![50, 21], "two pages, the second the rest");
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    let want: BTreeSet<String> = deposited.iter().map(ToString::to_string).collect();
    assert_eq!(listed.len(), unique.len(), "no entry listed twice");
    assert_eq!(unique, want, "every branch's every entry listed");

    // A page link that is not whole changes nothing and says why.
    for bad in ["net=1", "net=1:x", "net=1:5,1:6", "net=0:5"] {
        let p = ad
            .get(&format!("/admin/transactions?scope=network&{bad}"))
            .await;
        p.says(422, "invalid_input");
    }
    let report = check::finish(&mut c, &deposited, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_and_a_transfer_ride_out_a_paused_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start_replicated(dir.path(), 2, 3, &[])
        .await
        .expect("network");
    let (a, b, funded) = tests::funded_pair_at(&c, (0, 3), "WEBFO", PASSWORD, 10_000).await;
    let policy = RetryPolicy {
        wait: Duration::from_secs(15),
        ..RetryPolicy::default()
    };
    let base = console(&c, 0, policy).await;
    let mut br = Browser::new(&base);
    let mut told = Told::default();
    told.committed_before(Kind::Deposit, funded, a);

    // b1's leader stops answering (its sockets stay open) just before the login.
    let leader = c.serving_replica(wire::BranchId(1)).expect("a leader");
    c.pause(leader).expect("pauses");
    let p = br.login(&a.to_string(), PASSWORD).await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (303, Some("/")),
        "the login waits for the new leader: {}",
        p.body
    );
    let id = br.form_id("/transfer").await;
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let fields = [
        ("id", id.as_str()),
        ("account", &a_text),
        ("to", &b_text),
        ("amount", "12.00"),
        ("confirmed", "yes"),
    ];
    let p = br.post("/transfer", &fields).await;
    assert_eq!(told.note(Kind::Cross, a, &p).0, "committed", "{}", p.body);
    c.resume(leader).expect("resumes");
    // The status page, asked after the resume, repeats the answer.
    let transfer: TransferId = id.parse().expect("the form's id");
    let state = status_of(&mut br, transfer).await;
    assert_eq!(state, TransferState::Committed);
    let statuses = BTreeMap::from([(transfer, Ok(state))]);
    let disagree = check::replicas_agree(&c, SETTLE_BOUND).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    finish(c, &told, &statuses);
}
