//! The teller protocol: what `teller-cli` asks a branch and what the branch answers.
//!
//! Teller traffic is not signed per message: the libp2p Noise channel authenticates the
//! teller's PeerId, and a session token from `Login` is bound to that PeerId by the
//! branch. Every request is checked with [`TellerRequest::validate`] before it reaches
//! a store. A final refusal comes back as [`TellerResponse::Refused`]; a request the
//! branch could not carry out now comes back as [`TellerResponse::Unavailable`], which
//! says whether it may still take effect.

use serde::{Deserialize, Serialize};

use crate::account::AccountNumber;
use crate::ids::{BranchId, TransferId};
use crate::limits::{
    BATCH_LINES_MAX, LINK_DELAY_MS_MAX, OTP_DIGITS, PAGE_ROWS_MAX, PASSWORD_BYTES_MAX,
    TEXT_FIELD_BYTES_MAX,
};
use crate::money::Amount;
use crate::refusal::Refusal;
use crate::twopc::TransferSpec;

pub use crate::entries::{EntryKind, EntryView, TransferState};

/// A login session, drawn at random by the branch and bound to the teller's PeerId.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SessionToken(pub u128);

impl SessionToken {
    /// A token issued by branch `issuer`: its id in the top 16 bits, 112 random bits below.
    /// Any branch can then tell which branch holds the session.
    pub fn new(issuer: BranchId, random: u128) -> Self {
        SessionToken((u128::from(issuer.0) << 112) | (random & ((1u128 << 112) - 1)))
    }

    /// The branch that issued this token and keeps the session.
    pub fn issuer(&self) -> BranchId {
        BranchId(u16::try_from(self.0 >> 112).unwrap_or(u16::MAX))
    }
}

/// What the fault switch does to traffic with one branch (scenarios use it for partitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LinkFault {
    /// Traffic flows normally.
    Healthy,
    /// Every message to or from the branch is dropped.
    Blocked,
    /// Every message to the branch waits this long first, in milliseconds.
    Delayed { delay_ms: u32 },
}

/// What a logged-in user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Role {
    /// Opens and closes accounts, sees every account and transaction.
    Admin,
    /// Sees and moves money of their own accounts only.
    Customer,
}

/// Which accounts a listing covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Scope {
    /// The branch the teller is connected to.
    Branch,
    /// Every branch in the network file (the connected branch asks the others).
    Network,
}

/// One page of an append-only listing, newest first: rows with `seq < before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PageRequest {
    pub before: Option<u64>,
    pub limit: u32,
}

/// Where a network-wide ledger listing goes on: for each branch already listed, the
/// seq its next entries come before (0: it has no more). A branch not named starts
/// from its newest entry. One branch's pages go on by seq, so across pages the merged
/// listing shows every entry exactly once, however the branches' clocks compare.
pub type NetworkCursor = Vec<(BranchId, u64)>;

/// A network cursor as text, for a link or a command line: `branch:seq` pairs,
/// comma-separated (`1:230,2:0,3:17`).
pub fn cursor_text(cursor: &NetworkCursor) -> String {
    let pairs: Vec<String> = cursor
        .iter()
        .map(|(b, seq)| format!("{}:{seq}", b.0))
        .collect();
    pairs.join(",")
}

/// Reads [`cursor_text`]'s form back.
pub fn parse_cursor(text: &str) -> Result<NetworkCursor, String> {
    let pair = |p: &str| {
        let (b, seq) = p.split_once(':')?;
        Some((BranchId(b.trim().parse().ok()?), seq.trim().parse().ok()?))
    };
    text.split(',')
        .map(|p| pair(p).ok_or_else(|| format!("{p:?} is not branch:seq (a page cursor)")))
        .collect()
}

/// One page of an account listing, in account-number order: accounts after `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AccountsPage {
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
    )]
    pub after: Option<AccountNumber>,
    pub limit: u32,
}

/// Which ledger entries a listing shows: every field set must match (all `None`: all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EntryFilter {
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
    )]
    pub account: Option<AccountNumber>,
    pub kind: Option<EntryKind>,
    /// Entries at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Entries before this time (Unix milliseconds).
    pub until_ms: Option<u64>,
}

/// What an account listing shows of its customer besides the name. The national id
/// leaves the branch masked: only its last characters are shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ContactView {
    pub national_id_masked: String,
    pub phone: String,
    pub sms_opt_in: bool,
}

