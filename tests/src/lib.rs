//! End-to-end tests across crates live in `tests/tests/`; this library holds their shared helpers.
pub mod fuzz;

use scenarios::cluster::Cluster;
use wire::teller::{TellerOp, TellerResponse, TransferState};
use wire::{AccountNumber, Amount, TransferId};

/// Opens an account at node 0 and one at node 1 for customers `{prefix}-A` and
/// `{prefix}-B` (login `password`) and deposits `minor` into the first; returns both
/// and the deposit's id.
pub async fn funded_pair(
    c: &Cluster,
    prefix: &str,
    password: &str,
    minor: i64,
) -> (AccountNumber, AccountNumber, TransferId) {
    funded_pair_at(c, (0, 1), prefix, password, minor).await
}

/// [`funded_pair`] at nodes `at` (of a replicated network: a replica of each branch).
pub async fn funded_pair_at(
    c: &Cluster,
    at: (usize, usize),
    prefix: &str,
    password: &str,
    minor: i64,
) -> (AccountNumber, AccountNumber, TransferId) {
    let a = c
        .open_account(at.0, &format!("{prefix}-A"), password, false)
        .await
        .expect("open a");
    let b = c
        .open_account(at.1, &format!("{prefix}-B"), password, false)
        .await
        .expect("open b");
    let deposit = deposit(c, at.0, a, minor).await;
    (a, b, deposit)
}

/// Deposits `minor` into `account` as node `i`'s admin, which must be answered
/// committed; returns its id.
pub async fn deposit(c: &Cluster, i: usize, account: AccountNumber, minor: i64) -> TransferId {
    let id = teller_cli::new_transfer_id();
    let r = c
        .admin(i)
        .await
        .expect("admin")
        .call(TellerOp::Deposit {
            id,
            account,
            amount: Amount::from_minor(minor).expect("positive"),
        })
        .await
        .expect("deposit");
    assert_committed(&r);
    id
}

/// Panics unless `r` is a receipt of a committed transfer.
pub fn assert_committed(r: &TellerResponse) {
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
}

/// A transfer `from` -> `to` of `minor` sent by `from`'s customer (login `password`)
/// through node `at`; it must be answered committed. Its id.
pub async fn committed_transfer(
    c: &Cluster,
    at: usize,
    password: &str,
    (from, to): (AccountNumber, AccountNumber),
    minor: i64,
) -> TransferId {
    let mut t = teller_cli::Teller::connect(&c.target(at).expect("target"))
        .await
        .expect("connect");
    t.login(&from.to_string(), password).await.expect("login");
    let id = teller_cli::new_transfer_id();
    let amount = Amount::from_minor(minor).expect("amount");
    let spec = wire::twopc::TransferSpec {
        id,
        from,
        to,
        amount,
    };
    assert_committed(&t.call(TellerOp::Transfer(spec)).await.expect("answer"));
    id
}

/// A teller-protocol client of node 0 with the key of `secret` (a new one: a
/// stranger, with no session).
pub async fn teller_stranger(
    c: &Cluster,
    secret: [u8; 32],
) -> client::peer::PeerClient<wire::TellerRequest, TellerResponse> {
    teller_stranger_at(c, 0, secret).await
}

/// [`teller_stranger`] of node `i`.
pub async fn teller_stranger_at(
    c: &Cluster,
    i: usize,
    secret: [u8; 32],
) -> client::peer::PeerClient<wire::TellerRequest, TellerResponse> {
    let t = c.target(i).expect("target");
    let key = wire::BranchKey::from_secret(secret);
    client::peer::PeerClient::connect(
        key.libp2p_keypair(),
        client::TELLER_PROTOCOL,
        t.addr,
        t.peer,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("connect")
}

/// Runs `branch-node` with `args`: its exit status and everything it printed.
pub fn branch_node(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let bin = scenarios::cluster::branch_node_bin().expect("branch-node");
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("run branch-node");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// `branch-node verify` of `data_dir` against `network`: exit status and report.
pub fn verify(data_dir: &std::path::Path, network: &std::path::Path) -> (i32, String) {
    branch_node(&[
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--network".as_ref(),
        network.as_os_str(),
    ])
}

/// The secret of an `otpauth://` URI (RFC 4648 base32, no padding).
pub fn otp_secret(uri: &str) -> Vec<u8> {
    let text = uri
        .split("secret=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("secret in the uri");
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for ch in text.bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'2'..=b'7' => ch - b'2' + 26,
            _ => panic!("not base32: {text}"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).expect("a byte"));
        }
    }
    out
}
