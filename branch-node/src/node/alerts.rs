//! The in-doubt alert: every few seconds, the legs this branch voted yes on and has no
//! decision for are read (beside the writer), and each one in doubt past the recovery
//! bound is logged as a warning, once a minute, with its coordinator, and counted in
//! `Counters::in_doubt_overdue`. Such a leg holds a customer's money until the
//! coordinator answers: an operator must look at that branch.

use std::sync::atomic::Ordering;
use std::time::Duration;

use coordinator::InDoubtRecord;
use wire::limits::IN_DOUBT_ALERT_MS;

use super::engine::EngineHandle;
use super::now_ms;
use crate::store::reader::Reader;
use crate::store::twopc;

/// How often the in-doubt legs are looked at, in milliseconds.
const IN_DOUBT_CHECK_MS: u64 = 5_000;

/// How often one overdue leg is logged again, in milliseconds.
const IN_DOUBT_LOG_EVERY_MS: u64 = 60_000;

/// The legs of `records` in doubt longer than [`IN_DOUBT_ALERT_MS`] past their deadline.
pub fn overdue(records: &[InDoubtRecord], now_ms: u64) -> Vec<&InDoubtRecord> {
    records
        .iter()
        .filter(|r| now_ms > r.deadline_ms.saturating_add(IN_DOUBT_ALERT_MS))
        .collect()
}

/// Watches until `stop` resolves.
pub async fn run(
    reader: Reader,
    engine: EngineHandle,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last_logged = 0u64;
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(IN_DOUBT_CHECK_MS)) => {}
        }
        let records = match reader.read(|c, _| twopc::in_doubt(c)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the legs in doubt: {e}");
                continue;
            }
        };
        let now = now_ms();
        let late = overdue(&records, now);
        let counters = engine.counters();
        counters
            .in_doubt_overdue
            .store(late.len() as u64, Ordering::Relaxed);
        if late.is_empty() || now.saturating_sub(last_logged) < IN_DOUBT_LOG_EVERY_MS {
            continue;
        }
        last_logged = now;
        for r in late {
            tracing::warn!(
                id = %r.id,
                coordinator = %r.coordinator,
                overdue_s = now.saturating_sub(r.deadline_ms) / 1000,
                "transfer in doubt past the recovery bound: its money stays held until branch {} answers",
                r.coordinator
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{BranchId, TransferId};

    #[test]
    fn only_legs_past_the_bound_are_overdue() {
        let record = |id, deadline_ms| InDoubtRecord {
            id: TransferId(id),
            coordinator: BranchId(2),
            deadline_ms,
        };
        let now = 1_000_000;
        let records = [
            record(1, now),
            record(2, now - IN_DOUBT_ALERT_MS),
            record(3, now - IN_DOUBT_ALERT_MS - 1),
        ];
        let late: Vec<u128> = overdue(&records, now).iter().map(|r| r.id.0).collect();
        assert_eq!(late, vec![3]);
    }
}
