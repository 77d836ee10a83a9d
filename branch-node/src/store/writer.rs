//! Group commit: one thread owns the store's connection and runs queued operations in
//! batches, each batch one SQLite transaction (one fsync), each operation inside its own
//! savepoint so a failing one rolls back alone. Every caller is answered only after the
//! batch's `sql_commit`, so an answer is always durable.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use coordinator::{
    ApplyOutcome, BeginItem, BeginOutcome, Command, CoordinatedRecord, DecisionRecord, Evidence,
    InDoubtRecord, Input, Shard, ShardError,
};
use rusqlite::{Connection, TransactionBehavior};
use wire::limits::WRITER_BATCH_OPS_MAX;
use wire::teller::{AccountView, NewCustomer, TransferState};
use wire::twopc::{DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{AccountNumber, Amount, BranchId, Decision, Refusal, TransferId};

use super::bank::{self, Movement};
use super::{Store, StoreError, now_ms, twopc};

/// Runs an operation; `true` when it succeeded (its savepoint is kept).
type RunFn = Box<dyn FnOnce(&Connection, BranchId) -> bool + Send>;
/// Answers the caller once the batch is durable, or with the commit's error.
type FinishFn = Box<dyn FnOnce(Option<String>) + Send>;

struct Job {
    run: RunFn,
    finish: FinishFn,
}

/// Called on the writer thread after each batch, once every job in it was answered.
type BatchHook = Box<dyn Fn() + Send>;

enum Msg {
    Job(Job),
    Hook(BatchHook),
    Stop,
}

/// The thread that owns a store. Dropping it stops the thread after the queued work.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<Store>>,
}

/// A cheap handle for submitting operations to a [`Writer`].
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: Sender<Msg>,
    me: BranchId,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Job(_) => "Job",
            Msg::Hook(_) => "Hook",
            Msg::Stop => "Stop",
        })
    }
}

impl Writer {
    /// Moves `store` onto its own thread.
    pub fn spawn(store: Store) -> Writer {
        let (tx, rx) = mpsc::channel();
        let me = store.branch();
        let thread = std::thread::Builder::new()
            .name(format!("store-writer-{me}"))
            .spawn(move || writer_loop(store, rx))
            .ok();
        Writer {
            handle: WriterHandle { tx, me },
            thread,
        }
    }

