//! One branch's records of a transfer for `admin trace`, what is not finished here
//! for `admin in-doubt`, and its statement for `admin reconcile`: read as stored, each signed envelope checked against the
//! network file's keys.

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use wire::trace::{
    BranchTrace, CoordinatorView, EvidenceView, Flow, LegView, Position, STATEMENT_IDS_MAX,
    Statement, StuckRole, StuckView,
};
use wire::twopc::{Decision, TransferSpec, Vote};
use wire::{BranchId, TransferId};

use super::ledger::{self, ReadFilter};
use super::{StoreError, blob_id, id_blob};
use client::network_file::NetworkFile;

fn dec<T: serde::de::DeserializeOwned + serde::Serialize>(b: &[u8]) -> Result<T, StoreError> {
    wire::decode(b).map_err(|e| StoreError::Malformed(e.to_string()))
}

fn decision(text: Option<String>) -> Option<Decision> {
    match text.as_deref() {
        Some("commit") => Some(Decision::Commit),
        Some("abort") => Some(Decision::Abort),
        _ => None,
    }
}

fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn branch(v: i64) -> BranchId {
    BranchId(u16::try_from(v).unwrap_or(u16::MAX))
}

fn coordinated(conn: &Connection, id: TransferId) -> Result<Option<CoordinatorView>, StoreError> {
    let row: Option<(Vec<u8>, Option<String>, i64, i64)> = conn
        .prepare_cached("SELECT spec, decision, ended, deadline_ms FROM coordinated WHERE id = ?1")?
        .query_row([id_blob(id)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(spec, d, ended, deadline)| {
        Ok(CoordinatorView {
            spec: dec(&spec)?,
            decision: decision(d),
            ended: ended == 1,
            deadline_ms: ms(deadline),
        })
    })
    .transpose()
}

fn leg(conn: &Connection, id: TransferId) -> Result<Option<LegView>, StoreError> {
    type Row = (i64, Option<Vec<u8>>, Option<String>, i64);
    let row: Option<Row> = conn
        .prepare_cached("SELECT coordinator, vote, decision, deadline_ms FROM legs WHERE id = ?1")?
        .query_row([id_blob(id)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(c, vote, d, deadline)| {
        Ok(LegView {
            coordinator: branch(c),
            vote: vote.map(|v| dec::<Vote>(&v)).transpose()?,
            decision: decision(d),
            deadline_ms: ms(deadline),
        })
    })
    .transpose()
}

fn evidence(
    conn: &Connection,
    id: TransferId,
    net: &NetworkFile,
) -> Result<Vec<EvidenceView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.what, v.bytes FROM evidence e JOIN envelopes v ON v.hash = e.envelope_hash
         WHERE e.transfer_id = ?1",
    )?;
    let rows: Vec<(String, Vec<u8>)> = stmt
        .query_map([id_blob(id)], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(what, bytes)| {
            let signed: Option<wire::Signed<wire::twopc::BranchMessage>> =
                wire::decode(&bytes).ok();
            let verified = super::evidence::signed_message(net, &bytes);
            EvidenceView {
                what,
                signer: signed.as_ref().map_or(BranchId(0), |s| s.signer),
                verified: verified.is_some(),
                expires_at_ms: verified.map_or(0, |(_, m)| m.expires_at_ms),
            }
        })
        .collect())
}

/// Everything this branch records of `id`.
pub(crate) fn trace(
    conn: &Connection,
    me: BranchId,
    id: TransferId,
    net: &NetworkFile,
) -> Result<BranchTrace, StoreError> {
    let filter = ReadFilter {
        transfer: Some(id),
        ..ReadFilter::default()
    };
    let (lines, _) = ledger::read(conn, me, &filter, None, wire::limits::PAGE_ROWS_MAX)?;
    Ok(BranchTrace {
        branch: me,
        coordinated: coordinated(conn, id)?,
        leg: leg(conn, id)?,
        movement: super::bank::one_step_view(conn, me, id)?,
        evidence: evidence(conn, id, net)?,
        ledger: lines,
    })
}

