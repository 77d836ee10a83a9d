//! Teller sessions: a random token, issued at login, bound to the teller's PeerId and
//! expiring after `SESSION_TTL_MS`. A token shown by another peer is refused.

use std::collections::HashMap;

use libp2p::PeerId;
use wire::BranchId;
use wire::limits::{SESSION_TTL_MS, SESSIONS_MAX};
use wire::link::SessionInfo;
use wire::teller::SessionToken;

#[derive(Debug)]
struct Session {
    peer: PeerId,
    info: SessionInfo,
}

/// The live sessions of one branch.
#[derive(Debug)]
pub struct Sessions {
    me: BranchId,
    live: HashMap<SessionToken, Session>,
}

impl Sessions {
    /// No sessions yet, for branch `me`.
    pub fn new(me: BranchId) -> Self {
        Sessions {
            me,
            live: HashMap::new(),
        }
    }

    /// Starts a session for `peer`; `random` comes from the caller's RNG.
    pub fn open(
        &mut self,
        peer: PeerId,
        mut info: SessionInfo,
        random: u128,
        now_ms: u64,
    ) -> (SessionToken, SessionInfo) {
        if self.live.len() >= SESSIONS_MAX {
            self.live.retain(|_, s| s.info.expires_at_ms > now_ms);
        }
        if self.live.len() >= SESSIONS_MAX {
            // Still full of live sessions: the one closest to expiry goes first.
            if let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, s)| s.info.expires_at_ms)
                .map(|(t, _)| *t)
            {
                self.live.remove(&oldest);
            }
        }
        info.expires_at_ms = now_ms.saturating_add(SESSION_TTL_MS);
        let token = SessionToken::new(self.me, random);
        self.live.insert(
            token,
            Session {
                peer,
                info: info.clone(),
            },
        );
        (token, info)
    }

    /// The session behind `token`, if it is live and bound to `peer`.
    pub fn get(&mut self, token: SessionToken, peer: &PeerId, now_ms: u64) -> Option<SessionInfo> {
        match self.live.get(&token) {
            Some(s) if s.info.expires_at_ms <= now_ms => {
                self.live.remove(&token);
                None
            }
            Some(s) if s.peer == *peer => Some(s.info.clone()),
            _ => None,
        }
    }

    /// Ends the session behind `token` if `peer` holds it.
    pub fn close(&mut self, token: SessionToken, peer: &PeerId) -> bool {
        if self.live.get(&token).is_some_and(|s| s.peer == *peer) {
            self.live.remove(&token);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::teller::Role;

    fn info() -> SessionInfo {
        SessionInfo {
            login: "admin".into(),
            role: Role::Admin,
            accounts: vec![],
            expires_at_ms: 0,
        }
    }

    #[test]
    fn sessions_are_bound_to_their_peer_and_expire() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = Sessions::new(BranchId(3));
        let (t, i) = s.open(a, info(), 42, 1_000);
        assert_eq!(t.issuer(), BranchId(3));
        assert_eq!(i.expires_at_ms, 1_000 + SESSION_TTL_MS);
        assert!(s.get(t, &a, 2_000).is_some());
        assert!(s.get(t, &b, 2_000).is_none(), "another peer's token");
        assert!(!s.close(t, &b));
        assert!(s.get(t, &a, 1_000 + SESSION_TTL_MS).is_none(), "expired");
        assert!(s.get(t, &a, 2_000).is_none(), "expired sessions are gone");
        let (t, _) = s.open(a, info(), 43, 1_000);
        assert!(s.close(t, &a));
        assert!(s.get(t, &a, 2_000).is_none());
    }
}
