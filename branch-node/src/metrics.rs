//! The node's metrics: one process-wide set, counted where things happen, defined in one
//! table ([`Metrics`]) that makes each metric and registers it, so none can exist without
//! being served on `/metrics`. A leaf: it imports nothing from the rest of the crate, so
//! the store, the swarm and the replicas count here without depending on the node. The
//! endpoint that serves them (and what is read at scrape time) is `node::readiness`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, Once, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Defines [`Metrics`] from a table of `field: Type = maker, "name", "help";` rows: each
/// row is a public field (its help is its doc), made and registered under
/// `bankmate_<name>` in one step.
macro_rules! metrics_table {
    ($( $field:ident: $ty:ty = $make:expr, $name:literal, $help:literal; )*) => {
        /// The node's metrics.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $( #[doc = $help] pub $field: $ty, )*
            /// Why the last write batch failed, while it is failing.
            write_failure: Mutex<Option<String>>,
        }

        impl Metrics {
            fn new() -> Metrics {
                let mut registry = Registry::with_prefix("bankmate");
                $(
                    let $field: $ty = $make;
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field,)* write_failure: Mutex::default() }
            }
        }

        /// Every metric's name as served, without the `bankmate_` prefix.
        pub const NAMES: &[&str] = &[$($name),*];
    };
}

metrics_table! {
    money: Family<MoneyLabels, Counter> = Family::default(),
        "money_answers",
        "Deposits, withdrawals and transfers run here, by kind and by the answer given";
    money_seconds: Family<KindLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(seconds_histogram),
        "money_seconds",
        "Time from a money request's arrival here to its answer";
    twopc_durable_seconds: Family<KindLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(seconds_histogram),
        "twopc_durable_seconds",
        "Time to make one round's 2PC records durable, by step (prepare, decision, apply, other)";
    twopc_phase_seconds: Family<KindLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(seconds_histogram),
        "twopc_phase_seconds",
        "Phases of the transfers coordinated here: voting (begun until decided) and acks (decided until every participant acknowledged)";
    writer_batch_ops: Histogram = Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        "writer_batch_ops",
        "Operations per writer batch (one SQLite transaction, one fsync)";
    transfer_batch_lines: Histogram = Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        "transfer_batch_lines",
        "Transfers per TransferBatch request (bulk payments, coalesced teller transfers)";
    writer_commit_seconds: Histogram = seconds_histogram(),
        "writer_commit_seconds",
        "Time of one writer batch's commit (its pages written to the WAL)";
    writer_sync_seconds: Histogram = seconds_histogram(),
        "writer_sync_seconds",
        "Time of one fsync of the WAL, for every batch committed since the last";
    in_doubt: Gauge = Gauge::default(),
        "in_doubt_legs",
        "Legs this branch voted yes on with no decision yet";
    in_doubt_oldest_past_deadline_seconds: Gauge<f64, AtomicU64> = Gauge::default(),
        "in_doubt_oldest_past_deadline_seconds",
        "How far the oldest leg in doubt is past its prepare deadline (0 when none is)";
    peers_connected: Gauge = Gauge::default(),
        "peers_connected",
        "Listed branches with an open connection to this one";
    replica_role: Gauge = Gauge::default(),
        "replica_role",
        "This replica's Raft role: 0 not replicated, 1 follower or learner, 2 candidate, 3 leader";
    replica_lag_entries: Gauge = Gauge::default(),
        "replica_lag_entries",
        "Log entries this replica holds but has not applied to its store yet";
    logins: Family<KindLabel, Counter> = Family::default(),
        "logins",
        "Login attempts by result: ok, a refusal code, throttled or overloaded";
    sms_outbox: Gauge = Gauge::default(),
        "sms_outbox",
        "SMS messages not delivered yet";
    sms_sent: Counter = Counter::default(),
        "sms_sent",
        "SMS messages handed to the gateway";
    sms_failures: Counter = Counter::default(),
        "sms_failures",
        "SMS deliveries that failed (each retried later)";
    sms_capped: Counter = Counter::default(),
        "sms_capped",
        "SMS alerts not sent because their phone had its hourly cap";
    twopc_messages_sent: Counter = Counter::default(),
        "twopc_messages_sent",
        "Signed 2PC messages sent to other branches";
    streams_refused: Family<KindLabel, Counter> = Family::default(),
        "streams_refused",
        "Inbound streams this node closed, by why (peer_limit: more than 8 of a protocol from one peer; framing: a frame too long or a body that does not decode; unread: answers not read for the write-stall time; raft_stranger: a Raft stream from a key not of this branch's replicas)";
    streams_reopened: Counter = Counter::default(),
        "streams_reopened",
        "Streams to other branches that ended before the other side's hello (dropped on arrival) and were opened again; nothing had been sent on them";
    money_lines_unlogged: Counter = Counter::default(),
        "money_lines_unlogged",
        "Money answers not logged one line each (past the log's allowance per second)";
    fence_state: Gauge = Gauge::default(),
        "fence_state",
        "This copy's fence: 0 it may move money, 1 not confirmed (starting, or no other branch answered within the lease), 2 fenced (a restore replaced it)";
    store_writes_failing: Gauge = Gauge::default(),
        "store_writes_failing",
        "1 while the store's last write batch failed (a full disk, a failing device), 0 once one commits";
}

