//! The store's 2PC records (coordinator and participant roles) and `Shard` for `Store`.
//!
//! A balance change and the 2PC record that justifies it are written in the same SQLite
//! transaction, with the signed envelope (evidence) they came in.

use coordinator::{
    ApplyOutcome, ApplyRefusal, BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord,
    Evidence, InDoubtRecord, Shard, ShardError,
};
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use wire::teller::{EntryKind, TransferState};
use wire::twopc::{DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{BranchId, Decision, Refusal, TransferId};

use super::bank::{self, check_credit, check_debit, write_row};
use super::ledger::{self, NewEntry};
use wire::limits::{
    ABORT_ONLY_LEGS_PER_PEER_MAX, NO_VOTE_LEGS_PER_PEER_MAX, PREPARE_DEADLINE_MAX_MS,
};

use super::{Store, StoreError, blob_id, id_blob, now_ms, sql_ms};

pub(super) fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    wire::encode(v).map_err(|e| StoreError::Malformed(e.to_string()))
}

pub(super) fn dec<T: serde::de::DeserializeOwned + serde::Serialize>(
    b: &[u8],
) -> Result<T, StoreError> {
    wire::decode(b).map_err(|e| StoreError::Malformed(e.to_string()))
}

fn decision_text(d: Decision) -> &'static str {
    match d {
        Decision::Commit => "commit",
        Decision::Abort => "abort",
    }
}

pub(super) fn decision_from(t: Option<String>) -> Option<Decision> {
    match t.as_deref() {
        Some("commit") => Some(Decision::Commit),
        Some("abort") => Some(Decision::Abort),
        _ => None,
    }
}

/// One storage call's context: its time (every entry it writes carries it, so the same
/// call gives the same rows on every copy of the store), and the signed envelopes met
/// during it, each stored once: a batch of a thousand transfers arrives in one
/// envelope, which is hashed and written once and linked to every record it justifies.
pub(super) struct Call {
    at_ms: u64,
    /// Envelope (by the address of its shared bytes) -> its stored hash.
    stored: HashMap<*const u8, Vec<u8>>,
}

impl Call {
    pub(super) fn at(at_ms: u64) -> Call {
        Call {
            at_ms,
            stored: HashMap::new(),
        }
    }

    /// Links the record of `id` to the envelope it came in (`what`: its role as proof).
    pub(super) fn link(
        &mut self,
        conn: &Connection,
        id: TransferId,
        what: &str,
        evidence: &Evidence,
    ) -> Result<(), StoreError> {
        let Some(bytes) = evidence else { return Ok(()) };
        let hash = match self.stored.get(&bytes.as_ptr()) {
            Some(h) => h.clone(),
            None => {
                let h = Sha256::digest(bytes).to_vec();
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO envelopes (hash, bytes) VALUES (?1, ?2)",
                )?
                .execute(params![h, &bytes[..]])?;
                self.stored.insert(bytes.as_ptr(), h.clone());
                h
            }
        };
        conn.prepare_cached(
            "INSERT INTO evidence (transfer_id, what, envelope_hash) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id_blob(id), what, hash])?;
        Ok(())
    }
}

/// (spec, decision, reason) as stored.
type RawCoordinated = (Vec<u8>, Option<String>, Option<Vec<u8>>);

