//! The login throttle's lasting part (`node/guard.rs` keeps the live tables): failed
//! attempts of existing logins and the tellers trusted for a login, written through the
//! writer (and so through the Raft log on a replicated branch), read back when a node
//! starts to serve. A restart or a new leader forgets nothing a guesser could use.

use libp2p::PeerId;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use wire::limits::{LOGIN_FORGET_MS, LOGIN_THROTTLE_KEYS_MAX};

use super::{StoreError, sql_ms};

/// What the store keeps of the throttle: the counts of existing logins and the trusted
/// (login, peer) pairs.
#[derive(Debug, Default)]
pub struct Kept {
    /// (login, failures, last failure's time).
    pub counts: Vec<(String, u32, u64)>,
    /// (login, peer, trusted until).
    pub trusted: Vec<(String, PeerId, u64)>,
}

/// A change to the throttle's lasting part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ThrottleOp {
    /// Existing login `login` has `failures` failed attempts, the last at `last_ms`.
    Failed {
        login: String,
        failures: u32,
        last_ms: u64,
    },
    /// `login` logged in from teller `peer` (PeerId bytes): its failures go, and the
    /// teller is trusted for it until `until_ms`.
    Succeeded {
        login: String,
        peer: Vec<u8>,
        until_ms: u64,
        now_ms: u64,
    },
}

/// Applies `op` in the writer's transaction.
pub(crate) fn apply(c: &Connection, op: ThrottleOp) -> Result<(), StoreError> {
    match op {
        ThrottleOp::Failed {
            login,
            failures,
            last_ms,
        } => {
            c.prepare_cached(
                "INSERT INTO login_failures (login, failures, last_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (login) DO UPDATE SET failures = excluded.failures,
                     last_ms = excluded.last_ms",
            )?
            .execute(params![login, failures, sql_ms(last_ms)])?;
        }
        ThrottleOp::Succeeded {
            login,
            peer,
            until_ms,
            now_ms,
        } => {
            c.prepare_cached("DELETE FROM login_failures WHERE login = ?1")?
                .execute([&login])?;
            c.prepare_cached("DELETE FROM login_trust WHERE until_ms < ?1")?
                .execute([sql_ms(now_ms)])?;
            let n: i64 = c.query_row("SELECT count(*) FROM login_trust", [], |r| r.get(0))?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= LOGIN_THROTTLE_KEYS_MAX {
                c.execute(
                    "DELETE FROM login_trust WHERE rowid IN
                     (SELECT rowid FROM login_trust ORDER BY until_ms LIMIT 1)",
                    [],
                )?;
            }
            c.prepare_cached(
                "INSERT INTO login_trust (login, peer, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (login, peer) DO UPDATE SET until_ms = excluded.until_ms",
            )?
            .execute(params![login, peer, sql_ms(until_ms)])?;
        }
    }
    Ok(())
}

/// What the store kept, as of `now_ms` (counts not yet forgotten, trusts not expired).
pub fn kept(c: &Connection, now_ms: u64) -> Result<Kept, StoreError> {
    let since = sql_ms(now_ms.saturating_sub(LOGIN_FORGET_MS));
    let counts = c
        .prepare("SELECT login, failures, last_ms FROM login_failures WHERE last_ms >= ?1")?
        .query_map([since], |r| {
            let (failures, last): (i64, i64) = (r.get(1)?, r.get(2)?);
            Ok((
                r.get::<_, String>(0)?,
                u32::try_from(failures).unwrap_or(u32::MAX),
                u64::try_from(last).unwrap_or(0),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let trusted = c
        .prepare("SELECT login, peer, until_ms FROM login_trust WHERE until_ms > ?1")?
        .query_map([sql_ms(now_ms)], |r| {
            let (login, peer, until): (String, Vec<u8>, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            Ok((login, peer, u64::try_from(until).unwrap_or(0)))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|(login, peer, until)| Some((login, PeerId::from_bytes(&peer).ok()?, until)))
        .collect();
    Ok(Kept { counts, trusted })
}
