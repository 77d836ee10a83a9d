//! The 2PC driver: one task owns this branch's `coordinator::Branch` and runs its
//! commands against the store's writer and the network.
//!
//! - Storage commands go to the writer in the order they were emitted, those of a round
//!   as one operation. Answers come back once durable, a whole writer batch at a time
//!   (the writer's batch-end hook), and are fed to the machine in order.
//! - Every outgoing message is signed with the branch key, including those to this branch
//!   itself (delivered in-process, now only on recovery paths), and so are this branch's
//!   own yes votes, which a begin makes without a message: a commit keeps a signed yes
//!   vote from every participant.
//! - Teller transfers waiting in the queue are taken together: one `Request` input, so
//!   the machine batches them per destination branch.
//! - The engine works in rounds: it takes everything that is ready (durable answers,
//!   messages, transfers), steps the machine on each, and only then signs and sends what
//!   the round produced, merged into one envelope per destination (several kinds in a
//!   `BranchBody::Several`). Under load one envelope (one signature, one link request)
//!   carries the items of many transfers.
//! - Failpoints (the `fail` crate, configured with `FAILPOINTS`) sit at each 2PC step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use coordinator::{BeginOutcome, Branch, Command, Evidence, Input, Ticket};
use tokio::sync::{mpsc, oneshot};
use wire::link::{LinkRequest, LinkResponse};
use wire::teller::{TransferState, Unavailable};
use wire::twopc::{BranchBody, BranchMessage, TransferSpec, VoteItem};
use wire::{BranchId, BranchKey, Signed};

use super::now_ms;
use crate::p2p::network::Client;
use crate::store::StoreError;
use crate::store::writer::WriterHandle;
use client::network_file::NetworkFile;

/// How long a signed 2PC message stays valid, in milliseconds. Longer than every retry
/// wait, so a re-sent decision is never refused as stale on a healthy link.
pub const MESSAGE_TTL_MS: u64 = 60_000;

/// Most events (transfers, verified messages) waiting for the engine; more are refused.
pub const ENGINE_QUEUE_MAX: usize = 65_536;

/// Most teller transfers (lines of bulk payments included) handed to the engine and
/// not yet taken by it; past this a request's lines are answered `overloaded` at once.
/// A bulk payment is one event of up to 1,024 lines, so the event bound alone would
/// let a flood queue 1,024 times more transfers than before batches existed.
pub const ENGINE_LINES_WAITING_MAX: usize = 65_536;

/// Takes `n` of `max` places in `waiting`, or none when they would not fit.
fn admit(waiting: &AtomicUsize, n: usize, max: usize) -> bool {
    let before = waiting.fetch_add(n, Ordering::AcqRel);
    if before.saturating_add(n) > max {
        waiting.fetch_sub(n, Ordering::AcqRel);
        return false;
    }
    true
}

/// Most events and durable answers one round takes before it sends what it produced,
/// so a flood of input cannot hold messages back for long.
const ROUND_INPUTS_MAX: usize = 4_096;

/// The failpoints at each 2PC step, as named in `FAILPOINTS` (for example
/// `FAILPOINTS=after_decision_durable=panic`; a panic aborts the node).
pub const FAILPOINTS: [&str; 10] = [
    "before_prepare_durable",
    "after_prepare_durable",
    "before_vote_sent",
    "after_vote_sent",
    "before_decision_durable",
    "after_decision_durable",
    "before_decision_sent",
    "after_decision_sent",
    "before_apply",
    "after_apply",
];

fn failpoint(name: &'static str) {
    fail::fail_point!(name);
}

/// What the 2PC driver has done since start.
#[derive(Debug, Default)]
pub struct Counters {
    /// Transfers this branch voted yes on as a participant.
    pub prepared: AtomicU64,
    /// Teller transfers answered committed.
    pub committed: AtomicU64,
    /// Teller transfers answered aborted.
    pub aborted: AtomicU64,
    /// Transfers prepared here with no decision yet (a gauge).
    pub in_doubt: AtomicU64,
    /// Of those, the ones in doubt past the recovery bound (a gauge; see `alerts.rs`).
    pub in_doubt_overdue: AtomicU64,
    /// Rounds that sent at least one message.
    pub rounds: AtomicU64,
    /// Signed 2PC messages sent to other branches.
    pub messages_sent: AtomicU64,
    /// Per-transfer items in those messages.
    pub items_sent: AtomicU64,
    /// Storage commands queued to the writer.
    pub storage_commands: AtomicU64,
}

