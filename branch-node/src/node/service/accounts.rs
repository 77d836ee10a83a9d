//! Accounts: opening and closing them, listing them here and across the network,
//! confirming whom a transfer pays (a payee's masked name), and the admins' fault
//! switch.

use libp2p::PeerId;
use wire::link::{ForwardRequest, LinkResponse};
use wire::teller::SessionToken;
use wire::teller::{
    AccountView, AccountsPage, LinkFault, NewCustomer, Scope, TellerResponse, Unavailable,
};
use wire::{AccountNumber, BranchId, Refusal};

use super::{Answer, Fail, Service, store_failed};
use crate::node::now_ms;
use crate::node::sessions::SessionInfo;
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::{auth, bank};

impl Service {
    pub(super) async fn open_account(
        &self,
        customer: NewCustomer,
        password: String,
        existing: Option<AccountNumber>,
    ) -> Answer {
        let hash = tokio::task::spawn_blocking(move || crate::store::hash_password(&password))
            .await
            .map_err(|_| Unavailable::StoreFailed)?
            .map_err(store_failed)?;
        let opened = self
            .writer
            .call_write(WriteOp::open_account(
                self.writer.keys(),
                &customer,
                hash,
                existing,
            ))
            .await
            .and_then(WriteResult::into_account)
            .map_err(store_failed)??;
        tracing::info!(account = %opened.number, "account opened");
        Ok(TellerResponse::AccountOpened(opened))
    }

    /// Closes an empty account after the admin gives their password again; the
    /// account's login goes with it, and so do its sessions.
    pub(super) async fn close_account(
        &self,
        peer: PeerId,
        session: &SessionInfo,
        account: AccountNumber,
        admin_password: String,
    ) -> Answer {
        self.reauthenticate(peer, session, admin_password).await?;
        let closed = self
            .writer
            .call_write(WriteOp::CloseAccount {
                account,
                now_ms: now_ms(),
            })
            .await
            .and_then(WriteResult::into_account)
            .map_err(store_failed)??;
        let ended = self.sessions().end_login(&account.to_string());
        tracing::info!(%account, sessions_ended = ended, "account closed");
        Ok(TellerResponse::AccountClosed(closed))
    }

    /// The accounts here of the customer whose national id is `national_id`: found by
    /// its keyed hash, so nothing is decrypted to look.
    pub(super) async fn find_customer(&self, national_id: &str) -> Answer {
        let hash = bank::SealedId::new(self.writer.keys(), national_id).hash;
        let accounts = self
            .reader
            .read(move |c, me| bank::customer_accounts_by_id(c, me, &hash))
            .await
            .map_err(store_failed)?;
        Ok(TellerResponse::Accounts {
            accounts,
            next_after: None,
            unreachable: Vec::new(),
        })
    }

