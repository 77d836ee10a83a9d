//! The teller service: validates and authorizes every teller request before it touches
//! the store, runs it here or forwards it to the branch that must run it, and answers
//! requests forwarded by other branches.
//!
//! Routing, one rule: **a session's requests run at the branch that issued it.** A
//! customer logs in at their account's branch (a login sent elsewhere is forwarded
//! there) and an admin at the branch they administer, so the issuing branch owns every
//! account the session may touch: it is the authority for every money id the session
//! can send (it coordinates the transfer, or does the deposit or withdrawal), and it
//! checks the authorization table (`authz.rs`) for every request. Any other branch
//! only passes the request on, so a retry of an id reaches the same authority wherever
//! the teller connects, and nothing a teller sends can be authorized anywhere else.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use futures::future::join_all;
use libp2p::PeerId;
use wire::link::{EnvelopeRefusal, ForwardRequest, LinkRequest, LinkResponse};
use wire::teller::{
    AccountView, AccountsPage, EntryFilter, EntryView, LineAnswer, LineReceipt, LinkFault,
    NetworkCursor, NewCustomer, PageRequest, Scope, SessionToken, TellerOp, TellerRequest,
    TellerResponse, TransferState, Unavailable,
};
use wire::trace::{BranchTrace, StuckView};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use super::authz;
use super::engine::EngineHandle;
use super::listing;
use super::logins::Logins;
use super::now_ms;
use super::sessions::{SessionInfo, Sessions};
use crate::p2p::network::{Client, LinkError};
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::reader::Reader;
use crate::store::writer::WriterHandle;
use crate::store::{Movement, StoreError, bank, trace, twopc};
use client::network_file::NetworkFile;

/// Everything a branch needs to answer tellers and forwarded requests.
#[derive(Debug)]
pub struct Service {
    pub(crate) me: BranchId,
    pub(crate) network: Arc<NetworkFile>,
    pub(crate) writer: WriterHandle,
    pub(crate) engine: EngineHandle,
    pub(crate) client: Client,
    pub(crate) sessions: Mutex<Sessions>,
    /// The largest deposit a customer may make (`branch-node init`).
    pub(crate) customer_deposit_max: Amount,
    /// The teller seals taken on requests other branches passed on.
    pub(crate) seals: super::seals::Seals,
    /// Read-only connections: reads never wait behind the writer's batches.
    pub(crate) reader: Reader,
    /// The login throttle and the argon2 budget.
    pub(crate) logins: Arc<Logins>,
    /// Forwards in flight to each other branch, bounded by
    /// [`wire::limits::FORWARDS_PER_BRANCH_MAX`].
    pub(crate) forwards: std::collections::HashMap<BranchId, tokio::sync::Semaphore>,
    /// Forwards in flight for each teller, bounded by
    /// [`wire::limits::FORWARDS_PER_TELLER_MAX`]: one teller cannot take every forward.
    pub(crate) forwarders: Arc<super::shares::Shares>,
    /// Whether admins may use the fault switch (`branch-node run --fault-switch`).
    pub(crate) fault_switch: bool,
    /// The branch's key: signs its statements for `admin reconcile`.
    pub(crate) key: Arc<wire::BranchKey>,
    /// This copy's fence lease: no money moves, and no change is answered, without it.
    pub(crate) lease: super::fence::Lease,
}

/// Why a request got no business answer: a final refusal, or not carried out now.
#[derive(Debug)]
pub(crate) enum Fail {
    Refused(Refusal),
    Unavailable(Unavailable),
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refused(r)
    }
}

impl From<Unavailable> for Fail {
    fn from(u: Unavailable) -> Self {
        Fail::Unavailable(u)
    }
}

pub(crate) type Answer = Result<TellerResponse, Fail>;

/// A money state as a metrics label.
fn state_outcome(state: &TransferState) -> &'static str {
    match state {
        TransferState::Committed => "committed",
        TransferState::Aborted(r) => r.code(),
        TransferState::Pending => "pending",
        TransferState::Unknown => "unknown",
    }
}

