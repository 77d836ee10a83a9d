//! What a command with a login does: connect and log in, turn the command into its
//! request (or run a money command to its end, with its retries), and say the outcome.

use std::io::{IsTerminal, Read};

use teller_cli::money::{self, EXIT_NOT_DONE, EXIT_REFUSED, EXIT_UNKNOWN, RetryPolicy};
use teller_cli::{Target, Teller, TellerError, new_transfer_id};
use wire::teller::{
    AccountsPage, LinkFault, NewCustomer, PageRequest, Scope, TellerOp, TellerResponse,
    TransferState,
};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId};

use crate::cli::{Admin, Cli, Command, KindArg};
use crate::{output, reconcile};

pub(crate) fn target(cli: &Cli) -> Result<Target, TellerError> {
    match (&cli.addr, &cli.branch) {
        (Some(a), _) => Target::by_addr(a),
        (None, Some(name)) => Target::by_name(&cli.network_file, name),
        (None, None) => Err(TellerError::Usage(
            "say which branch: --branch NAME or --addr MULTIADDR".into(),
        )),
    }
}

pub(crate) fn password(cli: &Cli) -> Result<String, TellerError> {
    if let Some(var) = &cli.password_env {
        return std::env::var(var)
            .map_err(|_| TellerError::Usage(format!("environment variable {var} is not set")));
    }
    if cli.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| TellerError::Usage(format!("cannot read stdin: {e}")))?;
        return Ok(s.lines().next().unwrap_or_default().to_owned());
    }
    Err(TellerError::Usage(
        "give the password with --password-env VAR or --password-stdin".into(),
    ))
}

/// The one-time code from `--otp-env VAR`, if given.
pub(crate) fn otp_code(cli: &Cli) -> Result<Option<String>, TellerError> {
    let Some(var) = &cli.otp_env else {
        return Ok(None);
    };
    let code = std::env::var(var)
        .map_err(|_| TellerError::Usage(format!("environment variable {var} is not set")))?;
    Ok(Some(code.trim().to_owned()))
}

/// Parses an account number; a typo (bad check digits) is refused here, before
/// anything is sent (exit 2).
pub(crate) fn account_number(text: &str) -> Result<AccountNumber, TellerError> {
    text.parse()
        .map_err(|e| TellerError::Invalid(format!("account {text}: {e}")))
}

/// Parses a movable amount; a bad one is the bank's "invalid amount" refusal, caught
/// here before anything is sent (exit 2).
pub(crate) fn amount(text: &str) -> Result<Amount, TellerError> {
    Amount::parse(text)
        .and_then(Amount::validate_movable)
        .map_err(|_| TellerError::Caught(wire::Refusal::InvalidAmount))
}

/// The filter `admin transactions` asks for; a bad account, date or range is refused
/// before anything is sent.
pub(crate) fn entry_filter(
    account: &Option<String>,
    kind: Option<KindArg>,
    since: &Option<String>,
    until: &Option<String>,
) -> Result<wire::teller::EntryFilter, TellerError> {
    use wire::teller::EntryKind;
    let day = |d: &Option<String>| {
        d.as_deref()
            .map(teller_cli::when::parse_day)
            .transpose()
            .map_err(TellerError::Invalid)
    };
    let (since_ms, until_day) = (day(since)?, day(until)?);
    if let (Some(s), Some(u)) = (since_ms, until_day)
        && u < s
    {
        return Err(TellerError::Invalid("--until is before --since".into()));
    }
    Ok(wire::teller::EntryFilter {
        account: account.as_deref().map(account_number).transpose()?,
        kind: kind.map(|k| match k {
            KindArg::Deposit => EntryKind::Deposit,
            KindArg::Withdrawal => EntryKind::Withdrawal,
            KindArg::TransferOut => EntryKind::TransferDebit,
            KindArg::TransferIn => EntryKind::TransferCredit,
        }),
        since_ms,
        // "Until" a day includes that whole day.
        until_ms: until_day.map(|d| d + teller_cli::when::DAY_MS),
    })
}

pub(crate) use teller_cli::when::now_ms;

