//! Teller sessions: a random token, issued at login, bound to the teller's PeerId and
//! expiring after `SESSION_TTL_MS`. A token shown by another peer is refused.
//!
//! The table lives in memory, keyed by the SHA-256 of the token, and is a copy of the
//! store's `sessions` rows: the service writes a row (durably) before it hands a token
//! out, deletes it at logout, and this table is loaded from the rows at start, so a
//! restart logs nobody out. This module does no IO; the service runs the store calls.

use std::collections::HashMap;

use libp2p::PeerId;
use sha2::{Digest, Sha256};
use wire::limits::{SESSION_TTL_MS, SESSIONS_MAX, SESSIONS_PER_LOGIN_MAX};
use wire::teller::{Role, SessionToken};
use wire::{AccountNumber, BranchId};

use crate::store::{SessionRow, UserInfo};

/// A live session as its issuing branch knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub login: String,
    pub role: Role,
    /// The customer's accounts (empty for an admin).
    pub accounts: Vec<AccountNumber>,
    /// The branch that issued the session (and holds it): this one.
    pub issuer: BranchId,
    pub expires_at_ms: u64,
}

#[derive(Debug)]
struct Session {
    peer: PeerId,
    info: SessionInfo,
}

/// A session just opened: the token for the teller, and what to store before the
/// token is handed out.
#[derive(Debug)]
pub struct Opened {
    pub token: SessionToken,
    pub info: SessionInfo,
    pub row: SessionRow,
    /// Sessions dropped to make room (the table was full): delete their rows too.
    pub evicted: Vec<[u8; 32]>,
}

/// The live sessions of one branch.
#[derive(Debug)]
pub struct Sessions {
    me: BranchId,
    live: HashMap<[u8; 32], Session>,
}

/// The key a token is kept (and stored) under.
pub fn token_hash(token: SessionToken) -> [u8; 32] {
    Sha256::digest(token.0.to_be_bytes()).into()
}

impl Sessions {
    /// No sessions yet, for branch `me`.
    pub fn new(me: BranchId) -> Self {
        Sessions {
            me,
            live: HashMap::new(),
        }
    }

