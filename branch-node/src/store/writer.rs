//! Group commit: one thread owns the store's connection and runs queued operations in
//! batches, each batch one SQLite transaction, each operation inside its own savepoint
//! so a failing one rolls back alone. The commit writes the WAL without an fsync; the
//! second stage (`syncer.rs`) syncs it while the next batch runs, and only then answers
//! the batch's callers, so an answer is always durable. A change is always a
//! [`WriteOp`] (data with every input it needs, so a log of them can be applied to
//! another copy of the store); work on this copy alone (reads, a barrier) is a closure.

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
use super::ops::{WriteOp, WriteResult};
use super::syncer::{Committed, Syncer, Tail, Watermark};
use super::{Store, StoreError, now_ms, twopc};

/// Runs work on this copy of the store; `true` when it succeeded (its savepoint is kept).
type RunFn = Box<dyn FnOnce(&Connection, BranchId) -> bool + Send>;
/// Answers the caller of local work once the batch is durable, or with the commit's error.
/// A batch's failure: its one SQLite error, shared by every job of the batch.
pub type BatchError = std::sync::Arc<rusqlite::Error>;

type FinishFn = Box<dyn FnOnce(Option<BatchError>) + Send>;
/// Answers the caller of a write once the batch is durable, or with the commit's error.
pub type WriteDone = Box<dyn FnOnce(Result<WriteResult, StoreError>) + Send>;

/// Where a replicated branch's writes go instead of this writer: its leader's
/// proposer, which answers each once a majority holds it and this store applied it.
pub type ProposeTx = tokio::sync::mpsc::UnboundedSender<(WriteOp, WriteDone)>;

/// One queued piece of work.
enum Job {
    /// A change to the store.
    Write(WriteOp, WriteDone),
    /// Work on this copy alone: a read, or a barrier.
    Local(RunFn, FinishFn),
}

/// A job run, waiting for its batch to commit.
enum Ran {
    Write(WriteDone, Result<WriteResult, StoreError>),
    Local(FinishFn),
}

/// Called after each batch, once every job in it was answered (on the second stage's
/// thread).
pub(super) type BatchHook = Box<dyn Fn() + Send>;

/// Work that needs the store alone, between batches (no transaction open).
type ExclusiveFn = Box<dyn FnOnce(&mut Store) + Send>;

enum Msg {
    Job(Job),
    Hook(BatchHook),
    Exclusive(ExclusiveFn),
    Stop,
}

/// The thread that owns a store. Dropping it stops the thread after the queued work.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<Store>>,
    mark: Arc<Watermark>,
}

/// A cheap handle for submitting operations to a [`Writer`].
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: Sender<Msg>,
    me: BranchId,
    /// The store's keys: a national id is sealed before it is queued (or proposed).
    keys: crate::keys::DataKeys,
    /// Set for a replica: writes go to the proposer, local work to the writer.
    propose: Option<ProposeTx>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Job(Job::Write(..)) => "Write",
            Msg::Job(Job::Local(..)) => "Local",
            Msg::Hook(_) => "Hook",
            Msg::Exclusive(_) => "Exclusive",
            Msg::Stop => "Stop",
        })
    }
}

/// Where the writer hands each committed batch's ops, in commit order.
pub type Journal = Sender<Vec<WriteOp>>;

impl Writer {
    /// Moves `store` onto its own thread.
    /// The data keys of the store it writes (for the files beside it).
    pub fn keys(&self) -> &crate::keys::DataKeys {
        &self.handle.keys
    }

    pub fn spawn(store: Store) -> Writer {
        Writer::spawn_journaled(store, None)
    }

