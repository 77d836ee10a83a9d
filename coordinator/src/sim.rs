//! Seeded simulation: 2 to 5 branches running the real state machines over a network
//! that drops, duplicates, reorders and delays messages and partitions branches, while
//! branches crash (losing everything not yet durable) and restart. A heal phase follows;
//! then everything must converge. The invariants are checked after every step.
//!
//! Everything derives from one `u64` seed, printed on failure. `SIM_SEEDS=N` runs N seeds
//! (default 2000); `SIM_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use wire::teller::TransferState;
use wire::twopc::{BranchBody, TransferSpec};
use wire::{AccountNumber, Amount, BranchId, TransferId};

use crate::check::{World, check_always, check_final};
use crate::{Branch, Command, Config, Input, MemShard, Shard, Ticket, execute};

/// SplitMix64: a small, good, dependency-free generator; the sim draws everything from it.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub(crate) fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.next() % len as u64).unwrap_or(0)
    }
}

/// Timings short enough that retries happen many times within a run.
pub(crate) fn sim_config() -> Config {
    Config {
        prepare_timeout_ms: 200,
        prepare_resend_ms: 60,
        decision_resend_ms: 40,
        status_query_delay_ms: 40,
        retry_backoff_max_ms: 320,
        ..Config::default()
    }
}

#[derive(Debug)]
struct Node {
    machine: Option<Branch>,
    shard: MemShard,
    /// Storage commands emitted, not yet durable: a crash loses them.
    io: VecDeque<Command>,
    restart_at: Option<u64>,
}

#[derive(Debug)]
struct Msg {
    deliver_at: u64,
    from: BranchId,
    to: BranchId,
    body: BranchBody,
}

/// What one seed did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub transfers: usize,
    pub committed: usize,
    pub aborted: usize,
    pub crashes: usize,
    pub dropped: usize,
    pub duplicated: usize,
    pub steps: usize,
}

