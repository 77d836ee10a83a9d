//! The teller's side of BankMate: connect to one branch (its key pinned), log in, and
//! send teller requests. Used by the `teller-cli` binary, the scenarios and the tests.
//! [`money`] holds the one retry policy for deposits, withdrawals and transfers.

pub mod batch;
pub mod coalesce;
pub mod money;
pub mod requests;
pub mod say;
pub mod sealer;
pub mod web;
pub mod when;

use std::path::Path;
use std::time::Duration;

use client::TELLER_PROTOCOL;
use client::network_file::NetworkFile;
use client::peer::{ClientError, PeerClient};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use wire::teller::{
    AccountsPage, Role, Scope, SessionToken, TellerOp, TellerResponse, Unavailable,
};
use wire::{BranchKey, Refusal};

/// How long connecting to a branch may take before the teller is told it is unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// How long a request is sent again while a replicated branch elects a new leader (its
/// replicas answer "not the leader, nothing was done" meanwhile).
pub const FAILOVER_WAIT_MS: u64 = 5_000;
/// The wait between those sends.
pub const FAILOVER_RETRY_MS: u64 = 50;
/// Longest one login may wait for its answer when the branch has other replicas to
/// try: well under the forward timeout, so a replica that stopped answering (paused,
/// cut off) costs a teller this much before the next is asked.
pub const LOGIN_ATTEMPT_MS: u64 = 2_500;

/// Why a teller request did not get a business answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TellerError {
    /// The bank refused the request, finally.
    #[error("{0}")]
    Refused(Refusal),
    /// The branch did not carry the request out now (see `may_have_happened`).
    #[error("{0}")]
    Unavailable(Unavailable),
    #[error("{0}")]
    Connection(#[from] ClientError),
    /// The login before a command got no answer or was not done: the command itself was
    /// never sent.
    #[error("could not log in ({0}); the command was not sent")]
    LoginNotDone(Box<TellerError>),
    #[error("{0}")]
    Usage(String),
    /// Input the bank would refuse, caught before sending (a mistyped account number).
    #[error("{0}")]
    Invalid(String),
    /// Input the bank would refuse for this reason (a bad amount), caught before
    /// sending: nothing was sent.
    #[error("{0}; nothing was sent")]
    Caught(Refusal),
    /// The branch answered with a kind of answer the request does not have: a bug on
    /// one side, and the request may have been carried out.
    #[error("the branch answered {asked} with {answered}, which it does not have")]
    Unexpected {
        asked: &'static str,
        answered: &'static str,
    },
}

/// Where to connect: a branch by name from a network file, or a full address.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: Multiaddr,
    pub peer: PeerId,
    /// The branch's other replicas, tried in turn when this one cannot be reached (any
    /// replica serves a teller: one that does not lead passes requests to the leader).
    pub others: Vec<(Multiaddr, PeerId)>,
    /// The branch, when the network file names it: requests for its own sessions go
    /// unsealed (the connection proves the teller there).
    pub branch: Option<wire::BranchId>,
    /// The network file, when the target came from one: its keys let a login passed on
    /// to another branch travel encrypted to that branch ([`wire::login_box`]).
    pub network: Option<std::sync::Arc<NetworkFile>>,
}

impl Target {
    /// Branch `name` in the network file at `path`, first listed address.
    pub fn by_name(path: &Path, name: &str) -> Result<Target, TellerError> {
        let net = NetworkFile::load(path).map_err(|e| TellerError::Usage(e.to_string()))?;
        let b = net.by_name(name).ok_or_else(|| {
            let names: Vec<&str> = net.branches().map(|b| b.name.as_str()).collect();
            TellerError::Usage(format!(
                "no branch named {name:?} in {} (branches: {})",
                path.display(),
                names.join(", ")
            ))
        })?;
        let mut listed = b
            .replicas
            .iter()
            .filter_map(|r| r.addresses.first().map(|a| (a.clone(), r.peer_id)));
        let (addr, peer) = listed
            .next()
            .ok_or_else(|| TellerError::Usage(format!("branch {name} lists no address")))?;
        Ok(Target {
            addr,
            peer,
            others: listed.collect(),
            branch: Some(b.id),
            network: Some(std::sync::Arc::new(net.clone())),
        })
    }

