//! The SMS outbox: rows written with each ledger entry of an opted-in customer, read and
//! marked by the notifier. Delivery is at least once: a row is marked delivered only
//! after the sink accepted it.

use rusqlite::{Connection, params};

use super::{StoreError, sql_ms};

/// What the SMS log's lines are sealed for.
const SMS_PURPOSE: &str = "sms.log";

/// One line of the SMS log (`sms.log`, the sink without a gateway): the time, and the
/// message (`to=PHONE\tTEXT`) sealed under the data keys, in hex.
pub fn sealed_line(keys: &crate::keys::DataKeys, at_ms: u64, plain: &str) -> String {
    format!(
        "{at_ms}\t{}\n",
        hex::encode(keys.seal(SMS_PURPOSE, plain.as_bytes()))
    )
}

/// The SMS log at `path` as text, one message a line (`MS\tto=PHONE\tTEXT`), each
/// unsealed with `keys`; a line they do not open is shown as such.
pub fn read_log(
    path: &std::path::Path,
    keys: &crate::keys::DataKeys,
) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(|line| {
            let (ms, sealed) = line.split_once('\t').unwrap_or(("?", line));
            let plain = hex::decode(sealed)
                .ok()
                .and_then(|b| keys.open(SMS_PURPOSE, &b))
                .map(|p| String::from_utf8_lossy(&p).into_owned());
            format!(
                "{ms}\t{}",
                plain.as_deref().unwrap_or("(not sealed by these keys)")
            )
        })
        .collect())
}

/// The plain SMS log at `path` (from before encryption at rest: `MS\tto=PHONE\tTEXT`
/// lines) with each line sealed under `keys`.
pub fn sealed_log(path: &std::path::Path, keys: &crate::keys::DataKeys) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(|line| {
            let (ms, plain) = line.split_once('\t').unwrap_or(("0", line));
            sealed_line(keys, ms.parse().unwrap_or(0), plain)
        })
        .collect())
}

/// One message waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: i64,
    pub phone: String,
    pub body: String,
    pub attempts: u32,
}

/// Up to `limit` undelivered messages whose next attempt is due at `now_ms`, oldest first.
pub(crate) fn due(
    conn: &Connection,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, phone, body, attempts FROM outbox
         WHERE delivered_at_ms IS NULL AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![sql_ms(now_ms), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(OutboxMessage {
                id: r.get(0)?,
                phone: r.get(1)?,
                body: r.get(2)?,
                attempts: r.get(3)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The sink accepted message `id`.
pub(crate) fn delivered(conn: &Connection, id: i64, now_ms: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET delivered_at_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
        params![id, sql_ms(now_ms)],
    )?;
    Ok(())
}

/// The sink failed for message `id`: try again at `next_attempt_ms`.
pub(crate) fn failed(conn: &Connection, id: i64, next_attempt_ms: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2 WHERE id = ?1",
        params![id, sql_ms(next_attempt_ms)],
    )?;
    Ok(())
}
