//! The append-only ledger: every balance change is an entry with the balance after it
//! and a SHA-256 chained to the previous entry; `verify_ledger` proves both.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use wire::teller::{EntryKind, EntryView};
use wire::{AccountNumber, Amount, BranchId, TransferId};

use super::{Store, StoreError, account_number, blob_id, id_blob, sql_ms};

/// Most SMS alerts one phone gets per hour; further movements in that hour are not
/// texted (their ledger lines are still there), so one customer's stream of tiny
/// transfers cannot run up the bank's SMS bill.
pub const SMS_PER_PHONE_PER_HOUR_MAX: i64 = 10;

/// The window that maximum counts in, in milliseconds.
const SMS_CAP_WINDOW_MS: u64 = 3_600_000;

/// Whether `phone` may get another alert for a movement at `at_ms`; a refused one is
/// counted in the metrics.
fn sms_allowed(conn: &Connection, phone: &str, at_ms: u64) -> Result<bool, StoreError> {
    let since = sql_ms(at_ms.saturating_sub(SMS_CAP_WINDOW_MS));
    let sent: i64 = conn
        .prepare_cached("SELECT count(*) FROM outbox WHERE phone = ?1 AND created_at_ms > ?2")?
        .query_row(params![phone, since], |r| r.get(0))?;
    let allowed = sent < SMS_PER_PHONE_PER_HOUR_MAX;
    if !allowed {
        crate::metrics::get().sms_capped.inc();
    }
    Ok(allowed)
}

/// The hash before the first entry.
const GENESIS: [u8; 32] = [0; 32];

/// Which entries [`read`] returns: those of account `serial` (all with `None`), of
/// `kind`, at or after `since_ms` and before `until_ms`, where set.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadFilter {
    pub serial: Option<u32>,
    pub kind: Option<EntryKind>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only the lines of this transfer (or deposit, or withdrawal).
    pub transfer: Option<TransferId>,
}

pub(crate) fn kind_text(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Deposit => "deposit",
        EntryKind::Withdrawal => "withdrawal",
        EntryKind::TransferDebit => "transfer_debit",
        EntryKind::TransferCredit => "transfer_credit",
    }
}

pub(crate) fn kind_from(text: &str) -> Result<EntryKind, StoreError> {
    Ok(match text {
        "deposit" => EntryKind::Deposit,
        "withdrawal" => EntryKind::Withdrawal,
        "transfer_debit" => EntryKind::TransferDebit,
        "transfer_credit" => EntryKind::TransferCredit,
        other => return Err(StoreError::Malformed(format!("ledger kind {other}"))),
    })
}

/// One entry about to be written.
#[derive(Debug)]
pub(crate) struct NewEntry {
    pub serial: u32,
    pub kind: EntryKind,
    pub counterparty: Option<AccountNumber>,
    pub amount: Amount,
    pub balance_after: Amount,
    pub transfer_id: TransferId,
    pub at_ms: u64,
    /// The customer's phone when they opted in to SMS (not part of the hash).
    pub sms_phone: Option<String>,
}

fn entry_hash(prev: &[u8], seq: i64, e: &NewEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.serial.to_be_bytes());
    h.update(kind_text(e.kind).as_bytes());
    h.update([0]);
    h.update(
        e.counterparty
            .map(|c| c.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    h.update([0]);
    h.update(e.amount.minor().to_be_bytes());
    h.update(e.balance_after.minor().to_be_bytes());
    h.update(id_blob(e.transfer_id));
    h.update(e.at_ms.to_be_bytes());
    h.finalize().into()
}

/// Appends entries in order, each with an SMS in the outbox when its customer opted
/// in; all in the caller's transaction. The chain head is read once per call.
pub(crate) fn append_all(
    conn: &Connection,
    me: BranchId,
    entries: &[NewEntry],
) -> Result<(), StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut seq, mut prev) = match last {
        Some((s, h)) => (s, h),
        None => (0, GENESIS.to_vec()),
    };
    for e in entries {
        seq += 1;
        let hash = entry_hash(&prev, seq, e);
        conn.prepare_cached(
            "INSERT INTO ledger (seq, account_serial, kind, counterparty, amount, balance_after, transfer_id, at_ms, prev_hash, hash, account_prev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                     (SELECT last_seq FROM accounts WHERE serial = ?2))",
        )?
        .execute(params![
            seq,
            e.serial,
            kind_text(e.kind),
            e.counterparty.map(|c| c.to_string()),
            e.amount.minor(),
            e.balance_after.minor(),
            id_blob(e.transfer_id),
            sql_ms(e.at_ms),
            prev,
            hash.to_vec()
        ])?;
        if let Some(phone) = &e.sms_phone
            && sms_allowed(conn, phone, e.at_ms)?
        {
            let account = account_number(me, i64::from(e.serial))?;
            let verb = match e.kind {
                EntryKind::Deposit => "deposit of",
                EntryKind::Withdrawal => "withdrawal of",
                EntryKind::TransferDebit => "transfer out of",
                EntryKind::TransferCredit => "transfer in of",
            };
            let body = format!(
                "BankMate: {verb} {} on {account}; balance {}",
                e.amount, e.balance_after
            );
            conn.prepare_cached(
                "INSERT INTO outbox (phone, body, created_at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![phone, body, sql_ms(e.at_ms)])?;
        }
        prev = hash.to_vec();
    }
    Ok(())
}

