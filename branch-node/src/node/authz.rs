//! The one authorization table: (role, session issuer, the account's branch, operation)
//! -> allow or deny. Every teller request with a session passes through [`check`] at the
//! branch that issued the session, which is the only branch that runs it (any other
//! branch forwards it there), so local, forwarded and second-connection requests meet
//! the same rule in the same place.
//!
//! | operation                                         | customer            | admin                          |
//! |---------------------------------------------------|---------------------|--------------------------------|
//! | logout                                            | yes                 | yes                            |
//! | balance, history, deposit, withdraw, transfer[^1] | own account         | an account of the issuing branch |
//! | transfer-status                                   | touches own account | touches the issuing branch     |
//! | open-account, close-account                       | no                  | the issuing branch (`existing`/closed account there) |
//! | list accounts / transactions, trace, in-doubt, reconcile, set-link-fault | no | yes                  |
//! | enroll-otp (for `user`)                           | own login           | a login of the issuing branch  |
//! | transfer-batch                                    | each line as a transfer[^2] | each line as a transfer |
//! | payee (whom a transfer to an account pays)        | yes, limited[^3]    | yes, limited                   |
//! | own-accounts                                      | own accounts, now   | none                           |
//!
//! [^1]: for a transfer, the account money leaves (`from`); it may go anywhere. A
//! customer's deposit is at most the branch's limit ([`deposit_within`]).
//! [^2]: the batch needs a session; each line is then checked with [`may_touch`] on
//! its `from`, and a line refused `unauthorized` never reaches the store while the
//! others go on.
//! [^3]: any account of the network: the owner's masked name, at most
//! `PAYEE_LOOKUPS_PER_WINDOW` a minute per login (`lookups.rs`).

use wire::teller::{Role, TellerOp};
use wire::{AccountNumber, Amount, BranchId, Refusal};

use super::sessions::SessionInfo;

/// What an operation needs of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any live session.
    Session,
    /// A customer's own account, or for an admin an account of the issuing branch.
    Account(AccountNumber),
    /// An admin, for an action on the issuing branch (optionally on one of its accounts).
    Admin(Option<AccountNumber>),
    /// Decided against the accounts of the id's record, once it is read ([`may_see`]).
    Record,
    /// A login's own session, or an admin (for a login of the issuing branch).
    Login,
}

/// The row of the table for `op`.
pub fn access(op: &TellerOp) -> Access {
    match op {
        TellerOp::Login { .. }
        | TellerOp::SealedLogin { .. }
        | TellerOp::Logout
        | TellerOp::TransferBatch { .. }
        | TellerOp::Payee { .. }
        | TellerOp::OwnAccounts => Access::Session,
        TellerOp::Balance { account }
        | TellerOp::History { account, .. }
        | TellerOp::Deposit { account, .. }
        | TellerOp::Withdraw { account, .. } => Access::Account(*account),
        TellerOp::Transfer(spec) => Access::Account(spec.from),
        TellerOp::TransferStatus { .. } => Access::Record,
        TellerOp::EnrollOtp { .. } => Access::Login,
        TellerOp::OpenAccount { existing, .. } => Access::Admin(*existing),
        TellerOp::CloseAccount { account, .. } | TellerOp::RevealNationalId { account, .. } => {
            Access::Admin(Some(*account))
        }
        TellerOp::ListAccounts { .. }
        | TellerOp::ListTransactions { .. }
        | TellerOp::Trace { .. }
        | TellerOp::InDoubt
        | TellerOp::Reconcile { .. }
        | TellerOp::FindCustomer { .. }
        | TellerOp::SetLinkFault { .. } => Access::Admin(None),
    }
}

/// Refuses a customer's deposit above `max` (the branch's limit, set at `init`):
/// an admin makes larger ones.
pub fn deposit_within(session: &SessionInfo, op: &TellerOp, max: Amount) -> Result<(), Refusal> {
    match op {
        TellerOp::Deposit { amount, .. } if session.role == Role::Customer && *amount > max => {
            Err(Refusal::DepositLimit)
        }
        _ => Ok(()),
    }
}

/// Allows `op` for `session` at branch `me`, or refuses it `Unauthorized`. A session is
/// used only at the branch that issued it.
pub fn check(session: &SessionInfo, me: BranchId, op: &TellerOp) -> Result<(), Refusal> {
    let ok = session.issuer == me
        && match access(op) {
            Access::Session | Access::Record => true,
            Access::Login => {
                session.role == Role::Admin
                    || matches!(op, TellerOp::EnrollOtp { user, .. } if *user == session.login)
            }
            Access::Account(n) => may_touch(session, n),
            Access::Admin(n) => {
                session.role == Role::Admin && n.is_none_or(|n| may_touch(session, n))
            }
        };
    if ok {
        Ok(())
    } else {
        Err(Refusal::Unauthorized)
    }
}

/// May `session` act on account `n`? Customers: their own accounts. Admins: the
/// accounts of the branch that issued their session.
pub fn may_touch(session: &SessionInfo, n: AccountNumber) -> bool {
    match session.role {
        Role::Admin => n.branch() == session.issuer,
        Role::Customer => session.accounts.contains(&n),
    }
}