    /// Branch names for what people are told ([`say`]).
    pub fn names(&self) -> say::Names {
        let own = self
            .network
            .as_ref()
            .zip(self.branch)
            .and_then(|(n, b)| n.get(b))
            .map(|b| b.name.clone());
        say::Names::new(self.network.clone(), own)
    }

    /// The key (PeerId) of replica `replica` of this target's branch, when the network
    /// file lists it.
    pub fn replica_peer(&self, replica: u64) -> Option<PeerId> {
        let branch = self.network.as_ref()?.get(self.branch?)?;
        branch.replica(replica).map(|r| r.peer_id)
    }

    /// A multiaddr ending in `/p2p/<peer id>`, which pins the branch's key.
    pub fn by_addr(addr: &Multiaddr) -> Result<Target, TellerError> {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Ok(Target {
                addr: addr.clone(),
                peer,
                others: Vec::new(),
                branch: None,
                network: None,
            }),
            _ => Err(TellerError::Usage(format!(
                "address {addr} must end with /p2p/<peer id> so the branch's key is pinned"
            ))),
        }
    }
}

impl TellerError {
    /// `answered` came back to request `asked` (an operation's name), which never
    /// answers that.
    pub fn unexpected(asked: &'static str, answered: &TellerResponse) -> TellerError {
        TellerError::Unexpected {
            asked,
            answered: answered.kind(),
        }
    }

    /// Whether the request may have taken effect although no answer says so.
    pub fn may_have_happened(&self) -> bool {
        match self {
            TellerError::Unavailable(u) => u.may_have_happened(),
            TellerError::Connection(e) => e.may_have_arrived(),
            TellerError::Unexpected { .. } => true,
            TellerError::Refused(_)
            | TellerError::Usage(_)
            | TellerError::Invalid(_)
            | TellerError::Caught(_)
            | TellerError::LoginNotDone(_) => false,
        }
    }

    /// The branch the error is about, when it names one (out of reach, no answer).
    pub fn branch(&self) -> Option<wire::BranchId> {
        match self {
            TellerError::Unavailable(
                Unavailable::BranchUnreachable(b) | Unavailable::NoAnswer(b),
            ) => Some(*b),
            TellerError::LoginNotDone(inner) => inner.branch(),
            _ => None,
        }
    }

    /// A stable machine-readable code (snake case) for `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            TellerError::Refused(r) => r.code(),
            TellerError::Unavailable(u) => u.code(),
            TellerError::Connection(e) if e.may_have_arrived() => "no_answer",
            TellerError::Connection(_) => "branch_unreachable",
            TellerError::Usage(_) => "usage",
            TellerError::Invalid(_) => "invalid_input",
            TellerError::Caught(r) => r.code(),
            TellerError::Unexpected { .. } => "unexpected",
            TellerError::LoginNotDone(e) => e.code(),
        }
    }
}

/// Who logged in, kept so that a lost session (expired, or a branch restored from an
/// older copy) can be renewed without asking the person again.
#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The libp2p client of the teller protocol.
pub type TellerClient = PeerClient<wire::TellerRequest, TellerResponse>;

/// A branch's answer, with `Refused` and `Unavailable` as errors.
pub(crate) fn answer_of(r: TellerResponse) -> Result<TellerResponse, TellerError> {
    match r {
        TellerResponse::Refused(r) => Err(TellerError::Refused(r)),
        TellerResponse::Unavailable(u) => Err(TellerError::Unavailable(u)),
        other => Ok(other),
    }
}

/// A connection to one branch, with an optional logged-in session.
#[derive(Debug, Clone)]
pub struct Teller {
    client: TellerClient,
    sealer: sealer::Sealer,
    /// Transfers sent at once over this connection, batched per session.
    lanes: std::sync::Arc<coalesce::Lanes>,
    session: Option<SessionToken>,
    credentials: Option<Credentials>,
    pub role: Option<Role>,
    pub target: Target,
    /// How long a request that is safe to send again (a login, a read) keeps trying
    /// while the branch changes leaders or a replica stops answering.
    failover_wait: Duration,
}

