//! `teller-cli`: every teller action as a subcommand for scripts (with `--json`), and
//! the interactive menus when run without one. Exit status (see [`EXIT_CODES`]): 0 done,
//! 2 usage, 3 refused (finally), 4 not done (nothing happened), 5 outcome unknown.

mod interactive;
mod output;
mod reconcile;
mod trace;
mod views;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use teller_cli::money::{self, EXIT_NOT_DONE, EXIT_REFUSED, EXIT_UNKNOWN, RetryPolicy};
use teller_cli::{Target, Teller, TellerError, new_transfer_id};
use wire::teller::{
    AccountsPage, LinkFault, NewCustomer, PageRequest, Scope, TellerOp, TellerResponse,
    TransferState,
};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, TransferId};

/// Exit status for bad arguments (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

/// What each exit status promises; shown by `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  done (a deposit, withdrawal or transfer: committed)
  2  usage error: nothing was sent
  3  refused by the bank, finally: it did not happen and never will. A refusal of the
     money itself (funds, a closed account...) is recorded under the id at the account's
     branch, so no later attempt with that id can apply it; a refusal of the request
     (not authorized, a wrong password) reached no account
  4  not done: no request reached the bank (branch unreachable, too busy, session
     ended), so nothing happened and nothing will; sending the same id again is safe
  5  outcome unknown: a request may have reached the bank but no final answer came;
     the id is printed, ask with: teller-cli transfer-status ID
transfer-status exits 0 committed, 3 refused, 5 not known yet.";

