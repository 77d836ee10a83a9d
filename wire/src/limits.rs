//! Every limit of the system, as named constants with their unit last.
//!
//! A limit lives here so that the node, the teller and the scenarios agree on it and a
//! reader finds all of them in one place (TigerBeetle `constants.zig`).

/// Largest encoded message, in bytes, that any decoder accepts. A batch of
/// [`BATCH_TRANSFERS_MAX`] prepares is about 100 KiB, so this leaves ample room.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// Largest encoded record a branch keeps or replicates (a writer's op, a replica log
/// entry), in bytes: one round's storage commands may carry many envelopes.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

/// Most transfers carried by one batched 2PC message (prepare, vote, decision, ack, status).
pub const BATCH_TRANSFERS_MAX: usize = 1024;

/// Most lines in one teller `TransferBatch` request (bulk payments): one request fills
/// at most one batched 2PC message per destination. `teller-cli transfer-batch` sends
/// a longer file in chunks of this size or less.
pub const BATCH_LINES_MAX: usize = BATCH_TRANSFERS_MAX;

/// Largest amount, in minor units, that one deposit, withdrawal or transfer may move:
/// 10,000,000,000.00. Balances may grow past it; arithmetic on them is checked.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;

/// Minor units in one major unit (cents per dollar, paise per rupee).
pub const MINOR_PER_MAJOR: i64 = 100;

/// Highest branch code an account number can carry (three digits in the human form).
pub const ACCOUNT_BRANCH_MAX: u16 = 999;

/// Highest account serial within a branch (eight digits in the human form).
pub const ACCOUNT_SERIAL_MAX: u32 = 99_999_999;

/// Longest login name, national id, phone number or person's name, in bytes.
pub const TEXT_FIELD_BYTES_MAX: usize = 128;

/// Longest password accepted, in bytes (argon2 input is bounded to keep logins cheap).
pub const PASSWORD_BYTES_MAX: usize = 256;

/// Most rows one page of history or of a listing may hold.
pub const PAGE_ROWS_MAX: u32 = 500;

/// Most cross-branch transfers one coordinator runs at once; more are refused `Overloaded`.
pub const IN_FLIGHT_TRANSFERS_MAX: usize = 65_536;

/// Time a participant has to vote before the coordinator aborts, in milliseconds.
pub const PREPARE_TIMEOUT_MS: u64 = 5_000;

/// A coordinator sends its prepare again to every participant that has not voted, this
/// long after the last send, until the deadline, in milliseconds. A prepare or a vote
/// lost on the way would otherwise cost the transfer its whole deadline and an abort;
/// a participant answers a repeated prepare with its recorded vote.
pub const PREPARE_RESEND_MS: u64 = 1_000;

/// Furthest ahead a prepare's deadline may lie when it arrives, in milliseconds; a
/// participant votes no to a later one. Bounds how long a coordinator (honest or not)
/// can keep a participant's money held before the participant may ask and, by presumed
/// abort, release it. Twelve prepare timeouts: room for clock skew between branches.
pub const PREPARE_DEADLINE_MAX_MS: u64 = 12 * PREPARE_TIMEOUT_MS;

/// Abort-only legs (an abort that arrived before any prepare) one branch keeps per
/// coordinator; beyond it such an abort is acknowledged but not stored (presumed abort
/// makes the record a convenience, and a listed branch could otherwise fill the disk).
pub const ABORT_ONLY_LEGS_PER_PEER_MAX: u64 = 100_000;

/// A leg in doubt this long past its deadline is alerted (log line and counter), in
/// milliseconds: recovery should have settled it well before (ask, backoff up to
/// [`RETRY_BACKOFF_MAX_MS`]), so its coordinator is down or misbehaving.
pub const IN_DOUBT_ALERT_MS: u64 = 60_000;

/// Refused prepares (legs voted no) one branch keeps per coordinator; beyond it the no
/// vote is sent but not stored (a no vote need not be durable under presumed abort).
pub const NO_VOTE_LEGS_PER_PEER_MAX: u64 = 100_000;

/// First wait before a coordinator re-sends an unacknowledged decision, in milliseconds.
pub const DECISION_RESEND_MS: u64 = 500;

/// Wait past a prepare's deadline before an in-doubt participant asks, in milliseconds.
pub const STATUS_QUERY_DELAY_MS: u64 = 500;

