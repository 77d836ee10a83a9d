//! The fence's records (see `wire::fence`): this branch's own place among its copies
//! (epoch, serving instance, the data dir it ran in, and whether it was fenced) in
//! `meta`, what it witnesses of every other branch in `fence_witness`, and the
//! branch's [`Head`] read from its ledger for the claims it sends.

use rusqlite::{Connection, OptionalExtension, params};
use wire::BranchId;
use wire::fence::{Head, Tally};

use super::StoreError;

/// This branch's own fence state, as its store holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnFence {
    /// Raised above every epoch the network knows by each restore.
    pub epoch: u64,
    /// The instance that last served from this store (0: none yet).
    pub instance: u64,
    /// Where that instance ran: a hash of the machine and the data dir (0: unknown).
    pub home: u64,
    /// The newer epoch that fenced this copy (0: never fenced).
    pub fenced_by: u64,
    /// When the backup this store was restored from was taken (0: not restored).
    pub backup_at_ms: u64,
}

fn bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn unbits(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

fn meta(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.map_or(0, unbits))
}

/// Sets `meta.key` (a fence value) to `value`.
pub(crate) fn set_meta(conn: &Connection, key: &str, value: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, bits(value)])?;
    Ok(())
}

/// This branch's fence state.
pub fn own(conn: &Connection) -> Result<OwnFence, StoreError> {
    Ok(OwnFence {
        epoch: meta(conn, "epoch")?.max(1),
        instance: meta(conn, "instance")?,
        home: meta(conn, "instance_home")?,
        fenced_by: meta(conn, "fenced_by")?,
        backup_at_ms: meta(conn, "backup_at_ms")?,
    })
}

/// The epoch of the branch database at `db`, read without changing it (for tools that
/// speak for a stopped branch, like the scenarios' rogue peer).
pub fn epoch_of(db: &std::path::Path) -> Result<u64, StoreError> {
    let conn = super::connect_in_dir(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(meta(&conn, "epoch")?.max(1))
}

/// Records the instance now serving from this store and where it runs.
pub(crate) fn set_instance(conn: &Connection, instance: u64, home: u64) -> Result<(), StoreError> {
    set_meta(conn, "instance", instance)?;
    set_meta(conn, "instance_home", home)
}

/// What this branch witnesses of another branch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WitnessRow {
    pub branch: BranchId,
    pub epoch: u64,
    /// The instance serving it (`None`: a restore registered the epoch, none serves yet).
    pub instance: Option<u64>,
    pub head: Option<Head>,
    pub at_ms: u64,
}

/// Every branch this one witnesses.
pub(crate) fn witness_rows(conn: &Connection) -> Result<Vec<WitnessRow>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT branch, epoch, instance, head, at_ms FROM fence_witness")?;
    type Raw = (i64, i64, Option<i64>, Option<Vec<u8>>, i64);
    let rows: Vec<Raw> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(branch, epoch, instance, head, at_ms)| {
            Ok(WitnessRow {
                branch: BranchId(
                    u16::try_from(branch).map_err(|_| StoreError::Malformed("branch id".into()))?,
                ),
                epoch: u64::try_from(epoch).unwrap_or(0),
                instance: instance.map(unbits),
                head: head
                    .map(|h| wire::decode(&h).map_err(|e| StoreError::Malformed(e.to_string())))
                    .transpose()?,
                at_ms: u64::try_from(at_ms).unwrap_or(0),
            })
        })
        .collect()
}

/// Stores what this branch witnesses of `row.branch`.
pub(crate) fn put_witness(conn: &Connection, row: &WitnessRow) -> Result<(), StoreError> {
    let head = row
        .head
        .map(|h| wire::encode(&h).map_err(|e| StoreError::Malformed(e.to_string())))
        .transpose()?;
    conn.prepare_cached(
        "INSERT INTO fence_witness (branch, epoch, instance, head, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (branch) DO UPDATE SET epoch = excluded.epoch, instance = excluded.instance,
             head = coalesce(excluded.head, head), at_ms = excluded.at_ms",
    )?
    .execute(params![
        row.branch.0,
        super::sql_ms(row.epoch),
        row.instance.map(bits),
        head,
        super::sql_ms(row.at_ms)
    ])?;
    Ok(())
}