impl Metrics {
    /// Notes how the writer's last batch ended: `failed` is its error, if it failed.
    pub fn write_ended(&self, failed: Option<String>) {
        // The writer's hot path: a healthy batch after healthy ones takes no lock.
        if failed.is_none() && self.store_writes_failing.get() == 0 {
            return;
        }
        self.store_writes_failing.set(i64::from(failed.is_some()));
        let mut last = self
            .write_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = failed;
    }

    /// Why the store's writes fail now, if they do.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Money answers logged per second at most (one info line each, with the id); past
/// that, under load, they are counted in `money_lines_unlogged` instead.
pub const MONEY_LOG_LINES_PER_S: u64 = 200;

/// Whether one more money line may be logged this second.
pub fn log_line_allowed() -> bool {
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LINES: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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

/// The process's metrics. The first call also makes them count the streams' events
/// ([`client::pipe::observe`]).
pub fn get() -> &'static Metrics {
    static OBSERVED: Once = Once::new();
    let metrics: &'static Metrics = &METRICS;
    OBSERVED.call_once(|| client::pipe::observe(metrics));
    metrics
}

impl client::pipe::Observer for Metrics {
    fn stream_reopened(&self) {
        self.streams_reopened.inc();
    }

    fn stream_refused(&self, why: &'static str) {
        self.streams_refused.get_or_create(&label(why)).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `bankmate_...` metric the operator's docs name is in the table (and so
    /// registered, since the table registers each metric as it makes it), every metric
    /// in the table is listed in the README, and what `/metrics` serves is the table's.
    /// (A family with no labels used yet is served once one is.)
    #[test]
    fn every_documented_metric_is_served() {
        let text = get().encode().expect("encodes");
        for served in text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE bankmate_"))
        {
            let name = served.split(' ').next().unwrap_or("");
            assert!(
                NAMES.contains(&name),
                "{name} is served but not in the table"
            );
        }
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
        for doc in ["README.md", "ARCHITECTURE.md"] {
            let text = std::fs::read_to_string(format!("{root}/{doc}")).expect("doc");
            for name in text.split("bankmate_").skip(1).map(metric_name) {
                let known = NAMES
                    .iter()
                    .any(|s| name.strip_prefix(s).is_some_and(is_suffix));
                assert!(
                    known,
                    "{doc} names bankmate_{name}, which /metrics does not serve"
                );
            }
        }
        for name in NAMES {
            let listed = readme.contains(&format!("bankmate_{name}"));
            assert!(listed, "README does not list bankmate_{name}");
        }
    }

    fn metric_name(text: &str) -> &str {
        let end = text
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len());
        text[..end].trim_end_matches('_')
    }

    /// The suffixes OpenMetrics adds to a family's samples.
    fn is_suffix(rest: &str) -> bool {
        ["", "_total", "_bucket", "_sum", "_count"].contains(&rest)
    }
}
