//! What a run shows: the progress bar while it runs, and afterwards the report table
//! (outcomes, per-branch totals, network against expected total, in-doubt count,
//! latency, faults applied, "invariants: OK" or the violations) and its JSON form.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::answers::AnswerReport;
use crate::check::Report;
use crate::workload::{Column, Kind, Progress, Record, Workload};

/// Everything a scenario run found.
#[derive(Debug)]
pub struct Summary {
    pub name: String,
    pub records: Vec<Record>,
    pub report: Report,
    /// How long settling took after the heal (None: it did not within the bound).
    pub settle: Option<Duration>,
    /// Every answer tellers were given, checked against the ledgers after the heal.
    pub answers: AnswerReport,
    pub faults: Vec<String>,
    pub snapshots: usize,
    /// The most legs in doubt seen at one snapshot during the run.
    pub max_in_doubt_during: usize,
    pub workload_time: Duration,
    pub total_time: Duration,
}

/// The outcome table's columns, in order.
const COLUMNS: [Column; 5] = [
    Column::Committed,
    Column::Aborted,
    Column::Refused,
    Column::NotDone,
    Column::Unknown,
];

/// A latency percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank; the product is within 0..len, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.report.ok()
    }

    /// First answers (resends apart) of these kinds in this column.
    fn count(&self, kinds: &[Kind], column: Column) -> usize {
        self.records
            .iter()
            .filter(|r| !r.resend && kinds.contains(&r.kind) && r.answer.column() == column)
            .count()
    }

    /// Latencies of first answers that were final (committed or refused), sorted.
    fn latencies(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| !r.resend && r.answer.is_final())
            .map(|r| r.latency)
            .collect();
        v.sort();
        v
    }

    /// The report as a table, for people.
    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.set_header(["", "committed", "aborted", "refused", "not done", "unknown"]);
        let row = |name: &str, kinds: &[Kind]| {
            let mut cells = vec![name.to_string()];
            for c in COLUMNS {
                cells.push(self.count(kinds, c).to_string());
            }
            cells
        };
        t.add_row(row("local transfers", &[Kind::Local]));
        t.add_row(row("cross-branch transfers", &[Kind::Cross]));
        t.add_row(row(
            "deposits + withdrawals",
            &[Kind::Deposit, Kind::Withdraw],
        ));
        t.add_row(row("meant to be refused", &[Kind::Refused]));
        let mut totals = Table::new();
        totals.set_header(["branch", "balances", "held"]);
        for (b, (bal, held)) in &self.report.totals {
            totals.add_row([format!("b{}", b.0), money(*bal), money(*held)]);
        }
        totals.add_row([
            "network".to_string(),
            money(self.report.network_total),
            String::new(),
        ]);
        totals.add_row([
            "expected (deposits - withdrawals)".to_string(),
            money(self.report.expected_total),
            String::new(),
        ]);
        let lat = self.latencies();
        let a = &self.answers;
        let first = self.records.iter().filter(|r| !r.resend).count();
        let mut out = format!(
            "== {} ==\n{t}\n{totals}\nin doubt: {}\nlatency (final answers): p50 {}  p99 {}  max {}\n\
             throughput: {:.0} requests/s over {:.1} s\n\
             answers checked: {} to {} ids ({} resent): {} committed, {} refused, {} not done, {} unknown; \
             asked after the heal: {} ids ({} unknown resolved committed, {} did not happen); \
             lost by a restore, as its report allows: {}; answer violations: {}\n\
             settled after the heal in: {}\nconsistent snapshots during the run: {} (most legs in doubt at one: {})\n\
             committed answers found durable: {}; cross-branch commits with signed proof: {}\n",
            self.name,
            self.report.in_doubt,
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            ms(lat.last().copied().unwrap_or_default()),
            first as f64 / self.workload_time.as_secs_f64().max(0.001),
            self.workload_time.as_secs_f64(),
            a.answers,
            a.ids,
            a.resent,
            a.committed,
            a.refused,
            a.not_done,
            a.unknown,
            a.asked,
            a.resolved_committed,
            a.resolved_not,
            a.lost_by_restore,
            a.violations.len(),
            self.settle.map_or("did not settle".to_string(), ms),
            self.snapshots,
            self.max_in_doubt_during,
            self.report.committed_checked,
            self.report.proofs_checked,
        );
        if !self.faults.is_empty() {
            out.push_str("faults:\n");
            for f in &self.faults {
                out.push_str(&format!("  {f}\n"));
            }
        }
        if self.ok() {
            out.push_str("invariants: OK\n");
        } else {
            out.push_str(&format!(
                "invariants: {} VIOLATIONS\n",
                self.report.violations.len()
            ));
            for v in &self.report.violations {
                out.push_str(&format!("  {v}\n"));
            }
        }
        out
    }

    /// The report as JSON, for programs (amounts in minor units, as strings).
    pub fn json(&self) -> Value {
        let lat = self.latencies();
        let outcome = |o| {
            json!({
                "local": self.count(&[Kind::Local], o),
                "cross": self.count(&[Kind::Cross], o),
                "deposit_withdraw": self.count(&[Kind::Deposit, Kind::Withdraw], o),
                "meant_refused": self.count(&[Kind::Refused], o),
            })
        };
        let a = &self.answers;
        json!({
            "name": self.name,
            "ok": self.ok(),
            "committed": outcome(Column::Committed),
            "aborted": outcome(Column::Aborted),
            "refused": outcome(Column::Refused),
            "not_done": outcome(Column::NotDone),
            "unknown": outcome(Column::Unknown),
            "answers": {
                "given": a.answers, "ids": a.ids, "resent": a.resent,
                "committed": a.committed, "refused": a.refused,
                "not_done": a.not_done, "unknown": a.unknown,
                "asked_after_heal": a.asked,
                "unknown_resolved_committed": a.resolved_committed,
                "unknown_resolved_not_happened": a.resolved_not,
                "lost_by_restore": a.lost_by_restore,
                "violations": a.violations.len(),
            },
            "totals": self.report.totals.iter().map(|(b, (bal, held))| json!({
                "branch": b.0, "balance": money(*bal), "held": money(*held)
            })).collect::<Vec<_>>(),
            "network_total": money(self.report.network_total),
            "expected_total": money(self.report.expected_total),
            "in_doubt": self.report.in_doubt,
            "latency_ms": {
                "p50": percentile(&lat, 50.0).as_secs_f64() * 1000.0,
                "p99": percentile(&lat, 99.0).as_secs_f64() * 1000.0,
                "max": lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            },
            "faults": self.faults,
            "snapshots": self.snapshots,
            "max_in_doubt_during": self.max_in_doubt_during,
            "violations": self.report.violations,
        })
    }
}

/// A progress bar over the workload (by count or by time), showing live outcomes;
/// drawn only on a terminal.
pub fn bar(show: bool, w: &Workload, progress: Arc<Progress>) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let (len, by_count) = match (w.count, w.duration_ms) {
        (Some(c), None) => (c, true),
        (_, d) => (d.unwrap_or(10_000), false),
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let start = std::time::Instant::now();
    tokio::spawn(async move {
        while !b.is_finished() {
            let p = &progress;
            let pos = if by_count {
                p.sent.load(Ordering::Relaxed)
            } else {
                u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
            };
            b.set_position(pos.min(len));
            b.set_message(format!(
                "committed {}  refused {}  aborted {}  not done {}  unknown {}",
                p.committed.load(Ordering::Relaxed),
                p.refused.load(Ordering::Relaxed),
                p.aborted.load(Ordering::Relaxed),
                p.not_done.load(Ordering::Relaxed),
                p.unknown.load(Ordering::Relaxed),
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Some(bar)
}