#[derive(Debug)]
struct Sim {
    rng: Rng,
    now: u64,
    config: Config,
    nodes: BTreeMap<BranchId, Node>,
    net: Vec<Msg>,
    /// Severed links (both directions present), each with when it heals.
    cut: BTreeMap<(BranchId, BranchId), u64>,
    transfers: BTreeMap<TransferId, (BranchId, TransferSpec)>,
    replies: Vec<(TransferId, TransferState)>,
    /// Tellers waiting: ticket -> (branch asked, transfer).
    tickets: BTreeMap<Ticket, (BranchId, TransferId)>,
    accounts: Vec<AccountNumber>,
    total_minor: i128,
    faults: bool,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = rng.range(2, 5);
        let ids: BTreeSet<BranchId> = (1..=n)
            .map(|b| BranchId(u16::try_from(b).unwrap_or(1)))
            .collect();
        let mut nodes = BTreeMap::new();
        let mut accounts = Vec::new();
        let mut total_minor = 0;
        for &b in &ids {
            let mut shard = MemShard::new(b);
            for serial in 1..=rng.range(1, 3) {
                let number =
                    AccountNumber::new(b, u32::try_from(serial).unwrap_or(1)).expect("valid");
                let minor = i64::try_from(rng.range(0, 1_000)).unwrap_or(0);
                shard.open_account(number, Amount::from_minor(minor).expect("non-negative"));
                total_minor += i128::from(minor);
                accounts.push(number);
            }
            let machine = Branch::new(b, ids.clone(), sim_config());
            nodes.insert(
                b,
                Node {
                    machine: Some(machine),
                    shard,
                    io: VecDeque::new(),
                    restart_at: None,
                },
            );
        }
        Sim {
            rng,
            now: 0,
            config: sim_config(),
            nodes,
            net: Vec::new(),
            cut: BTreeMap::new(),
            transfers: BTreeMap::new(),
            replies: Vec::new(),
            tickets: BTreeMap::new(),
            accounts,
            total_minor,
            faults: true,
            stats: Stats::default(),
        }
    }

    /// Feeds `input` to branch `b` and runs what comes out: storage commands are queued
    /// (durable only once executed), sends go to the network (or straight back in, for
    /// this branch), replies are recorded and checked for durability.
    fn feed(&mut self, b: BranchId, input: Input) {
        let mut work = VecDeque::from([(b, input)]);
        let mut crash_now = None;
        while let Some((b, input)) = work.pop_front() {
            let now = self.now;
            let Some(node) = self.nodes.get_mut(&b) else {
                continue;
            };
            let Some(machine) = node.machine.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            machine.step(now, input, &mut out);
            for cmd in out {
                match cmd {
                    Command::Send { to, body } if to == b => {
                        work.push_back((
                            b,
                            Input::Message {
                                from: b,
                                body,
                                evidence: None,
                            },
                        ));
                    }
                    Command::Send { to, body } => self.send(b, to, body),
                    Command::Reply { ticket, id, state } => self.reply(ticket, id, state),
                    storage => {
                        self.nodes
                            .get_mut(&b)
                            .expect("exists")
                            .io
                            .push_back(storage);
                        // Failpoint crash: the command was issued, it is not durable.
                        if self.failpoint() {
                            crash_now = Some(b);
                        }
                    }
                }
            }
        }
        if let Some(b) = crash_now {
            self.crash(b);
        }
    }

    /// Whether to crash at a 2PC step now (rarely, and only in the fault phase).
    fn failpoint(&mut self) -> bool {
        self.faults
            && self.stats.crashes < CRASHES_MAX
            && self.rng.range(0, 999) < FAILPOINT_CRASH_PER_MILLE
    }

    fn send(&mut self, from: BranchId, to: BranchId, body: BranchBody) {
        if self.faults && self.rng.chance(3) {
            self.stats.dropped += 1;
            return;
        }
        let deliver_at = self.now + self.rng.range(1, 30);
        self.net.push(Msg {
            deliver_at,
            from,
            to,
            body,
        });
    }

    fn reply(&mut self, ticket: Ticket, id: TransferId, state: TransferState) {
        let waiting = self.tickets.remove(&ticket);
        assert_eq!(
            waiting.map(|(_, i)| i),
            Some(id),
            "reply to a ticket nobody waits on"
        );
        self.replies.push((id, state));
    }

    fn submit(&mut self) {
        let live: Vec<BranchId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.machine.is_some())
            .map(|(b, _)| *b)
            .collect();
        if live.is_empty() {
            return;
        }
        let coordinator = live[self.rng.index(live.len())];
        // A teller retry: the same transfer again, to the same coordinator.
        let spec = if !self.transfers.is_empty() && self.rng.chance(15) {
            let ids: Vec<_> = self.transfers.keys().copied().collect();
            let (c, spec) = self.transfers[&ids[self.rng.index(ids.len())]];
            if c != coordinator {
                return;
            }
            spec
        } else {
            let from = self.accounts[self.rng.index(self.accounts.len())];
            let mut to = self.accounts[self.rng.index(self.accounts.len())];
            if to == from && !self.rng.chance(10) {
                to = self.accounts[self.rng.index(self.accounts.len())];
            }
            let minor = i64::try_from(self.rng.range(0, 600)).unwrap_or(0);
            let id = TransferId(u128::from(self.rng.next()) << 64 | self.transfers.len() as u128);
            let spec = TransferSpec {
                id,
                from,
                to,
                amount: Amount::from_minor(minor).expect("non-negative"),
            };
            self.transfers.insert(id, (coordinator, spec));
            self.stats.transfers += 1;
            spec
        };
        let ticket = self.rng.next();
        self.tickets.insert(ticket, (coordinator, spec.id));
        self.feed(coordinator, Input::Request(vec![(ticket, spec)]));
    }

    fn deliver(&mut self, msg: Msg) {
        let down = self.nodes.get(&msg.to).is_none_or(|n| n.machine.is_none());
        if down || self.cut.contains_key(&(msg.from, msg.to)) {
            self.stats.dropped += 1;
            return;
        }
        if self.faults && self.rng.chance(3) {
            self.stats.duplicated += 1;
            let deliver_at = self.now + self.rng.range(1, 100);
            self.net.push(Msg {
                deliver_at,
                from: msg.from,
                to: msg.to,
                body: msg.body.clone(),
            });
        }
        self.feed(
            msg.to,
            Input::Message {
                from: msg.from,
                body: msg.body,
                evidence: None,
            },
        );
    }

    fn io(&mut self, b: BranchId) {
        let now = self.now;
        let node = self.nodes.get_mut(&b).expect("exists");
        let Some(cmd) = node.io.pop_front() else {
            return;
        };
        match execute(&mut node.shard, now, cmd) {
            Ok(Some(input)) => self.feed(b, input),
            Ok(None) => {}
            Err(e) => panic!("store refused a command at branch {b}: {e}"),
        }
        // Failpoint crash: the command is durable and what it caused has been sent.
        if self.nodes[&b].machine.is_some() && self.failpoint() {
            self.crash(b);
        }
    }

    fn crash(&mut self, b: BranchId) {
        let restart_at = self.now + self.rng.range(10, 1_000);
        let node = self.nodes.get_mut(&b).expect("exists");
        node.machine = None;
        node.io.clear();
        node.restart_at = Some(restart_at);
        // Tellers waiting on a crashed branch lose their connection.
        self.tickets.retain(|_, (at, _)| *at != b);
        self.stats.crashes += 1;
    }

    fn restart(&mut self, b: BranchId) {
        let ids: BTreeSet<BranchId> = self.nodes.keys().copied().collect();
        let node = self.nodes.get_mut(&b).expect("exists");
        node.restart_at = None;
        node.machine = Some(Branch::new(b, ids, self.config));
        let coordinated = node.shard.unfinished_coordinated().expect("mem shard");
        let in_doubt = node.shard.in_doubt().expect("mem shard");
        self.feed(
            b,
            Input::Recovered {
                coordinated,
                in_doubt,
            },
        );
    }

    fn tick_all(&mut self) {
        let due: Vec<BranchId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.machine
                    .as_ref()
                    .and_then(Branch::next_timer)
                    .is_some_and(|t| t <= self.now)
            })
            .map(|(b, _)| *b)
            .collect();
        for b in due {
            self.feed(b, Input::Tick);
        }
    }

    fn check(&self, last: bool) -> Result<(), String> {
        let shards = self.nodes.iter().map(|(b, n)| (*b, &n.shard)).collect();
        let w = World {
            shards,
            transfers: &self.transfers,
            total_minor: self.total_minor,
            replies: &self.replies,
        };
        if last {
            check_final(&w)
        } else {
            check_always(&w)
        }
    }
}

