//! `branch-node verify`: an offline audit of one branch's data dir (the node stopped,
//! or a restored backup). Each check says what it proved or what it found:
//!
//! - SQLite's own `integrity_check`;
//! - the ledger's hash chain, every `balance_after`, and every account's balance
//!   recomputed from the ledger;
//! - no account negative or holding more than its balance;
//! - every cross-branch transfer this branch coordinated and committed carries a signed
//!   yes vote from each participant, verified against the network file's keys;
//! - every commit this branch applied for another coordinator carries that
//!   coordinator's signed commit decision;
//! - nothing half-applied: a committed leg has its ledger line here, an aborted one has
//!   none, and the money held and promised equals what the legs still in doubt hold;
//! - a replica of a replicated branch: its store and its Raft log tell one history (the
//!   log has no gap, and the entry the store applied is the log's entry at that index).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};
use wire::twopc::{TransferSpec, Vote};
use wire::{BranchId, TransferId};

use crate::init::{DB_FILE, read_key};
use crate::replica::node::LOG_FILE;
use crate::store::evidence::{commits, signed_message, votes_yes};
use crate::store::{Durability, Store, blob_id};
use client::network_file::NetworkFile;

/// One check's result: what it proved, or what it found wrong.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, Vec<String>>,
}

/// Every check's result for one data dir.
#[derive(Debug, Clone)]
pub struct Report {
    pub branch: BranchId,
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.result.is_ok())
    }

    /// The report for people: one line per check, findings indented below it.
    pub fn text(&self) -> String {
        let mut out = format!("branch {}\n", self.branch);
        for c in &self.checks {
            match &c.result {
                Ok(said) => out.push_str(&format!("ok    {}: {said}\n", c.name)),
                Err(found) => {
                    out.push_str(&format!("FAIL  {}: {} finding(s)\n", c.name, found.len()));
                    for f in found.iter().take(20) {
                        out.push_str(&format!("        {f}\n"));
                    }
                    if found.len() > 20 {
                        out.push_str(&format!("        ... and {} more\n", found.len() - 20));
                    }
                }
            }
        }
        out.push_str(if self.ok() {
            "verified: every check holds\n"
        } else {
            "NOT verified\n"
        });
        out
    }
}

/// Audits the data dir `data_dir` of a branch listed in the network file `network`.
/// `kek` unwraps its keys where not the key-encryption key they name.
pub fn verify(
    data_dir: &Path,
    network: &Path,
    kek: Option<&crate::keys::KekSource>,
) -> anyhow::Result<Report> {
    let net = NetworkFile::load(network)?;
    let key = read_key(data_dir)?;
    let _lock = crate::lock::lock(data_dir, crate::lock::Use::Audit)?;
    let entry = net
        .by_peer(&key.peer_id())
        .ok_or_else(|| anyhow::anyhow!("this data dir's key is not in {}", network.display()))?;
    let me = entry.id;
    let listed: Vec<u64> = entry.replicas.iter().map(|r| r.id).collect();
    let keys = crate::keys::unlock(data_dir, Some(me), kek)?;
    let db = data_dir.join(DB_FILE);
    let mut checks = vec![integrity(&db, &keys)?];
    if checks[0].result.is_err() {
        // A damaged file is not read further: what it says cannot be trusted.
        return Ok(Report { branch: me, checks });
    }
    let store = Store::open_existing(&db, &keys, me, Durability::Full)?;
    let conn = store.conn();
    checks.push(ledger(&store)?);
    checks.push(accounts(conn)?);
    checks.push(votes(&store, &net)?);
    checks.push(decisions(conn, me, &net)?);
    checks.push(half_applied(conn, me)?);
    let log = data_dir.join(LOG_FILE);
    if log.exists() {
        checks.push(replica_log((&db, &log), &keys, &listed)?);
    }
    Ok(Report { branch: me, checks })
}

fn replica_log(
    files: (&Path, &Path),
    keys: &crate::keys::DataKeys,
    listed: &[u64],
) -> anyhow::Result<Check> {
    let (found, said) = crate::replica::check::log_agrees(files, keys, listed)?;
    Ok(check("replica's store and Raft log", found, said))
}

fn check(name: &'static str, found: Vec<String>, said: String) -> Check {
    Check {
        name,
        result: if found.is_empty() {
            Ok(said)
        } else {
            Err(found)
        },
    }
}

