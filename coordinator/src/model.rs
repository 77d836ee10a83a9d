//! Exhaustive model check of the real state machines: every interleaving of message
//! delivery, loss, duplication, storage completion, timers, and one crash and restart,
//! within bounds (timer firings, duplicates). Safety is checked in every reachable
//! state; the reply-versus-outcome rules in every quiet one.
//!
//! Loss needs no action of its own: safety is a property of finite prefixes, and a
//! prefix in which a message was lost is the same prefix in which it has not been
//! delivered yet, which every interleaving already covers. A message sent to a crashed
//! branch is consumed (lost) for real.
//!
//! This explores `Branch` and `MemShard` themselves, not a separate model of them, so a
//! bug in the code that runs is a bug found here. States are stored as 64-bit
//! fingerprints (as TLC does): memory stays small, and a collision could only hide a
//! state, never report a false violation.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use wire::teller::TransferState;
use wire::twopc::{BranchBody, TransferSpec};
use wire::{AccountNumber, Amount, BranchId, TransferId};

use crate::check::{World, check_always, check_final};
use crate::sim::sim_config;
use crate::{Branch, Command, Input, MemShard, Shard, execute};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Node {
    machine: Option<Branch>,
    shard: MemShard,
    io: VecDeque<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u64,
    nodes: Vec<Node>,
    /// Messages in flight, as a set: a second copy of a message is the same message.
    net: BTreeSet<(u16, u16, BranchBody)>,
    replies: BTreeSet<(TransferId, TransferState)>,
    submitted: Vec<bool>,
    ticks_left: u8,
    crashes_left: u8,
    dups_left: u8,
}

/// A network to explore: branches 1..=n, accounts with balances, transfers and who
/// coordinates each.
#[derive(Debug)]
pub(crate) struct Setup {
    pub branches: u16,
    pub accounts: Vec<(AccountNumber, i64)>,
    pub transfers: Vec<(BranchId, TransferSpec)>,
    pub ticks: u8,
    pub crashes: u8,
    pub dups: u8,
    /// Give up (as a failure) past this many states, so the test stays bounded in time.
    pub states_max: usize,
}

/// What an exploration covered.
#[derive(Debug)]
pub(crate) struct Report {
    pub states: usize,
    pub quiet_states: usize,
    pub max_depth: usize,
}

fn fingerprint(s: &State) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn idx(b: BranchId) -> usize {
    usize::from(b.0) - 1
}

struct Explorer<'a> {
    setup: &'a Setup,
    transfers: BTreeMap<TransferId, (BranchId, TransferSpec)>,
    total_minor: i128,
}

