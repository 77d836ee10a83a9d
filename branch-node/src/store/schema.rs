//! The branch database schema, as numbered migrations applied in order at open.
//!
//! `PRAGMA user_version` holds the number of migrations applied. A migration is never
//! edited once released: a change is a new migration appended here.

/// Migration `i + 1` is `MIGRATIONS[i]`.
/// The migration (counted from 1) that moves national ids into the vault: the rows
/// from before it are sealed in code as it runs (`bank::seal_national_ids`).
pub(crate) const VAULT_MIGRATION: usize = 9;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the whole first schema.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;

CREATE TABLE customers (
    id            INTEGER PRIMARY KEY,
    national_id   TEXT NOT NULL UNIQUE,
    phone         TEXT NOT NULL,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    sms_opt_in    INTEGER NOT NULL CHECK (sms_opt_in IN (0, 1)),
    created_at_ms INTEGER NOT NULL
) STRICT;

-- Amounts are minor units. `pending_credit` is money promised by prepared incoming
-- transfers: not spendable, counted only for the overflow check.
CREATE TABLE accounts (
    serial         INTEGER PRIMARY KEY CHECK (serial BETWEEN 1 AND 99999999),
    customer_id    INTEGER NOT NULL REFERENCES customers(id),
    balance        INTEGER NOT NULL CHECK (balance >= 0),
    held           INTEGER NOT NULL DEFAULT 0 CHECK (held BETWEEN 0 AND balance),
    pending_credit INTEGER NOT NULL DEFAULT 0 CHECK (pending_credit >= 0),
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    opened_at_ms   INTEGER NOT NULL,
    closed_at_ms   INTEGER,
    CHECK ((status = 'closed') = (closed_at_ms IS NOT NULL))
) STRICT;

CREATE TABLE users (
    login           TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'customer')),
    customer_id     INTEGER REFERENCES customers(id),
    password_hash   TEXT NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    CHECK ((role = 'customer') = (customer_id IS NOT NULL))
) STRICT;

-- Movements done here in one step (deposit, withdrawal, local transfer), by id:
-- dedupe, the "same id, different content" refusal, and the outcome for a repeat.
CREATE TABLE transfers (
    id           BLOB PRIMARY KEY CHECK (length(id) = 16),
    content_hash BLOB NOT NULL,
    outcome      BLOB NOT NULL,
    at_ms        INTEGER NOT NULL
) STRICT;

-- Append-only; each entry's hash covers the previous entry's hash.
CREATE TABLE ledger (
    seq            INTEGER PRIMARY KEY,
    account_serial INTEGER NOT NULL REFERENCES accounts(serial),
    kind           TEXT NOT NULL
                   CHECK (kind IN ('deposit', 'withdrawal', 'transfer_debit', 'transfer_credit')),
    counterparty   TEXT,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    balance_after  INTEGER NOT NULL CHECK (balance_after >= 0),
    transfer_id    BLOB NOT NULL,
    at_ms          INTEGER NOT NULL,
    prev_hash      BLOB NOT NULL,
    hash           BLOB NOT NULL
) STRICT;
CREATE INDEX ledger_by_account ON ledger(account_serial, seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;

-- 2PC, coordinator role.
CREATE TABLE coordinated (
    id           BLOB PRIMARY KEY CHECK (length(id) = 16),
    spec         BLOB NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    decision     TEXT CHECK (decision IN ('commit', 'abort')),
    reason       BLOB,
    ended        INTEGER NOT NULL DEFAULT 0 CHECK (ended IN (0, 1))
) STRICT;
CREATE INDEX coordinated_unfinished ON coordinated(ended) WHERE ended = 0;

-- 2PC, participant role. `spec` is NULL when an abort arrived before any prepare.
CREATE TABLE legs (
    id          BLOB PRIMARY KEY CHECK (length(id) = 16),
    coordinator INTEGER NOT NULL,
    spec        BLOB,
    deadline_ms INTEGER NOT NULL,
    vote        BLOB,
    decision    TEXT CHECK (decision IN ('commit', 'abort'))
) STRICT;
CREATE INDEX legs_in_doubt ON legs(decision) WHERE decision IS NULL;

-- Signed envelopes, stored once, and which record each one justifies.
CREATE TABLE envelopes (
    hash  BLOB PRIMARY KEY,
    bytes BLOB NOT NULL
) STRICT;
CREATE TABLE evidence (
    transfer_id   BLOB NOT NULL,
    what          TEXT NOT NULL CHECK (what IN ('prepare', 'vote', 'decision')),
    envelope_hash BLOB NOT NULL REFERENCES envelopes(hash)
) STRICT;
CREATE INDEX evidence_by_transfer ON evidence(transfer_id);

-- SMS notifications, written in the same transaction as their ledger entry.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    phone           TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    delivered_at_ms INTEGER
) STRICT;
"#,
    // 2: teller sessions survive a restart; one-step records name their accounts, so
    // `transfer-status` can tell whose transfer an id is.
    r#"
-- A live teller session: only the SHA-256 of its token is kept, with the teller's
-- PeerId it is bound to. Deleting the user (closing its account) ends its sessions.
CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
    login         TEXT NOT NULL REFERENCES users(login) ON DELETE CASCADE,
    teller        BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_by_expiry ON sessions(expires_at_ms);