    /// A handle to submit operations with.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Finishes the queued work, stops the thread and gives the store back.
    pub fn stop(mut self) -> Option<Store> {
        let _ = self.handle.tx.send(Msg::Stop);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.handle.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(mut store: Store, rx: Receiver<Msg>) -> Store {
    let mut hooks: Vec<BatchHook> = Vec::new();
    loop {
        let mut batch = match rx.recv() {
            Ok(Msg::Job(j)) => vec![j],
            Ok(Msg::Hook(h)) => {
                hooks.push(h);
                continue;
            }
            Ok(Msg::Stop) | Err(_) => return store,
        };
        let mut stop = false;
        while batch.len() < WRITER_BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => batch.push(j),
                Ok(Msg::Hook(h)) => hooks.push(h),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        run_batch(&mut store, batch);
        for hook in &hooks {
            hook();
        }
        if stop {
            return store;
        }
    }
}

fn run_batch(store: &mut Store, batch: Vec<Job>) {
    let me = store.branch();
    let tx = match store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
    {
        Ok(tx) => tx,
        Err(e) => {
            for job in batch {
                (job.finish)(Some(e.to_string()));
            }
            return;
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    let mut failed = None;
    // Cached statements: the savepoint SQL is not parsed again for every job.
    let sql = |c: &Connection, s: &str| c.prepare_cached(s).and_then(|mut st| st.execute([]));
    for job in batch {
        if failed.is_none() {
            if let Err(e) = sql(&tx, "SAVEPOINT op") {
                failed = Some(e.to_string());
            } else {
                let ok = (job.run)(&tx, me);
                let end = if ok {
                    sql(&tx, "RELEASE op")
                } else {
                    sql(&tx, "ROLLBACK TO op").and_then(|_| sql(&tx, "RELEASE op"))
                };
                if let Err(e) = end {
                    failed = Some(e.to_string());
                }
            }
        }
        finishes.push(job.finish);
    }
    let metrics = crate::node::metrics::get();
    metrics.writer_batch_ops.observe(finishes.len() as f64);
    let outcome = match failed {
        Some(e) => Some(e), // dropping `tx` rolls everything back
        None => {
            let started = std::time::Instant::now();
            let committed = tx.commit();
            metrics
                .writer_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            committed.err().map(|e| e.to_string())
        }
    };
    for finish in finishes {
        finish(outcome.clone());
    }
}

impl WriterHandle {
    /// The branch of the store behind this handle.
    pub fn branch(&self) -> BranchId {
        self.me
    }

    /// Calls `hook` on the writer thread after every batch from now on, once each of
    /// its jobs was answered: a caller that collects answers can take a whole batch's
    /// worth at once. `hook` must not block.
    pub fn on_batch_end(&self, hook: impl Fn() + Send + 'static) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Hook(Box::new(hook)))
            .map_err(|_| StoreError::WriterGone)
    }

    /// Runs `f` in the writer's next batch and waits until the batch is durable.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `f` for the writer's next batch without waiting; the receiver yields its
    /// result once the batch is durable (or the commit's error).
    pub fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<Receiver<Result<R, StoreError>>, StoreError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.submit_then(f, move |r| {
            let _ = reply_tx.send(r);
        })?;
        Ok(reply_rx)
    }

    /// Queues `f` for the writer's next batch; `done` gets its result on the writer
    /// thread once the batch is durable (or the commit's error). Jobs run and finish in
    /// the order they were queued. `done` must not block.
    pub fn submit_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
        done: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let slot: Arc<Mutex<Option<Result<R, StoreError>>>> = Arc::new(Mutex::new(None));
        let run_slot = Arc::clone(&slot);
        let run = Box::new(move |c: &Connection, me: BranchId| {
            let r = f(c, me);
            let ok = r.is_ok();
            if let Ok(mut s) = run_slot.lock() {
                *s = Some(r);
            }
            ok
        });
        let finish = Box::new(move |commit_error: Option<String>| {
            let result = slot.lock().ok().and_then(|mut s| s.take());
            done(match (commit_error, result) {
                (Some(e), _) => Err(StoreError::CommitFailed(e)),
                (None, Some(r)) => r,
                (None, None) => Err(StoreError::CommitFailed("operation did not run".into())),
            });
        });
        self.tx
            .send(Msg::Job(Job { run, finish }))
            .map_err(|_| StoreError::WriterGone)
    }

    /// Runs `f` in the writer's next batch and awaits the durable result (for async code).
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_then(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues 2PC storage commands (see [`coordinator::execute`]) as one operation:
    /// they run in order, in one savepoint, and `done` gets the input answering each,
    /// in the same order, once they are durable. If one fails none of them is kept and
    /// `done` gets that error. Operations run in the order queued.
    pub fn execute_all_then(
        &self,
        now_ms: u64,
        commands: Vec<Command>,
        done: impl FnOnce(Result<Vec<Option<Input>>, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit_then(
            move |c, me| {
                let mut shard = ConnShard { conn: c, me };
                commands
                    .into_iter()
                    .map(|command| {
                        coordinator::execute(&mut shard, now_ms, command)
                            .map_err(|e| StoreError::CommitFailed(e.to_string()))
                    })
                    .collect()
            },
            done,
        )
    }

    /// Opens an account (see [`Store::open_account`]).
    pub fn open_account(
        &self,
        customer: &NewCustomer,
        password_hash: &str,
        existing: Option<AccountNumber>,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        let (customer, hash) = (customer.clone(), password_hash.to_owned());
        self.run(move |c, me| bank::open_account(c, me, &customer, &hash, existing, now_ms()))
    }

    /// Closes an empty account.
    pub fn close_account(
        &self,
        n: AccountNumber,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        self.run(move |c, me| bank::close_account(c, me, n, now_ms()))
    }

    /// One account as a teller sees it.
    pub fn account(&self, n: AccountNumber) -> Result<Option<AccountView>, StoreError> {
        self.run(move |c, me| bank::view(c, me, n))
    }

    /// A deposit or withdrawal, idempotent by `id`.
    pub fn movement(
        &self,
        kind: Movement,
        id: TransferId,
        n: AccountNumber,
        amt: Amount,
    ) -> Result<TransferState, StoreError> {
        self.run(move |c, me| bank::movement(c, me, kind, id, n, amt, now_ms()))
    }
}

impl WriterHandle {
    /// Runs one `Shard` call on the writer's connection, in its next batch. A store
    /// failure rolls the call's savepoint back; a refusal (`DecisionConflict`,
    /// `NotCoordinated`) is found before anything is written and comes back as it is.
    fn in_batch<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ConnShard<'_>) -> Result<R, ShardError> + Send + 'static,
    ) -> Result<R, ShardError> {
        self.run(move |conn, me| match f(&mut ConnShard { conn, me }) {
            Err(ShardError::Io(e)) => Err(StoreError::CommitFailed(e)),
            other => Ok(other),
        })?
    }
}

/// Every call is the batch connection's `ConnShard` call, run by the writer.
impl Shard for WriterHandle {
    fn branch(&self) -> BranchId {
        self.me
    }
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        let items = items.to_vec();
        self.in_batch(move |s| s.begin(&items, now_ms))
    }
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        let items = items.to_vec();
        self.in_batch(move |s| s.record_decisions(&items))
    }
    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError> {
        let ids = ids.to_vec();
        self.in_batch(move |s| s.mark_ended(&ids))
    }
    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError> {
        let ids = ids.to_vec();
        self.in_batch(move |s| s.read_decisions(&ids))
    }
    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError> {
        self.in_batch(|s| s.unfinished_coordinated())
    }
    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError> {
        let (items, evidence) = (items.to_vec(), evidence.clone());
        self.in_batch(move |s| s.prepare(coordinator, &items, now_ms, &evidence))
    }
    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError> {
        let (items, evidence) = (items.to_vec(), evidence.clone());
        self.in_batch(move |s| s.apply(coordinator, &items, &evidence))
    }
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        self.in_batch(|s| s.in_doubt())
    }
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        let items = items.to_vec();
        self.in_batch(move |s| s.transfer_local(&items))
    }
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        self.in_batch(move |s| s.transfer_state(id))
    }
}

