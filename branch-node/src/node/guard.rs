//! The login throttle: growing waits per login and per teller peer, for known and
//! unknown logins alike, with no lockout. Pure: time is an argument.
//!
//! An attempt is counted as a failure *before* its password is checked (and the
//! count undone on success), so parallel guesses cannot all slip past the limit. An
//! attempt turned away before its check (the node is overloaded) is not counted. A
//! teller over its own limit is refused before the login is looked up; a login's
//! limit applies to made-up names alike, so the answer says nothing about whether
//! the login exists. A teller peer that logged in to a login
//! before is trusted for it: its attempts skip that login's count, so a stranger's
//! guessing never delays the owner at their usual teller. ARCHITECTURE.md gives the
//! rates an attacker gets.
//!
//! The counts of logins that exist are never evicted (there is at most one per login
//! of the branch, and a count goes at its login's next success or once forgotten), so
//! a flood of made-up names cannot flush a real login's count. Made-up names are
//! counted apart, in a bounded table that evicts its stalest entry: they are counted
//! only so that they are answered as a real login would be.

use std::collections::HashMap;
use std::hash::Hash;

use crate::store::throttle::Kept;
use libp2p::PeerId;
use wire::limits::{
    LOGIN_DELAY_FIRST_MS, LOGIN_DELAY_MAX_MS, LOGIN_FORGET_MS, LOGIN_FREE_FAILURES,
    LOGIN_PEER_FREE_FAILURES, LOGIN_THROTTLE_KEYS_MAX, LOGIN_TRUST_MS,
};

/// How often (in new keys) a table that does not evict, grown past
/// `LOGIN_THROTTLE_KEYS_MAX`, drops its forgotten counts.
const SWEEP_EVERY: usize = 1_024;

/// Failed attempts of one key and when the last one was.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    failures: u32,
    last_ms: u64,
}

impl Count {
    /// How long from `now_ms` until the next attempt may start.
    fn wait_ms(&self, free: u32, now_ms: u64) -> u64 {
        let Some(over) = self.failures.checked_sub(free) else {
            return 0;
        };
        let delay = LOGIN_DELAY_FIRST_MS
            .saturating_mul(1u64 << over.min(40))
            .min(LOGIN_DELAY_MAX_MS);
        (self.last_ms.saturating_add(delay)).saturating_sub(now_ms)
    }
}

/// The throttle tables of one branch.
#[derive(Debug, Default)]
pub struct Guard {
    /// Logins that exist: never evicted.
    logins: HashMap<String, Count>,
    /// Names that are no login: bounded, the stalest evicted.
    unknown: HashMap<String, Count>,
    peers: HashMap<PeerId, Count>,
    /// (login, peer) pairs that logged in, and until when they are trusted.
    trusted: HashMap<(String, PeerId), u64>,
}

/// An admitted attempt; hand it back to [`Guard::succeeded`] if the login succeeds.
#[derive(Debug)]
pub struct Attempt {
    login: String,
    exists: bool,
    peer: PeerId,
    trusted: bool,
}

impl Attempt {
    /// Whether its teller logged in to its login before (and is still trusted for it).
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// The login name its count is kept under.
    pub fn login(&self) -> &str {
        &self.login
    }

    /// Whether its login exists.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Its teller.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl Guard {
    /// How long `peer` must wait before any attempt (checked before the login is even
    /// looked up, so a throttled teller costs nothing more).
    pub fn peer_wait(&self, peer: PeerId, now_ms: u64) -> u64 {
        self.peers
            .get(&peer)
            .map_or(0, |c| c.wait_ms(LOGIN_PEER_FREE_FAILURES, now_ms))
    }

    /// Admits an attempt by `peer` on `login` (which `exists` or not) now and counts it
    /// as failed, or says how many milliseconds to wait first.
    pub fn admit(
        &mut self,
        login: &str,
        exists: bool,
        peer: PeerId,
        now_ms: u64,
    ) -> Result<Attempt, u64> {
        let trusted = exists
            && self
                .trusted
                .get(&(login.to_owned(), peer))
                .is_some_and(|&until| now_ms < until);
        let login_wait = match trusted {
            true => 0,
            false => self
                .names(exists)
                .get(login)
                .map_or(0, |c| c.wait_ms(LOGIN_FREE_FAILURES, now_ms)),
        };
        let wait = login_wait.max(self.peer_wait(peer, now_ms));
        if wait > 0 {
            return Err(wait);
        }
        if !trusted {
            let evicts = !exists;
            fail(self.names_mut(exists), login.to_owned(), now_ms, evicts);
        }
        fail(&mut self.peers, peer, now_ms, true);
        Ok(Attempt {
            login: login.to_owned(),
            exists,
            peer,
            trusted,
        })
    }

