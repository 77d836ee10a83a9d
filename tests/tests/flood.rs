//! A login flood against real nodes while cross-branch transfers run: a few hundred
//! teller connections guess logins at branch 1 (half of them for accounts of branch 2,
//! which branch 1 forwards). Transfers must keep committing with every answer final,
//! nothing may stay in doubt, the flooded node's memory must stay bounded, and every
//! flood request must be answered (refused, throttled or overloaded), not queued
//! without limit. The figures are printed (`--nocapture`); speed is for benchmarks.
//! And a stranger that never reads its answers, or asks for Raft where there is none,
//! holds nothing of the node for long.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use client::peer::PeerClient;
use futures::AsyncWriteExt;
use scenarios::check;
use scenarios::cluster::Cluster;
use teller_cli::money::{self, MoneyAnswer, RetryPolicy};
use teller_cli::{Teller, new_transfer_id};
use wire::teller::{TellerOp, TellerRequest, TellerResponse, Unavailable};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, BranchKey, TransferId};

mod common;

const PW: &str = "customer-pw";
const FLOOD_CONNECTIONS: usize = 240;
const PHASE: Duration = Duration::from_secs(6);
/// The flooded node may not grow past this resident size, in KiB.
const RSS_KIB_MAX: u64 = 768 * 1024;

/// The flood's answers, counted by code.
type FloodAnswers = std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>;

/// The answers a flood request may get: it was refused, throttled or turned away.
const FLOOD_CODES: [&str; 3] = ["bad_credentials", "throttled", "overloaded"];

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends 1.00 transfers from `a` to `b` until `stop`; returns (committed ids, others).
async fn transfers(
    t: &mut Teller,
    a: AccountNumber,
    b: AccountNumber,
    until: Instant,
) -> (Vec<TransferId>, Vec<MoneyAnswer>) {
    let policy = RetryPolicy::default();
    let (mut done, mut other) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        let spec = TransferSpec {
            id: new_transfer_id(),
            from: a,
            to: b,
            amount: Amount::from_minor(100).expect("positive"),
        };
        match money::send(t, TellerOp::Transfer(spec), &policy).await {
            MoneyAnswer::Committed { id } => done.push(id),
            answer => other.push(answer),
        }
    }
    (done, other)
}

