//! The two-phase-commit protocol of BankMate as pure, deterministic state machines.
//!
//! - [`Branch`] holds both roles of one branch ([`Coordinator`], [`Participant`]); its
//!   [`Branch::step`] takes an [`Input`] and the current time and appends [`Command`]s.
//!   It reads no clock, draws no randomness and does no IO.
//! - [`Shard`] is what the roles need from a branch's store, with its durability
//!   contract; [`MemShard`] is an in-memory one for tests and the simulation;
//!   `testing` (feature `testing`) is the conformance suite every `Shard` must pass.
//! - **Signatures are verified by the caller**, before an [`Input::Message`] is built:
//!   the node knows the network file and the connection's PeerId, the machine does not.
//!   The message's envelope bytes ride along as [`Evidence`] and are stored with the
//!   records they justify. This keeps the machines pure and lets the simulation run
//!   thousands of seeds without paying for signatures.
//! - `sim` (tests) is the seeded simulation; `model` (tests) the exhaustive model check.

mod branch;
mod command;
mod config;
mod coordinator;
mod mem_shard;
mod outbox;
mod participant;
mod shard;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod check;
#[cfg(test)]
mod model;
#[cfg(test)]
mod role_tests;
#[cfg(test)]
mod sim;

pub use branch::{Branch, execute};
pub use command::{Command, Input, Ticket};
pub use config::Config;
pub use coordinator::{Coordinator, Phase};
pub use mem_shard::{LegState, MemShard};
pub use participant::Participant;
pub use shard::{
    ApplyOutcome, ApplyRefusal, BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord,
    Evidence, InDoubtRecord, Shard, ShardError, StoreFailure,
};