    /// The sessions read back from the store at start; rows of a peer that does not
    /// parse are skipped (they cannot be shown by anyone).
    pub fn load(me: BranchId, rows: Vec<(SessionRow, UserInfo)>) -> Self {
        let mut s = Sessions::new(me);
        for (row, user) in rows {
            let Ok(peer) = PeerId::from_bytes(&row.teller) else {
                continue;
            };
            let info = SessionInfo {
                login: user.login,
                role: user.role,
                accounts: user.accounts,
                issuer: me,
                expires_at_ms: row.expires_at_ms,
            };
            s.live.insert(row.token_hash, Session { peer, info });
        }
        s
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Starts a session of `user` for `peer`; `random` comes from the caller's RNG.
    pub fn open(&mut self, peer: PeerId, user: UserInfo, random: u128, now_ms: u64) -> Opened {
        let mut evicted = self.make_room_for(&user.login);
        evicted.extend(self.make_room(now_ms));
        let token = SessionToken::new(self.me, random);
        let info = SessionInfo {
            login: user.login,
            role: user.role,
            accounts: user.accounts,
            issuer: self.me,
            expires_at_ms: now_ms.saturating_add(SESSION_TTL_MS),
        };
        let hash = token_hash(token);
        self.live.insert(
            hash,
            Session {
                peer,
                info: info.clone(),
            },
        );
        let row = SessionRow {
            token_hash: hash,
            login: info.login.clone(),
            teller: peer.to_bytes(),
            expires_at_ms: info.expires_at_ms,
        };
        Opened {
            token,
            info,
            row,
            evicted,
        }
    }

    /// Below [`SESSIONS_PER_LOGIN_MAX`] for `login`: drops its oldest sessions. One
    /// login's repeated logins can then never fill the table.
    fn make_room_for(&mut self, login: &str) -> Vec<[u8; 32]> {
        let mut mine: Vec<([u8; 32], u64)> = self
            .live
            .iter()
            .filter(|(_, s)| s.info.login == login)
            .map(|(k, s)| (*k, s.info.expires_at_ms))
            .collect();
        if mine.len() < SESSIONS_PER_LOGIN_MAX {
            return Vec::new();
        }
        mine.sort_by_key(|(_, expires)| *expires);
        let extra = mine.len() + 1 - SESSIONS_PER_LOGIN_MAX;
        let evicted: Vec<[u8; 32]> = mine.into_iter().take(extra).map(|(k, _)| k).collect();
        for k in &evicted {
            self.live.remove(k);
        }
        evicted
    }

    /// Below [`SESSIONS_MAX`]: drops expired sessions, then, if still full, the
    /// customer session closest to expiry (an admin's only when no customer has one).
    /// Returns the keys dropped while live.
    fn make_room(&mut self, now_ms: u64) -> Vec<[u8; 32]> {
        if self.live.len() < SESSIONS_MAX {
            return Vec::new();
        }
        self.live.retain(|_, s| s.info.expires_at_ms > now_ms);
        let mut evicted = Vec::new();
        while self.live.len() >= SESSIONS_MAX {
            let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, s)| (s.info.role == Role::Admin, s.info.expires_at_ms))
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.live.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// The session behind `token`, if it is live and bound to `peer`.
    pub fn get(&mut self, token: SessionToken, peer: &PeerId, now_ms: u64) -> Option<SessionInfo> {
        let key = token_hash(token);
        match self.live.get(&key) {
            Some(s) if s.info.expires_at_ms <= now_ms => {
                self.live.remove(&key);
                None
            }
            Some(s) if s.peer == *peer => Some(s.info.clone()),
            _ => None,
        }
    }

    /// The session behind `token` acts on `accounts` from now on (its customer's
    /// accounts as the store has them: one opened since the login included).
    pub fn set_accounts(&mut self, token: SessionToken, accounts: Vec<AccountNumber>) {
        if let Some(s) = self.live.get_mut(&token_hash(token)) {
            s.info.accounts = accounts;
        }
    }

    /// Ends the session behind `token` if `peer` holds it; returns the key to delete.
    pub fn close(&mut self, token: SessionToken, peer: &PeerId) -> Option<[u8; 32]> {
        let key = token_hash(token);
        if self.live.get(&key).is_some_and(|s| s.peer == *peer) {
            self.live.remove(&key);
            Some(key)
        } else {
            None
        }
    }

    /// Ends every session of `login` (its account was closed); returns how many.
    pub fn end_login(&mut self, login: &str) -> usize {
        let before = self.live.len();
        self.live.retain(|_, s| s.info.login != login);
        before - self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str) -> UserInfo {
        UserInfo {
            login: login.into(),
            role: Role::Admin,
            accounts: vec![],
        }
    }

    #[test]
    fn sessions_are_bound_to_their_peer_and_expire() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = Sessions::new(BranchId(3));
        let o = s.open(a, user("admin"), 42, 1_000);
        let t = o.token;
        assert_eq!(t.issuer(), BranchId(3));
        assert_eq!(o.info.expires_at_ms, 1_000 + SESSION_TTL_MS);
        assert_eq!(o.row.token_hash, token_hash(t));
        assert_eq!(o.row.teller, a.to_bytes());
        assert!(s.get(t, &a, 2_000).is_some());
        assert!(s.get(t, &b, 2_000).is_none(), "another peer's token");
        assert_eq!(s.close(t, &b), None);
        assert!(s.get(t, &a, 1_000 + SESSION_TTL_MS).is_none(), "expired");
        assert!(s.get(t, &a, 2_000).is_none(), "expired sessions are gone");
        let t = s.open(a, user("admin"), 43, 1_000).token;
        assert_eq!(s.close(t, &a), Some(token_hash(t)));
        assert!(s.get(t, &a, 2_000).is_none());
    }

    #[test]
    fn a_reloaded_table_knows_the_same_tokens_and_ending_a_login_ends_its_sessions() {
        let a = PeerId::random();
        let mut s = Sessions::new(BranchId(1));
        let t1 = s.open(a, user("001-00000001-46"), 1, 0);
        let t2 = s.open(a, user("admin"), 2, 0);
        let rows = vec![
            (t1.row.clone(), user("001-00000001-46")),
            (t2.row.clone(), user("admin")),
        ];
        let mut back = Sessions::load(BranchId(1), rows);
        assert_eq!(back.len(), 2);
        let info = back.get(t1.token, &a, 5).expect("survives a reload");
        assert_eq!(info.issuer, BranchId(1));
        assert_eq!(back.end_login("001-00000001-46"), 1);
        assert!(back.get(t1.token, &a, 5).is_none());
        assert!(back.get(t2.token, &a, 5).is_some());
    }

    #[test]
    fn one_logins_repeated_logins_never_push_out_another_session() {
        let a = PeerId::random();
        let mut s = Sessions::new(BranchId(1));
        let admin = s.open(a, user("admin"), 1, 0).token;
        let customer = |login: &str| UserInfo {
            role: Role::Customer,
            ..user(login)
        };
        let mut first = None;
        for i in 0..1_000u64 {
            let o = s.open(a, customer("001-00000001-46"), u128::from(i) + 2, i);
            first.get_or_insert(o.token);
        }
        assert_eq!(s.len(), 1 + SESSIONS_PER_LOGIN_MAX);
        assert!(
            s.get(admin, &a, 2_000).is_some(),
            "the admin is still logged in"
        );
        assert!(
            s.get(first.expect("one"), &a, 2_000).is_none(),
            "its own oldest went"
        );
    }
}