/// How many trailing characters of a national id a listing shows.
pub const NATIONAL_ID_SHOWN: usize = 4;

/// `id` with all but its last [`NATIONAL_ID_SHOWN`] characters replaced by `*` (all of
/// them when it is that short), so a listing never carries a whole national id.
pub fn mask_national_id(id: &str) -> String {
    let n = id.chars().count();
    let shown = if n > NATIONAL_ID_SHOWN {
        NATIONAL_ID_SHOWN
    } else {
        0
    };
    id.chars()
        .enumerate()
        .map(|(i, c)| if i + shown < n { '*' } else { c })
        .collect()
}

/// The person behind a new account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NewCustomer {
    pub national_id: String,
    pub phone: String,
    pub first_name: String,
    pub last_name: String,
    pub sms_opt_in: bool,
}

/// One teller operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TellerOp {
    /// `user` is an admin's login name or a customer's account number.
    /// `otp` is the current one-time code (six digits) of a login enrolled for them.
    Login {
        user: String,
        password: String,
        otp: Option<String>,
    },
    /// Enrol `user` for one-time codes (RFC 6238 TOTP); the caller types their own
    /// password again. A customer enrols themselves; an admin enrols an admin or a
    /// customer of the branch, or replaces a lost device.
    EnrollOtp {
        user: String,
        password: String,
    },
    Logout,
    Balance {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
    },
    Deposit {
        id: TransferId,
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        amount: Amount,
    },
    Withdraw {
        id: TransferId,
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        amount: Amount,
    },
    /// Coordinated by the branch the teller is connected to.
    Transfer(TransferSpec),
    History {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        page: PageRequest,
    },
    TransferStatus {
        id: TransferId,
    },
    /// Admin: open an account for a new customer, whose login will be the account
    /// number with `password`; or, with `existing` set, a further account for the
    /// customer who owns that account.
    OpenAccount {
        customer: NewCustomer,
        password: String,
        #[cfg_attr(
            test,
            proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
        )]
        existing: Option<AccountNumber>,
    },
    /// Admin: close an empty account; the admin types their password again.
    CloseAccount {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        admin_password: String,
    },
    /// A page of accounts; with `Scope::Network` pages continue from branch to branch
    /// in account-number order.
    ListAccounts {
        scope: Scope,
        page: AccountsPage,
    },
    /// Ledger entries newest first, only those `filter` lets through. One branch's
    /// pages go on by `page.before`; the network's by `network`, where each branch
    /// already listed goes on (empty: the first page).
    ListTransactions {
        scope: Scope,
        page: PageRequest,
        filter: EntryFilter,
        network: NetworkCursor,
    },
    /// Admin: every branch's records of transfer `id` (coordinator, legs, signed
    /// evidence, ledger lines).
    Trace {
        id: TransferId,
    },
    /// Admin: the transfers not finished at any branch, and what each waits on.
    InDoubt,
    /// Admin: every branch's signed statement of its committed cross-branch position
    /// against each other branch, for transfers with ids before `cut_ms`.
    Reconcile {
        cut_ms: u64,
    },
    /// Admin, on a node started with `--fault-switch`: block or delay the link to `branch`.
    SetLinkFault {
        branch: BranchId,
        fault: LinkFault,
    },
    /// Bulk payments: up to [`BATCH_LINES_MAX`] transfers, each under its own id with
    /// its own outcome, answered together as [`TellerResponse::Receipts`] in this order.
    /// Each line is authorized as a `Transfer` of its own would be; a line refused never
    /// stops the others.
    TransferBatch {
        transfers: Vec<TransferSpec>,
    },
    /// A login whose password and one-time code are encrypted to the replicas of the
    /// account's branch ([`crate::login_box`]): what a teller sends for a login another
    /// branch passes on, so that branch never sees them. Answered as `Login`.
    SealedLogin {
        user: String,
        secret: crate::login_box::SealedSecret,
    },
    /// Whom a transfer to `account` would pay, to confirm before sending: the owner's
    /// name as the bank knows it, masked ([`masked_name`]), and whether the account is
    /// open. Asked of the account's branch; lookups per login are limited.
    Payee {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
    },
    /// The session's own accounts as they are now (one opened since the login
    /// included, and from then on usable by the session), answered as `Accounts`. An
    /// admin has none.
    OwnAccounts,
    /// Admin: the accounts at this branch of the customer whose national id is
    /// `national_id`, found by its keyed hash (nothing is decrypted to look); answered
    /// as `Accounts` (none when no customer has it).
    FindCustomer {
        national_id: String,
    },
    /// Admin: the whole national id of `account`'s owner, after the admin's password
    /// again. Each reveal is recorded in the branch's audit trail before it is
    /// answered (`NationalId`).
    RevealNationalId {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        admin_password: String,
    },
}