#[derive(Parser, Debug)]
#[command(
    name = "teller-cli",
    version,
    about = "BankMate teller: menus, or one action per command",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Network file naming the branches (for --branch).
    #[arg(
        long,
        global = true,
        env = "BANKMATE_NETWORK",
        default_value = "network.toml"
    )]
    network_file: PathBuf,
    /// Branch to connect to, by name from the network file.
    #[arg(long, global = true)]
    branch: Option<String>,
    /// Or a full address ending in /p2p/<peer id>.
    #[arg(long, global = true, conflicts_with = "branch")]
    addr: Option<Multiaddr>,
    /// Login: "admin" or a customer's account number.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Read the password from this environment variable.
    #[arg(long, global = true)]
    password_env: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long, global = true, conflicts_with = "password_env")]
    password_stdin: bool,
    /// Read the current one-time code (six digits) from this environment variable, for
    /// a login enrolled for one-time codes.
    #[arg(long, global = true)]
    otp_env: Option<String>,
    /// This teller's key, in a file made (readable by its owner only) if missing. With
    /// the same key every run, branches know this teller: a login made here stays
    /// trusted here, so a stranger's guessing elsewhere never slows it down. Default: a
    /// new key each run.
    #[arg(long, global = true, env = "BANKMATE_IDENTITY")]
    identity: Option<PathBuf>,
    /// Print machine-readable JSON (amounts are decimal strings; refusals carry a code).
    #[arg(long, global = true)]
    json: bool,
    /// How long a deposit, withdrawal or transfer keeps trying for a final answer, in
    /// seconds, retrying with the same id; after that the outcome is reported unknown.
    #[arg(long, global = true, default_value_t = money::MONEY_WAIT_MS / 1000)]
    wait: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show an account's balance (default: the customer's first account).
    Balance {
        #[arg(long)]
        account: Option<String>,
    },
    /// Deposit AMOUNT (like 1250.50).
    #[command(after_help = EXIT_CODES)]
    Deposit {
        amount: String,
        #[arg(long)]
        account: Option<String>,
        /// Reuse an id to retry safely; by default a fresh one is made.
        #[arg(long)]
        id: Option<TransferId>,
    },
    /// Withdraw AMOUNT.
    #[command(after_help = EXIT_CODES)]
    Withdraw {
        amount: String,
        #[arg(long)]
        account: Option<String>,
        /// Reuse an id to retry safely; by default a fresh one is made.
        #[arg(long)]
        id: Option<TransferId>,
    },
    /// Transfer AMOUNT to another account, at this or any branch.
    #[command(after_help = EXIT_CODES)]
    Transfer {
        amount: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        from: Option<String>,
        /// Reuse an id to retry a transfer safely; by default a fresh one is made.
        #[arg(long)]
        id: Option<TransferId>,
    },
    /// Bulk payments from a CSV file: `id,from,to,amount` per line (an optional header
    /// line; ids are UUIDs or 32 hex digits, e.g. from `teller-cli new-id --count N`). The whole file is
    /// checked first (nothing is sent if a line is wrong); then each line gets its own
    /// answer, printed as a table (or JSON lines with --json). Running the same file
    /// again is safe: each id keeps its one outcome. Exit status: the worst line's.
    #[command(after_help = EXIT_CODES)]
    TransferBatch {
        file: PathBuf,
        /// Lines per request (at most 1024).
        #[arg(long, default_value_t = teller_cli::batch::CHUNK_LINES_DEFAULT)]
        chunk: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = teller_cli::batch::CHUNKS_IN_FLIGHT_DEFAULT)]
        in_flight: usize,
    },
    /// Transaction history of an account, newest first.
    History {
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Show entries older than this sequence number (from a previous page).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Where a transfer, deposit or withdrawal stands, by id.
    #[command(after_help = EXIT_CODES)]
    TransferStatus { id: TransferId },
    /// Enrol for one-time codes (TOTP) and print the otpauth:// URI for an
    /// authenticator app: your own login, or as an admin --for another login of the
    /// branch (replacing a lost device). Every later login needs the current code.
    EnrollOtp {
        #[arg(long = "for")]
        for_user: Option<String>,
    },
    /// Admin actions.
    #[command(subcommand)]
    Admin(Admin),
    /// Print fresh transfer ids, one per line (time-ordered, UUID-shaped): the id column
    /// of a `transfer-batch` file. Needs no branch and no login.
    NewId {
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Print a shell completion script, e.g. `teller-cli completions bash >
    /// ~/.local/share/bash-completion/completions/teller-cli`.
    Completions { shell: clap_complete::Shell },
    /// Serve the web teller console to a browser on this machine: it speaks to the
    /// branch (--branch or --addr) as this CLI does. Every login happens in the browser.
    Web {
        /// Where to listen; loopback only (the console serves plain HTTP).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum Admin {
    /// Open an account for a new customer (or, with --existing, another for a customer).
    OpenAccount {
        #[arg(long)]
        national_id: String,
        #[arg(long)]
        phone: String,
        #[arg(long)]
        first_name: String,
        #[arg(long)]
        last_name: String,
        /// Send the customer an SMS for every entry.
        #[arg(long)]
        sms: bool,
        /// Environment variable holding the customer's new password.
        #[arg(long)]
        customer_password_env: String,
        #[arg(long)]
        existing: Option<String>,
    },
    /// Close an empty account (the admin's password is asked again: the login password).
    CloseAccount { account: String },
    /// List accounts of this branch, or of every branch with --network.
    Accounts {
        #[arg(long)]
        network: bool,
    },
    /// List ledger entries of this branch, or of every branch with --network.
    Transactions {
        #[arg(long)]
        network: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this account's entries.
        #[arg(long)]
        account: Option<String>,
        /// Only entries of this kind.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Entries on or after this day (UTC), like 2026-11-28.
        #[arg(long)]
        since: Option<String>,
        /// Entries on or before this day (UTC).
        #[arg(long)]
        until: Option<String>,
        /// The next page of this branch's entries: the `--before` the last page said.
        #[arg(long, conflicts_with = "network")]
        before: Option<u64>,
        /// The next page of the network's entries: the `--cursor` the last page said.
        #[arg(long, requires = "network")]
        cursor: Option<String>,
    },
    /// A transfer across branches: each branch's coordinator record, its leg (vote,
    /// decision), the signed votes and decisions it keeps (signatures checked), and
    /// its ledger lines.
    Trace { id: TransferId },
    /// What is not finished at any branch, and which branch each waits on.
    InDoubt,
    /// Every branch's signed statement of its committed cross-branch debits and credits
    /// per other branch (transfers begun more than --settle-secs ago, whatever their
    /// ids), signatures checked against the network file, held pair by
    /// pair: count, total and a digest of every transfer, so each is compared. Exit 0
    /// when every pair agrees; 1 when a pair disagrees (the transfers are named) or a
    /// statement does not verify; 4 when a branch did not answer.
    Reconcile {
        #[arg(long, default_value_t = 60)]
        settle_secs: u64,
    },
    /// Fault switch (node started with --fault-switch): healthy, blocked, or delay-ms N.
    LinkFault {
        #[arg(long)]
        to_branch: u16,
        #[arg(long)]
        blocked: bool,
        #[arg(long)]
        delay_ms: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("teller-cli: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    let mutating = cli.command.as_ref().is_some_and(Command::mutates);
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("teller-cli: {e}");
            let (code, kind) = exit_for(&e, mutating);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": kind, "code": e.code(), "message": e.to_string() })
                );
            }
            ExitCode::from(code)
        }
    }
}

