//! `branch-node run`: puts the pieces of a serving branch together (store writer, swarm
//! event loop, 2PC engine, teller service, notifier), dispatches inbound requests, and
//! shuts down in order when asked: stop taking work, let queued storage become
//! durable, then close the store.

pub mod alerts;
pub mod authz;
pub mod engine;
pub mod guard;
pub mod link;
pub mod listing;
pub mod logins;
pub mod metrics;
pub mod notifier;
pub mod phases;
pub mod service;
pub mod sessions;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use coordinator::Branch;
use libp2p::Multiaddr;
use tokio::sync::{mpsc, watch};
use wire::limits::{REQUESTS_IN_FLIGHT_MAX, REQUESTS_PER_PEER_MAX};
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::teller::{TellerResponse, Unavailable};

use crate::init::{DB_FILE, read_key};
use crate::network_file::NetworkFile;
use crate::p2p::network::{self, Inbound, InboundQueues};
use crate::replica::node::Replica;
use crate::store::reader::Reader;
use crate::store::writer::{Writer, WriterHandle};
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

/// What every serving stack of this process shares: the node's parts that live as long
/// as it does.
struct Node {
    cfg: RunConfig,
    me: wire::BranchId,
    key: Arc<wire::BranchKey>,
    network: Arc<NetworkFile>,
    /// The store's writer (local reads and barriers).
    writer: WriterHandle,
    /// Where changes go: the writer, or a replica's proposer.
    writes: WriterHandle,
    reader: Reader,
    client: network::Client,
    logins: Arc<logins::Logins>,
}

/// The branch being served: what dispatch hands requests to.
#[derive(Clone)]
struct Serving {
    service: Arc<Service>,
    engine: EngineHandle,
}