    fn names(&self, exists: bool) -> &HashMap<String, Count> {
        if exists { &self.logins } else { &self.unknown }
    }

    fn names_mut(&mut self, exists: bool) -> &mut HashMap<String, Count> {
        if exists {
            &mut self.logins
        } else {
            &mut self.unknown
        }
    }

    /// The count of existing login `login`: (failures, last failure's time).
    pub fn count(&self, login: &str) -> Option<(u32, u64)> {
        self.logins.get(login).map(|c| (c.failures, c.last_ms))
    }

    /// Takes in what the store kept (at start, or when this replica starts to lead):
    /// a count or a trust this node already has newer news of stays.
    pub fn load(&mut self, kept: Kept) {
        for (login, failures, last_ms) in kept.counts {
            let c = self.logins.entry(login).or_default();
            if last_ms > c.last_ms {
                *c = Count { failures, last_ms };
            }
        }
        for (login, peer, until) in kept.trusted {
            let t = self.trusted.entry((login, peer)).or_default();
            *t = (*t).max(until);
        }
    }

    /// The attempt was not made after all (the node turned it away before checking the
    /// password): its counts are taken back.
    pub fn not_made(&mut self, attempt: Attempt) {
        if !attempt.trusted
            && let Some(c) = self.names_mut(attempt.exists).get_mut(&attempt.login)
        {
            c.failures = c.failures.saturating_sub(1);
        }
        if let Some(c) = self.peers.get_mut(&attempt.peer) {
            c.failures = c.failures.saturating_sub(1);
        }
    }

    /// The attempt logged in: the login's count is cleared, the peer's count loses the
    /// attempt again, and the peer is trusted for the login from now on.
    pub fn succeeded(&mut self, attempt: Attempt, now_ms: u64) {
        if !attempt.trusted {
            self.names_mut(attempt.exists).remove(&attempt.login);
        }
        if let Some(c) = self.peers.get_mut(&attempt.peer) {
            c.failures = c.failures.saturating_sub(1);
        }
        if self.trusted.len() >= LOGIN_THROTTLE_KEYS_MAX {
            self.trusted.retain(|_, until| now_ms < *until);
            evict_one(&mut self.trusted, |until| *until);
        }
        self.trusted.insert(
            (attempt.login, attempt.peer),
            now_ms.saturating_add(LOGIN_TRUST_MS),
        );
    }
}

/// Counts a failure of `key`. A new key in a full table makes room first: forgotten
/// counts go, then (when `evicts`) the stalest one. A table that does not evict grows
/// past the bound only with keys its caller bounds (the branch's logins).
fn fail<K: Eq + Hash + Clone>(table: &mut HashMap<K, Count>, key: K, now_ms: u64, evicts: bool) {
    let full = table.len() >= LOGIN_THROTTLE_KEYS_MAX;
    // Without eviction the sweep runs at every SWEEP_EVERY-th new key past the bound,
    // not at each one.
    let sweep = full && (evicts || table.len().is_multiple_of(SWEEP_EVERY));
    if !table.contains_key(&key) && sweep {
        table.retain(|_, c| now_ms.saturating_sub(c.last_ms) < LOGIN_FORGET_MS);
        if evicts {
            evict_one(table, |c| c.last_ms);
        }
    }
    let count = table.entry(key).or_default();
    if now_ms.saturating_sub(count.last_ms) >= LOGIN_FORGET_MS {
        count.failures = 0;
    }
    count.failures = count.failures.saturating_add(1);
    count.last_ms = now_ms;
}