/// What an answer came to, as a metrics label: "ok", a money state, a refusal code or
/// the code of why it was not carried out.
fn outcome_of(answer: &Answer) -> &'static str {
    match answer {
        Ok(TellerResponse::Receipt { state, .. }) => state_outcome(state),
        Ok(_) => "ok",
        Err(Fail::Refused(r)) => r.code(),
        Err(Fail::Unavailable(u)) => u.code(),
    }
}

/// What one line of a bulk payment came to, as the same label.
fn line_outcome(answer: &LineAnswer) -> &'static str {
    match answer {
        LineAnswer::State(state) => state_outcome(state),
        LineAnswer::Refused(r) => r.code(),
        LineAnswer::Unavailable(u) => u.code(),
    }
}

/// One money answer given here (a request's, or one line's of a bulk payment): counted
/// and timed, and logged with its id while the log's allowance lasts (past it, counted
/// as unlogged).
fn answered(kind: &'static str, id: TransferId, outcome: &'static str, started: Instant) {
    let metrics = crate::metrics::get();
    metrics.money_answer(kind, outcome, started);
    if crate::metrics::log_line_allowed() {
        let ms = started.elapsed().as_millis();
        tracing::info!(%id, kind, outcome, ms, "money answered");
    } else {
        metrics.money_lines_unlogged.inc();
    }
}

/// Whether `op` moves money or opens or closes an account: it needs this copy's fence
/// lease (`fence.rs`), and its answer is confirmed against it.
fn changes_books(op: &TellerOp) -> bool {
    matches!(
        op,
        TellerOp::Deposit { .. }
            | TellerOp::Withdraw { .. }
            | TellerOp::Transfer(_)
            | TellerOp::TransferBatch { .. }
            | TellerOp::OpenAccount { .. }
            | TellerOp::CloseAccount { .. }
    )
}

/// A store failure: logged here, and told as "may or may not have happened".
pub(crate) fn store_failed(e: StoreError) -> Fail {
    tracing::error!("store failed: {e}");
    Fail::Unavailable(Unavailable::StoreFailed)
}

impl Service {
    /// Answers one teller request from `peer`. `forwarded` is true when another branch
    /// passed it on; such a request is never forwarded again, and runs only under
    /// `peer`'s seal (`seals.rs`).
    pub async fn teller(
        &self,
        peer: PeerId,
        request: TellerRequest,
        forwarded: bool,
    ) -> TellerResponse {
        let op = request.op.name();
        match self.route(peer, request, forwarded).await {
            Ok(r) => r,
            Err(Fail::Refused(refusal)) => {
                tracing::info!(%peer, op, %refusal, "teller request refused");
                TellerResponse::Refused(refusal)
            }
            Err(Fail::Unavailable(why)) => {
                tracing::info!(%peer, op, %why, "teller request not carried out");
                TellerResponse::Unavailable(why)
            }
        }
    }

    async fn route(&self, peer: PeerId, request: TellerRequest, forwarded: bool) -> Answer {
        request.validate()?;
        if let TellerOp::Login { user, .. } | TellerOp::SealedLogin { user, .. } = &request.op {
            return match user.parse::<AccountNumber>() {
                Ok(a) if a.branch() == self.me => {
                    self.login_here(peer, request.op, forwarded).await
                }
                Ok(_) if forwarded => Err(Refusal::BadCredentials.into()),
                Ok(a) if self.network.get(a.branch()).is_some() => {
                    self.forward_teller(a.branch(), peer, request).await
                }
                Ok(_) => Err(Refusal::BadCredentials.into()),
                Err(_) => self.login_here(peer, request.op, forwarded).await,
            };
        }
        let token = request.session.ok_or(Unavailable::SessionExpired)?;
        let issuer = token.issuer();
        if issuer != self.me {
            if forwarded || self.network.get(issuer).is_none() {
                return Err(Unavailable::SessionExpired.into());
            }
            return self.forward_teller(issuer, peer, request).await;
        }
        let session = self
            .sessions()
            .get(token, &peer, now_ms())
            .ok_or(Unavailable::SessionExpired)?;
        if forwarded {
            // Another branch names the teller: only the teller's seal proves it asked.
            self.seals.take(&peer, &request, now_ms())?;
        }
        authz::check(&session, self.me, &request.op)?;
        authz::deposit_within(&session, &request.op, self.customer_deposit_max)?;
        self.execute(peer, token, &session, request.op).await
    }