impl Sim {
    fn live(&self) -> Vec<BranchId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.machine.is_some())
            .map(|(b, _)| *b)
            .collect()
    }

    /// One step of the fault phase: maybe a new transfer; each ready message delivered
    /// with some chance, in random order (so reordering happens); each branch's next
    /// storage command run with some chance; due timers fired; rarely a crash or a
    /// partition; then due restarts and healed links.
    fn fault_step(&mut self, transfers_max: usize) {
        self.now += self.rng.range(0, 2);
        if self.stats.transfers < transfers_max && self.rng.chance(15) {
            self.submit();
        }
        let mut ready: Vec<usize> = (0..self.net.len())
            .filter(|&i| self.net[i].deliver_at <= self.now)
            .collect();
        let mut chosen = Vec::new();
        while !ready.is_empty() {
            let i = ready.swap_remove(self.rng.index(ready.len()));
            if self.rng.chance(40) {
                chosen.push(i);
            }
        }
        // Remove from the highest index down so the others stay valid.
        let mut by_index = chosen.clone();
        by_index.sort_unstable_by(|a, b| b.cmp(a));
        let mut msgs: BTreeMap<usize, Msg> = by_index
            .into_iter()
            .map(|i| (i, self.net.swap_remove(i)))
            .collect();
        for i in chosen {
            if let Some(msg) = msgs.remove(&i) {
                self.deliver(msg);
            }
        }
        let ids: Vec<BranchId> = self.nodes.keys().copied().collect();
        for b in ids {
            if self.rng.chance(40) {
                self.io(b);
            }
        }
        self.tick_all();
        match self.rng.range(0, 999) {
            0..=2 => {
                let live = self.live();
                if self.stats.crashes < CRASHES_MAX && !live.is_empty() {
                    let b = live[self.rng.index(live.len())];
                    self.crash(b);
                }
            }
            3..=5 => {
                let ids: Vec<BranchId> = self.nodes.keys().copied().collect();
                let (a, b) = (
                    ids[self.rng.index(ids.len())],
                    ids[self.rng.index(ids.len())],
                );
                let heal_at = self.now + self.rng.range(50, 1_500);
                if a != b {
                    self.cut.insert((a, b), heal_at);
                    self.cut.insert((b, a), heal_at);
                }
            }
            _ => {}
        }
        let now = self.now;
        self.cut.retain(|_, heal_at| *heal_at > now);
        let due: Vec<BranchId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.restart_at.is_some_and(|t| t <= now))
            .map(|(b, _)| *b)
            .collect();
        for b in due {
            self.restart(b);
        }
    }

    fn quiescent(&self) -> bool {
        self.net.is_empty()
            && self.nodes.values().all(|n| {
                n.io.is_empty()
                    && n.machine.as_ref().is_some_and(|m| {
                        m.coordinator().in_flight() == 0 && m.participant().in_doubt() == 0
                    })
            })
    }

    /// One step of the heal phase: jump to the next event, then deliver everything
    /// ready, run every queued storage command, fire due timers.
    fn heal_step(&mut self) {
        let idle = self.nodes.values().all(|n| n.io.is_empty())
            && self.net.iter().all(|m| m.deliver_at > self.now);
        if idle {
            let next_msg = self.net.iter().map(|m| m.deliver_at).min();
            let next_timer = self
                .nodes
                .values()
                .filter_map(|n| n.machine.as_ref()?.next_timer())
                .min();
            if let Some(t) = next_msg.into_iter().chain(next_timer).min() {
                self.now = self.now.max(t);
            }
        }
        while let Some(i) = self.net.iter().position(|m| m.deliver_at <= self.now) {
            let msg = self.net.swap_remove(i);
            self.deliver(msg);
        }
        let ids: Vec<BranchId> = self.nodes.keys().copied().collect();
        for b in ids {
            while !self.nodes[&b].io.is_empty() {
                self.io(b);
            }
        }
        self.tick_all();
    }
}