fn integrity(db: &Path, keys: &crate::keys::DataKeys) -> anyhow::Result<Check> {
    let rows = (|| -> Result<Vec<String>, crate::store::StoreError> {
        let conn = crate::store::connect(db, keys, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })();
    let found = match rows {
        Ok(rows) if rows == ["ok"] => Vec::new(),
        Ok(rows) => rows,
        Err(e) => vec![e.to_string()],
    };
    Ok(check("sqlite integrity", found, "ok".into()))
}

fn ledger(store: &Store) -> anyhow::Result<Check> {
    Ok(match store.verify_ledger()? {
        Ok(r) => check(
            "ledger chain and balances",
            Vec::new(),
            format!(
                "{} entries chained; {} balances recomputed from them",
                r.entries, r.accounts
            ),
        ),
        Err(v) => check(
            "ledger chain and balances",
            vec![format!("{v:?}")],
            String::new(),
        ),
    })
}

fn accounts(conn: &Connection) -> anyhow::Result<Check> {
    let mut stmt = conn.prepare(
        "SELECT serial, balance, held FROM accounts WHERE balance < 0 OR held < 0 OR held > balance",
    )?;
    let found = stmt
        .query_map([], |r| {
            Ok(format!(
                "account serial {}: balance {}, held {}",
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let n: i64 = conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
    Ok(check(
        "no negative or over-held account",
        found,
        format!("{n} accounts"),
    ))
}

/// The stored envelopes of `id` kept as `what` (vote, decision).
fn evidence(conn: &Connection, id: TransferId, what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT v.bytes FROM evidence e JOIN envelopes v ON v.hash = e.envelope_hash
         WHERE e.transfer_id = ?1 AND e.what = ?2",
    )?;
    let rows = stmt.query_map(params![crate::store::id_blob(id), what], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn votes(store: &Store, net: &NetworkFile) -> anyhow::Result<Check> {
    let conn = store.conn();
    let mut stmt = conn.prepare("SELECT spec FROM coordinated WHERE decision = 'commit'")?;
    let specs: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (mut found, mut proved) = (Vec::new(), 0);
    for bytes in specs {
        let spec: TransferSpec = wire::decode(&bytes)?;
        let parts = spec.participants();
        if parts.len() < 2 {
            continue;
        }
        proved += 1;
        let envelopes = evidence(conn, spec.id, "vote")?;
        for p in parts {
            let signed = envelopes.iter().any(|b| {
                signed_message(net, b).is_some_and(|(s, m)| s == p && votes_yes(&m.body, spec.id))
            });
            if !signed {
                found.push(format!(
                    "commit {} has no signed yes vote from branch {p}",
                    spec.id
                ));
            }
        }
    }
    Ok(check(
        "signed votes for commits coordinated here",
        found,
        format!("{proved} cross-branch commits, every participant's yes vote verified"),
    ))
}

fn decisions(conn: &Connection, me: BranchId, net: &NetworkFile) -> anyhow::Result<Check> {
    let mut stmt = conn.prepare(
        "SELECT id, coordinator FROM legs WHERE decision = 'commit' AND coordinator != ?1",
    )?;
    let legs: Vec<(Vec<u8>, i64)> = stmt
        .query_map([me.0], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::new();
    for (id, coordinator) in &legs {
        let id = blob_id(id)?;
        let coordinator = BranchId(u16::try_from(*coordinator).unwrap_or(u16::MAX));
        let signed = evidence(conn, id, "decision")?.iter().any(|b| {
            signed_message(net, b).is_some_and(|(s, m)| s == coordinator && commits(&m.body, id))
        });
        if !signed {
            found.push(format!(
                "commit {id} applied without a signed decision from branch {coordinator}"
            ));
        }
    }
    Ok(check(
        "signed decisions for commits applied here",
        found,
        format!(
            "{} commits from other coordinators, each decision verified",
            legs.len()
        ),
    ))
}

/// Ledger lines of transfer `id` here.
fn ledger_lines(conn: &Connection, id: TransferId) -> anyhow::Result<i64> {
    let blob = crate::store::id_blob(id);
    Ok(conn.query_row(
        "SELECT count(*) FROM ledger WHERE transfer_id = ?1",
        [blob],
        |r| r.get(0),
    )?)
}

fn half_applied(conn: &Connection, me: BranchId) -> anyhow::Result<Check> {
    let mut stmt =
        conn.prepare("SELECT id, spec, vote, decision FROM legs WHERE spec IS NOT NULL")?;
    type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let (mut found, mut held, mut promised) = (Vec::new(), 0i64, 0i64);
    for (id, spec, vote, decision) in &rows {
        let id = blob_id(id)?;
        let spec: TransferSpec = wire::decode(spec)?;
        let lines = ledger_lines(conn, id)?;
        let yes = match vote {
            Some(v) => wire::decode::<Vote>(v)? == Vote::Yes,
            None => false,
        };
        match decision.as_deref() {
            Some("commit") if lines == 0 => {
                found.push(format!("{id} committed but not in the ledger here"))
            }
            Some("abort") if lines > 0 => {
                found.push(format!("{id} aborted but in the ledger here"))
            }
            None if yes => {
                if spec.from.branch() == me {
                    held += spec.amount.minor();
                }
                if spec.to.branch() == me {
                    promised += spec.amount.minor();
                }
            }
            _ => {}
        }
    }
    let (h, p): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(held), 0), coalesce(sum(pending_credit), 0) FROM accounts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if h != held {
        found.push(format!(
            "accounts hold {h} but the legs in doubt hold {held}"
        ));
    }
    if p != promised {
        found.push(format!(
            "accounts are promised {p} but the legs in doubt promise {promised}"
        ));
    }
    Ok(check(
        "nothing half-applied",
        found,
        format!(
            "{} legs; {held} held and {promised} promised by legs in doubt, as the accounts say",
            rows.len()
        ),
    ))
}