impl Teller {
    /// Connects with a fresh random identity (tellers may use any key).
    pub async fn connect(target: &Target) -> Result<Teller, TellerError> {
        Teller::connect_with_key(target, &BranchKey::from_secret(rand::random())).await
    }

    /// Connects with identity `key`: a second connection with the same key is the same
    /// teller to every branch (sessions are bound to the key's PeerId).
    pub async fn connect_with_key(target: &Target, key: &BranchKey) -> Result<Teller, TellerError> {
        let wait = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let mut candidates: Vec<(Multiaddr, PeerId)> = vec![(target.addr.clone(), target.peer)];
        candidates.extend(target.others.iter().cloned());
        let client =
            PeerClient::connect_any(key.libp2p_keypair(), TELLER_PROTOCOL, candidates, wait)
                .await?;
        let sealer = sealer::Sealer::new(
            std::sync::Arc::new(BranchKey::from_secret(key.secret_bytes())),
            target.branch,
        );
        Ok(Teller {
            client,
            sealer,
            lanes: std::sync::Arc::default(),
            session: None,
            credentials: None,
            role: None,
            target: target.clone(),
            failover_wait: Duration::from_millis(FAILOVER_WAIT_MS),
        })
    }

    /// How many replicas of the branch this teller may use.
    pub fn replicas(&self) -> usize {
        self.client.candidates()
    }

    /// The replica in use now (an index into the branch's replicas).
    pub fn replica_in_use(&self) -> usize {
        self.client.current_index()
    }

    /// Moves from replica `from` (which did not answer in time) to the next, unless
    /// another request moved already.
    pub async fn move_on_from(&self, from: usize) {
        self.client.move_on_from(from).await;
    }

    /// Requests that are safe to send again (logins, reads) keep trying for up to
    /// `wait` through a change of leaders (`teller-cli --wait`).
    pub fn set_failover_wait(&mut self, wait: Duration) {
        self.failover_wait = wait;
    }

    /// Another teller over the same connection and key, not logged in: many people's
    /// sessions can share one connection.
    pub fn share(&self) -> Teller {
        Teller {
            client: self.client.clone(),
            sealer: self.sealer.clone(),
            lanes: self.lanes.clone(),
            session: None,
            credentials: None,
            role: None,
            target: self.target.clone(),
            failover_wait: self.failover_wait,
        }
    }

    /// A teller over this connection carrying `other`'s session and credentials: valid
    /// when both connections use the same key (a session is bound to the key).
    pub fn with_session_of(&self, other: &Teller) -> Teller {
        let mut sealer = self.sealer.clone();
        sealer.clock_of(&other.sealer);
        Teller {
            client: self.client.clone(),
            sealer,
            lanes: self.lanes.clone(),
            session: other.session,
            credentials: other.credentials.clone(),
            role: other.role,
            target: self.target.clone(),
            failover_wait: self.failover_wait,
        }
    }

    /// The session this teller sends, if logged in.
    pub fn session(&self) -> Option<SessionToken> {
        self.session
    }

    /// Sends `session` from now on (a session made over another connection).
    pub fn use_session(&mut self, session: Option<SessionToken>) {
        self.session = session;
    }

