//! The operator's endpoint (`branch-node run --metrics-listen`): Prometheus metrics
//! (OpenMetrics text, encoded by prometheus-client), `/healthz` (the process answers) and
//! `/readyz` (the store reads and the 2PC engine runs, or a replica follows a known
//! leader; the peers connected are said, not required). What is cheaper to read than to
//! count (legs in doubt, the SMS outbox) is read through the read-only pool when scraped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;

use super::now_ms;
use crate::metrics::get;
use crate::store::reader::Reader;
use crate::store::twopc;

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
async fn refresh(health: &Health) -> Result<(), crate::store::StoreError> {
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
        .await?;
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
    let Ok(text) = get().encode() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
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
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::p2p::AddressInUse> {
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