/// A request: the session (absent only for `Login`), the operation, and the teller's
/// seal over both ([`crate::seal`]). A branch that runs a request another branch passed
/// on runs it only under a seal of the teller that branch names; a request the teller
/// sent to it directly needs none (the connection itself proved the teller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TellerRequest {
    pub session: Option<SessionToken>,
    pub op: TellerOp,
    pub seal: Option<crate::seal::Seal>,
}

impl TellerRequest {
    /// A request without a seal (a login, or one sent straight to its branch).
    pub fn new(session: Option<SessionToken>, op: TellerOp) -> TellerRequest {
        TellerRequest {
            session,
            op,
            seal: None,
        }
    }
}

/// Whether an account can still move money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AccountStatus {
    Open,
    Closed,
}

/// An account as a teller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AccountView {
    #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
    pub number: AccountNumber,
    pub owner_name: String,
    pub balance: Amount,
    /// Money held by prepared outgoing transfers; available = balance - held.
    pub held: Amount,
    pub status: AccountStatus,
    pub opened_at_ms: u64,
    pub contact: ContactView,
}

/// A name masked the way banks show a payee: the first word whole, every other word by
/// its initial ("Asha Rao" -> "Asha R."). Enough to confirm whom a transfer pays,
/// without handing out the whole name to anyone who has an account number.
pub fn masked_name(full: &str) -> String {
    let mut words = full.split_whitespace();
    let mut out = words.next().unwrap_or_default().to_owned();
    for w in words {
        if let Some(initial) = w.chars().next() {
            out.push(' ');
            out.push(initial);
            out.push('.');
        }
    }
    out
}

impl TellerOp {
    /// The operation's name, as logs and the authorization table say it.
    pub fn name(&self) -> &'static str {
        match self {
            TellerOp::Login { .. } => "login",
            TellerOp::EnrollOtp { .. } => "enroll-otp",
            TellerOp::Logout => "logout",
            TellerOp::Balance { .. } => "balance",
            TellerOp::Deposit { .. } => "deposit",
            TellerOp::Withdraw { .. } => "withdraw",
            TellerOp::Transfer(_) => "transfer",
            TellerOp::History { .. } => "history",
            TellerOp::TransferStatus { .. } => "transfer-status",
            TellerOp::OpenAccount { .. } => "open-account",
            TellerOp::CloseAccount { .. } => "close-account",
            TellerOp::ListAccounts { .. } => "list-accounts",
            TellerOp::ListTransactions { .. } => "list-transactions",
            TellerOp::SetLinkFault { .. } => "set-link-fault",
            TellerOp::Trace { .. } => "trace",
            TellerOp::InDoubt => "in-doubt",
            TellerOp::Reconcile { .. } => "reconcile",
            TellerOp::TransferBatch { .. } => "transfer-batch",
            TellerOp::SealedLogin { .. } => "login",
            TellerOp::Payee { .. } => "payee",
            TellerOp::OwnAccounts => "own-accounts",
            TellerOp::FindCustomer { .. } => "find-customer",
            TellerOp::RevealNationalId { .. } => "reveal-national-id",
        }
    }

    /// The id of a money movement (deposit, withdrawal or transfer): the id its outcome
    /// is recorded and asked about under.
    pub fn money_id(&self) -> Option<TransferId> {
        match self {
            TellerOp::Deposit { id, .. } | TellerOp::Withdraw { id, .. } => Some(*id),
            TellerOp::Transfer(spec) => Some(spec.id),
            _ => None,
        }
    }

    /// A deposit (`deposit`) or a withdrawal of `amount` on `account`, under `id`.
    pub fn movement(deposit: bool, id: TransferId, account: AccountNumber, amount: Amount) -> Self {
        if deposit {
            TellerOp::Deposit {
                id,
                account,
                amount,
            }
        } else {
            TellerOp::Withdraw {
                id,
                account,
                amount,
            }
        }
    }
}

