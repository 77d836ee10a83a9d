//! The tellers a run sends through: a few connections to every branch, and the sessions
//! of the people who send (each account's customer, or each branch's admin), made on
//! first use and renewed by the teller library's own policy when a branch has lost them.
//!
//! Connection `k` to every branch uses the same key `k`, so a session made over one
//! branch's connection `k` is valid over any branch's connection `k`: a customer can send
//! through any branch (which forwards to the branch that issued the session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use teller_cli::money::{self, MoneyAnswer, RetryPolicy};
use teller_cli::{Target, Teller, TellerError};
use wire::teller::{TellerOp, TellerResponse};
use wire::{AccountNumber, BranchKey};

use crate::cluster::ADMIN_PASSWORD;

/// Every account's password in a generated bank.
pub const CUSTOMER_PASSWORD: &str = "customer-password";

/// Who sends a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Person {
    /// The customer who owns this account (logs in with the account number).
    Customer(AccountNumber),
    /// The admin of branch index `0` (logs in at that branch).
    Admin(usize),
}

impl Person {
    fn login(&self) -> (String, &'static str) {
        match self {
            Person::Customer(a) => (a.to_string(), CUSTOMER_PASSWORD),
            Person::Admin(_) => ("admin".into(), ADMIN_PASSWORD),
        }
    }
}

/// Connections to every branch and the sessions made over them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tellers {
    /// `conns[k][b]`: connection `k` to branch index `b`, logged out.
    conns: Arc<Vec<Vec<Teller>>>,
    /// The latest logged-in teller of each (person, key).
    sessions: Arc<Mutex<HashMap<(Person, usize), Teller>>>,
}

impl Tellers {
    /// `per_branch` connections to each branch.
    pub async fn connect(targets: &[Target], per_branch: usize) -> anyhow::Result<Tellers> {
        let mut conns = Vec::new();
        for _ in 0..per_branch.max(1) {
            let key = BranchKey::from_secret(rand::random());
            let mut row = Vec::new();
            for t in targets {
                row.push(Teller::connect_with_key(t, &key).await?);
            }
            conns.push(row);
        }
        Ok(Tellers {
            conns: Arc::new(conns),
            sessions: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// How many branches there are connections to.
    pub fn branches(&self) -> usize {
        self.conns.first().map_or(0, Vec::len)
    }

    fn key(&self, client: usize) -> usize {
        client % self.conns.len()
    }

    /// A teller of `who` over connection `key` to branch `entry`, logged in on first use.
    /// An admin always goes through their own branch: "admin" names the branch a login
    /// is sent to, so a renewal anywhere else would log in as another branch's admin.
    async fn teller(&self, who: &Person, key: usize, entry: usize) -> Result<Teller, TellerError> {
        let entry = match who {
            Person::Admin(home) => *home,
            Person::Customer(_) => entry,
        };
        let conn = &self.conns[key][entry];
        let known = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(who.clone(), key))
            .cloned();
        if let Some(t) = known {
            return Ok(conn.with_session_of(&t));
        }
        let mut fresh = conn.share();
        let (user, password) = who.login();
        fresh.login(&user, password).await?;
        self.keep(who, key, &fresh);
        Ok(conn.with_session_of(&fresh))
    }

    fn keep(&self, who: &Person, key: usize, teller: &Teller) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((who.clone(), key), teller.clone());
    }

    /// Logs `who` in over every connection key now, so that no measured request waits
    /// for a login (argon2 takes tens of milliseconds per login).
    pub async fn warm(&self, who: &[Person]) -> Result<(), TellerError> {
        for key in 0..self.conns.len() {
            for w in who {
                let entry = match w {
                    Person::Admin(b) => *b,
                    Person::Customer(a) => usize::from(a.branch().0).saturating_sub(1),
                };
                self.teller(w, key, entry).await?;
            }
        }
        Ok(())
    }

    /// Sends money request `op` as `who` through branch `entry` under the teller
    /// library's retry policy, as `teller-cli` does. A login that fails means the
    /// request was never sent: "not done".
    pub async fn send_money(
        &self,
        who: &Person,
        client: usize,
        entry: usize,
        op: TellerOp,
        policy: &RetryPolicy,
    ) -> MoneyAnswer {
        let id = op.money_id().unwrap_or(wire::TransferId(0));
        let sent = self
            .using(who, client, entry, async |t| {
                money::send(t, op, policy).await
            })
            .await;
        sent.unwrap_or_else(|e| MoneyAnswer::NotDone {
            id,
            why: money::Why::of(&TellerError::LoginNotDone(Box::new(e))),
        })
    }

    /// Sends `specs` as one bulk payment (`TransferBatch`) as `who` through branch
    /// `entry`, under the same policy line by line; answers in the order of `specs`.
    pub async fn send_batch(
        &self,
        who: &Person,
        client: usize,
        entry: usize,
        specs: &[wire::twopc::TransferSpec],
        policy: &RetryPolicy,
    ) -> Vec<MoneyAnswer> {
        let sent = self
            .using(who, client, entry, async |t| {
                money::send_batch(t, specs, policy).await
            })
            .await;
        sent.unwrap_or_else(|e| {
            let why = money::Why::of(&TellerError::LoginNotDone(Box::new(e)));
            let not_done = |s: &wire::twopc::TransferSpec| MoneyAnswer::NotDone {
                id: s.id,
                why: why.clone(),
            };
            specs.iter().map(not_done).collect()
        })
    }

    /// Sends `op` as `who` through branch `entry`, renewing a lost session once.
    pub async fn call(
        &self,
        who: &Person,
        client: usize,
        entry: usize,
        op: TellerOp,
    ) -> Result<TellerResponse, TellerError> {
        self.using(who, client, entry, async |t| t.call_renewing(op).await)
            .await?
    }

    /// Runs `f` with a teller of `who` through branch `entry`, keeping the session it
    /// ends with when `f` renewed it. Fails only when the first login fails.
    async fn using<R>(
        &self,
        who: &Person,
        client: usize,
        entry: usize,
        f: impl AsyncFnOnce(&mut Teller) -> R,
    ) -> Result<R, TellerError> {
        let key = self.key(client);
        let mut teller = self.teller(who, key, entry).await?;
        let before = teller.session();
        let r = f(&mut teller).await;
        if teller.session() != before {
            self.keep(who, key, &teller);
        }
        Ok(r)
    }

    /// Sends `op` as branch `b`'s admin, through branch `b`.
    pub async fn admin(&self, b: usize, op: TellerOp) -> Result<TellerResponse, TellerError> {
        self.call(&Person::Admin(b), 0, b, op).await
    }
}
