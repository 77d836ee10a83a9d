//! Users and logins: argon2id password hashes (OWASP parameters m=19456 KiB, t=2, p=1),
//! one answer for every kind of password failure, and one-time codes (TOTP) for
//! enrolled logins. Guessing is throttled by the node (`node/guard.rs`), not here.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rusqlite::{Connection, OptionalExtension, params};
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

    /// Checks a login at time `now_ms`, all three steps on this thread. Every password
    /// failure is `BadCredentials` (unknown user and wrong password alike). Guessing is
    /// limited by the node's throttle, not here.
    pub fn login(
        &mut self,
        login: &str,
        password: &str,
        otp: Option<&str>,
        now_ms: u64,
    ) -> Result<LoginOutcome, StoreError> {
        let user = login_read(self.conn(), login)?;
        let verified = login_verify(password, &user);
        self.in_tx(|c, me| login_record(c, me, login, &user, verified, otp, now_ms))
    }

    /// Enrols `login` for one-time codes with `secret` (see [`enroll_otp`]).
    pub fn enroll_otp(
        &mut self,
        login: &str,
        secret: &[u8],
        replace: bool,
    ) -> Result<Result<(), Refusal>, StoreError> {
        self.in_tx(|c, _| enroll_otp(c, login, secret, replace))
    }
}

/// What a login needs from the users table, read before the (slow) password check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum LoginRow {
    Unknown,
    Found {
        role: Role,
        customer_id: Option<i64>,
        hash: String,
        /// Enrolled for one-time codes.
        enrolled: bool,
    },
}

/// The refusal of a login whose password is wrong: at a login enrolled for one-time
/// codes, asked without a code, the same as a right password gets without one (so the
/// answer does not tell whether the password was right); else `BadCredentials`.
pub fn wrong_password(row: &LoginRow, otp_missing: bool) -> Refusal {
    match row {
        LoginRow::Found { enrolled: true, .. } if otp_missing => Refusal::OneTimeCode,
        _ => Refusal::BadCredentials,
    }
}

/// Step 1 of a login: the user's row, if there is one.
pub fn login_read(conn: &Connection, login: &str) -> Result<LoginRow, StoreError> {
    let user = conn
        .query_row(
            "SELECT role, customer_id, password_hash, otp_secret IS NOT NULL FROM users \
             WHERE login = ?1",
            [login],
            |r| {
                Ok(LoginRow::Found {
                    role: role_from(&r.get::<_, String>(0)?),
                    customer_id: r.get(1)?,
                    hash: r.get(2)?,
                    enrolled: r.get(3)?,
                })
            },
        )
        .optional()?;
    Ok(user.unwrap_or(LoginRow::Unknown))
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
    }
}

/// Step 3: for a verified password, the one-time code of an enrolled login (used up
/// in the same statement that checks it was not used before), then who logged in.
pub fn login_record(
    conn: &Connection,
    me: wire::BranchId,
    login: &str,
    row: &LoginRow,
    verified: bool,
    otp: Option<&str>,
    now_ms: u64,
) -> Result<LoginOutcome, StoreError> {
    let LoginRow::Found {
        role, customer_id, ..
    } = row
    else {
        return Ok(Err(Refusal::BadCredentials));
    };
    if !verified {
        return Ok(Err(wrong_password(row, otp.is_none())));
    }
    // With a code given, a wrong code is answered as a wrong password is: neither
    // answer tells which of the two was right.
    if !otp_accepted(conn, login, otp, now_ms)? {
        return Ok(Err(match otp {
            None => Refusal::OneTimeCode,
            Some(_) => Refusal::BadCredentials,
        }));
    }
    Ok(Ok(UserInfo {
        login: login.to_owned(),
        role: *role,
        accounts: customer_accounts(conn, me, *customer_id)?,
    }))
}

/// True when `login` is not enrolled, or `otp` is its code for a step near `now_ms`
/// that it has not used yet; that step is then marked used. Read again here, inside
/// the writer's transaction, so two logins racing with one code cannot both pass.
fn otp_accepted(
    conn: &Connection,
    login: &str,
    otp: Option<&str>,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let (secret, last): (Option<Vec<u8>>, i64) = conn.query_row(
        "SELECT otp_secret, otp_last_step FROM users WHERE login = ?1",
        [login],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(secret) = secret else {
        return Ok(true);
    };
    let last = u64::try_from(last).unwrap_or(0);
    let Some(step) = otp.and_then(|code| crate::totp::matching_step(&secret, code, now_ms, last))
    else {
        return Ok(false);
    };
    conn.execute(
        "UPDATE users SET otp_last_step = ?2 WHERE login = ?1",
        params![login, sql_ms(step)],
    )?;
    Ok(true)
}

/// Stores `secret` as `login`'s TOTP secret. An enrolled login is refused
/// `AlreadyEnrolled` unless `replace` (an admin replacing a lost device).
pub fn enroll_otp(
    conn: &Connection,
    login: &str,
    secret: &[u8],
    replace: bool,
) -> Result<Result<(), Refusal>, StoreError> {
    let current: Option<Option<Vec<u8>>> = conn
        .query_row(
            "SELECT otp_secret FROM users WHERE login = ?1",
            [login],
            |r| r.get(0),
        )
        .optional()?;
    match current {
        None => return Ok(Err(Refusal::AccountNotFound)),
        Some(Some(_)) if !replace => return Ok(Err(Refusal::AlreadyEnrolled)),
        Some(_) => {}
    }
    conn.execute(
        "UPDATE users SET otp_secret = ?2, otp_last_step = 0 WHERE login = ?1",
        params![login, secret],
    )?;
    Ok(Ok(()))
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
