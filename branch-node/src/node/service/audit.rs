//! What admins ask to audit the network: a transfer's trace at every branch, what is
//! stuck in doubt, and the signed statements `admin reconcile` compares.

use std::sync::Arc;

use futures::future::join_all;
use wire::link::{ForwardRequest, LinkResponse};
use wire::teller::TellerResponse;
use wire::trace::{BranchTrace, StuckView};
use wire::{BranchId, TransferId};

use super::{Answer, Fail, Service, store_failed};
use crate::store::{StoreError, trace};

impl Service {
    pub(super) async fn local_trace(&self, id: TransferId) -> Result<BranchTrace, Fail> {
        let net = Arc::clone(&self.network);
        self.reader
            .read(move |c, me| trace::trace(c, me, id, &net))
            .await
            .map_err(store_failed)
    }

    pub(super) async fn local_stuck(&self) -> Result<Vec<StuckView>, Fail> {
        let limit = wire::limits::PAGE_ROWS_MAX as usize;
        self.reader
            .read(move |c, me| trace::stuck(c, me, limit))
            .await
            .map_err(store_failed)
    }

    /// Every branch's records of `id`: this one's, and each other's by a forward; a
    /// branch that does not answer is named.
    pub(super) async fn trace(&self, id: TransferId) -> Answer {
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
    pub(super) async fn ask_others<T>(
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
    pub(super) async fn local_statement(&self, cut_ms: u64) -> Result<Vec<u8>, Fail> {
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
    pub(super) async fn reconcile(&self, cut_ms: u64) -> Answer {
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
    pub(super) async fn in_doubt(&self) -> Answer {
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
}
