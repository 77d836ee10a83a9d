//! The teller's side of BankMate: connect to one branch (its key pinned), log in, and
//! send teller requests. Used by the `teller-cli` binary, the scenarios and the tests.

use std::path::Path;
use std::time::Duration;

use branch_node::network_file::NetworkFile;
use branch_node::p2p::client::{ClientError, PeerClient};
use branch_node::p2p::{TELLER_PROTOCOL, WireCodec};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use wire::teller::{Role, SessionToken, TellerOp, TellerRequest, TellerResponse};
use wire::{BranchKey, Refusal};

/// How long connecting to a branch may take before the teller is told it is unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Why a teller request did not get a business answer.
#[derive(Debug, thiserror::Error)]
pub enum TellerError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Connection(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    /// Input the bank would refuse, caught before sending (a mistyped account number).
    #[error("{0}")]
    Invalid(String),
    #[error("unexpected answer from the branch: {0}")]
    Unexpected(String),
}

/// Where to connect: a branch by name from a network file, or a full address.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: Multiaddr,
    pub peer: PeerId,
}

impl Target {
    /// Branch `name` in the network file at `path`, first listed address.
    pub fn by_name(path: &Path, name: &str) -> Result<Target, TellerError> {
        let net = NetworkFile::load(path)
            .map_err(|e| TellerError::Usage(format!("{}: {e}", path.display())))?;
        let b = net.by_name(name).ok_or_else(|| {
            let names: Vec<&str> = net.branches().map(|b| b.name.as_str()).collect();
            TellerError::Usage(format!(
                "no branch named {name:?} in {} (branches: {})",
                path.display(),
                names.join(", ")
            ))
        })?;
        let addr = b
            .addresses
            .first()
            .cloned()
            .ok_or_else(|| TellerError::Usage(format!("branch {name} lists no address")))?;
        Ok(Target {
            addr,
            peer: b.peer_id,
        })
    }

    /// A multiaddr ending in `/p2p/<peer id>`, which pins the branch's key.
    pub fn by_addr(addr: &Multiaddr) -> Result<Target, TellerError> {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Ok(Target {
                addr: addr.clone(),
                peer,
            }),
            _ => Err(TellerError::Usage(format!(
                "address {addr} must end with /p2p/<peer id> so the branch's key is pinned"
            ))),
        }
    }
}

/// A connection to one branch, with an optional logged-in session.
#[derive(Debug, Clone)]
pub struct Teller {
    client: PeerClient<WireCodec<TellerRequest, TellerResponse>>,
    session: Option<SessionToken>,
    pub role: Option<Role>,
    pub target: Target,
}

impl Teller {
    /// Connects with a fresh random identity (tellers may use any key).
    pub async fn connect(target: &Target) -> Result<Teller, TellerError> {
        let key = BranchKey::from_secret(rand::random());
        let client = PeerClient::connect(
            key.libp2p_keypair(),
            TELLER_PROTOCOL,
            target.addr.clone(),
            target.peer,
            Duration::from_millis(CONNECT_TIMEOUT_MS),
        )
        .await?;
        Ok(Teller {
            client,
            session: None,
            role: None,
            target: target.clone(),
        })
    }

    /// Sends `op` with the current session; a `Refused` answer is an error.
    pub async fn call(&self, op: TellerOp) -> Result<TellerResponse, TellerError> {
        let request = TellerRequest {
            session: self.session,
            op,
        };
        match self.client.request(request).await? {
            TellerResponse::Refused(r) => Err(TellerError::Refused(r)),
            other => Ok(other),
        }
    }

    /// Logs in; the session is kept for later calls.
    pub async fn login(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<TellerResponse, TellerError> {
        let r = self
            .call(TellerOp::Login {
                user: user.to_owned(),
                password: password.to_owned(),
            })
            .await?;
        if let TellerResponse::LoggedIn { session, role, .. } = &r {
            self.session = Some(*session);
            self.role = Some(*role);
        }
        Ok(r)
    }

    /// Forgets the session after telling the branch.
    pub async fn logout(&mut self) -> Result<(), TellerError> {
        let r = self.call(TellerOp::Logout).await;
        self.session = None;
        self.role = None;
        r.map(|_| ())
    }
}

/// A fresh transfer id, made before the first send so every retry reuses it. Time
/// first (UUIDv7 shape), so a branch's indexes grow at their end.
pub fn new_transfer_id() -> wire::TransferId {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    wire::TransferId::from_time_and_random(unix_ms, rand::random())
}