/// The exit status (and its name in `--json`) for a command that ended in `e`.
/// `mutating`: the command changes something (an admin action), so a request that may
/// have arrived leaves its outcome unknown.
fn exit_for(e: &TellerError, mutating: bool) -> (u8, &'static str) {
    match e {
        TellerError::Refused(_) | TellerError::Invalid(_) => (EXIT_REFUSED, "refused"),
        TellerError::Usage(_) => (EXIT_USAGE, "usage"),
        _ if mutating && e.may_have_happened() => (EXIT_UNKNOWN, "unknown"),
        TellerError::Unexpected { .. } => (1, "unexpected"),
        TellerError::Unavailable(_) | TellerError::Connection(_) | TellerError::LoginNotDone(_) => {
            (EXIT_NOT_DONE, "not_done")
        }
    }
}

impl Command {
    /// Whether the command changes anything at the bank besides money (which has its
    /// own answers).
    fn mutates(&self) -> bool {
        matches!(
            self,
            Command::EnrollOtp { .. }
                | Command::Admin(
                    Admin::OpenAccount { .. }
                        | Admin::CloseAccount { .. }
                        | Admin::LinkFault { .. }
                )
        )
    }
}

fn target(cli: &Cli) -> Result<Target, TellerError> {
    match (&cli.addr, &cli.branch) {
        (Some(a), _) => Target::by_addr(a),
        (None, Some(name)) => Target::by_name(&cli.network_file, name),
        (None, None) => Err(TellerError::Usage(
            "say which branch: --branch NAME or --addr MULTIADDR".into(),
        )),
    }
}

fn password(cli: &Cli) -> Result<String, TellerError> {
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
fn otp_code(cli: &Cli) -> Result<Option<String>, TellerError> {
    let Some(var) = &cli.otp_env else {
        return Ok(None);
    };
    let code = std::env::var(var)
        .map_err(|_| TellerError::Usage(format!("environment variable {var} is not set")))?;
    Ok(Some(code.trim().to_owned()))
}

/// Parses an account number; a typo (bad check digits) is refused here, before
/// anything is sent, with the bank's refusal exit status.
pub fn account_number(text: &str) -> Result<AccountNumber, TellerError> {
    text.parse()
        .map_err(|e| TellerError::Invalid(format!("account {text}: {e}")))
}

/// Parses a movable amount; a bad one is the bank's "invalid amount" refusal, refused
/// here before anything is sent.
pub fn amount(text: &str) -> Result<Amount, TellerError> {
    Amount::parse(text)
        .and_then(Amount::validate_movable)
        .map_err(|_| TellerError::Refused(wire::Refusal::InvalidAmount))
}

/// A ledger entry kind as `--kind` names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum KindArg {
    Deposit,
    Withdrawal,
    TransferOut,
    TransferIn,
}