    /// Sends `op` with the current session; `Refused` and `Unavailable` answers are errors.
    /// A transfer goes with the others sent at the same time over this connection under
    /// this session, as one batch ([`coalesce`]); its answer is its own.
    pub async fn call(&self, op: TellerOp) -> Result<TellerResponse, TellerError> {
        if matches!(op, TellerOp::EnrollOtp { .. }) && passed_on(&self.target, self.session) {
            return Err(TellerError::Usage(ENROL_AT_HOME.into()));
        }
        // A replicated branch between leaders answers "not the leader", and a branch
        // whose fence has not confirmed it yet (it is starting) "not confirmed": nothing
        // was done either way; ask again while that passes. A request that is safe to
        // repeat (a login, a read) to a branch of several replicas is also sent again,
        // to the next replica, when the one in use did not answer.
        let repeatable = repeatable(&op);
        let wait = match repeatable {
            true => self.failover_wait,
            false => Duration::from_millis(FAILOVER_WAIT_MS),
        };
        let deadline = std::time::Instant::now() + wait;
        loop {
            let from = self.client.current_index();
            let answer = self.attempt(&op).await;
            let again = self.next_replica(&answer, from, repeatable).await;
            if !again || std::time::Instant::now() >= deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(FAILOVER_RETRY_MS)).await;
        }
    }

    /// Sends `op` once.
    async fn attempt(&self, op: &TellerOp) -> Result<TellerResponse, TellerError> {
        match (op, self.session) {
            (TellerOp::Transfer(spec), Some(session)) => {
                let via = (&self.client, &self.sealer);
                self.lanes.transfer(via, session, *spec).await
            }
            _ => {
                let request = self.sealer.request(self.session, op.clone());
                let is_login = matches!(op, TellerOp::Login { .. } | TellerOp::SealedLogin { .. });
                let answer = match is_login && self.client.candidates() > 1 {
                    true => {
                        let wait = Duration::from_millis(LOGIN_ATTEMPT_MS);
                        self.client.request_within(request, wait).await
                    }
                    false => self.client.request(request).await,
                };
                answer_of(answer?)
            }
        }
    }

    /// After `answer` from replica `from`: moves to the replica that leads (or the next)
    /// when this one does not serve or did not answer, and says whether to send again.
    async fn next_replica(
        &self,
        answer: &Result<TellerResponse, TellerError>,
        from: usize,
        repeatable: bool,
    ) -> bool {
        match answer {
            Err(TellerError::Unavailable(Unavailable::NotLeader { leader })) => {
                match leader.and_then(|l| self.target.replica_peer(l)) {
                    Some(peer) => self.client.move_to_peer(from, peer).await,
                    None => self.client.move_on_from(from).await,
                }
                true
            }
            Err(TellerError::Unavailable(Unavailable::NotConfirmed)) => true,
            // Worth sending again only where another replica may serve: a branch of one
            // process that does not answer is told to the teller at once.
            Err(TellerError::Unavailable(
                Unavailable::NoAnswer(_)
                | Unavailable::Overloaded
                | Unavailable::StoreFailed
                | Unavailable::Stopping,
            )) => repeatable && self.client.candidates() > 1,
            Err(TellerError::Connection(_)) => {
                self.client.move_on_from(from).await;
                repeatable && self.client.candidates() > 1
            }
            _ => false,
        }
    }

    /// Like [`Teller::call`], but a lost session is renewed (when this teller knows the
    /// credentials) and the request sent once more: safe, since a request answered
    /// "session expired" was not carried out.
    pub async fn call_renewing(&mut self, op: TellerOp) -> Result<TellerResponse, TellerError> {
        match self.call(op.clone()).await {
            Err(TellerError::Unavailable(Unavailable::SessionExpired)) if self.can_renew() => {
                self.renew().await?;
                self.call(op).await
            }
            other => other,
        }
    }

    /// Logs in; the session (and the credentials, to renew it) are kept.
    pub async fn login(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<TellerResponse, TellerError> {
        self.login_with_code(user, password, None).await
    }

    /// Logs in with the current one-time code of a login enrolled for them. The code is
    /// not kept: it works once, so renewing such a session needs the person again.
    pub async fn login_with_code(
        &mut self,
        user: &str,
        password: &str,
        otp: Option<&str>,
    ) -> Result<TellerResponse, TellerError> {
        let op = login_op(&self.target, &self.sealer.peer(), user, (password, otp));
        let r = self.call(op).await?;
        if let TellerResponse::LoggedIn {
            session,
            role,
            now_ms,
            ..
        } = &r
        {
            self.sealer.set_clock(*now_ms);
            self.session = Some(*session);
            self.role = Some(*role);
            self.credentials = Some(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            });
        }
        Ok(r)
    }

    /// Whether [`Teller::renew`] can log in again without asking anyone.
    pub fn can_renew(&self) -> bool {
        self.credentials.is_some()
    }

    /// Logs in again with the kept credentials.
    pub async fn renew(&mut self) -> Result<(), TellerError> {
        let Some(c) = self.credentials.clone() else {
            return Err(TellerError::Unavailable(Unavailable::SessionExpired));
        };
        self.login(&c.user, &c.password).await.map(|_| ())
    }

    /// Every account of the branch (or the network), page by page; the branches that
    /// did not answer are named in the answer's `unreachable`.
    pub async fn all_accounts(&mut self, scope: Scope) -> Result<TellerResponse, TellerError> {
        let (mut accounts, mut unreachable) = (Vec::new(), Vec::new());
        let mut after = None;
        loop {
            let page = AccountsPage {
                after,
                limit: wire::limits::PAGE_ROWS_MAX,
            };
            let got = self.accounts(scope, page).await?;
            accounts.extend(got.accounts);
            for b in got.unreachable {
                if !unreachable.contains(&b) {
                    unreachable.push(b);
                }
            }
            match got.next_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(TellerResponse::Accounts {
            accounts,
            next_after: None,
            unreachable,
        })
    }

    /// Forgets the session and the credentials after telling the branch.
    pub async fn logout(&mut self) -> Result<(), TellerError> {
        let r = self.call(TellerOp::Logout).await;
        self.session = None;
        self.role = None;
        self.credentials = None;
        r.map(|_| ())
    }
}