/// Why a branch did not carry out a request now. Not a refusal: sending the same
/// request again (the same id, for money) is safe and may succeed. Whether the request
/// may still take effect is [`Unavailable::may_have_happened`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Unavailable {
    /// No session, or it expired or was ended: log in again. Nothing was done.
    #[error("session expired or unknown; log in again (nothing was done)")]
    SessionExpired,
    /// The branch that must do the work could not be reached: nothing was sent to it.
    #[error("branch {0} could not be reached; nothing was sent to it")]
    BranchUnreachable(BranchId),
    /// The request reached branch `0`, which did not answer in time: it may still be
    /// carried out there. Ask again with the same id.
    #[error("branch {0} did not answer in time; the request may still be carried out")]
    NoAnswer(BranchId),
    /// Too busy to take the request: nothing was recorded.
    #[error("branch is too busy to take the request; nothing was done, retry shortly")]
    Overloaded,
    /// The branch's store failed while carrying the request out: it may or may not
    /// have taken effect.
    #[error("branch store failed; the request may or may not have been carried out")]
    StoreFailed,
    /// The branch is shutting down and did not take the request: nothing was done.
    #[error("branch is stopping; nothing was done")]
    Stopping,
    /// Too many failed logins for this login or from this teller: wait, then retry.
    /// The password was not checked.
    #[error("too many failed logins; try again in {} s (nothing was checked)", retry_after_ms.div_ceil(1000))]
    Throttled { retry_after_ms: u64 },
    /// This replica of the branch is not its leader (`leader`: the replica it believes
    /// leads, if any); nothing was done. A client asks that replica, or the next.
    #[error("this replica is not its branch's leader; nothing was done")]
    NotLeader { leader: Option<u64> },
    /// The branch has not yet confirmed with the other branches that it is the only
    /// copy serving (it is starting, or cut off from all of them): nothing was done.
    #[error(
        "this branch has not confirmed it is the only copy serving; nothing was done, retry shortly"
    )]
    NotConfirmed,
    /// This copy of the branch was replaced by a newer one (a restore) and no longer
    /// serves: nothing was done. Connect to the branch where it now runs.
    #[error(
        "this copy of the branch was replaced by a restore and no longer serves; nothing was done"
    )]
    Fenced,
    /// Carried out here, but this copy could not confirm it still serves the branch
    /// (its lease ran out meanwhile): it may or may not stand. Ask again with the id.
    #[error("this branch could not confirm it still serves; the request may or may not stand")]
    LeaseLost,
}

impl Unavailable {
    /// True when the request may still take effect (or already did): its outcome is
    /// unknown until its id is asked about. False when nothing was done and nothing
    /// will be.
    pub fn may_have_happened(&self) -> bool {
        matches!(
            self,
            Unavailable::NoAnswer(_) | Unavailable::StoreFailed | Unavailable::LeaseLost
        )
    }

    /// A stable machine-readable code (snake case).
    pub fn code(&self) -> &'static str {
        match self {
            Unavailable::SessionExpired => "session_expired",
            Unavailable::BranchUnreachable(_) => "branch_unreachable",
            Unavailable::NoAnswer(_) => "no_answer",
            Unavailable::Overloaded => "overloaded",
            Unavailable::StoreFailed => "store_failed",
            Unavailable::Stopping => "stopping",
            Unavailable::Throttled { .. } => "throttled",
            Unavailable::NotLeader { .. } => "not_leader",
            Unavailable::NotConfirmed => "not_confirmed",
            Unavailable::Fenced => "fenced",
            Unavailable::LeaseLost => "lease_lost",
        }
    }
}

