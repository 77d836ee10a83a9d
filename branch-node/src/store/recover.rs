//! Restore that recovers what the network knows, in the store: what a branch holds of
//! its cross-branch transfers with a branch being restored ([`held_with`], read at the
//! branch that answers), and how the restored branch puts back its own leg of one of
//! them ([`recover`], written at the branch restored).
//!
//! A cross-branch transfer has exactly two participants, the debit branch (which
//! coordinates) and the credit branch, and each keeps a participant record of it (the
//! coordinator's own leg too) with the deadline from the prepare. So "the transfers
//! between A and B after the backup" are the legs at A whose transfer touches B, with a
//! deadline at or after the backup's moment.

use std::sync::Arc;

use coordinator::DecisionRecord;
use rusqlite::{Connection, OptionalExtension, params};
use wire::fence::{RecoverCursor, RecoveredOutcome};
use wire::twopc::{Decision, DecisionItem, TransferSpec, Vote};
use wire::{BranchId, Refusal, TransferId};

use super::bank::{check_credit, check_debit};
use super::twopc::{self, Call, dec, decision_from, enc};
use super::{StoreError, id_blob, sql_ms};

/// One transfer this branch holds with the branch being restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldTransfer {
    pub spec: TransferSpec,
    pub deadline_ms: u64,
    pub coordinator: BranchId,
    /// Where it stands here; `Undecided` when this branch coordinates and has not
    /// decided yet (the restore waits for it).
    pub outcome: RecoveredOutcome,
    /// This branch's vote, when the other branch coordinated.
    pub vote: Option<Vote>,
    /// Why it aborted, as far as this branch knows.
    pub reason: Option<Refusal>,
    /// The other branch's own signed envelopes kept here that prove a commit: its
    /// decision (it coordinated) or its yes vote (this branch coordinated).
    pub kept: Vec<Vec<u8>>,
}

/// Legs read per query while looking for the asker's transfers.
const SCAN_ROWS: i64 = 512;

/// The transfers this branch `me` holds with `asker`, deadline at or after `since_ms`,
/// in (deadline, id) order after `after`: at most `limit` of them, or fewer once their
/// kept envelopes pass `bytes_max`. The second value is where to go on, if anywhere.
pub(crate) fn held_with(
    conn: &Connection,
    me: BranchId,
    asker: BranchId,
    since_ms: u64,
    mut after: Option<RecoverCursor>,
    limit: usize,
    bytes_max: usize,
) -> Result<(Vec<HeldTransfer>, Option<RecoverCursor>), StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    loop {
        let rows = legs_page(conn, since_ms, after)?;
        let more = rows.len() == usize::try_from(SCAN_ROWS).unwrap_or(usize::MAX);
        for row in rows {
            after = Some((row.deadline_ms, row.spec.id));
            let involved = [row.spec.from.branch(), row.spec.to.branch()];
            if !involved.contains(&asker) || !involved.contains(&me) {
                continue;
            }
            let held = held_one(conn, me, row)?;
            bytes += held.kept.iter().map(Vec::len).sum::<usize>();
            out.push(held);
            if out.len() >= limit || bytes >= bytes_max {
                return Ok((out, after));
            }
        }
        if !more {
            return Ok((out, None));
        }
    }
}

/// A participant record, as read for recovery.
struct LegRead {
    spec: TransferSpec,
    deadline_ms: u64,
    coordinator: BranchId,
    vote: Option<Vote>,
    decision: Option<Decision>,
}

