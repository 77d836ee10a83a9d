//! The fence at run time (see `wire::fence` for the protocol): the [`Witness`] that
//! answers other branches' claims and checks the epoch of every 2PC envelope they
//! send, and the [`Holder`] that keeps this branch's own lease, read through a
//! [`Lease`] by whatever must not move money without it.
//!
//! Why it is safe (ARCHITECTURE.md, "Fencing", says it for people):
//! - A copy moves money only while its lease runs: a witness granted its claim less
//!   than the lease (the network file's `fence_lease_ms`) ago, counted on the copy's
//!   own clock from when it *sent* the claim (before the witness saw it), and checked
//!   again after the change is durable and before the answer goes out.
//! - A witness lets a second copy in (a new instance that is not the known successor,
//!   or a restore's new epoch) only once the live instance's last renewal is a grace
//!   period (the lease and half again) old on the witness's clock: by then the old copy's lease has run
//!   out, whatever the clocks read, as long as they run at about the same rate (the
//!   grace is half again the lease). Only durations are compared, never two clocks'
//!   readings, so clocks that are set wrong do not matter.
//! - A fresh instance (one that cannot prove from its lock that it follows the last
//!   one in the same data dir) needs every witness's grant before its first lease: the
//!   old copy may be renewing at any one of them.
//! - A paused process that resumes finds its lease run out (the monotonic clock counts
//!   the pause) and asks again; a witness that saw a newer epoch answers `Fenced`, and
//!   the copy stops for good.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;
use wire::fence::{Claim, ClaimAnswer, ClaimKind, FENCE_DOMAIN, Head};
use wire::limits::{FENCE_ANSWER_WAIT_MS, FENCE_CLAIM_TTL_MS, FENCE_RENEW_MS};
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::teller::Unavailable;
use wire::{BranchId, BranchKey, Signed};

use super::now_ms;
use crate::p2p::network::Client;
use crate::store::StoreError;
use crate::store::fence::WitnessRow;
use crate::store::ops::{FenceOp, WriteOp};
use crate::store::reader::Reader;
use crate::store::writer::WriterHandle;
use client::network_file::NetworkFile;

/// How often a witness writes a branch's newer head when nothing else changed.
const HEAD_WRITE_MS: u64 = 10_000;

/// A lease is used only with an eighth of it left, so a check just before an answer
/// is not undone by the time the answer takes to leave.
fn margin(lease: Duration) -> Duration {
    lease / 8
}

/// What a witness knows of one branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub epoch: u64,
    /// The instance serving it; `None` when a restore registered the epoch and no
    /// process serves it yet.
    pub instance: Option<u64>,
    /// When `instance` last renewed, on this witness's clock.
    pub renewed: Option<Instant>,
}

/// What a witness does with one claim: its answer, and the entry that follows (to be
/// made durable first when `durable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub answer: ClaimAnswer,
    pub next: Option<Entry>,
    pub durable: bool,
}

