//! Requests passed between branches: a teller's request this branch passes on to the
//! branch that must run it (bounded per branch and per teller), and the requests other
//! branches pass on to this one.

use std::sync::Arc;

use libp2p::PeerId;
use wire::link::{EnvelopeRefusal, ForwardRequest, LinkRequest, LinkResponse};
use wire::teller::{TellerRequest, TellerResponse, TransferState, Unavailable};
use wire::{BranchId, Refusal, TransferId};

use super::{Answer, Fail, Origin, Service, store_failed};
use crate::node::now_ms;
use crate::p2p::network::LinkError;
use crate::store::twopc;

impl Service {
    /// Sends a link request to branch `to`, bounded by [`wire::limits::FORWARD_TIMEOUT_MS`].
    pub(super) async fn link(
        &self,
        to: BranchId,
        request: ForwardRequest,
    ) -> Result<LinkResponse, Fail> {
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

    pub(super) async fn forward_teller(
        &self,
        to: BranchId,
        peer: PeerId,
        request: TellerRequest,
    ) -> Answer {
        let _share = crate::node::shares::Shares::take(&self.forwarders, peer)
            .ok_or(Unavailable::Overloaded)?;
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
                let passed = (teller, request, expires_at_ms);
                self.passed_on(from, passed, Origin::OtherBranch).await
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
                let passed = (teller, request, expires_at_ms);
                self.passed_on(from, passed, Origin::OwnReplica).await
            }
            ForwardRequest::Payee { account } => match self.local_payee(account).await {
                Ok((name, open)) => LinkResponse::Payee { name, open },
                Err(r) => refused(r),
            },
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

    /// A teller's request `from` passed on (the teller's key, the request, when its
    /// sender stops waiting), answered as one from `origin`; a stale one is not acted on.
    async fn passed_on(
        &self,
        from: PeerId,
        (teller, request, expires_at_ms): (Vec<u8>, TellerRequest, u64),
        origin: Origin,
    ) -> LinkResponse {
        if now_ms() > expires_at_ms {
            // Its sender stopped waiting: it must not act now. Nobody reads this.
            tracing::info!(%from, op = request.op.name(), "stale forwarded request dropped");
            let late = Unavailable::NoAnswer(self.me);
            return LinkResponse::Teller(TellerResponse::Unavailable(late));
        }
        match PeerId::from_bytes(&teller) {
            Ok(peer) => LinkResponse::Teller(self.teller(peer, request, origin).await),
            Err(_) => LinkResponse::ForwardRefused(Refusal::InvalidInput),
        }
    }

    /// Where `id` stands by this branch's records as its authority; `Unknown` when this
    /// branch is not its authority or has no record.
    pub(super) async fn own_outcome(&self, id: TransferId) -> Result<TransferState, Fail> {
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
