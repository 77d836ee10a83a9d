//! Takes each teller seal once: the check a branch makes on a request another branch
//! passed on, so that branch can delay or drop a teller's request but never make,
//! change or repeat one ([`wire::seal`]).
//!
//! A seal is taken when it is the named teller's signature over the request, for this
//! branch, not yet expired and not more than [`SEAL_HORIZON_MS`] (plus slack) ahead,
//! made after this serving stack started (a restarted or newly elected copy has no
//! memory of the seals taken before), and its (session, nonce) has not been taken. The
//! memory holds each seal until it expires, at most [`SEALS_REMEMBERED_MAX`] of them and
//! [`SEALS_PER_SESSION_MAX`] of one session's. The branch checks the session before the
//! seal (`service.rs`), so only a logged-in teller's seals are ever remembered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use libp2p::PeerId;
use wire::BranchId;
use wire::Refusal;
use wire::limits::{SEAL_HORIZON_MS, SEAL_SLACK_MS, SEALS_PER_SESSION_MAX, SEALS_REMEMBERED_MAX};
use wire::teller::{TellerRequest, Unavailable};

use super::service::Fail;

/// The seals taken and still live, and what a seal must be to be taken.
#[derive(Debug)]
pub struct Seals {
    me: BranchId,
    /// When this serving stack started: seals made before it are refused.
    started_ms: u64,
    memory: Mutex<Memory>,
}

/// The (session, nonce) pairs taken, with each session's count.
#[derive(Debug, Default)]
struct Memory {
    taken: HashSet<(u128, u64)>,
    /// The taken seals in the order they came, with their expiry: the oldest go first.
    order: VecDeque<(u64, (u128, u64))>,
    per_session: HashMap<u128, usize>,
}

impl Seals {
    pub fn new(me: BranchId, started_ms: u64) -> Seals {
        Seals {
            me,
            started_ms,
            memory: Mutex::default(),
        }
    }

    /// Takes the seal of `request`, passed on for `teller`, at `now`; nothing is taken
    /// when it is refused. The signature is checked before the memory is locked.
    pub(crate) fn take(
        &self,
        teller: &PeerId,
        request: &TellerRequest,
        now: u64,
    ) -> Result<(), Fail> {
        let seal = request.seal.as_ref().ok_or(Refusal::BadSeal)?;
        let token = request.session.ok_or(Unavailable::SessionExpired)?;
        let too_far = now.saturating_add(SEAL_HORIZON_MS + SEAL_SLACK_MS);
        if seal.to != self.me || seal.expires_at_ms > too_far {
            return Err(Refusal::BadSeal.into());
        }
        seal.check(teller, request.session, &request.op)
            .map_err(|_| Refusal::BadSeal)?;
        if seal.expires_at_ms < now {
            // Its teller stopped waiting for it: nobody reads this answer.
            return Err(Unavailable::NoAnswer(self.me).into());
        }
        if seal.expires_at_ms < self.started_ms.saturating_add(SEAL_HORIZON_MS) {
            // Made before this stack started: it may have been taken before. The
            // teller seals it again when it asks again.
            return Err(Unavailable::NotConfirmed.into());
        }
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.take((token.0, seal.nonce), seal.expires_at_ms, now)
    }

    /// How many seals are remembered.
    pub fn remembered(&self) -> usize {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .taken
            .len()
    }
}

impl Memory {
    /// Remembers `key` until `expires`, unless it is taken already or there is no room
    /// (in all, or for its session).
    fn take(&mut self, key: (u128, u64), expires: u64, now: u64) -> Result<(), Fail> {
        self.forget_expired(now);
        if self.taken.contains(&key) {
            return Err(Refusal::BadSeal.into());
        }
        let session = self.per_session.entry(key.0).or_default();
        if self.taken.len() >= SEALS_REMEMBERED_MAX || *session >= SEALS_PER_SESSION_MAX {
            return Err(Unavailable::Overloaded.into());
        }
        *session += 1;
        self.taken.insert(key);
        self.order.push_back((expires, key));
        Ok(())
    }