fn legs_page(
    conn: &Connection,
    since_ms: u64,
    after: Option<RecoverCursor>,
) -> Result<Vec<LegRead>, StoreError> {
    let (from_ms, from_id) = after.map_or((since_ms, None), |(d, id)| (d, Some(id)));
    let mut stmt = conn.prepare_cached(
        "SELECT id, coordinator, spec, deadline_ms, vote, decision FROM legs
         WHERE spec IS NOT NULL AND deadline_ms >= ?1
           AND (deadline_ms > ?2 OR (deadline_ms = ?2 AND (?3 IS NULL OR id > ?3)))
         ORDER BY deadline_ms, id LIMIT ?4",
    )?;
    type Raw = (Vec<u8>, i64, Vec<u8>, i64, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Raw> = stmt
        .query_map(
            params![
                sql_ms(since_ms),
                sql_ms(from_ms),
                from_id.map(id_blob),
                SCAN_ROWS
            ],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(_id, c, spec, deadline, vote, decision)| {
            Ok(LegRead {
                spec: dec(&spec)?,
                deadline_ms: u64::try_from(deadline).unwrap_or(0),
                coordinator: BranchId(
                    u16::try_from(c).map_err(|_| StoreError::Malformed("coordinator".into()))?,
                ),
                vote: vote.map(|v| dec(&v)).transpose()?,
                decision: decision_from(decision),
            })
        })
        .collect()
}

/// What this branch holds of one transfer whose participant record is `leg`.
fn held_one(conn: &Connection, me: BranchId, leg: LegRead) -> Result<HeldTransfer, StoreError> {
    let id = leg.spec.id;
    let mut reason = match leg.vote {
        Some(Vote::No(r)) => Some(r),
        _ => None,
    };
    let (outcome, kept_what) = if leg.coordinator == me {
        // This branch coordinated: its decision is the outcome; the other branch's
        // yes vote, kept with the decision, proves it took part.
        type Row = (Option<String>, Option<Vec<u8>>);
        let d: Option<Row> = conn
            .prepare_cached("SELECT decision, reason FROM coordinated WHERE id = ?1")?
            .query_row([id_blob(id)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (decision, why) = d.unwrap_or((None, None));
        reason = why.map(|r| dec(&r)).transpose()?;
        let outcome = match decision_from(decision) {
            Some(Decision::Commit) => RecoveredOutcome::Committed,
            Some(Decision::Abort) => RecoveredOutcome::Aborted,
            None => RecoveredOutcome::Undecided,
        };
        (outcome, "vote")
    } else {
        // The other branch coordinated: its decision as this leg got it.
        let outcome = match (leg.decision, leg.vote) {
            (Some(Decision::Commit), _) => RecoveredOutcome::Committed,
            (Some(Decision::Abort), _) | (None, Some(Vote::No(_))) => RecoveredOutcome::Aborted,
            (None, _) => RecoveredOutcome::InDoubt,
        };
        (outcome, "decision")
    };
    let committed = outcome == RecoveredOutcome::Committed;
    let other = if leg.coordinator == me {
        leg.spec.to.branch()
    } else {
        leg.coordinator
    };
    let kept = if committed {
        kept_from(conn, id, kept_what, other)?
    } else {
        Vec::new()
    };
    Ok(HeldTransfer {
        spec: leg.spec,
        deadline_ms: leg.deadline_ms,
        coordinator: leg.coordinator,
        outcome,
        vote: (leg.coordinator != me).then_some(leg.vote).flatten(),
        reason,
        kept,
    })
}

/// The envelopes kept as `what` for transfer `id` that `signer` signed (not verified
/// here: the branch restored verifies them against the network file).
fn kept_from(
    conn: &Connection,
    id: TransferId,
    what: &str,
    signer: BranchId,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT v.bytes FROM evidence e JOIN envelopes v ON v.hash = e.envelope_hash
         WHERE e.transfer_id = ?1 AND e.what = ?2",
    )?;
    let all: Vec<Vec<u8>> = stmt
        .query_map(params![id_blob(id), what], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(all
        .into_iter()
        .filter(|b| {
            wire::decode::<wire::Signed<wire::BranchMessage>>(b).is_ok_and(|s| s.signer == signer)
        })
        .collect())
}

/// One transfer the restored branch puts back, checked against the network file
/// before it gets here: its outcome, and the signed evidence it keeps for it.
#[derive(Clone, Debug)]
pub struct RecoverItem {
    pub spec: TransferSpec,
    pub deadline_ms: u64,
    pub coordinator: BranchId,
    pub decision: Decision,
    /// Why it aborted (an abort only).
    pub reason: Option<Refusal>,
    /// Whether the other participant has the decision already (nothing to send it).
    pub ended: bool,
    /// Signed yes votes of both participants (coordinated here), or the coordinator's
    /// signed decision (a leg here).
    pub evidence: Vec<Arc<[u8]>>,
}

/// What recovering one transfer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Its leg is back here, with its outcome, and what had to be repaired for it.
    Applied(Repairs),
    /// This branch already had its outcome (from the backup).
    AlreadyHere,
    /// It cannot be put back: the account's state as restored refuses it (money a lost
    /// deposit brought in, or an account opened after the backup). Nothing was written.
    Refused(Refusal),
}

/// What putting a leg back needed beyond the leg itself: the restored books lacked what
/// only the lost disk knew, and the network's evidence shows it existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The account did not exist in the backup (opened after it): it is back, its
    /// owner unknown (no customer details, no login) until an admin attaches it.
    pub placeholder: Option<wire::AccountNumber>,
    /// The recovered debit needed more than the restored balance: money came into the
    /// account after the backup by a movement only the lost disk knew. That much is put
    /// back as a deposit (its id, the amount).
    pub inferred_deposit: Option<(TransferId, wire::Amount)>,
}

/// The id of the deposit inferred for transfer `id` (the same on every run of a
/// restore, so running it again never deposits twice).
pub fn inferred_deposit_id(id: TransferId) -> TransferId {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"bankmate/restore-inferred-deposit")
        .chain_update(id.0.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    TransferId(u128::from_be_bytes(bytes))
}

/// Puts the account `n` back if the backup lacks it: opened after the backup, known
/// now from a transfer the network holds. Its owner is a placeholder.
fn ensure_account(
    conn: &Connection,
    me: BranchId,
    n: wire::AccountNumber,
    at_ms: u64,
) -> Result<Option<wire::AccountNumber>, StoreError> {
    if n.branch() != me || super::bank::row(conn, me, n)?.is_some() {
        return Ok(None);
    }
    conn.execute(
        "INSERT INTO customers (national_id_hash, phone, first_name, last_name, sms_opt_in, created_at_ms)
         VALUES (?1, '', '(restored)', 'owner unknown', 0, ?2)",
        params![format!("restored {n}"), sql_ms(at_ms)],
    )?;
    conn.execute(
        "INSERT INTO accounts (serial, customer_id, balance, status, opened_at_ms)
         VALUES (?1, ?2, 0, 'open', ?3)",
        params![n.serial(), conn.last_insert_rowid(), sql_ms(at_ms)],
    )?;
    Ok(Some(n))
}

/// Deposits into `spec.from` what it lacks to be debited `spec.amount` (see
/// [`Repairs::inferred_deposit`]); nothing when its balance covers it.
fn cover_shortfall(
    conn: &Connection,
    me: BranchId,
    spec: &TransferSpec,
    at_ms: u64,
) -> Result<Option<(TransferId, wire::Amount)>, StoreError> {
    use super::ledger::{NewEntry, append_all};
    let Some(mut row) = super::bank::row(conn, me, spec.from)? else {
        return Ok(None);
    };
    let available = row.balance.minor() - row.held.minor();
    let short = spec.amount.minor() - available;
    if short <= 0 || !row.open {
        return Ok(None);
    }
    let bad = |e: wire::AmountError| StoreError::Malformed(e.to_string());
    let short = wire::Amount::from_minor(short).map_err(bad)?;
    row.balance = row.balance.checked_add(short).map_err(bad)?;
    super::bank::write_row(conn, spec.from, &row)?;
    let id = inferred_deposit_id(spec.id);
    let entry = NewEntry {
        serial: spec.from.serial(),
        kind: wire::teller::EntryKind::Deposit,
        counterparty: None,
        amount: short,
        balance_after: row.balance,
        transfer_id: id,
        at_ms,
        sms_phone: None,
    };
    append_all(conn, me, &[entry])?;
    let touches = super::bank::Touches {
        debit: None,
        credit: Some(spec.from),
    };
    let state = wire::teller::TransferState::Committed;
    super::bank::record(conn, id, &id.0.to_be_bytes(), state, touches, at_ms)?;
    Ok(Some((id, short)))
}

/// Puts back this branch's leg of a transfer the network knows: its coordinator record
/// (it coordinated) or its participant record (the other branch did), in the state the
/// outcome leaves, with the money moved if it committed. The caller runs it in a
/// transaction; a refusal writes nothing.
pub(crate) fn recover(
    conn: &Connection,
    me: BranchId,
    item: &RecoverItem,
    at_ms: u64,
) -> Result<Recovery, StoreError> {
    if item.coordinator == me {
        recover_coordinated(conn, me, item, at_ms)
    } else {
        recover_leg(conn, me, item, at_ms)
    }
}

fn recover_coordinated(
    conn: &Connection,
    me: BranchId,
    item: &RecoverItem,
    at_ms: u64,
) -> Result<Recovery, StoreError> {
    let spec = item.spec;
    let mut repairs = Repairs::default();
    let found: Option<Option<String>> = conn
        .prepare_cached("SELECT decision FROM coordinated WHERE id = ?1")?
        .query_row([id_blob(spec.id)], |r| r.get(0))
        .optional()?;
    match found {
        Some(Some(_)) => return Ok(Recovery::AlreadyHere),
        Some(None) => {}
        None => {
            if super::bank::outcome_of(conn, spec.id)?.is_some() {
                return Ok(Recovery::Refused(Refusal::IdConflict));
            }
            let commit = item.decision == Decision::Commit;
            if commit {
                repairs.placeholder = ensure_account(conn, me, spec.from, at_ms)?;
                repairs.inferred_deposit = cover_shortfall(conn, me, &spec, at_ms)?;
            }
            if commit && let Err(r) = check_debit(conn, me, spec.from, spec.amount)? {
                return Ok(Recovery::Refused(r));
            }
            conn.prepare_cached(
                "INSERT INTO coordinated (id, spec, deadline_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                id_blob(spec.id),
                enc(&spec)?,
                sql_ms(item.deadline_ms)
            ])?;
            // Its own leg as the begin left it, the debit held, for a commit; for an
            // abort, a leg already aborted that holds nothing.
            if commit {
                twopc::hold(conn, me, &spec, true, false)?;
                insert_leg(conn, me, &spec, item.deadline_ms, None)?;
            } else {
                insert_leg(conn, me, &spec, item.deadline_ms, Some(Decision::Abort))?;
            }
        }
    }
    let record = DecisionRecord {
        id: spec.id,
        decision: item.decision,
        reason: item.reason,
        votes: item.evidence.iter().map(|e| Some(Arc::clone(e))).collect(),
    };
    if let Err(e) = twopc::record_decisions(conn, me, &[record], at_ms)? {
        return Err(StoreError::Malformed(format!(
            "recovered decision for {} refused: {e}",
            spec.id
        )));
    }
    if item.ended {
        twopc::mark_ended(conn, &[spec.id])?;
    }
    Ok(Recovery::Applied(repairs))
}

