//! Places per teller in something shared: how many of a resource one teller may hold at
//! once (requests in service, forwards to other branches), so one teller cannot take
//! every place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;

/// Each teller's count of places held, at most `max` each.
#[derive(Debug)]
pub struct Shares {
    max: usize,
    held: Mutex<HashMap<PeerId, usize>>,
}

/// One place held by a teller, given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
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
    pub fn take(shares: &Arc<Shares>, peer: PeerId) -> Option<Share> {
        let mut held = shares.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(peer).or_default();
        if *n >= shares.max {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: Arc::clone(shares),
            peer,
        })
    }
}

impl Drop for Share {
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
        let shares = Arc::new(Shares::new(2));
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = Shares::take(&shares, a).expect("one");
        let second = Shares::take(&shares, a).expect("two");
        assert!(Shares::take(&shares, a).is_none(), "a third is refused");
        assert!(
            Shares::take(&shares, b).is_some(),
            "another teller is not held back"
        );
        drop(first);
        assert!(Shares::take(&shares, a).is_some());
        drop(second);
        assert!(shares.held.lock().expect("lock").len() <= 1);
    }
}
