//! What a running branch exposes to its operator (`branch-node run --metrics-listen`):
//! Prometheus metrics (OpenMetrics text, encoded by prometheus-client), `/healthz`
//! (the process answers) and `/readyz` (the store reads and the 2PC engine runs, or a
//! replica follows a known leader; the peers connected are said, not required). One
//! process-wide set of metrics, counted where things happen; what is cheaper to read
//! than to count (legs in doubt, the SMS outbox) is read through the read-only pool
//! when scraped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::now_ms;
use crate::store::reader::Reader;
use crate::store::twopc;

/// A money request's kind and what it came to here.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoneyLabels {
    /// deposit, withdrawal or transfer.
    pub kind: String,
    /// committed, refused, pending, unknown, or the code of an unavailable answer.
    pub outcome: String,
}

/// One label: which kind, step or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

fn seconds_histogram() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub money: Family<MoneyLabels, Counter>,
    pub money_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub twopc_durable_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// The phases of transfers coordinated here: `voting` and `acks`.
    pub twopc_phase_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub writer_batch_ops: Histogram,
    /// Lines per `TransferBatch` (bulk payments, and a teller connection's coalesced
    /// transfers).
    pub transfer_batch_lines: Histogram,
    pub writer_commit_seconds: Histogram,
    pub in_doubt: Gauge,
    pub in_doubt_oldest_past_deadline_seconds: Gauge<f64, AtomicU64>,
    pub peers_connected: Gauge,
    /// This replica's Raft role: 0 not replicated, 1 follower or learner, 2 candidate,
    /// 3 leader.
    pub replica_role: Gauge,
    /// Log entries this replica holds but has not applied to its store yet.
    pub replica_lag_entries: Gauge,
    pub logins: Family<KindLabel, Counter>,
    pub sms_outbox: Gauge,
    pub sms_sent: Counter,
    pub sms_failures: Counter,
    pub sms_capped: Counter,
    pub twopc_messages_sent: Counter,
    pub streams_refused: Family<KindLabel, Counter>,
    pub streams_reopened: Counter,
    pub money_lines_unlogged: Counter,
    /// This copy's fence: 0 it may move money, 1 not confirmed (starting, or no other
    /// branch answered within the lease), 2 fenced (a restore replaced it).
    pub fence_state: Gauge,
    /// 1 while the store's last write batch failed (a full disk, a failing device), 0
    /// once one commits.
    pub store_writes_failing: Gauge,
    /// Why the last write batch failed, while it is failing.
    write_failure: std::sync::Mutex<Option<String>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("bankmate"),
            money: Family::default(),
            money_seconds: Family::new_with_constructor(seconds_histogram),
            twopc_durable_seconds: Family::new_with_constructor(seconds_histogram),
            twopc_phase_seconds: Family::new_with_constructor(seconds_histogram),
            writer_batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            transfer_batch_lines: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            writer_commit_seconds: seconds_histogram(),
            in_doubt: Gauge::default(),
            in_doubt_oldest_past_deadline_seconds: Gauge::default(),
            peers_connected: Gauge::default(),
            replica_role: Gauge::default(),
            replica_lag_entries: Gauge::default(),
            logins: Family::default(),
            sms_outbox: Gauge::default(),
            sms_sent: Counter::default(),
            sms_failures: Counter::default(),
            sms_capped: Counter::default(),
            money_lines_unlogged: Counter::default(),
            twopc_messages_sent: Counter::default(),
            streams_refused: Family::default(),
            streams_reopened: Counter::default(),
            fence_state: Gauge::default(),
            store_writes_failing: Gauge::default(),
            write_failure: std::sync::Mutex::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "money_answers",
            "Deposits, withdrawals and transfers run here, by kind and by the answer given",
            self.money.clone(),
        );
        r.register(
            "money_seconds",
            "Time from a money request's arrival here to its answer",
            self.money_seconds.clone(),
        );
        r.register(
            "replica_role",
            "This replica's Raft role: 0 not replicated, 1 follower or learner, 2 candidate, 3 leader",
            self.replica_role.clone(),
        );
        r.register(
            "replica_lag_entries",
            "Log entries this replica holds but has not applied to its store yet",
            self.replica_lag_entries.clone(),
        );
        r.register("twopc_durable_seconds", "Time to make one round's 2PC records durable, by step (prepare, decision, apply, other)", self.twopc_durable_seconds.clone());
        r.register(
            "twopc_phase_seconds",
            "Phases of the transfers coordinated here: voting (begun until decided) and acks (decided until every participant acknowledged)",
            self.twopc_phase_seconds.clone(),
        );
        r.register(
            "twopc_messages_sent",
            "Signed 2PC messages sent to other branches",
            self.twopc_messages_sent.clone(),
        );
        r.register(
            "streams_refused",
            "Inbound streams this node closed, by why (peer_limit: more than 8 of a protocol from one peer; framing: a frame too long or a body that does not decode)",
            self.streams_refused.clone(),
        );
        r.register(
            "streams_reopened",
            "Streams to other branches that ended before the other side's hello (dropped on arrival) and were opened again; nothing had been sent on them",
            self.streams_reopened.clone(),
        );
        r.register(
            "writer_batch_ops",
            "Operations per writer batch (one SQLite transaction, one fsync)",
            self.writer_batch_ops.clone(),
        );
        r.register(
            "transfer_batch_lines",
            "Transfers per TransferBatch request (bulk payments, coalesced teller transfers)",
            self.transfer_batch_lines.clone(),
        );
        r.register(
            "writer_commit_seconds",
            "Time of one writer batch's commit (the fsync)",
            self.writer_commit_seconds.clone(),
        );
        r.register(
            "in_doubt_legs",
            "Legs this branch voted yes on with no decision yet",
            self.in_doubt.clone(),
        );
        r.register(
            "in_doubt_oldest_past_deadline_seconds",
            "How far the oldest leg in doubt is past its prepare deadline (0 when none is)",
            self.in_doubt_oldest_past_deadline_seconds.clone(),
        );
        r.register(
            "peers_connected",
            "Listed branches with an open connection to this one",
            self.peers_connected.clone(),
        );
        r.register(
            "logins",
            "Login attempts by result: ok, a refusal code, throttled or overloaded",
            self.logins.clone(),
        );
        r.register(
            "sms_outbox",
            "SMS messages not delivered yet",
            self.sms_outbox.clone(),
        );
        r.register(
            "sms_sent",
            "SMS messages handed to the gateway",
            self.sms_sent.clone(),
        );
        r.register(
            "sms_failures",
            "SMS deliveries that failed (each retried later)",
            self.sms_failures.clone(),
        );
        r.register(
            "sms_capped",
            "SMS alerts not sent because their phone had its hourly cap",
            self.sms_capped.clone(),
        );
        r.register(
            "money_lines_unlogged",
            "Money answers not logged one line each (past the log's allowance per second)",
            self.money_lines_unlogged.clone(),
        );
        r.register(
            "fence_state",
            "This copy's fence: 0 it may move money, 1 not confirmed (starting, or no other branch answered within the lease), 2 fenced (a restore replaced it)",
            self.fence_state.clone(),
        );
        r.register(
            "store_writes_failing",
            "1 while the store's last write batch failed (a full disk, a failing device), 0 once one commits",
            self.store_writes_failing.clone(),
        );
    }

    /// Notes how the writer's last batch ended: `failed` is its error, if it failed.
    pub fn write_ended(&self, failed: Option<&String>) {
        // The writer's hot path: a healthy batch after healthy ones takes no lock.
        if failed.is_none() && self.store_writes_failing.get() == 0 {
            return;
        }
        self.store_writes_failing.set(i64::from(failed.is_some()));
        let mut last = self
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = failed.cloned();
    }

    /// Why the store's writes fail now, if they do.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a money answer of `kind` given `started` ago.
    pub fn money_answer(&self, kind: &str, outcome: &str, started: Instant) {
        let labels = MoneyLabels {
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.money.get_or_create(&labels).inc();
        self.money_seconds
            .get_or_create(&label(kind))
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one login attempt's `result`.
    pub fn login(&self, result: &str) {
        self.logins.get_or_create(&label(result)).inc();
    }
}

/// Money answers logged per second at most (one info line each, with the id); past
/// that, under load, they are counted in `money_lines_unlogged` instead.
pub const MONEY_LOG_LINES_PER_S: u64 = 200;

/// Whether one more money line may be logged this second.
pub fn log_line_allowed() -> bool {
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LINES: AtomicU64 = AtomicU64::new(0);
    let now = now_ms() / 1_000;
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LINES.store(0, Ordering::Relaxed);
    }
    LINES.fetch_add(1, Ordering::Relaxed) < MONEY_LOG_LINES_PER_S
}