enum Event {
    /// Teller transfers: one, or the lines of a bulk payment, each with its reply.
    Transfers(Vec<(TransferSpec, oneshot::Sender<TransferState>)>),
    Message {
        from: BranchId,
        body: BranchBody,
        evidence: Evidence,
    },
    /// Answered once everything handed over before it is durable (see
    /// [`EngineHandle::barrier`]).
    Barrier(oneshot::Sender<()>),
}

/// The answers to one round's storage commands, each with the failpoint to pass before
/// acting on it.
struct Stored {
    results: Result<Vec<Option<Input>>, StoreError>,
    afters: Vec<Option<&'static str>>,
}

/// Durable answers on their way to the engine. The writer adds each answer to
/// `arriving` as it is given, and moves them to `ready` when its batch ends, so the
/// engine takes a whole batch's answers in one round.
#[derive(Default)]
struct StoredQueue {
    arriving: Vec<Stored>,
    ready: Vec<Stored>,
}

/// The queue and the wake-up for the engine.
#[derive(Default)]
struct StoredShared {
    queue: std::sync::Mutex<StoredQueue>,
    ready: tokio::sync::Notify,
}

impl StoredShared {
    fn push(&self, stored: Stored) {
        if let Ok(mut q) = self.queue.lock() {
            q.arriving.push(stored);
        }
    }

    /// The writer's batch ended: what arrived is ready.
    fn batch_ended(&self) {
        let moved = match self.queue.lock() {
            Ok(mut q) if !q.arriving.is_empty() => {
                let arrived = std::mem::take(&mut q.arriving);
                q.ready.extend(arrived);
                true
            }
            _ => false,
        };
        if moved {
            self.ready.notify_one();
        }
    }

    fn take_ready(&self) -> Vec<Stored> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut q.ready))
            .unwrap_or_default()
    }
}

/// Hands work to the engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    me: BranchId,
    tx: mpsc::Sender<Event>,
    /// Transfers handed over and not yet taken (see [`ENGINE_LINES_WAITING_MAX`]).
    waiting: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Transfers(t) => write!(f, "Transfers({})", t.len()),
            Event::Message { from, .. } => write!(f, "Message(from {from})"),
            Event::Barrier(_) => write!(f, "Barrier"),
        }
    }
}

impl EngineHandle {
    /// Coordinates `spec` and waits for its final outcome. Not taken (a full queue, too
    /// many in flight, a stopped engine): nothing was recorded, and the error says so.
    /// An engine lost after taking it: the outcome is not known (`NoAnswer`).
    pub async fn transfer(&self, spec: TransferSpec) -> Result<TransferState, Unavailable> {
        let mut answers = self.transfers(vec![spec]).await;
        answers.pop().unwrap_or(Err(Unavailable::NoAnswer(self.me)))
    }

    /// Coordinates every transfer of `specs` as one event, so the machine takes them in
    /// one round (one envelope and one writer operation per destination for all), and
    /// waits for each one's outcome. Each answer means what [`Self::transfer`]'s does.
    pub async fn transfers(
        &self,
        specs: Vec<TransferSpec>,
    ) -> Vec<Result<TransferState, Unavailable>> {
        let (items, waits): (Vec<_>, Vec<_>) = specs
            .into_iter()
            .map(|spec| {
                let (reply, rx) = oneshot::channel();
                ((spec, reply), rx)
            })
            .unzip();
        let n = items.len();
        let not_taken = if !admit(&self.waiting, n, ENGINE_LINES_WAITING_MAX) {
            Some(Unavailable::Overloaded)
        } else {
            let sent = self.tx.try_send(Event::Transfers(items));
            if sent.is_err() {
                self.waiting.fetch_sub(n, Ordering::AcqRel);
            }
            match sent {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(Unavailable::Overloaded),
                Err(mpsc::error::TrySendError::Closed(_)) => Some(Unavailable::Stopping),
            }
        };
        if let Some(why) = not_taken {
            return waits.iter().map(|_| Err(why)).collect();
        }
        let mut answers = Vec::with_capacity(waits.len());
        for rx in waits {
            answers.push(match rx.await {
                Ok(TransferState::Unknown) => Err(Unavailable::Overloaded),
                Ok(state) => Ok(state),
                Err(_) => Err(Unavailable::NoAnswer(self.me)),
            });
        }
        answers
    }