/// What is not finished here, oldest deadline first, at most `limit`.
pub(crate) fn stuck(
    conn: &Connection,
    me: BranchId,
    limit: usize,
) -> Result<Vec<StuckView>, StoreError> {
    let mut out = Vec::new();
    let mut legs = conn.prepare_cached(
        "SELECT id, coordinator, spec, vote, deadline_ms FROM legs
         WHERE decision IS NULL AND vote IS NOT NULL ORDER BY deadline_ms LIMIT ?1",
    )?;
    type LegRow = (Vec<u8>, i64, Option<Vec<u8>>, Vec<u8>, i64);
    let rows: Vec<LegRow> = legs
        .query_map([limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, c, spec, vote, deadline) in rows {
        if dec::<Vote>(&vote)? != Vote::Yes {
            continue;
        }
        let spec: Option<TransferSpec> = spec.map(|s| dec(&s)).transpose()?;
        out.push(StuckView {
            branch: me,
            id: blob_id(&id)?,
            role: StuckRole::AwaitingDecision,
            waiting_on: vec![branch(c)],
            amount: spec.map(|s| s.amount),
            deadline_ms: ms(deadline),
        });
    }
    let mut coord = conn.prepare_cached(
        "SELECT spec, decision, deadline_ms FROM coordinated WHERE ended = 0 ORDER BY deadline_ms LIMIT ?1",
    )?;
    let rows: Vec<(Vec<u8>, Option<String>, i64)> = coord
        .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (spec, d, deadline) in rows {
        let spec: TransferSpec = dec(&spec)?;
        out.push(StuckView {
            branch: me,
            id: spec.id,
            role: if d.is_some() {
                StuckRole::AwaitingAcks
            } else {
                StuckRole::AwaitingVotes
            },
            waiting_on: spec
                .participants()
                .into_iter()
                .filter(|b| *b != me)
                .collect(),
            amount: Some(spec.amount),
            deadline_ms: ms(deadline),
        });
    }
    out.sort_by_key(|s| s.deadline_ms);
    out.truncate(limit);
    Ok(out)
}

/// This branch's committed cross-branch flows per other branch, for transfers begun at
/// or before `cut_ms` (see [`Statement`]).
pub(crate) fn statement(
    conn: &Connection,
    me: BranchId,
    cut_ms: u64,
) -> Result<Statement, StoreError> {
    // Every cross-branch leg has a participant record at both of its branches (the
    // coordinator's own leg too), with the deadline from the coordinator's prepare:
    // its begin time and the prepare timeout.
    let last_deadline = cut_ms.saturating_add(wire::limits::PREPARE_TIMEOUT_MS);
    let mut stmt = conn.prepare_cached(
        "SELECT l.transfer_id, l.kind, l.counterparty, l.amount FROM ledger l
         JOIN legs g ON g.id = l.transfer_id
         WHERE l.kind IN ('transfer_debit', 'transfer_credit') AND g.deadline_ms <= ?1
         ORDER BY l.transfer_id",
    )?;
    let rows: Vec<(Vec<u8>, String, Option<String>, i64)> = stmt
        .query_map([super::sql_ms(last_deadline)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut flows: std::collections::BTreeMap<(BranchId, bool), (Flow, Sha256)> =
        Default::default();
    let mut listed = 0usize;
    for (id, kind, counterparty, amount) in rows {
        let Some(peer) = counterparty
            .and_then(|c| c.parse::<wire::AccountNumber>().ok())
            .map(|a| a.branch())
            .filter(|b| *b != me)
        else {
            continue;
        };
        let id = blob_id(&id)?;
        let (flow, digest) = flows.entry((peer, kind == "transfer_debit")).or_default();
        flow.count += 1;
        flow.total_minor += amount;
        digest.update(id.0.to_be_bytes());
        digest.update(amount.to_be_bytes());
        if listed < STATEMENT_IDS_MAX {
            flow.ids.push((id, amount));
            listed += 1;
        } else {
            flow.truncated = true;
        }
    }
    let mut positions: std::collections::BTreeMap<BranchId, Position> = Default::default();
    for ((peer, sent), (mut flow, digest)) in flows {
        flow.digest = digest.finalize().into();
        let p = positions.entry(peer).or_insert_with(|| Position {
            peer,
            sent: Flow::default(),
            received: Flow::default(),
        });
        *(if sent { &mut p.sent } else { &mut p.received }) = flow;
    }
    Ok(Statement {
        branch: me,
        cut_ms,
        positions: positions.into_values().collect(),
    })
}
