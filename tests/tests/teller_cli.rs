//! `teller-cli` as a process against a real 3-branch network: every subcommand, the
//! refusals with their exit codes (each leaving the stores unchanged), `--help` for every
//! command, and the interactive menus driven through a pseudo-terminal.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use client::network_file::NetworkFile;
use scenarios::check;
use scenarios::cluster::{ADMIN_PASSWORD, Cluster, teller_cli_bin};
use serde_json::Value;
use wire::{AccountNumber, TransferId};

const EXIT_REFUSED: i32 = 3;
const EXIT_CONNECTION: i32 = 4;
const EXIT_USAGE: i32 = 2;
const CUSTOMER_PASSWORD: &str = "customer-pw-1";

/// One `teller-cli` run: exit code, stdout, stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.out.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", self.out, self.err))
    }

    /// Asserts success and returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "stdout {:?} stderr {:?}", self.out, self.err);
        &self.out
    }

    /// Asserts exit `code` and a one-line error containing `says`.
    fn refused(&self, code: i32, says: &str) {
        assert_eq!(
            self.code, code,
            "stdout {:?} stderr {:?}",
            self.out, self.err
        );
        assert_eq!(
            self.err.lines().count(),
            1,
            "one-line error: {:?}",
            self.err
        );
        assert!(
            self.err.to_lowercase().contains(&says.to_lowercase()),
            "error {:?} should say {says:?}",
            self.err
        );
        // People read it: no word of the machinery.
        assert_eq!(
            teller_cli::say::internal_word(&self.err),
            None,
            "{:?}",
            self.err
        );
    }
}

/// Runs `teller-cli` with the network file and these arguments, passwords from
/// environment variables `ADMIN_PW` and `CUST_PW`.
fn cli(network: &Path, args: &[&str]) -> Run {
    cli_with_stdin(network, args, None)
}

fn cli_with_stdin(network: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(teller_cli_bin().expect("teller-cli binary"));
    cmd.arg("--network-file")
        .arg(network)
        .args(args)
        .env("ADMIN_PW", ADMIN_PASSWORD)
        .env("CUST_PW", CUSTOMER_PASSWORD)
        .env("WRONG_PW", "not-the-password")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn teller-cli");
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("teller-cli ran");
    Run {
        code: status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&stdout).into_owned(),
        err: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn admin<'a>(branch: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--branch",
        branch,
        "--user",
        "admin",
        "--password-env",
        "ADMIN_PW",
    ];
    v.extend_from_slice(rest);
    v
}

fn customer<'a>(branch: &'a str, account: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--branch",
        branch,
        "--user",
        account,
        "--password-env",
        "CUST_PW",
    ];
    v.extend_from_slice(rest);
    v
}

/// Opens an account at `branch` with the admin subcommand; returns its number.
fn open_account(net: &Path, branch: &str, national_id: &str) -> String {
    let r = cli(
        net,
        &admin(
            branch,
            &[
                "--json",
                "admin",
                "open-account",
                "--national-id",
                national_id,
                "--phone",
                "+1 555 0100",
                "--first-name",
                "Ada",
                "--last-name",
                national_id,
                "--sms",
                "--customer-password-env",
                "CUST_PW",
            ],
        ),
    );
    r.ok();
    let v = r.json();
    assert_eq!(v["balance"], "0.00", "{v}");
    v["account"].as_str().expect("account").to_owned()
}

fn balance(net: &Path, branch: &str, account: &str) -> String {
    let r = cli(net, &customer(branch, account, &["--json", "balance"]));
    r.ok();
    r.json()["balance"].as_str().expect("balance").to_owned()
}

