//! End-to-end tests across crates live in `tests/tests/`; this library holds their shared helpers.
pub mod fuzz;

use scenarios::cluster::Cluster;
use wire::teller::{TellerOp, TellerResponse, TransferState};
use wire::{AccountNumber, Amount, TransferId};

/// Opens an account at branch 1 (named `prefix`-A, funded with `minor` by a committed
/// deposit) and one at branch 2 (`prefix`-B), both with password `password`. Returns
/// the two accounts and the deposit's id (a "committed" answer the checks must find).
pub async fn funded_pair(
    c: &Cluster,
    prefix: &str,
    password: &str,
    minor: i64,
) -> (AccountNumber, AccountNumber, TransferId) {
    let a = c
        .open_account(0, &format!("{prefix}-A"), password, false)
        .await
        .expect("open a");
    let b = c
        .open_account(1, &format!("{prefix}-B"), password, false)
        .await
        .expect("open b");
    let deposit = teller_cli::new_transfer_id();
    let r = c
        .admin(0)
        .await
        .expect("admin")
        .call(TellerOp::Deposit {
            id: deposit,
            account: a,
            amount: Amount::from_minor(minor).expect("positive"),
        })
        .await
        .expect("deposit");
    assert!(
        matches!(
            r,
            TellerResponse::Receipt {
                state: TransferState::Committed,
                ..
            }
        ),
        "{r:?}"
    );
    (a, b, deposit)
}
