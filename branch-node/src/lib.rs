//! The branch process: SQLite store (`store`) and data-dir setup (`init`); the libp2p
//! swarm, teller service, 2PC driver and notifier come with issue 5.

pub mod backup;
pub mod init;
pub mod network_file;
pub mod node;
pub mod p2p;
pub mod replica;
pub mod store;
pub mod totp;
pub mod verify;