/// Checks and compares the statements; prints the report; the exit status says it.
pub(crate) fn reconciled(
    cli: &Cli,
    cut_ms: u64,
    statements: &[Vec<u8>],
    unreachable: &[BranchId],
) -> Result<u8, TellerError> {
    let net = client::network_file::NetworkFile::load(&cli.network_file).map_err(|e| {
        TellerError::Usage(format!(
            "reconcile checks signatures against the network file: {e}"
        ))
    })?;
    let (good, bad) = reconcile::verify(&net, statements);
    let pairs = reconcile::pairs(&good);
    if cli.json {
        println!("{}", reconcile::json(cut_ms, &pairs, &bad, unreachable));
    } else {
        print!("{}", reconcile::text(&pairs, &bad, unreachable));
    }
    Ok(
        if !bad.is_empty() || !pairs.iter().all(reconcile::Pair::agrees) {
            1
        } else if !unreachable.is_empty() {
            EXIT_NOT_DONE
        } else {
            0
        },
    )
}

/// The commands that need no branch (`completions`, `new-id`): done, with their exit
/// status.
pub(crate) fn without_a_branch(cli: &Cli) -> Option<u8> {
    match &cli.command {
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            teller_cli::print_completions(*shell, &mut command, "teller-cli");
            Some(0)
        }
        Some(Command::NewId { count }) => {
            for _ in 0..*count {
                println!("{}", new_transfer_id());
            }
            Some(0)
        }
        _ => None,
    }
}

/// Who a command runs as: the login, its password (an admin's dangerous requests send
/// it again) and the login's first account (the default `--account`).
pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) first_account: Option<AccountNumber>,
}

impl Login {
    /// The account given, or the login's own.
    fn account(&self, given: &Option<String>) -> Result<AccountNumber, TellerError> {
        match given {
            Some(text) => account_number(text),
            None => self
                .first_account
                .ok_or_else(|| TellerError::Usage("give the account with --account".into())),
        }
    }
}

/// Connects and logs in as `--user`; a login that was not done is said as such (the
/// command itself was never sent).
pub(crate) async fn log_in(
    cli: &Cli,
    target: &Target,
    key: &wire::BranchKey,
) -> Result<(Teller, Login), TellerError> {
    let user = cli
        .user
        .clone()
        .ok_or_else(|| TellerError::Usage("give the login with --user".into()))?;
    let password = password(cli)?;
    let mut teller = Teller::connect_with_key(target, key).await?;
    // The login rides out a change of leaders like the money request after it.
    teller.set_failover_wait(std::time::Duration::from_secs(cli.wait));
    let otp = otp_code(cli)?;
    let answer = teller
        .login_with_code(&user, &password, otp.as_deref())
        .await
        .map_err(|e| match e {
            TellerError::Refused(wire::Refusal::OneTimeCode) if cli.otp_env.is_none() => {
                eprintln!("teller-cli: this login is enrolled for one-time codes: give the code with --otp-env VAR");
                e
            }
            TellerError::Refused(_) => e,
            other => TellerError::LoginNotDone(Box::new(other)),
        })?;
    let first_account = match &answer {
        TellerResponse::LoggedIn { accounts, .. } => accounts.first().map(|a| a.number),
        _ => None,
    };
    let login = Login {
        user,
        password,
        first_account,
    };
    Ok((teller, login))
}

/// What a command comes to: done here (money, with its retries and its exit status),
/// or one request to send.
pub(crate) enum Step {
    Done(u8),
    Call(TellerOp),
}

/// The deposit, withdrawal or transfer a money command asks for (a new id unless given).
pub(crate) fn money_op(command: &Command, login: &Login) -> Result<Option<TellerOp>, TellerError> {
    Ok(Some(match command {
        Command::Deposit {
            amount: amt,
            account: a,
            id,
        }
        | Command::Withdraw {
            amount: amt,
            account: a,
            id,
        } => {
            let (account, amount) = (login.account(a)?, amount(amt)?);
            let id = id.unwrap_or_else(new_transfer_id);
            let deposit = matches!(command, Command::Deposit { .. });
            TellerOp::movement(deposit, id, account, amount)
        }
        Command::Transfer {
            amount: amt,
            to,
            from,
            id,
        } => TellerOp::Transfer(TransferSpec {
            id: id.unwrap_or_else(new_transfer_id),
            from: login.account(from)?,
            to: account_number(to)?,
            amount: amount(amt)?,
        }),
        _ => return Ok(None),
    }))
}