fn live(entry: &Entry, now: Instant, grace: Duration) -> Option<Duration> {
    let since = now.saturating_duration_since(entry.renewed?);
    (entry.instance.is_some() && since < grace).then_some(since)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The rules of a witness, pure: `entry` is what it knows of the claiming branch, and
/// `grace` how long after its last renewal a copy may be taken over.
pub(crate) fn decide(
    entry: Option<Entry>,
    kind: ClaimKind,
    epoch: u64,
    now: Instant,
    grace: Duration,
) -> Verdict {
    let serving = |instance| Entry {
        epoch,
        instance: Some(instance),
        renewed: Some(now),
    };
    let grant = |next: Entry, durable| Verdict {
        answer: ClaimAnswer::Granted,
        next: Some(next),
        durable,
    };
    let answer = |answer| Verdict {
        answer,
        next: None,
        durable: false,
    };
    let registered = Entry {
        epoch,
        instance: None,
        renewed: None,
    };
    let Some(e) = entry else {
        return match kind {
            ClaimKind::Probe => answer(ClaimAnswer::State {
                epoch: 0,
                renewed_ms_ago: None,
                head: None,
            }),
            ClaimKind::Register => grant(registered, true),
            ClaimKind::Serve { instance, .. } => grant(serving(instance), true),
        };
    };
    let in_use = |since: Duration| {
        answer(ClaimAnswer::InUse {
            epoch: e.epoch,
            renewed_ms_ago: ms(since),
        })
    };
    if let ClaimKind::Probe = kind {
        return answer(ClaimAnswer::State {
            epoch: e.epoch,
            renewed_ms_ago: live(&e, now, grace).map(ms),
            head: None,
        });
    }
    if epoch < e.epoch {
        return answer(ClaimAnswer::Fenced { newest: e.epoch });
    }
    let taking_over = match kind {
        ClaimKind::Serve {
            instance,
            successor_of,
        } if epoch == e.epoch => {
            if e.instance == Some(instance) {
                return grant(serving(instance), false);
            }
            e.instance.is_some() && successor_of != e.instance
        }
        ClaimKind::Register if epoch == e.epoch => return grant(e, false),
        _ => true,
    };
    if taking_over && let Some(since) = live(&e, now, grace) {
        return in_use(since);
    }
    match kind {
        ClaimKind::Serve { instance, .. } => grant(serving(instance), true),
        _ => grant(registered, true),
    }
}

/// What a witness keeps of one branch: the entry, the branch's last head, and when
/// they were last stored.
type Known = (Entry, Option<Head>, Option<Instant>);

/// Answers other branches' claims and checks their envelopes' epochs. One per node
/// while its store can be written (a replica: while it leads).
#[derive(Debug)]
pub struct Witness {
    me: BranchId,
    network: Arc<NetworkFile>,
    writes: WriterHandle,
    entries: Mutex<HashMap<BranchId, Known>>,
    /// One claim at a time: a takeover is decided on what the last one left.
    claims: tokio::sync::Mutex<()>,
}

impl Witness {
    /// The witness of what `rows` say; an instance they name may still be live, so it
    /// counts as renewed now.
    pub fn new(
        me: BranchId,
        network: Arc<NetworkFile>,
        writes: WriterHandle,
        rows: Vec<WitnessRow>,
    ) -> Witness {
        let now = Instant::now();
        let entries = rows
            .into_iter()
            .map(|r| {
                let entry = Entry {
                    epoch: r.epoch,
                    instance: r.instance,
                    renewed: r.instance.map(|_| now),
                };
                (r.branch, (entry, r.head, None))
            })
            .collect();
        Witness {
            me,
            network,
            writes,
            entries: Mutex::new(entries),
            claims: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a 2PC envelope from the copy of `from` at `epoch` may be acted on.
    pub fn check_envelope(&self, from: BranchId, epoch: u64) -> Result<(), EnvelopeRefusal> {
        if from == self.me {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&from) {
            Some((e, _, _)) if epoch < e.epoch => Err(EnvelopeRefusal::Fenced),
            Some((e, _, _)) if epoch == e.epoch => Ok(()),
            _ => Err(EnvelopeRefusal::NotConfirmed),
        }
    }

    /// Answers a claim `bytes` that `peer` sent. A change it makes (a new epoch or
    /// instance) is durable before the answer; the branch's newer head is stored at
    /// most every [`HEAD_WRITE_MS`].
    pub async fn claim(&self, peer: &PeerId, bytes: &[u8]) -> ClaimAnswer {
        let Some(claim) = self.verified(peer, bytes) else {
            return ClaimAnswer::Refused;
        };
        let _one = self.claims.lock().await;
        let now = Instant::now();
        let (entry, head, written) = self.known(claim.branch);
        let grace = self.network.fence_grace();
        let mut verdict = decide(entry, claim.kind, claim.epoch, now, grace);
        if let ClaimAnswer::State { head: h, .. } = &mut verdict.answer {
            *h = head;
        }
        if let Some(next) = verdict.next {
            let due = written.is_none_or(|w| now - w >= Duration::from_millis(HEAD_WRITE_MS));
            let newer_head = claim.head.is_some() && claim.head != head && due;
            let head = claim.head.or(head);
            let write = verdict.durable || newer_head;
            if write && let Err(e) = self.store(claim.branch, next, head).await {
                tracing::error!(branch = %claim.branch, "fence witness could not store: {e}");
                return ClaimAnswer::Refused;
            }
            let written = if write { Some(now) } else { written };
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.insert(claim.branch, (next, head, written));
        }
        self.log(&claim, &verdict.answer);
        verdict.answer
    }

    /// What this witness knows of `branch`: the entry, its last head, when it was stored.
    fn known(&self, branch: BranchId) -> (Option<Entry>, Option<Head>, Option<Instant>) {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&branch) {
            Some((e, h, w)) => (Some(*e), *h, *w),
            None => (None, None, None),
        }
    }

    /// The claim in `bytes` if it is signed by a replica of its branch connected as
    /// `peer`, for this branch, and fresh.
    fn verified(&self, peer: &PeerId, bytes: &[u8]) -> Option<Claim> {
        let signed: Signed<Claim> = wire::decode(bytes).ok()?;
        let branch = self.network.get(signed.signer)?;
        let replica = branch.replica_by_peer(peer)?;
        let claim = signed
            .verify_in_domain(FENCE_DOMAIN, &replica.public_key)
            .ok()?;
        let fresh = now_ms().abs_diff(claim.sent_at_ms) <= FENCE_CLAIM_TTL_MS;
        (claim.branch == signed.signer && claim.to == self.me && claim.branch != self.me && fresh)
            .then_some(claim)
    }

    async fn store(
        &self,
        branch: BranchId,
        e: Entry,
        head: Option<Head>,
    ) -> Result<(), StoreError> {
        let row = WitnessRow {
            branch,
            epoch: e.epoch,
            instance: e.instance,
            head,
            at_ms: now_ms(),
        };
        self.writes
            .call_write(WriteOp::Fence(FenceOp::Witness(row)))
            .await
            .map(drop)
    }

    fn log(&self, claim: &Claim, answer: &ClaimAnswer) {
        match answer {
            ClaimAnswer::Fenced { newest } => tracing::warn!(
                branch = %claim.branch, epoch = claim.epoch, newest,
                "fence: refused a copy of a branch older than its newest (a restore replaced it)"
            ),
            ClaimAnswer::InUse { renewed_ms_ago, .. } => tracing::warn!(
                branch = %claim.branch, renewed_ms_ago, kind = ?claim.kind,
                "fence: refused a second copy of a branch while another serves it"
            ),
            _ => {}
        }
    }
}

/// Where this branch's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease yet, or it ran out: money does not move.
    Unconfirmed,
    /// Money may move until then (less the margin).
    Until(Instant),
    /// A witness knows a newer epoch of this branch: this copy never serves again.
    Fenced { newest: u64, by: BranchId },
}

/// This branch's lease, read by the teller service and the run loop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lease {
    state: watch::Receiver<LeaseState>,
    nudge: Arc<tokio::sync::Notify>,
    /// How much of the lease must be left to use it.
    margin: Duration,
    /// The sender of a lease that always holds (no holder keeps it).
    _always: Option<Arc<watch::Sender<LeaseState>>>,
}

