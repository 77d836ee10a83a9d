//! The teller service: authorizes and validates every teller request before it touches
//! the store, runs it here or forwards it to the branch that holds the account or the
//! session, and answers forwarded requests from other branches.
//!
//! Routing: a customer's login, session and accounts live at their account's branch.
//! A request with another branch's session is forwarded there, except a transfer (and
//! its status), which is coordinated here after the issuing branch vouches for the
//! session. Admins act on their own branch's accounts and may list the whole network.

use std::sync::{Arc, Mutex};

use futures::future::join_all;
use libp2p::PeerId;
use wire::link::{ForwardRequest, LinkRequest, LinkResponse, SessionInfo};
use wire::teller::{
    AccountView, EntryView, Role, Scope, SessionToken, TellerOp, TellerRequest, TellerResponse,
};
use wire::{AccountNumber, BranchId, Refusal};

use super::engine::EngineHandle;
use super::now_ms;
use super::sessions::Sessions;
use crate::network_file::NetworkFile;
use crate::p2p::network::Client;
use crate::store::writer::WriterHandle;
use crate::store::{Movement, StoreError, bank, twopc};

/// Everything a branch needs to answer tellers and forwarded requests.
#[derive(Debug)]
pub struct Service {
    pub(crate) me: BranchId,
    pub(crate) network: Arc<NetworkFile>,
    pub(crate) writer: WriterHandle,
    pub(crate) engine: EngineHandle,
    pub(crate) client: Client,
    pub(crate) sessions: Mutex<Sessions>,
    /// Whether admins may use the fault switch (`branch-node run --fault-switch`).
    pub(crate) fault_switch: bool,
}

type Answer = Result<TellerResponse, Refusal>;

fn store_failed(e: StoreError) -> Refusal {
    tracing::error!("store failed: {e}");
    Refusal::StoreUnavailable
}

impl Service {
    /// Answers one teller request from `peer`. `forwarded` is true when another branch
    /// passed it on; such a request is never forwarded again.
    pub async fn teller(
        &self,
        peer: PeerId,
        request: TellerRequest,
        forwarded: bool,
    ) -> TellerResponse {
        let op = op_name(&request.op);
        match self.route(peer, request, forwarded).await {
            Ok(r) => r,
            Err(refusal) => {
                tracing::info!(%peer, op, %refusal, "teller request refused");
                TellerResponse::Refused(refusal)
            }
        }
    }

    async fn route(&self, peer: PeerId, request: TellerRequest, forwarded: bool) -> Answer {
        request.validate()?;
        if let TellerOp::Login { user, password } = &request.op {
            return match user.parse::<AccountNumber>() {
                Ok(a) if a.branch() != self.me && !forwarded => {
                    self.forward_teller(a.branch(), peer, request).await
                }
                Ok(a) if a.branch() != self.me => Err(Refusal::BadCredentials),
                _ => self.login(peer, user.clone(), password.clone()).await,
            };
        }
        let token = request.session.ok_or(Refusal::SessionExpired)?;
        let issuer = token.issuer();
        if issuer == self.me {
            let info = self.local_session(token, &peer)?;
            return self.execute(peer, token, info, request.op).await;
        }
        if forwarded || self.network.get(issuer).is_none() {
            return Err(Refusal::SessionExpired);
        }
        match request.op {
            TellerOp::Transfer(_) | TellerOp::TransferStatus { .. } => {
                let info = self.remote_session(issuer, peer, token).await?;
                self.execute(peer, token, info, request.op).await
            }
            _ => self.forward_teller(issuer, peer, request).await,
        }
    }