/// Why enrolment is not sent through another branch.
const ENROL_AT_HOME: &str = "enrol for one-time codes at your own branch: passed on by \
    another branch, the password typed again and the new secret would pass through it \
    unencrypted; nothing was sent";

/// Whether `op` may be sent again after an answer that did not come: it moves no money
/// and changes nothing a second send would do twice (a second login makes a second
/// session, which expires unused).
fn repeatable(op: &TellerOp) -> bool {
    matches!(
        op,
        TellerOp::Login { .. }
            | TellerOp::SealedLogin { .. }
            | TellerOp::Logout
            | TellerOp::Balance { .. }
            | TellerOp::History { .. }
            | TellerOp::TransferStatus { .. }
            | TellerOp::ListAccounts { .. }
            | TellerOp::ListTransactions { .. }
            | TellerOp::Trace { .. }
            | TellerOp::InDoubt
            | TellerOp::FindCustomer { .. }
    )
}

/// Whether requests under `session` go through the branch at `target` to another one
/// (`false` when not known: a target without a network file).
fn passed_on(target: &Target, session: Option<SessionToken>) -> bool {
    matches!((target.branch, session), (Some(here), Some(s)) if s.issuer() != here)
}

/// The login request of `teller` at `target`: sealed to the account's branch when the
/// login will be passed on to it (a customer's account at another branch than the one
/// connected to) and the network file names that branch's keys; plain otherwise.
fn login_op(
    target: &Target,
    teller: &PeerId,
    user: &str,
    (password, otp): (&str, Option<&str>),
) -> TellerOp {
    let secret = wire::login_box::LoginSecret {
        password: password.to_owned(),
        otp: otp.map(str::to_owned),
    };
    let passed_on = user
        .parse::<wire::AccountNumber>()
        .ok()
        .map(|a| a.branch())
        .filter(|&b| target.branch != Some(b));
    let keys = passed_on.and_then(|b| {
        let entry = target.network.as_ref()?.get(b)?;
        let keys: Vec<_> = entry
            .replicas
            .iter()
            .filter_map(|r| wire::BranchPublicKey::from_peer_id(&r.peer_id).ok())
            .collect();
        Some((b, keys)).filter(|(_, k)| !k.is_empty())
    });
    match keys {
        Some((to, keys)) => TellerOp::SealedLogin {
            user: user.to_owned(),
            secret: wire::login_box::SealedSecret::seal(
                &secret,
                (teller, user, to),
                &keys,
                rand::random(),
            ),
        },
        None => TellerOp::Login {
            user: user.to_owned(),
            password: secret.password,
            otp: secret.otp,
        },
    }
}

