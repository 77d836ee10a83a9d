//! The typed client: one method per request that answers with one kind of data, each
//! matching the branch's answer once (anything else is [`TellerError::Unexpected`],
//! naming the request and the answer). The console and the menus call these instead
//! of matching a bare [`TellerResponse`] at every site. Each renews a lost session
//! with the kept credentials, as [`Teller::call_renewing`] does.

use wire::teller::{
    AccountView, AccountsPage, EntryFilter, EntryView, NetworkCursor, NewCustomer, PageRequest,
    Scope, TellerOp, TellerResponse, TransferState,
};
use wire::{AccountNumber, BranchId, TransferId};

use crate::{Teller, TellerError};

/// A page of ledger entries, newest first, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Entries {
    pub entries: Vec<EntryView>,
    /// One branch's next page, if any.
    pub next_before: Option<u64>,
    /// The network's next page, if any.
    pub next_network: Option<NetworkCursor>,
    /// Branches that did not answer a network listing.
    pub unreachable: Vec<BranchId>,
}

/// A page of accounts, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Accounts {
    pub accounts: Vec<AccountView>,
    pub next_after: Option<AccountNumber>,
    /// Branches that did not answer a network listing.
    pub unreachable: Vec<BranchId>,
}

/// Whom a transfer to an account pays: its owner's name as the bank masks it, and
/// whether the account is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payee {
    pub account: AccountNumber,
    pub name: String,
    pub open: bool,
}

/// A login enrolled for one-time codes, and the `otpauth://` URI to give an app.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub user: String,
    pub uri: String,
}

impl Teller {
    /// An account's balance, held and available amounts.
    pub async fn balance(&mut self, account: AccountNumber) -> Result<AccountView, TellerError> {
        let op = TellerOp::Balance { account };
        match self.call_renewing(op).await? {
            TellerResponse::Account(a) => Ok(a),
            other => Err(TellerError::unexpected("balance", &other)),
        }
    }

    /// Whom a transfer to `account` would pay (the owner's masked name), to confirm
    /// before sending; nothing moves. A few dozen a minute per login.
    pub async fn payee(&mut self, account: AccountNumber) -> Result<Payee, TellerError> {
        match self.call_renewing(TellerOp::Payee { account }).await? {
            TellerResponse::Payee {
                account,
                name,
                open,
            } => Ok(Payee {
                account,
                name,
                open,
            }),
            other => Err(TellerError::unexpected("payee", &other)),
        }
    }

    /// The login's own accounts as they are now, with balances (one opened since the
    /// login included); an admin has none.
    pub async fn own_accounts(&mut self) -> Result<Vec<AccountView>, TellerError> {
        match self.call_renewing(TellerOp::OwnAccounts).await? {
            TellerResponse::Accounts { accounts, .. } => Ok(accounts),
            other => Err(TellerError::unexpected("own-accounts", &other)),
        }
    }

    /// A page of one account's history.
    pub async fn history(
        &mut self,
        account: AccountNumber,
        page: PageRequest,
    ) -> Result<Entries, TellerError> {
        let answer = self
            .call_renewing(TellerOp::History { account, page })
            .await?;
        entries_of("history", answer)
    }

    /// A page of the branch's or the network's transactions.
    pub async fn transactions(
        &mut self,
        scope: Scope,
        page: PageRequest,
        filter: EntryFilter,
        network: NetworkCursor,
    ) -> Result<Entries, TellerError> {
        let op = TellerOp::ListTransactions {
            scope,
            page,
            filter,
            network,
        };
        entries_of("list-transactions", self.call_renewing(op).await?)
    }

    /// Where transfer (or deposit, or withdrawal) `id` stands.
    pub async fn transfer_status(&mut self, id: TransferId) -> Result<TransferState, TellerError> {
        match self.call_renewing(TellerOp::TransferStatus { id }).await? {
            TellerResponse::Status { state, .. } => Ok(state),
            other => Err(TellerError::unexpected("transfer-status", &other)),
        }
    }

    /// A page of the branch's or the network's accounts.
    pub async fn accounts(
        &mut self,
        scope: Scope,
        page: AccountsPage,
    ) -> Result<Accounts, TellerError> {
        match self
            .call_renewing(TellerOp::ListAccounts { scope, page })
            .await?
        {
            TellerResponse::Accounts {
                accounts,
                next_after,
                unreachable,
            } => Ok(Accounts {
                accounts,
                next_after,
                unreachable,
            }),
            other => Err(TellerError::unexpected("list-accounts", &other)),
        }
    }

    /// Opens an account for a new customer, or (`existing`) for the owner of one.
    pub async fn open_account(
        &mut self,
        customer: NewCustomer,
        password: String,
        existing: Option<AccountNumber>,
    ) -> Result<AccountView, TellerError> {
        let op = TellerOp::OpenAccount {
            customer,
            password,
            existing,
        };
        match self.call_renewing(op).await? {
            TellerResponse::AccountOpened(a) => Ok(a),
            other => Err(TellerError::unexpected("open-account", &other)),
        }
    }

    /// Closes an account with no balance and nothing held.
    pub async fn close_account(
        &mut self,
        account: AccountNumber,
        admin_password: String,
    ) -> Result<AccountView, TellerError> {
        let op = TellerOp::CloseAccount {
            account,
            admin_password,
        };
        match self.call_renewing(op).await? {
            TellerResponse::AccountClosed(a) => Ok(a),
            other => Err(TellerError::unexpected("close-account", &other)),
        }
    }

    /// Enrols `user` for one-time codes (its password again, as proof).
    pub async fn enroll_otp(
        &mut self,
        user: String,
        password: String,
    ) -> Result<Enrolled, TellerError> {
        match self
            .call_renewing(TellerOp::EnrollOtp { user, password })
            .await?
        {
            TellerResponse::OtpEnrolled { user, uri } => Ok(Enrolled { user, uri }),
            other => Err(TellerError::unexpected("enroll-otp", &other)),
        }
    }
}

fn entries_of(asked: &'static str, answer: TellerResponse) -> Result<Entries, TellerError> {
    match answer {
        TellerResponse::Entries {
            entries,
            next_before,
            next_network,
            unreachable,
        } => Ok(Entries {
            entries,
            next_before,
            next_network,
            unreachable,
        }),
        other => Err(TellerError::unexpected(asked, &other)),
    }
}
