//! Runs networks of real `branch-node` processes on loopback: start them (`cluster`),
//! drive tellers against them, inject faults, and check the invariants (`check`).

pub mod check;
pub mod cluster;
