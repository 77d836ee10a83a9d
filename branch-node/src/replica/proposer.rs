//! A leader's proposer: the writes a replica's node queues (each a [`WriteOp`] with
//! the caller's answer) are gathered, in order, into one log entry at a time and handed
//! to Raft. A caller is answered when its branch store applied the entry, which is
//! after a majority of replicas held it on disk: the same "durable before anyone is
//! told" rule as a single branch's group commit, with "durable" meaning "at a majority".
//! If the entry cannot be committed by this replica (it is no longer leader), every
//! caller of it is told [`StoreError::NotLeader`]: the change may still be made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire::limits::WRITER_BATCH_OPS_MAX;

use super::{Batch, Raft};
use crate::store::StoreError;
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::writer::{ProposeTx, WriteDone};

/// The callers of this replica's proposals not yet applied here, by proposal.
#[derive(Clone, Default)]
pub struct Waiting(Arc<Mutex<HashMap<u64, Vec<WriteDone>>>>);

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Waiting({})", self.lock().len())
    }
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<WriteDone>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the callers of `proposal`, if they wait here, with its ops' answers.
    pub(crate) fn answer(&self, proposal: u64, results: Vec<WriteResult>) {
        let Some(dones) = self.lock().remove(&proposal) else {
            return;
        };
        assert_eq!(
            dones.len(),
            results.len(),
            "one answer per op of the proposal"
        );
        for (done, result) in dones.into_iter().zip(results) {
            done(Ok(result));
        }
    }

    /// Tells the callers of `proposal`, if they wait here, that it failed.
    pub(crate) fn fail(&self, proposal: u64, error: &std::sync::Arc<StoreError>) {
        let Some(dones) = self.lock().remove(&proposal) else {
            return;
        };
        for done in dones {
            done(Err(match &**error {
                StoreError::NotLeader => StoreError::NotLeader,
                _ => StoreError::Applied(error.clone()),
            }));
        }
    }
}

/// Starts the proposer of `raft`; writes sent to the returned sender become its
/// entries. It stops when every sender is gone.
pub fn spawn(raft: Raft, waiting: Waiting) -> (ProposeTx, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(run(raft, waiting, rx)))
}

async fn run(raft: Raft, waiting: Waiting, mut rx: mpsc::UnboundedReceiver<(WriteOp, WriteDone)>) {
    while let Some(first) = rx.recv().await {
        let (mut ops, mut dones) = (vec![first.0], vec![first.1]);
        while ops.len() < WRITER_BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok((op, done)) => {
                    ops.push(op);
                    dones.push(done);
                }
                Err(_) => break,
            }
        }
        let proposal = rand::random();
        waiting.lock().insert(proposal, dones);
        // Handed over in order: entries are appended in the order their writes came.
        match raft.client_write_ff(Batch { proposal, ops }).await {
            Ok(answer) => {
                let waiting = waiting.clone();
                tokio::spawn(async move {
                    if !matches!(answer.await, Ok(Ok(_))) {
                        waiting.fail(proposal, &std::sync::Arc::new(StoreError::NotLeader));
                    }
                });
            }
            Err(e) => {
                let e = StoreError::Replication(e.to_string());
                waiting.fail(proposal, &std::sync::Arc::new(e));
            }
        }
    }
}