/// Removes the entry with the smallest `age` if the table is still full.
fn evict_one<K: Eq + Hash + Clone, V>(table: &mut HashMap<K, V>, age: impl Fn(&V) -> u64) {
    if table.len() < LOGIN_THROTTLE_KEYS_MAX {
        return;
    }
    let oldest = table
        .iter()
        .min_by_key(|(_, v)| age(v))
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        table.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    /// Admits attempts at `now` until one is throttled; returns how many got through.
    fn burst(g: &mut Guard, login: &str, peer: PeerId, now: u64) -> u32 {
        let mut n = 0;
        while g.admit(login, true, peer, now).is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn parallel_guesses_get_the_free_failures_and_no_more() {
        let mut g = Guard::default();
        // Sixty attempts at the same instant, none finished: five get through.
        let admitted = (0..60)
            .filter(|_| g.admit("100-00000001", true, PeerId::random(), T0).is_ok())
            .count();
        assert_eq!(admitted, LOGIN_FREE_FAILURES as usize);
    }

    #[test]
    fn waits_grow_to_the_cap_and_counts_are_forgotten() {
        let mut g = Guard::default();
        let (login, mut now) = ("admin", T0);
        assert_eq!(
            burst(&mut g, login, PeerId::random(), now),
            LOGIN_FREE_FAILURES
        );
        let mut waits = Vec::new();
        for _ in 0..14 {
            let wait = g
                .admit(login, true, PeerId::random(), now)
                .expect_err("throttled");
            waits.push(wait);
            now += wait;
            assert!(g.admit(login, true, PeerId::random(), now).is_ok());
        }
        assert_eq!(waits[..4], [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(*waits.last().expect("some"), LOGIN_DELAY_MAX_MS);
        now += LOGIN_FORGET_MS;
        assert_eq!(
            burst(&mut g, login, PeerId::random(), now),
            LOGIN_FREE_FAILURES
        );
    }

    #[test]
    fn unknown_and_known_logins_are_throttled_alike() {
        // The guard never sees whether a login exists: same answers for any name.
        let mut g = Guard::default();
        let peer = PeerId::random();
        let a = burst(&mut g, "admin", peer, T0);
        let mut b = 0;
        while g
            .admit("no-such-login", false, PeerId::random(), T0)
            .is_ok()
        {
            b += 1;
        }
        assert_eq!(a, b);
        assert_eq!(
            g.admit("admin", true, PeerId::random(), T0).err(),
            g.admit("no-such-login", false, PeerId::random(), T0).err(),
            "throttled alike"
        );
    }

    #[test]
    fn a_stranger_cannot_delay_the_owner_at_a_trusted_teller() {
        let mut g = Guard::default();
        let owner = PeerId::random();
        let attempt = g.admit("100-00000001", true, owner, T0).expect("admitted");
        g.succeeded(attempt, T0);
        // A stranger uses up the login's free failures and more.
        let stranger = PeerId::random();
        assert_eq!(
            burst(&mut g, "100-00000001", stranger, T0 + 1),
            LOGIN_FREE_FAILURES
        );
        assert!(
            g.admit("100-00000001", true, PeerId::random(), T0 + 2)
                .is_err()
        );
        // The owner's teller is not delayed; another teller is.
        let attempt = g
            .admit("100-00000001", true, owner, T0 + 3)
            .expect("trusted");
        g.succeeded(attempt, T0 + 3);
    }

    #[test]
    fn one_peer_spraying_many_logins_is_throttled() {
        let mut g = Guard::default();
        let peer = PeerId::random();
        let admitted = (0..100)
            .filter(|i| g.admit(&format!("user-{i}"), i % 2 == 0, peer, T0).is_ok())
            .count();
        assert_eq!(admitted, LOGIN_PEER_FREE_FAILURES as usize);
    }

    #[test]
    fn a_success_undoes_its_own_count_only() {
        let mut g = Guard::default();
        let peer = PeerId::random();
        for i in 0..LOGIN_PEER_FREE_FAILURES - 1 {
            assert!(g.admit(&format!("typo-{i}"), false, peer, T0).is_ok());
        }
        let ok = g.admit("100-00000001", true, peer, T0).expect("last free");
        g.succeeded(ok, T0);
        assert!(
            g.admit("100-00000002", true, peer, T0).is_ok(),
            "room again"
        );
        assert!(g.admit("100-00000003", true, peer, T0).is_err());
    }

    #[test]
    fn a_flood_of_made_up_names_does_not_flush_a_real_login_count() {
        let mut g = Guard::default();
        let victim = "100-00000001";
        assert_eq!(
            burst(&mut g, victim, PeerId::random(), T0),
            LOGIN_FREE_FAILURES
        );
        // More junk names than the table holds, from many tellers.
        for i in 0..LOGIN_THROTTLE_KEYS_MAX + 200 {
            let _ = g.admit(&format!("junk-{i}"), false, PeerId::random(), T0 + 1);
        }
        assert!(g.unknown.len() <= LOGIN_THROTTLE_KEYS_MAX);
        // The victim's login is still throttled, whoever asks.
        for _ in 0..6 {
            assert!(g.admit(victim, true, PeerId::random(), T0 + 2).is_err());
        }
    }

    #[test]
    fn an_attempt_turned_away_before_its_check_is_not_counted() {
        let mut g = Guard::default();
        let peer = PeerId::random();
        for _ in 0..100 {
            let attempt = g.admit("admin", true, peer, T0).expect("admitted");
            g.not_made(attempt);
        }
        assert_eq!(
            burst(&mut g, "admin", PeerId::random(), T0),
            LOGIN_FREE_FAILURES
        );
    }
}