-- The account money left (withdrawal, local transfer) and arrived in (deposit, local
-- transfer), by serial; NULL in rows written before this migration.
ALTER TABLE transfers ADD COLUMN debit_serial INTEGER;
ALTER TABLE transfers ADD COLUMN credit_serial INTEGER;
"#,
    // 3: one-time codes; guessing is throttled in memory by the node, for known and
    // unknown logins alike, so the per-user lockout columns go.
    r#"
-- The TOTP secret of an enrolled login (NULL: not enrolled), and the last time step
-- whose code it used: a code works once.
ALTER TABLE users ADD COLUMN otp_secret BLOB CHECK (otp_secret IS NULL OR length(otp_secret) = 20);
ALTER TABLE users ADD COLUMN otp_last_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users DROP COLUMN failed_attempts;
ALTER TABLE users DROP COLUMN locked_until_ms;
"#,
    // 4: abort-only and no-vote legs are counted per coordinator (bounds per listed
    // branch). A yes vote is stored as the one byte 0x00.
    r#"
CREATE INDEX legs_abort_only ON legs(coordinator) WHERE spec IS NULL;
CREATE INDEX legs_no_votes ON legs(coordinator) WHERE vote IS NOT NULL AND vote != x'00';
"#,
    // 5: SMS messages are counted per phone per hour (a cap on what one customer's
    // movements can cost the bank).
    r#"
CREATE INDEX outbox_by_phone ON outbox(phone, created_at_ms);
"#,
    // 6: a replica's place in its branch's log: the id of the last log entry applied
    // (written in the same transaction as the entry's changes) and the membership.
    r#"
CREATE TABLE replica_state (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
"#,
    // 7: the fence (see `wire::fence`). This branch's epoch (raised by a restore), its
    // serving instance and the data dir that instance ran in are in `meta`; what it
    // witnesses of every other branch is here, one row per branch. Participant records
    // are read by deadline when a restored branch asks for its transfers.
    r#"
INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', 1);
CREATE TABLE fence_witness (
    branch   INTEGER PRIMARY KEY CHECK (branch BETWEEN 1 AND 999),
    epoch    INTEGER NOT NULL CHECK (epoch >= 1),
    instance INTEGER,
    head     BLOB,
    at_ms    INTEGER NOT NULL
) STRICT;
CREATE INDEX legs_by_deadline ON legs(deadline_ms, id);
"#,
    // 8: the login throttle's lasting part, so a restart or a new leader forgets
    // nothing: failed attempts of existing logins (at most one row per login, gone at
    // its next success) and the tellers trusted for a login (bounded, the oldest go).
    r#"
CREATE TABLE login_failures (
    login    TEXT PRIMARY KEY,
    failures INTEGER NOT NULL CHECK (failures >= 0),
    last_ms  INTEGER NOT NULL
) STRICT;
CREATE TABLE login_trust (
    login    TEXT NOT NULL,
    peer     BLOB NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (login, peer)
) STRICT;
CREATE INDEX login_trust_by_until ON login_trust(until_ms);
"#,
    // 9: the national id in the vault: a keyed hash (HMAC-SHA256 under the vault key,
    // hex) for exact lookups and uniqueness, the id sealed under the vault key, and
    // its masked form for listings. The whole file is encrypted besides.
    r#"
ALTER TABLE customers RENAME COLUMN national_id TO national_id_hash;
ALTER TABLE customers ADD COLUMN national_id_sealed BLOB;
ALTER TABLE customers ADD COLUMN national_id_masked TEXT NOT NULL DEFAULT '';
-- What admins did that a bank must be able to answer for (each national id revealed):
-- append-only, like the ledger.
CREATE TABLE audit_trail (
    seq     INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL
) STRICT;
CREATE TRIGGER audit_trail_no_update BEFORE UPDATE ON audit_trail
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_trail_no_delete BEFORE DELETE ON audit_trail
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#,
    // 10: each account's ledger entries linked newest to oldest (`account_prev`, the
    // newest in `accounts.last_seq`) instead of an index by account. Every entry added
    // an index entry at the end of its account's range: a random page per entry, and
    // writing (encrypting) those pages was most of a batch's commit. The account row is
    // written by the same movement anyway, so the link costs no page.
    r#"
ALTER TABLE ledger ADD COLUMN account_prev INTEGER;
ALTER TABLE accounts ADD COLUMN last_seq INTEGER;
DROP TRIGGER ledger_no_update;
UPDATE ledger SET account_prev = (
    SELECT max(p.seq) FROM ledger p
    WHERE p.account_serial = ledger.account_serial AND p.seq < ledger.seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
UPDATE accounts SET last_seq = (
    SELECT max(seq) FROM ledger WHERE account_serial = accounts.serial);
DROP INDEX ledger_by_account;
-- Every insert keeps its account's newest entry, whoever inserts.
CREATE TRIGGER ledger_account_tail AFTER INSERT ON ledger
    BEGIN UPDATE accounts SET last_seq = NEW.seq WHERE serial = NEW.account_serial; END;
"#,
];