/// Waits for nothing in flight, stops the network, and checks every invariant.
fn finish(mut c: Cluster, committed: &BTreeSet<TransferId>) {
    let report = check::finish(&mut c, committed, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

fn committed_id(r: &Run) -> TransferId {
    r.ok();
    let v = r.json();
    assert_eq!(v["state"], "committed", "{v}");
    v["id"].as_str().expect("id").parse().expect("transfer id")
}

#[test]
fn every_subcommand_against_three_branches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &["--fault-switch"]).expect("cluster");
    let net = c.network_file.clone();
    let mut committed = BTreeSet::new();

    let a = open_account(&net, "b1", "CLI-A");
    let b = open_account(&net, "b2", "CLI-B");

    // Admin deposits into a customer's account; the customer withdraws.
    let r = cli(
        &net,
        &admin("b1", &["--json", "deposit", "100.00", "--account", &a]),
    );
    committed.insert(committed_id(&r));
    let r = cli(&net, &customer("b1", &a, &["--json", "withdraw", "10"]));
    committed.insert(committed_id(&r));
    assert_eq!(balance(&net, "b1", &a), "90.00");

    // A cross-branch transfer with a chosen id, then the same id again: one transfer.
    let id = teller_cli::new_transfer_id().to_string();
    let send = ["--json", "transfer", "--to", &b, "25.50", "--id", &id];
    let first = committed_id(&cli(&net, &customer("b1", &a, &send)));
    let again = committed_id(&cli(&net, &customer("b1", &a, &send)));
    assert_eq!(first, again);
    committed.insert(first);
    assert_eq!(balance(&net, "b1", &a), "64.50");
    // The receiving customer, at their own branch and through a third one.
    assert_eq!(balance(&net, "b2", &b), "25.50");
    assert_eq!(balance(&net, "b3", &b), "25.50");

    // transfer-status, as JSON and as text.
    let r = cli(
        &net,
        &customer("b1", &a, &["--json", "transfer-status", &id]),
    );
    assert_eq!(r.json()["state"], "committed");
    let r = cli(&net, &customer("b1", &a, &["transfer-status", &id]));
    assert!(r.ok().contains("committed"), "{}", r.out);

    // A transfer back, sent from b3 by the customer of b2, read with --password-stdin.
    let r = cli_with_stdin(
        &net,
        &[
            "--branch",
            "b3",
            "--user",
            &b,
            "--password-stdin",
            "--json",
            "transfer",
            "--to",
            &a,
            "0.50",
        ],
        Some(&format!("{CUSTOMER_PASSWORD}\n")),
    );
    committed.insert(committed_id(&r));

    // History: JSON with exact decimal strings, and a table.
    let r = cli(&net, &customer("b1", &a, &["--json", "history"]));
    let entries = r.json()["entries"].as_array().expect("entries").clone();
    let amounts: Vec<&str> = entries
        .iter()
        .map(|e| e["amount"].as_str().expect("amount string"))
        .collect();
    assert_eq!(amounts, ["0.50", "25.50", "10.00", "100.00"], "{entries:?}");
    let r = cli(&net, &customer("b1", &a, &["history", "--limit", "2"]));
    let table = r.ok();
    assert!(
        table.contains("time (UTC)") && table.contains("more: --before"),
        "{table}"
    );
    fits_a_terminal(table);
    assert!(
        table.contains("transfer out") && table.contains("(UTC)"),
        "{table}"
    );

    // Connecting by full address (the key pinned by its /p2p/ part) instead of by name.
    let file = NetworkFile::load(&net).expect("network file");
    let b2 = file.by_name("b2").expect("b2");
    let addr = format!("{}/p2p/{}", b2.first().addresses[0], b2.first().peer_id);
    let r = cli(
        &net,
        &[
            "--addr",
            &addr,
            "--user",
            &b,
            "--password-env",
            "CUST_PW",
            "balance",
        ],
    );
    assert!(r.ok().contains("25.00"), "{}", r.out);

    // Admin listings: this branch, and the whole network.
    let r = cli(&net, &admin("b1", &["--json", "admin", "accounts"]));
    let mine: Vec<String> = r.json()["accounts"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["account"].as_str().expect("account").to_owned())
        .collect();
    assert!(mine.contains(&a) && !mine.contains(&b), "{mine:?}");
    let r = cli(&net, &admin("b1", &["admin", "accounts", "--network"]));
    assert!(r.ok().contains(&a) && r.out.contains(&b), "{}", r.out);
    let r = cli(&net, &admin("b2", &["--json", "admin", "transactions"]));
    assert!(!r.json()["entries"].as_array().expect("entries").is_empty());
    let r = cli(&net, &admin("b3", &["admin", "transactions", "--network"]));
    assert!(r.ok().contains(&a) && r.out.contains(&b), "{}", r.out);
    fits_a_terminal(&r.out);
    // Several accounts: the time stays whole (date, hour and minute) and a transfer's
    // kind names its other account.
    let timed = |l: &&str| l.get(4..5) == Some("-") && l.get(13..14) == Some(":");
    assert!(
        r.out
            .lines()
            .skip(1)
            .all(|l| l.starts_with("more") || timed(&l)),
        "{}",
        r.out
    );
    assert!(r.out.contains(&format!("to {b}")) && r.out.contains(&format!("from {a}")));
    // Filters: kind, account, a time range; a bad date is refused before sending.
    let listed = |args: &[&str]| {
        let mut all = vec!["--json", "admin", "transactions", "--network"];
        all.extend_from_slice(args);
        cli(&net, &admin("b1", &all)).json()["entries"]
            .as_array()
            .expect("entries")
            .clone()
    };
    let deposits = listed(&["--kind", "deposit"]);
    assert!(!deposits.is_empty() && deposits.iter().all(|e| e["kind"] == "Deposit"));
    let mine = listed(&["--account", &a]);
    assert!(!mine.is_empty() && mine.iter().all(|e| e["account"] == a.as_str()));
    assert!(listed(&["--since", "2000-01-01", "--until", "2000-01-02"]).is_empty());
    assert!(!listed(&["--since", "2000-01-01"]).is_empty());
    // Pages of the network's entries, one at a time by the cursor each page gives.
    let whole: Vec<String> = listed(&[]).iter().map(|e| e.to_string()).collect();
    let (mut paged, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut args = vec!["--limit", "1"];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let mut all = vec!["--json", "admin", "transactions", "--network"];
        all.extend_from_slice(&args);
        let page = cli(&net, &admin("b1", &all)).json();
        paged.extend(
            page["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e.to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(paged.len() <= whole.len(), "the pages end");
    }
    assert_eq!(
        paged, whole,
        "page by page, the same entries in the same order"
    );
    cli(
        &net,
        &admin(
            "b1",
            &["admin", "transactions", "--network", "--cursor", "1:x"],
        ),
    )
    .refused(EXIT_USAGE, "page cursor");
    // A network cursor without --network, or a branch's --before with it: usage errors.
    for args in [
        &["admin", "transactions", "--cursor", "1:2"][..],
        &["admin", "transactions", "--network", "--before", "5"][..],
    ] {
        let r = cli(&net, &admin("b1", args));
        assert!(
            r.code == 2 && r.err.contains("--network"),
            "{args:?}: {}",
            r.err
        );
    }
    cli(
        &net,
        &admin("b1", &["admin", "transactions", "--since", "2026-02-30"]),
    )
    .refused(EXIT_USAGE, "is not a date");
    cli(
        &net,
        &admin(
            "b1",
            &[
                "admin",
                "transactions",
                "--since",
                "2026-02-03",
                "--until",
                "2026-02-01",
            ],
        ),
    )
    .refused(EXIT_USAGE, "--until is before --since");

    // Close an empty account; it can no longer log in.
    let empty = open_account(&net, "b3", "CLI-C");
    let r = cli(
        &net,
        &admin("b3", &["--json", "admin", "close-account", &empty]),
    );
    assert_eq!(r.json()["status"], "closed", "{}", r.out);
    cli(&net, &admin("b3", &["deposit", "1", "--account", &empty]))
        .refused(EXIT_REFUSED, "account is closed");

    // The fault switch: block the link b1 -> b2, see a transfer refused, heal it.
    let r = cli(
        &net,
        &admin(
            "b1",
            &["admin", "link-fault", "--to-branch", "2", "--blocked"],
        ),
    );
    assert!(r.ok().contains("Blocked"), "{}", r.out);
    let r = cli(&net, &customer("b1", &a, &["transfer", "--to", &b, "1.00"]));
    assert_ne!(
        r.code, 0,
        "a transfer over a blocked link must not commit: {}",
        r.out
    );
    let r = cli(
        &net,
        &admin("b1", &["admin", "link-fault", "--to-branch", "2"]),
    );
    assert!(r.ok().contains("Healthy"), "{}", r.out);
    let r = cli(
        &net,
        &customer("b1", &a, &["--json", "transfer", "--to", &b, "1.00"]),
    );
    committed.insert(committed_id(&r));

    finish(c, &committed);
}

#[test]
fn refusals_have_their_exit_codes_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let net = c.network_file.clone();
    let mut committed = BTreeSet::new();
    let a = open_account(&net, "b1", "REF-A");
    let b = open_account(&net, "b2", "REF-B");
    let r = cli(
        &net,
        &admin("b1", &["--json", "deposit", "50", "--account", &a]),
    );
    committed.insert(committed_id(&r));
    let before = (balance(&net, "b1", &a), balance(&net, "b2", &b));

    // A bad amount: too many decimals, zero, not a number. Caught before anything
    // is sent: exit 2.
    for bad in ["12.345", "0", "ten", "1e3"] {
        cli(&net, &customer("b1", &a, &["withdraw", bad])).refused(EXIT_USAGE, "amount");
        cli(&net, &customer("b1", &a, &["transfer", "--to", &b, bad]))
            .refused(EXIT_USAGE, "amount");
    }
    // An account number with a typo: the check digits catch it.
    let mut typo: Vec<char> = b.chars().collect();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == '1' { '2' } else { '1' };
    let typo: String = typo.into_iter().collect();
    assert!(
        typo.parse::<AccountNumber>().is_err(),
        "{typo} should not parse"
    );
    cli(&net, &customer("b1", &a, &["transfer", "--to", &typo, "1"])).refused(EXIT_USAGE, &typo);
    // Insufficient funds, local and cross-branch.
    cli(&net, &customer("b1", &a, &["withdraw", "50.01"]))
        .refused(EXIT_REFUSED, "insufficient funds");
    cli(&net, &customer("b1", &a, &["transfer", "--to", &b, "500"]))
        .refused(EXIT_REFUSED, "insufficient funds");
    // A wrong password.
    cli(
        &net,
        &[
            "--branch",
            "b1",
            "--user",
            &a,
            "--password-env",
            "WRONG_PW",
            "balance",
        ],
    )
    .refused(EXIT_REFUSED, "wrong user or password");
    cli(
        &net,
        &[
            "--branch",
            "b1",
            "--user",
            "admin",
            "--password-env",
            "WRONG_PW",
            "admin",
            "accounts",
        ],
    )
    .refused(EXIT_REFUSED, "wrong user or password");
    // A customer touching another customer's account.
    cli(&net, &customer("b2", &b, &["balance", "--account", &a]))
        .refused(EXIT_REFUSED, "not authorized");
    cli(
        &net,
        &customer("b2", &b, &["withdraw", "1", "--account", &a]),
    )
    .refused(EXIT_REFUSED, "not authorized");
    cli(
        &net,
        &customer("b1", &b, &["transfer", "--from", &a, "--to", &b, "1"]),
    )
    .refused(EXIT_REFUSED, "not authorized");
    // With --json the refusal is also a JSON object on stdout, with the id and a
    // stable code.
    let r = cli(&net, &customer("b1", &a, &["--json", "withdraw", "999"]));
    r.refused(EXIT_REFUSED, "insufficient funds");
    let v = r.json();
    assert_eq!(v["state"], "refused", "{v}");
    assert_eq!(v["code"], "insufficient_funds", "{v}");
    assert_eq!(v["message"], "insufficient funds", "{v}");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.parse::<TransferId>().is_ok()),
        "{v}"
    );
    let r = cli(
        &net,
        &customer("b2", &b, &["--json", "balance", "--account", &a]),
    );
    r.refused(EXIT_REFUSED, "not authorized");
    assert_eq!(r.json()["code"], "unauthorized", "{}", r.out);
    // A customer trying an admin action.
    cli(&net, &customer("b1", &a, &["admin", "accounts"])).refused(EXIT_REFUSED, "not authorized");

    // Usage errors: no login, no password source, an unknown branch name.
    cli(&net, &["--branch", "b1", "balance"]).refused(EXIT_USAGE, "--user");
    cli(&net, &["--branch", "b1", "--user", &a, "balance"]).refused(EXIT_USAGE, "password");
    cli(&net, &customer("b9", &a, &["balance"])).refused(EXIT_USAGE, "b9");
    // A branch that is not there: said plainly, within seconds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let peer = NetworkFile::load(&net)
        .expect("net")
        .by_name("b1")
        .expect("b1")
        .first()
        .peer_id;
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}");
    let start = std::time::Instant::now();
    cli(
        &net,
        &[
            "--addr",
            &addr,
            "--user",
            &a,
            "--password-env",
            "CUST_PW",
            "balance",
        ],
    )
    .refused(EXIT_CONNECTION, "is not answering");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );

    assert_eq!((balance(&net, "b1", &a), balance(&net, "b2", &b)), before);
    finish(c, &committed);
}