/// Coordinator: begin each new transfer and prepare this branch's own legs of it, or
/// report an earlier use of its id.
pub(crate) fn begin(
    conn: &Connection,
    me: BranchId,
    items: &[BeginItem],
    now: u64,
) -> Result<Vec<BeginOutcome>, StoreError> {
    let mut call = Call::at(now);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let id = item.spec.id;
        let existing: Option<RawCoordinated> = conn
            .prepare_cached("SELECT spec, decision, reason FROM coordinated WHERE id = ?1")?
            .query_row([id_blob(id)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let outcome = match existing {
            Some((spec, decision, reason)) if dec::<TransferSpec>(&spec)? == item.spec => {
                BeginOutcome::Existing(coord_state(decision_from(decision), reason)?)
            }
            Some(_) => BeginOutcome::Conflict,
            None if bank::outcome_of(conn, id)?.is_some() => BeginOutcome::Conflict,
            None => {
                conn.prepare_cached(
                    "INSERT INTO coordinated (id, spec, deadline_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    id_blob(id),
                    enc(&item.spec)?,
                    sql_ms(item.deadline_ms)
                ])?;
                let own = PrepareItem {
                    transfer: item.spec,
                    deadline_ms: item.deadline_ms,
                };
                let vote = if item.spec.participants().contains(&me) {
                    // `outcome_of` was checked just above.
                    Some(prepare_leg(conn, me, me, &own, &None, &mut call)?)
                } else {
                    None
                };
                BeginOutcome::New(vote)
            }
        };
        out.push(outcome);
    }
    Ok(out)
}

fn coord_state(
    decision: Option<Decision>,
    reason: Option<Vec<u8>>,
) -> Result<TransferState, StoreError> {
    Ok(match decision {
        None => TransferState::Pending,
        Some(Decision::Commit) => TransferState::Committed,
        Some(Decision::Abort) => {
            let reason = reason.map(|r| dec::<Refusal>(&r)).transpose()?;
            TransferState::Aborted(reason.unwrap_or(Refusal::Interrupted))
        }
    })
}

/// Coordinator: record decisions, and apply each new one to this branch's own leg;
/// all or nothing.
pub(crate) fn record_decisions(
    conn: &Connection,
    me: BranchId,
    items: &[DecisionRecord],
    at_ms: u64,
) -> Result<Result<(), ShardError>, StoreError> {
    for item in items {
        let found: Option<Option<String>> = conn
            .prepare_cached("SELECT decision FROM coordinated WHERE id = ?1")?
            .query_row([id_blob(item.id)], |r| r.get(0))
            .optional()?;
        match found.map(decision_from) {
            None => return Ok(Err(ShardError::NotCoordinated(item.id))),
            Some(Some(d)) if d != item.decision => {
                return Ok(Err(ShardError::DecisionConflict(item.id)));
            }
            _ => {}
        }
    }
    let mut call = Call::at(at_ms);
    for item in items {
        let reason = item.reason.map(|r| enc(&r)).transpose()?;
        let changed = conn
            .prepare_cached("UPDATE coordinated SET decision = ?2, reason = ?3 WHERE id = ?1 AND decision IS NULL")?
            .execute(params![id_blob(item.id), decision_text(item.decision), reason])?;
        if changed == 1 {
            for vote in &item.votes {
                call.link(conn, item.id, "vote", vote)?;
            }
            apply_own_leg(conn, me, item, &mut call)?;
        }
    }
    Ok(Ok(()))
}

/// Applies a decision just recorded to this branch's own leg of the transfer, if it has
/// one. Its own records cannot contradict it in a correct branch; if they did, the leg
/// stays as it is and the violation is logged, as for a refused decision from a peer.
fn apply_own_leg(
    conn: &Connection,
    me: BranchId,
    item: &DecisionRecord,
    call: &mut Call,
) -> Result<(), StoreError> {
    let leg = leg_row(conn, item.id)?;
    if leg.as_ref().is_none_or(|leg| leg.coordinator != me) {
        return Ok(());
    }
    let decision = DecisionItem {
        id: item.id,
        decision: item.decision,
    };
    let outcome = apply_to_leg(conn, me, me, leg, &decision, &None, call)?;
    if let ApplyOutcome::Refused(why) = outcome {
        tracing::error!(id = %item.id, "own leg refused its coordinator's decision: {why}");
    }
    Ok(())
}

/// A participant record as stored.
pub(super) struct LegRow {
    pub(super) coordinator: BranchId,
    pub(super) spec: Option<TransferSpec>,
    pub(super) vote: Option<Vote>,
    pub(super) decision: Option<Decision>,
}