    /// Hands a verified message to the engine; `false` when its queue is full.
    pub fn deliver(&self, from: BranchId, body: BranchBody, evidence: Evidence) -> bool {
        self.tx
            .try_send(Event::Message {
                from,
                body,
                evidence,
            })
            .is_ok()
    }

    /// Resolves once every message and transfer handed over before it has been worked
    /// on and its storage is durable (or the engine is gone). A restored branch's
    /// recovery reads this branch's records after it, so no 2PC envelope accepted before
    /// the restore registered its epoch is missed.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The driver's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The task that owns the machine.
pub struct Engine {
    me: BranchId,
    branch: Branch,
    writer: WriterHandle,
    key: Arc<BranchKey>,
    network: Arc<NetworkFile>,
    client: Client,
    rx: mpsc::Receiver<Event>,
    stored: Arc<StoredShared>,
    tickets: HashMap<Ticket, oneshot::Sender<TransferState>>,
    next_ticket: Ticket,
    counters: Arc<Counters>,
    /// Shared with the handles: transfers handed over and not yet taken.
    waiting: Arc<AtomicUsize>,
    /// What this round produced to send, merged per destination and kind.
    outgoing: Vec<(BranchId, BranchBody)>,
    /// This round's storage commands, in emit order, with their `after` failpoints;
    /// queued to the writer as one operation when the round ends.
    storage: Vec<(Command, Option<&'static str>)>,
    /// The phases of the transfers coordinated here, timed for the metrics.
    phases: super::phases::Phases,
    /// This copy's epoch, sent with every envelope (see `fence.rs`).
    epoch: u64,
    /// Barriers taken this round, answered after its storage.
    barriers: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Makes the engine and its handle.
pub fn new(
    branch: Branch,
    writer: WriterHandle,
    key: Arc<BranchKey>,
    network: Arc<NetworkFile>,
    client: Client,
    epoch: u64,
) -> (EngineHandle, Engine) {
    let (tx, rx) = mpsc::channel(ENGINE_QUEUE_MAX);
    let stored = Arc::new(StoredShared::default());
    let hook = Arc::clone(&stored);
    // Without the hook (a writer already gone) nothing would be stored anyway: the
    // engine's first command fails and stops it.
    let _ = writer.on_batch_end(move || hook.batch_ended());
    let counters = Arc::new(Counters::default());
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        me: branch.id(),
        tx,
        waiting: Arc::clone(&waiting),
        counters: Arc::clone(&counters),
    };
    let engine = Engine {
        me: branch.id(),
        branch,
        writer,
        key,
        network,
        client,
        rx,
        stored,
        tickets: HashMap::new(),
        next_ticket: 0,
        counters,
        waiting,
        outgoing: Vec::new(),
        storage: Vec::new(),
        phases: super::phases::Phases::default(),
        epoch,
        barriers: Vec::new(),
    };
    (handle, engine)
}

impl Engine {
    /// Recovers from the store, then runs until `shutdown` resolves. In-flight work is
    /// left in a state recovery finishes: nothing is answered before it is durable.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StoreError> {
        let coordinated = self
            .writer
            .call_local(|c, _| crate::store::twopc::unfinished(c))
            .await?;
        let in_doubt = self
            .writer
            .call_local(|c, _| crate::store::twopc::in_doubt(c))
            .await?;
        tracing::info!(
            coordinated = coordinated.len(),
            in_doubt = in_doubt.len(),
            "2pc recovery"
        );
        self.step(Input::Recovered {
            coordinated,
            in_doubt,
        });
        self.flush();
        tokio::pin!(shutdown);
        loop {
            let timer = self.branch.next_timer().map(|at| {
                let wait = at.saturating_sub(now_ms());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.stored.ready.notified() => self.take_stored()?,
                event = self.rx.recv() => match event {
                    Some(e) => self.on_event(e),
                    None => break,
                },
                () = sleep_until(timer) => self.step(Input::Tick),
            }
            self.drain_ready()?;
            self.flush();
        }
        // Let storage already queued finish, so its effects are durable before exit.
        let (tx, rx) = oneshot::channel();
        let _ = self.writer.local_then(
            |_, _| Ok(()),
            move |_| {
                let _ = tx.send(());
            },
        );
        let _ = rx.await;
        Ok(())
    }