/// A branch's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TellerResponse {
    LoggedIn {
        session: SessionToken,
        role: Role,
        accounts: Vec<AccountView>,
        expires_at_ms: u64,
        /// The issuing branch's clock when it answered: a teller seals its requests
        /// with expiries on that clock.
        now_ms: u64,
    },
    LoggedOut,
    Account(AccountView),
    /// Outcome of a deposit, withdrawal or transfer; a repeat of the id gets the same.
    Receipt {
        id: TransferId,
        state: TransferState,
    },
    /// Ledger entries, newest first; `next_before` asks for one branch's next page,
    /// `next_network` for the network's (`None`: no more). Branches that did not
    /// answer a network listing are named in `unreachable`.
    Entries {
        entries: Vec<EntryView>,
        next_before: Option<u64>,
        next_network: Option<NetworkCursor>,
        unreachable: Vec<BranchId>,
    },
    Status {
        id: TransferId,
        state: TransferState,
    },
    AccountOpened(AccountView),
    AccountClosed(AccountView),
    /// A page of accounts: ask again with `after: next_after` for more. Branches that
    /// did not answer a network listing are named in `unreachable` (their accounts are
    /// missing from the page, the rest is there).
    Accounts {
        accounts: Vec<AccountView>,
        #[cfg_attr(
            test,
            proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
        )]
        next_after: Option<AccountNumber>,
        unreachable: Vec<BranchId>,
    },
    LinkFaultSet {
        branch: BranchId,
        fault: LinkFault,
    },
    /// `user` is enrolled: `uri` is the `otpauth://` URI an authenticator app takes
    /// (shown once; it holds the secret).
    OtpEnrolled {
        user: String,
        uri: String,
    },
    /// Every branch's records of a transfer; branches that did not answer are named.
    Trace {
        id: TransferId,
        branches: Vec<crate::trace::BranchTrace>,
        unreachable: Vec<BranchId>,
    },
    /// What is not finished, network-wide (each branch's oldest first, at most a page
    /// each); branches that did not answer are named.
    Stuck {
        items: Vec<crate::trace::StuckView>,
        unreachable: Vec<BranchId>,
    },
    /// Each branch's encoded `Signed<Statement>` (signed in `STATEMENT_DOMAIN`: check
    /// each against the network file); branches that did not answer are named.
    Statements {
        cut_ms: u64,
        statements: Vec<Vec<u8>>,
        unreachable: Vec<BranchId>,
    },
    /// Final: the request did not take effect and never will.
    Refused(Refusal),
    /// Not carried out now; see [`Unavailable::may_have_happened`].
    Unavailable(Unavailable),
    /// The answer to a `TransferBatch`: one line per transfer, in the request's order.
    Receipts(Vec<LineReceipt>),
    /// The answer to a `Payee`: the owner's masked name, and whether the account is
    /// open (a closed one takes no transfer).
    Payee {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        name: String,
        open: bool,
    },
    /// The answer to a `RevealNationalId`: the owner's whole national id.
    NationalId {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
        national_id: String,
    },
}

impl TellerResponse {
    /// The answer's kind, as a word (for an error that names an answer nobody asked for).
    pub fn kind(&self) -> &'static str {
        match self {
            TellerResponse::LoggedIn { .. } => "logged-in",
            TellerResponse::LoggedOut => "logged-out",
            TellerResponse::Account(_) => "account",
            TellerResponse::Receipt { .. } => "receipt",
            TellerResponse::Entries { .. } => "entries",
            TellerResponse::Status { .. } => "status",
            TellerResponse::AccountOpened(_) => "account-opened",
            TellerResponse::AccountClosed(_) => "account-closed",
            TellerResponse::Accounts { .. } => "accounts",
            TellerResponse::LinkFaultSet { .. } => "link-fault-set",
            TellerResponse::OtpEnrolled { .. } => "otp-enrolled",
            TellerResponse::Trace { .. } => "trace",
            TellerResponse::Stuck { .. } => "stuck",
            TellerResponse::Statements { .. } => "statements",
            TellerResponse::Refused(_) => "refused",
            TellerResponse::Unavailable(_) => "unavailable",
            TellerResponse::Receipts(_) => "receipts",
            TellerResponse::Payee { .. } => "payee",
            TellerResponse::NationalId { .. } => "national-id",
        }
    }
}

/// What one line of a transfer batch came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LineReceipt {
    pub id: TransferId,
    pub answer: LineAnswer,
}

/// One line's answer: the same three kinds a single transfer gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LineAnswer {
    /// Where the id stands (`Committed`/`Aborted` are final).
    State(TransferState),
    /// The line itself was refused (not authorized): nothing was recorded for it.
    Refused(Refusal),
    /// The line was not carried out now; see [`Unavailable::may_have_happened`].
    Unavailable(Unavailable),
}

fn text_ok(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= TEXT_FIELD_BYTES_MAX && !s.chars().any(char::is_control)
}

fn password_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= PASSWORD_BYTES_MAX
}

/// Whether a login's fields have a shape a login can have (what a sealed login's box
/// holds is checked with this once opened).
pub fn login_fields_ok(user: &str, password: &str, otp: Option<&str>) -> bool {
    text_ok(user) && password_ok(password) && otp.is_none_or(otp_ok)
}