/// A branch's head, read on from where the last read ended: only ledger entries after
/// `head.ledger_seq` are read (the first read reads them all), summed by SQLite.
pub(crate) fn advance_head(
    conn: &Connection,
    me: BranchId,
    mut head: Head,
) -> Result<Head, StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(head);
    };
    // A transfer's counterparty is an account number, its branch in its first digits.
    let mut stmt = conn.prepare_cached(
        "SELECT kind, coalesce(substr(counterparty, 1, 3) = ?3, 0), count(*), sum(amount)
         FROM ledger WHERE seq > ?1 AND seq <= ?2 GROUP BY 1, 2",
    )?;
    let me_digits = format!("{:03}", me.0);
    let mut rows = stmt.query(params![super::sql_ms(head.ledger_seq), seq, me_digits])?;
    while let Some(r) = rows.next()? {
        let (kind, local, count, sum): (String, bool, i64, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let tally = match (kind.as_str(), local) {
            ("deposit", _) => &mut head.deposits,
            ("withdrawal", _) => &mut head.withdrawals,
            ("transfer_debit", true) => &mut head.local_transfers,
            ("transfer_debit", false) => &mut head.cross_debits,
            ("transfer_credit", false) => &mut head.cross_credits,
            _ => continue,
        };
        add(tally, u64::try_from(count).unwrap_or(0), sum);
    }
    head.ledger_seq = u64::try_from(seq).unwrap_or(0);
    head.ledger_hash = hash.try_into().unwrap_or([0; 32]);
    let serial: Option<i64> = conn
        .prepare_cached("SELECT max(serial) FROM accounts")?
        .query_row([], |r| r.get(0))?;
    head.accounts_max_serial = serial.and_then(|s| u32::try_from(s).ok()).unwrap_or(0);
    Ok(head)
}

fn add(t: &mut Tally, count: u64, sum: i64) {
    t.count += count;
    t.total_minor = t.total_minor.saturating_add(sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store};

    #[test]
    fn the_head_sums_the_ledger_by_kind_and_reads_on_from_where_it_ended() {
        use crate::store::bank::{self, Movement};
        use wire::teller::NewCustomer;
        use wire::{AccountNumber, Amount, TransferId, TransferSpec};
        let tmp = tempfile::tempdir().expect("tmp");
        let me = BranchId(7);
        let keys = crate::keys::DataKeys::generate();
        let store =
            Store::open(&tmp.path().join("b.db"), &keys, me, Durability::Full).expect("store");
        let c = store.conn();
        let customer = |n: &str| NewCustomer {
            national_id: n.into(),
            phone: "1".into(),
            first_name: "A".into(),
            last_name: "B".into(),
            sms_opt_in: false,
        };
        let open = |n| {
            let who = customer(n);
            let id = bank::SealedId::new(&keys, &who.national_id);
            bank::open_account(c, me, (&who, &id), "hash", None, 1)
                .expect("store")
                .expect("opens")
                .number
        };
        let (a, b) = (open("N1"), open("N2"));
        let amount = |m| Amount::from_minor(m).expect("amount");
        let deposit = |id, m| {
            bank::movement(c, me, Movement::Deposit, TransferId(id), a, amount(m), 2)
                .expect("store")
        };
        deposit(1, 1_000);
        let first = advance_head(c, me, Head::default()).expect("head");
        assert_eq!(
            first.deposits,
            Tally {
                count: 1,
                total_minor: 1_000
            }
        );
        assert_eq!(first.accounts_max_serial, 2);
        deposit(2, 500);
        bank::movement(
            c,
            me,
            Movement::Withdrawal,
            TransferId(3),
            a,
            amount(200),
            3,
        )
        .expect("w");
        let local = TransferSpec {
            id: TransferId(4),
            from: a,
            to: b,
            amount: amount(300),
        };
        bank::transfer_local(c, me, &local, 4).expect("local");
        let next = advance_head(c, me, first).expect("head");
        assert_eq!(
            next.deposits,
            Tally {
                count: 2,
                total_minor: 1_500
            }
        );
        assert_eq!(
            next.withdrawals,
            Tally {
                count: 1,
                total_minor: 200
            }
        );
        assert_eq!(
            next.local_transfers,
            Tally {
                count: 1,
                total_minor: 300
            }
        );
        assert_eq!(
            next.cross_debits,
            Tally::default(),
            "a local transfer is not cross"
        );
        assert_eq!(
            next,
            advance_head(c, me, Head::default()).expect("from scratch")
        );
        let _: AccountNumber = b;
    }

    #[test]
    fn own_state_and_witness_rows_round_trip() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = crate::keys::DataKeys::generate();
        let store = Store::open(
            &tmp.path().join("b.db"),
            &keys,
            BranchId(1),
            Durability::Full,
        )
        .expect("store");
        let c = store.conn();
        assert_eq!(own(c).expect("own").epoch, 1, "a new store is epoch 1");
        set_instance(c, u64::MAX - 3, 42).expect("instance");
        set_meta(c, "epoch", 7).expect("epoch");
        let o = own(c).expect("own");
        assert_eq!(
            (o.epoch, o.instance, o.home, o.fenced_by),
            (7, u64::MAX - 3, 42, 0)
        );
        let mut row = WitnessRow {
            branch: BranchId(2),
            epoch: 3,
            instance: Some(9),
            head: Some(Head {
                ledger_seq: 5,
                ..Head::default()
            }),
            at_ms: 10,
        };
        put_witness(c, &row).expect("put");
        row.instance = None;
        row.head = None;
        put_witness(c, &row).expect("put again");
        let rows = witness_rows(c).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].instance, None);
        assert_eq!(
            rows[0].head.map(|h| h.ledger_seq),
            Some(5),
            "a claim without a head keeps the last one"
        );
    }
}