/// Reads entries newest first: those with `seq < before`, of one account or all.
pub(crate) fn read(
    conn: &Connection,
    me: BranchId,
    filter: &ReadFilter,
    before: Option<u64>,
    limit: u32,
) -> Result<(Vec<EntryView>, Option<u64>), StoreError> {
    let before = before.map_or(i64::MAX, sql_ms);
    let raws = match filter.serial {
        Some(serial) => read_account(conn, serial, filter, before, limit)?,
        None => read_all(conn, filter, before, limit)?,
    };
    let entries = raws
        .into_iter()
        .map(|raw| raw.view(me))
        .collect::<Result<Vec<_>, _>>()?;
    let next = if entries.len() == limit as usize {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok((entries, next))
}

/// One ledger row as read, before it is checked into an [`EntryView`].
struct RawEntry {
    seq: i64,
    serial: i64,
    kind: String,
    counterparty: Option<String>,
    amount: i64,
    balance_after: i64,
    transfer_id: Vec<u8>,
    at_ms: i64,
    /// The same account's entry before this one.
    account_prev: Option<i64>,
}

/// The columns [`RawEntry::from_row`] reads, in its order.
const RAW_COLUMNS: &str = "seq, account_serial, kind, counterparty, amount, balance_after, \
                           transfer_id, at_ms, account_prev";

impl RawEntry {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
        Ok(RawEntry {
            seq: r.get(0)?,
            serial: r.get(1)?,
            kind: r.get(2)?,
            counterparty: r.get(3)?,
            amount: r.get(4)?,
            balance_after: r.get(5)?,
            transfer_id: r.get(6)?,
            at_ms: r.get(7)?,
            account_prev: r.get(8)?,
        })
    }

    /// Whether the entry passes `filter`'s conditions other than its account.
    fn passes(&self, filter: &ReadFilter) -> bool {
        filter.kind.is_none_or(|k| kind_text(k) == self.kind)
            && filter.since_ms.is_none_or(|t| self.at_ms >= sql_ms(t))
            && filter.until_ms.is_none_or(|t| self.at_ms < sql_ms(t))
            && filter
                .transfer
                .is_none_or(|id| self.transfer_id == id_blob(id))
    }

    fn view(self, me: BranchId) -> Result<EntryView, StoreError> {
        let malformed = |e: wire::AmountError| StoreError::Malformed(e.to_string());
        Ok(EntryView {
            branch: me,
            seq: u64::try_from(self.seq).unwrap_or(0),
            account: account_number(me, self.serial)?,
            kind: kind_from(&self.kind)?,
            counterparty: self
                .counterparty
                .map(|c| {
                    c.parse()
                        .map_err(|e: wire::AccountNumberError| StoreError::Malformed(e.to_string()))
                })
                .transpose()?,
            amount: Amount::from_minor(self.amount).map_err(malformed)?,
            balance_after: Amount::from_minor(self.balance_after).map_err(malformed)?,
            transfer_id: blob_id(&self.transfer_id)?,
            at_ms: u64::try_from(self.at_ms).unwrap_or(0),
        })
    }
}