/// Longest wait between retries (decision re-sends, status queries), in milliseconds.
pub const RETRY_BACKOFF_MAX_MS: u64 = 8_000;

/// Failed logins to one login, from tellers it does not trust, before each further
/// attempt must wait (known and unknown logins alike).
pub const LOGIN_FREE_FAILURES: u32 = 5;

/// Failed logins from one teller peer, to any logins, before each further attempt must
/// wait. Higher than per login: one teller terminal serves many customers.
pub const LOGIN_PEER_FREE_FAILURES: u32 = 20;

/// The first wait once the free failures are used, in milliseconds; it doubles with
/// every further failure up to [`LOGIN_DELAY_MAX_MS`].
pub const LOGIN_DELAY_FIRST_MS: u64 = 1_000;

/// Longest wait between login attempts, in milliseconds. There is no lockout: a
/// stranger's guessing can delay a login's owner this long at most, and not at all on
/// a teller the owner logged in from before.
pub const LOGIN_DELAY_MAX_MS: u64 = 15 * 60 * 1_000;

/// A login's or a peer's failure count is forgotten after this long without a failure,
/// in milliseconds.
pub const LOGIN_FORGET_MS: u64 = 24 * 60 * 60 * 1_000;

/// How long a teller peer that logged in to a login stays trusted for it (its attempts
/// skip that login's throttle, so strangers cannot delay its owner), in milliseconds.
pub const LOGIN_TRUST_MS: u64 = 30 * 24 * 60 * 60 * 1_000;

/// Most logins, peers and trusted pairs each throttle table keeps.
pub const LOGIN_THROTTLE_KEYS_MAX: usize = 100_000;

/// Payee lookups (whose name a transfer would pay) one login may make per
/// [`PAYEE_WINDOW_MS`]: enough for a person confirming transfers, too few to read the
/// bank's customer names by trying account numbers.
pub const PAYEE_LOOKUPS_PER_WINDOW: u32 = 30;
/// The window [`PAYEE_LOOKUPS_PER_WINDOW`] counts in.
pub const PAYEE_WINDOW_MS: u64 = 60_000;
/// Most logins the payee lookup counts are kept for (about 100 bytes each).
pub const PAYEE_LOGINS_MAX: usize = 10_000;

/// Password checks (argon2, ~60 ms and 19 MiB each) that may wait for a core, per core;
/// a login beyond that is told "overloaded" at once.
pub const PASSWORD_CHECKS_WAITING_PER_CORE: usize = 8;

/// Further places per core for the checks of tellers that logged in to that login
/// before (the owner's usual teller): a flood of other attempts cannot take them.
pub const PASSWORD_CHECKS_RESERVED_PER_CORE: usize = 4;

/// Digits in a one-time code (RFC 6238 TOTP, as authenticator apps show them).
pub const OTP_DIGITS: usize = 6;

/// Length of one TOTP time step, in milliseconds (RFC 6238's default, 30 s).
pub const OTP_STEP_MS: u64 = 30_000;

/// Time steps either side of now whose code is still accepted (clock drift).
pub const OTP_DRIFT_STEPS: u64 = 1;

/// Most operations the store's writer puts in one SQLite transaction (group commit).
pub const WRITER_BATCH_OPS_MAX: usize = 4_096;

/// Committed writer batches that wait for their fsync at most (the writer waits).
pub const WRITER_SYNC_QUEUE_BATCHES: usize = 4;

/// How long a teller session lives after login, in milliseconds.
pub const SESSION_TTL_MS: u64 = 30 * 60 * 1_000;

/// Most live teller sessions one branch keeps; beyond it the customer session closest
/// to expiry goes first (an admin's only when no customer holds one).
pub const SESSIONS_MAX: usize = 100_000;

/// Most live sessions of one login; its oldest goes first beyond it, so one login's
/// repeated logins can never push anyone else's session out.
pub const SESSIONS_PER_LOGIN_MAX: usize = 16;

/// How long a node waits for another branch to answer a forwarded request, in
/// milliseconds. Longer than a transfer's prepare timeout (the forwarded transfer is
/// decided within it), shorter than a teller's request timeout (10 s), so a teller
/// hears "no answer from branch N" from its branch before its own wait ends.
pub const FORWARD_TIMEOUT_MS: u64 = 8_000;

