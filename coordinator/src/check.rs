//! The invariants of ARCHITECTURE.md ("Invariants"), checked over a whole simulated network: used after every
//! step of the simulation and in every state of the model check.

use std::collections::BTreeMap;

use wire::teller::TransferState;
use wire::twopc::TransferSpec;
use wire::{BranchId, Decision, TransferId};

use crate::mem_shard::{LegState, MemShard};

/// Everything the checker needs to see.
#[derive(Debug)]
pub(crate) struct World<'a> {
    pub shards: BTreeMap<BranchId, &'a MemShard>,
    /// Each transfer, with the branch that coordinated it.
    pub transfers: &'a BTreeMap<TransferId, (BranchId, TransferSpec)>,
    /// Sum of all balances before any transfer, in minor units.
    pub total_minor: i128,
    /// Every answer a teller got, by transfer id.
    pub replies: &'a [(TransferId, TransferState)],
}

fn leg(w: &World, b: BranchId, id: TransferId) -> Option<LegState> {
    w.shards.get(&b).and_then(|s| s.leg(id))
}

fn is_local(coordinator: BranchId, spec: &TransferSpec) -> bool {
    spec.participants() == [coordinator]
}

/// Invariants that hold in every state, even mid-flight and mid-crash.
pub(crate) fn check_always(w: &World) -> Result<(), String> {
    // 2. No negative balance (Amount cannot be), held never above balance, and held is
    // exactly the prepared debits: no hold leaks or is released twice.
    let mut expected_held: BTreeMap<_, i128> = BTreeMap::new();
    for (coordinator, spec) in w.transfers.values() {
        if !is_local(*coordinator, spec)
            && leg(w, spec.from.branch(), spec.id) == Some(LegState::Prepared)
        {
            *expected_held.entry(spec.from).or_default() += i128::from(spec.amount.minor());
        }
    }
    for shard in w.shards.values() {
        for (n, balance, held) in shard.accounts() {
            if held > balance {
                return Err(format!(
                    "account {n}: held {held} exceeds balance {balance}"
                ));
            }
            let want = expected_held.get(&n).copied().unwrap_or(0);
            if i128::from(held.minor()) != want {
                return Err(format!(
                    "account {n}: held {held}, prepared debits sum to {want}"
                ));
            }
        }
    }
    let mut in_flight: i128 = 0;
    for (id, (coordinator, spec)) in w.transfers {
        // 5. Money moves at most once per branch per transfer.
        for (b, shard) in &w.shards {
            if shard.times_moved(*id) > 1 {
                return Err(format!(
                    "transfer {id}: applied {} times at branch {b}",
                    shard.times_moved(*id)
                ));
            }
        }
        if is_local(*coordinator, spec) {
            continue;
        }
        let (d, c) = (
            leg(w, spec.from.branch(), *id),
            leg(w, spec.to.branch(), *id),
        );
        // 3. Atomicity: never one leg committed and the other aborted.
        let committed = [d, c].contains(&Some(LegState::Committed));
        if committed && [d, c].contains(&Some(LegState::Aborted)) {
            return Err(format!(
                "transfer {id}: legs disagree: debit {d:?}, credit {c:?}"
            ));
        }
        // A committed leg needs a durable commit decision at the coordinator.
        let decision = w
            .shards
            .get(coordinator)
            .and_then(|s| s.coordinated_decision(*id));
        if committed && decision != Some(Decision::Commit) {
            return Err(format!(
                "transfer {id}: a leg committed but the coordinator recorded {decision:?}"
            ));
        }
        // Money between a committed debit and its not-yet-applied credit (or the reverse).
        let amount = i128::from(spec.amount.minor());
        match (
            d == Some(LegState::Committed),
            c == Some(LegState::Committed),
        ) {
            (true, false) => in_flight += amount,
            (false, true) => in_flight -= amount,
            _ => {}
        }
    }
    // 1. Conservation, counting money in flight.
    let sum: i128 = w.shards.values().map(|s| s.total_minor()).sum();
    if sum + in_flight != w.total_minor {
        return Err(format!(
            "conservation: balances {sum} + in flight {in_flight} != {}",
            w.total_minor
        ));
    }
    // 4. Every "committed" a teller heard is durable right now.
    for (id, state) in w.replies {
        if *state != TransferState::Committed {
            continue;
        }
        let Some((coordinator, _)) = w.transfers.get(id) else {
            return Err(format!(
                "transfer {id}: committed reply for an unknown transfer"
            ));
        };
        let durable = w.shards.get(coordinator).map(|s| {
            s.coordinated_decision(*id) == Some(Decision::Commit) || local_committed(s, *id)
        });
        if durable != Some(true) {
            return Err(format!(
                "transfer {id}: teller told committed, but nothing durable says so"
            ));
        }
    }
    Ok(())
}

fn local_committed(s: &MemShard, id: TransferId) -> bool {
    use crate::shard::Shard;
    s.coordinated_decision(id).is_none() && s.transfer_state(id) == Ok(TransferState::Committed)
}

/// Invariants that hold once the network is healed and quiet: nothing in doubt, every
/// transfer committed on both legs or on neither, every answer told is the outcome.
pub(crate) fn check_final(w: &World) -> Result<(), String> {
    check_always(w)?;
    for (id, (coordinator, spec)) in w.transfers {
        if is_local(*coordinator, spec) {
            continue;
        }
        let (d, c) = (
            leg(w, spec.from.branch(), *id),
            leg(w, spec.to.branch(), *id),
        );
        if [d, c].contains(&Some(LegState::Prepared)) {
            return Err(format!(
                "transfer {id}: still in doubt after heal: debit {d:?}, credit {c:?}"
            ));
        }
        let decision = w
            .shards
            .get(coordinator)
            .and_then(|s| s.coordinated_decision(*id));
        if decision == Some(Decision::Commit)
            && (d, c) != (Some(LegState::Committed), Some(LegState::Committed))
        {
            return Err(format!(
                "transfer {id}: decided commit but legs are {d:?}, {c:?}"
            ));
        }
    }
    let sum: i128 = w.shards.values().map(|s| s.total_minor()).sum();
    if sum != w.total_minor {
        return Err(format!(
            "conservation after heal: {sum} != {}",
            w.total_minor
        ));
    }
    for (id, state) in w.replies {
        let Some((coordinator, spec)) = w.transfers.get(id) else {
            continue;
        };
        let moved = if is_local(*coordinator, spec) {
            w.shards
                .get(coordinator)
                .is_some_and(|s| s.times_moved(*id) == 1)
        } else {
            leg(w, spec.from.branch(), *id) == Some(LegState::Committed)
        };
        let consistent = match state {
            TransferState::Committed => moved,
            TransferState::Aborted(_) => !moved,
            TransferState::Pending | TransferState::Unknown => true,
        };
        if !consistent {
            return Err(format!(
                "transfer {id}: teller told {state:?}, but money moved: {moved}"
            ));
        }
    }
    Ok(())
}
