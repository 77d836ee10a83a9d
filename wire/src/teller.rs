//! The teller protocol: what `teller-cli` asks a branch and what the branch answers.
//!
//! Teller traffic is not signed per message: the libp2p Noise channel authenticates the
//! teller's PeerId, and a session token from `Login` is bound to that PeerId by the
//! branch. Every request is checked with [`TellerRequest::validate`] before it reaches
//! a store, and every refusal comes back as [`TellerResponse::Refused`].

use serde::{Deserialize, Serialize};

use crate::account::AccountNumber;
use crate::ids::{BranchId, TransferId};
use crate::limits::{LINK_DELAY_MS_MAX, PAGE_ROWS_MAX, PASSWORD_BYTES_MAX, TEXT_FIELD_BYTES_MAX};
use crate::money::Amount;
use crate::refusal::Refusal;
use crate::twopc::TransferSpec;

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
    Login {
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
    ListAccounts {
        scope: Scope,
    },
    ListTransactions {
        scope: Scope,
        page: PageRequest,
    },
    /// Admin, on a node started with `--fault-switch`: block or delay the link to `branch`.
    SetLinkFault {
        branch: BranchId,
        fault: LinkFault,
    },
}

/// A request: the session (absent only for `Login`) and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TellerRequest {
    pub session: Option<SessionToken>,
    pub op: TellerOp,
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
}

impl TellerOp {
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

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferDebit,
    TransferCredit,
}

/// One ledger entry as a teller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EntryView {
    pub branch: BranchId,
    pub seq: u64,
    #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
    pub account: AccountNumber,
    pub kind: EntryKind,
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
    )]
    pub counterparty: Option<AccountNumber>,
    pub amount: Amount,
    pub balance_after: Amount,
    pub transfer_id: TransferId,
    pub at_ms: u64,
}

/// Where a transfer (or deposit or withdrawal) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TransferState {
    Committed,
    Aborted(Refusal),
    /// Prepared, decision not yet reached: ask again.
    Pending,
    /// This branch has no record of the id.
    Unknown,
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
    },
    LoggedOut,
    Account(AccountView),
    /// Outcome of a deposit, withdrawal or transfer; a repeat of the id gets the same.
    Receipt {
        id: TransferId,
        state: TransferState,
    },
    Entries {
        entries: Vec<EntryView>,
        next_before: Option<u64>,
    },
    Status {
        id: TransferId,
        state: TransferState,
    },
    AccountOpened(AccountView),
    AccountClosed(AccountView),
    Accounts(Vec<AccountView>),
    LinkFaultSet {
        branch: BranchId,
        fault: LinkFault,
    },
    Refused(Refusal),
}

fn text_ok(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= TEXT_FIELD_BYTES_MAX && !s.chars().any(char::is_control)
}

fn password_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= PASSWORD_BYTES_MAX
}

fn page_ok(p: &PageRequest) -> bool {
    (1..=PAGE_ROWS_MAX).contains(&p.limit)
}

impl TellerRequest {
    /// Checks everything that needs no store: field lengths, amounts, page sizes and
    /// that a session is present where one is needed. Authorization comes after.
    pub fn validate(&self) -> Result<(), Refusal> {
        let movable = |a: &Amount| {
            a.validate_movable()
                .map(|_| ())
                .map_err(|_| Refusal::InvalidAmount)
        };
        match (&self.op, self.session) {
            (TellerOp::Login { user, password }, _) => {
                if text_ok(user) && password_ok(password) {
                    Ok(())
                } else {
                    Err(Refusal::BadCredentials)
                }
            }
            (_, None) => Err(Refusal::SessionExpired),
            (TellerOp::Deposit { amount, .. } | TellerOp::Withdraw { amount, .. }, _) => {
                movable(amount)
            }
            (TellerOp::Transfer(spec), _) => spec.validate(),
            (TellerOp::History { page, .. } | TellerOp::ListTransactions { page, .. }, _) => {
                if page_ok(page) {
                    Ok(())
                } else {
                    Err(Refusal::InvalidInput)
                }
            }
            (
                TellerOp::OpenAccount {
                    customer, password, ..
                },
                _,
            ) => {
                let c = customer;
                let fields = [&c.national_id, &c.phone, &c.first_name, &c.last_name];
                let phone_ok = c
                    .phone
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == '+' || ch == ' ');
                if fields.iter().all(|f| text_ok(f)) && phone_ok && password_ok(password) {
                    Ok(())
                } else {
                    Err(Refusal::InvalidInput)
                }
            }
            (TellerOp::CloseAccount { admin_password, .. }, _) => {
                if password_ok(admin_password) {
                    Ok(())
                } else {
                    Err(Refusal::BadCredentials)
                }
            }
            (
                TellerOp::Logout
                | TellerOp::Balance { .. }
                | TellerOp::TransferStatus { .. }
                | TellerOp::ListAccounts { .. },
                _,
            ) => Ok(()),
            (TellerOp::SetLinkFault { fault, .. }, _) => match fault {
                LinkFault::Delayed { delay_ms } if *delay_ms > LINK_DELAY_MS_MAX => {
                    Err(Refusal::InvalidInput)
                }
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(serial: u32) -> AccountNumber {
        AccountNumber::new(BranchId(1), serial).expect("valid")
    }

    fn check(session: bool, op: TellerOp, expected: Result<(), Refusal>) {
        let req = TellerRequest {
            session: session.then_some(SessionToken(7)),
            op: op.clone(),
        };
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
        };
        check(false, login("admin", "pw"), Ok(()));
        check(false, login("", "pw"), Err(Refusal::BadCredentials));
        check(false, login("admin", ""), Err(Refusal::BadCredentials));
        check(
            false,
            login("admin", &"x".repeat(PASSWORD_BYTES_MAX + 1)),
            Err(Refusal::BadCredentials),
        );
        check(
            false,
            TellerOp::Balance { account: acct(1) },
            Err(Refusal::SessionExpired),
        );
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
            Err(Refusal::InvalidAmount),
        );
        let spec = TransferSpec {
            id: TransferId(1),
            from: acct(1),
            to: acct(1),
            amount: amt(5),
        };
        check(true, TellerOp::Transfer(spec), Err(Refusal::SameAccount));
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
            open(customer("+91 98765 43210", "Asha"), "pw"),
            Ok(()),
        );
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
            Err(Refusal::InvalidInput),
        );
    }
}