/// Every account's entries, newest first, in `seq` order.
fn read_all(
    conn: &Connection,
    filter: &ReadFilter,
    before: i64,
    limit: u32,
) -> Result<Vec<RawEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RAW_COLUMNS} FROM ledger
         WHERE seq < ?1 AND (?3 IS NULL OR kind = ?3)
           AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5)
           AND (?6 IS NULL OR transfer_id = ?6)
         ORDER BY seq DESC LIMIT ?2"
    ))?;
    let kind = filter.kind.map(kind_text);
    let (since, until) = (filter.since_ms.map(sql_ms), filter.until_ms.map(sql_ms));
    let transfer = filter.transfer.map(id_blob);
    let args = params![before, limit, kind, since, until, transfer];
    let rows = stmt.query_map(args, RawEntry::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One account's entries, newest first: its chain of `account_prev` links from its
/// newest entry (or from the entry the cursor `before` names, when it is this
/// account's: the next page starts where the last one ended).
fn read_account(
    conn: &Connection,
    serial: u32,
    filter: &ReadFilter,
    before: i64,
    limit: u32,
) -> Result<Vec<RawEntry>, StoreError> {
    let mut one =
        conn.prepare_cached(&format!("SELECT {RAW_COLUMNS} FROM ledger WHERE seq = ?1"))?;
    let cursor = one
        .query_row([before], RawEntry::from_row)
        .optional()?
        .filter(|e| e.serial == i64::from(serial));
    let mut next: Option<i64> = match cursor {
        Some(e) => e.account_prev,
        None => conn
            .prepare_cached("SELECT last_seq FROM accounts WHERE serial = ?1")?
            .query_row([serial], |r| r.get(0))
            .optional()?
            .flatten(),
    };
    let mut out = Vec::new();
    while let Some(seq) = next
        && out.len() < limit as usize
    {
        let Some(e) = one.query_row([seq], RawEntry::from_row).optional()? else {
            return Err(StoreError::Malformed(format!(
                "ledger entry {seq} is missing"
            )));
        };
        if e.serial != i64::from(serial) || e.account_prev.is_some_and(|p| p >= seq) {
            return Err(StoreError::Malformed(format!(
                "ledger entry {seq}: its account link is broken"
            )));
        }
        next = e.account_prev;
        if e.seq < before && e.passes(filter) {
            out.push(e);
        }
    }
    Ok(out)
}

/// What `verify_ledger` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerReport {
    pub entries: u64,
    pub accounts: u64,
}

/// The first problem `verify_ledger` found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerViolation {
    #[error("ledger entry {seq}: hash chain broken")]
    BrokenChain { seq: i64 },
    #[error("ledger entry {seq}: sequence gap")]
    Gap { seq: i64 },
    #[error("ledger entry {seq}: balance after is {recorded}, entries sum to {computed}")]
    BalanceAfter {
        seq: i64,
        recorded: i64,
        computed: i64,
    },
    #[error("account {account}: balance is {stored}, its ledger sums to {computed}")]
    AccountBalance {
        account: String,
        stored: i64,
        computed: i64,
    },
    #[error("ledger entry {seq}: the link to its account's previous entry is wrong")]
    AccountLink { seq: i64 },
    #[error("account {account}: its newest ledger entry is recorded wrongly")]
    AccountTail { account: String },
}

