//! Client batches: transfers sent at the same time over one connection under one
//! session travel together, as one `TransferBatch`, as TigerBeetle's clients batch.
//!
//! Each (connection, session) pair is a lane. A transfer joins its lane's queue; when
//! fewer than [`LANE_IN_FLIGHT_MAX`] requests of the lane are on their way, it goes at
//! once (alone, as a plain `Transfer`); otherwise it waits for one to come back and
//! goes with everything that queued meanwhile. So a lone teller waits for nothing, and
//! under load the batches grow with the load: one request, one signature check of the
//! session, one engine event and one writer operation for many transfers. Each caller
//! gets its own line's answer, which means exactly what the answer to a transfer of its
//! own would (a branch authorizes and decides each line alone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use wire::limits::BATCH_LINES_MAX;
use wire::teller::{LineAnswer, SessionToken, TellerOp, TellerResponse};
use wire::twopc::TransferSpec;

use crate::sealer::Sealer;
use crate::{TellerClient, TellerError, answer_of};

/// Where a lane's requests go, and who seals them.
type Via<'a> = (&'a TellerClient, &'a Sealer);

/// Requests of one lane on their way at once. One gives the largest batches: same run,
/// `scenarios bench --duration 8`, 2 -> 1: local 19,844 -> 22,271/s, cross-branch 5,328
/// -> 5,646/s, and no change at 16 clients (cross p50 11.1 -> 11.4 ms, within noise).
pub const LANE_IN_FLIGHT_MAX: usize = 1;

type Reply = oneshot::Sender<Result<TellerResponse, TellerError>>;

struct Waiter {
    spec: TransferSpec,
    reply: Reply,
}

#[derive(Default)]
struct Lane {
    waiting: Vec<Waiter>,
    in_flight: usize,
}

/// The lanes of one connection, shared by every teller over it.
#[derive(Default)]
pub struct Lanes {
    lanes: Mutex<HashMap<SessionToken, Lane>>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").finish_non_exhaustive()
    }
}

impl Lanes {
    /// Sends transfer `spec` under `session` with whatever else of the lane is waiting,
    /// and returns its own answer.
    pub async fn transfer(
        self: &Arc<Self>,
        (client, sealer): Via<'_>,
        session: SessionToken,
        spec: TransferSpec,
    ) -> Result<TellerResponse, TellerError> {
        let (reply, rx) = oneshot::channel();
        let start = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let lane = lanes.entry(session).or_default();
            lane.waiting.push(Waiter { spec, reply });
            let start = lane.in_flight < LANE_IN_FLIGHT_MAX;
            lane.in_flight += usize::from(start);
            start
        };
        if start {
            // Its own task: a caller that stops waiting must not stop the others' batch.
            let lane = Arc::clone(self).drive(client.clone(), sealer.clone(), session);
            tokio::spawn(lane);
        }
        rx.await.unwrap_or_else(|_| {
            // Its batcher ended without answering (the connection task stopped): the
            // transfer may have been sent.
            Err(TellerError::Unexpected {
                asked: "transfer",
                answered: "nothing",
            })
        })
    }

    /// Sends the lane's waiting transfers, a batch at a time, until none wait.
    async fn drive(self: Arc<Self>, client: TellerClient, sealer: Sealer, session: SessionToken) {
        while let Some(batch) = self.next_batch(session) {
            send((&client, &sealer), session, batch).await;
        }
    }

    /// Up to [`BATCH_LINES_MAX`] waiting transfers whose callers still wait; `None`
    /// (and one request fewer on its way) when there are none.
    fn next_batch(&self, session: SessionToken) -> Option<Vec<Waiter>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = lanes.get_mut(&session)?;
        lane.waiting.retain(|w| !w.reply.is_closed());
        if lane.waiting.is_empty() {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 {
                lanes.remove(&session);
            }
            return None;
        }
        let n = lane.waiting.len().min(BATCH_LINES_MAX);
        Some(lane.waiting.drain(..n).collect())
    }
}

/// Sends one batch (a lone transfer as itself) and gives each caller its answer.
async fn send((client, sealer): Via<'_>, session: SessionToken, mut batch: Vec<Waiter>) {
    let session = Some(session);
    if batch.len() == 1
        && let Some(one) = batch.pop()
    {
        let op = TellerOp::Transfer(one.spec);
        let answer = client.request(sealer.request(session, op)).await;
        let _ = one
            .reply
            .send(answer.map_err(TellerError::from).and_then(answer_of));
        return;
    }
    let transfers = batch.iter().map(|w| w.spec).collect();
    let op = TellerOp::TransferBatch { transfers };
    let answer = client.request(sealer.request(session, op)).await;
    match answer.map_err(TellerError::from).and_then(answer_of) {
        Ok(TellerResponse::Receipts(lines))
            if lines.len() == batch.len()
                && lines.iter().zip(&batch).all(|(l, w)| l.id == w.spec.id) =>
        {
            for (line, w) in lines.into_iter().zip(batch) {
                let _ = w.reply.send(line_answer(line.id, line.answer));
            }
        }
        Ok(other) => {
            let odd = TellerError::unexpected("transfer-batch", &other);
            for w in batch {
                let _ = w.reply.send(Err(odd.clone()));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A line's answer as the answer to a transfer of its own.
fn line_answer(id: wire::TransferId, answer: LineAnswer) -> Result<TellerResponse, TellerError> {
    match answer {
        LineAnswer::State(state) => Ok(TellerResponse::Receipt { id, state }),
        LineAnswer::Refused(r) => Err(TellerError::Refused(r)),
        LineAnswer::Unavailable(u) => Err(TellerError::Unavailable(u)),
    }
}
