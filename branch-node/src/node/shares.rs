//! Places per teller in something shared: how many of a resource one teller may hold at
//! once (forwards to one other branch), so one teller cannot take every place.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use libp2p::PeerId;

/// Each teller's count of places held, at most `max` each.
#[derive(Debug)]
pub struct Shares {
    max: usize,
    held: Mutex<HashMap<PeerId, usize>>,
}

/// One place held by a teller, given back when dropped.
#[derive(Debug)]
pub struct Share<'a> {
    shares: &'a Shares,
    peer: PeerId,
}

impl Shares {
    pub fn new(max: usize) -> Shares {
        Shares {
            max,
            held: Mutex::default(),
        }
    }

    /// A place for `peer`, or `None` when it holds `max` already.
    pub fn take(&self, peer: PeerId) -> Option<Share<'_>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(peer).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Share { shares: self, peer })
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teller_holds_at_most_its_share_and_gives_it_back() {
        let shares = Shares::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = shares.take(a).expect("one");
        let second = shares.take(a).expect("two");
        assert!(shares.take(a).is_none(), "a third is refused");
        assert!(shares.take(b).is_some(), "another teller is not held back");
        drop(first);
        assert!(shares.take(a).is_some());
        drop(second);
        assert!(shares.held.lock().expect("lock").len() <= 1);
    }
}