impl Explorer<'_> {
    fn initial(&self) -> State {
        let ids: BTreeSet<BranchId> = (1..=self.setup.branches).map(BranchId).collect();
        let mut nodes: Vec<Node> = (1..=self.setup.branches)
            .map(|b| Node {
                machine: Some(Branch::new(BranchId(b), ids.clone(), sim_config())),
                shard: MemShard::new(BranchId(b)),
                io: VecDeque::new(),
            })
            .collect();
        for (n, minor) in &self.setup.accounts {
            nodes[idx(n.branch())]
                .shard
                .open_account(*n, Amount::from_minor(*minor).expect("non-negative"));
        }
        State {
            now: 0,
            nodes,
            net: BTreeSet::new(),
            replies: BTreeSet::new(),
            submitted: vec![false; self.setup.transfers.len()],
            ticks_left: self.setup.ticks,
            crashes_left: self.setup.crashes,
            dups_left: self.setup.dups,
        }
    }

    /// Feeds an input and everything it causes, as the simulation's driver does.
    fn feed(&self, s: &mut State, b: BranchId, input: Input) {
        let mut work = VecDeque::from([(b, input)]);
        while let Some((b, input)) = work.pop_front() {
            let now = s.now;
            let Some(machine) = s.nodes[idx(b)].machine.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            machine.step(now, input, &mut out);
            for cmd in out {
                match cmd {
                    Command::Send { to, body } if to == b => work.push_back((
                        b,
                        Input::Message {
                            from: b,
                            body,
                            evidence: None,
                        },
                    )),
                    Command::Send { to, body } => {
                        s.net.insert((b.0, to.0, body));
                    }
                    Command::Reply { id, state, .. } => {
                        s.replies.insert((id, state));
                    }
                    storage => s.nodes[idx(b)].io.push_back(storage),
                }
            }
        }
    }

    fn successors(&self, s: &State) -> Vec<State> {
        let mut next = Vec::new();
        for (i, (c, spec)) in self.setup.transfers.iter().enumerate() {
            if !s.submitted[i] && s.nodes[idx(*c)].machine.is_some() {
                let mut n = s.clone();
                n.submitted[i] = true;
                self.feed(&mut n, *c, Input::Request(vec![(i as u64, *spec)]));
                next.push(n);
            }
        }
        for m in &s.net {
            let (from, to, body) = m;
            let deliver = |keep: bool| {
                let mut n = s.clone();
                if keep {
                    n.dups_left -= 1;
                } else {
                    n.net.remove(m);
                }
                let input = Input::Message {
                    from: BranchId(*from),
                    body: body.clone(),
                    evidence: None,
                };
                self.feed(&mut n, BranchId(*to), input);
                n
            };
            next.push(deliver(false));
            if s.dups_left > 0 {
                next.push(deliver(true));
            }
        }
        for (i, node) in s.nodes.iter().enumerate() {
            let b = BranchId(u16::try_from(i + 1).unwrap_or(0));
            match &node.machine {
                Some(machine) => {
                    if !node.io.is_empty() {
                        let mut n = s.clone();
                        let cmd = n.nodes[i].io.pop_front().expect("non-empty");
                        let now = n.now;
                        if let Some(input) =
                            execute(&mut n.nodes[i].shard, now, cmd).expect("mem shard")
                        {
                            self.feed(&mut n, b, input);
                        }
                        next.push(n);
                    }
                    if let (Some(t), true) = (machine.next_timer(), s.ticks_left > 0) {
                        let mut n = s.clone();
                        n.ticks_left -= 1;
                        n.now = n.now.max(t);
                        self.feed(&mut n, b, Input::Tick);
                        next.push(n);
                    }
                    if s.crashes_left > 0 {
                        let mut n = s.clone();
                        n.crashes_left -= 1;
                        n.nodes[i].machine = None;
                        n.nodes[i].io.clear();
                        next.push(n);
                    }
                }
                None => {
                    let mut n = s.clone();
                    let ids = (1..=self.setup.branches).map(BranchId).collect();
                    n.nodes[i].machine = Some(Branch::new(b, ids, sim_config()));
                    let coordinated = n.nodes[i]
                        .shard
                        .unfinished_coordinated()
                        .expect("mem shard");
                    let in_doubt = n.nodes[i].shard.in_doubt().expect("mem shard");
                    self.feed(
                        &mut n,
                        b,
                        Input::Recovered {
                            coordinated,
                            in_doubt,
                        },
                    );
                    next.push(n);
                }
            }
        }
        next
    }

    fn check(&self, s: &State) -> Result<bool, String> {
        let shards = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (BranchId(u16::try_from(i + 1).unwrap_or(0)), &n.shard))
            .collect();
        let replies: Vec<_> = s.replies.iter().copied().collect();
        let w = World {
            shards,
            transfers: &self.transfers,
            total_minor: self.total_minor,
            replies: &replies,
        };
        check_always(&w)?;
        let quiet = s.net.is_empty()
            && s.submitted.iter().all(|x| *x)
            && s.nodes.iter().all(|n| {
                n.io.is_empty()
                    && n.machine.as_ref().is_some_and(|m| {
                        m.coordinator().in_flight() == 0 && m.participant().in_doubt() == 0
                    })
            });
        if quiet {
            check_final(&w)?;
        }
        Ok(quiet)
    }
}

/// Explores every reachable state of `setup` depth-first; the first violation is
/// returned with the path length that reached it.
pub(crate) fn explore(setup: &Setup) -> Result<Report, String> {
    let ex = Explorer {
        setup,
        transfers: setup
            .transfers
            .iter()
            .map(|(c, s)| (s.id, (*c, *s)))
            .collect(),
        total_minor: setup.accounts.iter().map(|(_, m)| i128::from(*m)).sum(),
    };
    let start = ex.initial();
    let mut seen = HashSet::from([fingerprint(&start)]);
    let mut stack = vec![(start, 0usize)];
    let mut report = Report {
        states: 1,
        quiet_states: 0,
        max_depth: 0,
    };
    while let Some((state, depth)) = stack.pop() {
        if report.states > setup.states_max {
            return Err(format!(
                "more than {} states: lower the bounds",
                setup.states_max
            ));
        }
        report.max_depth = report.max_depth.max(depth);
        if ex
            .check(&state)
            .map_err(|e| format!("violation at depth {depth}: {e}"))?
        {
            report.quiet_states += 1;
        }
        for n in ex.successors(&state) {
            if seen.insert(fingerprint(&n)) {
                report.states += 1;
                stack.push((n, depth + 1));
            }
        }
    }
    Ok(report)
}

