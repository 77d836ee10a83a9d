//! Timing and size settings of the 2PC roles; defaults come from `wire::limits`.

use wire::limits::{
    DECISION_RESEND_MS, IN_FLIGHT_TRANSFERS_MAX, PREPARE_RESEND_MS, PREPARE_TIMEOUT_MS,
    RETRY_BACKOFF_MAX_MS, STATUS_QUERY_DELAY_MS,
};

/// How long each role waits before acting on silence. Every wait is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// A prepare's deadline is its start plus this; the coordinator aborts after it.
    pub prepare_timeout_ms: u64,
    /// Before the deadline, prepares go again to participants that have not voted,
    /// this long after the last send.
    pub prepare_resend_ms: u64,
    /// First wait before re-sending an unacknowledged decision; doubles each time.
    pub decision_resend_ms: u64,
    /// An in-doubt participant asks the coordinator this long after the deadline.
    pub status_query_delay_ms: u64,
    /// Upper bound of every doubling wait.
    pub retry_backoff_max_ms: u64,
    /// Most cross-branch transfers coordinated at once.
    pub in_flight_transfers_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prepare_timeout_ms: PREPARE_TIMEOUT_MS,
            prepare_resend_ms: PREPARE_RESEND_MS,
            decision_resend_ms: DECISION_RESEND_MS,
            status_query_delay_ms: STATUS_QUERY_DELAY_MS,
            retry_backoff_max_ms: RETRY_BACKOFF_MAX_MS,
            in_flight_transfers_max: IN_FLIGHT_TRANSFERS_MAX,
        }
    }
}
