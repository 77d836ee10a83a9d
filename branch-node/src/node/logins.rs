//! Logins and every other password check at a branch: the throttle (`guard.rs`), a
//! bound on concurrent argon2 work, one-time codes, and enrolment for them.
//!
//! Every path costs the same until the password is verified: a throttled attempt is
//! refused before the login is looked up; an admitted one reads the user row (or
//! finds none) and runs one argon2 verification (against a dummy hash for an unknown
//! login) on threads of their own, behind a bounded queue. Only a verified password
//! goes on to the writer (one-time code, session).
//!
//! A teller that logged in to a login before (trusted for it, `guard.rs`) has a lane
//! of its own: its checks wait in a queue of their own, taken first, with places a
//! flood of other attempts cannot fill, so the owner at their usual teller logs in
//! during a flood.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use wire::limits::{PASSWORD_CHECKS_RESERVED_PER_CORE, PASSWORD_CHECKS_WAITING_PER_CORE};
use wire::teller::Unavailable;

use super::guard::Guard;
use crate::store::throttle::Kept;
use crate::store::{LoginRow, auth};

/// One password to check, where its answer goes, and its place in its lane (given
/// back when the check is done or dropped, whatever became of the login that asked).
type Check = (String, LoginRow, tokio::sync::oneshot::Sender<bool>, Place);

/// The checks waiting for a password-check thread: the trusted lane's first.
#[derive(Debug, Default)]
struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Lanes {
    trusted: VecDeque<Check>,
    others: VecDeque<Check>,
    closed: bool,
}

/// Checks waiting in one lane, and how many may.
#[derive(Debug)]
struct Lane {
    waiting: AtomicUsize,
    max: usize,
}

impl Lane {
    fn new(max: usize) -> Lane {
        Lane {
            waiting: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place, or none when the lane is full.
    fn enter(lane: &Arc<Lane>) -> Option<Place> {
        if lane.waiting.fetch_add(1, Ordering::AcqRel) >= lane.max {
            lane.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(Arc::clone(lane)))
    }
}

/// A place taken in a lane, given back when dropped. It travels with its check: a
/// login whose request was dropped while its check waited (the teller went, a forward
/// timed out) used to keep its place for good, and a long busy run filled the lane.
#[derive(Debug)]
struct Place(Arc<Lane>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The login throttle and the argon2 budget of one branch.
#[derive(Debug)]
pub struct Logins {
    guard: Mutex<Guard>,
    /// Argon2 runs on a few threads of its own, never on the shared blocking pool:
    /// each check allocates 19 MiB, and the allocator keeps that much per thread that
    /// ever ran one (a flood grew a node to 750 MB on 500 pool threads).
    queue: Arc<Queue>,
    others: Arc<Lane>,
    trusted: Arc<Lane>,
}

impl Logins {
    /// Password checks run on at most `cores - 1` cores at once (one on a one-core
    /// machine), so a login flood always leaves a core for 2PC and the writer, with a
    /// bounded queue.
    pub fn new(cores: usize) -> Logins {
        let cores = cores.max(1);
        let queue = Arc::new(Queue::default());
        for i in 0..cores.saturating_sub(1).max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || password_checker(&queue));
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-check thread: {e}");
            }
        }
        Logins {
            guard: Mutex::default(),
            queue,
            others: Arc::new(Lane::new(cores * PASSWORD_CHECKS_WAITING_PER_CORE)),
            trusted: Arc::new(Lane::new(cores * PASSWORD_CHECKS_RESERVED_PER_CORE)),
        }
    }

    /// Takes in the throttle's lasting part, read from the store.
    pub fn load(&self, kept: Kept) {
        self.guard().load(kept);
    }

    pub(crate) fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs argon2 for `password` against `row` on the password-check threads, in the
    /// trusted lane when `trusted`; `Overloaded` at once when its lane is full.
    pub(crate) async fn verify(
        &self,
        password: String,
        row: LoginRow,
        trusted: bool,
    ) -> Result<bool, Unavailable> {
        let lane = if trusted { &self.trusted } else { &self.others };
        let place = Lane::enter(lane).ok_or(Unavailable::Overloaded)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut lanes = self
                .queue
                .lanes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match trusted {
                true => lanes.trusted.push_back((password, row, reply, place)),
                false => lanes.others.push_back((password, row, reply, place)),
            }
        }
        self.queue.ready.notify_one();
        answer.await.map_err(|_| Unavailable::Stopping)
    }
}

impl Drop for Logins {
    fn drop(&mut self) {
        self.queue
            .lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.queue.ready.notify_all();
    }
}

/// A password-check thread: takes checks off the queue, the trusted lane first, until
/// the branch's logins are dropped.
fn password_checker(queue: &Queue) {
    loop {
        let next = {
            let mut lanes = queue.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(c) = lanes
                    .trusted
                    .pop_front()
                    .or_else(|| lanes.others.pop_front())
                {
                    break Some(c);
                }
                if lanes.closed {
                    break None;
                }
                lanes = queue
                    .ready
                    .wait(lanes)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some((password, row, reply, _place)) = next else {
            return;
        };
        let _ = reply.send(auth::login_verify(&password, &row));
    }
}

/// What an on-site admin attempt's login count is kept under: apart from the login's
/// own, so strangers' failures elsewhere never delay an admin at the branch's machine
/// (whose own failures are throttled the same way, on their own).
pub(crate) const ON_SITE: &str = "\u{0}on-site";

#[cfg(test)]
mod tests {
    use super::*;

    /// With the other lane full (a flood), an attempt from a trusted teller still gets
    /// a place, and is checked before the flood's waiting checks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trusted_teller_has_places_a_flood_cannot_fill() {
        let logins = Arc::new(Logins::new(1));
        let flood: Vec<_> = (0..logins.others.max)
            .map(|i| {
                let logins = Arc::clone(&logins);
                tokio::spawn(async move {
                    logins
                        .verify(format!("guess-{i}"), LoginRow::Unknown, false)
                        .await
                })
            })
            .collect();
        while logins.others.waiting.load(Ordering::Acquire) < logins.others.max {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let r = logins
            .verify("one more".into(), LoginRow::Unknown, false)
            .await;
        assert!(matches!(r, Err(Unavailable::Overloaded)), "{r:?}");
        let r = logins.verify("owner".into(), LoginRow::Unknown, true).await;
        assert!(matches!(r, Ok(false)), "{r:?}");
        let still_waiting = logins.others.waiting.load(Ordering::Acquire);
        assert!(
            still_waiting >= logins.others.max - 3,
            "taken first: {still_waiting} wait"
        );
        for f in flood {
            assert!(matches!(f.await.expect("task"), Ok(false)));
        }
    }

    /// Logins dropped while their checks wait (their teller went, a forward timed out)
    /// give their places back once the checks are done: the lane does not fill for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_login_gives_its_place_back() {
        let logins = Arc::new(Logins::new(1));
        for round in 0..3 {
            for i in 0..logins.others.max {
                let guess = format!("guess-{round}-{i}");
                let check = logins.verify(guess, LoginRow::Unknown, false);
                let _ = tokio::time::timeout(std::time::Duration::ZERO, check).await;
            }
            let waited = std::time::Instant::now();
            while logins.others.waiting.load(Ordering::Acquire) > 0 {
                let kept = logins.others.waiting.load(Ordering::Acquire);
                assert!(waited.elapsed().as_secs() < 20, "{kept} places kept");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let r = logins
            .verify("owner".into(), LoginRow::Unknown, false)
            .await;
        assert!(matches!(r, Ok(false)), "{r:?}");
    }
}
