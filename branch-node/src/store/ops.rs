//! Writes as data: every change the writer makes to a branch's store is a [`WriteOp`]
//! that carries every input it needs (times, ids, password hashes, token hashes,
//! secrets), chosen before it reaches the writer. Applying the same ops in the same
//! order to two copies of one store gives the same store, ledger hash chain included:
//! that is what lets replicas of a branch apply one log of them.

use coordinator::{Command, Input, ShardError};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use wire::teller::{AccountView, NewCustomer, TransferState};
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use super::auth::{self, LoginOutcome, LoginRow};
use super::bank::{self, Movement};
use super::sessions::{self, SessionRow};
use super::writer::ConnShard;
use super::{StoreError, fence, outbox};

/// One change to a branch's store, with all its inputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteOp {
    /// 2PC storage commands (see [`coordinator::execute`]), run in order at `now_ms`.
    TwoPc { now_ms: u64, commands: Vec<Command> },
    /// A deposit or withdrawal, idempotent by `id`.
    Movement {
        kind: Movement,
        id: TransferId,
        account: AccountNumber,
        amount: Amount,
        now_ms: u64,
    },
    /// Opens an account (for a new customer, or for the owner of `existing`).
    OpenAccount {
        /// Its national id is blank: it travels sealed, as `national_id`.
        customer: NewCustomer,
        national_id: super::bank::SealedId,
        password_hash: String,
        existing: Option<AccountNumber>,
        now_ms: u64,
    },
    /// Closes an empty account and deletes its login.
    CloseAccount { account: AccountNumber, now_ms: u64 },
    /// Reads the sealed national id of `account`'s owner for admin `actor`, the reveal
    /// recorded in the audit trail in the same write.
    RevealNationalId {
        account: AccountNumber,
        actor: String,
        now_ms: u64,
    },
    /// Records a verified password's login: uses up its one-time code, says who it is.
    Login {
        login: String,
        row: LoginRow,
        otp: Option<String>,
        now_ms: u64,
    },
    /// Stores a new session (forgetting `evicted` and expired ones), then reads the
    /// views of `accounts` for the login's answer.
    OpenSession {
        row: SessionRow,
        evicted: Vec<[u8; 32]>,
        accounts: Vec<AccountNumber>,
        now_ms: u64,
    },
    /// Forgets one session (logout).
    CloseSession { token_hash: [u8; 32] },
    /// Stores a login's one-time-code secret.
    EnrollOtp {
        login: String,
        secret: Vec<u8>,
        replace: bool,
    },
    /// An SMS was handed to the gateway.
    SmsDelivered { id: i64, now_ms: u64 },
    /// An SMS failed; it is tried again at `next_attempt_ms`.
    SmsFailed { id: i64, next_attempt_ms: u64 },
    /// A change to the fence's records (`store/fence.rs`).
    Fence(FenceOp),
    /// A change to the login throttle's lasting part (`store/throttle.rs`).
    Throttle(super::throttle::ThrottleOp),
}

/// A change to the fence's records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FenceOp {
    /// The process `instance` serves from this store, in the data dir `home` names.
    Instance { instance: u64, home: u64 },
    /// What this branch witnesses of another.
    Witness(super::fence::WitnessRow),
    /// A witness told this copy that epoch `newest` replaced it: it never serves again.
    Fenced { newest: u64 },
}

impl WriteOp {
    /// Opens an account for `customer`: its national id sealed under `keys` here, so
    /// the plain id is in no queue or log entry.
    pub fn open_account(
        keys: &crate::keys::DataKeys,
        customer: &NewCustomer,
        password_hash: String,
        existing: Option<AccountNumber>,
    ) -> WriteOp {
        WriteOp::OpenAccount {
            national_id: super::bank::SealedId::new(keys, &customer.national_id),
            customer: NewCustomer {
                national_id: String::new(),
                ..customer.clone()
            },
            password_hash,
            existing,
            now_ms: super::now_ms(),
        }
    }
}

/// What a [`WriteOp`] answered; each op has one kind of answer.
#[derive(Debug)]
pub enum WriteResult {
    /// The inputs answering a `TwoPc` op's commands, in order; or the refusal that
    /// undid all of them.
    TwoPc(Result<Vec<Option<Input>>, ShardError>),
    /// Where a deposit or withdrawal stands.
    State(TransferState),
    /// An account opened or closed, or why not.
    Account(Result<AccountView, Refusal>),
    /// Who logged in, or why not.
    Login(LoginOutcome),
    /// The views of a new session's accounts.
    Accounts(Vec<AccountView>),
    /// Done, or why not.
    Done(Result<(), Refusal>),
    /// A sealed value, or why not.
    Sealed(Result<Vec<u8>, Refusal>),
}

