//! `teller-cli`'s arguments: every subcommand and option, as clap reads them, and what
//! each exit status promises (shown by `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use wire::TransferId;

/// What each exit status promises; shown by `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit status:
  0  done (a deposit, withdrawal or transfer: committed)
  2  usage error or input the bank would refuse (a bad amount, a mistyped account
     number): caught here, nothing was sent
  3  refused by the bank, finally: it did not happen and never will. A refusal of the
     money itself (funds, a closed account...) is recorded under the id at the account's
     branch, so no later attempt with that id can apply it; a refusal of the request
     (not authorized, a wrong password) reached no account
  4  not done: no request reached the bank (branch unreachable, too busy, session
     ended), so nothing happened and nothing will; sending the same id again is safe
  5  outcome unknown: a request may have reached the bank but no final answer came;
     the id is printed, ask with: teller-cli transfer-status ID
transfer-status exits 0 committed, 3 refused, 4 no payment with this id was made (no
record, and its id is too old for it to be on its way), 5 not known yet.";

#[derive(Parser, Debug)]
#[command(
    name = "teller-cli",
    version,
    about = "BankMate teller: menus, or one action per command",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Network file naming the branches (for --branch).
    #[arg(
        long,
        global = true,
        env = "BANKMATE_NETWORK",
        default_value = "network.toml"
    )]
    pub(crate) network_file: PathBuf,
    /// Branch to connect to, by name from the network file.
    #[arg(long, global = true)]
    pub(crate) branch: Option<String>,
    /// Or a full address ending in /p2p/<peer id>.
    #[arg(long, global = true, conflicts_with = "branch")]
    pub(crate) addr: Option<Multiaddr>,
    /// Login: "admin" or a customer's account number.
    #[arg(long, global = true)]
    pub(crate) user: Option<String>,
    /// Read the password from this environment variable.
    #[arg(long, global = true)]
    pub(crate) password_env: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long, global = true, conflicts_with = "password_env")]
    pub(crate) password_stdin: bool,
    /// Read the current one-time code (six digits) from this environment variable, for
    /// a login enrolled for one-time codes.
    #[arg(long, global = true)]
    pub(crate) otp_env: Option<String>,
    /// This teller's key, in a file made (readable by its owner only) if missing. With
    /// the same key every run, branches know this teller: a login made here stays
    /// trusted here, so a stranger's guessing elsewhere never slows it down. Default: a
    /// new key each run.
    #[arg(long, global = true, env = "BANKMATE_IDENTITY")]
    pub(crate) identity: Option<PathBuf>,
    /// Print machine-readable JSON (amounts are decimal strings; refusals carry a code).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// How long a deposit, withdrawal or transfer keeps trying for a final answer, in
    /// seconds, retrying with the same id; after that the outcome is reported unknown.
    /// The login (and a read) is sent again within it too while a replicated branch
    /// changes leaders or a replica stops answering.
    #[arg(long, global = true, default_value_t = teller_cli::money::MONEY_WAIT_MS / 1000)]
    pub(crate) wait: u64,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) enum Admin {
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
    /// This branch's accounts of the customer with this national id (found by a keyed
    /// hash of it: listings show national ids masked).
    FindCustomer {
        #[arg(long)]
        national_id: String,
    },
    /// Show the whole national id of an account's owner (the admin's password is asked
    /// again); every reveal is recorded in the branch's audit trail.
    RevealNationalId { account: String },
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

impl Command {
    /// Whether the command changes anything at the bank besides money (which has its
    /// own answers).
    pub(crate) fn mutates(&self) -> bool {
        matches!(
            self,
            Command::EnrollOtp { .. }
                | Command::Admin(
                    Admin::OpenAccount { .. }
                        | Admin::CloseAccount { .. }
                        | Admin::RevealNationalId { .. }
                        | Admin::LinkFault { .. }
                )
        )
    }
}

/// A ledger entry kind as `--kind` names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum KindArg {
    Deposit,
    Withdrawal,
    TransferOut,
    TransferIn,
}