/// Steps of the fault phase of one seed.
const FAULT_STEPS: usize = 2_000;

/// Most crashes in one seed (random and failpoint crashes together).
const CRASHES_MAX: usize = 4;

/// Chance, per storage command issued or completed, of a failpoint crash, per mille.
const FAILPOINT_CRASH_PER_MILLE: u64 = 4;

/// Sim time the network gets after the heal to settle every transfer, in milliseconds:
/// a few prepare timeouts plus a few maximal retry waits.
const RECOVERY_BOUND_MS: u64 = 10_000;

/// Runs one seed: the fault phase, then the heal phase; checks after every step.
pub(crate) fn run(seed: u64) -> Result<Stats, String> {
    let mut sim = Sim::new(seed);
    let transfers_max = usize::try_from(sim.rng.range(5, 60)).unwrap_or(5);
    for step in 0..FAULT_STEPS {
        sim.stats.steps += 1;
        sim.fault_step(transfers_max);
        sim.check(false)
            .map_err(|e| format!("fault step {step}, t={}ms: {e}", sim.now))?;
    }
    sim.faults = false;
    sim.cut.clear();
    let crashed: Vec<BranchId> = sim
        .nodes
        .iter()
        .filter(|(_, n)| n.machine.is_none())
        .map(|(b, _)| *b)
        .collect();
    for b in crashed {
        sim.restart(b);
    }
    let healed_at = sim.now;
    while !sim.quiescent() {
        if sim.now > healed_at + RECOVERY_BOUND_MS {
            return Err(format!(
                "not settled {RECOVERY_BOUND_MS}ms after heal (t={}ms)",
                sim.now
            ));
        }
        sim.stats.steps += 1;
        sim.heal_step();
        sim.check(false)
            .map_err(|e| format!("heal, t={}ms: {e}", sim.now))?;
    }
    sim.check(true)
        .map_err(|e| format!("after heal, t={}ms: {e}", sim.now))?;
    for (_, state) in &sim.replies {
        match state {
            TransferState::Committed => sim.stats.committed += 1,
            TransferState::Aborted(r) => {
                sim.stats.aborted += 1;
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("ABORT {r:?}");
                }
            }
            _ => {}
        }
    }
    Ok(sim.stats)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_many_seeds() {
        let seeds: Vec<u64> = match env_u64("SIM_SEED") {
            Some(one) => vec![one],
            None => (0..env_u64("SIM_SEEDS").unwrap_or(2_000)).collect(),
        };
        let mut total = Stats::default();
        for &seed in &seeds {
            match run(seed) {
                Ok(s) => {
                    total.transfers += s.transfers;
                    total.committed += s.committed;
                    total.aborted += s.aborted;
                    total.crashes += s.crashes;
                    total.dropped += s.dropped;
                    total.duplicated += s.duplicated;
                    total.steps += s.steps;
                }
                Err(e) => panic!(
                    "simulation seed {seed} failed: {e}\nreplay: SIM_SEED={seed} cargo test -p coordinator simulation"
                ),
            }
        }
        println!(
            "simulation: {} seeds ok: {} transfers ({} replies committed, {} aborted), {} crashes, {} messages dropped, {} duplicated, {} steps",
            seeds.len(),
            total.transfers,
            total.committed,
            total.aborted,
            total.crashes,
            total.dropped,
            total.duplicated,
            total.steps
        );
        assert!(
            total.committed > 0 && total.aborted > 0 && total.crashes > 0,
            "the simulation exercised too little: {total:?}"
        );
    }
}