/// The filter `admin transactions` asks for; a bad account, date or range is refused
/// before anything is sent.
fn entry_filter(
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks and compares the statements; prints the report; the exit status says it.
fn reconciled(
    cli: &Cli,
    cut_ms: u64,
    statements: &[Vec<u8>],
    unreachable: &[BranchId],
) -> Result<u8, TellerError> {
    let net = client::network_file::NetworkFile::load(&cli.network_file).map_err(|e| {
        TellerError::Usage(format!(
            "reconcile checks signatures against the network file: {}: {e}",
            cli.network_file.display()
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

/// Runs the web console until Ctrl-C or SIGTERM.
async fn web(
    target: Target,
    branch_name: String,
    policy: RetryPolicy,
    listen: std::net::SocketAddr,
    key: &wire::BranchKey,
) -> Result<u8, TellerError> {
    teller_cli::web::check_listen(&listen)?;
    let teller = Teller::connect_with_key(&target, key).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| TellerError::Usage(format!("cannot listen on {listen}: {e}")))?;
    let config = teller_cli::web::WebConfig {
        teller,
        branch_name: branch_name.clone(),
        policy,
    };
    println!("web console for branch {branch_name}: http://{listen}/ (Ctrl-C stops it)");
    teller_cli::web::serve(listener, config, stop_signal())
        .await
        .map_err(|e| TellerError::Usage(format!("web console failed: {e}")))?;
    Ok(0)
}

/// Resolves at Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> Result<u8, TellerError> {
    if let Some(Command::Completions { shell }) = &cli.command {
        use clap::CommandFactory;
        let mut command = Cli::command();
        clap_complete::generate(*shell, &mut command, "teller-cli", &mut std::io::stdout());
        return Ok(0);
    }
    if let Some(Command::NewId { count }) = &cli.command {
        for _ in 0..*count {
            println!("{}", new_transfer_id());
        }
        return Ok(0);
    }
    let target = target(&cli)?;
    let policy = RetryPolicy {
        wait: std::time::Duration::from_secs(cli.wait),
        ..RetryPolicy::default()
    };
    let key = match &cli.identity {
        Some(path) => teller_cli::identity(path)?,
        None => wire::BranchKey::from_secret(rand::random()),
    };
    let Some(command) = cli.command.as_ref() else {
        return interactive::run(target, &key, policy).await;
    };
    if let Command::Web { listen } = command {
        let name = cli
            .branch
            .clone()
            .unwrap_or_else(|| target.peer.to_string());
        return web(target, name, policy, *listen, &key).await;
    }
    let user = cli
        .user
        .clone()
        .ok_or_else(|| TellerError::Usage("give the login with --user".into()))?;
    let password = password(&cli)?;
    let batch = match command {
        Command::TransferBatch { file, .. } => Some(read_batch(file)?),
        _ => None,
    };
    let mut teller = Teller::connect_with_key(&target, &key).await?;
    let otp = otp_code(&cli)?;
    let login = teller
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
    let mine = match &login {
        TellerResponse::LoggedIn { accounts, .. } => accounts.first().map(|a| a.number),
        _ => None,
    };
    let account = |given: &Option<String>| match given {
        Some(text) => account_number(text),
        None => mine.ok_or_else(|| TellerError::Usage("give the account with --account".into())),
    };
    let out = output::Printer { json: cli.json };
    let op = match command {
        Command::Balance { account: a } => TellerOp::Balance {
            account: account(a)?,
        },
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
            let (account, amount) = (account(a)?, amount(amt)?);
            let id = id.unwrap_or_else(new_transfer_id);
            let deposit = matches!(command, Command::Deposit { .. });
            let op = TellerOp::movement(deposit, id, account, amount);
            return Ok(send_money(&out, &mut teller, op, &policy).await);
        }
        Command::Transfer {
            amount: amt,
            to,
            from,
            id,
        } => {
            let spec = TransferSpec {
                id: id.unwrap_or_else(new_transfer_id),
                from: account(from)?,
                to: account_number(to)?,
                amount: amount(amt)?,
            };
            return Ok(send_money(&out, &mut teller, TellerOp::Transfer(spec), &policy).await);
        }
        Command::TransferBatch {
            chunk, in_flight, ..
        } => {
            let options = teller_cli::batch::BatchOptions {
                chunk: *chunk,
                in_flight: *in_flight,
                policy,
            };
            let lines = batch.unwrap_or_default();
            return Ok(send_batch(&out, &mut teller, &lines, options).await);
        }
        Command::History {
            account: a,
            limit,
            before,
        } => TellerOp::History {
            account: account(a)?,
            page: PageRequest {
                before: *before,
                limit: *limit,
            },
        },
        Command::TransferStatus { id } => TellerOp::TransferStatus { id: *id },
        Command::EnrollOtp { for_user } => TellerOp::EnrollOtp {
            user: for_user.clone().unwrap_or_else(|| user.clone()),
            password: password.clone(),
        },
        Command::Admin(Admin::Accounts { network }) => {
            let scope = if *network {
                Scope::Network
            } else {
                Scope::Branch
            };
            let r = teller.all_accounts(scope).await?;
            out.response(&r);
            let _ = teller.logout().await;
            return Ok(0);
        }
        Command::Admin(admin) => admin_op(admin, &password)?,
        Command::Web { .. } | Command::Completions { .. } | Command::NewId { .. } => {
            return Err(TellerError::Usage("this command takes no login".into()));
        }
    };
    let r = teller.call_renewing(op).await?;
    if let TellerResponse::Statements {
        cut_ms,
        statements,
        unreachable,
    } = &r
    {
        let _ = teller.logout().await;
        return reconciled(&cli, *cut_ms, statements, unreachable);
    }
    out.response(&r);
    let _ = teller.logout().await;
    Ok(match r {
        TellerResponse::Status { state, .. } => status_exit(state),
        _ => 0,
    })
}

/// `transfer-status` says the outcome in its exit status too.
fn status_exit(state: TransferState) -> u8 {
    match state {
        TransferState::Committed => 0,
        TransferState::Aborted(_) => EXIT_REFUSED,
        TransferState::Pending | TransferState::Unknown => EXIT_UNKNOWN,
    }
}

/// Sends a money movement under the one retry policy and prints what the teller is
/// finally told; returns its exit status.
async fn send_money(
    out: &output::Printer,
    teller: &mut Teller,
    op: TellerOp,
    policy: &RetryPolicy,
) -> u8 {
    let answer = money::send(teller, op, policy).await;
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

/// Reads and checks a transfer file; a wrong line refuses the file before anything is sent.
fn read_batch(file: &std::path::Path) -> Result<Vec<teller_cli::batch::BatchLine>, TellerError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| TellerError::Usage(format!("cannot read {}: {e}", file.display())))?;
    teller_cli::batch::parse(&text)
        .map_err(|p| TellerError::Invalid(format!("{}: {p}", file.display())))
}

/// Sends a transfer file's lines with a progress bar (on a terminal), prints each
/// line's answer and the tally; returns the worst line's exit status.
async fn send_batch(
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

fn admin_op(admin: &Admin, admin_password: &str) -> Result<TellerOp, TellerError> {
    let scope = |network: bool| {
        if network {
            Scope::Network
        } else {
            Scope::Branch
        }
    };
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
            cursor,
        } => TellerOp::ListTransactions {
            scope: scope(*network),
            page: PageRequest {
                before: *before,
                limit: *limit,
            },
            filter: entry_filter(account, *kind, since, until)?,
            network: cursor
                .as_deref()
                .map(wire::teller::parse_cursor)
                .transpose()
                .map_err(TellerError::Invalid)?
                .unwrap_or_default(),
        },
        Admin::LinkFault {
            to_branch,
            blocked,
            delay_ms,
        } => TellerOp::SetLinkFault {
            branch: BranchId(*to_branch),
            fault: match (blocked, delay_ms) {
                (true, _) => LinkFault::Blocked,
                (false, Some(d)) => LinkFault::Delayed { delay_ms: *d },
                (false, None) => LinkFault::Healthy,
            },
        },
    })
}