    /// Moves `store` onto its own thread; with a `journal`, every committed batch's
    /// writes go to it in commit order (the log that another copy can apply).
    pub fn spawn_journaled(store: Store, journal: Option<Journal>) -> Writer {
        let (tx, rx) = mpsc::channel();
        let me = store.branch();
        let keys = store.keys().clone();
        let mark = Arc::new(Watermark::default());
        let stage_mark = Arc::clone(&mark);
        let thread = std::thread::Builder::new()
            .name(format!("store-writer-{me}"))
            .spawn(move || writer_loop(store, rx, journal, stage_mark))
            .ok();
        Writer {
            handle: WriterHandle {
                tx,
                me,
                keys,
                propose: None,
            },
            thread,
            mark,
        }
    }

    /// How far this writer's batches are durable: reads beside it wait on it.
    pub fn watermark(&self) -> Arc<Watermark> {
        Arc::clone(&self.mark)
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

fn writer_loop(
    mut store: Store,
    rx: Receiver<Msg>,
    journal: Option<Journal>,
    mark: Arc<Watermark>,
) -> Store {
    let syncer = start_syncer(&store, mark.clone(), journal.clone());
    loop {
        let mut batch = match rx.recv() {
            Ok(Msg::Job(j)) => vec![j],
            Ok(Msg::Hook(h)) => {
                let _ = syncer.tx.send(Tail::Hook(h));
                continue;
            }
            Ok(Msg::Exclusive(f)) => {
                exclusive(&mut store, &syncer, f);
                continue;
            }
            Ok(Msg::Stop) | Err(_) => break,
        };
        let mut after = None;
        while batch.len() < WRITER_BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => batch.push(j),
                Ok(Msg::Hook(h)) => {
                    let _ = syncer.tx.send(Tail::Hook(h));
                }
                Ok(other) => {
                    after = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let committed = run_batch(&mut store, batch, journal.is_some(), &mark);
        let _ = syncer.tx.send(Tail::Batch(committed));
        match after {
            Some(Msg::Stop) => break,
            Some(Msg::Exclusive(f)) => exclusive(&mut store, &syncer, f),
            _ => {}
        }
    }
    let fsync = syncer.fsync;
    syncer.stop();
    // Whoever uses the store next commits with its own fsync again.
    set_synchronous(&store, fsync, "FULL");
    store
}

/// Runs `f` with the store alone: after every batch before it was answered, and with
/// SQLite's own fsync per commit (a snapshot's restore is durable when `f` returns).
fn exclusive(store: &mut Store, syncer: &Syncer, f: ExclusiveFn) {
    syncer.flush();
    set_synchronous(store, syncer.fsync, "FULL");
    f(store);
    set_synchronous(store, syncer.fsync, "NORMAL");
}

/// Sets the writer connection's `synchronous` where the second stage syncs for it.
fn set_synchronous(store: &Store, fsync: bool, level: &str) {
    if fsync && let Err(e) = store.conn.pragma_update(None, "synchronous", level) {
        tracing::warn!(error = %e, level, "the store's synchronous setting was not changed");
    }
}

/// Starts the writer's second stage. A store opened with `synchronous=FULL` commits
/// without its own fsync from here on (`NORMAL`: in WAL mode SQLite still syncs around
/// every checkpoint) and the stage syncs the WAL before any answer; a store opened
/// with `NORMAL` (benchmarks) is answered without one, as before.
fn start_syncer(store: &Store, mark: Arc<Watermark>, journal: Option<Journal>) -> Syncer {
    let level: i64 = store
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap_or(2);
    let db = store
        .conn
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let fsync = level >= 2 && db.is_some();
    // Were it not changed, still correct (SQLite syncs each commit itself), only slower.
    set_synchronous(store, fsync, "NORMAL");
    Syncer::start(db, fsync, mark, journal)
}

/// Runs one job in its own savepoint: kept when it succeeded, undone otherwise. An
/// error comes back with the job unrun: the batch has failed.
fn run_job(
    tx: &Connection,
    me: BranchId,
    job: Job,
    ops: Option<&mut Vec<WriteOp>>,
) -> (Ran, Option<BatchError>) {
    // Cached statements: the savepoint SQL is not parsed again for every job.
    let sql = |s: &str| tx.prepare_cached(s).and_then(|mut st| st.execute([]));
    if let Err(e) = sql("SAVEPOINT op") {
        return (job.unrun(), Some(BatchError::new(e)));
    }
    let (ok, ran) = match job {
        Job::Write(op, done) => {
            // Copied only for a journal (tests): applying consumes the op.
            let kept = ops.as_ref().map(|_| op.clone());
            let result = op.apply(tx, me);
            let ok = result.as_ref().is_ok_and(WriteResult::keeps);
            if let (true, Some(ops), Some(op)) = (ok, ops, kept) {
                ops.push(op);
            }
            (ok, Ran::Write(done, result))
        }
        Job::Local(run, finish) => (run(tx, me), Ran::Local(finish)),
    };
    let end = if ok {
        sql("RELEASE op")
    } else {
        sql("ROLLBACK TO op").and_then(|_| sql("RELEASE op"))
    };
    (ran, end.err().map(BatchError::new))
}

/// Runs `batch` as one transaction and commits it (its WAL pages written, not yet
/// synced); its answers wait in the returned batch for the second stage.
fn run_batch(store: &mut Store, batch: Vec<Job>, journaled: bool, mark: &Watermark) -> Committed {
    let me = store.branch();
    let mut ran = Vec::with_capacity(batch.len());
    let mut ops = Vec::new();
    let mut failed = None;
    let mut number = 0;
    match store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
    {
        Err(e) => {
            failed = Some(BatchError::new(e));
            ran.extend(batch.into_iter().map(Job::unrun));
        }
        Ok(tx) => {
            for job in batch {
                if failed.is_some() {
                    ran.push(job.unrun());
                    continue;
                }
                let (r, error) = run_job(&tx, me, job, journaled.then_some(&mut ops));
                ran.push(r);
                failed = error;
            }
            let metrics = crate::metrics::get();
            metrics.writer_batch_ops.observe(ran.len() as f64);
            if failed.is_none() {
                let started = std::time::Instant::now();
                number = mark.begin();
                failed = tx.commit().err().map(BatchError::new);
                metrics
                    .writer_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            } // else dropping `tx` rolls everything back
        }
    }
    Committed {
        number,
        failed,
        ops,
        answer: Box::new(move |failed| {
            for r in ran {
                r.finish(failed);
            }
        }),
    }
}

impl Job {
    /// A job that did not run because its batch failed first.
    fn unrun(self) -> Ran {
        match self {
            Job::Write(_, done) => {
                let why = "a job of a failed batch is answered with the batch's error";
                Ran::Write(done, Err(StoreError::Defensive(why)))
            }
            Job::Local(_, finish) => Ran::Local(finish),
        }
    }
}

impl Ran {
    /// Answers the caller: the job's result, or the batch's error.
    fn finish(self, failed: Option<&BatchError>) {
        match (self, failed) {
            (Ran::Write(done, _), Some(e)) => done(Err(StoreError::Batch(e.clone()))),
            (Ran::Write(done, result), None) => done(result),
            (Ran::Local(finish), failed) => finish(failed.cloned()),
        }
    }
}

impl WriterHandle {
    /// The branch of the store behind this handle.
    pub fn branch(&self) -> BranchId {
        self.me
    }

    /// The keys of the store behind this handle.
    pub fn keys(&self) -> &crate::keys::DataKeys {
        &self.keys
    }

    /// Calls `hook` on the writer thread after every batch from now on, once each of
    /// its jobs was answered: a caller that collects answers can take a whole batch's
    /// worth at once. `hook` must not block.
    pub fn on_batch_end(&self, hook: impl Fn() + Send + 'static) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Hook(Box::new(hook)))
            .map_err(|_| StoreError::WriterGone)
    }

    /// Runs `f` with the store alone, after the work queued before it and before the
    /// work queued after it, with no transaction open (a snapshot's copy, its restore).
    pub async fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: ExclusiveFn = Box::new(move |store| {
            let _ = tx.send(f(store));
        });
        self.tx
            .send(Msg::Exclusive(job))
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }

    /// This handle with its writes sent to a replica's proposer instead (see
    /// the replica's proposer); local work still runs on this writer.
    pub fn replicated(&self, propose: ProposeTx) -> WriterHandle {
        WriterHandle {
            propose: Some(propose),
            ..self.clone()
        }
    }

    /// Queues `op` for the writer's next batch (a replica's: for the proposer's next
    /// log entry); `done` gets its answer on the writer thread once the batch is
    /// durable (a replica's: held by a majority and applied here), or the error. Jobs
    /// run and finish in the order they were queued. `done` must not block.
    pub fn write_then(
        &self,
        op: WriteOp,
        done: impl FnOnce(Result<WriteResult, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let done: WriteDone = Box::new(done);
        match &self.propose {
            Some(p) => p.send((op, done)).map_err(|_| StoreError::NotLeader),
            None => self
                .tx
                .send(Msg::Job(Job::Write(op, done)))
                .map_err(|_| StoreError::WriterGone),
        }
    }

    /// Runs `op` in the writer's next batch and waits until the batch is durable.
    pub fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.write_then(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `op` in the writer's next batch and awaits the durable answer (async code).
    pub async fn call_write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write_then(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `f`, work on this copy of the store alone (a read, or a barrier: never a
    /// change, which must be a [`WriteOp`]), for the writer's next batch; `done` gets
    /// its result on the writer thread once the batch is durable (or the commit's
    /// error), in queue order with the writes around it. `done` must not block.
    pub fn local_then<R: Send + 'static>(
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
        let finish = Box::new(move |commit_error: Option<BatchError>| {
            let result = slot.lock().ok().and_then(|mut s| s.take());
            done(match (commit_error, result) {
                (Some(e), _) => Err(StoreError::Batch(e)),
                (None, Some(r)) => r,
                (None, None) => Err(StoreError::Defensive(
                    "a local job finished without running",
                )),
            });
        });
        self.tx
            .send(Msg::Job(Job::Local(run, finish)))
            .map_err(|_| StoreError::WriterGone)
    }

    /// [`WriterHandle::local_then`], waiting for the result.
    pub fn run_local<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.local_then(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// [`WriterHandle::local_then`], awaiting the result (async code).
    pub async fn call_local<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, BranchId) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.local_then(f, move |r| {
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
        self.write_then(WriteOp::TwoPc { now_ms, commands }, move |r| {
            done(
                r.and_then(WriteResult::into_two_pc)
                    .and_then(|r| r.map_err(StoreError::Shard)),
            )
        })
    }

    /// Opens an account (see [`Store::open_account`]).
    pub fn open_account(
        &self,
        customer: &NewCustomer,
        password_hash: &str,
        existing: Option<AccountNumber>,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        self.write(WriteOp::open_account(
            &self.keys,
            customer,
            password_hash.to_owned(),
            existing,
        ))?
        .into_account()
    }

    /// Closes an empty account.
    pub fn close_account(
        &self,
        account: AccountNumber,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        self.write(WriteOp::CloseAccount {
            account,
            now_ms: now_ms(),
        })?
        .into_account()
    }

    /// One account as a teller sees it.
    pub fn account(&self, n: AccountNumber) -> Result<Option<AccountView>, StoreError> {
        self.run_local(move |c, me| bank::view(c, me, n))
    }

    /// A deposit or withdrawal, idempotent by `id`.
    pub fn movement(
        &self,
        kind: Movement,
        id: TransferId,
        account: AccountNumber,
        amount: Amount,
    ) -> Result<TransferState, StoreError> {
        self.write(WriteOp::Movement {
            kind,
            id,
            account,
            amount,
            now_ms: now_ms(),
        })?
        .into_state()
    }
}

impl WriterHandle {
    /// Runs one 2PC storage command as a [`WriteOp`] in the writer's next batch. A
    /// refusal (`DecisionConflict`, `NotCoordinated`) is found before anything is
    /// written and comes back as it is.
    fn shard_write(&self, now_ms: u64, command: Command) -> Result<Option<Input>, ShardError> {
        let commands = vec![command];
        let mut inputs = self
            .write(WriteOp::TwoPc { now_ms, commands })?
            .into_two_pc()??;
        Ok(inputs.pop().flatten())
    }

    /// Runs one read-only `Shard` call on the writer's connection, in its next batch.
    fn shard_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ConnShard<'_>) -> Result<R, ShardError> + Send + 'static,
    ) -> Result<R, ShardError> {
        self.run_local(move |conn, me| {
            let mut shard = ConnShard {
                conn,
                me,
                now_ms: 0,
            };
            Ok(f(&mut shard))
        })?
    }
}

/// A `Shard` answer that does not fit its command: a bug in `coordinator::execute`.
fn unexpected(input: Option<Input>) -> ShardError {
    ShardError::Defensive(format!(
        "an answer that does not fit its command: {input:?}"
    ))
}

/// Every change is a [`WriteOp`] run by the writer; every read runs on its connection.
impl Shard for WriterHandle {
    fn branch(&self) -> BranchId {
        self.me
    }
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        let items = items.to_vec();
        match self.shard_write(now_ms, Command::Begin { items })? {
            Some(Input::Begun { outcomes, .. }) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        let items = items.to_vec();
        self.shard_write(now_ms(), Command::RecordDecisions { items })
            .map(drop)
    }
    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError> {
        let ids = ids.to_vec();
        self.shard_write(now_ms(), Command::MarkEnded { ids })
            .map(drop)
    }
    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError> {
        let ids = ids.to_vec();
        self.shard_read(move |s| s.read_decisions(&ids))
    }
    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError> {
        self.shard_read(|s| s.unfinished_coordinated())
    }
    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError> {
        let (items, evidence) = (items.to_vec(), evidence.clone());
        let command = Command::Prepare {
            coordinator,
            items,
            evidence,
        };
        match self.shard_write(now_ms, command)? {
            Some(Input::Prepared { votes, .. }) => Ok(votes),
            other => Err(unexpected(other)),
        }
    }
    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError> {
        let (items, evidence) = (items.to_vec(), evidence.clone());
        let command = Command::Apply {
            coordinator,
            items,
            evidence,
        };
        match self.shard_write(now_ms(), command)? {
            Some(Input::Applied { outcomes, .. }) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        self.shard_read(|s| s.in_doubt())
    }
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        let items = items.iter().map(|s| (0, *s)).collect();
        match self.shard_write(now_ms(), Command::TransferLocal { items })? {
            Some(Input::LocalDone { states, .. }) => Ok(states),
            other => Err(unexpected(other)),
        }
    }
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        self.shard_read(move |s| s.transfer_state(id))
    }
}

/// The `Shard` of a connection inside the writer's current batch: each call runs in the
/// batch's transaction, and is durable once the batch commits.
pub(crate) struct ConnShard<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) me: BranchId,
    /// The time every write of the call is made at (carried by its [`WriteOp`]).
    pub(crate) now_ms: u64,
}

impl Shard for ConnShard<'_> {
    fn branch(&self) -> BranchId {
        self.me
    }
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        Ok(twopc::begin(self.conn, self.me, items, now_ms)?)
    }
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        twopc::record_decisions(self.conn, self.me, items, self.now_ms)?
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
            self.now_ms,
        )?)
    }
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        Ok(twopc::in_doubt(self.conn)?)
    }
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        Ok(items
            .iter()
            .map(|s| bank::transfer_local(self.conn, self.me, s, self.now_ms))
            .collect::<Result<_, _>>()?)
    }
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        Ok(twopc::transfer_state(self.conn, self.me, id)?)
    }
}
