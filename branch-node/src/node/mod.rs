//! `branch-node run`: puts the pieces of a serving branch together (store writer, swarm
//! event loop, 2PC engine, teller service, notifier), dispatches inbound requests, and
//! shuts down in order when asked: stop taking work, let queued storage become
//! durable, then close the store.

pub mod alerts;
pub mod authz;
pub mod engine;
pub mod guard;
pub mod link;
pub mod logins;
pub mod metrics;
pub mod notifier;
pub mod service;
pub mod sessions;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use coordinator::Branch;
use libp2p::Multiaddr;
use tokio::sync::watch;
use wire::limits::{REQUESTS_IN_FLIGHT_MAX, REQUESTS_PER_PEER_MAX};
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::teller::{TellerResponse, Unavailable};

use crate::init::{DB_FILE, read_key};
use crate::network_file::NetworkFile;
use crate::p2p::network::{self, Inbound, InboundQueues};
use crate::store::reader::Reader;
use crate::store::writer::Writer;
use crate::store::{Durability, Store};
use engine::EngineHandle;
use notifier::SmsSink;
use service::Service;
use sessions::Sessions;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How a node is started.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub data_dir: PathBuf,
    pub network_file: PathBuf,
    /// Where to listen; empty means the addresses the network file lists for this branch.
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Lets admins block or delay links (for fault scenarios).
    pub fault_switch: bool,
    /// Where SMS messages go; `None` means `sms.log` in the data dir.
    pub sms: Option<SmsSink>,
    /// `Durability::Normal` is for benchmarks only.
    pub durability: Durability,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The file the default SMS sink appends to, in the data dir.
pub const SMS_LOG_FILE: &str = "sms.log";

