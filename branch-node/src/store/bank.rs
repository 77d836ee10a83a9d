//! Banking operations on one branch: accounts, deposits, withdrawals, local transfers,
//! balances, history and listings. Each checks everything first and writes after, so a
//! refusal changes no account and no ledger entry.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use wire::teller::{
    AccountStatus, AccountView, ContactView, EntryFilter, EntryKind, EntryView, NewCustomer,
    PageRequest, TransferState,
};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use super::ledger::{self, NewEntry};
use super::{Store, StoreError, account_number, id_blob, now_ms, sql_ms};

/// A one-account movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Movement {
    Deposit,
    Withdrawal,
}

/// An account row, with its customer's phone when they opted in to SMS.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub balance: Amount,
    pub held: Amount,
    pub pending_credit: Amount,
    pub open: bool,
    pub sms_phone: Option<String>,
}

fn amount(minor: i64) -> Result<Amount, StoreError> {
    Amount::from_minor(minor).map_err(|e| StoreError::Malformed(e.to_string()))
}

/// The account's row, if `n` is an account of this branch that exists.
pub(crate) fn row(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
) -> Result<Option<Row>, StoreError> {
    if n.branch() != me {
        return Ok(None);
    }
    type Raw = (i64, i64, i64, String, Option<String>);
    let r: Option<Raw> = conn
        .prepare_cached(
            "SELECT a.balance, a.held, a.pending_credit, a.status, CASE WHEN c.sms_opt_in = 1 THEN c.phone END
             FROM accounts a JOIN customers c ON c.id = a.customer_id WHERE a.serial = ?1",
        )?
        .query_row([n.serial()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    r.map(|(b, h, p, s, phone)| {
        Ok(Row {
            balance: amount(b)?,
            held: amount(h)?,
            pending_credit: amount(p)?,
            open: s == "open",
            sms_phone: phone,
        })
    })
    .transpose()
}

/// The row of an account that exists here and is open.
fn open_row(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
) -> Result<Result<Row, Refusal>, StoreError> {
    Ok(match row(conn, me, n)? {
        None => Err(Refusal::AccountNotFound),
        Some(r) if !r.open => Err(Refusal::AccountClosed),
        Some(r) => Ok(r),
    })
}

/// Checks that `amount` may leave `n`: exists, open, available (balance - held) covers it.
pub(crate) fn check_debit(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
    amt: Amount,
) -> Result<Result<Row, Refusal>, StoreError> {
    let r = match open_row(conn, me, n)? {
        Ok(r) => r,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // The schema's CHECK keeps held <= balance: a row past it was not written by us.
    let available = r.balance.checked_sub(r.held).map_err(|_| {
        StoreError::Malformed(format!(
            "account {n}: held {} exceeds balance {}",
            r.held, r.balance
        ))
    })?;
    Ok(if available.checked_sub(amt).is_ok() {
        Ok(r)
    } else {
        Err(Refusal::InsufficientFunds)
    })
}

/// Checks that `amount` may arrive in `n`: exists, open, no overflow counting pending credits.
pub(crate) fn check_credit(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
    amt: Amount,
) -> Result<Result<Row, Refusal>, StoreError> {
    let r = match open_row(conn, me, n)? {
        Ok(r) => r,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let room = r
        .balance
        .checked_add(r.pending_credit)
        .and_then(|b| b.checked_add(amt));
    Ok(if room.is_ok() {
        Ok(r)
    } else {
        Err(Refusal::BalanceOverflow)
    })
}

/// Sets balance, held and pending credit of an account.
pub(crate) fn write_row(conn: &Connection, n: AccountNumber, r: &Row) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE accounts SET balance = ?2, held = ?3, pending_credit = ?4 WHERE serial = ?1",
    )?
    .execute(params![
        n.serial(),
        r.balance.minor(),
        r.held.minor(),
        r.pending_credit.minor()
    ])?;
    Ok(())
}

fn overflow(_: wire::AmountError) -> StoreError {
    StoreError::Malformed("checked amount overflowed".into())
}

/// Moves `spec.amount` from `from` to `to` (both rows of this branch, already checked
/// and read by the caller) and writes both ledger entries.
pub(crate) fn move_money(
    conn: &Connection,
    me: BranchId,
    spec: &TransferSpec,
    mut from: Row,
    mut to: Row,
    at_ms: u64,
) -> Result<(), StoreError> {
    let amt = spec.amount;
    from.balance = from.balance.checked_sub(amt).map_err(overflow)?;
    to.balance = to.balance.checked_add(amt).map_err(overflow)?;
    write_row(conn, spec.from, &from)?;
    write_row(conn, spec.to, &to)?;
    let entry = |serial, kind, counterparty, row: Row| NewEntry {
        serial,
        kind,
        counterparty: Some(counterparty),
        amount: amt,
        balance_after: row.balance,
        transfer_id: spec.id,
        at_ms,
        sms_phone: row.sms_phone,
    };
    let entries = [
        entry(spec.from.serial(), EntryKind::TransferDebit, spec.to, from),
        entry(spec.to.serial(), EntryKind::TransferCredit, spec.from, to),
    ];
    ledger::append_all(conn, me, &entries)
}

pub(crate) fn content_hash(
    tag: &[u8],
    content: &impl serde::Serialize,
) -> Result<Vec<u8>, StoreError> {
    let bytes = wire::encode(content).map_err(|e| StoreError::Malformed(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(tag);
    h.update(&bytes);
    Ok(h.finalize().to_vec())
}

/// The outcome recorded for a one-step movement: `Some(Ok(state))` when `id` was used
/// with the same content, `Some(Err(IdConflict))` when with another.
pub(crate) fn recorded(
    conn: &Connection,
    id: TransferId,
    hash: &[u8],
) -> Result<Option<TransferState>, StoreError> {
    let r: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT content_hash, outcome FROM transfers WHERE id = ?1")?
        .query_row([id_blob(id)], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match r {
        None => None,
        Some((h, _)) if h != hash => Some(TransferState::Aborted(Refusal::IdConflict)),
        Some((_, outcome)) => {
            Some(wire::decode(&outcome).map_err(|e| StoreError::Malformed(e.to_string()))?)
        }
    })
}

/// The recorded outcome of a one-step movement with this id, whatever its content.
pub(crate) fn outcome_of(
    conn: &Connection,
    id: TransferId,
) -> Result<Option<TransferState>, StoreError> {
    let r: Option<Vec<u8>> = conn
        .prepare_cached("SELECT outcome FROM transfers WHERE id = ?1")?
        .query_row([id_blob(id)], |r| r.get(0))
        .optional()?;
    r.map(|o| wire::decode(&o).map_err(|e| StoreError::Malformed(e.to_string())))
        .transpose()
}

/// The accounts a one-step movement touches: where money leaves and where it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Touches {
    pub debit: Option<AccountNumber>,
    pub credit: Option<AccountNumber>,
}

pub(crate) fn record(
    conn: &Connection,
    id: TransferId,
    hash: &[u8],
    state: TransferState,
    touches: Touches,
    at_ms: u64,
) -> Result<(), StoreError> {
    let outcome = wire::encode(&state).map_err(|e| StoreError::Malformed(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO transfers (id, content_hash, outcome, at_ms, debit_serial, credit_serial)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id_blob(id),
        hash,
        outcome,
        sql_ms(at_ms),
        touches.debit.map(|n| n.serial()),
        touches.credit.map(|n| n.serial())
    ])?;
    Ok(())
}

/// A one-step movement's record: the accounts it touches (as far as the record says)
/// and its outcome.
pub(crate) fn one_step_record(
    conn: &Connection,
    me: BranchId,
    id: TransferId,
) -> Result<Option<(Vec<AccountNumber>, TransferState)>, StoreError> {
    Ok(one_step_view(conn, me, id)?.map(|m| (m.accounts, m.state)))
}

/// The one-step record of `id` with its time, as `admin trace` shows it.
pub(crate) fn one_step_view(
    conn: &Connection,
    me: BranchId,
    id: TransferId,
) -> Result<Option<wire::trace::MovementView>, StoreError> {
    type Raw = (Vec<u8>, Option<i64>, Option<i64>, i64);
    let r: Option<Raw> = conn
        .prepare_cached(
            "SELECT outcome, debit_serial, credit_serial, at_ms FROM transfers WHERE id = ?1",
        )?
        .query_row([id_blob(id)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((outcome, debit, credit, at_ms)) = r else {
        return Ok(None);
    };
    let state = wire::decode(&outcome).map_err(|e| StoreError::Malformed(e.to_string()))?;
    let accounts = [debit, credit]
        .into_iter()
        .flatten()
        .map(|serial| account_number(me, serial))
        .collect::<Result<_, _>>()?;
    Ok(Some(wire::trace::MovementView {
        accounts,
        state,
        at_ms: u64::try_from(at_ms).unwrap_or(0),
    }))
}

/// True when `id` is used by a 2PC record at this branch (either role).
pub(crate) fn used_by_2pc(conn: &Connection, id: TransferId) -> Result<bool, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT (SELECT count(*) FROM coordinated WHERE id = ?1) + (SELECT count(*) FROM legs WHERE id = ?1)")?
        .query_row([id_blob(id)], |r| r.get(0))?;
    Ok(n > 0)
}

/// What an earlier use of `id` decides for a one-step movement with content `hash`:
/// the recorded outcome of the same content, or `IdConflict` for other content or for
/// an id this branch already uses in 2PC.
fn earlier_outcome(
    conn: &Connection,
    id: TransferId,
    hash: &[u8],
) -> Result<Option<TransferState>, StoreError> {
    if let Some(state) = recorded(conn, id, hash)? {
        return Ok(Some(state));
    }
    Ok(used_by_2pc(conn, id)?.then_some(TransferState::Aborted(Refusal::IdConflict)))
}

/// A local transfer, deduplicated by id; the outcome (refusals too) is recorded so a
/// repeat of the id gets the same answer.
pub(crate) fn transfer_local(
    conn: &Connection,
    me: BranchId,
    spec: &TransferSpec,
    at_ms: u64,
) -> Result<TransferState, StoreError> {
    let hash = content_hash(b"local-transfer", spec)?;
    if let Some(state) = earlier_outcome(conn, spec.id, &hash)? {
        return Ok(state);
    }
    let checked = match spec.validate() {
        Err(r) => Err(r),
        Ok(()) if spec.from.branch() != me || spec.to.branch() != me => {
            Err(Refusal::AccountNotFound)
        }
        Ok(()) => match (
            check_debit(conn, me, spec.from, spec.amount)?,
            check_credit(conn, me, spec.to, spec.amount)?,
        ) {
            (Ok(from), Ok(to)) => Ok((from, to)),
            (Err(r), _) | (_, Err(r)) => Err(r),
        },
    };
    let state = match checked {
        Err(r) => TransferState::Aborted(r),
        Ok((from, to)) => {
            move_money(conn, me, spec, from, to, at_ms)?;
            TransferState::Committed
        }
    };
    let touches = Touches {
        debit: Some(spec.from),
        credit: Some(spec.to),
    };
    record(conn, spec.id, &hash, state, touches, at_ms)?;
    Ok(state)
}

/// A deposit or withdrawal, deduplicated by id like a local transfer.
pub(crate) fn movement(
    conn: &Connection,
    me: BranchId,
    kind: Movement,
    id: TransferId,
    n: AccountNumber,
    amt: Amount,
    at_ms: u64,
) -> Result<TransferState, StoreError> {
    let tag: &[u8] = if kind == Movement::Deposit {
        b"deposit"
    } else {
        b"withdrawal"
    };
    let hash = content_hash(tag, &(n, amt))?;
    if let Some(state) = earlier_outcome(conn, id, &hash)? {
        return Ok(state);
    }
    let checked = match (amt.validate_movable(), kind) {
        (Err(_), _) => Err(Refusal::InvalidAmount),
        (Ok(_), Movement::Deposit) => check_credit(conn, me, n, amt)?,
        (Ok(_), Movement::Withdrawal) => check_debit(conn, me, n, amt)?,
    };
    let state = match checked {
        Err(r) => TransferState::Aborted(r),
        Ok(mut r) => {
            let (entry_kind, balance) = match kind {
                Movement::Deposit => (
                    EntryKind::Deposit,
                    r.balance.checked_add(amt).map_err(overflow)?,
                ),
                Movement::Withdrawal => (
                    EntryKind::Withdrawal,
                    r.balance.checked_sub(amt).map_err(overflow)?,
                ),
            };
            r.balance = balance;
            write_row(conn, n, &r)?;
            let e = NewEntry {
                serial: n.serial(),
                kind: entry_kind,
                counterparty: None,
                amount: amt,
                balance_after: balance,
                transfer_id: id,
                at_ms,
                sms_phone: r.sms_phone,
            };
            ledger::append_all(conn, me, &[e])?;
            TransferState::Committed
        }
    };
    let touches = match kind {
        Movement::Deposit => Touches {
            debit: None,
            credit: Some(n),
        },
        Movement::Withdrawal => Touches {
            debit: Some(n),
            credit: None,
        },
    };
    record(conn, id, &hash, state, touches, at_ms)?;
    Ok(state)
}

/// A national id as the vault keeps it: its keyed hash (hex) to find and compare it by,
/// the id sealed under the vault key, and its masked form for listings. Made where
/// the keys are (before an open is queued or proposed), so the plain id is in no
/// queue, Raft log entry or row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedId {
    pub hash: String,
    pub sealed: Vec<u8>,
    pub masked: String,
}

/// What a national id is sealed and hashed for.
pub const NATIONAL_ID_PURPOSE: &str = "national_id";

impl SealedId {
    /// `national_id` sealed and hashed under `keys`. The same id always seals to the
    /// same bytes (the nonce is drawn from its keyed hash, which already tells equal
    /// ids apart from others and nothing more), so replicas that seal it on their own,
    /// as a migration does, hold the same row.
    pub fn new(keys: &crate::keys::DataKeys, national_id: &str) -> SealedId {
        let hash = keys.lookup_hash(NATIONAL_ID_PURPOSE, national_id);
        let nonce: [u8; 12] = hash[..12].try_into().unwrap_or([0; 12]);
        SealedId {
            hash: hex::encode(hash),
            sealed: keys.seal_with(nonce, NATIONAL_ID_PURPOSE, national_id.as_bytes()),
            masked: wire::teller::mask_national_id(national_id),
        }
    }
}

/// Migration 9's part in code: a customer row from before it holds its national id
/// plain (in the column now called `national_id_hash`); each is sealed and hashed.
pub(crate) fn seal_national_ids(
    conn: &Connection,
    keys: &crate::keys::DataKeys,
) -> Result<(), StoreError> {
    let plain: Vec<(i64, String)> = conn
        .prepare("SELECT id, national_id_hash FROM customers WHERE national_id_sealed IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, national_id) in plain {
        let s = SealedId::new(keys, &national_id);
        conn.execute(
            "UPDATE customers SET national_id_hash = ?2, national_id_sealed = ?3,
             national_id_masked = ?4 WHERE id = ?1",
            params![id, s.hash, s.sealed, s.masked],
        )?;
    }
    Ok(())
}

/// Opens an account: for a new customer (by national id), or with `existing` a further
/// account of the customer who owns that account. The login is the account number.
pub(crate) fn open_account(
    conn: &Connection,
    me: BranchId,
    (customer, national_id): (&NewCustomer, &SealedId),
    password_hash: &str,
    existing: Option<AccountNumber>,
    at_ms: u64,
) -> Result<Result<AccountView, Refusal>, StoreError> {
    let customer_id: i64 = match existing {
        Some(n) => {
            if row(conn, me, n)?.is_none() {
                return Ok(Err(Refusal::AccountNotFound));
            }
            conn.query_row(
                "SELECT customer_id FROM accounts WHERE serial = ?1",
                [n.serial()],
                |r| r.get(0),
            )?
        }
        None => {
            let taken: i64 = conn.query_row(
                "SELECT count(*) FROM customers WHERE national_id_hash = ?1",
                [&national_id.hash],
                |r| r.get(0),
            )?;
            if taken > 0 {
                return Ok(Err(Refusal::UserExists));
            }
            conn.execute(
                "INSERT INTO customers (national_id_hash, national_id_sealed, national_id_masked, phone, first_name, last_name, sms_opt_in, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![national_id.hash, national_id.sealed, national_id.masked, customer.phone, customer.first_name, customer.last_name, customer.sms_opt_in, sql_ms(at_ms)],
            )?;
            conn.last_insert_rowid()
        }
    };
    let serial: i64 = conn.query_row(
        // Above every serial a restore learned the lost disk had used (`serial_floor`):
        // an account number is never given to a second customer.
        "SELECT max(coalesce((SELECT max(serial) FROM accounts), 0),
                    coalesce((SELECT value FROM meta WHERE key = 'serial_floor'), 0)) + 1",
        [],
        |r| r.get(0),
    )?;
    let number = account_number(me, serial)?;
    conn.execute(
        "INSERT INTO accounts (serial, customer_id, balance, status, opened_at_ms) VALUES (?1, ?2, 0, 'open', ?3)",
        params![serial, customer_id, sql_ms(at_ms)],
    )?;
    super::auth::create_user(
        conn,
        &number.to_string(),
        wire::teller::Role::Customer,
        Some(customer_id),
        password_hash,
    )?;
    Ok(Ok(view(conn, me, number)?.ok_or_else(|| {
        StoreError::Malformed("new account vanished".into())
    })?))
}

/// The sealed national id of account `n`'s owner, the reveal recorded in the audit
/// trail (by `actor`, at `at_ms`) in the same transaction.
pub(crate) fn reveal_national_id(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
    (actor, at_ms): (&str, u64),
) -> Result<Result<Vec<u8>, Refusal>, StoreError> {
    if row(conn, me, n)?.is_none() {
        return Ok(Err(Refusal::AccountNotFound));
    }
    let sealed: Option<Vec<u8>> = conn.query_row(
        "SELECT c.national_id_sealed FROM accounts a JOIN customers c ON c.id = a.customer_id
         WHERE a.serial = ?1",
        [n.serial()],
        |r| r.get(0),
    )?;
    let Some(sealed) = sealed else {
        return Ok(Err(Refusal::NoNationalId));
    };
    conn.execute(
        "INSERT INTO audit_trail (at_ms, actor, action, subject)
         VALUES (?1, ?2, 'reveal-national-id', ?3)",
        params![sql_ms(at_ms), actor, n.to_string()],
    )?;
    Ok(Ok(sealed))
}

/// The accounts of the customer whose national id has the keyed hash `hash` (hex).
pub(crate) fn customer_accounts_by_id(
    conn: &Connection,
    me: BranchId,
    hash: &str,
) -> Result<Vec<AccountView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.serial FROM accounts a JOIN customers c ON c.id = a.customer_id
         WHERE c.national_id_hash = ?1 ORDER BY a.serial",
    )?;
    let serials = stmt
        .query_map([hash], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut views = Vec::with_capacity(serials.len());
    for s in serials {
        views.extend(view(conn, me, account_number(me, s)?)?);
    }
    Ok(views)
}

/// The audit trail, oldest first: (at_ms, actor, action, subject).
pub fn audit_trail(conn: &Connection) -> Result<Vec<(u64, String, String, String)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT at_ms, actor, action, subject FROM audit_trail ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Closes an empty account with no holds or pending credits; its history stays. Its
/// login (the account number) is removed, which ends that login's sessions.
pub(crate) fn close_account(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
    at_ms: u64,
) -> Result<Result<AccountView, Refusal>, StoreError> {
    let Some(r) = row(conn, me, n)? else {
        return Ok(Err(Refusal::AccountNotFound));
    };
    if !r.open {
        return Ok(Err(Refusal::AccountClosed));
    }
    if r.balance != Amount::ZERO || r.held != Amount::ZERO || r.pending_credit != Amount::ZERO {
        return Ok(Err(Refusal::AccountNotEmpty));
    }
    conn.execute(
        "UPDATE accounts SET status = 'closed', closed_at_ms = ?2 WHERE serial = ?1",
        params![n.serial(), sql_ms(at_ms)],
    )?;
    conn.execute("DELETE FROM users WHERE login = ?1", [n.to_string()])?;
    Ok(Ok(view(conn, me, n)?.ok_or_else(|| {
        StoreError::Malformed("closed account vanished".into())
    })?))
}

const VIEW_SQL: &str = "SELECT a.serial, c.first_name || ' ' || c.last_name, a.balance, a.held, a.status, a.opened_at_ms,
                               c.national_id_masked, c.phone, c.sms_opt_in
                        FROM accounts a JOIN customers c ON c.id = a.customer_id";

fn view_row(me: BranchId, r: &rusqlite::Row) -> Result<AccountView, StoreError> {
    Ok(AccountView {
        number: account_number(me, r.get(0)?)?,
        owner_name: r.get(1)?,
        balance: amount(r.get(2)?)?,
        held: amount(r.get(3)?)?,
        status: if r.get::<_, String>(4)? == "open" {
            AccountStatus::Open
        } else {
            AccountStatus::Closed
        },
        opened_at_ms: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        contact: ContactView {
            national_id_masked: r.get(6)?,
            phone: r.get(7)?,
            sms_opt_in: r.get::<_, i64>(8)? != 0,
        },
    })
}

/// An account as a teller sees it.
pub(crate) fn view(
    conn: &Connection,
    me: BranchId,
    n: AccountNumber,
) -> Result<Option<AccountView>, StoreError> {
    if n.branch() != me {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(&format!("{VIEW_SQL} WHERE a.serial = ?1"))?;
    let mut rows = stmt.query([n.serial()])?;
    rows.next()?.map(|r| view_row(me, r)).transpose()
}

/// Every account of branch `me`, by number.
/// Up to `limit` accounts with a serial above `after_serial`, in serial order.
pub(crate) fn list(
    conn: &Connection,
    me: BranchId,
    after_serial: u32,
    limit: u32,
) -> Result<Vec<AccountView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{VIEW_SQL} WHERE a.serial > ?1 ORDER BY a.serial LIMIT ?2"
    ))?;
    let mut rows = stmt.query(rusqlite::params![after_serial, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(view_row(me, r)?);
    }
    Ok(out)
}

