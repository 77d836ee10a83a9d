//! Runs networks of real branch-node processes: demo, workloads, faults, checks, bench (issue 7).