/// One to five boxes (one per replica), each no longer than a password and a code
/// with their encoding and tag.
fn sealed_ok(secret: &crate::login_box::SealedSecret) -> bool {
    (1..=crate::login_box::LOGIN_BOXES_MAX).contains(&secret.boxes.len())
        && secret
            .boxes
            .iter()
            .all(|b| b.ciphertext.len() <= PASSWORD_BYTES_MAX + OTP_DIGITS + 32)
}

fn otp_ok(s: &str) -> bool {
    s.len() == OTP_DIGITS && s.bytes().all(|b| b.is_ascii_digit())
}

/// Shortest new password, in characters (NIST SP 800-63B's minimum).
pub const PASSWORD_CHARS_MIN: usize = 8;

/// The policy for a new password (not for logins: existing passwords keep working): at
/// least [`PASSWORD_CHARS_MIN`] characters, at most [`PASSWORD_BYTES_MAX`] bytes, and
/// not on the list of common passwords, compared without regard to case.
pub fn new_password_ok(password: &str) -> Result<(), Refusal> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(Refusal::InvalidInput);
    }
    let lower = password.to_lowercase();
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l == lower);
    if password.chars().count() < PASSWORD_CHARS_MIN || common {
        return Err(Refusal::WeakPassword);
    }
    Ok(())
}

const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn page_ok(p: &PageRequest) -> bool {
    (1..=PAGE_ROWS_MAX).contains(&p.limit)
}

/// A network cursor names each branch at most once, and only branches that can be.
fn cursor_ok(cursor: &NetworkCursor) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    cursor.len() <= usize::from(crate::limits::ACCOUNT_BRANCH_MAX)
        && cursor
            .iter()
            .all(|(b, _)| (1..=crate::limits::ACCOUNT_BRANCH_MAX).contains(&b.0) && seen.insert(*b))
}

impl TellerRequest {
    /// Checks everything that needs no store: field lengths and page sizes. Whether a
    /// session is present, and authorization, come after. A money request's content
    /// (amount, same account) is left to the branch that is its id's authority, which
    /// records a refusal under the id, so the id keeps that answer.
    pub fn validate(&self) -> Result<(), Refusal> {
        let ok_or = |ok: bool, refusal| if ok { Ok(()) } else { Err(refusal) };
        if self.seal.as_ref().is_some_and(|s| s.signature.len() != 64) {
            return Err(Refusal::BadSeal);
        }
        match &self.op {
            TellerOp::Login {
                user,
                password,
                otp,
            } => ok_or(
                login_fields_ok(user, password, otp.as_deref()),
                Refusal::BadCredentials,
            ),
            TellerOp::SealedLogin { user, secret } => {
                ok_or(text_ok(user) && sealed_ok(secret), Refusal::BadCredentials)
            }
            TellerOp::EnrollOtp { user, password } => ok_or(
                text_ok(user) && password_ok(password),
                Refusal::InvalidInput,
            ),
            TellerOp::History { page, .. } => ok_or(page_ok(page), Refusal::InvalidInput),
            TellerOp::ListTransactions {
                page,
                filter,
                network,
                ..
            } => ok_or(
                page_ok(page) && filter.is_valid() && cursor_ok(network),
                Refusal::InvalidInput,
            ),
            TellerOp::OpenAccount {
                customer, password, ..
            } => {
                ok_or(customer_ok(customer), Refusal::InvalidInput)?;
                new_password_ok(password)
            }
            TellerOp::CloseAccount { admin_password, .. }
            | TellerOp::RevealNationalId { admin_password, .. } => {
                ok_or(password_ok(admin_password), Refusal::BadCredentials)
            }
            TellerOp::FindCustomer { national_id } => {
                ok_or(text_ok(national_id), Refusal::InvalidInput)
            }
            TellerOp::Logout
            | TellerOp::Deposit { .. }
            | TellerOp::Withdraw { .. }
            | TellerOp::Transfer(_)
            | TellerOp::Balance { .. }
            | TellerOp::TransferStatus { .. }
            | TellerOp::Trace { .. }
            | TellerOp::InDoubt
            | TellerOp::Reconcile { .. }
            | TellerOp::Payee { .. }
            | TellerOp::OwnAccounts => Ok(()),
            TellerOp::ListAccounts { page, .. } => ok_or(
                (1..=PAGE_ROWS_MAX).contains(&page.limit),
                Refusal::InvalidInput,
            ),
            TellerOp::TransferBatch { transfers } => ok_or(
                (1..=BATCH_LINES_MAX).contains(&transfers.len()),
                Refusal::InvalidInput,
            ),
            TellerOp::SetLinkFault { fault, .. } => ok_or(
                !matches!(fault, LinkFault::Delayed { delay_ms } if *delay_ms > LINK_DELAY_MS_MAX),
                Refusal::InvalidInput,
            ),
        }
    }
}