/// Serves until `shutdown` resolves. Prints one `ready` line on stdout once listening.
pub async fn run(
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let key = Arc::new(read_key(&cfg.data_dir)?);
    let network = Arc::new(NetworkFile::load(&cfg.network_file)?);
    let entry = network.by_peer(&key.peer_id()).with_context(|| {
        format!(
            "this branch's key (peer id {}) is not in {}",
            key.peer_id(),
            cfg.network_file.display()
        )
    })?;
    let (me, name) = (entry.id, entry.name.clone());
    let listen = if cfg.listen.is_empty() {
        entry.addresses.clone()
    } else {
        cfg.listen.clone()
    };
    anyhow::ensure!(
        !listen.is_empty(),
        "no address to listen on: give --listen or list one in the network file"
    );
    crate::init::owner_only_dir(&cfg.data_dir)?;
    let store = Store::open_existing(&cfg.data_dir.join(DB_FILE), me, cfg.durability)?;
    let sessions = Sessions::load(me, store.live_sessions(now_ms())?);
    tracing::info!(
        sessions = sessions.len(),
        "sessions kept from before the start"
    );
    let writer = Writer::spawn(store);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let reader = Reader::open(&cfg.data_dir.join(DB_FILE), me, cores)?;
    let wh = writer.handle();

    let mut swarm = crate::p2p::node_swarm(key.libp2p_keypair(), cfg.mdns)?;
    for a in &listen {
        swarm
            .listen_on(a.clone())
            .with_context(|| format!("cannot listen on {a}"))?;
    }
    let (client, event_loop, inbound) = network::new(swarm, (*network).clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let net_task = tokio::spawn(event_loop.run(stopped(stop_rx.clone())));

    let ids = network.branches().map(|b| b.id).collect();
    let machine = Branch::new(me, ids, coordinator::Config::default());
    let (engine, engine_loop) = engine::new(
        machine,
        wh.clone(),
        Arc::clone(&key),
        Arc::clone(&network),
        client.clone(),
    );
    let engine_running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let running = Arc::clone(&engine_running);
    let engine_stop = stopped(stop_rx.clone());
    let mut engine_task = tokio::spawn(async move {
        let ended = engine_loop.run(engine_stop).await;
        running.store(false, Ordering::Relaxed);
        ended
    });
    let sink = cfg
        .sms
        .clone()
        .unwrap_or_else(|| SmsSink::LogFile(cfg.data_dir.join(SMS_LOG_FILE)));
    let notifier_task = tokio::spawn(notifier::run(wh.clone(), sink, stopped(stop_rx.clone())));
    let watch_task = tokio::spawn(alerts::run(
        reader.clone(),
        engine.clone(),
        stopped(stop_rx.clone()),
    ));

    let service = Arc::new(Service {
        me,
        network: Arc::clone(&network),
        writer: wh,
        engine: engine.clone(),
        client: client.clone(),
        sessions: Mutex::new(sessions),
        reader,
        logins: logins::Logins::new(cores),
        forwards: network
            .branches()
            .filter(|b| b.id != me)
            .map(|b| {
                let slots = tokio::sync::Semaphore::new(wire::limits::FORWARDS_PER_BRANCH_MAX);
                (b.id, slots)
            })
            .collect(),
        fault_switch: cfg.fault_switch,
        key: Arc::clone(&key),
    });
    let mut addrs = Vec::new();
    for _ in 0..50 {
        addrs = client.listen_addrs().await;
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let metrics_task = match cfg.metrics_listen {
        Some(addr) => {
            let health = metrics::Health {
                reader: service.reader.clone(),
                engine_running,
                peers_listed: network.branches().count().saturating_sub(1),
            };
            Some(start_metrics(addr, health, stopped(stop_rx.clone())).await?)
        }
        None => None,
    };
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    println!(
        "ready: branch {me} ({name}) peer {} listening on {}",
        key.peer_id(),
        shown.join(" ")
    );
    tracing::info!(branch = %me, %name, "branch node ready");

    // A node never serves with a dead 2PC engine: if the engine stops (its store
    // failed), the node stops too, with a non-zero exit, and recovery at the next start
    // finishes whatever was in flight.
    let engine_died = tokio::select! {
        () = dispatch(inbound, &service, &engine, &network, shutdown) => None,
        ended = &mut engine_task => Some(ended),
    };
    let died = engine_died.is_some();
    if died {
        tracing::error!(
            "the 2pc engine stopped (see the store error above): stopping this node; \
             restart it once the store is healthy, and recovery finishes what was in flight"
        );
    }

    tracing::info!("shutting down: finishing queued storage");
    let _ = stop_tx.send(true);
    let engine_result = match engine_died {
        Some(ended) => ended,
        None => engine_task.await,
    };
    let _ = notifier_task.await;
    let _ = watch_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = net_task.await;
    let c = engine.counters();
    tracing::info!(
        prepared = c.prepared.load(Ordering::Relaxed),
        committed = c.committed.load(Ordering::Relaxed),
        aborted = c.aborted.load(Ordering::Relaxed),
        in_doubt = c.in_doubt.load(Ordering::Relaxed),
        rounds = c.rounds.load(Ordering::Relaxed),
        messages_sent = c.messages_sent.load(Ordering::Relaxed),
        items_sent = c.items_sent.load(Ordering::Relaxed),
        storage_commands = c.storage_commands.load(Ordering::Relaxed),
        "stopped"
    );
    drop(service);
    drop(engine);
    let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
    match engine_result {
        Ok(Ok(())) if died => Err(anyhow::anyhow!("2pc engine stopped")),
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(anyhow::anyhow!("2pc engine task failed: {e}")),
    }
}

/// Binds the metrics endpoint, says where, and serves it until `stop`.
async fn start_metrics(
    addr: std::net::SocketAddr,
    health: metrics::Health,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = metrics::bind(addr).await?;
    let bound = listener.local_addr()?;
    println!("metrics: http://{bound}/metrics (and /healthz, /readyz)");
    tracing::info!(%bound, "serving metrics");
    Ok(tokio::spawn(metrics::serve(listener, health, stop)))
}

async fn dispatch(
    mut queues: InboundQueues,
    service: &Arc<Service>,
    engine: &EngineHandle,
    network: &Arc<NetworkFile>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let busy = Arc::new(InFlight::default());
    loop {
        // 2PC first: a flood of teller requests waits behind it, never the other way.
        let next = tokio::select! {
            biased;
            () = &mut shutdown => return,
            n = queues.twopc.recv() => n,
            n = queues.requests.recv() => n,
        };
        match next {
            None => return,
            Some(Inbound::Teller {
                peer,
                request,
                reply,
            }) => {
                let service = Arc::clone(service);
                let Some(slot) = InFlight::take(&busy, peer) else {
                    reply.answer(&TellerResponse::Unavailable(Unavailable::Overloaded));
                    continue;
                };
                tokio::spawn(async move {
                    reply.answer(&service.teller(peer, request, false).await);
                    drop(slot);
                });
            }
            Some(Inbound::Link {
                peer,
                request: LinkRequest::TwoPc(bytes),
                reply,
            }) => {
                reply.answer(&twopc_envelope(network, service.me, engine, &peer, bytes));
            }
            Some(Inbound::Link {
                peer,
                request: LinkRequest::Forward(request),
                reply,
            }) => {
                let service = Arc::clone(service);
                let Some(slot) = InFlight::take(&busy, peer) else {
                    reply.answer(&LinkResponse::Refused(EnvelopeRefusal::Overloaded));
                    continue;
                };
                tokio::spawn(async move {
                    reply.answer(&service.forwarded(peer, request).await);
                    drop(slot);
                });
            }
        }
    }
}

/// Verifies a 2PC envelope and hands it to the engine.
fn twopc_envelope(
    network: &NetworkFile,
    me: wire::BranchId,
    engine: &EngineHandle,
    peer: &libp2p::PeerId,
    bytes: Vec<u8>,
) -> LinkResponse {
    match link::verify_envelope(network, me, peer, &bytes, now_ms()) {
        Ok((from, message)) => {
            if engine.deliver(from, message.body, Some(Arc::from(bytes))) {
                LinkResponse::Accepted
            } else {
                LinkResponse::Refused(EnvelopeRefusal::Overloaded)
            }
        }
        Err(refusal) => {
            tracing::warn!(%peer, %refusal, "2pc envelope refused");
            LinkResponse::Refused(refusal)
        }
    }
}

/// Teller and forwarded requests being served, per peer and in all. A request past
/// either bound is answered "overloaded" at once instead of getting a task.
#[derive(Debug, Default)]
struct InFlight {
    counts: Mutex<(usize, std::collections::HashMap<libp2p::PeerId, usize>)>,
}

/// One request's place in [`InFlight`], given back when dropped.
#[derive(Debug)]
struct Slot {
    table: Arc<InFlight>,
    peer: libp2p::PeerId,
}

impl InFlight {
    fn take(table: &Arc<InFlight>, peer: libp2p::PeerId) -> Option<Slot> {
        let mut c = table.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = c.1.get(&peer).copied().unwrap_or(0);
        if c.0 >= REQUESTS_IN_FLIGHT_MAX || mine >= REQUESTS_PER_PEER_MAX {
            return None;
        }
        c.0 += 1;
        c.1.insert(peer, mine + 1);
        Some(Slot {
            table: Arc::clone(table),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .table
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.0 = c.0.saturating_sub(1);
        if let Some(n) = c.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.peer);
            }
        }
    }
}