impl WriteOp {
    /// Applies the op inside the writer's transaction. It is taken by value: a round's
    /// 2PC commands move into the shard calls instead of being copied.
    pub(crate) fn apply(self, c: &Connection, me: BranchId) -> Result<WriteResult, StoreError> {
        use WriteResult as R;
        Ok(match self {
            WriteOp::TwoPc { now_ms, commands } => R::TwoPc(two_pc(c, me, now_ms, commands)?),
            WriteOp::Movement {
                kind,
                id,
                account,
                amount,
                now_ms,
            } => R::State(bank::movement(c, me, kind, id, account, amount, now_ms)?),
            WriteOp::OpenAccount {
                customer,
                national_id,
                password_hash,
                existing,
                now_ms,
            } => R::Account(bank::open_account(
                c,
                me,
                (&customer, &national_id),
                &password_hash,
                existing,
                now_ms,
            )?),
            WriteOp::CloseAccount { account, now_ms } => {
                R::Account(bank::close_account(c, me, account, now_ms)?)
            }
            WriteOp::RevealNationalId {
                account,
                actor,
                now_ms,
            } => R::Sealed(bank::reveal_national_id(c, me, account, (&actor, now_ms))?),
            WriteOp::Login {
                login,
                row,
                otp,
                now_ms,
            } => R::Login(auth::login_record(
                c,
                me,
                &login,
                &row,
                true,
                otp.as_deref(),
                now_ms,
            )?),
            WriteOp::OpenSession {
                row,
                evicted,
                accounts,
                now_ms,
            } => {
                sessions::insert(c, &row, &evicted, now_ms)?;
                let mut views = Vec::with_capacity(accounts.len());
                for n in accounts {
                    views.extend(bank::view(c, me, n)?);
                }
                R::Accounts(views)
            }
            WriteOp::CloseSession { token_hash } => {
                sessions::delete(c, &token_hash)?;
                R::Done(Ok(()))
            }
            WriteOp::EnrollOtp {
                login,
                secret,
                replace,
            } => R::Done(auth::enroll_otp(c, &login, &secret, replace)?),
            WriteOp::SmsDelivered { id, now_ms } => {
                outbox::delivered(c, id, now_ms)?;
                R::Done(Ok(()))
            }
            WriteOp::SmsFailed {
                id,
                next_attempt_ms,
            } => {
                outbox::failed(c, id, next_attempt_ms)?;
                R::Done(Ok(()))
            }
            WriteOp::Throttle(op) => {
                super::throttle::apply(c, op)?;
                R::Done(Ok(()))
            }
            WriteOp::Fence(op) => {
                match op {
                    FenceOp::Instance { instance, home } => fence::set_instance(c, instance, home)?,
                    FenceOp::Witness(row) => fence::put_witness(c, &row)?,
                    FenceOp::Fenced { newest } => fence::set_meta(c, "fenced_by", newest)?,
                }
                R::Done(Ok(()))
            }
        })
    }
}

/// Runs 2PC storage commands in order; a refusal (found before anything is written)
/// comes back as a value, and the writer then undoes the whole op.
fn two_pc(
    conn: &Connection,
    me: BranchId,
    now_ms: u64,
    commands: Vec<Command>,
) -> Result<Result<Vec<Option<Input>>, ShardError>, StoreError> {
    let mut shard = ConnShard { conn, me, now_ms };
    let mut inputs = Vec::with_capacity(commands.len());
    for command in commands {
        match coordinator::execute(&mut shard, now_ms, command) {
            Ok(input) => inputs.push(input),
            Err(e @ (ShardError::Io(_) | ShardError::Defensive(_))) => {
                return Err(StoreError::Shard(e));
            }
            Err(refusal) => return Ok(Err(refusal)),
        }
    }
    Ok(Ok(inputs))
}

impl WriteResult {
    /// False when the op refused as a whole and its writes must be undone.
    pub(crate) fn keeps(&self) -> bool {
        !matches!(self, WriteResult::TwoPc(Err(_)))
    }
}

/// The answer of one kind of op, taken out of a [`WriteResult`].
macro_rules! answer {
    ($name:ident, $variant:ident, $t:ty) => {
        impl WriteResult {
            #[doc = concat!("The answer of an op answered `", stringify!($variant), "`.")]
            pub fn $name(self) -> Result<$t, StoreError> {
                match self {
                    WriteResult::$variant(v) => Ok(v),
                    other => Err(StoreError::Malformed(format!(
                        "the writer answered {other:?} where {} was expected",
                        stringify!($variant)
                    ))),
                }
            }
        }
    };
}
answer!(into_two_pc, TwoPc, Result<Vec<Option<Input>>, ShardError>);
answer!(into_state, State, TransferState);
answer!(into_account, Account, Result<AccountView, Refusal>);
answer!(into_login, Login, LoginOutcome);
answer!(into_accounts, Accounts, Vec<AccountView>);
answer!(into_done, Done, Result<(), Refusal>);
answer!(into_sealed, Sealed, Result<Vec<u8>, Refusal>);
