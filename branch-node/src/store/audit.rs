//! A read-only audit of one branch's store, for invariant checkers: totals, every
//! transfer leg in the ledger, unfinished 2PC records, the ledger's hash chain, and the
//! signed envelopes kept as proof of each committed cross-branch transfer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rusqlite::Connection;
use wire::twopc::TransferSpec;
use wire::{BranchId, TransferId};

use super::ledger::{LedgerReport, LedgerViolation};
use super::{Store, StoreError, blob_id};

/// Stored envelopes by transfer id: (what, envelope bytes shared by every id it justifies).
pub type Evidence = BTreeMap<TransferId, Vec<(String, Arc<[u8]>)>>;

/// What one branch's store holds, summed and listed for checking.
#[derive(Debug, Clone)]
pub struct Audit {
    pub branch: BranchId,
    /// Sum of balances, in minor units.
    pub balance_total: i64,
    pub held_total: i64,
    pub pending_credit_total: i64,
    /// Sums of deposit and withdrawal entries in the ledger.
    pub deposits: i64,
    pub withdrawals: i64,
    /// Accounts with a negative balance or more held than their balance (must be 0).
    pub bad_accounts: usize,
    /// Transfer debit and credit entries, by transfer id (minor units).
    pub debits: BTreeMap<TransferId, i64>,
    pub credits: BTreeMap<TransferId, i64>,
    /// Ids of deposit and withdrawal entries.
    pub movement_ids: BTreeSet<TransferId>,
    /// Legs voted yes with no decision yet.
    pub in_doubt: Vec<TransferId>,
    /// Coordinated transfers not yet ended (decided or not).
    pub unfinished: usize,
    /// Cross-branch transfers this branch coordinated and decided commit.
    pub committed: Vec<TransferSpec>,
    /// Stored envelopes by transfer id: (what, envelope bytes).
    /// One envelope carries the items of many transfers: each is read once and shared.
    pub evidence: Evidence,
    pub ledger: Result<LedgerReport, LedgerViolation>,
}

impl Audit {
    /// The audit of an empty branch `branch` (a starting point for checkers' tests).
    pub fn empty(branch: BranchId) -> Audit {
        Audit {
            branch,
            balance_total: 0,
            held_total: 0,
            pending_credit_total: 0,
            deposits: 0,
            withdrawals: 0,
            bad_accounts: 0,
            debits: BTreeMap::new(),
            credits: BTreeMap::new(),
            movement_ids: BTreeSet::new(),
            in_doubt: Vec::new(),
            unfinished: 0,
            committed: Vec::new(),
            evidence: BTreeMap::new(),
            ledger: Ok(LedgerReport {
                entries: 0,
                accounts: 0,
            }),
        }
    }
}

fn sum(conn: &Connection, sql: &str) -> Result<i64, StoreError> {
    Ok(conn
        .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
        .unwrap_or(0))
}

fn legs(conn: &Connection, kind: &str) -> Result<BTreeMap<TransferId, i64>, StoreError> {
    let mut stmt = conn.prepare("SELECT transfer_id, amount FROM ledger WHERE kind = ?1")?;
    let rows = stmt.query_map([kind], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, amount) = row?;
        *out.entry(blob_id(&id)?).or_insert(0) += amount;
    }
    Ok(out)
}

impl Store {
    /// Audits the whole store (reads only).
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let c = self.conn();
        let in_doubt = super::twopc::in_doubt(c)?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let committed = {
            let mut stmt = c.prepare("SELECT spec FROM coordinated WHERE decision = 'commit'")?;
            let specs: Vec<Vec<u8>> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            specs
                .iter()
                .map(|b| {
                    wire::decode::<TransferSpec>(b)
                        .map_err(|e| StoreError::Malformed(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let evidence = read_evidence(c)?;
        Ok(Audit {
            branch: self.branch(),
            balance_total: sum(c, "SELECT SUM(balance) FROM accounts")?,
            held_total: sum(c, "SELECT SUM(held) FROM accounts")?,
            pending_credit_total: sum(c, "SELECT SUM(pending_credit) FROM accounts")?,
            deposits: sum(c, "SELECT SUM(amount) FROM ledger WHERE kind = 'deposit'")?,
            withdrawals: sum(
                c,
                "SELECT SUM(amount) FROM ledger WHERE kind = 'withdrawal'",
            )?,
            bad_accounts: usize::try_from(sum(
                c,
                "SELECT COUNT(*) FROM accounts WHERE balance < 0 OR held < 0 OR held > balance",
            )?)
            .unwrap_or(usize::MAX),
            debits: legs(c, "transfer_debit")?,
            credits: legs(c, "transfer_credit")?,
            movement_ids: legs(c, "deposit")?
                .into_keys()
                .chain(legs(c, "withdrawal")?.into_keys())
                .collect(),
            in_doubt,
            unfinished: usize::try_from(sum(
                c,
                "SELECT COUNT(*) FROM coordinated WHERE ended = 0",
            )?)
            .unwrap_or(usize::MAX),
            committed,
            evidence,
            ledger: self.verify_ledger()?,
        })
    }
}

/// Every stored envelope by transfer id, each envelope's bytes read once and shared by
/// the ids it justifies (a batch envelope justifies up to a thousand).
fn read_evidence(c: &rusqlite::Connection) -> Result<Evidence, StoreError> {
    let mut envelopes: std::collections::HashMap<Vec<u8>, Arc<[u8]>> =
        std::collections::HashMap::new();
    let mut stmt = c.prepare("SELECT hash, bytes FROM envelopes")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    for row in rows {
        let (hash, bytes) = row?;
        envelopes.insert(hash, Arc::from(bytes));
    }
    let mut evidence: Evidence = BTreeMap::new();
    let mut stmt = c.prepare("SELECT transfer_id, what, envelope_hash FROM evidence")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    for row in rows {
        let (id, what, hash) = row?;
        // Evidence without its envelope is reported by the proof check as missing.
        if let Some(bytes) = envelopes.get(&hash) {
            evidence
                .entry(blob_id(&id)?)
                .or_default()
                .push((what, Arc::clone(bytes)));
        }
    }
    Ok(evidence)
}