    /// The whole national id of `account`'s owner, for an admin who gave their password
    /// again; the reveal is in the audit trail (durably) before it is answered.
    pub(super) async fn reveal_national_id(
        &self,
        peer: PeerId,
        session: &SessionInfo,
        account: AccountNumber,
        admin_password: String,
    ) -> Answer {
        self.reauthenticate(peer, session, admin_password).await?;
        let sealed = self
            .writer
            .call_write(WriteOp::RevealNationalId {
                account,
                actor: session.login.clone(),
                now_ms: now_ms(),
            })
            .await
            .and_then(WriteResult::into_sealed)
            .map_err(store_failed)??;
        let national_id = self
            .writer
            .keys()
            .open(bank::NATIONAL_ID_PURPOSE, &sealed)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| {
                store_failed(crate::store::StoreError::Malformed(
                    "a national id does not open with this branch's vault key".into(),
                ))
            })?;
        tracing::info!(%account, admin = %session.login, "national id revealed (audit trail)");
        Ok(TellerResponse::NationalId {
            account,
            national_id,
        })
    }

    pub(super) async fn set_link_fault(&self, branch: BranchId, fault: LinkFault) -> Answer {
        if !self.fault_switch {
            return Err(Refusal::Unauthorized.into());
        }
        let listed = self.network.get(branch).ok_or(Refusal::UnknownBranch)?;
        for replica in &listed.replicas {
            self.client.set_fault(replica.peer_id, fault).await;
        }
        Ok(TellerResponse::LinkFaultSet { branch, fault })
    }

    /// A page of this branch's accounts after serial `after_serial`.
    /// Whom a transfer to `account` pays: its owner's masked name and whether it is
    /// open; asked of the account's branch. At most `PAYEE_LOOKUPS_PER_WINDOW` a
    /// window per login (then `throttled`, with the wait).
    pub(super) async fn payee(&self, session: &SessionInfo, account: AccountNumber) -> Answer {
        let admitted = self
            .lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&session.login, now_ms());
        if let Err(retry_after_ms) = admitted {
            return Err(Unavailable::Throttled { retry_after_ms }.into());
        }
        let (name, open) = if account.branch() == self.me {
            self.local_payee(account).await?
        } else {
            match self
                .link(account.branch(), ForwardRequest::Payee { account })
                .await?
            {
                LinkResponse::Payee { name, open } => (name, open),
                _ => return Err(Unavailable::NoAnswer(account.branch()).into()),
            }
        };
        Ok(TellerResponse::Payee {
            account,
            name,
            open,
        })
    }

    /// The session's customer's accounts as the store has them now, with balances;
    /// the session may use all of them from now on (a login reads the same list).
    pub(super) async fn own_accounts(&self, token: SessionToken, session: &SessionInfo) -> Answer {
        if session.role != wire::teller::Role::Customer {
            return Ok(TellerResponse::Accounts {
                accounts: Vec::new(),
                next_after: None,
                unreachable: Vec::new(),
            });
        }
        let login = session.login.clone();
        let accounts = self
            .reader
            .read(move |c, me| {
                let customer = match auth::login_read(c, &login)? {
                    auth::LoginRow::Found { customer_id, .. } => customer_id,
                    auth::LoginRow::Unknown => None,
                };
                let mut views = Vec::new();
                for n in auth::customer_accounts(c, me, customer)? {
                    views.extend(bank::view(c, me, n)?);
                }
                Ok(views)
            })
            .await
            .map_err(store_failed)?;
        let numbers = accounts.iter().map(|a| a.number).collect();
        self.sessions().set_accounts(token, numbers);
        Ok(TellerResponse::Accounts {
            accounts,
            next_after: None,
            unreachable: Vec::new(),
        })
    }

    /// This branch's account `account`: its owner's masked name and whether it is open.
    pub(super) async fn local_payee(&self, account: AccountNumber) -> Result<(String, bool), Fail> {
        if account.branch() != self.me {
            return Err(Refusal::AccountNotFound.into());
        }
        let view = self
            .reader
            .read(move |c, me| bank::view(c, me, account))
            .await
            .map_err(store_failed)?
            .ok_or(Refusal::AccountNotFound)?;
        let open = view.status == wire::teller::AccountStatus::Open;
        Ok((wire::teller::masked_name(&view.owner_name), open))
    }

    pub(super) async fn local_accounts(
        &self,
        after_serial: u32,
        limit: u32,
    ) -> Result<Vec<AccountView>, Fail> {
        self.reader
            .read(move |c, me| bank::list(c, me, after_serial, limit))
            .await
            .map_err(store_failed)
    }

    /// A page of accounts in account-number order. For the network, branches are read
    /// in id order from the cursor's branch on until the page is full; a branch that
    /// does not answer is named and passed over, so the rest still lists.
    pub(super) async fn accounts(&self, scope: Scope, page: AccountsPage) -> Answer {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let start = page.after.map_or(BranchId(0), |a| a.branch());
        let mut branches: Vec<BranchId> = match scope {
            Scope::Branch => vec![self.me],
            Scope::Network => self.network.branches().map(|b| b.id).collect(),
        };
        branches.sort();
        let (mut accounts, mut unreachable) = (Vec::new(), Vec::new());
        for b in branches.into_iter().filter(|b| *b >= start) {
            let want = limit - accounts.len();
            let after = page.after.filter(|a| a.branch() == b);
            let part = AccountsPage {
                after,
                limit: u32::try_from(want).unwrap_or(u32::MAX),
            };
            let after_serial = after.map_or(0, |a| a.serial());
            let got = if b == self.me {
                self.local_accounts(after_serial, part.limit).await
            } else {
                match self.link(b, ForwardRequest::Accounts { page: part }).await {
                    Ok(LinkResponse::Accounts(v)) => Ok(v),
                    Ok(_) => Err(Unavailable::NoAnswer(b).into()),
                    Err(e) => Err(e),
                }
            };
            match got {
                Ok(v) => accounts.extend(v.into_iter().take(want)),
                Err(Fail::Unavailable(_)) if b != self.me => unreachable.push(b),
                Err(e) => return Err(e),
            }
            if accounts.len() >= limit {
                break;
            }
        }
        let next_after = (accounts.len() >= limit)
            .then(|| accounts.last().map(|a| a.number))
            .flatten();
        Ok(TellerResponse::Accounts {
            accounts,
            next_after,
            unreachable,
        })
    }

    pub(super) fn others(&self) -> impl Iterator<Item = BranchId> + '_ {
        self.network
            .branches()
            .filter(|b| b.id != self.me)
            .map(|b| b.id)
    }
}