/// (coordinator, spec, vote, decision) as stored.
type RawLeg = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);

pub(super) fn leg_row(conn: &Connection, id: TransferId) -> Result<Option<LegRow>, StoreError> {
    let r: Option<RawLeg> = conn
        .prepare_cached("SELECT coordinator, spec, vote, decision FROM legs WHERE id = ?1")?
        .query_row([id_blob(id)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    r.map(|(c, spec, vote, decision)| {
        let coordinator =
            u16::try_from(c).map_err(|_| StoreError::Malformed("coordinator id".into()))?;
        Ok(LegRow {
            coordinator: BranchId(coordinator),
            spec: spec.map(|s| dec(&s)).transpose()?,
            vote: vote.map(|v| dec(&v)).transpose()?,
            decision: decision_from(decision),
        })
    })
    .transpose()
}

/// Participant: check, hold and record one prepare.
fn prepare_one(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    item: &PrepareItem,
    evidence: &Evidence,
    call: &mut Call,
) -> Result<Vote, StoreError> {
    if bank::outcome_of(conn, item.transfer.id)?.is_some() {
        return Ok(Vote::No(Refusal::IdConflict));
    }
    prepare_leg(conn, me, coordinator, item, evidence, call)
}

/// [`prepare_one`] for an id known not to be a one-step movement's, at the call's time.
fn prepare_leg(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    item: &PrepareItem,
    evidence: &Evidence,
    call: &mut Call,
) -> Result<Vote, StoreError> {
    let now = call.at_ms;
    let spec = item.transfer;
    if let Some(LegRow {
        coordinator: c,
        spec: s,
        vote: v,
        ..
    }) = leg_row(conn, spec.id)?
    {
        return Ok(match (s, v) {
            (Some(s), Some(v)) if s == spec && c == coordinator => v,
            (None, _) if c == coordinator => Vote::No(Refusal::Expired),
            _ => Vote::No(Refusal::IdConflict),
        });
    }
    let (debit, credit) = (spec.from.branch() == me, spec.to.branch() == me);
    let refusal = if now > item.deadline_ms {
        Some(Refusal::Expired)
    } else if item.deadline_ms > now.saturating_add(PREPARE_DEADLINE_MAX_MS) {
        Some(Refusal::DeadlineTooFar)
    } else if let Err(r) = spec.validate() {
        Some(r)
    } else if !debit && !credit {
        Some(Refusal::AccountNotFound)
    } else {
        let d = if debit {
            check_debit(conn, me, spec.from, spec.amount)?.err()
        } else {
            None
        };
        d.or(if credit {
            check_credit(conn, me, spec.to, spec.amount)?.err()
        } else {
            None
        })
    };
    let vote = match refusal {
        Some(r) => Vote::No(r),
        None => {
            hold(conn, me, &spec, debit, credit)?;
            Vote::Yes
        }
    };
    if vote != Vote::Yes && no_vote_legs(conn, coordinator)? >= NO_VOTE_LEGS_PER_PEER_MAX {
        // A no vote need not be durable (presumed abort): past the bound it is sent
        // but not stored, so a listed branch cannot fill the disk with refused prepares.
        tracing::warn!(%coordinator, id = %spec.id, "no-vote legs at their limit: not stored");
        return Ok(vote);
    }
    conn.prepare_cached(
        "INSERT INTO legs (id, coordinator, spec, deadline_ms, vote) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id_blob(spec.id),
        coordinator.0,
        enc(&spec)?,
        sql_ms(item.deadline_ms),
        enc(&vote)?
    ])?;
    call.link(conn, spec.id, "prepare", evidence)?;
    Ok(vote)
}

fn bad(_: wire::AmountError) -> StoreError {
    StoreError::Malformed("checked amount overflowed".into())
}

pub(super) fn hold(
    conn: &Connection,
    me: BranchId,
    spec: &TransferSpec,
    debit: bool,
    credit: bool,
) -> Result<(), StoreError> {
    if debit {
        let mut r = bank::row(conn, me, spec.from)?
            .ok_or_else(|| StoreError::Malformed("debit account vanished".into()))?;
        r.held = r.held.checked_add(spec.amount).map_err(bad)?;
        write_row(conn, spec.from, &r)?;
    }
    if credit {
        let mut r = bank::row(conn, me, spec.to)?
            .ok_or_else(|| StoreError::Malformed("credit account vanished".into()))?;
        r.pending_credit = r.pending_credit.checked_add(spec.amount).map_err(bad)?;
        write_row(conn, spec.to, &r)?;
    }
    Ok(())
}

/// Turns holds into money moved (commit, with ledger entries) or releases them (abort).
fn settle(
    conn: &Connection,
    me: BranchId,
    spec: &TransferSpec,
    decision: Decision,
    at_ms: u64,
) -> Result<(), StoreError> {
    let commit = decision == Decision::Commit;
    let amt = spec.amount;
    let mut entries = Vec::with_capacity(2);
    if spec.from.branch() == me {
        let mut r = bank::row(conn, me, spec.from)?
            .ok_or_else(|| StoreError::Malformed("debit account vanished".into()))?;
        r.held = r.held.checked_sub(amt).map_err(bad)?;
        if commit {
            r.balance = r.balance.checked_sub(amt).map_err(bad)?;
        }
        write_row(conn, spec.from, &r)?;
        if commit {
            let e = NewEntry {
                serial: spec.from.serial(),
                kind: EntryKind::TransferDebit,
                counterparty: Some(spec.to),
                amount: amt,
                balance_after: r.balance,
                transfer_id: spec.id,
                at_ms,
                sms_phone: r.sms_phone,
            };
            entries.push(e);
        }
    }
    if spec.to.branch() == me {
        let mut r = bank::row(conn, me, spec.to)?
            .ok_or_else(|| StoreError::Malformed("credit account vanished".into()))?;
        r.pending_credit = r.pending_credit.checked_sub(amt).map_err(bad)?;
        if commit {
            r.balance = r.balance.checked_add(amt).map_err(bad)?;
        }
        write_row(conn, spec.to, &r)?;
        if commit {
            let e = NewEntry {
                serial: spec.to.serial(),
                kind: EntryKind::TransferCredit,
                counterparty: Some(spec.from),
                amount: amt,
                balance_after: r.balance,
                transfer_id: spec.id,
                at_ms,
                sms_phone: r.sms_phone,
            };
            entries.push(e);
        }
    }
    ledger::append_all(conn, me, &entries)
}

/// Participant: apply one decision.
fn apply_one(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    item: &DecisionItem,
    evidence: &Evidence,
    call: &mut Call,
) -> Result<ApplyOutcome, StoreError> {
    let leg = leg_row(conn, item.id)?;
    apply_to_leg(conn, me, coordinator, leg, item, evidence, call)
}

/// [`apply_one`] with the leg's record already read.
pub(super) fn apply_to_leg(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    leg: Option<LegRow>,
    item: &DecisionItem,
    evidence: &Evidence,
    call: &mut Call,
) -> Result<ApplyOutcome, StoreError> {
    let Some(LegRow {
        coordinator: c,
        spec,
        vote,
        decision: decided,
    }) = leg
    else {
        if item.decision == Decision::Commit {
            return Ok(ApplyOutcome::Refused(ApplyRefusal::UnknownTransfer));
        }
        if abort_only_legs(conn, coordinator)? >= ABORT_ONLY_LEGS_PER_PEER_MAX {
            // Presumed abort: with no record a late prepare is held only until its
            // coordinator is asked; a listed branch cannot fill the disk with these.
            tracing::warn!(%coordinator, id = %item.id, "abort-only legs at their limit: not stored");
            return Ok(ApplyOutcome::Applied);
        }
        conn.prepare_cached(
            "INSERT INTO legs (id, coordinator, deadline_ms, decision) VALUES (?1, ?2, 0, 'abort')",
        )?
        .execute(params![id_blob(item.id), coordinator.0])?;
        call.link(conn, item.id, "decision", evidence)?;
        return Ok(ApplyOutcome::Applied);
    };
    if c != coordinator {
        return Ok(ApplyOutcome::Refused(ApplyRefusal::WrongCoordinator));
    }
    if let Some(d) = decided {
        return Ok(if d == item.decision {
            ApplyOutcome::AlreadyApplied
        } else {
            ApplyOutcome::Refused(ApplyRefusal::Contradiction)
        });
    }
    let yes = vote == Some(Vote::Yes);
    if !yes && item.decision == Decision::Commit {
        return Ok(ApplyOutcome::Refused(ApplyRefusal::Contradiction));
    }
    if let (true, Some(spec)) = (yes, spec) {
        settle(conn, me, &spec, item.decision, call.at_ms)?;
    }
    conn.prepare_cached("UPDATE legs SET decision = ?2 WHERE id = ?1")?
        .execute(params![id_blob(item.id), decision_text(item.decision)])?;
    call.link(conn, item.id, "decision", evidence)?;
    Ok(ApplyOutcome::Applied)
}

/// Participant: prepare a batch from `coordinator`, one vote per item, in order.
pub(crate) fn prepare(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    items: &[PrepareItem],
    now_ms: u64,
    evidence: &Evidence,
) -> Result<Vec<Vote>, StoreError> {
    let mut call = Call::at(now_ms);
    items
        .iter()
        .map(|i| prepare_one(conn, me, coordinator, i, evidence, &mut call))
        .collect()
}

/// Participant: apply a batch of decisions from `coordinator`, one outcome per item.
pub(crate) fn apply(
    conn: &Connection,
    me: BranchId,
    coordinator: BranchId,
    items: &[DecisionItem],
    evidence: &Evidence,
    at_ms: u64,
) -> Result<Vec<ApplyOutcome>, StoreError> {
    let mut call = Call::at(at_ms);
    items
        .iter()
        .map(|i| apply_one(conn, me, coordinator, i, evidence, &mut call))
        .collect()
}

/// What one branch's records say of a transfer, deposit or withdrawal id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdRecord {
    /// The accounts it touches, as far as the record says (an abort that arrived before
    /// any prepare names none).
    pub accounts: Vec<wire::AccountNumber>,
    /// Where it stands by this branch's records.
    pub state: TransferState,
    /// `None` when this branch is the id's authority (it coordinated the transfer, or did
    /// it in one step): `state` is then the outcome. `Some(c)` when this branch only
    /// took part: a commit it applied is final, anything else is for `c` to tell.
    pub authority: Option<BranchId>,
}

