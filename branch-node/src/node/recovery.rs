//! Answers a branch being restored from a backup (`ForwardRequest::Recover`): the
//! cross-branch transfers this branch holds with it, a page at a time, each with the
//! signed envelopes that prove a commit. The restored branch checks them against the
//! network file and puts its own legs back (`crate::restore`).
//!
//! The page is read after the 2PC engine's barrier: every envelope this branch took
//! from the old copy before the restore registered its epoch is durable by then, and
//! none is taken after (the witness refuses the old epoch), so nothing the old copy did
//! with this branch is missed.

use std::collections::HashMap;
use std::sync::Arc;

use wire::fence::{
    RECOVERED_PAGE_BYTES_MAX, RECOVERED_PAGE_MAX, RecoverCursor, Recovered, RecoveredOutcome,
    RecoveredPage,
};
use wire::link::LinkResponse;
use wire::twopc::{BranchBody, BranchMessage, Decision, DecisionItem, VoteItem};
use wire::{BranchId, BranchKey, Signed, Vote};

use super::engine::{EngineHandle, MESSAGE_TTL_MS};
use super::now_ms;
use crate::store::StoreError;
use crate::store::recover::{HeldTransfer, held_with};
use crate::store::writer::WriterHandle;

/// What answering a restored branch needs.
#[derive(Clone, Debug)]
pub struct Recoveries {
    pub me: BranchId,
    pub key: Arc<BranchKey>,
    pub writer: WriterHandle,
}

impl Recoveries {
    /// One page for `asker`; the engine, if this branch serves, is passed first.
    pub async fn answer(
        &self,
        engine: Option<EngineHandle>,
        asker: BranchId,
        since_ms: u64,
        after: Option<RecoverCursor>,
    ) -> LinkResponse {
        if let Some(e) = engine {
            e.barrier().await;
        }
        let read = self
            .writer
            .call_local(move |c, me| {
                held_with(
                    c,
                    me,
                    asker,
                    since_ms,
                    after,
                    RECOVERED_PAGE_MAX,
                    RECOVERED_PAGE_BYTES_MAX,
                )
            })
            .await;
        match read.and_then(|(held, next)| self.page(asker, held, next)) {
            Ok(page) => LinkResponse::Recovered(page),
            Err(e) => {
                tracing::error!(%asker, "cannot read the transfers a restored branch asked for: {e}");
                LinkResponse::Refused(wire::link::EnvelopeRefusal::Overloaded)
            }
        }
    }

    /// The page of `held`, with this branch's votes and decisions signed for it.
    fn page(
        &self,
        asker: BranchId,
        held: Vec<HeldTransfer>,
        next: Option<RecoverCursor>,
    ) -> Result<RecoveredPage, StoreError> {
        let mut envelopes = Envelopes::default();
        let committed = |h: &&HeldTransfer| h.outcome == RecoveredOutcome::Committed;
        let votes: Vec<VoteItem> = held
            .iter()
            .filter(committed)
            .filter(|h| h.coordinator == asker)
            .map(|h| VoteItem {
                id: h.spec.id,
                vote: Vote::Yes,
            })
            .collect();
        let decisions: Vec<DecisionItem> = held
            .iter()
            .filter(committed)
            .filter(|h| h.coordinator == self.me)
            .map(|h| DecisionItem {
                id: h.spec.id,
                decision: Decision::Commit,
            })
            .collect();
        let signed_votes = self.sign(asker, BranchBody::Votes(votes), &mut envelopes)?;
        let signed_decisions =
            self.sign(asker, BranchBody::Decisions(decisions), &mut envelopes)?;
        let transfers = held
            .into_iter()
            .map(|h| {
                let mut evidence: Vec<u32> = h.kept.into_iter().map(|b| envelopes.add(b)).collect();
                if h.outcome == RecoveredOutcome::Committed {
                    let own = if h.coordinator == asker {
                        signed_votes
                    } else {
                        signed_decisions
                    };
                    evidence.extend(own);
                }
                Recovered {
                    spec: h.spec,
                    deadline_ms: h.deadline_ms,
                    coordinator: h.coordinator,
                    outcome: h.outcome,
                    reason: h.reason,
                    evidence,
                }
            })
            .collect();
        Ok(RecoveredPage {
            transfers,
            envelopes: envelopes.list,
            next,
        })
    }

    /// `body` signed by this branch for `asker`, added to the page (none if empty).
    fn sign(
        &self,
        asker: BranchId,
        body: BranchBody,
        envelopes: &mut Envelopes,
    ) -> Result<Option<u32>, StoreError> {
        if body.is_empty() {
            return Ok(None);
        }
        let message = BranchMessage {
            to: asker,
            expires_at_ms: now_ms().saturating_add(MESSAGE_TTL_MS),
            body,
        };
        let signed = Signed::sign(&self.key, self.me, &message)
            .and_then(|s| wire::encode(&s))
            .map_err(|e| StoreError::Malformed(e.to_string()))?;
        Ok(Some(envelopes.add(signed)))
    }
}

/// A page's envelopes, each once.
#[derive(Default)]
struct Envelopes {
    list: Vec<Vec<u8>>,
    index: HashMap<Vec<u8>, u32>,
}

impl Envelopes {
    fn add(&mut self, bytes: Vec<u8>) -> u32 {
        if let Some(i) = self.index.get(&bytes) {
            return *i;
        }
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.index.insert(bytes.clone(), i);
        self.list.push(bytes);
        i
    }
}