/// The subcommand names listed under "Commands:" in a help text.
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_for_every_command() {
    let bin = teller_cli_bin().expect("teller-cli binary");
    let help = |args: &[&str]| {
        let o = Command::new(&bin)
            .args(args)
            .arg("--help")
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{args:?} --help failed");
        assert!(text.contains("Usage: teller-cli"), "{args:?}: {text}");
        text
    };
    let top = help(&[]);
    let mut seen = Vec::new();
    for c in commands(&top) {
        let text = help(&[&c]);
        for sub in commands(&text) {
            help(&[&c, &sub]);
            seen.push(format!("{c} {sub}"));
        }
        seen.push(c);
    }
    for expected in [
        "balance",
        "deposit",
        "withdraw",
        "transfer",
        "history",
        "transfer-status",
        "admin open-account",
        "admin close-account",
        "admin accounts",
        "admin transactions",
        "admin link-fault",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} missing from {seen:?}"
        );
    }
}

/// A `teller-cli` menu session in a pseudo-terminal.
fn menus(net: &Path, branch: &str) -> rexpect::session::PtySession {
    let mut cmd = Command::new(teller_cli_bin().expect("teller-cli binary"));
    cmd.arg("--network-file")
        .arg(net)
        .args(["--branch", branch]);
    rexpect::session::spawn_command(cmd, Some(20_000)).expect("spawn in a pty")
}