/// One page of the ledger's entries that `filter` lets through, newest first. An
/// account of another branch has no entries here.
pub(crate) fn history(
    conn: &Connection,
    me: BranchId,
    filter: EntryFilter,
    page: PageRequest,
) -> Result<(Vec<EntryView>, Option<u64>), StoreError> {
    let serial = match filter.account {
        Some(n) if n.branch() != me => return Ok((Vec::new(), None)),
        Some(n) => Some(n.serial()),
        None => None,
    };
    let read = ledger::ReadFilter {
        serial,
        kind: filter.kind,
        since_ms: filter.since_ms,
        until_ms: filter.until_ms,
        transfer: None,
    };
    ledger::read(
        conn,
        me,
        &read,
        page.before,
        page.limit.min(wire::limits::PAGE_ROWS_MAX),
    )
}

impl Store {
    /// Opens an account (see `bank::open_account`); `password_hash` from [`super::hash_password`].
    pub fn open_account(
        &mut self,
        customer: &NewCustomer,
        password_hash: &str,
        existing: Option<AccountNumber>,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        let national_id = SealedId::new(&self.keys, &customer.national_id);
        let who = (customer, &national_id);
        self.in_tx(|c, me| open_account(c, me, who, password_hash, existing, now_ms()))
    }

    /// Closes an empty account.
    pub fn close_account(
        &mut self,
        n: AccountNumber,
    ) -> Result<Result<AccountView, Refusal>, StoreError> {
        self.in_tx(|c, me| close_account(c, me, n, now_ms()))
    }