impl Lease {
    /// A lease that always holds: for a replica's engine, whose holder is the leader's.
    pub fn always() -> Lease {
        let (tx, state) = watch::channel(LeaseState::Until(far_future()));
        Lease {
            state,
            nudge: Arc::default(),
            margin: Duration::ZERO,
            _always: Some(Arc::new(tx)),
        }
    }

    /// Whether money may move now; if not, why (nothing was done).
    pub fn serving(&self) -> Result<(), Unavailable> {
        match *self.state.borrow() {
            LeaseState::Until(t) if t > Instant::now() + self.margin => Ok(()),
            LeaseState::Fenced { .. } => Err(Unavailable::Fenced),
            _ => Err(Unavailable::NotConfirmed),
        }
    }

    /// After a change was made durable and before it is answered: the lease still
    /// holds, or is renewed within [`FENCE_ANSWER_WAIT_MS`]. Otherwise the change may
    /// not stand (`LeaseLost`), or it does not (`Fenced`).
    pub async fn still_serving(&self) -> Result<(), Unavailable> {
        if self.serving().is_ok() {
            return Ok(());
        }
        self.nudge.notify_waiters();
        let mut rx = self.state.clone();
        let wait = Duration::from_millis(FENCE_ANSWER_WAIT_MS);
        let renewed = tokio::time::timeout(wait, async {
            loop {
                match self.serving() {
                    Err(Unavailable::NotConfirmed) => {}
                    other => return other,
                }
                if rx.changed().await.is_err() {
                    return Err(Unavailable::LeaseLost);
                }
            }
        })
        .await;
        renewed.unwrap_or(Err(Unavailable::LeaseLost))
    }