/// A one-label set.
pub fn label(kind: &str) -> KindLabel {
    KindLabel {
        kind: kind.to_owned(),
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// What the endpoint needs to answer `/readyz` and refresh read-time gauges.
#[derive(Debug, Clone)]
pub struct Health {
    pub reader: Reader,
    /// False once the 2PC engine has stopped.
    pub engine_running: Arc<AtomicBool>,
    /// Branches listed besides this one.
    pub peers_listed: usize,
    /// This node's replica, if its branch is replicated.
    pub replica: Option<Arc<crate::replica::node::Replica>>,
    /// This branch's lease while this node may write its store.
    pub lease: tokio::sync::watch::Receiver<Option<super::fence::Lease>>,
}

/// Reads the legs in doubt and the outbox into their gauges.
async fn refresh(health: &Health) -> Result<(), String> {
    let (legs, outbox) = health
        .reader
        .read(|c, _| {
            let legs = twopc::in_doubt(c)?;
            let outbox: i64 = c.query_row(
                "SELECT count(*) FROM outbox WHERE delivered_at_ms IS NULL",
                [],
                |r| r.get(0),
            )?;
            Ok((legs, outbox))
        })
        .await
        .map_err(|e| e.to_string())?;
    let m = get();
    m.in_doubt
        .set(i64::try_from(legs.len()).unwrap_or(i64::MAX));
    let now = now_ms();
    let oldest = legs.iter().map(|l| now.saturating_sub(l.deadline_ms)).max();
    m.in_doubt_oldest_past_deadline_seconds
        .set(oldest.map_or(0.0, |ms| ms as f64 / 1000.0));
    m.sms_outbox.set(outbox);
    Ok(())
}

async fn metrics(State(health): State<Health>) -> Response {
    if let Err(e) = refresh(&health).await {
        tracing::warn!("metrics: cannot read the store: {e}");
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &get().registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store reads and the engine runs (a replica: while it leads and
/// serves, or follows a known leader and is caught up); the peers are reported.
async fn readyz(State(health): State<Health>) -> Response {
    let reads = health
        .reader
        .read(|c, _| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
        .is_ok();
    let (store, store_line) = match (reads, get().write_failure()) {
        (false, _) => (false, "failing".to_string()),
        (true, Some(why)) => (false, format!("writes failing ({why}); reads only")),
        (true, None) => (true, "open".to_string()),
    };
    let engine = health.engine_running.load(Ordering::Relaxed);
    let peers = get().peers_connected.get();
    let (role_ready, role) = match &health.replica {
        Some(r) => {
            let (ready, line) = r.readiness(engine);
            (ready, format!("replica: {line}\n"))
        }
        None => (engine, String::new()),
    };
    let engine = match (engine, &health.replica) {
        (true, _) => "running",
        (false, Some(_)) => "not running here (a replica runs it while it leads)",
        (false, None) => "stopped",
    };
    let (fence_ok, fence) = fence_line(&health);
    let body = format!(
        "store: {store_line}\nengine: {engine}\n{role}fence: {fence}\nother branches connected: {peers} of {}\n",
        health.peers_listed
    );
    let status = if store && role_ready && fence_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Whether the fence lets this node be ready, and what `/readyz` says of it. A replica
/// that does not lead holds no lease (its leader does): it is not held back by one.
fn fence_line(health: &Health) -> (bool, &'static str) {
    use super::fence::LeaseState;
    let lease = health
        .lease
        .borrow()
        .as_ref()
        .map(super::fence::Lease::state);
    let m = get();
    match lease {
        Some(LeaseState::Until(t)) if t > Instant::now() => {
            m.fence_state.set(0);
            (true, "this copy serves the branch (lease held)")
        }
        Some(LeaseState::Fenced { .. }) => {
            m.fence_state.set(2);
            (
                false,
                "FENCED: a restore replaced this copy; it no longer serves",
            )
        }
        Some(_) => {
            m.fence_state.set(1);
            (
                false,
                "not confirmed: no other branch has granted this copy's lease yet",
            )
        }
        None if health.replica.is_some() => (true, "held by the leader"),
        None => (false, "not confirmed yet"),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", routing::get(metrics))
        .route("/healthz", routing::get(healthz))
        .route("/readyz", routing::get(readyz))
        .with_state(health);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

/// Binds the metrics endpoint; its address is said on stdout and in the log.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| crate::p2p::AddressInUse {
                addr: addr.to_string(),
                why: e.to_string(),
                flag: "--metrics-listen",
            })?;
    Ok(listener)
}
