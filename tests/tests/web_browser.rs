//! The web teller console in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver), against a real `teller-cli web` process connected to
//! real branch processes. A customer logs in, deposits, transfers to another branch
//! (the account number checked as it is typed) and sees it in the history, then is
//! refused; an admin logs in with the keyboard alone, opens and closes an account.
//! Every screen is saved as a PNG under `target/tmp/web-console/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), or `BANKMATE_CHROMIUM` and
//! `BANKMATE_CHROMEDRIVER` naming them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use scenarios::check;
use scenarios::cluster::{ADMIN_PASSWORD, Cluster, teller_cli_bin};
use serde_json::json;
use wire::{AccountNumber, TransferId};

const PASSWORD: &str = "browser-customer-pw";
/// With "Grace ", a customer name of 70 characters.
const LONG_NAME: &str = "Browser-Longfellow-Whitmore-Abernathy-Castellanos-Featherstoneha";
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// How long a page or a process may take to appear.
const APPEAR: Duration = Duration::from_secs(30);
/// WebDriver's key codes for Tab and Enter.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(var: &str, default: &str) -> PathBuf {
    let path = std::env::var(var).map_or_else(|_| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium and chromium-driver (./.ci/run does), \
         or set {var}",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + APPEAR;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `teller-cli web` for branch b1 of `c`; its base URL.
fn start_console(c: &Cluster) -> (Process, String) {
    let port = free_port();
    let child = Command::new(teller_cli_bin().expect("teller-cli"))
        .arg("--network-file")
        .arg(&c.network_file)
        .args(["--branch", "b1", "web", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start teller-cli web");
    let p = Process(child);
    wait_listening(port, "teller-cli web");
    (p, format!("http://127.0.0.1:{port}"))
}

/// chromedriver, and a headless Chromium session through it.
async fn start_browser(profile: &Path) -> (Process, Client) {
    let chromium = program("BANKMATE_CHROMIUM", "/usr/bin/chromium");
    let driver = program("BANKMATE_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let p = Process(child);
    wait_listening(port, "chromedriver");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (p, client)
}

/// Drives the console in the browser and keeps its screenshots.
struct Screen {
    b: Client,
    base: String,
    shots: PathBuf,
    taken: usize,
}

impl Screen {
    async fn open(&self, path: &str) {
        self.b
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("goto");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.b
            .wait()
            .at_most(APPEAR)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    async fn submit(&self, form: &str) {
        let button = self.find(&format!("{form} button[type=submit]")).await;
        button.click().await.expect("click");
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    async fn attr(&self, css: &str, attr: &str) -> String {
        let e = self.find(css).await;
        e.attr(attr).await.expect("attr").unwrap_or_default()
    }

    /// Saves the screen as `NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.taken += 1;
        let png = self.b.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png).expect("save screenshot");
    }

    /// Asserts that the page on screen fits its window's width: neither the page nor
    /// any of its tables scrolls sideways.
    async fn fits(&self, what: &str) {
        let widths = self
            .b
            .execute(
                "const d = document.documentElement; \
                 const t = Array.from(document.querySelectorAll('table')) \
                   .map(t => t.scrollWidth - t.clientWidth); \
                 return [d.scrollWidth, window.innerWidth, Math.max(0, ...t)];",
                Vec::new(),
            )
            .await
            .expect("script");
        let w: Vec<u64> = serde_json::from_value(widths).expect("numbers");
        assert!(
            w[0] <= w[1] && w[2] <= 1,
            "{what} scrolls sideways: page {} in a window of {}, a table by {}",
            w[0],
            w[1],
            w[2]
        );
    }

    /// Opens each of `paths` at phone width (375 px), checks it fits and keeps its
    /// screenshot; then back to the laptop's 1280 px.
    async fn at_phone_width(&mut self, paths: &[(&str, &str)]) {
        self.b.set_window_size(375, 812).await.expect("phone width");
        for (path, wait_for) in paths {
            self.open(path).await;
            self.find(wait_for).await;
            let page = path.split('?').next().unwrap_or(path);
            let name = format!("phone{}", page.replace('/', "-"));
            self.shot(&name).await;
            self.fits(path).await;
        }
        self.b
            .set_window_size(1280, 900)
            .await
            .expect("laptop width");
    }

    /// The outcome of the money answer on screen, with its id.
    async fn outcome(&self) -> (String, TransferId) {
        let outcome = self.attr(".outcome", "data-outcome").await;
        let id = self.attr(".outcome", "data-id").await;
        (outcome, id.parse().expect("id"))
    }

    /// Waits until `css` shows `text`, the page just submitted having been replaced
    /// (an element of the old page goes stale: that is "not yet"); with `reload`, the
    /// page is loaded again between looks (a GET page whose data arrives later).
    async fn wait_text(&self, css: &str, text: &str, reload: bool) {
        let deadline = Instant::now() + APPEAR;
        loop {
            if let Ok(e) = self.b.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
                && t.contains(text)
            {
                return;
            }
            assert!(Instant::now() < deadline, "{css} never showed {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if reload {
                self.b.refresh().await.expect("refresh");
            }
        }
    }
}

/// A customer at the console: deposit, a cross-branch transfer, history, a refusal.
/// Returns the ids the screens said were committed.
async fn customer_session(s: &mut Screen, a: AccountNumber, b: AccountNumber) -> Vec<TransferId> {
    let mut committed = Vec::new();
    s.open("/").await;
    s.find("form[action='/login']").await;
    s.shot("login").await;
    s.fill("#user", &a.to_string()).await;
    s.fill("#password", PASSWORD).await;
    s.submit("form[action='/login']").await;
    s.wait_text("main", "Refresh balances", false).await;
    s.shot("customer-accounts").await;

    s.find("nav a[href='/deposit']")
        .await
        .click()
        .await
        .expect("nav");
    s.fill("#amount", "500.00").await;
    s.submit("form[action='/deposit']").await;
    let (outcome, id) = s.outcome().await;
    assert_eq!(outcome, "committed");
    committed.push(id);
    s.shot("deposit-committed").await;

    // The receiver's number is checked as it is typed.
    s.open("/transfer").await;
    let good = b.to_string();
    let mistyped = format!(
        "{}{}",
        &good[..good.len() - 1],
        if good.ends_with('9') { '8' } else { '9' }
    );
    s.fill("#to", &mistyped).await;
    assert!(
        s.text("#to-hint")
            .await
            .contains("check digits do not match")
    );
    s.fill("#amount", "120.25").await;
    s.shot("transfer-mistyped-account").await;
    s.fill("#to", &good).await;
    assert_eq!(s.text("#to-hint").await, "account number looks right");
    s.submit("form[action='/transfer']").await;
    // Whom it pays, confirmed before anything is sent.
    s.wait_text(".payee", "This pays", false).await;
    s.shot("transfer-confirm").await;
    s.submit("form[action='/transfer']").await;
    let (outcome, id) = s.outcome().await;
    assert_eq!(outcome, "committed");
    committed.push(id);
    s.shot("transfer-committed").await;

    s.open("/history").await;
    s.wait_text("table.entries", "transfer out", true).await;
    assert!(s.text("table.entries").await.contains(&good));
    s.shot("history").await;

    s.open("/withdraw").await;
    s.fill("#amount", "99999").await;
    s.submit("form[action='/withdraw']").await;
    let (outcome, _) = s.outcome().await;
    assert_eq!(outcome, "refused");
    assert_eq!(s.attr(".problem", "data-code").await, "insufficient_funds");
    s.shot("withdraw-refused").await;
    let status = format!("/status?id={}", committed[1]);
    s.at_phone_width(&[
        ("/accounts", "table"),
        ("/history", "table.entries"),
        ("/transfer", "form[action='/transfer']"),
        (&status, ".outcome"),
    ])
    .await;
    s.submit("header form[action='/logout']").await;
    s.find("form[action='/login']").await;
    committed
}

/// An admin, logging in with the keyboard alone, opens an account and closes it.
async fn admin_session(s: &mut Screen, a: AccountNumber, b: AccountNumber) -> Vec<TransferId> {
    s.open("/login").await;
    s.find("#user").await;
    let typing = s.b.active_element().await.expect("focus");
    typing
        .send_keys(&format!("admin{TAB}{ADMIN_PASSWORD}{ENTER}"))
        .await
        .expect("keys");
    s.wait_text("main", "National id", false).await;
    s.shot("admin-accounts").await;

    s.open("/admin/open").await;
    for (field, value) in [
        ("#first_name", "Grace"),
        // 70 characters in all: the accounts list must still fit a laptop's screen.
        ("#last_name", LONG_NAME),
        ("#national_id", "BROWSER-1"),
        ("#phone", "+46 70 555"),
        ("#password", "grace-browser-pw"),
        ("#password2", "grace-browser-pw"),
    ] {
        s.fill(field, value).await;
    }
    s.find("#sms_opt_in").await.click().await.expect("tick");
    s.shot("admin-open-form").await;
    s.submit("form[action='/admin/open']").await;
    let said = s.text(".done").await;
    let number: AccountNumber = said
        .split("Opened ")
        .nth(1)
        .and_then(|t| t.get(..15))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("an account number in {said:?}"));
    s.shot("admin-opened").await;
    s.open("/admin/accounts").await;
    s.wait_text("table.accounts", "Grace", false).await;
    s.shot("admin-accounts-long-name").await;
    s.fits("the accounts list with a 70-character name").await;

    s.open("/admin/close").await;
    s.fill("#account", &number.to_string()).await;
    s.fill("#admin_password", ADMIN_PASSWORD).await;
    s.submit("form[action='/admin/close']").await;
    assert!(s.text(".done").await.contains(&format!("Closed {number}")));
    s.shot("admin-closed").await;

    // Bulk payments: two lines, one committed, one refused for funds.
    let (paid, refused) = (teller_cli::new_transfer_id(), teller_cli::new_transfer_id());
    s.open("/bulk").await;
    let lines = format!("id,from,to,amount\n{paid},{a},{b},12.50\n{refused},{a},{b},99999.00");
    s.fill("#csv", &lines).await;
    s.submit("form[action='/bulk']").await;
    s.find("table.lines").await;
    for (id, outcome) in [(paid, "committed"), (refused, "refused")] {
        let row = format!("tr[data-id='{id}']");
        assert_eq!(s.attr(&row, "data-outcome").await, outcome, "{id}");
    }
    s.shot("admin-bulk").await;

    s.open("/admin/transactions?scope=network").await;
    s.find("table.entries").await;
    s.shot("admin-transactions").await;
    s.fits("the network's transactions").await;
    s.at_phone_width(&[
        ("/admin/accounts?scope=network", "table.accounts"),
        ("/admin/transactions?scope=network", "table.entries"),
        ("/bulk", "form[action='/bulk']"),
        ("/deposit", "form[action='/deposit']"),
        ("/admin/open", "form[action='/admin/open']"),
    ])
    .await;
    vec![paid]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_an_admin_use_the_console_in_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, funded) = tests::funded_pair(&c, "BRW", PASSWORD, 100_000).await;
    let (console, base) = start_console(&c);
    let profile = dir.path().join("chromium-profile");
    let (driver, browser) = start_browser(&profile).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-console");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let mut s = Screen {
        b: browser,
        base,
        shots,
        taken: 0,
    };
    let mut committed: BTreeSet<TransferId> =
        customer_session(&mut s, a, b).await.into_iter().collect();
    committed.insert(funded);
    committed.extend(admin_session(&mut s, a, b).await);
    eprintln!("screenshots: {}", s.shots.display());
    s.b.close().await.expect("close the browser");
    drop((driver, console));
    let report = check::finish(&mut c, &committed, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}