    fn local_session(&self, token: SessionToken, peer: &PeerId) -> Result<SessionInfo, Refusal> {
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| Refusal::StoreUnavailable)?;
        sessions
            .get(token, peer, now_ms())
            .ok_or(Refusal::SessionExpired)
    }

    async fn link(&self, to: BranchId, request: ForwardRequest) -> Result<LinkResponse, Refusal> {
        let peer = self.network.get(to).ok_or(Refusal::UnknownBranch)?.peer_id;
        let response = tokio::time::timeout(
            std::time::Duration::from_millis(wire::limits::FORWARD_TIMEOUT_MS),
            self.client.link(peer, LinkRequest::Forward(request)),
        )
        .await;
        match response {
            Ok(Ok(LinkResponse::ForwardRefused(r))) => Err(r),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::info!(%to, "forward failed: {e}");
                Err(Refusal::BranchUnreachable)
            }
            Err(_) => Err(Refusal::BranchUnreachable),
        }
    }

    async fn forward_teller(&self, to: BranchId, peer: PeerId, request: TellerRequest) -> Answer {
        let forward = ForwardRequest::Teller {
            teller: peer.to_bytes(),
            request,
        };
        match self.link(to, forward).await? {
            LinkResponse::Teller(TellerResponse::Refused(r)) => Err(r),
            LinkResponse::Teller(r) => Ok(r),
            _ => Err(Refusal::BranchUnreachable),
        }
    }

    async fn remote_session(
        &self,
        issuer: BranchId,
        peer: PeerId,
        session: SessionToken,
    ) -> Result<SessionInfo, Refusal> {
        let ask = ForwardRequest::Session {
            teller: peer.to_bytes(),
            session,
        };
        match self.link(issuer, ask).await? {
            LinkResponse::Session(answer) => answer,
            _ => Err(Refusal::BranchUnreachable),
        }
    }

    async fn login(&self, peer: PeerId, user: String, password: String) -> Answer {
        let now = now_ms();
        let user_info = self
            .writer
            .login(user, password, now)
            .await
            .map_err(store_failed)??;
        let info = SessionInfo {
            login: user_info.login,
            role: user_info.role,
            accounts: user_info.accounts,
            expires_at_ms: 0,
        };
        let (session, info) = {
            let mut sessions = self
                .sessions
                .lock()
                .map_err(|_| Refusal::StoreUnavailable)?;
            sessions.open(peer, info, rand::random(), now)
        };
        tracing::info!(%peer, login = %info.login, role = ?info.role, "logged in");
        let numbers = info.accounts.clone();
        let accounts = self
            .writer
            .call(move |c, me| {
                let mut out = Vec::new();
                for n in numbers {
                    out.extend(bank::view(c, me, n)?);
                }
                Ok(out)
            })
            .await
            .map_err(store_failed)?;
        Ok(TellerResponse::LoggedIn {
            session,
            role: info.role,
            accounts,
            expires_at_ms: info.expires_at_ms,
        })
    }

    /// May this session act on account `n`? Customers: their own accounts. Admins: the
    /// accounts of this branch.
    fn may_touch(&self, info: &SessionInfo, n: AccountNumber) -> Result<(), Refusal> {
        let ok = match info.role {
            Role::Admin => n.branch() == self.me,
            Role::Customer => info.accounts.contains(&n),
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }

    fn admin(info: &SessionInfo) -> Result<(), Refusal> {
        if info.role == Role::Admin {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }

    async fn execute(
        &self,
        peer: PeerId,
        token: SessionToken,
        info: SessionInfo,
        op: TellerOp,
    ) -> Answer {
        let w = &self.writer;
        match op {
            TellerOp::Login { .. } => Err(Refusal::InvalidInput),
            TellerOp::Logout => {
                if let Ok(mut s) = self.sessions.lock() {
                    s.close(token, &peer);
                }
                Ok(TellerResponse::LoggedOut)
            }
            TellerOp::Balance { account } => {
                self.may_touch(&info, account)?;
                let view = w.call(move |c, me| bank::view(c, me, account)).await;
                Ok(TellerResponse::Account(
                    view.map_err(store_failed)?
                        .ok_or(Refusal::AccountNotFound)?,
                ))
            }
            TellerOp::Deposit {
                id,
                account,
                amount,
            }
            | TellerOp::Withdraw {
                id,
                account,
                amount,
            } => {
                self.may_touch(&info, account)?;
                let kind = if matches!(op, TellerOp::Deposit { .. }) {
                    Movement::Deposit
                } else {
                    Movement::Withdrawal
                };
                let state = w
                    .call(move |c, me| bank::movement(c, me, kind, id, account, amount, now_ms()))
                    .await
                    .map_err(store_failed)?;
                tracing::debug!(%id, %account, ?kind, ?state, "movement");
                Ok(TellerResponse::Receipt { id, state })
            }
            TellerOp::Transfer(spec) => {
                self.may_touch(&info, spec.from)?;
                if self.network.get(spec.to.branch()).is_none() {
                    return Err(Refusal::UnknownBranch);
                }
                let state = self.engine.transfer(spec).await;
                Ok(TellerResponse::Receipt { id: spec.id, state })
            }
            TellerOp::TransferStatus { id } => {
                let state = w
                    .call(move |c, _| twopc::transfer_state(c, id))
                    .await
                    .map_err(store_failed)?;
                Ok(TellerResponse::Status { id, state })
            }
            TellerOp::History { account, page } => {
                self.may_touch(&info, account)?;
                let (entries, next_before) = w
                    .call(move |c, me| bank::history(c, me, Some(account), page))
                    .await
                    .map_err(store_failed)?;
                Ok(TellerResponse::Entries {
                    entries,
                    next_before,
                })
            }
            TellerOp::OpenAccount {
                customer,
                password,
                existing,
            } => {
                Self::admin(&info)?;
                let hash =
                    tokio::task::spawn_blocking(move || crate::store::hash_password(&password))
                        .await
                        .map_err(|_| Refusal::StoreUnavailable)?
                        .map_err(store_failed)?;
                let opened = w
                    .call(move |c, me| {
                        bank::open_account(c, me, &customer, &hash, existing, now_ms())
                    })
                    .await
                    .map_err(store_failed)??;
                tracing::info!(account = %opened.number, "account opened");
                Ok(TellerResponse::AccountOpened(opened))
            }
            TellerOp::CloseAccount {
                account,
                admin_password,
            } => {
                Self::admin(&info)?;
                self.may_touch(&info, account)?;
                w.login(info.login.clone(), admin_password, now_ms())
                    .await
                    .map_err(store_failed)?
                    .map_err(|_| Refusal::BadCredentials)?;
                let closed = w
                    .call(move |c, me| bank::close_account(c, me, account, now_ms()))
                    .await
                    .map_err(store_failed)??;
                tracing::info!(%account, "account closed");
                Ok(TellerResponse::AccountClosed(closed))
            }
            TellerOp::ListAccounts { scope } => {
                Self::admin(&info)?;
                Ok(TellerResponse::Accounts(self.accounts(scope).await?))
            }
            TellerOp::ListTransactions { scope, page } => {
                Self::admin(&info)?;
                let (entries, next_before) = self.transactions(scope, page).await?;
                Ok(TellerResponse::Entries {
                    entries,
                    next_before,
                })
            }
            TellerOp::SetLinkFault { branch, fault } => {
                Self::admin(&info)?;
                if !self.fault_switch {
                    return Err(Refusal::Unauthorized);
                }
                let peer = self
                    .network
                    .get(branch)
                    .ok_or(Refusal::UnknownBranch)?
                    .peer_id;
                self.client.set_fault(peer, fault).await;
                Ok(TellerResponse::LinkFaultSet { branch, fault })
            }
        }
    }

    async fn local_accounts(&self) -> Result<Vec<AccountView>, Refusal> {
        self.writer.call(bank::list).await.map_err(store_failed)
    }

    async fn accounts(&self, scope: Scope) -> Result<Vec<AccountView>, Refusal> {
        let mut all = self.local_accounts().await?;
        if scope == Scope::Network {
            let others = self.network.branches().filter(|b| b.id != self.me);
            let answers = join_all(others.map(|b| self.link(b.id, ForwardRequest::Accounts))).await;
            for a in answers {
                match a? {
                    LinkResponse::Accounts(v) => all.extend(v),
                    _ => return Err(Refusal::BranchUnreachable),
                }
            }
        }
        Ok(all)
    }

    async fn local_transactions(
        &self,
        page: wire::teller::PageRequest,
    ) -> Result<(Vec<EntryView>, Option<u64>), Refusal> {
        self.writer
            .call(move |c, me| bank::history(c, me, None, page))
            .await
            .map_err(store_failed)
    }

    /// A page of this branch's ledger; with `Scope::Network`, the same page of every
    /// branch's ledger, newest first (there is no network-wide cursor, so no next page).
    async fn transactions(
        &self,
        scope: Scope,
        page: wire::teller::PageRequest,
    ) -> Result<(Vec<EntryView>, Option<u64>), Refusal> {
        let (mut all, next) = self.local_transactions(page).await?;
        if scope == Scope::Branch {
            return Ok((all, next));
        }
        let others = self.network.branches().filter(|b| b.id != self.me);
        let asks = others.map(|b| self.link(b.id, ForwardRequest::Transactions { page }));
        for a in join_all(asks).await {
            match a? {
                LinkResponse::Entries { entries, .. } => all.extend(entries),
                _ => return Err(Refusal::BranchUnreachable),
            }
        }
        all.sort_by_key(|e| std::cmp::Reverse((e.at_ms, e.branch, e.seq)));
        all.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        Ok((all, None))
    }

    /// Answers a forwarded request from branch peer `from` (already checked as listed).
    pub async fn forwarded(self: Arc<Self>, from: PeerId, request: ForwardRequest) -> LinkResponse {
        match request {
            ForwardRequest::Teller { teller, request } => match PeerId::from_bytes(&teller) {
                Ok(peer) => LinkResponse::Teller(self.teller(peer, request, true).await),
                Err(_) => LinkResponse::ForwardRefused(Refusal::InvalidInput),
            },
            ForwardRequest::Session { teller, session } => {
                let answer = PeerId::from_bytes(&teller)
                    .map_err(|_| Refusal::InvalidInput)
                    .and_then(|peer| self.local_session(session, &peer));
                if let Err(r) = &answer {
                    tracing::info!(%from, %r, "session check refused");
                }
                LinkResponse::Session(answer)
            }
            ForwardRequest::Accounts => match self.local_accounts().await {
                Ok(v) => LinkResponse::Accounts(v),
                Err(r) => LinkResponse::ForwardRefused(r),
            },
            ForwardRequest::Transactions { page } => {
                if !(1..=wire::limits::PAGE_ROWS_MAX).contains(&page.limit) {
                    return LinkResponse::ForwardRefused(Refusal::InvalidInput);
                }
                match self.local_transactions(page).await {
                    Ok((entries, next_before)) => LinkResponse::Entries {
                        entries,
                        next_before,
                    },
                    Err(r) => LinkResponse::ForwardRefused(r),
                }
            }
        }
    }
}

fn op_name(op: &TellerOp) -> &'static str {
    match op {
        TellerOp::Login { .. } => "login",
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
    }
}
