//! `cargo bench -p branch-node --bench store`: local transfers per second with
//! `synchronous=FULL` (fsync on every sql_commit): one transfer per transaction,
//! batches in one transaction, and concurrent clients through the group-commit writer.

use std::time::Instant;

use branch_node::store::writer::Writer;
use branch_node::store::{Durability, Movement, Store, hash_password};
use coordinator::Shard;
use wire::teller::{NewCustomer, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, TransferId};

const ACCOUNTS: u32 = 100;
const ME: BranchId = BranchId(1);

fn setup(dir: &std::path::Path, name: &str) -> Store {
    let keys = branch_node::keys::DataKeys::generate();
    let mut s = Store::open(&dir.join(name), &keys, ME, Durability::Full).expect("opens");
    let hash = hash_password("bench").expect("hashes");
    for i in 1..=ACCOUNTS {
        let who = NewCustomer {
            national_id: format!("B{i}"),
            phone: "0".into(),
            first_name: "B".into(),
            last_name: "B".into(),
            sms_opt_in: false,
        };
        let n = s
            .open_account(&who, &hash, None)
            .expect("works")
            .expect("opens")
            .number;
        let funded = s.movement(
            Movement::Deposit,
            TransferId(u128::MAX - u128::from(i)),
            n,
            Amount::from_minor(1_000_000_000).expect("fits"),
        );
        assert_eq!(funded.expect("works"), TransferState::Committed);
    }
    s
}

fn spec(i: u64) -> TransferSpec {
    let acct = |k: u64| {
        AccountNumber::new(ME, u32::try_from(k % u64::from(ACCOUNTS)).unwrap_or(0) + 1)
            .expect("valid")
    };
    TransferSpec {
        id: TransferId(u128::from(i) + 1),
        from: acct(i),
        to: acct(i * 7 + 3),
        amount: Amount::from_minor(1).expect("fits"),
    }
}

fn report(name: &str, n: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<48} {n:>8} transfers in {secs:>6.2} s = {:>9.0} transfers/s",
        n as f64 / secs
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    println!("local transfers, SQLite WAL, synchronous=FULL, {ACCOUNTS} accounts");

    let mut s = setup(dir.path(), "one.db");
    let n = 2_000;
    let t = Instant::now();
    for i in 0..n {
        let r = s.transfer_local(&[spec(i)]).expect("works");
        assert_eq!(r[0], TransferState::Committed);
    }
    report("one per transaction (one fsync each)", n, t);

    let mut s = setup(dir.path(), "batched.db");
    let (batches, per) = (200, 1_000);
    let t = Instant::now();
    for b in 0..batches {
        let items: Vec<_> = (0..per).map(|i| spec(b * per + i)).collect();
        let r = s.transfer_local(&items).expect("works");
        assert!(r.iter().all(|x| *x == TransferState::Committed));
    }
    report("batched, 1000 per transaction", batches * per, t);
    assert!(s.verify_ledger().expect("reads").is_ok());

    let writer = Writer::spawn(setup(dir.path(), "group.db"));
    let (clients, each) = (64u64, 500u64);
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let mut h = writer.handle();
            std::thread::spawn(move || {
                for i in 0..each {
                    let r = h.transfer_local(&[spec(c * each + i)]).expect("works");
                    assert_eq!(r[0], TransferState::Committed);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("client");
    }
    report(
        "group commit, 64 clients, one transfer per call",
        clients * each,
        t,
    );
}