/// Runs a money command to its end (with its retries), or says which request another
/// command sends.
pub(crate) async fn command_op(
    command: &Command,
    login: &Login,
    teller: &mut Teller,
    out: &output::Printer,
    policy: RetryPolicy,
    batch: Option<Vec<teller_cli::batch::BatchLine>>,
) -> Result<Step, TellerError> {
    if let Some(op) = money_op(command, login)? {
        return Ok(Step::Done(send_money(out, teller, op, &policy).await));
    }
    Ok(Step::Call(match command {
        Command::Balance { account: a } => TellerOp::Balance {
            account: login.account(a)?,
        },
        Command::TransferBatch {
            chunk, in_flight, ..
        } => {
            let options = teller_cli::batch::BatchOptions {
                chunk: *chunk,
                in_flight: *in_flight,
                policy,
            };
            let lines = batch.unwrap_or_default();
            return Ok(Step::Done(send_batch(out, teller, &lines, options).await));
        }
        Command::History {
            account: a,
            limit,
            before,
        } => TellerOp::History {
            account: login.account(a)?,
            page: PageRequest {
                before: *before,
                limit: *limit,
            },
        },
        Command::TransferStatus { id } => TellerOp::TransferStatus { id: *id },
        Command::EnrollOtp { for_user } => TellerOp::EnrollOtp {
            user: for_user.clone().unwrap_or_else(|| login.user.clone()),
            password: login.password.clone(),
        },
        Command::Admin(Admin::Accounts { network }) => {
            let r = teller.all_accounts(scope(*network)).await?;
            out.response(&r);
            let _ = teller.logout().await;
            return Ok(Step::Done(0));
        }
        Command::Admin(admin) => admin_op(admin, &login.password)?,
        Command::Web { .. } | Command::Completions { .. } | Command::NewId { .. } => {
            return Err(TellerError::Usage("this command takes no login".into()));
        }
        Command::Deposit { .. } | Command::Withdraw { .. } | Command::Transfer { .. } => {
            unreachable!("money_op took every money command")
        }
    }))
}

/// `transfer-status` says the outcome in its exit status too: 0 committed, 3 refused,
/// 4 no payment with this id was made (no record, and too old to be on its way), 5 not
/// known yet.
pub(crate) fn status_exit(id: wire::TransferId, state: TransferState) -> u8 {
    match state {
        TransferState::Committed => 0,
        TransferState::Aborted(_) => EXIT_REFUSED,
        TransferState::Unknown if !teller_cli::say::may_still_arrive(id, now_ms()) => EXIT_NOT_DONE,
        TransferState::Pending | TransferState::Unknown => EXIT_UNKNOWN,
    }
}

/// Sends a money movement under the one retry policy and prints what the teller is
/// finally told; returns its exit status.
pub(crate) async fn send_money(
    out: &output::Printer,
    teller: &mut Teller,
    op: TellerOp,
    policy: &RetryPolicy,
) -> u8 {
    let id = op.money_id();
    let sending = money::send(teller, op, policy);
    let answer = match id.filter(|_| !out.json && std::io::stderr().is_terminal()) {
        Some(id) => with_progress(id, policy.wait, sending).await,
        None => sending.await,
    };
    out.money(&answer);
    // After "not done" or "unknown" the branch is likely out of reach: no logout wait.
    if matches!(
        answer,
        money::MoneyAnswer::Committed { .. } | money::MoneyAnswer::Refused { .. }
    ) {
        let _ = teller.logout().await;
    }
    answer.exit_code()
}

/// How long a money request runs before its progress line shows (most answer sooner).
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(700);
/// How often the progress line is written again.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `sending` while a line on the terminal (stderr) says what is being sent and
/// how much longer it may take once the first attempt has gone unanswered for a
/// moment; the line is cleared when the answer comes.
async fn with_progress<T>(
    id: wire::TransferId,
    wait: std::time::Duration,
    sending: impl std::future::Future<Output = T>,
) -> T {
    use std::io::Write;
    use std::time::Instant;
    let started = Instant::now();
    tokio::pin!(sending);
    let mut shown = false;
    loop {
        let pause = if shown {
            PROGRESS_EVERY
        } else {
            PROGRESS_AFTER
        };
        tokio::select! {
            answer = &mut sending => {
                if shown {
                    eprint!("\r\x1b[2K");
                }
                return answer;
            }
            () = tokio::time::sleep(pause) => {
                let left = wait.saturating_sub(started.elapsed()).as_secs();
                eprint!(
                    "\r\x1b[2Ksending {id}: still trying, up to {left} s more \
                     (Ctrl-C leaves; ask about the id later)"
                );
                let _ = std::io::stderr().flush();
                shown = true;
            }
        }
    }
}

