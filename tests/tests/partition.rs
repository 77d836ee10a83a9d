//! A real network partition: every `branch-node` process runs in a network namespace
//! of its own, wired to a bridge in another namespace by a veth pair, all made by this
//! test (and removed after it). Two branches of three replicas; the leader of one is cut
//! off by taking its link to the bridge down. It stops serving within an election
//! timeout or two, the other two elect a leader that serves, transfers into and out of
//! the branch commit meanwhile, and after the heal the old leader catches up: the
//! invariants hold and every branch's replicas are the same row for row. The tellers
//! are `teller-cli` processes in a namespace of their own on the same bridge.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use scenarios::check;
use scenarios::cluster::{ADMIN_PASSWORD, Cluster, teller_cli_bin};
use scenarios::netns::Namespaces;
use wire::{BranchId, TransferId};

const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// The cut-off leader must have stopped serving within this.
const STOP_BOUND: Duration = Duration::from_secs(3);
const CUSTOMER_PASSWORD: &str = "customer-pass-123";

/// `teller-cli` in the tellers' namespace: its exit status and standard output.
fn cli(ns: &str, network: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(teller_cli_bin().expect("teller-cli"))
        .arg("--network-file")
        .arg(network)
        .args(args)
        .env("BM_ADMIN", ADMIN_PASSWORD)
        .env("BM_CUSTOMER", CUSTOMER_PASSWORD)
        .output()
        .expect("runs teller-cli");
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// `teller-cli` arguments that log in as branch `name`'s admin, then `rest`.
fn as_admin<'a>(name: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--branch",
        name,
        "--user",
        "admin",
        "--password-env",
        "BM_ADMIN",
    ];
    args.extend_from_slice(rest);
    args
}

/// Waits until branch `name` logs its admin in.
fn wait_serving(ns: &str, network: &std::path::Path, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let args = as_admin(name, &["admin", "accounts"]);
    while cli(ns, network, &args).0 != 0 {
        assert!(Instant::now() < deadline, "branch {name} does not serve");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens an account at branch `name` with 1,000.00 in it.
fn funded(ns: &str, network: &std::path::Path, name: &str, national_id: &str) -> String {
    let mut open = as_admin(name, &["--json"]);
    open.extend([
        "admin",
        "open-account",
        "--national-id",
        national_id,
        "--phone",
        "+15550100",
        "--first-name",
        "Net",
        "--last-name",
        "Split",
        "--customer-password-env",
        "BM_CUSTOMER",
    ]);
    let (code, out) = cli(ns, network, &open);
    assert_eq!(code, 0, "{out}");
    let account = json(&out)["account"].as_str().expect("account").to_owned();
    let deposit = as_admin(name, &["deposit", "--account", &account, "1000"]);
    assert_eq!(cli(ns, network, &deposit).0, 0);
    account
}

/// A transfer of 1.00 by the customer of `from` at branch `name`; the id if committed.
fn transfer(
    ns: &str,
    network: &std::path::Path,
    name: &str,
    from: &str,
    to: &str,
) -> Option<TransferId> {
    let args = [
        "--branch",
        name,
        "--user",
        from,
        "--password-env",
        "BM_CUSTOMER",
        "--json",
        "transfer",
        "--to",
        to,
        "1.00",
    ];
    let started = Instant::now();
    let (code, out) = cli(ns, network, &args);
    eprintln!(
        "transfer at {name}: exit {code} after {:?}",
        started.elapsed()
    );
    if code != 0 {
        eprintln!("transfer at {name} from {from}: exit {code}: {out}");
        return None;
    }
    let id = json(&out)["id"].as_str().expect("id").to_owned();
    Some(TransferId(
        u128::from_str_radix(&id.replace('-', ""), 16).expect("hex id"),
    ))
}

fn stopped_serving(c: &Cluster, i: usize) -> usize {
    let log = std::fs::read_to_string(c.nodes[i].dir.join("node.log")).unwrap_or_default();
    log.matches("stopped serving the branch").count()
}

#[test]
fn a_leader_cut_off_by_a_real_partition_stops_and_the_majority_serves_on() {
    let nodes = 6;
    let ns = Namespaces::make(nodes + 1, 231, false).expect("namespaces");
    let tellers = ns.node(nodes);
    let dir = tempfile::tempdir().expect("tempdir");
    let place = |k: usize| (k < nodes).then(|| (ns.addr(k), ns.node(k)));
    let mut c = Cluster::create_placed(dir.path(), 2, 3, &[], &place).expect("network");
    for i in 0..c.nodes.len() {
        c.start_node(i, &[]).expect("starts");
    }
    let net = c.network_file.clone();
    wait_serving(&tellers, &net, "b1");
    wait_serving(&tellers, &net, "b2");
    let a1 = funded(&tellers, &net, "b1", "P1");
    let a2 = funded(&tellers, &net, "b2", "P2");
    let mut committed = BTreeSet::new();
    committed.extend(transfer(&tellers, &net, "b2", &a2, &a1));

    let old = c.serving_replica(BranchId(1)).expect("a leader");
    let before = stopped_serving(&c, old);
    ns.link(old, false).expect("cuts");
    let cut = Instant::now();
    // Both ways across the partition's edge: the majority's new leader serves.
    for _ in 0..3 {
        let into = transfer(&tellers, &net, "b2", &a2, &a1);
        let out = transfer(&tellers, &net, "b1", &a1, &a2);
        assert!(
            into.is_some() && out.is_some(),
            "transfers commit during the partition"
        );
        committed.extend(into.into_iter().chain(out));
    }
    let new = c.serving_replica(BranchId(1)).expect("a new leader");
    assert_ne!(new, old, "another replica leads");
    while stopped_serving(&c, old) == before {
        assert!(
            cut.elapsed() < STOP_BOUND,
            "the cut-off leader still serves {:?} after the cut",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    eprintln!("partition checks done after {:?}", cut.elapsed());
    ns.link(old, true).expect("heals");
    committed.extend(transfer(&tellers, &net, "b2", &a2, &a1));
    let settled = check::wait_settled(&c.databases(), SETTLE_BOUND).expect("audit");
    eprintln!("settled after the heal in {settled:?}");
    assert!(
        settled.is_some(),
        "transfers still unfinished after the heal"
    );
    let disagree = check::replicas_agree(&c, Duration::from_secs(15)).expect("compares");
    assert!(disagree.is_empty(), "{disagree:#?}");
    let report = check::finish(&mut c, &committed, SETTLE_BOUND).expect("audit");
    assert!(report.ok(), "{report:#?}");
}

#[test]
fn a_second_run_on_a_subnet_in_use_is_refused_and_the_first_keeps_it() {
    let first = Namespaces::make(1, 233, true).expect("namespaces");
    let second = Namespaces::make(1, 233, true);
    let err = second.expect_err("the subnet is in use").to_string();
    assert!(err.contains("10.233.0.0/24 is in use"), "{err}");
    // The refused run made nothing and removed nothing: the first still reaches its node.
    let ping = Command::new("ping")
        .args(["-c", "1", "-W", "2", &first.addr(0)])
        .output();
    if let Ok(out) = ping {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    drop(first);
    let again = Namespaces::make(1, 233, true).expect("free again once the first is gone");
    drop(again);
}