/// One flooding connection: logins for made-up accounts of branch `to`, until `stop`.
async fn flood_one(
    mut t: Teller,
    to: u16,
    seed: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<FloodAnswers>,
) {
    let mut serial = 10_000 + seed * 1_000;
    while !stop.load(Ordering::Relaxed) {
        serial += 1;
        let user = AccountNumber::new(BranchId(to), serial)
            .expect("valid")
            .to_string();
        let code = match t.login(&user, "guess-password").await {
            Ok(_) => "logged_in",
            Err(e) => e.code(),
        };
        *tally.lock().expect("tally").entry(code).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_keep_committing_through_a_login_flood() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let (a, b, deposit) = tests::funded_pair(&c, "FLOOD", PW, 100000000).await;
    let target = c.target(0).expect("target");
    let mut t = Teller::connect(&target).await.expect("connects");
    t.login(&a.to_string(), PW).await.expect("logs in");
    let pid = c.pids()[0];

    let (quiet, quiet_other) = transfers(&mut t, a, b, Instant::now() + PHASE).await;
    let rss_before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(FloodAnswers::default());
    let mut flooders = Vec::new();
    for i in 0..FLOOD_CONNECTIONS {
        let conn = Teller::connect(&target).await.expect("flood connects");
        let to = if i % 2 == 0 { 1 } else { 2 };
        let seed = u32::try_from(i).expect("small");
        flooders.push(tokio::spawn(flood_one(
            conn,
            to,
            seed,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    let (flooded, flooded_other) = transfers(&mut t, a, b, Instant::now() + PHASE).await;
    let rss_during = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = tokio::time::timeout(Duration::from_secs(15), f).await;
    }
    let secs = PHASE.as_secs_f64();
    eprintln!(
        "quiet: {} transfers committed ({:.0}/s); flooded by {FLOOD_CONNECTIONS} connections: {} ({:.0}/s); \
         flood answers: {tally:?}; b1 RSS {} KiB before, {} KiB during",
        quiet.len(),
        quiet.len() as f64 / secs,
        flooded.len(),
        flooded.len() as f64 / secs,
        rss_before,
        rss_during
    );
    assert!(
        quiet_other.is_empty() && flooded_other.is_empty(),
        "every transfer committed: {quiet_other:?} {flooded_other:?}"
    );
    assert!(!flooded.is_empty(), "transfers kept committing");
    assert!(rss_during < RSS_KIB_MAX, "b1 grew to {rss_during} KiB");
    let tally = tally.lock().expect("tally").clone();
    let answered: usize = FLOOD_CODES.iter().filter_map(|c| tally.get(c)).sum();
    let other = tally.values().sum::<usize>() - answered;
    assert!(
        answered > 0 && other * 20 <= answered,
        "flood answers: {tally:?}"
    );
    assert!(!tally.contains_key("logged_in"), "{tally:?}");

    let told: BTreeSet<TransferId> = quiet.into_iter().chain(flooded).chain([deposit]).collect();
    let report = check::finish(&mut c, &told, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

/// Most a node may grow while one stranger sends requests it never reads the answers
/// of, in KiB.
const UNREAD_GROWTH_KIB_MAX: u64 = 16 * 1024;
/// Requests the stranger tries to send.
const UNREAD_REQUESTS: u64 = 200_000;

type Stranger = PeerClient<TellerRequest, TellerResponse>;

/// A teller connection to node 0 with a new key.
async fn stranger(c: &Cluster) -> Stranger {
    tests::teller_stranger(c, rand::random()).await
}

/// Writes up to `n` requests without a session as frames on `stream`, for at most
/// `within`; how many were written.
async fn write_unread(stream: &mut libp2p::Stream, n: u64, within: Duration) -> u64 {
    let account = AccountNumber::new(BranchId(1), 1).expect("account");
    let body =
        wire::encode(&TellerRequest::new(None, TellerOp::Balance { account })).expect("encode");
    let mut sent = 0;
    let until = Instant::now() + within;
    while sent < n {
        let mut buf = Vec::new();
        for tag in sent..(sent + 1_000).min(n) {
            client::pipe::put_frame(&mut buf, tag, &body);
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.write_all(&buf)).await {
            Ok(Ok(())) => sent = (sent + 1_000).min(n),
            _ => break,
        }
    }
    sent
}

/// A stranger that sends requests and never reads their answers holds a bounded part
/// of the node: the node stops reading the stream once its answers wait unwritten, then
/// closes it; everyone else is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_that_never_reads_its_answers_holds_a_bounded_part_of_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &["--metrics-listen", "127.0.0.1:0"]).expect("cluster");
    let metrics = c.nodes[0].metrics_url.clone().expect("metrics");
    let pid = c.pids()[0];
    let client = stranger(&c).await;
    let mut raw = client.raw_stream().await.expect("stream");
    let rss_before = rss_kib(pid);
    let sent = write_unread(&mut raw, UNREAD_REQUESTS, Duration::from_secs(10)).await;
    let rss_after = rss_kib(pid);
    eprintln!("unread: {sent} requests written; node RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after.saturating_sub(rss_before) < UNREAD_GROWTH_KIB_MAX,
        "grew {rss_before} -> {rss_after} KiB"
    );
    assert!(
        sent < UNREAD_REQUESTS,
        "the node stopped reading the stream"
    );
    // Someone else is answered at once.
    let other = stranger(&c).await;
    let account = AccountNumber::new(BranchId(1), 1).expect("account");
    let asked = Instant::now();
    let r = other
        .request(TellerRequest::new(None, TellerOp::Balance { account }))
        .await
        .expect("answered");
    assert_eq!(r, TellerResponse::Unavailable(Unavailable::SessionExpired));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // The unread stream is closed once its writes have stalled long enough.
    let series = "bankmate_streams_refused_total{kind=\"unread\"}";
    let stall = Duration::from_millis(branch_node::p2p::WRITE_STALL_MS);
    let deadline = Instant::now() + stall + Duration::from_secs(10);
    while common::sample(&common::fetch(&metrics).await.1, series) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the unread stream was not closed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Raft is not offered by a branch without replicas: a stream for it fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_without_replicas_refuses_raft_streams_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &[]).expect("cluster");
    let t = c.target(0).expect("target");
    let key = BranchKey::from_secret(rand::random()).libp2p_keypair();
    let raft = client::RAFT_PROTOCOL;
    let asked = Instant::now();
    let five = Duration::from_secs(5);
    let e = PeerClient::<Vec<u8>, Vec<u8>>::connect(key, raft, t.addr, t.peer, five)
        .await
        .expect_err("no raft here");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}: {e}",
        asked.elapsed()
    );
    assert!(!e.to_string().contains("hello"), "{e}");
}

/// One stranger's key floods branch 2 with logins for an account of branch 1, over many
/// streams at once; branch 1 answers each throttled at once. A customer of branch 1
/// going through branch 2 meanwhile is answered every time. (Before, throttled logins
/// were held a second in forward places, and one key could take all 256 of them:
/// such a customer got `overloaded` 20 times of 20.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_strangers_logins_through_a_branch_leave_room_for_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let account = c.open_account(0, "FAIR", PW, false).await.expect("open");
    let mut customer = Teller::connect(&c.target(1).expect("target"))
        .await
        .expect("connects");
    customer
        .login(&account.to_string(), PW)
        .await
        .expect("login");
    let stranger = tests::teller_stranger_at(&c, 1, rand::random()).await;
    let until = Instant::now() + Duration::from_secs(4);
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let stream = stranger.another_stream();
            let login = TellerRequest::new(
                None,
                TellerOp::Login {
                    user: account.to_string(),
                    password: "a-wrong-guess".into(),
                    otp: None,
                },
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    let wave = (0..64).map(|_| stream.request(login.clone()));
                    futures::future::join_all(wave).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = customer.call(TellerOp::Balance { account }).await;
        let code = match r {
            Ok(TellerResponse::Account(_)) => "ok",
            Err(e) => e.code(),
            Ok(_) => "other",
        };
        *answers.entry(code).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in flood {
        f.await.expect("flood task");
    }
    eprintln!("the customer's balance requests during the flood: {answers:?}");
    assert_eq!(answers.get("ok"), Some(&20), "{answers:?}");
}
