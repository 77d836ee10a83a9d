//! How many payee lookups each login made in the current window: a person confirms a
//! few transfers a minute, while reading the bank's customer names by trying account
//! numbers takes thousands. Bounded in logins ([`PAYEE_LOGINS_MAX`]).

use std::collections::HashMap;

use wire::limits::{PAYEE_LOGINS_MAX, PAYEE_LOOKUPS_PER_WINDOW, PAYEE_WINDOW_MS};

/// One login's count in its window.
#[derive(Clone, Copy, Debug)]
struct Count {
    since_ms: u64,
    used: u32,
}

/// The counts of every login that looked up payees lately.
#[derive(Debug, Default)]
pub struct Lookups {
    counts: HashMap<String, Count>,
}

impl Lookups {
    /// Counts one lookup by `login` at `now_ms`, or says how many milliseconds to wait.
    pub fn admit(&mut self, login: &str, now_ms: u64) -> Result<(), u64> {
        if self.counts.len() >= PAYEE_LOGINS_MAX && !self.counts.contains_key(login) {
            self.counts
                .retain(|_, c| now_ms.saturating_sub(c.since_ms) < PAYEE_WINDOW_MS);
            if self.counts.len() >= PAYEE_LOGINS_MAX {
                // Every login counted is in its window: the newcomer waits for one.
                return Err(PAYEE_WINDOW_MS);
            }
        }
        let c = self.counts.entry(login.to_owned()).or_insert(Count {
            since_ms: now_ms,
            used: 0,
        });
        if now_ms.saturating_sub(c.since_ms) >= PAYEE_WINDOW_MS {
            *c = Count {
                since_ms: now_ms,
                used: 0,
            };
        }
        if c.used >= PAYEE_LOOKUPS_PER_WINDOW {
            return Err((c.since_ms + PAYEE_WINDOW_MS).saturating_sub(now_ms).max(1));
        }
        c.used += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_gets_its_lookups_per_window_and_then_waits() {
        let mut l = Lookups::default();
        for _ in 0..PAYEE_LOOKUPS_PER_WINDOW {
            assert_eq!(l.admit("001-00000001-46", 1_000), Ok(()));
        }
        assert_eq!(
            l.admit("001-00000001-46", 11_000),
            Err(PAYEE_WINDOW_MS - 10_000)
        );
        assert_eq!(
            l.admit("admin", 11_000),
            Ok(()),
            "others are not counted with it"
        );
        assert_eq!(l.admit("001-00000001-46", 1_000 + PAYEE_WINDOW_MS), Ok(()));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut l = Lookups::default();
        for i in 0..PAYEE_LOGINS_MAX {
            assert_eq!(l.admit(&format!("login-{i}"), 0), Ok(()));
        }
        assert!(
            l.admit("one-more", 1).is_err(),
            "every login is in its window"
        );
        assert_eq!(
            l.admit("one-more", PAYEE_WINDOW_MS),
            Ok(()),
            "old counts go"
        );
        assert!(l.counts.len() <= PAYEE_LOGINS_MAX);
    }
}