impl EntryFilter {
    /// False for a time range that ends before it starts.
    pub fn is_valid(&self) -> bool {
        match (self.since_ms, self.until_ms) {
            (Some(since), Some(until)) => since <= until,
            _ => true,
        }
    }
}

fn customer_ok(c: &NewCustomer) -> bool {
    let fields = [&c.national_id, &c.phone, &c.first_name, &c.last_name];
    let phone_ok = c
        .phone
        .chars()
        .all(|ch| ch.is_ascii_digit() || ch == '+' || ch == ' ');
    fields.iter().all(|f| text_ok(f)) && phone_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payee_names_show_the_first_word_and_initials() {
        assert_eq!(masked_name("Asha Rao"), "Asha R.");
        assert_eq!(
            masked_name("  Grace  Brewster Murray Hopper "),
            "Grace B. M. H."
        );
        assert_eq!(masked_name("Cher"), "Cher");
        assert_eq!(masked_name("Åsa Öberg"), "Åsa Ö.");
        assert_eq!(masked_name(""), "");
    }

    #[test]
    fn national_ids_leave_masked() {
        assert_eq!(mask_national_id("19850312-1234"), "*********1234");
        assert_eq!(mask_national_id("AB12"), "****");
        assert_eq!(mask_national_id(""), "");
        assert_eq!(mask_national_id("ÅÄÖ12345"), "****2345");
    }

    #[test]
    fn a_time_range_that_ends_before_it_starts_is_refused() {
        let op = |since_ms, until_ms| TellerOp::ListTransactions {
            scope: Scope::Branch,
            page: PageRequest {
                before: None,
                limit: 10,
            },
            filter: EntryFilter {
                since_ms,
                until_ms,
                ..EntryFilter::default()
            },
            network: Vec::new(),
        };
        check(true, op(Some(5), Some(5)), Ok(()));
        check(true, op(Some(5), None), Ok(()));
        check(true, op(Some(6), Some(5)), Err(Refusal::InvalidInput));
    }

    #[test]
    fn a_network_cursor_names_real_branches_once() {
        let op = |network: NetworkCursor| TellerOp::ListTransactions {
            scope: Scope::Network,
            page: PageRequest {
                before: None,
                limit: 10,
            },
            filter: EntryFilter::default(),
            network,
        };
        check(true, op(vec![(BranchId(1), 7), (BranchId(2), 0)]), Ok(()));
        let twice = vec![(BranchId(1), 7), (BranchId(1), 3)];
        check(true, op(twice), Err(Refusal::InvalidInput));
        check(true, op(vec![(BranchId(0), 1)]), Err(Refusal::InvalidInput));
        check(
            true,
            op(vec![(BranchId(1_000), 1)]),
            Err(Refusal::InvalidInput),
        );
    }

    #[test]
    fn a_cursor_reads_back_as_written() {
        let c = vec![(BranchId(1), 230), (BranchId(2), 0)];
        assert_eq!(cursor_text(&c), "1:230,2:0");
        assert_eq!(parse_cursor("1:230,2:0"), Ok(c));
        for bad in ["", "1", "1:x", "x:1", "1:2,", "70000:1"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    fn acct(serial: u32) -> AccountNumber {
        AccountNumber::new(BranchId(1), serial).expect("valid")
    }

    #[test]
    fn a_batch_has_one_to_batch_lines_max_lines_and_fits_a_message() {
        let lines = |n: usize| TellerOp::TransferBatch {
            transfers: (0..n)
                .map(|i| TransferSpec {
                    id: TransferId(u128::MAX - i as u128),
                    from: acct(99_999_998),
                    to: acct(99_999_999),
                    amount: Amount::from_minor(crate::limits::AMOUNT_MINOR_MAX).expect("amount"),
                })
                .collect(),
        };
        check(true, lines(0), Err(Refusal::InvalidInput));
        check(true, lines(1), Ok(()));
        check(true, lines(BATCH_LINES_MAX), Ok(()));
        check(true, lines(BATCH_LINES_MAX + 1), Err(Refusal::InvalidInput));
        let largest = TellerRequest {
            session: Some(SessionToken(u128::MAX)),
            op: lines(BATCH_LINES_MAX),
            seal: Some(crate::seal::Seal {
                to: BranchId(999),
                nonce: u64::MAX,
                expires_at_ms: u64::MAX,
                signature: vec![0xff; 64],
            }),
        };
        let bytes = crate::encode(&largest).expect("encodes");
        assert!(
            bytes.len() < crate::limits::MESSAGE_BYTES_MAX / 8,
            "{}",
            bytes.len()
        );
    }

    fn check(session: bool, op: TellerOp, expected: Result<(), Refusal>) {
        let req = TellerRequest::new(session.then_some(SessionToken(7)), op.clone());
        assert_eq!(req.validate(), expected, "{op:?}");
    }

    fn customer(phone: &str, first: &str) -> NewCustomer {
        NewCustomer {
            national_id: "AB123".into(),
            phone: phone.into(),
            first_name: first.into(),
            last_name: "Rao".into(),
            sms_opt_in: true,
        }
    }

    #[test]
    fn session_tokens_name_their_issuer() {
        let t = SessionToken::new(BranchId(999), u128::MAX);
        assert_eq!(t.issuer(), BranchId(999));
        assert_eq!(SessionToken::new(BranchId(1), 5).issuer(), BranchId(1));
        assert_eq!(SessionToken::new(BranchId(1), 5).0 & 0xff, 5);
    }

    #[test]
    fn validation_table() {
        let amt = |m| Amount::from_minor(m).expect("non-negative");
        let login = |u: &str, p: &str| TellerOp::Login {
            user: u.into(),
            password: p.into(),
            otp: None,
        };
        // Policy is for new passwords: an old short one still logs in.
        check(false, login("admin", "pw"), Ok(()));
        let with_otp = |otp: &str| TellerOp::Login {
            user: "admin".into(),
            password: "pw".into(),
            otp: Some(otp.into()),
        };
        check(false, with_otp("012345"), Ok(()));
        for bad in ["12345", "1234567", "12345a", ""] {
            check(false, with_otp(bad), Err(Refusal::BadCredentials));
        }
        check(false, login("", "pw"), Err(Refusal::BadCredentials));
        check(false, login("admin", ""), Err(Refusal::BadCredentials));
        check(
            false,
            login("admin", &"x".repeat(PASSWORD_BYTES_MAX + 1)),
            Err(Refusal::BadCredentials),
        );
        check(false, TellerOp::Balance { account: acct(1) }, Ok(()));
        check(true, TellerOp::Balance { account: acct(1) }, Ok(()));
        check(
            true,
            TellerOp::Deposit {
                id: TransferId(1),
                account: acct(1),
                amount: amt(1),
            },
            Ok(()),
        );
        check(
            true,
            TellerOp::Withdraw {
                id: TransferId(1),
                account: acct(1),
                amount: amt(0),
            },
            Ok(()), // refused, and recorded, by the account's branch
        );
        let spec = TransferSpec {
            id: TransferId(1),
            from: acct(1),
            to: acct(1),
            amount: amt(5),
        };
        check(true, TellerOp::Transfer(spec), Ok(())); // likewise
        let page = |limit| PageRequest {
            before: None,
            limit,
        };
        check(
            true,
            TellerOp::History {
                account: acct(1),
                page: page(0),
            },
            Err(Refusal::InvalidInput),
        );
        check(
            true,
            TellerOp::History {
                account: acct(1),
                page: page(PAGE_ROWS_MAX),
            },
            Ok(()),
        );
        let open = |c, p: &str| TellerOp::OpenAccount {
            customer: c,
            password: p.into(),
            existing: None,
        };
        check(
            true,
            open(customer("+91 98765 43210", "Asha"), "river-otter-42"),
            Ok(()),
        );
        for weak in ["pw", "seven77", "Password123", "QWERTYUIOP", "12345678"] {
            check(
                true,
                open(customer("+91 98765 43210", "Asha"), weak),
                Err(Refusal::WeakPassword),
            );
        }
        check(
            true,
            open(customer("call me", "Asha"), "pw"),
            Err(Refusal::InvalidInput),
        );
        check(
            true,
            open(customer("123", "  "), "pw"),
            Err(Refusal::InvalidInput),
        );
        check(
            true,
            open(customer("123", "A\u{7}"), "pw"),
            Err(Refusal::InvalidInput),
        );
        check(
            true,
            open(customer("123", "Asha"), ""),
            Err(Refusal::WeakPassword),
        );
    }
}
