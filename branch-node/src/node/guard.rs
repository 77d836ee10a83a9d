//! The login throttle: growing waits per login and per teller peer, for known and
//! unknown logins alike, with no lockout. Pure: time is an argument.
//!
//! An attempt is counted as a failure *before* its password is checked (and the
//! count undone on success), so parallel guesses cannot all slip past the limit. A
//! throttled attempt is refused before the login is looked up, so the answer says
//! nothing about whether the login exists. A teller peer that logged in to a login
//! before is trusted for it: its attempts skip that login's count, so a stranger's
//! guessing never delays the owner at their usual teller. ARCHITECTURE.md gives the
//! rates an attacker gets.

use std::collections::HashMap;
use std::hash::Hash;

use libp2p::PeerId;
use wire::limits::{
    LOGIN_DELAY_FIRST_MS, LOGIN_DELAY_MAX_MS, LOGIN_FORGET_MS, LOGIN_FREE_FAILURES,
    LOGIN_PEER_FREE_FAILURES, LOGIN_THROTTLE_KEYS_MAX, LOGIN_TRUST_MS,
};

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
    logins: HashMap<String, Count>,
    peers: HashMap<PeerId, Count>,
    /// (login, peer) pairs that logged in, and until when they are trusted.
    trusted: HashMap<(String, PeerId), u64>,
}

/// An admitted attempt; hand it back to [`Guard::succeeded`] if the login succeeds.
#[derive(Debug)]
pub struct Attempt {
    login: String,
    peer: PeerId,
    trusted: bool,
}

impl Guard {
    /// Admits an attempt by `peer` on `login` now and counts it as failed, or says how
    /// many milliseconds to wait first.
    pub fn admit(&mut self, login: &str, peer: PeerId, now_ms: u64) -> Result<Attempt, u64> {
        let trusted = self
            .trusted
            .get(&(login.to_owned(), peer))
            .is_some_and(|&until| now_ms < until);
        let login_wait = match trusted {
            true => 0,
            false => self
                .logins
                .get(login)
                .map_or(0, |c| c.wait_ms(LOGIN_FREE_FAILURES, now_ms)),
        };
        let peer_wait = self
            .peers
            .get(&peer)
            .map_or(0, |c| c.wait_ms(LOGIN_PEER_FREE_FAILURES, now_ms));
        let wait = login_wait.max(peer_wait);
        if wait > 0 {
            return Err(wait);
        }
        if !trusted {
            fail(&mut self.logins, login.to_owned(), now_ms);
        }
        fail(&mut self.peers, peer, now_ms);
        Ok(Attempt {
            login: login.to_owned(),
            peer,
            trusted,
        })
    }

    /// The attempt logged in: the login's count is cleared, the peer's count loses the
    /// attempt again, and the peer is trusted for the login from now on.
    pub fn succeeded(&mut self, attempt: Attempt, now_ms: u64) {
        if !attempt.trusted {
            self.logins.remove(&attempt.login);
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

/// Counts a failure of `key`, making room first if the table is full: forgotten
/// counts go, then the stalest one.
fn fail<K: Eq + Hash + Clone>(table: &mut HashMap<K, Count>, key: K, now_ms: u64) {
    if !table.contains_key(&key) && table.len() >= LOGIN_THROTTLE_KEYS_MAX {
        table.retain(|_, c| now_ms.saturating_sub(c.last_ms) < LOGIN_FORGET_MS);
        evict_one(table, |c| c.last_ms);
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
        while g.admit(login, peer, now).is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn parallel_guesses_get_the_free_failures_and_no_more() {
        let mut g = Guard::default();
        // Sixty attempts at the same instant, none finished: five get through.
        let admitted = (0..60)
            .filter(|_| g.admit("100-00000001", PeerId::random(), T0).is_ok())
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
                .admit(login, PeerId::random(), now)
                .expect_err("throttled");
            waits.push(wait);
            now += wait;
            assert!(g.admit(login, PeerId::random(), now).is_ok());
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
        let b = burst(&mut g, "no-such-login", PeerId::random(), T0);
        assert_eq!(a, b);
    }

    #[test]
    fn a_stranger_cannot_delay_the_owner_at_a_trusted_teller() {
        let mut g = Guard::default();
        let owner = PeerId::random();
        let attempt = g.admit("100-00000001", owner, T0).expect("admitted");
        g.succeeded(attempt, T0);
        // A stranger uses up the login's free failures and more.
        let stranger = PeerId::random();
        assert_eq!(
            burst(&mut g, "100-00000001", stranger, T0 + 1),
            LOGIN_FREE_FAILURES
        );
        assert!(g.admit("100-00000001", PeerId::random(), T0 + 2).is_err());
        // The owner's teller is not delayed; another teller is.
        let attempt = g.admit("100-00000001", owner, T0 + 3).expect("trusted");
        g.succeeded(attempt, T0 + 3);
    }

    #[test]
    fn one_peer_spraying_many_logins_is_throttled() {
        let mut g = Guard::default();
        let peer = PeerId::random();
        let admitted = (0..100)
            .filter(|i| g.admit(&format!("user-{i}"), peer, T0).is_ok())
            .count();
        assert_eq!(admitted, LOGIN_PEER_FREE_FAILURES as usize);
    }

    #[test]
    fn a_success_undoes_its_own_count_only() {
        let mut g = Guard::default();
        let peer = PeerId::random();
        for i in 0..LOGIN_PEER_FREE_FAILURES - 1 {
            assert!(g.admit(&format!("typo-{i}"), peer, T0).is_ok());
        }
        let ok = g.admit("100-00000001", peer, T0).expect("last free");
        g.succeeded(ok, T0);
        assert!(g.admit("100-00000002", peer, T0).is_ok(), "room again");
        assert!(g.admit("100-00000003", peer, T0).is_err());
    }
}