/// The teller key in file `path` (64 hex digits), made and written readable by its
/// owner only when the file does not exist yet.
pub fn identity(path: &Path) -> Result<BranchKey, TellerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: String| TellerError::Usage(format!("identity {}: {why}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            let mut secret = [0u8; 32];
            let ok = text.len() == 64
                && secret.iter_mut().enumerate().all(|(i, b)| {
                    u8::from_str_radix(text.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
                        .map(|v| *b = v)
                        .is_ok()
                });
            if !ok {
                return Err(bad("not 64 hex digits".into()));
            }
            Ok(BranchKey::from_secret(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| bad(e.to_string()))?;
            writeln!(file, "{hex}")
                .and_then(|()| file.sync_all())
                .map_err(|e| bad(e.to_string()))?;
            Ok(BranchKey::from_secret(secret))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// A ledger entry's kind in words, as tables and pages show it.
pub fn kind_words(k: wire::teller::EntryKind) -> &'static str {
    use wire::teller::EntryKind;
    match k {
        EntryKind::Deposit => "deposit",
        EntryKind::Withdrawal => "withdrawal",
        EntryKind::TransferDebit => "transfer out",
        EntryKind::TransferCredit => "transfer in",
    }
}

/// A fresh transfer id, made before the first send so every retry reuses it. Time
/// first (UUIDv7 shape), so a branch's indexes grow at their end.
/// Prints `bin`'s completion script for `shell`. clap_complete 4 names the bash
/// functions of a hyphenated binary's nested subcommands two ways (`teller__cli__...`
/// where it records the command line, `teller__subcmd__cli__...` where it completes),
/// so nothing past the first word completed; the second spelling is mended here.
pub fn print_completions(shell: clap_complete::Shell, command: &mut clap::Command, bin: &str) {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, bin, &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    if shell == clap_complete::Shell::Bash && bin.contains('-') {
        let wrong = bin.replace('-', "__subcmd__");
        script = script.replace(&wrong, &bin.replace('-', "__"));
    }
    print!("{script}");
}

pub fn new_transfer_id() -> wire::TransferId {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    wire::TransferId::from_time_and_random(unix_ms, rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login at another branch's account, passed on by the branch connected to, goes
    /// sealed to that branch's key: the branch in between never sees the password. One
    /// for the connected branch, or an admin's, goes as it is.
    #[test]
    fn a_login_passed_on_is_sealed_to_the_accounts_branch() {
        let keys: Vec<BranchKey> = (1..=2).map(|i| BranchKey::from_secret([i; 32])).collect();
        let text: String = keys
            .iter()
            .zip(1..)
            .map(|(k, id)| {
                format!(
                    "[[branch]]\nid = {id}\nname = \"b{id}\"\npublic_key = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{}\"]\n",
                    k.public(),
                    7000 + id
                )
            })
            .collect();
        let net = NetworkFile::parse(&text).expect("network");
        let mut target = Target::by_addr(
            &format!("/ip4/127.0.0.1/tcp/7002/p2p/{}", keys[1].peer_id())
                .parse()
                .expect("addr"),
        )
        .expect("target");
        target.branch = Some(wire::BranchId(2));
        target.network = Some(std::sync::Arc::new(net));
        let teller = BranchKey::from_secret([9; 32]);
        let theirs = wire::AccountNumber::new(wire::BranchId(1), 1).expect("account");
        let ours = wire::AccountNumber::new(wire::BranchId(2), 1).expect("account");
        let op = login_op(
            &target,
            &teller.peer_id(),
            &theirs.to_string(),
            ("her-password", None),
        );
        let TellerOp::SealedLogin { user, secret } = op else {
            panic!("{op:?}")
        };
        let at = (&teller.peer_id(), user.as_str(), wire::BranchId(1));
        let opened = secret.open(&keys[0], at).expect("b1 opens it");
        assert_eq!(opened.password, "her-password");
        assert!(secret.open(&keys[1], at).is_err(), "b2 cannot");
        let theirs_session = SessionToken::new(wire::BranchId(1), 7);
        assert!(
            passed_on(&target, Some(theirs_session)),
            "enrolment is not sent"
        );
        assert!(!passed_on(
            &target,
            Some(SessionToken::new(wire::BranchId(2), 7))
        ));
        for user in [ours.to_string(), "admin".to_owned()] {
            let op = login_op(&target, &teller.peer_id(), &user, ("pw-12345678", None));
            assert!(matches!(op, TellerOp::Login { .. }), "{op:?}");
        }
    }
}