    /// Takes the durable answers of every batch that ended, in the order queued.
    fn take_stored(&mut self) -> Result<(), StoreError> {
        for stored in self.stored.take_ready() {
            self.on_stored(stored)?;
        }
        Ok(())
    }

    /// Takes what else is ready now: ended batches' answers, then events, up to
    /// [`ROUND_INPUTS_MAX`] of them.
    fn drain_ready(&mut self) -> Result<(), StoreError> {
        self.take_stored()?;
        let mut taken = 0;
        while taken < ROUND_INPUTS_MAX {
            let Ok(event) = self.rx.try_recv() else { break };
            self.on_event(event);
            taken += 1;
        }
        Ok(())
    }

    fn on_event(&mut self, first: Event) {
        let mut transfers = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event {
                Event::Transfers(items) => {
                    self.waiting.fetch_sub(items.len(), Ordering::AcqRel);
                    for (spec, reply) in items {
                        let ticket = self.next_ticket;
                        self.next_ticket += 1;
                        self.tickets.insert(ticket, reply);
                        transfers.push((ticket, spec));
                    }
                }
                Event::Message {
                    from,
                    body,
                    evidence,
                } => self.step(Input::Message {
                    from,
                    body,
                    evidence,
                }),
                Event::Barrier(done) => self.barriers.push(done),
            }
            if transfers.len() < wire::limits::BATCH_TRANSFERS_MAX {
                next = self.rx.try_recv().ok();
            }
        }
        if !transfers.is_empty() {
            self.step(Input::Request(transfers));
        }
    }

    fn on_stored(&mut self, stored: Stored) -> Result<(), StoreError> {
        let results = match stored.results {
            Ok(r) => r,
            // The machine was told nothing: stop, and let recovery redo it at restart.
            Err(e) => {
                tracing::error!("store failed under the 2pc driver, stopping: {e}");
                return Err(e);
            }
        };
        for (result, after) in results.into_iter().zip(stored.afters) {
            if let Some(name) = after {
                failpoint(name);
            }
            let Some(mut input) = result else { continue };
            self.untime_old_begins(&input);
            self.sign_own_votes(&mut input);
            if let Input::Prepared { votes, .. } = &input {
                let yes = votes
                    .iter()
                    .filter(|v| matches!(v, wire::Vote::Yes))
                    .count();
                self.counters
                    .prepared
                    .fetch_add(yes as u64, Ordering::Relaxed);
            }
            self.step(input);
        }
        Ok(())
    }

    fn step(&mut self, input: Input) {
        let mut out = Vec::new();
        self.branch.step(now_ms(), input, &mut out);
        for command in out {
            self.run_command(command);
        }
        self.counters.in_doubt.store(
            self.branch.participant().in_doubt() as u64,
            Ordering::Relaxed,
        );
    }

    /// Signs and sends what the round produced; messages to this branch are stepped at
    /// once, and what they produce goes out too.
    fn flush(&mut self) {
        if !self.outgoing.is_empty() {
            self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        }
        while !self.outgoing.is_empty() {
            for (to, body) in std::mem::take(&mut self.outgoing) {
                if let Some(local) = self.send(to, body) {
                    self.step(local);
                }
            }
        }
        self.submit_storage();
        // After this round's storage in the writer's queue: answered once it is durable.
        for done in std::mem::take(&mut self.barriers) {
            let _ = self.writer.local_then(
                |_, _| Ok(()),
                move |_| {
                    let _ = done.send(());
                },
            );
        }
    }