fn exited_cleanly(p: &rexpect::session::PtySession) {
    use rexpect::process::WaitStatus;
    let status = p.process().wait().expect("wait");
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
}

#[test]
fn admin_menu_in_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let net = c.network_file.clone();
    let other = open_account(&net, "b2", "PTY-OTHER");
    let mut p = menus(&net, "b1");
    let step = |p: &mut rexpect::session::PtySession, expect: &str, send: &str| {
        p.exp_string(expect)
            .unwrap_or_else(|e| panic!("waiting for {expect:?}: {e}"));
        p.send_line(send).expect("send");
    };
    // A wrong password first: refused, and asked again.
    step(&mut p, "user (admin or account number): ", "admin");
    step(&mut p, "password: ", "wrong");
    step(&mut p, "login refused", "admin");
    step(&mut p, "password: ", ADMIN_PASSWORD);
    step(&mut p, "== Admin menu ==", "0");
    step(&mut p, "choose 1 to 9", "1");
    step(&mut p, "national id: ", "");
    step(&mut p, "must not be empty", "PTY-1");
    step(&mut p, "phone: ", "call me");
    step(&mut p, "digits, spaces and + only", "+1 555 0199");
    step(&mut p, "first name: ", "Grace");
    step(&mut p, "last name: ", "Hopper");
    step(&mut p, "SMS alerts (Y/N): ", "maybe");
    step(&mut p, "answer Y or N", "y");
    step(&mut p, "customer password: ", "short");
    step(&mut p, "at least 8 characters", "password123");
    step(&mut p, "not a commonly used one", "pty-customer");
    step(&mut p, "the same password again: ", "pty-customre");
    step(&mut p, "the two passwords differ", "pty-customer");
    step(&mut p, "the same password again: ", "pty-customer");
    let (_, opened) = p.exp_regex(r"opened \d{3}-\d{8}-\d{2}").expect("opened");
    let account = opened.trim_start_matches("opened ").trim().to_owned();
    // A deposit and a withdrawal on the new account, each with its id.
    step(&mut p, "choice: ", "3");
    step(&mut p, "account: ", &account);
    step(&mut p, "amount: ", "12.50");
    p.exp_string("Done: the money moved").expect("deposited");
    step(&mut p, "choice: ", "4");
    step(&mut p, "account: ", &account);
    step(&mut p, "amount: ", "20");
    p.exp_string("Refused. Insufficient funds")
        .expect("refused");
    step(&mut p, "choice: ", "4");
    step(&mut p, "account: ", &account);
    step(&mut p, "amount: ", "12.50");
    p.exp_string("Done: the money moved").expect("withdrawn");
    // View all accounts (network-wide): the new one and b2's.
    step(&mut p, "choice: ", "5");
    p.exp_string(&account).expect("new account listed");
    p.exp_string("choice: ").expect("menu");
    p.send_line("6").expect("send");
    p.exp_string("other account").expect("transactions table");
    // Close: a typo'd number re-prompts, then the admin password is asked again.
    step(&mut p, "choice: ", "2");
    step(&mut p, "account to close: ", "12345");
    step(&mut p, "not an account number", &account);
    step(&mut p, "your admin password again: ", ADMIN_PASSWORD);
    p.exp_string(&format!("closed {account}")).expect("closed");
    // Closing another branch's account is refused, and the menu goes on.
    step(&mut p, "choice: ", "2");
    step(&mut p, "account to close: ", &other);
    step(&mut p, "your admin password again: ", ADMIN_PASSWORD);
    p.exp_string("Refused. Not authorized").expect("refused");
    // Enrol for one-time codes: the URI is shown once.
    step(&mut p, "choice: ", "8");
    step(&mut p, "login to enrol (blank for yourself): ", "");
    step(&mut p, "your password again: ", ADMIN_PASSWORD);
    let (_, uri) = p.exp_regex(r"otpauth://totp/[^ \r\n]+").expect("uri shown");
    let secret = tests::otp_secret(&uri);
    // Log out, back at the login: now the code is asked for, and a wrong one refused.
    step(&mut p, "choice: ", "9");
    step(&mut p, "user (admin or account number): ", "admin");
    step(&mut p, "password: ", ADMIN_PASSWORD);
    step(
        &mut p,
        "one-time code (from your authenticator app): ",
        "000000",
    );
    // Refused as a wrong password is: the answer does not tell which one was wrong.
    p.exp_string("login refused: Wrong user or password (or one-time code)")
        .expect("wrong code refused");
    step(&mut p, "user (admin or account number): ", "admin");
    step(&mut p, "password: ", ADMIN_PASSWORD);
    let code = branch_node::totp::code_at(&secret, branch_node::totp::step_at(now_ms()));
    step(
        &mut p,
        "one-time code (from your authenticator app): ",
        &code,
    );
    step(&mut p, "== Admin menu ==", "9");
    p.exp_string("user (admin or account number): ")
        .expect("login again");
    p.send_control('d').expect("ctrl-d");
    p.exp_eof().expect("eof");
    exited_cleanly(&p);
    finish(c, &BTreeSet::new());
}

