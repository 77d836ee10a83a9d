//! Seals a teller's requests with its own key ([`wire::seal`]), so a branch that passes
//! one on to the branch that issued the session can delay or drop it, never make or
//! change it.
//!
//! A request goes unsealed only where the connection reaches the issuing branch itself
//! (the connection proved the teller) and for a login (no session yet: a login passed
//! on gives a session bound to this teller's key, of no use to anyone else). The seal
//! expires [`SEAL_HORIZON_MS`] ahead on the issuing branch's clock, which the teller
//! learns from its login's answer.

use std::sync::Arc;

use wire::limits::SEAL_HORIZON_MS;
use wire::seal::Seal;
use wire::teller::{SessionToken, TellerOp, TellerRequest};
use wire::{BranchId, BranchKey};

/// A teller's key, what its connection reaches and its estimate of the issuing branch's
/// clock.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: Arc<BranchKey>,
    /// The branch the connection reaches, when known: its own sessions need no seal.
    direct: Option<BranchId>,
    /// The issuing branch's clock minus this machine's, in milliseconds.
    clock_ms: i64,
}

fn local_now_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Sealer {
    /// Seals with `key`; `direct` is the branch the connection reaches, if known.
    pub fn new(key: Arc<BranchKey>, direct: Option<BranchId>) -> Sealer {
        Sealer {
            key,
            direct,
            clock_ms: 0,
        }
    }

    /// The teller's PeerId (its key's).
    pub fn peer(&self) -> wire::PeerId {
        self.key.peer_id()
    }

    /// Learns the issuing branch's clock from its answer `branch_now_ms`.
    pub fn set_clock(&mut self, branch_now_ms: u64) {
        let branch = i64::try_from(branch_now_ms).unwrap_or(i64::MAX);
        self.clock_ms = branch.saturating_sub(local_now_ms());
    }

    /// The clock estimate of `other`, for a session learned over another connection.
    pub fn clock_of(&mut self, other: &Sealer) {
        self.clock_ms = other.clock_ms;
    }

    /// The request for `op` under `session`, sealed when it may be passed on.
    pub fn request(&self, session: Option<SessionToken>, op: TellerOp) -> TellerRequest {
        let mut request = TellerRequest::new(session, op);
        let Some(token) = session else {
            return request;
        };
        let to = token.issuer();
        if self.direct == Some(to) {
            return request;
        }
        let branch_now = local_now_ms().saturating_add(self.clock_ms);
        let expires = u64::try_from(branch_now).unwrap_or(0) + SEAL_HORIZON_MS;
        let nonce: u64 = rand::random();
        // Encoding fails only past the frame limit, which the branch refuses anyway.
        request.seal = Seal::make(&self.key, (to, nonce, expires), session, &request.op).ok();
        request
    }
}