/// Reads and checks a transfer file; a wrong line refuses the file before anything is sent.
pub(crate) fn read_batch(
    file: &std::path::Path,
) -> Result<Vec<teller_cli::batch::BatchLine>, TellerError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| TellerError::Usage(format!("cannot read {}: {e}", file.display())))?;
    teller_cli::batch::parse(&text)
        .map_err(|p| TellerError::Invalid(format!("{}: {p}", file.display())))
}

/// Sends a transfer file's lines with a progress bar (on a terminal), prints each
/// line's answer and the tally; returns the worst line's exit status.
pub(crate) async fn send_batch(
    out: &output::Printer,
    teller: &mut Teller,
    lines: &[teller_cli::batch::BatchLine],
    options: teller_cli::batch::BatchOptions,
) -> u8 {
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines answered ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let answers = teller_cli::batch::send(teller, lines, options, |n| bar.inc(n as u64)).await;
    bar.finish_and_clear();
    let tally = teller_cli::batch::Tally::of(&answers);
    out.batch(lines, &answers, &tally);
    if tally.not_done + tally.unknown == 0 {
        let _ = teller.logout().await;
    }
    tally.exit_code()
}

/// The branch's listing, or the whole network's.
pub(crate) fn scope(network: bool) -> Scope {
    match network {
        true => Scope::Network,
        false => Scope::Branch,
    }
}

/// Where a network listing goes on (`--cursor`), or its start.
pub(crate) fn cursor(given: Option<&str>) -> Result<wire::teller::NetworkCursor, TellerError> {
    let parsed = given.map(wire::teller::parse_cursor).transpose();
    Ok(parsed.map_err(TellerError::Invalid)?.unwrap_or_default())
}

pub(crate) fn link_fault(blocked: bool, delay_ms: Option<u32>) -> LinkFault {
    match (blocked, delay_ms) {
        (true, _) => LinkFault::Blocked,
        (false, Some(d)) => LinkFault::Delayed { delay_ms: d },
        (false, None) => LinkFault::Healthy,
    }
}

pub(crate) fn admin_op(admin: &Admin, admin_password: &str) -> Result<TellerOp, TellerError> {
    Ok(match admin {
        Admin::OpenAccount {
            national_id,
            phone,
            first_name,
            last_name,
            sms,
            customer_password_env,
            existing,
        } => TellerOp::OpenAccount {
            customer: NewCustomer {
                national_id: national_id.clone(),
                phone: phone.clone(),
                first_name: first_name.clone(),
                last_name: last_name.clone(),
                sms_opt_in: *sms,
            },
            password: std::env::var(customer_password_env).map_err(|_| {
                TellerError::Usage(format!(
                    "environment variable {customer_password_env} is not set"
                ))
            })?,
            existing: existing.as_deref().map(account_number).transpose()?,
        },
        Admin::Trace { id } => TellerOp::Trace { id: *id },
        Admin::InDoubt => TellerOp::InDoubt,
        Admin::Reconcile { settle_secs } => TellerOp::Reconcile {
            cut_ms: now_ms().saturating_sub(settle_secs.saturating_mul(1_000)),
        },
        Admin::CloseAccount { account } => TellerOp::CloseAccount {
            account: account_number(account)?,
            admin_password: admin_password.to_owned(),
        },
        Admin::FindCustomer { national_id } => TellerOp::FindCustomer {
            national_id: national_id.clone(),
        },
        Admin::RevealNationalId { account } => TellerOp::RevealNationalId {
            account: account_number(account)?,
            admin_password: admin_password.to_owned(),
        },
        Admin::Accounts { network } => TellerOp::ListAccounts {
            scope: scope(*network),
            page: AccountsPage {
                after: None,
                limit: wire::limits::PAGE_ROWS_MAX,
            },
        },
        Admin::Transactions {
            network,
            limit,
            account,
            kind,
            since,
            until,
            before,
            cursor: cursor_text,
        } => TellerOp::ListTransactions {
            scope: scope(*network),
            page: PageRequest {
                before: *before,
                limit: *limit,
            },
            filter: entry_filter(account, *kind, since, until)?,
            network: cursor(cursor_text.as_deref())?,
        },
        Admin::LinkFault {
            to_branch,
            blocked,
            delay_ms,
        } => TellerOp::SetLinkFault {
            branch: BranchId(*to_branch),
            fault: link_fault(*blocked, *delay_ms),
        },
    })
}
