//! The branch process: the SQLite store (`store`), data-dir setup (`init`) and its
//! locks (`lock`), the libp2p swarm (`p2p`), the serving node (`node`: teller service,
//! 2PC engine, notifier, fence), replicas (`replica`), and the operator's offline
//! commands (`backup`, `restore`, `verify`). Which of these may use which is a table,
//! checked by a test: [`layers`].

pub mod backup;
pub mod init;
pub mod keys;
pub mod layers;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod replica;
pub mod restore;
pub mod rotate;
pub mod store;
pub mod totp;
pub mod verify;
