//! Runs networks of real `branch-node` processes on loopback: start them (`cluster`),
//! drive tellers against them (`workload`), inject faults from scenario files
//! (`scenario`, `rogue`), check the invariants (`check`) and every answer a teller was
//! given (`answers`), report (`report`), measure throughput (`bench`) and failover times (`failover`, with real partitions
//! from `netns`). `tellers`
//! holds the connections and sessions the workload sends through.

pub mod answers;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod cpu;
pub mod failover;
pub mod netns;
pub mod report;
pub mod rogue;
pub mod scenario;
pub mod tellers;
pub mod workload;