/// The `Shard` of a connection inside the writer's current batch: each call runs in the
/// batch's transaction, and is durable once the batch commits.
struct ConnShard<'a> {
    conn: &'a Connection,
    me: BranchId,
}

impl Shard for ConnShard<'_> {
    fn branch(&self) -> BranchId {
        self.me
    }
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        Ok(twopc::begin(self.conn, self.me, items, now_ms)?)
    }
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        twopc::record_decisions(self.conn, self.me, items)?
    }
    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError> {
        Ok(twopc::mark_ended(self.conn, ids)?)
    }
    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError> {
        Ok(twopc::read_decisions(self.conn, ids)?)
    }
    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError> {
        Ok(twopc::unfinished(self.conn)?)
    }
    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError> {
        Ok(twopc::prepare(
            self.conn,
            self.me,
            coordinator,
            items,
            now_ms,
            evidence,
        )?)
    }
    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError> {
        Ok(twopc::apply(
            self.conn,
            self.me,
            coordinator,
            items,
            evidence,
        )?)
    }
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        Ok(twopc::in_doubt(self.conn)?)
    }
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        let now = now_ms();
        Ok(items
            .iter()
            .map(|s| bank::transfer_local(self.conn, self.me, s, now))
            .collect::<Result<_, _>>()?)
    }
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        Ok(twopc::transfer_state(self.conn, self.me, id)?)
    }
}
