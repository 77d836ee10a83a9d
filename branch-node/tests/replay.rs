//! Writes as data: a branch's journal of `WriteOp`s, applied later to another copy of
//! its store, gives the same store row for row (ledger hash chain included), for every
//! kind of op. This is what replicas of one branch rely on.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use branch_node::store::ops::WriteOp;
use branch_node::store::throttle::ThrottleOp;
use branch_node::store::writer::{Writer, WriterHandle};
use branch_node::store::{Durability, LoginRow, SessionRow, Store};
use coordinator::testing::{HERE, run_all};
use wire::teller::{NewCustomer, Role};

fn open(path: &Path) -> Store {
    branch_node::store::testing::open_keyed(path, HERE, Durability::Full).expect("opens")
}

/// Every row of every table (a replica's place in its log aside), in a fixed order.
fn dump(path: &Path) -> String {
    branch_node::replica::check::dump(path).expect("reads")
}

/// A store whose writer journals every committed batch, and a fresh copy to replay on.
struct Journaled {
    path: PathBuf,
    copy: PathBuf,
    writer: Writer,
    journal: mpsc::Receiver<Vec<WriteOp>>,
}

impl Journaled {
    fn new(dir: &Path, n: u32) -> Journaled {
        let (path, copy) = (
            dir.join(format!("{n}.db")),
            dir.join(format!("{n}-copy.db")),
        );
        drop(open(&copy));
        let (tx, journal) = mpsc::channel();
        let writer = Writer::spawn_journaled(open(&path), Some(tx));
        Journaled {
            path,
            copy,
            writer,
            journal,
        }
    }

    /// Stops the writer, applies its journal to the copy (later, so at another time)
    /// and checks both stores hold the same rows; returns how many ops it applied.
    fn replay_and_compare(self) -> usize {
        drop(self.writer);
        std::thread::sleep(Duration::from_millis(5));
        let copy = Writer::spawn(open(&self.copy));
        let mut applied = 0;
        for batch in self.journal.try_iter() {
            for op in batch {
                let bytes = wire::codec::encode_record(&op).expect("encodes");
                let op: WriteOp = wire::codec::decode_record(&bytes).expect("decodes");
                copy.handle().write(op).expect("applies");
                applied += 1;
            }
        }
        let store = copy.stop().expect("stops");
        assert!(store.verify_ledger().expect("reads").is_ok());
        drop(store);
        let (original, replayed) = (dump(&self.path), dump(&self.copy));
        let differ = original.lines().zip(replayed.lines()).find(|(a, b)| a != b);
        assert_eq!(
            differ,
            None,
            "{}: first row that differs",
            self.path.display()
        );
        assert_eq!(original, replayed, "{}", self.path.display());
        applied
    }
}

/// The session, login, one-time-code and SMS ops, which the 2PC suite does not make.
fn people_ops(h: &WriterHandle) {
    let customer = NewCustomer {
        national_id: "REPLAY-1".into(),
        phone: "+15550100".into(),
        first_name: "Ada".into(),
        last_name: "Replay".into(),
        sms_opt_in: true,
    };
    let hash = branch_node::store::hash_password("correct horse battery").expect("hashes");
    let view = h
        .open_account(&customer, &hash, None)
        .expect("works")
        .expect("opens");
    let login = view.number.to_string();
    let row = LoginRow::Found {
        role: Role::Customer,
        customer_id: Some(1),
        hash,
        enrolled: false,
    };
    let now = 1_700_000_000_000;
    let write = |op| h.write(op).expect("applies");
    write(WriteOp::Login {
        login: login.clone(),
        row,
        otp: None,
        now_ms: now,
    });
    let session = SessionRow {
        token_hash: [7; 32],
        login: login.clone(),
        teller: vec![1, 2, 3],
        expires_at_ms: now + 60_000,
    };
    write(WriteOp::OpenSession {
        row: session,
        evicted: vec![[9; 32]],
        accounts: vec![view.number],
        now_ms: now,
    });
    write(WriteOp::EnrollOtp {
        login,
        secret: vec![5; 20],
        replace: false,
    });
    write(WriteOp::SmsDelivered { id: 1, now_ms: now });
    write(WriteOp::SmsFailed {
        id: 2,
        next_attempt_ms: now + 1_000,
    });
    write(WriteOp::CloseSession {
        token_hash: [7; 32],
    });
    write(WriteOp::Throttle(ThrottleOp::Failed {
        login: "001-00000009-22".into(),
        failures: 6,
        last_ms: now,
    }));
    write(WriteOp::Throttle(ThrottleOp::Succeeded {
        login: "001-00000009-22".into(),
        peer: vec![0, 4, 1, 2, 3, 4],
        until_ms: now + 1_000,
        now_ms: now,
    }));
}

#[test]
fn a_journal_applied_to_a_copy_gives_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Cell::new(0);
    let stores = RefCell::new(Vec::new());
    run_all(|| {
        n.set(n.get() + 1);
        let s = Journaled::new(dir.path(), n.get());
        let h = s.writer.handle();
        stores.borrow_mut().push(s);
        h
    });
    let people = Journaled::new(dir.path(), 0);
    people_ops(&people.writer.handle());
    stores.borrow_mut().push(people);
    let applied: usize = stores
        .into_inner()
        .into_iter()
        .map(Journaled::replay_and_compare)
        .sum();
    assert!(applied > 50, "the suite wrote {applied} ops");
}