    /// Forgets the seals, oldest first, that have expired (one that came later but
    /// expires sooner waits for those before it: at most the horizon longer).
    fn forget_expired(&mut self, now: u64) {
        while let Some(&(expires, key)) = self.order.front() {
            if expires >= now {
                break;
            }
            self.order.pop_front();
            self.taken.remove(&key);
            if let Some(n) = self.per_session.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_session.remove(&key.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::BranchKey;
    use wire::seal::Seal;
    use wire::teller::{SessionToken, TellerOp};

    const NOW: u64 = 1_000_000;

    fn sealed(key: &BranchKey, to: u16, nonce: u64, expires: u64) -> TellerRequest {
        let session = Some(SessionToken::new(BranchId(to), 5));
        let mut r = TellerRequest::new(session, TellerOp::Logout);
        r.seal =
            Some(Seal::make(key, (BranchId(to), nonce, expires), session, &r.op).expect("seal"));
        r
    }

    fn refused(r: Result<(), Fail>) -> Option<Refusal> {
        match r {
            Err(Fail::Refused(x)) => Some(x),
            _ => None,
        }
    }

    #[test]
    fn a_seal_is_taken_once_by_its_branch_while_live() {
        let key = BranchKey::from_secret([3; 32]);
        let teller = key.peer_id();
        let seals = Seals::new(BranchId(1), 0);
        let ok = sealed(&key, 1, 1, NOW + SEAL_HORIZON_MS);
        assert!(seals.take(&teller, &ok, NOW).is_ok());
        assert_eq!(
            refused(seals.take(&teller, &ok, NOW)),
            Some(Refusal::BadSeal),
            "again"
        );
        let other = BranchKey::from_secret([4; 32]).peer_id();
        let fresh = sealed(&key, 1, 2, NOW + SEAL_HORIZON_MS);
        assert_eq!(
            refused(seals.take(&other, &fresh, NOW)),
            Some(Refusal::BadSeal),
            "not its teller"
        );
        let elsewhere = sealed(&key, 2, 3, NOW + SEAL_HORIZON_MS);
        assert_eq!(
            refused(seals.take(&teller, &elsewhere, NOW)),
            Some(Refusal::BadSeal)
        );
        let far = sealed(&key, 1, 4, NOW + SEAL_HORIZON_MS + SEAL_SLACK_MS + 1);
        assert_eq!(
            refused(seals.take(&teller, &far, NOW)),
            Some(Refusal::BadSeal)
        );
        let mut unsealed = fresh.clone();
        unsealed.seal = None;
        assert_eq!(
            refused(seals.take(&teller, &unsealed, NOW)),
            Some(Refusal::BadSeal)
        );
        let expired = sealed(&key, 1, 5, NOW - 1);
        assert!(matches!(
            seals.take(&teller, &expired, NOW),
            Err(Fail::Unavailable(Unavailable::NoAnswer(_)))
        ));
        assert_eq!(seals.remembered(), 1);
        // Once the first has expired it is forgotten.
        let later = sealed(&key, 1, 6, NOW + 2 * SEAL_HORIZON_MS);
        assert!(
            seals
                .take(&teller, &later, NOW + SEAL_HORIZON_MS + 1)
                .is_ok()
        );
        assert_eq!(seals.remembered(), 1);
    }

    #[test]
    fn a_seal_made_before_the_stack_started_is_not_taken() {
        let key = BranchKey::from_secret([3; 32]);
        let seals = Seals::new(BranchId(1), NOW);
        let before = sealed(&key, 1, 1, NOW + SEAL_HORIZON_MS - 1);
        assert!(matches!(
            seals.take(&key.peer_id(), &before, NOW),
            Err(Fail::Unavailable(Unavailable::NotConfirmed))
        ));
        let after = sealed(&key, 1, 2, NOW + SEAL_HORIZON_MS);
        assert!(seals.take(&key.peer_id(), &after, NOW).is_ok());
    }

    /// One session fills at most its share of the memory; another still gets in, and
    /// the share comes back as its seals expire.
    #[test]
    fn one_session_cannot_fill_the_memory() {
        let mut memory = Memory::default();
        for nonce in 0..SEALS_PER_SESSION_MAX as u64 {
            assert!(memory.take((1, nonce), NOW + 10, NOW).is_ok());
        }
        assert!(matches!(
            memory.take((1, u64::MAX), NOW + 10, NOW),
            Err(Fail::Unavailable(Unavailable::Overloaded))
        ));
        assert!(memory.take((2, 0), NOW + 10, NOW).is_ok());
        assert!(memory.take((1, u64::MAX), NOW + 30, NOW + 11).is_ok());
        assert_eq!(memory.taken.len(), 1);
    }
}
