//! A full disk, for real: branch 1's data dir is a small tmpfs of this test's own,
//! filled up while transfers run. While it is full, every teller answer must be a
//! refusal, "not done" or "unknown" (or the node stops with a non-zero exit, never
//! serving with a dead 2PC engine); once space is freed (and the node restarted),
//! transfers commit again, nothing is half-applied, and every "committed" answer is in
//! the books. A node that keeps running while its writes fail says so: `/readyz` is 503
//! until a write commits again. Mounting needs root (CI runs as root on this machine's kind).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use scenarios::check;
use scenarios::cluster::Cluster;
use teller_cli::money::{self, MoneyAnswer, RetryPolicy};
use teller_cli::{Teller, new_transfer_id};
use wire::teller::TellerOp;
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, TransferId};

mod common;

const PW: &str = "customer-pw";
/// The small filesystem: room for the branch's files and a little growth.
const TMPFS_SIZE: &str = "16m";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_SIZE},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("runs mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem at `dir` with one file until the disk is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        wait: Duration::from_secs(3),
        ..RetryPolicy::default()
    }
}

/// Sends `n` transfers of 1.00 from `from` to `to`; returns every answer.
async fn transfers(
    t: &mut Teller,
    from: AccountNumber,
    to: AccountNumber,
    n: usize,
) -> Vec<MoneyAnswer> {
    transfers_under(t, (from, to), n, &policy()).await
}

/// [`transfers`] under `policy`.
async fn transfers_under(
    t: &mut Teller,
    (from, to): (AccountNumber, AccountNumber),
    n: usize,
    policy: &RetryPolicy,
) -> Vec<MoneyAnswer> {
    let mut answers = Vec::new();
    for _ in 0..n {
        let spec = TransferSpec {
            id: new_transfer_id(),
            from,
            to,
            amount: Amount::from_minor(100).expect("positive"),
        };
        answers.push(money::send(t, TellerOp::Transfer(spec), policy).await);
    }
    answers
}

fn committed(answers: &[MoneyAnswer]) -> BTreeSet<TransferId> {
    answers
        .iter()
        .filter_map(|a| match a {
            MoneyAnswer::Committed { id } => Some(*id),
            _ => None,
        })
        .collect()
}

