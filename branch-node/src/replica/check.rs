//! Whether a branch's replicas hold the same branch: every table of their stores, row
//! for row (ledger hash chain, 2PC records and sessions included), aside from each
//! replica's own place in the log. The scenarios and tests run it after every run with
//! replicas.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::store::StoreError;

fn open(path: &Path) -> Result<Connection, StoreError> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
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
    let bytes: Option<Vec<u8>> = open(path)?
        .query_row(
            "SELECT value FROM replica_state WHERE key = 'membership'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(bytes) = bytes else {
        return Ok(Vec::new());
    };
    let stored: openraft::StoredMembership<u64, openraft::BasicNode> =
        wire::codec::decode_record(&bytes).map_err(|e| StoreError::Malformed(e.to_string()))?;
    Ok(stored.membership().voter_ids().collect())
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