/// The largest deposit a customer may make into their own account, in minor units,
/// unless `branch-node init --customer-deposit-max` set another: 10,000.00. Larger
/// deposits are made by an admin (cash a person hands over is counted by staff).
pub const CUSTOMER_DEPOSIT_MAX_DEFAULT_MINOR: i64 = 1_000_000;

/// How far ahead a teller's seal may expire, in milliseconds on the clock of the branch
/// that runs the request ([`crate::seal`]): a request a branch in between holds back is
/// void after this. Longer than [`FORWARD_TIMEOUT_MS`], so a forward is never refused
/// for a seal that lapsed on the way.
pub const SEAL_HORIZON_MS: u64 = 15_000;

/// How much further than [`SEAL_HORIZON_MS`] ahead a seal may expire and still be
/// taken: the teller's estimate of the branch's clock is off by a round trip.
pub const SEAL_SLACK_MS: u64 = 2_000;

/// Seals a branch remembers (each until it expires) to take each one once; past it a
/// forwarded request is answered "overloaded". About 64 bytes each.
pub const SEALS_REMEMBERED_MAX: usize = 65_536;

/// Seals of one session a branch remembers at once: one teller cannot fill the memory.
pub const SEALS_PER_SESSION_MAX: usize = 1_024;

/// Teller and forwarded requests one peer may have in service at a branch at once;
/// more are answered "overloaded". A branch forwarding for many tellers is one peer.
pub const REQUESTS_PER_PEER_MAX: usize = 256;

/// Teller and forwarded requests a branch serves at once, from all peers.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4_096;

/// Requests a branch forwards to one other branch at once; more are answered
/// "overloaded" at the forwarding branch, so one link carries a bounded share.
pub const FORWARDS_PER_BRANCH_MAX: usize = 256;

/// Requests of one teller a branch forwards at once (to all branches together): a
/// teller past it is told "overloaded", so one teller cannot take every forward place.
pub const FORWARDS_PER_TELLER_MAX: usize = 32;

const _: () = assert!(FORWARDS_PER_TELLER_MAX < FORWARDS_PER_BRANCH_MAX);

/// Longest a fault switch may delay a link, in milliseconds.
pub const LINK_DELAY_MS_MAX: u32 = 60_000;

/// How long a witness's grant of a branch's fence claim lets the branch move money, in
/// milliseconds, counted from when the claim was sent, unless the network file says
/// otherwise (`fence_lease_ms`). A branch that no other branch answers for this long
/// stops moving money (it cannot know that a copy of it has not been restored
/// elsewhere); reads, logins and 2PC recovery go on.
pub const FENCE_LEASE_MS: u64 = 30_000;

/// The shortest and longest lease a network file may set.
pub const FENCE_LEASE_MS_MIN: u64 = 5_000;
pub const FENCE_LEASE_MS_MAX: u64 = 600_000;

/// How often a serving branch renews its fence claim at every other branch.
pub const FENCE_RENEW_MS: u64 = 1_000;

/// How long a witness waits after an instance's last renewal before it lets another
/// copy of the branch take over (or a restore register a new epoch), for a lease of
/// `lease_ms`: the lease plus half again, for the two machines' clocks running at
/// different rates and the claim's time in flight.
pub const fn fence_grace_ms(lease_ms: u64) -> u64 {
    lease_ms + lease_ms / 2
}

/// Oldest fence claim a witness acts on, by its own clock against the claim's, in
/// milliseconds (room for clocks that disagree).
pub const FENCE_CLAIM_TTL_MS: u64 = 120_000;

/// A money answer whose lease ran out while it was carried out waits this long, in
/// milliseconds, for the lease to be renewed before it is answered "not known".
pub const FENCE_ANSWER_WAIT_MS: u64 = 3_000;

const _: () = assert!(
    FENCE_RENEW_MS * 5 <= FENCE_LEASE_MS_MIN,
    "several renewals per lease"
);
const _: () = assert!(FENCE_LEASE_MS_MIN <= FENCE_LEASE_MS && FENCE_LEASE_MS <= FENCE_LEASE_MS_MAX);
const _: () = assert!(
    FENCE_ANSWER_WAIT_MS > 2 * FENCE_RENEW_MS,
    "a renewal can arrive"
);

const _: () = assert!(FORWARD_TIMEOUT_MS < SEAL_HORIZON_MS);
const _: () = assert!(
    PREPARE_TIMEOUT_MS < FORWARD_TIMEOUT_MS,
    "a forwarded transfer is decided before its forward times out"
);