/// This branch's record of `id`, from any role's records.
pub(crate) fn transfer_record(
    conn: &Connection,
    me: BranchId,
    id: TransferId,
) -> Result<Option<IdRecord>, StoreError> {
    let coord: Option<RawCoordinated> = conn
        .prepare_cached("SELECT spec, decision, reason FROM coordinated WHERE id = ?1")?
        .query_row([id_blob(id)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    if let Some((spec, d, reason)) = coord {
        let spec: TransferSpec = dec(&spec)?;
        return Ok(Some(IdRecord {
            accounts: vec![spec.from, spec.to],
            state: coord_state(decision_from(d), reason)?,
            authority: None,
        }));
    }
    if let Some((accounts, state)) = bank::one_step_record(conn, me, id)? {
        return Ok(Some(IdRecord {
            accounts,
            state,
            authority: None,
        }));
    }
    Ok(leg_row(conn, id)?.map(|leg| IdRecord {
        accounts: leg.spec.map(|s| vec![s.from, s.to]).unwrap_or_default(),
        state: match leg.decision {
            Some(Decision::Commit) => TransferState::Committed,
            _ => TransferState::Pending,
        },
        authority: Some(leg.coordinator),
    }))
}

/// Where `id` stands by this branch's records alone (see [`IdRecord`]).
pub(crate) fn transfer_state(
    conn: &Connection,
    me: BranchId,
    id: TransferId,
) -> Result<TransferState, StoreError> {
    Ok(transfer_record(conn, me, id)?.map_or(TransferState::Unknown, |r| r.state))
}

/// Legs voted no (a refused prepare) kept for `coordinator`. A yes vote encodes as the
/// one byte 0x00; the partial index `legs_no_votes` holds the others.
fn no_vote_legs(conn: &Connection, coordinator: BranchId) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM legs WHERE coordinator = ?1 AND vote IS NOT NULL AND vote != x'00'",
        )?
        .query_row([coordinator.0], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Abort-only legs (an abort that came before any prepare) kept for `coordinator`.
fn abort_only_legs(conn: &Connection, coordinator: BranchId) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM legs WHERE coordinator = ?1 AND spec IS NULL")?
        .query_row([coordinator.0], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn in_doubt(conn: &Connection) -> Result<Vec<InDoubtRecord>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, coordinator, vote, deadline_ms FROM legs WHERE decision IS NULL AND vote IS NOT NULL")?;
    let rows: Vec<(Vec<u8>, i64, Vec<u8>, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, c, vote, deadline) in rows {
        if dec::<Vote>(&vote)? == Vote::Yes {
            let coordinator = BranchId(
                u16::try_from(c).map_err(|_| StoreError::Malformed("coordinator id".into()))?,
            );
            out.push(InDoubtRecord {
                id: blob_id(&id)?,
                coordinator,
                deadline_ms: u64::try_from(deadline).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

pub(crate) fn unfinished(conn: &Connection) -> Result<Vec<CoordinatedRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT spec, deadline_ms, decision, reason FROM coordinated WHERE ended = 0",
    )?;
    type Raw = (Vec<u8>, i64, Option<String>, Option<Vec<u8>>);
    let rows: Vec<Raw> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(spec, deadline, d, reason)| {
            Ok(CoordinatedRecord {
                spec: dec(&spec)?,
                deadline_ms: u64::try_from(deadline).unwrap_or(0),
                decision: decision_from(d),
                reason: reason.map(|r| dec(&r)).transpose()?,
            })
        })
        .collect()
}

pub(crate) fn read_decisions(
    conn: &Connection,
    ids: &[TransferId],
) -> Result<Vec<Option<Decision>>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT decision FROM coordinated WHERE id = ?1")?;
    ids.iter()
        .map(|id| {
            Ok(decision_from(
                stmt.query_row([id_blob(*id)], |r| r.get(0))
                    .optional()?
                    .flatten(),
            ))
        })
        .collect()
}

pub(crate) fn mark_ended(conn: &Connection, ids: &[TransferId]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("UPDATE coordinated SET ended = 1 WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id_blob(*id)])?;
    }
    Ok(())
}

impl Shard for Store {
    fn branch(&self) -> BranchId {
        Store::branch(self)
    }
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        Ok(self.in_tx(|c, me| begin(c, me, items, now_ms))?)
    }
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        self.in_tx(|c, me| record_decisions(c, me, items, now_ms()))?
    }
    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError> {
        Ok(self.in_tx(|c, _| mark_ended(c, ids))?)
    }
    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError> {
        Ok(read_decisions(self.conn(), ids)?)
    }
    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError> {
        Ok(unfinished(self.conn())?)
    }
    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError> {
        Ok(self.in_tx(|c, me| prepare(c, me, coordinator, items, now_ms, evidence))?)
    }
    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError> {
        Ok(self.in_tx(|c, me| apply(c, me, coordinator, items, evidence, now_ms()))?)
    }
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        Ok(in_doubt(self.conn())?)
    }
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        let now = now_ms();
        Ok(self.in_tx(|c, me| {
            items
                .iter()
                .map(|s| bank::transfer_local(c, me, s, now))
                .collect()
        })?)
    }
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        Ok(transfer_state(self.conn(), self.branch(), id)?)
    }
}
