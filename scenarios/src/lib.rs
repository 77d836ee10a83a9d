//! Runs networks of real `branch-node` processes on loopback: start them (`cluster`),
//! drive tellers against them (`workload`), inject faults from scenario files
//! (`scenario`, `rogue`), check the invariants (`check`), report (`report`), and
//! measure throughput (`bench`).

pub mod bench;
pub mod check;
pub mod cluster;
pub mod report;
pub mod rogue;
pub mod scenario;
pub mod workload;