impl Store {
    /// Walks the hash chain and recomputes every balance from the ledger; the first
    /// mismatch is returned. Read-only.
    pub fn verify_ledger(&self) -> Result<Result<LedgerReport, LedgerViolation>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, account_serial, kind, counterparty, amount, balance_after, transfer_id, at_ms, prev_hash, hash, account_prev FROM ledger ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut prev = GENESIS.to_vec();
        let mut expected_seq = 1;
        let mut balances: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
        // Each account's newest entry so far: the link the next one must hold.
        let mut newest: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
        let mut count = 0;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            if seq != expected_seq {
                return Ok(Err(LedgerViolation::Gap { seq }));
            }
            let kind = kind_from(&r.get::<_, String>(2)?)?;
            let cp: Option<String> = r.get(3)?;
            let e = NewEntry {
                serial: r.get(1)?,
                kind,
                counterparty: cp.and_then(|c| c.parse().ok()),
                amount: Amount::from_minor(r.get(4)?)
                    .map_err(|e| StoreError::Malformed(e.to_string()))?,
                balance_after: Amount::from_minor(r.get(5)?)
                    .map_err(|e| StoreError::Malformed(e.to_string()))?,
                transfer_id: blob_id(&r.get::<_, Vec<u8>>(6)?)?,
                at_ms: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                sms_phone: None,
            };
            let (stored_prev, stored_hash): (Vec<u8>, Vec<u8>) = (r.get(8)?, r.get(9)?);
            if stored_prev != prev || stored_hash != entry_hash(&prev, seq, &e) {
                return Ok(Err(LedgerViolation::BrokenChain { seq }));
            }
            let link: Option<i64> = r.get(10)?;
            if link != newest.insert(e.serial, seq) {
                return Ok(Err(LedgerViolation::AccountLink { seq }));
            }
            let bal = balances.entry(e.serial).or_default();
            *bal += match kind {
                EntryKind::Deposit | EntryKind::TransferCredit => e.amount.minor(),
                EntryKind::Withdrawal | EntryKind::TransferDebit => -e.amount.minor(),
            };
            if *bal != e.balance_after.minor() {
                return Ok(Err(LedgerViolation::BalanceAfter {
                    seq,
                    recorded: e.balance_after.minor(),
                    computed: *bal,
                }));
            }
            prev = stored_hash;
            expected_seq += 1;
            count += 1;
        }
        let mut stmt =
            conn.prepare("SELECT serial, balance, last_seq FROM accounts ORDER BY serial")?;
        let accounts: Vec<(u32, i64, Option<i64>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (serial, stored, last) in &accounts {
            if *last != newest.get(serial).copied() {
                let account = self.account_number(i64::from(*serial))?.to_string();
                return Ok(Err(LedgerViolation::AccountTail { account }));
            }
            let computed = balances.get(serial).copied().unwrap_or(0);
            if computed != *stored {
                let account = self.account_number(i64::from(*serial))?.to_string();
                return Ok(Err(LedgerViolation::AccountBalance {
                    account,
                    stored: *stored,
                    computed,
                }));
            }
        }
        Ok(Ok(LedgerReport {
            entries: count,
            accounts: accounts.len() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKeys;
    use crate::store::{Durability, Movement, Store};
    use coordinator::Shard;
    use wire::teller::NewCustomer;
    use wire::twopc::TransferSpec;

    fn opened(s: &mut Store, n: u32) -> AccountNumber {
        let who = NewCustomer {
            national_id: format!("L{n}"),
            phone: "1".into(),
            first_name: "A".into(),
            last_name: "B".into(),
            sms_opt_in: false,
        };
        s.open_account(&who, "hash", None)
            .expect("store")
            .expect("opens")
            .number
    }

    #[test]
    fn an_accounts_filtered_pages_by_its_links_match_the_ledger_filtered_in_sql() {
        let tmp = tempfile::tempdir().expect("tmp");
        let me = BranchId(1);
        let keys = DataKeys::generate();
        let mut s =
            Store::open(&tmp.path().join("b.db"), &keys, me, Durability::Full).expect("store");
        let (a, b) = (opened(&mut s, 1), opened(&mut s, 2));
        let amt = |m| Amount::from_minor(m).expect("amount");
        for i in 0..40u128 {
            let (id, (from, to)) = (TransferId(i + 1), if i % 3 == 0 { (b, a) } else { (a, b) });
            if i % 4 == 0 {
                s.movement(Movement::Deposit, id, to, amt(50))
                    .expect("deposit");
            } else {
                let spec = TransferSpec {
                    id,
                    from,
                    to,
                    amount: amt(1),
                };
                s.transfer_local(&[spec]).expect("transfer");
            }
        }
        let filters = [
            ReadFilter {
                kind: Some(EntryKind::Deposit),
                ..ReadFilter::default()
            },
            ReadFilter {
                kind: Some(EntryKind::TransferCredit),
                ..ReadFilter::default()
            },
            ReadFilter {
                transfer: Some(TransferId(6)),
                ..ReadFilter::default()
            },
            ReadFilter {
                since_ms: Some(0),
                until_ms: Some(u64::MAX / 2),
                ..ReadFilter::default()
            },
        ];
        for account in [a, b] {
            for f in &filters {
                let (all, _) = read(s.conn(), me, f, None, 500).expect("all");
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| e.account == account)
                    .map(|e| e.seq)
                    .collect();
                let linked = ReadFilter {
                    serial: Some(account.serial()),
                    ..*f
                };
                let (mut got, mut before) = (Vec::new(), None);
                loop {
                    let (page, next) = read(s.conn(), me, &linked, before, 3).expect("page");
                    got.extend(page.iter().map(|e| e.seq));
                    match next {
                        Some(n) => before = Some(n),
                        None => break,
                    }
                }
                assert_eq!(got, want, "{account} {f:?}");
            }
        }
    }
}
