//! Whether a branch's replicas hold the same branch: every table of their stores, row
//! for row (ledger hash chain, 2PC records and sessions included), aside from each
//! replica's own place in the log. The scenarios and tests run it after every run with
//! replicas.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::state_machine::state_get;
use crate::store::StoreError;

/// The store or log file at `path`, read-only, with its data dir's keys.
fn open(path: &Path) -> Result<Connection, StoreError> {
    crate::store::connect_in_dir(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// The id of the last log entry the store at `path` applied (encoded), if any.
pub fn applied(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(open(path)?
        .query_row(
            "SELECT value FROM replica_state WHERE key = 'applied'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// The voting replicas of the membership the store at `path` last applied.
pub fn voters(path: &Path) -> Result<Vec<u64>, StoreError> {
    let stored: Option<openraft::StoredMembership<u64, openraft::BasicNode>> =
        state_get(&open(path)?, "membership")?;
    Ok(stored.map_or_else(Vec::new, |m| m.membership().voter_ids().collect()))
}

/// Every row of every table but `replica_state`, in a fixed order.
pub fn dump(path: &Path) -> Result<String, StoreError> {
    let c = open(path)?;
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'replica_state' \
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = String::new();
    for table in tables {
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1"))?;
        let cols = stmt.column_count();
        let rows: Vec<Vec<String>> = stmt
            .query_map([], |r| {
                (0..cols)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect()
            })?
            .collect::<Result<_, _>>()?;
        for row in rows {
            out.push_str(&format!("{table}: {row:?}\n"));
        }
    }
    Ok(out)
}

/// How the stores at `paths` (one branch's replicas) differ from the first: one line
/// per replica that differs, naming its first differing row. Empty when all agree.
pub fn differences(paths: &[&Path]) -> Result<Vec<String>, StoreError> {
    let Some((first, rest)) = paths.split_first() else {
        return Ok(Vec::new());
    };
    let base = dump(first)?;
    let mut out = Vec::new();
    for path in rest {
        let other = dump(path)?;
        if other != base {
            let row = base
                .lines()
                .zip(other.lines())
                .find(|(a, b)| a != b)
                .map_or_else(
                    || "one has more rows".to_owned(),
                    |(a, b)| format!("{a} / {b}"),
                );
            out.push(format!(
                "{} differs from {}: {row}",
                path.display(),
                first.display()
            ));
        }
    }
    Ok(out)
}

type LogId = openraft::LogId<u64>;
/// A log entry's id for people: its index and the term of the leader that made it.
fn show(id: &LogId) -> String {
    format!("entry {} (term {})", id.index, id.leader_id.term)
}

/// The entries a log holds: first index, last index, how many.
type Held = (u64, u64, u64);

fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    bytes: &[u8],
) -> Result<T, StoreError> {
    wire::codec::decode_record(bytes).map_err(|e| StoreError::Malformed(e.to_string()))
}

/// The log's entries held (first, last index, count) and its compaction point.
fn log_span(log: &Connection) -> Result<(Option<Held>, Option<LogId>), StoreError> {
    let (first, last, count): (Option<i64>, Option<i64>, i64) =
        log.query_row("SELECT min(idx), max(idx), count(*) FROM log", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let purged: Option<Vec<u8>> = log
        .query_row("SELECT value FROM state WHERE key = 'purged'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let purged = purged
        .map(|b| decode::<Option<LogId>>(&b))
        .transpose()?
        .flatten();
    let held = first.zip(last).map(|(f, l)| {
        let n = |i: i64| u64::try_from(i).unwrap_or(0);
        (n(f), n(l), n(count))
    });
    Ok((held, purged))
}

/// The id of the entry the log holds at `index`, if it holds one.
fn log_id_at(log: &Connection, index: u64) -> Result<Option<LogId>, StoreError> {
    let at = i64::try_from(index).unwrap_or(i64::MAX);
    let bytes: Option<Vec<u8>> = log
        .query_row("SELECT entry FROM log WHERE idx = ?1", [at], |r| r.get(0))
        .optional()?;
    let entry = bytes
        .map(|b| decode::<openraft::Entry<super::Replicated>>(&b))
        .transpose()?;
    Ok(entry.map(|e| e.log_id))
}

/// Whether a replica's store and its Raft log (`raft.db`) tell one history: the log's
/// entries run on without a gap from its compaction point, and the entry the store says
/// it applied is in the log as that same entry (or compacted away, or not past the
/// log's end). Returns what is wrong (empty when nothing is) and a summary that also
/// names the voters against the replicas `listed` in the network file.
pub fn log_agrees(
    (store, log): (&Path, &Path),
    keys: &crate::keys::DataKeys,
    listed: &[u64],
) -> Result<(Vec<String>, String), StoreError> {
    let read = |p| crate::store::connect(p, keys, OpenFlags::SQLITE_OPEN_READ_ONLY);
    let conn = read(log)?;
    let (held, purged) = log_span(&conn)?;
    let applied: Option<LogId> = state_get(&read(store)?, "applied")?;
    let mut found = Vec::new();
    let after_purge = purged.map_or(0, |p| p.index + 1);
    if let Some((first, last, count)) = held {
        if count != last - first + 1 {
            found.push(format!(
                "the log's entries {first}..={last} have {} missing",
                last - first + 1 - count
            ));
        }
        if purged.is_some() && first != after_purge {
            found.push(format!(
                "the log is compacted up to entry {} but its first entry is {first}",
                after_purge.saturating_sub(1)
            ));
        }
    }
    let end = held.map_or(after_purge.saturating_sub(1), |(_, last, _)| last);
    if let Some(a) = applied {
        match log_id_at(&conn, a.index)? {
            Some(id) if id != a => found.push(format!(
                "the store applied {} but the log holds {} at that index",
                show(&a),
                show(&id)
            )),
            None if a.index > end => found.push(format!(
                "the store applied {}, past the log's last entry {end}",
                show(&a)
            )),
            _ => {}
        }
    }
    let voters = voters(store)?;
    let listed_note = if voters == listed {
        "as the network file lists".to_owned()
    } else {
        format!("the network file lists {listed:?}: the leader changes them when it runs")
    };
    let said = format!(
        "log up to entry {end} ({} held, compacted up to {}); the store applied {}; voters \
         {voters:?}, {listed_note}",
        held.map_or(0, |(_, _, n)| n),
        purged.map_or_else(|| "none".to_owned(), |p| p.index.to_string()),
        applied.map_or_else(|| "nothing yet".to_owned(), |a| show(&a)),
    );
    Ok((found, said))
}