    /// Queues the round's storage commands to the writer, in emit order, as one
    /// operation; their answers come back together once durable.
    fn submit_storage(&mut self) {
        if self.storage.is_empty() {
            return;
        }
        let (commands, afters): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.storage).into_iter().unzip();
        let steps = durable_steps(&commands);
        let started = std::time::Instant::now();
        self.counters
            .storage_commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        let shared = Arc::clone(&self.stored);
        let queued = self
            .writer
            .execute_all_then(now_ms(), commands, move |results| {
                let m = crate::metrics::get();
                for step in steps {
                    let h = m
                        .twopc_durable_seconds
                        .get_or_create(&crate::metrics::label(step));
                    h.observe(started.elapsed().as_secs_f64());
                }
                shared.push(Stored { results, afters });
            });
        if let Err(e) = queued {
            // An error stops the engine before any failpoint is passed: no `afters`.
            self.stored.push(Stored {
                results: Err(e),
                afters: Vec::new(),
            });
            self.stored.batch_ended();
        }
    }

    /// Keeps a message for the end of the round, merged into the one already queued for
    /// the same branch (of any kind) while the batch limit allows.
    fn queue_send(&mut self, to: BranchId, body: BranchBody) {
        for (dest, queued) in &mut self.outgoing {
            if *dest == to && queued.len() + body.len() <= wire::limits::BATCH_TRANSFERS_MAX {
                queued.merge(body);
                return;
            }
        }
        self.outgoing.push((to, body));
    }

    /// Runs one command; messages wait for the end of the round.
    fn run_command(&mut self, command: Command) {
        match command {
            Command::Send { to, body } => self.queue_send(to, body),
            Command::Reply { ticket, id, state } => self.reply(ticket, id, state),
            storage => {
                self.time_phases(&storage);
                let (before, after) = match &storage {
                    // A begin prepares this branch's own leg in the same step.
                    Command::Prepare { .. } | Command::Begin { .. } => (
                        Some("before_prepare_durable"),
                        Some("after_prepare_durable"),
                    ),
                    Command::RecordDecisions { .. } => (
                        Some("before_decision_durable"),
                        Some("after_decision_durable"),
                    ),
                    Command::Apply { .. } => (Some("before_apply"), Some("after_apply")),
                    _ => (None, None),
                };
                if let Some(name) = before {
                    failpoint(name);
                }
                self.storage.push((storage, after));
            }
        }
    }

    /// A begin that found an earlier use of its id (a teller's resend) starts no phase.
    fn untime_old_begins(&mut self, input: &Input) {
        if let Input::Begun {
            items, outcomes, ..
        } = input
        {
            let old = items.iter().zip(outcomes);
            let old = old.filter(|(_, o)| !matches!(o, coordinator::BeginOutcome::New(_)));
            self.phases.not_begun(old.map(|(i, _)| i.spec.id));
        }
    }

    /// A coordinated transfer's begin, decision and end, as they are issued, start and
    /// end its phases in the metrics.
    fn time_phases(&mut self, command: &Command) {
        let now = std::time::Instant::now();
        let done = match command {
            Command::Begin { items } => {
                self.phases.begun(items.iter().map(|i| i.spec.id), now);
                return;
            }
            Command::RecordDecisions { items } => {
                self.phases.decided(items.iter().map(|i| i.id), now)
            }
            Command::MarkEnded { ids } => self.phases.ended(ids.iter().copied(), now),
            _ => return,
        };
        let m = &crate::metrics::get().twopc_phase_seconds;
        for (phase, took) in done {
            m.get_or_create(&crate::metrics::label(phase))
                .observe(took.as_secs_f64());
        }
    }