    /// Waits until the lease holds; `Err` with the newest epoch when fenced instead.
    pub async fn confirmed(&self) -> Result<(), (u64, BranchId)> {
        let mut rx = self.state.clone();
        loop {
            match *rx.borrow_and_update() {
                LeaseState::Until(t) if t > Instant::now() + self.margin => return Ok(()),
                LeaseState::Fenced { newest, by } => return Err((newest, by)),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves once this copy is fenced, with the newest epoch and who said so.
    pub async fn fenced(&self) -> (u64, BranchId) {
        let mut rx = self.state.clone();
        loop {
            if let LeaseState::Fenced { newest, by } = *rx.borrow_and_update() {
                return (newest, by);
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The state now, for readiness.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// How this process claims its branch.
#[derive(Clone, Copy, Debug)]
pub struct Claiming {
    pub epoch: u64,
    pub instance: u64,
    /// The instance this one follows in the same data dir (its lock proves it ended).
    pub successor_of: Option<u64>,
}

/// Keeps this branch's lease: claims it at every other branch every
/// [`FENCE_RENEW_MS`] (sooner when a [`Lease`] asks), each witness on a loop of its own
/// (a slow or paused one never holds the others' answers back), and says where the
/// lease stands.
pub struct Holder {
    me: BranchId,
    network: Arc<NetworkFile>,
    reader: Reader,
    claimer: Claimer,
    /// Witnesses that must still grant before the first lease (a fresh instance needs
    /// them all).
    awaiting: HashSet<BranchId>,
    head: Head,
    tx: watch::Sender<LeaseState>,
    nudge: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// How long one claim may take before the loop gives up on it and claims again: never
/// less than a first connection may take ([`crate::p2p::OPEN_TIMEOUT_MS`]), or a busy
/// machine would cut every first connection off half-way and never be confirmed; half
/// a lease otherwise (a grant counts from when its claim was sent, so a late one only
/// buys less time).
fn claim_wait(lease: Duration) -> Duration {
    (lease / 2).max(Duration::from_millis(crate::p2p::OPEN_TIMEOUT_MS))
}

impl Holder {
    /// The holder and the lease it keeps. With no other branch listed, the lease
    /// always holds (nobody could witness another copy).
    pub fn new(
        me: BranchId,
        key: Arc<BranchKey>,
        network: Arc<NetworkFile>,
        client: Client,
        reader: Reader,
        claiming: Claiming,
    ) -> (Holder, Lease) {
        let others: HashSet<BranchId> = network
            .branches()
            .map(|b| b.id)
            .filter(|b| *b != me)
            .collect();
        let first = if others.is_empty() {
            LeaseState::Until(far_future())
        } else {
            LeaseState::Unconfirmed
        };
        let (tx, state) = watch::channel(first);
        let nudge = Arc::new(tokio::sync::Notify::new());
        let awaiting = if claiming.successor_of.is_some() {
            HashSet::new()
        } else {
            others
        };
        let lease = Lease {
            state,
            nudge: Arc::clone(&nudge),
            margin: margin(network.fence_lease()),
            _always: None,
        };
        let claimer = Claimer {
            me,
            key,
            client,
            claiming,
            wait: claim_wait(network.fence_lease()),
        };
        let holder = Holder {
            me,
            network,
            reader,
            claimer,
            awaiting,
            head: Head::default(),
            tx,
            nudge,
        };
        (holder, lease)
    }

    /// Claims until `stop` resolves or this copy is fenced.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let others: Vec<BranchId> = self
            .network
            .branches()
            .map(|b| b.id)
            .filter(|b| *b != self.me)
            .collect();
        if others.is_empty() {
            return stop.await;
        }
        tokio::pin!(stop);
        let (answers_tx, mut answers) = tokio::sync::mpsc::channel(others.len() * 4);
        let (heads, head_rx) = watch::channel(self.read_head().await);
        let mut loops = tokio::task::JoinSet::new();
        for to in others {
            let (c, heads, nudge) = (
                self.claimer.clone(),
                head_rx.clone(),
                Arc::clone(&self.nudge),
            );
            loops.spawn(c.claim_loop(to, heads, nudge, answers_tx.clone()));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(FENCE_RENEW_MS));
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {
                    let head = self.read_head().await;
                    let _ = heads.send(head);
                }
                Some((by, answer, sent)) = answers.recv() => {
                    if self.take(by, answer, sent) {
                        break;
                    }
                }
            }
        }
        loops.abort_all();
    }

    /// Takes witness `by`'s answer to a claim sent at `sent`; true once fenced.
    fn take(&mut self, by: BranchId, answer: Option<ClaimAnswer>, sent: Instant) -> bool {
        match answer {
            Some(ClaimAnswer::Granted) => {
                self.awaiting.remove(&by);
            }
            Some(ClaimAnswer::Fenced { newest }) => {
                let _ = self.tx.send(LeaseState::Fenced { newest, by });
                return true;
            }
            Some(ClaimAnswer::InUse { renewed_ms_ago, .. }) => {
                tracing::warn!(
                    witness = %by, renewed_ms_ago,
                    "another copy of this branch serves it (seen by that branch): this copy \
                     waits until it has been silent for the grace period; stop the other copy"
                );
                return false;
            }
            _ => return false,
        }
        if self.awaiting.is_empty() {
            let until = sent + self.network.fence_lease();
            self.tx.send_if_modified(|s| match s {
                LeaseState::Until(t) if *t >= until => false,
                LeaseState::Fenced { .. } => false,
                _ => {
                    *s = LeaseState::Until(until);
                    true
                }
            });
        }
        false
    }

    /// This branch's head now (the last one if the read fails).
    async fn read_head(&mut self) -> Option<Head> {
        let last = self.head;
        let read = self
            .reader
            .read(move |c, me| crate::store::fence::advance_head(c, me, last))
            .await;
        match read {
            Ok(mut h) => {
                h.at_ms = now_ms();
                self.head = h;
                Some(h)
            }
            Err(e) => {
                tracing::warn!("fence: cannot read this branch's head: {e}");
                None
            }
        }
    }
}

/// What one witness's claim loop needs. Cheap to clone.
#[derive(Clone)]
struct Claimer {
    me: BranchId,
    key: Arc<BranchKey>,
    client: Client,
    claiming: Claiming,
    wait: Duration,
}

/// An answer from a witness (`None`: none in time) to the claim sent at the instant.
type Answered = (BranchId, Option<ClaimAnswer>, Instant);

impl Claimer {
    /// Claims at witness `to` every [`FENCE_RENEW_MS`] (at once when nudged) with the
    /// newest head, sending each answer to the holder.
    async fn claim_loop(
        self,
        to: BranchId,
        heads: watch::Receiver<Option<Head>>,
        nudge: Arc<tokio::sync::Notify>,
        answers: tokio::sync::mpsc::Sender<Answered>,
    ) {
        let mut failing = 0u32;
        loop {
            let sent = Instant::now();
            let claim = Claim {
                branch: self.me,
                to,
                epoch: self.claiming.epoch,
                kind: ClaimKind::Serve {
                    instance: self.claiming.instance,
                    successor_of: self.claiming.successor_of,
                },
                head: *heads.borrow(),
                sent_at_ms: now_ms(),
            };
            let answer = ask(&self.client, &self.key, self.me, claim, self.wait).await;
            failing = Self::note(to, &answer, failing);
            if answers.send((to, answer.ok(), sent)).await.is_err() {
                return;
            }
            let next = sent + Duration::from_millis(FENCE_RENEW_MS);
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = nudge.notified() => {}
            }
        }
    }
}

impl Claimer {
    /// Logs a claim at `to` that got no answer (the first of a run and every tenth),
    /// and the first answer after such a run; the count of failures in a row.
    fn note(to: BranchId, answer: &Result<ClaimAnswer, String>, failing: u32) -> u32 {
        match answer {
            Err(why) => {
                if failing.is_multiple_of(10) {
                    tracing::info!(witness = %to, failing = failing + 1, "fence: claim not answered: {why}");
                }
                failing + 1
            }
            Ok(a) => {
                if failing > 0 {
                    tracing::info!(witness = %to, after = failing, "fence: claim answered: {a:?}");
                }
                0
            }
        }
    }
}

/// Signs `claim` as branch `me` and sends it; the witness's answer if one came within
/// `wait`, else why none came.
pub async fn ask(
    client: &Client,
    key: &BranchKey,
    me: BranchId,
    claim: Claim,
    wait: Duration,
) -> Result<ClaimAnswer, String> {
    let to = claim.to;
    let signed =
        Signed::sign_in_domain(FENCE_DOMAIN, key, me, &claim).map_err(|e| e.to_string())?;
    let bytes = wire::encode(&signed).map_err(|e| e.to_string())?;
    match tokio::time::timeout(wait, client.link_branch(to, LinkRequest::Fence(bytes))).await {
        Ok(Ok(LinkResponse::Fence(answer))) => Ok(answer),
        Ok(Ok(other)) => Err(format!("answered {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(instance: u64, successor_of: Option<u64>) -> ClaimKind {
        ClaimKind::Serve {
            instance,
            successor_of,
        }
    }

    fn entry(epoch: u64, instance: Option<u64>, renewed: Option<Instant>) -> Entry {
        Entry {
            epoch,
            instance,
            renewed,
        }
    }

    const LEASE_MS: u64 = wire::limits::FENCE_LEASE_MS;
    const GRACE_MS: u64 = wire::limits::fence_grace_ms(LEASE_MS);

    fn decide(e: Option<Entry>, kind: ClaimKind, epoch: u64, now: Instant) -> Verdict {
        super::decide(e, kind, epoch, now, Duration::from_millis(GRACE_MS))
    }

    /// (answer, whether the witness takes the claim, whether it writes first)
    fn check(
        e: Option<Entry>,
        kind: ClaimKind,
        epoch: u64,
        now: Instant,
    ) -> (ClaimAnswer, bool, bool) {
        let v = decide(e, kind, epoch, now);
        (v.answer, v.next.is_some(), v.durable)
    }

    #[test]
    fn the_witness_rules() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(LEASE_MS);
        let late = t0 + Duration::from_millis(GRACE_MS + 1);
        let live = Some(entry(3, Some(7), Some(t0)));
        let g = ClaimAnswer::Granted;
        let in_use = |ms| ClaimAnswer::InUse {
            epoch: 3,
            renewed_ms_ago: ms,
        };
        // A branch never seen: its first claim is taken and stored.
        assert_eq!(check(None, serve(7, None), 3, t0), (g, true, true));
        // The live instance renews: nothing to store.
        assert_eq!(check(live, serve(7, None), 3, soon), (g, true, false));
        // A second instance of the same epoch waits out the live one's grace...
        assert_eq!(
            check(live, serve(8, None), 3, soon),
            (in_use(LEASE_MS), false, false)
        );
        assert_eq!(check(live, serve(8, None), 3, late), (g, true, true));
        // ...unless it follows it in the same data dir (its lock proves the end).
        assert_eq!(check(live, serve(8, Some(7)), 3, soon), (g, true, true));
        assert!(
            !check(live, serve(8, Some(6)), 3, soon).1,
            "not the live one's successor"
        );
        // An older epoch is fenced, whatever it claims.
        let fenced = ClaimAnswer::Fenced { newest: 3 };
        assert_eq!(
            check(live, serve(7, Some(7)), 2, soon),
            (fenced, false, false)
        );
        assert_eq!(
            check(live, ClaimKind::Register, 2, late),
            (fenced, false, false)
        );
        // A restore's probe reads; its registration waits for a silent branch.
        let probe = check(live, ClaimKind::Probe, 4, soon);
        assert_eq!(
            probe,
            (
                ClaimAnswer::State {
                    epoch: 3,
                    renewed_ms_ago: Some(LEASE_MS),
                    head: None
                },
                false,
                false
            )
        );
        assert_eq!(
            check(live, ClaimKind::Register, 4, soon).0,
            in_use(LEASE_MS)
        );
        let registered = decide(live, ClaimKind::Register, 4, late);
        assert_eq!((registered.answer, registered.durable), (g, true));
        let after = registered.next;
        assert_eq!(after, Some(entry(4, None, None)));
        // Registered: the old copy is fenced; the restored one starts at once.
        assert_eq!(
            check(after, serve(7, None), 3, late).0,
            ClaimAnswer::Fenced { newest: 4 }
        );
        assert_eq!(check(after, serve(9, None), 4, late), (g, true, true));
        assert_eq!(
            check(after, ClaimKind::Register, 4, late),
            (g, true, false),
            "idempotent"
        );
        // A newer epoch while the old copy is live: refused, nothing changes.
        assert_eq!(check(live, serve(9, None), 4, soon).0, in_use(LEASE_MS));
    }

    #[test]
    fn a_witness_after_a_restart_counts_a_named_instance_as_live() {
        let t0 = Instant::now();
        // Loaded from the store: renewed "now", so a stranger waits the grace.
        let loaded = Some(entry(1, Some(5), Some(t0)));
        assert!(matches!(
            decide(loaded, serve(6, None), 1, t0).answer,
            ClaimAnswer::InUse { .. }
        ));
        assert_eq!(
            decide(loaded, serve(5, None), 1, t0).answer,
            ClaimAnswer::Granted
        );
        // A registered epoch has no instance: the first server is taken.
        let registered = Some(entry(2, None, None));
        assert_eq!(
            decide(registered, serve(6, None), 2, t0).answer,
            ClaimAnswer::Granted
        );
    }
}
