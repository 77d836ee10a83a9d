//! Crash safety of the store: a child process writing through the group-commit writer is
//! killed with SIGKILL mid-stream, three times on the same file; after each kill the file
//! passes `integrity_check`, the ledger verifies, money is conserved and every operation
//! the child acknowledged is present.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use branch_node::store::Durability;
use coordinator::Shard;
use wire::teller::TransferState;
use wire::{AccountNumber, BranchId, TransferId};

/// Acknowledgements to wait for before each kill.
const ACKS_BEFORE_KILL: usize = 300;

#[test]
fn every_acknowledged_operation_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("branch.db");
    let mut acked: Vec<TransferId> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-torture"))
            .args([db.to_str().expect("utf-8 path"), "4", "100000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("child starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut seen = 0;
        while seen < ACKS_BEFORE_KILL {
            let line = lines
                .next()
                .expect("child acknowledges before it ends")
                .expect("reads");
            acked.push(line.trim_start_matches("ack ").parse().expect("an id"));
            seen += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        // Acks printed before the kill but not read yet still count.
        for line in lines {
            let Ok(line) = line else { break };
            if let Ok(id) = line.trim_start_matches("ack ").parse() {
                acked.push(id);
            }
        }
        let store = branch_node::store::testing::open_keyed(&db, BranchId(1), Durability::Full)
            .expect("reopens: integrity_check passed");
        let report = store
            .verify_ledger()
            .expect("reads")
            .unwrap_or_else(|v| panic!("round {round}: {v}"));
        for id in &acked {
            assert_eq!(
                store.transfer_state(*id),
                Ok(TransferState::Committed),
                "round {round}: acknowledged {id} lost"
            );
        }
        // Conservation: the two accounts hold exactly the committed deposits.
        let (a, b) = (
            AccountNumber::new(BranchId(1), 1).expect("valid"),
            AccountNumber::new(BranchId(1), 2).expect("valid"),
        );
        let total = store
            .account(a)
            .expect("reads")
            .expect("exists")
            .balance
            .minor()
            + store
                .account(b)
                .expect("reads")
                .expect("exists")
                .balance
                .minor();
        let deposited: i64 = branch_node::store::testing::raw(&db)
            .query_row(
                "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 'deposit'",
                [],
                |r| r.get(0),
            )
            .expect("sums");
        assert_eq!(total, deposited, "round {round}: money created or lost");
        println!(
            "crash round {round}: {} acknowledged operations present, {} ledger entries verified",
            acked.len(),
            report.entries
        );
    }
}