#[test]
fn customer_menu_in_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let net = c.network_file.clone();
    let a = open_account(&net, "b1", "PTY-A");
    let b = open_account(&net, "b3", "PTY-B");
    let mut p = menus(&net, "b2");
    let step = |p: &mut rexpect::session::PtySession, expect: &str, send: &str| {
        p.exp_string(expect)
            .unwrap_or_else(|e| panic!("waiting for {expect:?}: {e}"));
        p.send_line(send).expect("send");
    };
    step(&mut p, "user (admin or account number): ", &a);
    step(&mut p, "password: ", CUSTOMER_PASSWORD);
    p.exp_string(&format!("== {a}  balance 0.00"))
        .expect("menu header");
    step(&mut p, "choice: ", "2");
    step(&mut p, "amount: ", "ten");
    step(&mut p, "not an amount", "80.25");
    p.exp_string("Done").expect("deposit done");
    step(&mut p, "choice: ", "3");
    step(&mut p, "amount: ", "100");
    p.exp_string("Refused. Insufficient funds")
        .expect("refused");
    step(&mut p, "choice: ", "4");
    step(&mut p, "receiver account: ", &b);
    step(&mut p, "amount: ", "30");
    // Whom it pays is shown first, masked as banks do; "n" sends nothing.
    step(&mut p, "pays Ada P. (", "n");
    p.exp_string("Not sent.").expect("not sent");
    step(&mut p, "choice: ", "4");
    step(&mut p, "receiver account: ", &b);
    step(&mut p, "amount: ", "30");
    step(&mut p, "send it? (Y/N): ", "y");
    p.exp_string("Done").expect("transfer done");
    step(&mut p, "choice: ", "5");
    p.exp_string("other account").expect("history table");
    p.exp_string("30.00").expect("transfer in history");
    step(&mut p, "choice: ", "9");
    step(&mut p, "choose 1 to 8", "1");
    p.exp_string(&format!("== {a}  balance 50.25"))
        .expect("refreshed");
    // Ctrl-C at a prompt leaves cleanly.
    p.exp_string("choice: ").expect("menu");
    p.send_control('c').expect("ctrl-c");
    p.exp_string("bye").expect("bye");
    exited_cleanly(&p);
    assert_eq!(balance(&net, "b3", &b), "30.00");
    finish(c, &BTreeSet::new());
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// Spawns `teller-cli` in the background (passwords as in [`cli`]); `finish` waits.
fn spawn_cli(network: &Path, args: &[&str]) -> std::process::Child {
    Command::new(teller_cli_bin().expect("teller-cli binary"))
        .arg("--network-file")
        .arg(network)
        .args(args)
        .env("CUST_PW", CUSTOMER_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn teller-cli")
}

fn finished(child: std::process::Child) -> Run {
    let o = child.wait_with_output().expect("teller-cli ran");
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

const EXIT_UNKNOWN: i32 = 5;

/// What each exit status promises, held to with real crashes: exit 5 with the id when
/// the coordinator stops answering after the login (and `transfer-status` then tells
/// the outcome); a retry after the coordinator dies at `after_decision_durable`,
/// through the same branch and through another, ends "committed" with exit 0; the same
/// id sent again at a third branch is the same transfer; and a customer whose branch is
/// down is told "not done" (exit 4), with nothing moved.
#[test]
fn money_answers_hold_through_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let net = c.network_file.clone();
    let a = open_account(&net, "b1", "CRASH-A");
    let b = open_account(&net, "b2", "CRASH-B");
    let mut committed = BTreeSet::new();
    committed.insert(committed_id(&cli(
        &net,
        &admin("b1", &["--json", "deposit", "100", "--account", &a]),
    )));

    // b1 (the coordinator: it owns the debit account) stalls before its first prepare
    // is durable, for longer than the teller waits.
    c.kill(0);
    c.start_node(0, &[("FAILPOINTS", "before_prepare_durable=1*sleep(4000)")])
        .expect("restart stalling");
    let r = cli(
        &net,
        &customer(
            "b1",
            &a,
            &["--json", "--wait", "2", "transfer", "--to", &b, "1.00"],
        ),
    );
    assert_eq!(r.code, EXIT_UNKNOWN, "{} / {}", r.out, r.err);
    let v = r.json();
    assert_eq!(v["state"], "unknown", "{v}");
    let id = v["id"].as_str().expect("the id is given").to_owned();
    assert!(v["check"].as_str().is_some_and(|c| c.contains(&id)), "{v}");
    // Once b1 goes on, the id's outcome is final, from any branch.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let r = cli(
            &net,
            &customer("b3", &a, &["--json", "transfer-status", &id]),
        );
        if r.code != EXIT_UNKNOWN || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code, 0, "{} / {}", status.out, status.err);
    assert_eq!(status.json()["state"], "committed");
    committed.insert(id.parse().expect("id"));

    // The coordinator dies right after its commit decision is durable; the teller keeps
    // retrying the same id until b1 is back, and is told the truth.
    for entry in ["b1", "b2"] {
        c.kill(0);
        c.start_node(0, &[("FAILPOINTS", "after_decision_durable=panic")])
            .expect("restart armed");
        let id = teller_cli::new_transfer_id().to_string();
        let send = ["--json", "transfer", "--to", &b, "2.00", "--id", &id];
        let child = spawn_cli(&net, &customer(entry, &a, &send));
        assert!(c.wait_exit(0, Duration::from_secs(20)), "b1 did not crash");
        c.start_node(0, &[]).expect("restart");
        let r = finished(child);
        assert_eq!(r.code, 0, "through {entry}: {} / {}", r.out, r.err);
        assert_eq!(r.json()["id"], id.as_str());
        assert_eq!(committed_id(&r), id.parse().expect("id"));
        // The same id again, at a third branch: the same transfer, not a second one.
        let again = cli(&net, &customer("b3", &a, &send));
        assert_eq!(committed_id(&again), id.parse().expect("id"));
        committed.insert(id.parse().expect("id"));
    }
    assert_eq!(balance(&net, "b2", &b), "5.00");

    // b1 down: its customer, through b2, is told "not done" (exit 4); nothing moves.
    c.kill(0);
    let r = cli(
        &net,
        &customer("b2", &a, &["--json", "transfer", "--to", &b, "1.00"]),
    );
    assert_eq!(r.code, EXIT_CONNECTION, "{} / {}", r.out, r.err);
    assert_eq!(r.json()["code"], "branch_unreachable", "{}", r.out);
    assert!(r.err.contains("the command was not sent"), "{}", r.err);
    c.start_node(0, &[]).expect("restart");
    assert_eq!(balance(&net, "b1", &a), "95.00");
    finish(c, &committed);
}

