//! The two phases of each transfer this branch coordinates, timed for the metrics:
//! voting (from its begin until its decision is made: prepares out, votes back) and
//! acknowledgement (from its decision until every participant acknowledged it and the
//! transfer ended). The engine says when each step is issued; the times are kept in
//! memory only, for at most [`PHASES_TRACKED_MAX`] transfers at once (more are not
//! timed), and a transfer finished by recovery after a restart is not timed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wire::TransferId;

/// Most transfers timed at once.
pub const PHASES_TRACKED_MAX: usize = 100_000;
/// When the table is full, phases started longer ago than this are dropped untimed
/// (a transfer lives seconds; this only bounds what a missed end would leave).
const PHASE_STALE: Duration = Duration::from_secs(600);

/// A finished phase: its name (the metrics' label) and how long it took.
pub type Phase = (&'static str, Duration);

/// The start of the phase each timed transfer is in.
#[derive(Debug, Default)]
pub struct Phases {
    voting: HashMap<TransferId, Instant>,
    acking: HashMap<TransferId, Instant>,
}

impl Phases {
    /// `ids` were begun at `now`.
    pub fn begun(&mut self, ids: impl IntoIterator<Item = TransferId>, now: Instant) {
        for id in ids {
            if self.len() >= PHASES_TRACKED_MAX {
                let fresh = |t: &mut Instant| now.saturating_duration_since(*t) < PHASE_STALE;
                self.voting.retain(|_, t| fresh(t));
                self.acking.retain(|_, t| fresh(t));
            }
            if self.len() < PHASES_TRACKED_MAX {
                self.voting.insert(id, now);
            }
        }
    }

    /// `ids` were not begun after all (an earlier use of the id answered): untimed.
    pub fn not_begun(&mut self, ids: impl IntoIterator<Item = TransferId>) {
        for id in ids {
            self.voting.remove(&id);
        }
    }

    /// `ids` were decided at `now`: their voting phases end.
    pub fn decided(
        &mut self,
        ids: impl IntoIterator<Item = TransferId>,
        now: Instant,
    ) -> Vec<Phase> {
        let mut done = Vec::new();
        for id in ids {
            if let Some(start) = self.voting.remove(&id) {
                done.push(("voting", now.saturating_duration_since(start)));
                self.acking.insert(id, now);
            }
        }
        done
    }

    /// `ids` ended at `now` (every participant acknowledged): their last phases end.
    pub fn ended(&mut self, ids: impl IntoIterator<Item = TransferId>, now: Instant) -> Vec<Phase> {
        let mut done = Vec::new();
        for id in ids {
            self.voting.remove(&id);
            if let Some(start) = self.acking.remove(&id) {
                done.push(("acks", now.saturating_duration_since(start)));
            }
        }
        done
    }

    /// Transfers being timed.
    pub fn len(&self) -> usize {
        self.voting.len() + self.acking.len()
    }

    /// Whether no transfer is being timed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_timed_once_and_forgotten_at_the_end() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = Phases::default();
        p.begun([TransferId(1), TransferId(2)], t0);
        assert_eq!(
            p.decided([TransferId(1)], ms(7)),
            vec![("voting", Duration::from_millis(7))]
        );
        assert!(
            p.decided([TransferId(1), TransferId(9)], ms(8)).is_empty(),
            "once; unknown ids untimed"
        );
        assert_eq!(
            p.ended([TransferId(1)], ms(10)),
            vec![("acks", Duration::from_millis(3))]
        );
        // Ended without a decision timed here (own leg refused): forgotten, untimed.
        assert!(p.ended([TransferId(2)], ms(11)).is_empty());
        assert!(p.is_empty());
    }

    #[test]
    fn at_most_so_many_are_timed_and_stale_ones_make_room() {
        let mut p = Phases::default();
        let t0 = Instant::now();
        let max = PHASES_TRACKED_MAX as u128;
        p.begun((0..max + 5).map(TransferId), t0);
        assert_eq!(p.len(), PHASES_TRACKED_MAX);
        p.begun([TransferId(max + 6)], t0 + Duration::from_secs(1));
        assert_eq!(p.len(), PHASES_TRACKED_MAX, "none stale yet: not timed");
        p.begun([TransferId(max + 7)], t0 + PHASE_STALE);
        assert_eq!(p.len(), 1, "the stale ones went");
        p.not_begun([TransferId(max + 7)]);
        assert!(p.is_empty());
    }
}