/// Where node 0's `/metrics`, `/readyz` live: `http://ADDR`.
fn ready_base(c: &Cluster) -> String {
    let url = c.nodes[0].metrics_url.clone().expect("metrics address");
    url.trim_end_matches("/metrics").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_or_stops_and_loses_no_committed_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c =
        Cluster::create(dir.path(), 2, &["--metrics-listen", "127.0.0.1:0"]).expect("cluster");
    let small = dir.path().join("small-fs");
    let _fs = Tmpfs::mount(&small);
    for entry in std::fs::read_dir(&c.nodes[0].dir).expect("b1 dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), small.join(entry.file_name())).expect("copies");
    }
    c.nodes[0].dir = small.clone();
    c.start_node(0, &[]).expect("b1");
    c.start_node(1, &[]).expect("b2");
    let (a, b, deposit) = tests::funded_pair(&c, "DISK", PW, 1000000).await;
    let mut told = BTreeSet::from([deposit]);
    let target = c.target(0).expect("target");
    let mut t = Teller::connect(&target).await.expect("connects");
    t.login(&a.to_string(), PW).await.expect("logs in");
    let before = transfers(&mut t, a, b, 20).await;
    assert_eq!(committed(&before).len(), 20, "{before:?}");
    told.extend(committed(&before));

    // Fill the disk: a login (its session must be stored) fails, and a node that keeps
    // running says its writes fail.
    // (b1 may stop at any moment now, if its 2PC engine meets the full disk first.)
    let filler = fill(&small);
    let login = async {
        let mut late = Teller::connect(&target).await?;
        late.login(&a.to_string(), PW).await
    }
    .await;
    assert!(login.is_err(), "a session cannot be stored on a full disk");
    eprintln!("login while full: {login:?}; b1 running: {}", c.running(0));
    let readyz = format!("{}/readyz", ready_base(&c));
    if let (true, Ok(r)) = (c.running(0), reqwest::get(&readyz).await) {
        let (status, body) = (r.status().as_u16(), r.text().await.unwrap_or_default());
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("writes failing"), "{body}");
    }
    // Keep sending while it is full.
    let during = transfers(&mut t, a, b, 8).await;
    told.extend(committed(&during));
    let troubled = during
        .iter()
        .filter(|a| !matches!(a, MoneyAnswer::Committed { .. }))
        .count();
    let stopped = !c.running(0);
    assert!(
        troubled > 0 || stopped,
        "a full disk changed nothing?  {during:?}"
    );
    eprintln!(
        "while full: {troubled} of {} transfers not committed; b1 {}",
        during.len(),
        if stopped { "stopped" } else { "kept running" }
    );

    // Free the space; restart b1 if it stopped.
    std::fs::remove_file(&filler).expect("frees space");
    if !c.running(0) {
        c.start_node(0, &[])
            .expect("b1 restarts once there is room");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut t = Teller::connect(&c.target(0).expect("target"))
        .await
        .expect("connects");
    while t.login(&a.to_string(), PW).await.is_err() {
        assert!(Instant::now() < deadline, "b1 does not serve again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = transfers(&mut t, a, b, 10).await;
    assert_eq!(
        committed(&after).len(),
        10,
        "transfers commit again: {after:?}"
    );
    told.extend(committed(&after));
    let (status, body) = common::fetch(&format!("{}/readyz", ready_base(&c))).await;
    assert_eq!(status, 200, "ready again once writes commit: {body}");
    let report = check::finish(&mut c, &told, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
}

/// Sends `n` transfers of 1.00 from `from` to `to` through branch index `b`, as `from`'s
/// customer, under the default money policy; every answer.
async fn customer_transfers(
    c: &Cluster,
    b: usize,
    (from, to): (AccountNumber, AccountNumber),
    n: usize,
) -> Vec<MoneyAnswer> {
    let mut t = Teller::connect(&c.branch_target(b).expect("target"))
        .await
        .expect("connects");
    t.login(&from.to_string(), PW).await.expect("logs in");
    transfers_under(&mut t, (from, to), n, &RetryPolicy::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_branch_serves_on_when_its_leaders_disk_fills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::create_replicated(dir.path(), 2, 3, &[]).expect("cluster");
    // Each of b1's replicas on a small filesystem of its own.
    let mut mounts = Vec::new();
    for i in c.replicas_of(wire::BranchId(1)) {
        let small = dir.path().join(format!("small-{i}"));
        mounts.push(Tmpfs::mount(&small));
        for entry in std::fs::read_dir(&c.nodes[i].dir).expect("dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), small.join(entry.file_name())).expect("copies");
        }
        c.nodes[i].dir = small;
    }
    for i in 0..c.nodes.len() {
        c.start_node(i, &[]).expect("starts");
    }
    for b in 0..2 {
        c.wait_serving(b, Duration::from_secs(30))
            .await
            .expect("serves");
    }
    let (a, b, deposit) = tests::funded_pair_at(&c, (0, 3), "RDISK", PW, 1_000_000).await;
    let mut told = BTreeSet::from([deposit]);
    let before = customer_transfers(&c, 0, (a, b), 10).await;
    assert_eq!(committed(&before).len(), 10, "{before:?}");
    told.extend(committed(&before));

    // The leader's disk fills: the other two serve on, and no answer is wrong.
    let full = c.serving_replica(wire::BranchId(1)).expect("a leader");
    let filler = fill(&c.nodes[full].dir);
    let during = customer_transfers(&c, 0, (a, b), 10).await;
    told.extend(committed(&during));
    for answer in &during {
        assert!(
            matches!(
                answer,
                MoneyAnswer::Committed { .. } | MoneyAnswer::Unknown { .. }
            ) || matches!(
                answer,
                MoneyAnswer::Refused {
                    reason: wire::Refusal::Interrupted,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
    assert!(
        committed(&during).len() >= 5,
        "the branch serves on without its full replica: {during:?}"
    );
    let stopped = !c.running(full);
    eprintln!(
        "while the leader's disk was full: {} of {} committed; it {}",
        committed(&during).len(),
        during.len(),
        if stopped { "stopped" } else { "kept running" }
    );
    std::fs::remove_file(&filler).expect("frees space");
    if stopped {
        c.start_node(full, &[])
            .expect("restarts once there is room");
    }
    let after = customer_transfers(&c, 0, (a, b), 5).await;
    told.extend(committed(&after));
    let disagree = check::replicas_agree(&c, Duration::from_secs(30)).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    let report = check::finish(&mut c, &told, Duration::from_secs(30)).expect("audit");
    assert!(report.ok(), "invariants violated: {:#?}", report.violations);
    drop(mounts);
}