    /// A deposit or withdrawal, idempotent by `id`.
    pub fn movement(
        &mut self,
        kind: Movement,
        id: TransferId,
        n: AccountNumber,
        amt: Amount,
    ) -> Result<TransferState, StoreError> {
        self.in_tx(|c, me| movement(c, me, kind, id, n, amt, now_ms()))
    }

    /// One account, or `None` if it is not an account of this branch.
    pub fn account(&self, n: AccountNumber) -> Result<Option<AccountView>, StoreError> {
        view(self.conn(), self.branch(), n)
    }

    /// Every account of this branch, by number.
    pub fn accounts(&self) -> Result<Vec<AccountView>, StoreError> {
        list(self.conn(), self.branch(), 0, u32::MAX)
    }

    /// One page of an account's history (or of the whole ledger with `None`), newest first.
    pub fn history(
        &self,
        account: Option<AccountNumber>,
        page: PageRequest,
    ) -> Result<(Vec<EntryView>, Option<u64>), StoreError> {
        let filter = EntryFilter {
            account,
            ..EntryFilter::default()
        };
        history(self.conn(), self.branch(), filter, page)
    }

    /// Messages waiting in the outbox (phone, body), oldest first.
    pub fn outbox(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT phone, body FROM outbox WHERE delivered_at_ms IS NULL ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The largest deposit a customer may make (`meta.customer_deposit_max`, set at
/// `branch-node init`); the default where a store has none.
pub(crate) fn customer_deposit_max(conn: &Connection) -> Result<Amount, StoreError> {
    let minor: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'customer_deposit_max'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let minor = minor.unwrap_or(wire::limits::CUSTOMER_DEPOSIT_MAX_DEFAULT_MINOR);
    Amount::from_minor(minor).map_err(|_| {
        StoreError::Malformed(format!("customer_deposit_max {minor} is not an amount"))
    })
}

impl Store {
    /// Sets the largest deposit a customer may make (`branch-node init`).
    pub fn set_customer_deposit_max(&mut self, max: Amount) -> Result<(), StoreError> {
        self.in_tx(|c, _| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('customer_deposit_max', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [max.minor()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKeys;
    use crate::store::Durability;

    #[test]
    fn a_reveal_is_audited_and_one_refused_leaves_no_trail() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = DataKeys::generate();
        let me = BranchId(1);
        let mut store =
            Store::open(&tmp.path().join("b.db"), &keys, me, Durability::Full).expect("store");
        let who = NewCustomer {
            national_id: "19850312-1234".into(),
            phone: "1".into(),
            first_name: "A".into(),
            last_name: "B".into(),
            sms_opt_in: false,
        };
        let n = store
            .open_account(&who, "hash", None)
            .expect("store")
            .expect("opens")
            .number;
        let c = store.conn();
        let reveal = |n| reveal_national_id(c, me, n, ("admin", 5)).expect("store");
        let sealed = reveal(n).expect("revealed");
        let plain = keys.open(NATIONAL_ID_PURPOSE, &sealed).expect("opens");
        assert_eq!(plain, b"19850312-1234");
        let unknown = account_number(me, 99).expect("number");
        assert_eq!(reveal(unknown), Err(Refusal::AccountNotFound));
        // An account a restore put back from the network's records has no id on record.
        c.execute("UPDATE customers SET national_id_sealed = NULL", [])
            .expect("placeholder");
        assert_eq!(reveal(n), Err(Refusal::NoNationalId));
        let trail = audit_trail(c).expect("trail");
        assert_eq!(trail.len(), 1, "only the reveal that answered: {trail:?}");
        assert_eq!(trail[0].1, "admin");
    }
}
