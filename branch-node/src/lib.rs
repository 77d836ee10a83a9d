//! The branch process: SQLite store (`store`), and later the libp2p swarm, teller
//! service, 2PC driver and notifier (issue 5).

pub mod store;
