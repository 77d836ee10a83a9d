//! Money requests run here: balances, deposits, withdrawals, transfers (one or a bulk
//! payment), history, and where a money id stands.

use std::time::Instant;

use wire::link::{ForwardRequest, LinkResponse};
use wire::teller::{
    EntryFilter, LineAnswer, LineReceipt, PageRequest, TellerResponse, TransferState,
};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use super::{Answer, Service, answered, line_outcome, store_failed};
use crate::node::sessions::SessionInfo;
use crate::node::{authz, now_ms};
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::{Movement, bank, twopc};

impl Service {
    pub(super) async fn balance(&self, account: AccountNumber) -> Answer {
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
    pub(super) async fn movement(
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
    pub(super) async fn transfer(&self, spec: TransferSpec) -> Answer {
        let state = self.engine.transfer(spec).await?;
        Ok(TellerResponse::Receipt { id: spec.id, state })
    }

    /// Bulk payments: each line the session may not touch is refused `unauthorized`
    /// (nothing recorded); the rest go to the engine as one event, so they share its
    /// rounds, envelopes and writer batches, and each keeps its own id and outcome.
    pub(super) async fn transfer_batch(
        &self,
        session: &SessionInfo,
        transfers: Vec<TransferSpec>,
    ) -> Answer {
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

    pub(super) async fn history(&self, account: AccountNumber, page: PageRequest) -> Answer {
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

    /// Where `id` stands, for a session it concerns (to any other: no record). This branch's record is the answer
    /// when this branch is the id's authority or applied its commit; otherwise the
    /// authority (the coordinator) is asked, and if it cannot tell, "not known yet".
    pub(super) async fn status(&self, session: &SessionInfo, id: TransferId) -> Answer {
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
        // An id the session may not see gets the answer of an id never made: the
        // answer tells nothing of another person's payments, not even that one exists.
        if !authz::may_see(session, &record.accounts) {
            return Ok(TellerResponse::Status {
                id,
                state: TransferState::Unknown,
            });
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
    pub(super) async fn ask_authority(
        &self,
        coordinator: BranchId,
        id: TransferId,
    ) -> Option<TransferState> {
        if coordinator == self.me {
            return None;
        }
        match self.link(coordinator, ForwardRequest::Outcome { id }).await {
            Ok(LinkResponse::Outcome(state)) if state.is_final() => Some(state),
            _ => None,
        }
    }
}