/// May `session` see the record of an id that touches `accounts`, kept at the session's
/// issuing branch? When one of them is its to touch. A record that names no account
/// (an abort that arrived before any prepare) is a leg of this branch: its admin's.
pub fn may_see(session: &SessionInfo, accounts: &[AccountNumber]) -> bool {
    if accounts.is_empty() {
        return session.role == Role::Admin;
    }
    accounts.iter().any(|n| may_touch(session, *n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::teller::{NewCustomer, PageRequest, Scope};
    use wire::twopc::TransferSpec;
    use wire::{Amount, TransferId};

    const ME: BranchId = BranchId(1);

    fn acct(branch: u16, serial: u32) -> AccountNumber {
        AccountNumber::new(BranchId(branch), serial).expect("valid")
    }

    fn session(role: Role, issuer: u16) -> SessionInfo {
        SessionInfo {
            login: "someone".into(),
            role,
            accounts: if role == Role::Customer {
                vec![acct(issuer, 1)]
            } else {
                vec![]
            },
            issuer: BranchId(issuer),
            expires_at_ms: 0,
        }
    }

    /// Every operation on `n`: (name, op).
    fn ops(n: AccountNumber) -> Vec<TellerOp> {
        let amount = Amount::from_minor(100).expect("positive");
        let page = PageRequest {
            before: None,
            limit: 10,
        };
        vec![
            TellerOp::Logout,
            TellerOp::Balance { account: n },
            TellerOp::History { account: n, page },
            TellerOp::Deposit {
                id: TransferId(1),
                account: n,
                amount,
            },
            TellerOp::Withdraw {
                id: TransferId(1),
                account: n,
                amount,
            },
            TellerOp::Transfer(TransferSpec {
                id: TransferId(1),
                from: n,
                to: acct(9, 9),
                amount,
            }),
            TellerOp::TransferStatus { id: TransferId(1) },
            TellerOp::OpenAccount {
                customer: NewCustomer {
                    national_id: "X".into(),
                    phone: "1".into(),
                    first_name: "A".into(),
                    last_name: "B".into(),
                    sms_opt_in: false,
                },
                password: "pw".into(),
                existing: Some(n),
            },
            TellerOp::CloseAccount {
                account: n,
                admin_password: "pw".into(),
            },
            TellerOp::ListAccounts {
                scope: Scope::Network,
                page: wire::teller::AccountsPage {
                    after: None,
                    limit: 10,
                },
            },
            TellerOp::ListTransactions {
                scope: Scope::Branch,
                page,
                filter: wire::teller::EntryFilter::default(),
                network: Vec::new(),
            },
            TellerOp::Trace {
                id: wire::TransferId(1),
            },
            TellerOp::InDoubt,
            TellerOp::Reconcile { cut_ms: 1 },
            TellerOp::FindCustomer {
                national_id: "X".into(),
            },
            TellerOp::RevealNationalId {
                account: n,
                admin_password: "pw".into(),
            },
        ]
    }

    /// `allowed` names the operations (by `TellerOp::name`) the session may run on `n`.
    fn check_row(s: &SessionInfo, n: AccountNumber, allowed: &[&str]) {
        for op in ops(n) {
            let want = allowed.contains(&op.name());
            assert_eq!(
                check(s, ME, &op).is_ok(),
                want,
                "{:?} at b{} (issuer b{}) {} on {n}",
                s.role,
                ME.0,
                s.issuer.0,
                op.name()
            );
        }
    }

    const MONEY: [&str; 5] = ["balance", "history", "deposit", "withdraw", "transfer"];

    #[test]
    fn the_table() {
        let all_session = ["logout", "transfer-status"];
        let customer = session(Role::Customer, 1);
        let own: Vec<&str> = all_session.iter().chain(&MONEY).copied().collect();
        check_row(&customer, acct(1, 1), &own);
        check_row(&customer, acct(1, 2), &all_session);
        check_row(&customer, acct(2, 1), &all_session);
        let admin = session(Role::Admin, 1);
        let everything: Vec<&str> = ops(acct(1, 1)).iter().map(TellerOp::name).collect();
        check_row(&admin, acct(1, 7), &everything);
        // Another branch's account: no money, no close; the listings stay allowed.
        check_row(
            &admin,
            acct(2, 7),
            &[
                "logout",
                "transfer-status",
                "list-accounts",
                "list-transactions",
                "trace",
                "in-doubt",
                "reconcile",
                "find-customer",
            ],
        );
    }

    #[test]
    fn a_session_is_used_only_where_it_was_issued() {
        // The theft the outside test found: an admin of branch 2 debiting a branch-1
        // account through branch 1. Here the session's issuer is 2, the branch is 1.
        for role in [Role::Admin, Role::Customer] {
            check_row(&session(role, 2), acct(1, 1), &[]);
            check_row(&session(role, 2), acct(2, 1), &[]);
        }
    }

    #[test]
    fn records_are_seen_by_whom_they_touch() {
        let customer = session(Role::Customer, 1);
        assert!(may_see(&customer, &[acct(2, 5), acct(1, 1)]));
        assert!(!may_see(&customer, &[acct(1, 2), acct(2, 1)]));
        assert!(!may_see(&customer, &[]));
        let admin = session(Role::Admin, 1);
        assert!(may_see(&admin, &[acct(2, 5), acct(1, 9)]));
        assert!(!may_see(&admin, &[acct(2, 5), acct(3, 9)]));
        assert!(
            may_see(&admin, &[]),
            "a leg that names no account is the branch's own"
        );
    }
}
