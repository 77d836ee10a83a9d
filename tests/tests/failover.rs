//! Failover of a replicated branch, from outside, with real processes: `scenarios
//! failover` strikes branch b1's serving replica with kill -9, SIGSTOP and a real
//! partition (network namespaces; CI runs as root) while a stream of transfers runs,
//! and at each fault a `teller-cli` process logs in and sends a transfer with a fixed id
//! (every other one reading a network file that lists the replicas in the opposite
//! order). Each probe must commit, every answer of the run must be true, the invariants
//! must hold, and the old leader's `/readyz` must never say it serves while another
//! replica does. How fast is measured by the command, not here (see the README).

use std::time::Duration;

use scenarios::failover::{self, FailoverOptions, FaultKind};
use scenarios::workload::Answer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_on_a_leader_is_ridden_out_with_true_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FailoverOptions {
        trials: 2,
        kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
        branches: 2,
        fault: Duration::from_millis(2_500),
        clients: 2,
    };
    let report = failover::run(&opts, dir.path()).await.expect("runs");
    eprintln!("{}", report.table());
    assert!(report.ok(), "{:#?}", report.violations);
    assert_eq!(report.trials.len(), 6);
    for t in &report.trials {
        assert_eq!(
            t.answer,
            Answer::Committed,
            "{:?} trial: exit {}: {}",
            t.kind,
            t.exit,
            t.said
        );
    }
}