/// The serving stack: the 2PC engine (which recovers what was in flight as it starts),
/// the teller service, SMS delivery and the in-doubt alerts. Built when this node starts
/// serving its branch (a replica: when it becomes the leader), taken down when it stops.
struct Stack {
    serving: Serving,
    engine_task: tokio::task::JoinHandle<Result<(), crate::store::StoreError>>,
    others: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Stack {
    async fn start(node: &Node) -> anyhow::Result<Stack> {
        let me = node.me;
        let live = node
            .writer
            .call_local(move |c, me| crate::store::sessions::live(c, me, now_ms()))
            .await?;
        let sessions = Sessions::load(me, live);
        tracing::info!(sessions = sessions.len(), "sessions kept from before");
        let (stop, stop_rx) = watch::channel(false);
        let ids = node.network.branches().map(|b| b.id).collect();
        let machine = Branch::new(me, ids, coordinator::Config::default());
        let (engine, engine_loop) = engine::new(
            machine,
            node.writes.clone(),
            Arc::clone(&node.key),
            Arc::clone(&node.network),
            node.client.clone(),
        );
        let engine_task = tokio::spawn(engine_loop.run(stopped(stop_rx.clone())));
        let sink = node
            .cfg
            .sms
            .clone()
            .unwrap_or_else(|| SmsSink::LogFile(node.cfg.data_dir.join(SMS_LOG_FILE)));
        let others = vec![
            tokio::spawn(notifier::run(
                node.writes.clone(),
                sink,
                stopped(stop_rx.clone()),
            )),
            tokio::spawn(alerts::run(
                node.reader.clone(),
                engine.clone(),
                stopped(stop_rx.clone()),
            )),
        ];
        let service = Arc::new(Service {
            me,
            network: Arc::clone(&node.network),
            writer: node.writes.clone(),
            engine: engine.clone(),
            client: node.client.clone(),
            sessions: Mutex::new(sessions),
            reader: node.reader.clone(),
            logins: Arc::clone(&node.logins),
            forwards: node
                .network
                .branches()
                .filter(|b| b.id != me)
                .map(|b| {
                    let slots = tokio::sync::Semaphore::new(wire::limits::FORWARDS_PER_BRANCH_MAX);
                    (b.id, slots)
                })
                .collect(),
            fault_switch: node.cfg.fault_switch,
            key: Arc::clone(&node.key),
        });
        Ok(Stack {
            serving: Serving { service, engine },
            engine_task,
            others,
            stop,
        })
    }

    /// Stops the stack; the engine's own result (it may have stopped already).
    async fn stop(self, engine: Option<EngineEnded>) -> Result<(), crate::store::StoreError> {
        let _ = self.stop.send(true);
        let ended = match engine {
            Some(ended) => ended,
            None => self.engine_task.await,
        };
        for task in self.others {
            let _ = task.await;
        }
        let c = self.serving.engine.counters();
        tracing::info!(
            prepared = c.prepared.load(Ordering::Relaxed),
            committed = c.committed.load(Ordering::Relaxed),
            aborted = c.aborted.load(Ordering::Relaxed),
            in_doubt = c.in_doubt.load(Ordering::Relaxed),
            rounds = c.rounds.load(Ordering::Relaxed),
            messages_sent = c.messages_sent.load(Ordering::Relaxed),
            items_sent = c.items_sent.load(Ordering::Relaxed),
            storage_commands = c.storage_commands.load(Ordering::Relaxed),
            "stopped serving"
        );
        match ended {
            Ok(r) => r,
            Err(e) => Err(crate::store::StoreError::CommitFailed(format!(
                "2pc engine task failed: {e}"
            ))),
        }
    }
}

/// How an engine task ended.
type EngineEnded = Result<Result<(), crate::store::StoreError>, tokio::task::JoinError>;

/// Why a serving stack stopped.
enum End {
    Shutdown,
    EngineStopped(EngineEnded),
    NoLongerLeader,
}

/// Serves until `shutdown` resolves. Prints one `ready` line on stdout once it serves
/// (a replica of a replicated branch: once it is up, leader or not).
pub async fn run(
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let key = Arc::new(read_key(&cfg.data_dir)?);
    let network = Arc::new(NetworkFile::load(&cfg.network_file)?);
    let (branch, replica) = network.replica_by_peer(&key.peer_id()).with_context(|| {
        format!(
            "this branch's key (peer id {}) is not in {}",
            key.peer_id(),
            cfg.network_file.display()
        )
    })?;
    let (branch, replica) = (branch.clone(), replica.clone());
    let (me, name) = (branch.id, branch.name.clone());
    let listen = if cfg.listen.is_empty() {
        replica.addresses.clone()
    } else {
        cfg.listen.clone()
    };
    anyhow::ensure!(
        !listen.is_empty(),
        "no address to listen on: give --listen or list one in the network file"
    );
    crate::init::owner_only_dir(&cfg.data_dir)?;
    let store = Store::open_existing(&cfg.data_dir.join(DB_FILE), me, cfg.durability)?;
    let writer = Writer::spawn(store);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let reader = Reader::open(&cfg.data_dir.join(DB_FILE), me, cores)?;

    let mut swarm = crate::p2p::node_swarm(key.libp2p_keypair(), cfg.mdns)?;
    for a in &listen {
        swarm
            .listen_on(a.clone())
            .with_context(|| format!("cannot listen on {a}"))?;
    }
    let (client, event_loop, inbound) = network::new(swarm, (*network).clone());
    let InboundQueues {
        twopc,
        requests,
        raft: raft_streams,
    } = inbound;
    let (stop_tx, stop_rx) = watch::channel(false);
    let net_task = tokio::spawn(event_loop.run(stopped(stop_rx.clone())));
    let replica = match branch.is_replicated() {
        true => Some(Arc::new(
            Replica::start(
                &cfg.data_dir,
                branch,
                replica.id,
                &writer,
                client.clone(),
                raft_streams,
            )
            .await?,
        )),
        false => None,
    };
    let node = Node {
        me,
        key: Arc::clone(&key),
        network: Arc::clone(&network),
        writer: writer.handle(),
        writes: replica
            .as_ref()
            .map_or_else(|| writer.handle(), |r| r.writes.clone()),
        reader: reader.clone(),
        client: client.clone(),
        logins: Arc::new(logins::Logins::new(cores)),
        cfg,
    };
    let (serving_tx, serving_rx) = watch::channel::<Option<Serving>>(None);
    let dispatch_task = tokio::spawn(dispatch(
        InboundQueues {
            twopc,
            requests,
            raft: mpsc::channel(1).1,
        },
        serving_rx,
        Arc::clone(&network),
        replica.clone(),
        client.clone(),
        stopped(stop_rx.clone()),
    ));
    let engine_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics_task = match node.cfg.metrics_listen {
        Some(addr) => {
            let health = metrics::Health {
                reader,
                engine_running: Arc::clone(&engine_running),
                peers_listed: network.branches().count().saturating_sub(1),
                replica: replica.clone(),
            };
            Some(start_metrics(addr, health, stopped(stop_rx.clone())).await?)
        }
        None => None,
    };
    let ready = || async {
        let mut addrs = Vec::new();
        for _ in 0..50 {
            addrs = client.listen_addrs().await;
            if !addrs.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let of = replica
            .as_ref()
            .map_or_else(String::new, |r| format!(" replica {}", r.id));
        println!(
            "ready: branch {me} ({name}){of} peer {} listening on {}",
            key.peer_id(),
            shown.join(" ")
        );
        tracing::info!(branch = %me, %name, "branch node ready");
    };
    if replica.is_some() {
        ready().await;
    }

    tokio::pin!(shutdown);
    let mut result = Ok(());
    let mut first = true;
    loop {
        if let Some(r) = &replica {
            let serving = tokio::select! {
                () = &mut shutdown => false,
                ok = r.until_serving() => ok,
            };
            if !serving {
                break;
            }
        }
        let stack = Stack::start(&node).await?;
        let _ = serving_tx.send(Some(stack.serving.clone()));
        engine_running.store(true, Ordering::Relaxed);
        tracing::info!(branch = %me, "serving the branch");
        if std::mem::take(&mut first) && replica.is_none() {
            ready().await;
        }
        let mut engine_task = stack.engine_task;
        let end = tokio::select! {
            () = &mut shutdown => End::Shutdown,
            ended = &mut engine_task => End::EngineStopped(ended),
            () = async {
                match &replica {
                    Some(r) => r.until_not_serving().await,
                    None => std::future::pending().await,
                }
            } => End::NoLongerLeader,
        };
        let stack = Stack {
            engine_task,
            ..stack
        };
        let _ = serving_tx.send(None);
        engine_running.store(false, Ordering::Relaxed);
        match end {
            End::Shutdown => {
                tracing::info!("shutting down: finishing queued storage");
                result = stack.stop(None).await.map_err(Into::into);
                break;
            }
            End::EngineStopped(ended) if replica.is_none() => {
                // A node never serves with a dead 2PC engine: if the engine stops (its
                // store failed), the node stops too, with a non-zero exit, and recovery
                // at the next start finishes whatever was in flight.
                tracing::error!(
                    "the 2pc engine stopped (see the store error above): stopping this node; \
                     restart it once the store is healthy, and recovery finishes what was in flight"
                );
                let _ = stack.stop(Some(ended)).await;
                result = Err(anyhow::anyhow!("2pc engine stopped"));
                break;
            }
            End::EngineStopped(ended) => {
                // A replica's engine stops when its writes can no longer be committed
                // (it lost its leadership): it serves again once it leads again.
                let why = stack.stop(Some(ended)).await;
                tracing::warn!(
                    ?why,
                    "stopped serving the branch: its writes were not committed"
                );
            }
            End::NoLongerLeader => {
                let why = stack.stop(None).await;
                tracing::warn!(
                    ?why,
                    "stopped serving the branch: this replica no longer leads it"
                );
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = dispatch_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = net_task.await;
    if let Some(r) = replica {
        let _ = r.raft.shutdown().await;
    }
    drop(node);
    let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
    result
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
    serving: watch::Receiver<Option<Serving>>,
    network: Arc<NetworkFile>,
    replica: Option<Arc<Replica>>,
    client: network::Client,
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
        let Some(next) = next else { return };
        let current = serving.borrow().clone();
        match (current, &replica) {
            (Some(s), _) => serve(next, &s, &network, &busy),
            (None, Some(r)) => not_leader(next, r, &network, &client, &busy),
            (None, None) => starting(next),
        }
    }
}

/// Answers a request that came before the node serves (it is starting): nothing was
/// done, try again shortly.
fn starting(request: Inbound) {
    match request {
        Inbound::Teller { reply, .. } => {
            reply.answer(&TellerResponse::Unavailable(Unavailable::Overloaded));
        }
        Inbound::Link { reply, .. } => {
            reply.answer(&LinkResponse::Refused(EnvelopeRefusal::Overloaded));
        }
    }
}

/// A replica that is not the leader: a teller's request is passed on to the leader
/// (`ForwardRequest::Replica`: the leader answers it as if the teller were connected
/// there, so the teller needs to know nothing of replicas); another branch is told
/// which replica leads, and sends there itself.
fn not_leader(
    request: Inbound,
    replica: &Replica,
    network: &NetworkFile,
    client: &network::Client,
    busy: &Arc<InFlight>,
) {
    let leader = replica.leader_hint().filter(|&l| l != replica.id);
    let leader_peer = leader
        .and_then(|l| network.get(replica.branch()).and_then(|b| b.replica(l)))
        .map(|r| r.peer_id);
    match (request, leader_peer) {
        (
            Inbound::Teller {
                peer,
                request,
                reply,
            },
            Some(to),
        ) => {
            let (client, me) = (client.clone(), replica.branch());
            let answer = async move { to_leader(&client, me, to, peer, request).await };
            InFlight::answer(busy, peer, reply, teller_overloaded(), answer);
        }
        (Inbound::Teller { reply, .. }, None) => {
            reply.answer(&TellerResponse::Unavailable(Unavailable::NotLeader {
                leader,
            }));
        }
        (Inbound::Link { reply, .. }, _) => reply.answer(&LinkResponse::NotLeader { leader }),
    }
}

/// Passes a teller's request to this branch's leader replica `to` and gives back its
/// answer; if none came, whether the request may have been carried out.
async fn to_leader(
    client: &network::Client,
    me: wire::BranchId,
    to: libp2p::PeerId,
    teller: libp2p::PeerId,
    request: wire::TellerRequest,
) -> TellerResponse {
    let forward = wire::link::ForwardRequest::Replica {
        teller: teller.to_bytes(),
        request,
        expires_at_ms: now_ms().saturating_add(wire::limits::FORWARD_TIMEOUT_MS),
    };
    let wait = std::time::Duration::from_millis(wire::limits::FORWARD_TIMEOUT_MS);
    let sent = tokio::time::timeout(wait, client.link(to, LinkRequest::Forward(forward))).await;
    match sent {
        Ok(Ok(LinkResponse::Teller(r))) => r,
        Ok(Ok(LinkResponse::ForwardRefused(r))) => TellerResponse::Refused(r),
        Ok(Ok(LinkResponse::NotLeader { leader })) => {
            TellerResponse::Unavailable(Unavailable::NotLeader { leader })
        }
        // The leader it knew is gone (a new one is being elected): nothing was done.
        Ok(Err(network::LinkError::NotSent(_) | network::LinkError::Blocked)) => {
            TellerResponse::Unavailable(Unavailable::NotLeader { leader: None })
        }
        Ok(Ok(_) | Err(_)) | Err(_) => TellerResponse::Unavailable(Unavailable::NoAnswer(me)),
    }
}

/// Hands one request to the serving stack.
fn serve(request: Inbound, s: &Serving, network: &NetworkFile, busy: &Arc<InFlight>) {
    match request {
        Inbound::Teller {
            peer,
            request,
            reply,
        } => {
            let service = Arc::clone(&s.service);
            let answer = async move { service.teller(peer, request, false).await };
            InFlight::answer(busy, peer, reply, teller_overloaded(), answer);
        }
        Inbound::Link {
            peer,
            request: LinkRequest::TwoPc(bytes),
            reply,
        } => {
            reply.answer(&twopc_envelope(
                network,
                s.service.me,
                &s.engine,
                &peer,
                bytes,
            ));
        }
        Inbound::Link {
            peer,
            request: LinkRequest::Forward(request),
            reply,
        } => {
            let service = Arc::clone(&s.service);
            let answer = async move { service.forwarded(peer, request).await };
            let overloaded = LinkResponse::Refused(EnvelopeRefusal::Overloaded);
            InFlight::answer(busy, peer, reply, overloaded, answer);
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

/// What a teller is told when the node has no place for its request now.
fn teller_overloaded() -> TellerResponse {
    TellerResponse::Unavailable(Unavailable::Overloaded)
}

impl InFlight {
    /// Answers `reply` with `answer`, run on a task of its own while it holds one of
    /// `peer`'s places; with no place free, answers `overloaded` at once.
    fn answer<T: serde::Serialize + Send + 'static>(
        table: &Arc<InFlight>,
        peer: libp2p::PeerId,
        reply: crate::p2p::pipe::Responder,
        overloaded: T,
        answer: impl std::future::Future<Output = T> + Send + 'static,
    ) {
        let Some(slot) = InFlight::take(table, peer) else {
            reply.answer(&overloaded);
            return;
        };
        tokio::spawn(async move {
            reply.answer(&answer.await);
            drop(slot);
        });
    }

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