#[test]
fn the_web_console_listens_on_loopback_only_and_keeps_its_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let network = dir.path().join("none.toml");
    // Nothing listens on port 9 of loopback: the console cannot reach this branch.
    let addr = format!("/ip4/127.0.0.1/tcp/9/p2p/{}", libp2p::PeerId::random());
    let web = |extra: &[&str]| {
        let mut args = vec!["--addr", addr.as_str(), "web"];
        args.extend_from_slice(extra);
        cli(&network, &args)
    };
    web(&["--listen", "0.0.0.0:8080"]).refused(2, "not a loopback address");
    web(&["--listen", "192.168.1.2:8080"]).refused(2, "not a loopback address");

    let key = dir.path().join("console.key");
    let key_arg = key.to_str().expect("utf-8 path");
    let run = web(&["--listen", "127.0.0.1:0", "--identity", key_arg]);
    assert_eq!(run.code, 4, "branch unreachable: {} {}", run.out, run.err);
    let made = std::fs::read_to_string(&key).expect("the key file is made");
    assert_eq!(made.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only key file");
    web(&["--listen", "127.0.0.1:0", "--identity", key_arg]);
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        made,
        "reused, not remade"
    );
    std::fs::write(&key, "not a key\n").expect("spoil");
    web(&["--listen", "127.0.0.1:0", "--identity", key_arg]).refused(2, "not 64 hex digits");
}

