//! The branch process: SQLite store, libp2p swarm, teller service, 2PC driver (issues 4 and 5).
//!
//! Not built yet: this crate exists so the workspace layout of DESIGN.md holds from the start.