pub(crate) fn account(branch: u16, serial: u32) -> AccountNumber {
    AccountNumber::new(BranchId(branch), serial).expect("valid")
}

pub(crate) fn transfer(
    id: u128,
    from: AccountNumber,
    to: AccountNumber,
    minor: i64,
) -> TransferSpec {
    TransferSpec {
        id: TransferId(id),
        from,
        to,
        amount: Amount::from_minor(minor).expect("non-negative"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past this many states a configuration fails rather than run for ever.
    const STATES_MAX: usize = 30_000_000;

    fn env_u8(name: &str, default: u8) -> u8 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn report(name: &str, setup: &Setup) {
        let r = explore(setup).unwrap_or_else(|e| panic!("model check {name}: {e}"));
        println!(
            "model check {name}: lossy network, {} duplicate(s), {} crash(es), {} timer firing(s): {} states explored, {} quiet, max depth {}",
            setup.dups, setup.crashes, setup.ticks, r.states, r.quiet_states, r.max_depth
        );
        assert!(
            r.quiet_states > 0,
            "no run reached a quiet state: bounds too tight to mean anything"
        );
    }

    /// One coordinator (branch 1) and two participants (debit at 2, credit at 3).
    fn one_coordinator_two_participants(ticks: u8, dups: u8) -> Setup {
        let (a, c) = (account(2, 1), account(3, 1));
        Setup {
            branches: 3,
            accounts: vec![(a, 100), (c, 0)],
            transfers: vec![(BranchId(1), transfer(1, a, c, 60))],
            ticks: env_u8("MODEL_TICKS", ticks),
            crashes: env_u8("MODEL_CRASHES", 1),
            dups: env_u8("MODEL_DUPS", dups),
            states_max: STATES_MAX,
        }
    }

    #[test]
    fn model_one_coordinator_two_participants() {
        report(
            "1 coordinator + 2 participants, 1 transfer",
            &one_coordinator_two_participants(2, 0),
        );
    }

    #[test]
    fn model_one_coordinator_two_participants_with_duplicates() {
        report(
            "1 coordinator + 2 participants, 1 transfer",
            &one_coordinator_two_participants(1, 1),
        );
    }

    /// As deployed: the coordinator owns the debit account, so its begin record and its
    /// own leg are one durable step, and only branch 2 is sent a prepare.
    #[test]
    fn model_coordinator_owns_the_debit() {
        let (a, c) = (account(1, 1), account(2, 1));
        let setup = Setup {
            branches: 2,
            accounts: vec![(a, 100), (c, 0)],
            transfers: vec![(BranchId(1), transfer(1, a, c, 60))],
            ticks: env_u8("MODEL_TICKS", 2),
            crashes: env_u8("MODEL_CRASHES", 1),
            dups: env_u8("MODEL_DUPS", 1),
            states_max: STATES_MAX,
        };
        report("coordinator owns the debit, 1 transfer", &setup);
    }

    /// Three branches, each a coordinator or participant or both: two transfers contend
    /// for one account that can pay only one of them.
    #[test]
    fn model_three_branches_two_contending_transfers() {
        let (a, c, d) = (account(2, 1), account(3, 1), account(1, 1));
        let setup = Setup {
            branches: 3,
            accounts: vec![(a, 100), (c, 0), (d, 0)],
            transfers: vec![
                (BranchId(1), transfer(1, a, c, 60)),
                (BranchId(3), transfer(2, a, d, 60)),
            ],
            // One timer firing already takes this past 10 million states: without
            // timers it still covers every delivery order and a crash at every point.
            ticks: env_u8("MODEL_TICKS", 0),
            crashes: env_u8("MODEL_CRASHES", 1),
            dups: env_u8("MODEL_DUPS", 0),
            states_max: STATES_MAX,
        };
        report("3 branches, 2 contending transfers", &setup);
    }
}