/// Every line of a table fits a 100-column terminal.
fn fits_a_terminal(table: &str) {
    for line in table.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}\n{table}",
            line.chars().count()
        );
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(teller_cli_bin().expect("teller-cli binary"))
            .args(["completions", shell])
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(
            text.contains("teller-cli") && text.contains("transfer-status"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn a_teller_with_an_identity_stays_trusted_while_strangers_are_throttled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let net = c.network_file.clone();
    let a = open_account(&net, "b1", "CLI-ID");
    let key = dir.path().join("counter-7.key");
    let key = key.to_str().expect("utf-8 path");
    let mine = |env: &'static str| {
        let args = [
            "--identity",
            key,
            "--branch",
            "b1",
            "--user",
            &a,
            "--password-env",
            env,
            "balance",
        ];
        cli(&net, &args)
    };
    let stranger = |env: &'static str| {
        cli(
            &net,
            &[
                "--branch",
                "b1",
                "--user",
                &a,
                "--password-env",
                env,
                "balance",
            ],
        )
    };
    // The customer's own counter logs in once: that teller is trusted for this login.
    assert!(mine("CUST_PW").ok().contains("0.00"));
    // Strangers (a new key each run) guess: 5 free failures, then waits of 1, 2, 4 s
    // between admitted guesses; after 8 admitted failures the wait is 8 s.
    let mut admitted = 0;
    while admitted < 8 {
        let r = stranger("WRONG_PW");
        match r.code {
            3 => admitted += 1,
            4 => std::thread::sleep(std::time::Duration::from_millis(250)),
            _ => r.refused(3, "wrong user or password"),
        }
    }
    stranger("CUST_PW").refused(4, "too many wrong passwords");
    // The trusted counter is not slowed down by them.
    assert!(mine("CUST_PW").ok().contains("0.00"));
}

/// The JSON lines of a `transfer-batch --json` run: each line's object, then the tally.
fn batch_lines(r: &Run) -> (Vec<Value>, Value) {
    let mut all: Vec<Value> = r
        .out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let tally = all.pop().expect("a tally line");
    (all, tally)
}

/// Bulk payments from a file: each line its own id and answer (committed, refused for
/// funds, refused as not the sender's to move), one refusal stopping nothing, the exit
/// status of the worst line; the same file again, through another branch and as the
/// account's own customer, gets the same answers and moves nothing twice; a file with
/// a wrong line, an empty file and a missing one are refused before anything is sent.
#[test]
fn bulk_payments_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let net = c.network_file.clone();
    let (a, a2) = (
        open_account(&net, "b1", "BULK-A"),
        open_account(&net, "b1", "BULK-A2"),
    );
    let (b, other) = (
        open_account(&net, "b2", "BULK-B"),
        open_account(&net, "b3", "BULK-C"),
    );
    let mut committed = BTreeSet::new();
    for (branch, account) in [("b1", &a), ("b3", &other)] {
        let deposit = ["--json", "deposit", "100", "--account", account];
        committed.insert(committed_id(&cli(&net, &admin(branch, &deposit))));
    }
    // The ids come from `teller-cli new-id`: 40 distinct ids, no branch, no login.
    let made = cli(&net, &["new-id", "--count", "40"]);
    let ids: BTreeSet<TransferId> = made
        .ok()
        .lines()
        .map(|l| l.parse().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 40, "{}", made.out);
    let mut text = String::from("id,from,to,amount\n# salaries\n");
    for (i, id) in made.out.lines().enumerate() {
        let to = if i % 2 == 0 { &a2 } else { &b };
        text.push_str(&format!("{id},{a},{to},1.50\n"));
    }
    let (broke, foreign) = (teller_cli::new_transfer_id(), teller_cli::new_transfer_id());
    text.push_str(&format!(
        "{broke},{a},{b},1000.00\n{foreign},{other},{b},1.00\n"
    ));
    let file = dir.path().join("pay.csv");
    std::fs::write(&file, &text).expect("write file");
    let path = file.to_str().expect("path");

    let send = [
        "--json",
        "transfer-batch",
        path,
        "--chunk",
        "7",
        "--in-flight",
        "3",
    ];
    let first = cli(&net, &admin("b1", &send));
    assert_eq!(first.code, EXIT_REFUSED, "{} / {}", first.out, first.err);
    let (lines, tally) = batch_lines(&first);
    assert_eq!(lines.len(), 42);
    assert_eq!(tally["committed"], 40, "{tally}");
    assert_eq!(tally["refused"], 2, "{tally}");
    for l in &lines[..40] {
        assert_eq!(l["state"], "committed", "{l}");
        committed.insert(l["id"].as_str().expect("id").parse().expect("id"));
    }
    assert_eq!(lines[40]["code"], "insufficient_funds", "{}", lines[40]);
    assert_eq!(lines[40]["line"], 43);
    assert_eq!(lines[41]["code"], "unauthorized", "{}", lines[41]);
    let balances = || {
        [("b1", &a), ("b1", &a2), ("b2", &b), ("b3", &other)]
            .map(|(branch, account)| balance(&net, branch, account))
    };
    assert_eq!(balances(), ["40.00", "30.00", "30.00", "100.00"]);

    // Again, as the customer of `a` through b3: the same answers, nothing moves twice.
    let again = cli(&net, &customer("b3", &a, &send));
    assert_eq!(again.code, EXIT_REFUSED, "{}", again.err);
    let (lines_again, _) = batch_lines(&again);
    assert_eq!(lines_again, lines);
    assert_eq!(balances(), ["40.00", "30.00", "30.00", "100.00"]);

    // As a table for people: every line, whole ids, within 100 columns.
    let table = cli(&net, &admin("b1", &["transfer-batch", path]));
    assert_eq!(table.code, EXIT_REFUSED);
    fits_a_terminal(&table.out);
    assert!(table.out.contains(&broke.to_string()), "{}", table.out);
    assert!(
        table
            .out
            .contains("42 lines: 40 committed, 2 refused, 0 not done, 0 unknown")
    );

    // Refused before anything is sent: a wrong line, an empty file, no file.
    let wrong =
        text.replace(&format!("{a},{b},1000.00"), &format!("{a},{a},1000.00")) + "nonsense\n";
    std::fs::write(&file, wrong).expect("write file");
    cli(&net, &admin("b1", &["transfer-batch", path])).refused(
        EXIT_USAGE,
        "2 wrong line(s), nothing was sent: line 43: from and to are the same account",
    );
    std::fs::write(&file, "id,from,to,amount\n").expect("write file");
    cli(&net, &admin("b1", &["transfer-batch", path]))
        .refused(EXIT_USAGE, "the file has no transfers");
    let missing = dir.path().join("missing.csv");
    let missing = missing.to_str().expect("path");
    cli(&net, &admin("b1", &["transfer-batch", missing])).refused(EXIT_USAGE, "cannot read");
    assert_eq!(balances(), ["40.00", "30.00", "30.00", "100.00"]);
    finish(c, &committed);
}