fn recover_leg(
    conn: &Connection,
    me: BranchId,
    item: &RecoverItem,
    at_ms: u64,
) -> Result<Recovery, StoreError> {
    let spec = item.spec;
    let mut repairs = Repairs::default();
    let leg = match twopc::leg_row(conn, spec.id)? {
        Some(leg) if leg.decision.is_some() => return Ok(Recovery::AlreadyHere),
        Some(leg) => leg,
        None => {
            if super::bank::outcome_of(conn, spec.id)?.is_some() {
                return Ok(Recovery::Refused(Refusal::IdConflict));
            }
            if item.decision == Decision::Abort {
                // Nothing to move: the record alone, so the id keeps its outcome here.
                insert_leg(
                    conn,
                    item.coordinator,
                    &spec,
                    item.deadline_ms,
                    Some(Decision::Abort),
                )?;
                return Ok(Recovery::Applied(repairs));
            }
            repairs.placeholder = ensure_account(conn, me, spec.to, at_ms)?;
            if let Err(r) = check_credit(conn, me, spec.to, spec.amount)? {
                return Ok(Recovery::Refused(r));
            }
            twopc::hold(conn, me, &spec, false, true)?;
            insert_leg(conn, item.coordinator, &spec, item.deadline_ms, None)?;
            twopc::leg_row(conn, spec.id)?
                .ok_or_else(|| StoreError::Malformed("recovered leg vanished".into()))?
        }
    };
    let decision = DecisionItem {
        id: spec.id,
        decision: item.decision,
    };
    let evidence = item.evidence.first().cloned();
    let mut call = Call::at(at_ms);
    let outcome = twopc::apply_to_leg(
        conn,
        me,
        item.coordinator,
        Some(leg),
        &decision,
        &evidence,
        &mut call,
    )?;
    match outcome {
        coordinator::ApplyOutcome::Refused(why) => Err(StoreError::Malformed(format!(
            "recovered decision for {} refused: {why:?}",
            spec.id
        ))),
        _ => Ok(Recovery::Applied(repairs)),
    }
}

/// A participant record put back: voted yes and holding its money (`decided` `None`),
/// or already aborted (which holds nothing; its vote is not known here).
fn insert_leg(
    conn: &Connection,
    coordinator: BranchId,
    spec: &TransferSpec,
    deadline_ms: u64,
    decided: Option<Decision>,
) -> Result<(), StoreError> {
    let vote = match decided {
        None => Some(enc(&Vote::Yes)?),
        Some(_) => None,
    };
    conn.prepare_cached(
        "INSERT INTO legs (id, coordinator, spec, deadline_ms, vote, decision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id_blob(spec.id),
        coordinator.0,
        enc(spec)?,
        sql_ms(deadline_ms),
        vote,
        decided.map(|_| "abort")
    ])?;
    Ok(())
}
