//! Users and logins: argon2id password hashes (OWASP parameters m=19456 KiB, t=2, p=1),
//! one answer for every kind of failure, and a lockout after repeated failures.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rusqlite::{Connection, OptionalExtension, params};
use wire::limits::{LOGIN_FAILURES_MAX, LOGIN_LOCKOUT_MS};
use wire::teller::Role;
use wire::{AccountNumber, Refusal};

use super::{Store, StoreError, account_number, sql_ms};

/// Hashes a password with argon2id and a fresh salt. Takes ~30 ms: call it outside the
/// writer, before the operation that stores the hash.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Password(e.to_string()))
}

/// Verifies against a stored hash; a malformed stored hash verifies nothing.
fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub login: String,
    pub role: Role,
    /// The customer's accounts (empty for an admin).
    pub accounts: Vec<AccountNumber>,
}

/// The answer to a login.
pub type LoginOutcome = Result<UserInfo, Refusal>;

pub(crate) fn create_user(
    conn: &Connection,
    login: &str,
    role: Role,
    customer_id: Option<i64>,
    password_hash: &str,
) -> Result<bool, StoreError> {
    let role = match role {
        Role::Admin => "admin",
        Role::Customer => "customer",
    };
    let n = conn.execute(
        "INSERT OR IGNORE INTO users (login, role, customer_id, password_hash) VALUES (?1, ?2, ?3, ?4)",
        params![login, role, customer_id, password_hash],
    )?;
    Ok(n == 1)
}

/// A hash of a password nobody has, verified for unknown logins so that an unknown
/// login takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no user has this password").unwrap_or_default())
}

impl Store {
    /// Creates an admin login (the first one is made by `branch-node init`).
    pub fn create_admin(
        &mut self,
        login: &str,
        password_hash: &str,
    ) -> Result<Result<(), Refusal>, StoreError> {
        self.in_tx(|c, _| {
            Ok(
                if create_user(c, login, Role::Admin, None, password_hash)? {
                    Ok(())
                } else {
                    Err(Refusal::UserExists)
                },
            )
        })
    }

    /// Checks a login at time `now_ms`. Every failure is `BadCredentials` (unknown user
    /// and wrong password alike); after [`LOGIN_FAILURES_MAX`] failures in a row the
    /// login is `LockedOut` for [`LOGIN_LOCKOUT_MS`], even with the right password.
    pub fn login(
        &mut self,
        login: &str,
        password: &str,
        now_ms: u64,
    ) -> Result<LoginOutcome, StoreError> {
        let user = login_read(self.conn(), login, now_ms)?;
        let verified = login_verify(password, &user);
        self.in_tx(|c, me| login_record(c, me, login, &user, verified, now_ms))
    }
}

/// What a login needs from the users table, read before the (slow) password check.
#[derive(Debug, Clone)]
pub enum LoginRow {
    Unknown,
    Locked,
    Found {
        role: Role,
        customer_id: Option<i64>,
        hash: String,
    },
}

/// Step 1 of a login: the user's row, or why there is none to check.
pub fn login_read(conn: &Connection, login: &str, now_ms: u64) -> Result<LoginRow, StoreError> {
    let user: Option<(String, Option<i64>, String, i64)> = conn
        .query_row(
            "SELECT role, customer_id, password_hash, locked_until_ms FROM users WHERE login = ?1",
            [login],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(match user {
        None => LoginRow::Unknown,
        Some((.., locked_until)) if sql_ms(now_ms) < locked_until => LoginRow::Locked,
        Some((role, customer_id, hash, _)) => LoginRow::Found {
            role: role_from(&role),
            customer_id,
            hash,
        },
    })
}

/// Step 2, outside any SQLite transaction (~60 ms of argon2): does the password match?
/// An unknown user is checked against a dummy hash so that it takes as long.
pub fn login_verify(password: &str, row: &LoginRow) -> bool {
    match row {
        LoginRow::Found { hash, .. } => verify(password, hash),
        LoginRow::Unknown => {
            let _ = verify(password, dummy_hash());
            false
        }
        LoginRow::Locked => false,
    }
}

/// Step 3: count a failure (locking the login after too many) or clear the count.
/// Counting is one SQL increment, so concurrent failures are never lost.
pub fn login_record(
    conn: &Connection,
    me: wire::BranchId,
    login: &str,
    row: &LoginRow,
    verified: bool,
    now_ms: u64,
) -> Result<LoginOutcome, StoreError> {
    let (role, customer_id) = match row {
        LoginRow::Unknown => return Ok(Err(Refusal::BadCredentials)),
        LoginRow::Locked => return Ok(Err(Refusal::LockedOut)),
        LoginRow::Found {
            role, customer_id, ..
        } => (*role, *customer_id),
    };
    if !verified {
        let failures: i64 = conn.query_row(
            "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE login = ?1
             RETURNING failed_attempts",
            [login],
            |r| r.get(0),
        )?;
        if failures < i64::from(LOGIN_FAILURES_MAX) {
            return Ok(Err(Refusal::BadCredentials));
        }
        conn.execute(
            "UPDATE users SET failed_attempts = 0, locked_until_ms = ?2 WHERE login = ?1",
            params![login, sql_ms(now_ms.saturating_add(LOGIN_LOCKOUT_MS))],
        )?;
        return Ok(Err(Refusal::LockedOut));
    }
    conn.execute(
        "UPDATE users SET failed_attempts = 0 WHERE login = ?1 AND failed_attempts != 0",
        [login],
    )?;
    Ok(Ok(UserInfo {
        login: login.to_owned(),
        role,
        accounts: customer_accounts(conn, me, customer_id)?,
    }))
}

/// The accounts of customer `customer_id` (none for an admin's `None`), by number.
pub(crate) fn customer_accounts(
    conn: &Connection,
    me: wire::BranchId,
    customer_id: Option<i64>,
) -> Result<Vec<AccountNumber>, StoreError> {
    let Some(cid) = customer_id else {
        return Ok(Vec::new());
    };
    let mut stmt =
        conn.prepare_cached("SELECT serial FROM accounts WHERE customer_id = ?1 ORDER BY serial")?;
    let serials: Vec<i64> = stmt
        .query_map([cid], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    serials.into_iter().map(|s| account_number(me, s)).collect()
}

/// A role as the users table spells it.
pub(crate) fn role_from(text: &str) -> Role {
    if text == "admin" {
        Role::Admin
    } else {
        Role::Customer
    }
}
