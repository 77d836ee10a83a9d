//! `store-torture DB THREADS OPS`: writes a stream of deposits and local transfers to a
//! branch store through the group-commit writer and prints `ack <id>` for each one the
//! moment it is durable. The crash-safety test SIGKILLs it mid-stream and checks that
//! every printed id survived; it is also a quick way to load a store by hand. The
//! store is encrypted under the keys of its folder (`data.keys`, made with a key file
//! `local.kek` beside it when missing).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use branch_node::store::writer::Writer;
use branch_node::store::{Durability, Movement, Store, hash_password};
use coordinator::Shard;
use wire::teller::{NewCustomer, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, TransferId};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, threads, ops] = args.as_slice() else {
        bail!("usage: store-torture DB THREADS OPS_PER_THREAD");
    };
    let (threads, ops): (u128, u128) = (threads.parse()?, ops.parse()?);
    let me = BranchId(1);
    let db = PathBuf::from(db);
    let dir = db.parent().filter(|p| !p.as_os_str().is_empty());
    let keys = branch_node::keys::unlock_or_make(dir.unwrap_or(std::path::Path::new(".")), me)?;
    let mut store = Store::open(&db, &keys, me, Durability::Full).context("opening the store")?;
    let (a, b) = (AccountNumber::new(me, 1)?, AccountNumber::new(me, 2)?);
    if store.account(a)?.is_none() {
        let hash = hash_password("torture")?;
        for (n, id) in [(a, "T1"), (b, "T2")] {
            let who = NewCustomer {
                national_id: id.into(),
                phone: "0".into(),
                first_name: "T".into(),
                last_name: "T".into(),
                sms_opt_in: false,
            };
            let opened = store
                .open_account(&who, &hash, None)?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            anyhow::ensure!(opened.number == n, "unexpected account {}", opened.number);
        }
    }
    // Ids are random per run so that restarts on the same file never reuse one.
    let run = u128::from(std::process::id()) << 64
        | u128::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos(),
        ) << 32;
    let writer = Writer::spawn(store);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (mut h, out) = (writer.handle(), Arc::clone(&out));
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in 0..ops {
                    let id = TransferId(run | t << 24 | i);
                    let state = if i % 2 == 0 {
                        h.movement(Movement::Deposit, id, a, Amount::from_minor(100)?)?
                    } else {
                        let spec = TransferSpec {
                            id,
                            from: a,
                            to: b,
                            amount: Amount::from_minor(50)?,
                        };
                        h.transfer_local(&[spec])?[0]
                    };
                    if state == TransferState::Committed {
                        let mut o = out.lock().map_err(|_| anyhow::anyhow!("stdout lock"))?;
                        writeln!(o, "ack {id}")?;
                        o.flush()?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}