/// What bash offers for `line` (the cursor at its end), through bash-completion's own
/// functions and each binary's generated script (files in `scripts`).
fn bash_offers(scripts: &[std::path::PathBuf], line: &str) -> Vec<String> {
    let mut program = String::from("source /usr/share/bash-completion/bash_completion\n");
    for script in scripts {
        program.push_str(&format!("source {}\n", script.display()));
    }
    program.push_str(
        r#"line="$1"; read -ra COMP_WORDS <<< "$line"; [[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE="$line"; COMP_POINT=${#COMP_LINE}
f=$(complete -p "${COMP_WORDS[0]}" | sed -E 's/.*-F ([^ ]+) .*/\1/')
"$f" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}""#,
    );
    let out = Command::new("bash")
        .args(["-c", &program, "complete", line])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Completions for all three binaries complete subcommands and flags past the first
/// word (clap_complete's bash script needed mending for hyphenated names).
#[test]
fn bash_completes_subcommands_and_flags_of_every_binary() {
    assert!(
        Path::new("/usr/share/bash-completion/bash_completion").exists(),
        "needs the bash-completion package (.ci/run installs it)"
    );
    let bins = [
        ("teller-cli", teller_cli_bin().expect("teller-cli")),
        (
            "branch-node",
            scenarios::cluster::branch_node_bin().expect("branch-node"),
        ),
        (
            "scenarios",
            scenarios::cluster::workspace_bin("scenarios", "scenarios").expect("scenarios"),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts: Vec<std::path::PathBuf> = bins
        .iter()
        .map(|(name, path)| {
            let out = Command::new(path)
                .args(["completions", "bash"])
                .output()
                .expect("runs");
            assert!(out.status.success(), "{name}");
            let file = dir.path().join(format!("{name}.bash"));
            std::fs::write(&file, out.stdout).expect("write");
            file
        })
        .collect();
    let offers = |line: &str| bash_offers(&scripts, line);
    let admin = offers("teller-cli admin ");
    for sub in [
        "open-account",
        "close-account",
        "accounts",
        "transactions",
        "reconcile",
    ] {
        assert!(admin.contains(&sub.to_owned()), "{sub} in {admin:?}");
    }
    assert!(!admin.contains(&"balance".to_owned()), "{admin:?}");
    assert_eq!(
        offers("teller-cli --branch b1 admin tr"),
        ["transactions", "trace"]
    );
    assert!(offers("teller-cli transfer --").contains(&"--to".to_owned()));
    let run = offers("branch-node run --");
    assert!(
        run.contains(&"--network-file".to_owned()) && run.contains(&"--data-dir".to_owned()),
        "{run:?}"
    );
    assert!(offers("branch-node re").contains(&"restore".to_owned()));
    assert!(offers("scenarios failover --").contains(&"--trials".to_owned()));
}