    /// A login checked here; a sealed one's secrets are opened with this replica's key
    /// first (one that does not open is refused as a wrong password, uncounted).
    async fn login_here(&self, peer: PeerId, op: TellerOp, forwarded: bool) -> Answer {
        let (user, password, otp) = match op {
            TellerOp::Login {
                user,
                password,
                otp,
            } => (user, password, otp),
            TellerOp::SealedLogin { user, secret } => {
                let opened = secret.open(&self.key, (&peer, &user, self.me));
                let s = opened.map_err(|_| Refusal::BadCredentials)?;
                if !wire::teller::login_fields_ok(&user, &s.password, s.otp.as_deref()) {
                    return Err(Refusal::BadCredentials.into());
                }
                (user, s.password, s.otp)
            }
            _ => return Err(Refusal::InvalidInput.into()),
        };
        // Connected here from this machine, not passed on by anyone.
        let local = !forwarded && self.client.from_this_machine(&peer);
        let r = self.login((peer, local), user, password, otp).await;
        crate::metrics::get().login(outcome_of(&r));
        r
    }

    /// The session table; a panic elsewhere while it was held leaves nothing half-done
    /// in it (every change is one map operation), so a poisoned lock is used as it is.
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a link request to branch `to`, bounded by [`wire::limits::FORWARD_TIMEOUT_MS`].
    async fn link(&self, to: BranchId, request: ForwardRequest) -> Result<LinkResponse, Fail> {
        self.network.get(to).ok_or(Refusal::UnknownBranch)?;
        let _slot = self
            .forwards
            .get(&to)
            .ok_or(Refusal::UnknownBranch)?
            .try_acquire()
            .map_err(|_| Unavailable::Overloaded)?;
        let response = tokio::time::timeout(
            std::time::Duration::from_millis(wire::limits::FORWARD_TIMEOUT_MS),
            self.client.link_branch(to, LinkRequest::Forward(request)),
        )
        .await;
        match response {
            Ok(Ok(LinkResponse::ForwardRefused(r))) => Err(r.into()),
            // The other branch refused the link itself: it did nothing with the request.
            Ok(Ok(LinkResponse::Refused(EnvelopeRefusal::LinkBlocked))) => {
                Err(Unavailable::BranchUnreachable(to).into())
            }
            // Too busy to take it: it did nothing with the request either.
            Ok(Ok(LinkResponse::Refused(EnvelopeRefusal::Overloaded))) => {
                Err(Unavailable::Overloaded.into())
            }
            // Starting, its fence not confirmed yet: nothing done there either.
            Ok(Ok(LinkResponse::Refused(EnvelopeRefusal::NotConfirmed))) => {
                Err(Unavailable::NotConfirmed.into())
            }
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::info!(%to, "forward failed: {e}");
                Err(unreached(to, &e).into())
            }
            Err(_) => Err(Unavailable::NoAnswer(to).into()),
        }
    }

    async fn forward_teller(&self, to: BranchId, peer: PeerId, request: TellerRequest) -> Answer {
        let _share =
            super::shares::Shares::take(&self.forwarders, peer).ok_or(Unavailable::Overloaded)?;
        let forward = ForwardRequest::Teller {
            teller: peer.to_bytes(),
            request,
            expires_at_ms: now_ms().saturating_add(wire::limits::FORWARD_TIMEOUT_MS),
        };
        match self.link(to, forward).await? {
            LinkResponse::Teller(r) => Ok(r),
            other => {
                tracing::warn!(%to, ?other, "unexpected answer to a forwarded request");
                Err(Unavailable::NoAnswer(to).into())
            }
        }
    }

    /// Runs `op`; a money request is counted in the metrics with its answer and time.
    async fn execute(
        &self,
        peer: PeerId,
        token: SessionToken,
        session: &SessionInfo,
        op: TellerOp,
    ) -> Answer {
        let money = match &op {
            TellerOp::Deposit { .. } => Some("deposit"),
            TellerOp::Withdraw { .. } => Some("withdrawal"),
            TellerOp::Transfer(_) => Some("transfer"),
            _ => None,
        };
        let id = op.money_id();
        let started = Instant::now();
        let fenced = changes_books(&op);
        let answer = if fenced {
            match self.lease.serving() {
                Ok(()) => {
                    let answer = self.execute_op(peer, token, session, op).await;
                    self.confirmed(answer).await
                }
                Err(why) => Err(why.into()),
            }
        } else {
            self.execute_op(peer, token, session, op).await
        };
        if let (Some(kind), Some(id)) = (money, id) {
            answered(kind, id, outcome_of(&answer), started);
        }
        answer
    }

    /// `answer`, once the lease is seen to hold after the change it reports became
    /// durable (the fence, `fence.rs`). If it does not, a final outcome may not stand:
    /// it is told `lease_lost` (ask again with the id) instead.
    async fn confirmed(&self, answer: Answer) -> Answer {
        let final_state = |s: &TransferState| s.is_final();
        let settles = match &answer {
            Ok(TellerResponse::Receipt { state, .. }) => final_state(state),
            Ok(TellerResponse::Receipts(lines)) => lines
                .iter()
                .any(|l| matches!(&l.answer, LineAnswer::State(s) if final_state(s))),
            Ok(TellerResponse::Account(_)) => true,
            _ => false,
        };
        if !settles {
            return answer;
        }
        let Err(why) = self.lease.still_serving().await else {
            return answer;
        };
        tracing::warn!(%why, "a change was made but this copy's lease did not hold: answered lease_lost");
        match answer {
            Ok(TellerResponse::Receipts(mut lines)) => {
                for l in &mut lines {
                    if matches!(&l.answer, LineAnswer::State(s) if final_state(s)) {
                        l.answer = LineAnswer::Unavailable(Unavailable::LeaseLost);
                    }
                }
                Ok(TellerResponse::Receipts(lines))
            }
            _ => Err(Unavailable::LeaseLost.into()),
        }
    }

    async fn execute_op(
        &self,
        peer: PeerId,
        token: SessionToken,
        session: &SessionInfo,
        op: TellerOp,
    ) -> Answer {
        match op {
            TellerOp::Login { .. } | TellerOp::SealedLogin { .. } => {
                Err(Refusal::InvalidInput.into())
            }
            TellerOp::EnrollOtp { user, password } => {
                self.enroll_otp(peer, session, user, password).await
            }
            TellerOp::Logout => self.logout(token, peer).await,
            TellerOp::Balance { account } => self.balance(account).await,
            TellerOp::Deposit {
                id,
                account,
                amount,
            } => self.movement(Movement::Deposit, id, account, amount).await,
            TellerOp::Withdraw {
                id,
                account,
                amount,
            } => {
                self.movement(Movement::Withdrawal, id, account, amount)
                    .await
            }
            TellerOp::Transfer(spec) => self.transfer(spec).await,
            TellerOp::History { account, page } => self.history(account, page).await,
            TellerOp::TransferStatus { id } => self.status(session, id).await,
            TellerOp::Trace { id } => self.trace(id).await,
            TellerOp::InDoubt => self.in_doubt().await,
            TellerOp::Reconcile { cut_ms } => self.reconcile(cut_ms).await,
            TellerOp::OpenAccount {
                customer,
                password,
                existing,
            } => self.open_account(customer, password, existing).await,
            TellerOp::CloseAccount {
                account,
                admin_password,
            } => {
                self.close_account(peer, session, account, admin_password)
                    .await
            }
            TellerOp::ListAccounts { scope, page } => self.accounts(scope, page).await,
            TellerOp::ListTransactions {
                scope,
                page,
                filter,
                network,
            } => match scope {
                Scope::Branch => self.branch_transactions(page, filter).await,
                Scope::Network => self.network_transactions(page, filter, network).await,
            },
            TellerOp::SetLinkFault { branch, fault } => self.set_link_fault(branch, fault).await,
            TellerOp::TransferBatch { transfers } => self.transfer_batch(session, transfers).await,
        }
    }

    async fn logout(&self, token: SessionToken, peer: PeerId) -> Answer {
        let closed = self.sessions().close(token, &peer);
        if let Some(hash) = closed {
            self.writer
                .call_write(WriteOp::CloseSession { token_hash: hash })
                .await
                .map_err(store_failed)?;
        }
        Ok(TellerResponse::LoggedOut)
    }

    async fn balance(&self, account: AccountNumber) -> Answer {
        let view = self
            .reader
            .read(move |c, me| bank::view(c, me, account))
            .await
            .map_err(store_failed)?;
        Ok(TellerResponse::Account(
            view.ok_or(Refusal::AccountNotFound)?,
        ))
    }

    /// A deposit or withdrawal: this branch owns the account, so it is the id's authority.
    async fn movement(
        &self,
        kind: Movement,
        id: TransferId,
        account: AccountNumber,
        amount: Amount,
    ) -> Answer {
        let state = self
            .writer
            .call_write(WriteOp::Movement {
                kind,
                id,
                account,
                amount,
                now_ms: now_ms(),
            })
            .await
            .and_then(WriteResult::into_state)
            .map_err(store_failed)?;
        tracing::debug!(%id, %account, ?kind, ?state, "movement");
        Ok(TellerResponse::Receipt { id, state })
    }

    /// A transfer: this branch owns the debit account, so it coordinates (and is the
    /// id's authority; a refusal on content is recorded there too).
    async fn transfer(&self, spec: TransferSpec) -> Answer {
        let state = self.engine.transfer(spec).await?;
        Ok(TellerResponse::Receipt { id: spec.id, state })
    }

    /// Bulk payments: each line the session may not touch is refused `unauthorized`
    /// (nothing recorded); the rest go to the engine as one event, so they share its
    /// rounds, envelopes and writer batches, and each keeps its own id and outcome.
    async fn transfer_batch(&self, session: &SessionInfo, transfers: Vec<TransferSpec>) -> Answer {
        let started = Instant::now();
        let mut lines: Vec<LineReceipt> = transfers
            .iter()
            .map(|spec| LineReceipt {
                id: spec.id,
                answer: LineAnswer::Refused(Refusal::Unauthorized),
            })
            .collect();
        let (allowed, specs): (Vec<usize>, Vec<TransferSpec>) = transfers
            .into_iter()
            .enumerate()
            .filter(|(_, spec)| authz::may_touch(session, spec.from))
            .unzip();
        let answers = self.engine.transfers(specs).await;
        for (i, answer) in allowed.into_iter().zip(answers) {
            lines[i].answer = match answer {
                Ok(state) => LineAnswer::State(state),
                Err(why) => LineAnswer::Unavailable(why),
            };
        }
        for line in &lines {
            answered("transfer", line.id, line_outcome(&line.answer), started);
        }
        crate::metrics::get()
            .transfer_batch_lines
            .observe(lines.len() as f64);
        Ok(TellerResponse::Receipts(lines))
    }

    async fn history(&self, account: AccountNumber, page: PageRequest) -> Answer {
        let (entries, next_before) = self
            .reader
            .read(move |c, me| {
                let filter = EntryFilter {
                    account: Some(account),
                    ..EntryFilter::default()
                };
                bank::history(c, me, filter, page)
            })
            .await
            .map_err(store_failed)?;
        Ok(TellerResponse::Entries {
            entries,
            next_before,
            next_network: None,
            unreachable: Vec::new(),
        })
    }

    /// Where `id` stands, for a session it concerns. This branch's record is the answer
    /// when this branch is the id's authority or applied its commit; otherwise the
    /// authority (the coordinator) is asked, and if it cannot tell, "not known yet".
    async fn status(&self, session: &SessionInfo, id: TransferId) -> Answer {
        let record = self
            .reader
            .read(move |c, me| twopc::transfer_record(c, me, id))
            .await
            .map_err(store_failed)?;
        let Some(record) = record else {
            return Ok(TellerResponse::Status {
                id,
                state: TransferState::Unknown,
            });
        };
        if !authz::may_see(session, &record.accounts) {
            return Err(Refusal::Unauthorized.into());
        }
        let state = match record.authority {
            Some(coordinator) if !record.state.is_final() => self
                .ask_authority(coordinator, id)
                .await
                .unwrap_or(record.state),
            _ => record.state,
        };
        Ok(TellerResponse::Status { id, state })
    }

    /// The final outcome of `id` by its coordinator's records, if it has one.
    async fn ask_authority(&self, coordinator: BranchId, id: TransferId) -> Option<TransferState> {
        if coordinator == self.me {
            return None;
        }
        match self.link(coordinator, ForwardRequest::Outcome { id }).await {
            Ok(LinkResponse::Outcome(state)) if state.is_final() => Some(state),
            _ => None,
        }
    }

    async fn open_account(
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
            .call_write(WriteOp::OpenAccount {
                customer,
                password_hash: hash,
                existing,
                now_ms: now_ms(),
            })
            .await
            .and_then(WriteResult::into_account)
            .map_err(store_failed)??;
        tracing::info!(account = %opened.number, "account opened");
        Ok(TellerResponse::AccountOpened(opened))
    }

    /// Closes an empty account after the admin gives their password again; the
    /// account's login goes with it, and so do its sessions.
    async fn close_account(
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

    async fn set_link_fault(&self, branch: BranchId, fault: LinkFault) -> Answer {
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
    async fn local_accounts(
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
    async fn accounts(&self, scope: Scope, page: AccountsPage) -> Answer {
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

    fn others(&self) -> impl Iterator<Item = BranchId> + '_ {
        self.network
            .branches()
            .filter(|b| b.id != self.me)
            .map(|b| b.id)
    }

    async fn local_transactions(
        &self,
        page: PageRequest,
        filter: EntryFilter,
    ) -> Result<(Vec<EntryView>, Option<u64>), Fail> {
        self.reader
            .read(move |c, me| bank::history(c, me, filter, page))
            .await
            .map_err(store_failed)
    }

    /// A page of this branch's ledger.
    async fn branch_transactions(&self, page: PageRequest, filter: EntryFilter) -> Answer {
        let (entries, next_before) = self.local_transactions(page, filter).await?;
        Ok(TellerResponse::Entries {
            entries,
            next_before,
            next_network: None,
            unreachable: Vec::new(),
        })
    }

    /// One branch's page of a network listing: this branch's own, or another's by a
    /// forward.
    async fn branch_page(
        &self,
        b: BranchId,
        page: PageRequest,
        filter: EntryFilter,
    ) -> Result<(Vec<EntryView>, Option<u64>), Fail> {
        if b == self.me {
            return self.local_transactions(page, filter).await;
        }
        match self
            .link(b, ForwardRequest::Transactions { page, filter })
            .await?
        {
            LinkResponse::Entries {
                entries,
                next_before,
            } => Ok((entries, next_before)),
            _ => Err(Fail::Unavailable(Unavailable::NoAnswer(b))),
        }
    }

    /// A page of every branch's ledger merged newest first, going on from `cursor`
    /// (see [`listing::merge`]); a branch with no more is not asked, and one that does
    /// not answer is named, not fatal.
    async fn network_transactions(
        &self,
        page: PageRequest,
        filter: EntryFilter,
        cursor: NetworkCursor,
    ) -> Answer {
        let asked: Vec<BranchId> = self
            .network
            .branches()
            .map(|b| b.id)
            .filter(|&b| listing::before_of(&cursor, b) != Some(0))
            .collect();
        let page_of = |b| PageRequest {
            before: listing::before_of(&cursor, b),
            limit: page.limit,
        };
        let asks = asked
            .iter()
            .map(|&b| self.branch_page(b, page_of(b), filter));
        let (mut pages, mut unreachable) = (Vec::new(), Vec::new());
        for (answer, &branch) in join_all(asks).await.into_iter().zip(&asked) {
            match answer {
                Ok((entries, next_before)) => pages.push(listing::BranchPage {
                    branch,
                    entries,
                    next_before,
                }),
                Err(Fail::Unavailable(_)) => unreachable.push(branch),
                Err(e) => return Err(e),
            }
        }
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let (entries, next_network) = listing::merge(pages, &cursor, &unreachable, limit);
        Ok(TellerResponse::Entries {
            entries,
            next_before: None,
            next_network,
            unreachable,
        })
    }

    async fn local_trace(&self, id: TransferId) -> Result<BranchTrace, Fail> {
        let net = Arc::clone(&self.network);
        self.reader
            .read(move |c, me| trace::trace(c, me, id, &net))
            .await
            .map_err(store_failed)
    }

    async fn local_stuck(&self) -> Result<Vec<StuckView>, Fail> {
        let limit = wire::limits::PAGE_ROWS_MAX as usize;
        self.reader
            .read(move |c, me| trace::stuck(c, me, limit))
            .await
            .map_err(store_failed)
    }

    /// Every branch's records of `id`: this one's, and each other's by a forward; a
    /// branch that does not answer is named.
    async fn trace(&self, id: TransferId) -> Answer {
        let mine = self.local_trace(id).await?;
        let (theirs, unreachable) = self
            .ask_others(ForwardRequest::Trace { id }, |r, b| match r {
                LinkResponse::Trace(t) if t.branch == b => Some(vec![t]),
                _ => None,
            })
            .await?;
        let mut branches: Vec<BranchTrace> = std::iter::once(mine).chain(theirs).collect();
        branches.sort_by_key(|t| t.branch);
        Ok(TellerResponse::Trace {
            id,
            branches,
            unreachable,
        })
    }

    /// Sends `request` to every other branch at once; `take` turns an answer from
    /// branch `b` into items (`None`: not an answer to this request). Branches that
    /// did not answer are named; a refusal ends the whole request.
    async fn ask_others<T>(
        &self,
        request: ForwardRequest,
        take: impl Fn(LinkResponse, BranchId) -> Option<Vec<T>>,
    ) -> Result<(Vec<T>, Vec<BranchId>), Fail> {
        let asks = self.others().map(|b| self.link(b, request.clone()));
        let (mut items, mut unreachable) = (Vec::new(), Vec::new());
        for (a, b) in join_all(asks).await.into_iter().zip(self.others()) {
            match a {
                Ok(r) => match take(r, b) {
                    Some(got) => items.extend(got),
                    None => unreachable.push(b),
                },
                Err(Fail::Unavailable(_)) => unreachable.push(b),
                Err(e) => return Err(e),
            }
        }
        Ok((items, unreachable))
    }

    /// This branch's statement at `cut_ms`, signed in the statement domain and encoded.
    async fn local_statement(&self, cut_ms: u64) -> Result<Vec<u8>, Fail> {
        let statement = self
            .reader
            .read(move |c, me| trace::statement(c, me, cut_ms))
            .await
            .map_err(store_failed)?;
        let signed = wire::Signed::sign_in_domain(
            wire::signed::STATEMENT_DOMAIN,
            &self.key,
            self.me,
            &statement,
        )
        .and_then(|s| wire::encode(&s));
        signed.map_err(|e| store_failed(StoreError::Malformed(e.to_string())))
    }

    /// Every branch's signed statement at `cut_ms`; the teller checks and compares them.
    async fn reconcile(&self, cut_ms: u64) -> Answer {
        let mine = self.local_statement(cut_ms).await?;
        let (theirs, unreachable) = self
            .ask_others(ForwardRequest::Statement { cut_ms }, |r, _| match r {
                LinkResponse::Statement(bytes) => Some(vec![bytes]),
                _ => None,
            })
            .await?;
        Ok(TellerResponse::Statements {
            cut_ms,
            statements: std::iter::once(mine).chain(theirs).collect(),
            unreachable,
        })
    }

    /// What is not finished at any branch, oldest deadline first.
    async fn in_doubt(&self) -> Answer {
        let mine = self.local_stuck().await?;
        let (theirs, unreachable) = self
            .ask_others(ForwardRequest::InDoubt, |r, b| match r {
                LinkResponse::Stuck(v) => Some(v.into_iter().filter(|s| s.branch == b).collect()),
                _ => None,
            })
            .await?;
        let mut items: Vec<StuckView> = mine.into_iter().chain(theirs).collect();
        items.sort_by_key(|s| (s.deadline_ms, s.branch));
        Ok(TellerResponse::Stuck { items, unreachable })
    }

    /// Answers a forwarded request from branch peer `from` (already checked as listed).
    pub async fn forwarded(self: Arc<Self>, from: PeerId, request: ForwardRequest) -> LinkResponse {
        let refused = |r: Fail| match r {
            Fail::Refused(r) => LinkResponse::ForwardRefused(r),
            Fail::Unavailable(u) => LinkResponse::Teller(TellerResponse::Unavailable(u)),
        };
        match request {
            ForwardRequest::Teller {
                teller,
                request,
                expires_at_ms,
            } => {
                if now_ms() > expires_at_ms {
                    // Its sender stopped waiting: it must not act now. Nobody reads this.
                    tracing::info!(%from, op = request.op.name(), "stale forwarded request dropped");
                    return LinkResponse::Teller(TellerResponse::Unavailable(
                        Unavailable::NoAnswer(self.me),
                    ));
                }
                match PeerId::from_bytes(&teller) {
                    Ok(peer) => LinkResponse::Teller(self.teller(peer, request, true).await),
                    Err(_) => LinkResponse::ForwardRefused(Refusal::InvalidInput),
                }
            }
            ForwardRequest::Replica {
                teller,
                request,
                expires_at_ms,
            } => {
                let own = self
                    .network
                    .get(self.me)
                    .and_then(|b| b.replica_by_peer(&from));
                if own.is_none() {
                    tracing::warn!(%from, "a request passed on by a peer that is no replica of this branch");
                    return LinkResponse::ForwardRefused(Refusal::Unauthorized);
                }
                if now_ms() > expires_at_ms {
                    return LinkResponse::Teller(TellerResponse::Unavailable(
                        Unavailable::NoAnswer(self.me),
                    ));
                }
                match PeerId::from_bytes(&teller) {
                    Ok(peer) => LinkResponse::Teller(self.teller(peer, request, false).await),
                    Err(_) => LinkResponse::ForwardRefused(Refusal::InvalidInput),
                }
            }
            ForwardRequest::Outcome { id } => match self.own_outcome(id).await {
                Ok(state) => LinkResponse::Outcome(state),
                Err(r) => refused(r),
            },
            ForwardRequest::Accounts { page } => {
                if !(1..=wire::limits::PAGE_ROWS_MAX).contains(&page.limit) {
                    return LinkResponse::ForwardRefused(Refusal::InvalidInput);
                }
                let after = page
                    .after
                    .filter(|a| a.branch() == self.me)
                    .map_or(0, |a| a.serial());
                match self.local_accounts(after, page.limit).await {
                    Ok(v) => LinkResponse::Accounts(v),
                    Err(r) => refused(r),
                }
            }
            ForwardRequest::Trace { id } => match self.local_trace(id).await {
                Ok(t) => LinkResponse::Trace(t),
                Err(r) => refused(r),
            },
            ForwardRequest::Statement { cut_ms } => match self.local_statement(cut_ms).await {
                Ok(bytes) => LinkResponse::Statement(bytes),
                Err(r) => refused(r),
            },
            // Answered by the run loop's fence (`Fence::take`) whenever the store can be
            // written; one that gets here came when it could not.
            ForwardRequest::Recover { .. } => LinkResponse::Refused(EnvelopeRefusal::Overloaded),
            ForwardRequest::InDoubt => match self.local_stuck().await {
                Ok(v) => LinkResponse::Stuck(v),
                Err(r) => refused(r),
            },
            ForwardRequest::Transactions { page, filter } => {
                if !(1..=wire::limits::PAGE_ROWS_MAX).contains(&page.limit) || !filter.is_valid() {
                    tracing::info!(%from, "forwarded listing refused: bad page");
                    return LinkResponse::ForwardRefused(Refusal::InvalidInput);
                }
                match self.local_transactions(page, filter).await {
                    Ok((entries, next_before)) => LinkResponse::Entries {
                        entries,
                        next_before,
                    },
                    Err(r) => refused(r),
                }
            }
        }
    }

    /// Where `id` stands by this branch's records as its authority; `Unknown` when this
    /// branch is not its authority or has no record.
    async fn own_outcome(&self, id: TransferId) -> Result<TransferState, Fail> {
        let record = self
            .reader
            .read(move |c, me| twopc::transfer_record(c, me, id))
            .await
            .map_err(store_failed)?;
        Ok(match record {
            Some(r) if r.authority.is_none() => r.state,
            _ => TransferState::Unknown,
        })
    }
}

/// What a failed link request means for a request passed to branch `to`.
fn unreached(to: BranchId, e: &LinkError) -> Unavailable {
    if e.may_have_arrived() {
        Unavailable::NoAnswer(to)
    } else {
        Unavailable::BranchUnreachable(to)
    }
}
