//! Teller sessions as stored, so that a restart does not log every teller out: only the
//! SHA-256 of each token is kept (a copy of the file does not hand out live tokens),
//! with its login, the teller's PeerId it is bound to, and its expiry.

use rusqlite::{Connection, params};

use super::auth::{UserInfo, customer_accounts, role_from};
use super::{StoreError, sql_ms};

/// One session row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRow {
    pub token_hash: [u8; 32],
    pub login: String,
    /// The teller's PeerId bytes: the only peer that may use the session.
    pub teller: Vec<u8>,
    pub expires_at_ms: u64,
}

/// Stores a new session and forgets `evicted` ones and any that expired by `now_ms`.
pub(crate) fn insert(
    conn: &Connection,
    row: &SessionRow,
    evicted: &[[u8; 32]],
    now_ms: u64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_at_ms <= ?1")?
        .execute([sql_ms(now_ms)])?;
    for hash in evicted {
        delete(conn, hash)?;
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO sessions (token_hash, login, teller, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        &row.token_hash[..],
        row.login,
        row.teller,
        sql_ms(row.expires_at_ms)
    ])?;
    Ok(())
}

/// Forgets one session (logout).
pub(crate) fn delete(conn: &Connection, token_hash: &[u8; 32]) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
        .execute([&token_hash[..]])?;
    Ok(())
}

/// Every session live at `now_ms`, with its user as a login would find it now (role,
/// the customer's accounts). Expired rows are deleted first.
pub(crate) fn live(
    conn: &Connection,
    me: wire::BranchId,
    now_ms: u64,
) -> Result<Vec<(SessionRow, UserInfo)>, StoreError> {
    conn.execute(
        "DELETE FROM sessions WHERE expires_at_ms <= ?1",
        [sql_ms(now_ms)],
    )?;
    let mut stmt = conn.prepare(
        "SELECT s.token_hash, s.login, s.teller, s.expires_at_ms, u.role, u.customer_id
         FROM sessions s JOIN users u ON u.login = s.login",
    )?;
    type Raw = (Vec<u8>, String, Vec<u8>, i64, String, Option<i64>);
    let rows: Vec<Raw> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(hash, login, teller, expires, role, customer)| {
            let token_hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Malformed("session token hash".into()))?;
            let user = UserInfo {
                login: login.clone(),
                role: role_from(&role),
                accounts: customer_accounts(conn, me, customer)?,
            };
            let row = SessionRow {
                token_hash,
                login,
                teller,
                expires_at_ms: u64::try_from(expires).unwrap_or(0),
            };
            Ok((row, user))
        })
        .collect()
}