    fn reply(&mut self, ticket: Ticket, id: wire::TransferId, state: TransferState) {
        match state {
            TransferState::Committed => {
                self.counters.committed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%id, "transfer committed");
            }
            TransferState::Aborted(reason) => {
                self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%id, %reason, "transfer aborted");
            }
            TransferState::Pending | TransferState::Unknown => {
                tracing::debug!(%id, ?state, "transfer outcome not yet known");
            }
        }
        if let Some(reply) = self.tickets.remove(&ticket) {
            let _ = reply.send(state);
        }
    }

    /// The encoded signed envelope of `message`, from this branch.
    fn sign(&self, message: &BranchMessage) -> Option<Vec<u8>> {
        match Signed::sign(&self.key, self.me, message).and_then(|s| wire::encode(&s)) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::error!(to = %message.to, "cannot sign a 2pc message: {e}");
                None
            }
        }
    }

    /// Begin records came back: this branch's own yes votes among them are signed, as
    /// a `Votes` message to itself, so a commit keeps a signed yes vote from every
    /// participant, this one included.
    fn sign_own_votes(&self, input: &mut Input) {
        let Input::Begun {
            items,
            outcomes,
            evidence,
        } = input
        else {
            return;
        };
        let yes: Vec<_> = items
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| **o == BeginOutcome::New(Some(wire::Vote::Yes)))
            .map(|(i, _)| VoteItem {
                id: i.spec.id,
                vote: wire::Vote::Yes,
            })
            .collect();
        if yes.is_empty() {
            return;
        }
        self.counters
            .prepared
            .fetch_add(yes.len() as u64, Ordering::Relaxed);
        let message = BranchMessage {
            to: self.me,
            expires_at_ms: now_ms().saturating_add(MESSAGE_TTL_MS),
            body: BranchBody::Votes(yes),
        };
        *evidence = self.sign(&message).map(Arc::from);
    }

    fn send(&mut self, to: BranchId, body: BranchBody) -> Option<Input> {
        let steps = sent_steps(&body);
        let message = BranchMessage {
            to,
            expires_at_ms: now_ms().saturating_add(MESSAGE_TTL_MS),
            body,
        };
        let envelope = self.sign(&message)?;
        if to == self.me {
            return Some(Input::Message {
                from: self.me,
                body: message.body,
                evidence: Some(Arc::from(envelope)),
            });
        }
        if self.network.get(to).is_none() {
            tracing::error!(%to, "2pc message for a branch not in the network file");
            return None;
        }
        for (before, _) in &steps {
            failpoint(before);
        }
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get().twopc_messages_sent.inc();
        self.counters
            .items_sent
            .fetch_add(message.body.len() as u64, Ordering::Relaxed);
        let afters = steps.into_iter().map(|(_, after)| after);
        tokio::spawn(deliver(
            self.client.clone(),
            to,
            self.epoch,
            envelope,
            afters,
        ));
        None
    }
}

/// The (before, after) failpoints of the 2PC steps an outgoing body takes: sending
/// votes, sending decisions, or both when one envelope carries several kinds.
fn sent_steps(body: &BranchBody) -> Vec<(&'static str, &'static str)> {
    let mut steps = Vec::new();
    if !body.vote_items().is_empty() {
        steps.push(("before_vote_sent", "after_vote_sent"));
    }
    if !body.decision_items().is_empty() {
        steps.push(("before_decision_sent", "after_decision_sent"));
    }
    steps
}

/// Sends one signed envelope to `peer`. Loss is normal and left to the protocol's
/// timers: a coordinator sends its prepare again to participants that have not voted,
/// and its decision until it is acknowledged; a participant in doubt asks again.
async fn deliver(
    client: Client,
    to: BranchId,
    epoch: u64,
    envelope: Vec<u8>,
    afters: impl Iterator<Item = &'static str>,
) {
    match client
        .link_branch(to, LinkRequest::TwoPc { epoch, envelope })
        .await
    {
        Ok(LinkResponse::Accepted) => afters.for_each(failpoint),
        Ok(other) => tracing::warn!(%to, ?other, "2pc message refused"),
        Err(e) => tracing::debug!(%to, "2pc message not delivered: {e}"),
    }
}

/// The 2PC steps a round's storage commands make durable, each named once.
fn durable_steps(commands: &[Command]) -> Vec<&'static str> {
    let mut steps = Vec::new();
    for c in commands {
        let step = match c {
            Command::Prepare { .. } | Command::Begin { .. } => "prepare",
            Command::RecordDecisions { .. } => "decision",
            Command::Apply { .. } => "apply",
            _ => "other",
        };
        if !steps.contains(&step) {
            steps.push(step);
        }
    }
    steps
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_waiting_for_the_engine_are_bounded_by_lines_not_requests() {
        let waiting = AtomicUsize::new(0);
        assert!(admit(&waiting, 1_024, 2_048));
        assert!(admit(&waiting, 1_024, 2_048));
        // A third batch, or even one more transfer, does not fit: nothing is taken.
        assert!(!admit(&waiting, 1_024, 2_048));
        assert!(!admit(&waiting, 1, 2_048));
        assert_eq!(waiting.load(Ordering::Acquire), 2_048);
        // The engine takes a batch: its places are free again.
        waiting.fetch_sub(1_024, Ordering::AcqRel);
        assert!(admit(&waiting, 1, 2_048));
    }
}
