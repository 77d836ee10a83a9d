//! `branch-node run`: puts the pieces of a serving branch together (store writer, swarm
//! event loop, 2PC engine, teller service, notifier), dispatches inbound requests, and
//! shuts down in order when asked: stop taking work, let queued storage become
//! durable, then close the store.

pub mod alerts;
pub mod authz;
pub mod engine;
pub mod fence;
pub mod guard;
pub mod link;
pub mod listing;
pub mod logins;
pub mod lookups;
pub mod notifier;
pub mod phases;
pub mod readiness;
pub mod recovery;
pub mod seals;
pub mod service;
pub mod sessions;
pub mod shares;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use coordinator::Branch;
use libp2p::Multiaddr;
use tokio::sync::{mpsc, watch};
use wire::limits::{REQUESTS_IN_FLIGHT_MAX, REQUESTS_PER_PEER_MAX};
use wire::link::{EnvelopeRefusal, ForwardRequest, LinkRequest, LinkResponse};
use wire::teller::{TellerResponse, Unavailable};

use crate::init::{DB_FILE, read_key};
use crate::p2p::network::{self, Inbound, InboundQueues};
use crate::replica::node::Replica;
use crate::store::reader::Reader;
use crate::store::writer::{Writer, WriterHandle};
use crate::store::{Durability, Store};
use client::network_file::NetworkFile;
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
    /// The key-encryption key, where not the one `data.keys` names.
    pub kek: Option<crate::keys::KekSource>,
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
    /// How this process claims a branch that runs as one replica (`None`: replicated).
    claiming: Option<fence::Claiming>,
    /// The branch's data keys (the SMS log is sealed with them).
    keys: crate::keys::DataKeys,
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

/// The teller service of a stack, with what the store kept: live sessions, the login
/// throttle's lasting part, the customer deposit limit.
async fn service(
    node: &Node,
    engine: EngineHandle,
    lease: &fence::Lease,
) -> anyhow::Result<Service> {
    let me = node.me;
    let live = node
        .writer
        .call_local(move |c, me| crate::store::sessions::live(c, me, now_ms()))
        .await?;
    let sessions = Sessions::load(me, live);
    tracing::info!(sessions = sessions.len(), "sessions kept from before");
    let kept = node
        .writer
        .call_local(|c, _| crate::store::throttle::kept(c, now_ms()))
        .await?;
    node.logins.load(kept);
    let customer_deposit_max = node
        .writer
        .call_local(|c, _| crate::store::bank::customer_deposit_max(c))
        .await?;
    let forwards = node
        .network
        .branches()
        .filter(|b| b.id != me)
        .map(|b| {
            let slots = tokio::sync::Semaphore::new(wire::limits::FORWARDS_PER_BRANCH_MAX);
            (b.id, slots)
        })
        .collect();
    Ok(Service {
        me,
        network: Arc::clone(&node.network),
        writer: node.writes.clone(),
        engine,
        client: node.client.clone(),
        sessions: Mutex::new(sessions),
        seals: seals::Seals::new(me, now_ms()),
        customer_deposit_max,
        forwarders: Arc::new(shares::Shares::new(wire::limits::FORWARDS_PER_TELLER_MAX)),
        reader: node.reader.clone(),
        logins: Arc::clone(&node.logins),
        forwards,
        fault_switch: node.cfg.fault_switch,
        key: Arc::clone(&node.key),
        lease: lease.clone(),
        lookups: Mutex::default(),
    })
}

impl Stack {
    async fn start(node: &Node, lease: &fence::Lease, epoch: u64) -> anyhow::Result<Stack> {
        let me = node.me;
        let (stop, stop_rx) = watch::channel(false);
        let ids = node.network.branches().map(|b| b.id).collect();
        let machine = Branch::new(me, ids, coordinator::Config::default());
        let (engine, engine_loop) = engine::new(
            machine,
            node.writes.clone(),
            Arc::clone(&node.key),
            Arc::clone(&node.network),
            node.client.clone(),
            epoch,
        );
        let engine_task = tokio::spawn(engine_loop.run(stopped(stop_rx.clone())));
        let sink = node.cfg.sms.clone().unwrap_or_else(|| {
            SmsSink::LogFile(node.cfg.data_dir.join(SMS_LOG_FILE), node.keys.clone())
        });
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
        let service = Arc::new(service(node, engine.clone(), lease).await?);
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
            Err(e) => Err(crate::store::StoreError::Task(e)),
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
    /// A witness knows a newer epoch (the first number), it said (the branch).
    Fenced(u64, wire::BranchId),
}

/// Why a period of writing the store ended, once the stack is down.
enum Ended {
    Shutdown,
    EngineStopped,
    NoLongerLeader,
    Fenced(u64, wire::BranchId),
}

/// Who this node is: its key, the network file, its branch and replica entries, and
/// where it listens.
struct Identity {
    key: Arc<wire::BranchKey>,
    network: Arc<NetworkFile>,
    branch: client::network_file::BranchEntry,
    replica: client::network_file::ReplicaEntry,
    listen: Vec<Multiaddr>,
}

fn identity(cfg: &RunConfig) -> anyhow::Result<Identity> {
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
    let listen = if cfg.listen.is_empty() {
        replica.addresses.clone()
    } else {
        cfg.listen.clone()
    };
    anyhow::ensure!(
        !listen.is_empty(),
        "no address to listen on: give --listen or list one in the network file"
    );
    Ok(Identity {
        key,
        network,
        branch,
        replica,
        listen,
    })
}

/// The data dir, opened for serving: locked, its addresses free, its store open.
struct Opened {
    _lock: crate::lock::DirLock,
    metrics: Option<tokio::net::TcpListener>,
    writer: Writer,
    reader: Reader,
    own: crate::store::fence::OwnFence,
}

/// Why a copy of a branch does not serve: a witness knows a newer one (code `fenced`).
#[derive(Debug, thiserror::Error)]
#[error(
    "this copy of branch {branch} was fenced: epoch {newest} of the branch (a restore) replaced \
     epoch {epoch}, so it must not serve; run the branch from where it was restored, or, to \
     bring this copy back instead, back it up and restore that backup"
)]
pub struct FencedCopy {
    pub branch: wire::BranchId,
    pub epoch: u64,
    pub newest: u64,
}

async fn open(cfg: &RunConfig, id: &Identity) -> anyhow::Result<Opened> {
    let me = id.branch.id;
    // One process per data dir, and every address ours alone, before anything is
    // written: a refused start changes nothing.
    let lock = crate::lock::lock(&cfg.data_dir, crate::lock::Use::Serve)?;
    crate::p2p::check_addresses_free(&id.listen)?;
    let metrics = match cfg.metrics_listen {
        Some(addr) => Some(readiness::bind(addr).await?),
        None => None,
    };
    crate::init::owner_only_dir(&cfg.data_dir)?;
    crate::rotate::finish(&cfg.data_dir)?;
    let keys = crate::keys::unlock(&cfg.data_dir, Some(me), cfg.kek.as_ref())?;
    let store = Store::open_existing(&cfg.data_dir.join(DB_FILE), &keys, me, cfg.durability)?;
    let own = crate::store::fence::own(store.conn())?;
    if own.fenced_by > 0 {
        return Err(FencedCopy {
            branch: me,
            epoch: own.epoch,
            newest: own.fenced_by,
        }
        .into());
    }
    let writer = Writer::spawn(store);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let db = cfg.data_dir.join(DB_FILE);
    let reader = Reader::open(&db, &keys, me, cores, writer.watermark())?;
    Ok(Opened {
        _lock: lock,
        metrics,
        writer,
        reader,
        own,
    })
}

/// This process's claim on a branch that runs as one replica: a new instance, the
/// successor of the last one when that one ran in this same data dir on this machine
/// (the lock says it has ended). Stored before any claim is sent.
async fn claiming_single(
    writer: &WriterHandle,
    data_dir: &std::path::Path,
    own: crate::store::fence::OwnFence,
) -> anyhow::Result<fence::Claiming> {
    let home = data_dir_home(data_dir);
    let instance = rand::random::<u64>().max(1);
    let successor_of = (home != 0 && own.home == home && own.instance != 0).then_some(own.instance);
    writer
        .call_write(crate::store::ops::WriteOp::Fence(
            crate::store::ops::FenceOp::Instance { instance, home },
        ))
        .await?;
    Ok(fence::Claiming {
        epoch: own.epoch,
        instance,
        successor_of,
    })
}

/// A number for "this data dir on this machine": the machine's id and the dir's device
/// and inode. A copy of the dir elsewhere (another machine, another path) has another;
/// 0 when the machine has no id to read.
fn data_dir_home(data_dir: &std::path::Path) -> u64 {
    use sha2::{Digest, Sha256};
    let machine = [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/hostname",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty());
    #[cfg(unix)]
    let dir = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(data_dir).ok().map(|m| (m.dev(), m.ino()))
    };
    #[cfg(not(unix))]
    let dir: Option<(u64, u64)> = None;
    let (Some(machine), Some((dev, ino))) = (machine, dir) else {
        return 0;
    };
    let digest: [u8; 32] = Sha256::digest(format!("{machine}:{dev}:{ino}")).into();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8])).max(1)
}

/// Serves until `shutdown` resolves. Prints one `ready` line on stdout once it listens;
/// money moves once the fence confirms this copy (`fence.rs`), as the log says.
pub async fn run(
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let id = identity(&cfg)?;
    let opened = open(&cfg, &id).await?;
    let (key, network, listen, replica_id) = (id.key, id.network, id.listen, id.replica.id);
    let branch = id.branch;
    let (me, name) = (branch.id, branch.name.clone());
    let claiming = match branch.is_replicated() {
        true => None,
        false => Some(claiming_single(&opened.writer.handle(), &cfg.data_dir, opened.own).await?),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (client, inbound, net_task) = start_network(&cfg, &key, &listen, &network, &stop_rx)?;
    let replica = match branch.is_replicated() {
        true => {
            let (dir, writer, raft) = (&cfg.data_dir, &opened.writer, inbound.raft);
            let r = Replica::start(dir, branch, replica_id, writer, client.clone(), raft);
            Some(Arc::new(r.await?))
        }
        false => None,
    };
    let Opened {
        _lock,
        metrics: metrics_listener,
        writer,
        reader,
        ..
    } = opened;
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
        logins: Arc::new(logins::Logins::new(cores())),
        keys: writer.keys().clone(),
        cfg,
        claiming,
    };
    let shared = Shared::default();
    let queues = InboundQueues {
        twopc: inbound.twopc,
        requests: inbound.requests,
        raft: mpsc::channel(1).1,
    };
    let dispatch_task = spawn_dispatch(&node, queues, &shared, replica.clone(), &stop_rx);
    let metrics_task = metrics_listener
        .map(|l| start_metrics(l, health(&node, reader, &shared, replica.clone()), &stop_rx))
        .transpose()?;
    say_ready(&client, me, &name, &key, replica.as_deref()).await;
    let result = serve_loop(&node, replica.as_ref(), &shared, shutdown).await;
    let _ = stop_tx.send(true);
    let tasks = [Some(dispatch_task), metrics_task, Some(net_task)];
    for task in tasks.into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(r) = replica {
        let _ = r.raft.shutdown().await;
    }
    drop(node);
    let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
    result
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The swarm, listening on `listen`, and its event loop's task (until `stop`).
fn start_network(
    cfg: &RunConfig,
    key: &wire::BranchKey,
    listen: &[libp2p::Multiaddr],
    network: &NetworkFile,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(network::Client, InboundQueues, tokio::task::JoinHandle<()>)> {
    let mut swarm = crate::p2p::node_swarm(key.libp2p_keypair(), cfg.mdns)?;
    for a in listen {
        swarm
            .listen_on(a.clone())
            .with_context(|| format!("cannot listen on {a}"))?;
    }
    let (client, event_loop, inbound) = network::new(swarm, network.clone());
    let task = tokio::spawn(event_loop.run(stopped(stop.clone())));
    Ok((client, inbound, task))
}

/// Dispatch of inbound requests, until `stop`.
fn spawn_dispatch(
    node: &Node,
    queues: InboundQueues,
    shared: &Shared,
    replica: Option<Arc<Replica>>,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let recoveries = recovery::Recoveries {
        me: node.me,
        key: Arc::clone(&node.key),
        writer: node.writer.clone(),
    };
    tokio::spawn(dispatch(
        queues,
        shared.clone(),
        Arc::clone(&node.network),
        replica,
        node.client.clone(),
        recoveries,
        stopped(stop.clone()),
    ))
}

/// What `/readyz` reads.
fn health(
    node: &Node,
    reader: Reader,
    shared: &Shared,
    replica: Option<Arc<Replica>>,
) -> readiness::Health {
    readiness::Health {
        reader,
        engine_running: Arc::clone(&shared.engine_running),
        peers_listed: node.network.branches().count().saturating_sub(1),
        replica,
        lease: shared.lease.subscribe(),
    }
}

/// What the run loop shares with dispatch and the metrics endpoint.
#[derive(Clone)]
struct Shared {
    serving: watch::Sender<Option<Serving>>,
    witness: watch::Sender<Option<Arc<fence::Witness>>>,
    lease: watch::Sender<Option<fence::Lease>>,
    engine_running: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            serving: watch::channel(None).0,
            witness: watch::channel(None).0,
            lease: watch::channel(None).0,
            engine_running: Arc::default(),
        }
    }
}

/// Prints the `ready` line: the node listens (it serves money once its fence holds).
async fn say_ready(
    client: &network::Client,
    me: wire::BranchId,
    name: &str,
    key: &wire::BranchKey,
    replica: Option<&Replica>,
) {
    let mut addrs = Vec::new();
    for _ in 0..50 {
        addrs = client.listen_addrs().await;
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let of = replica.map_or_else(String::new, |r| format!(" replica {}", r.id));
    println!(
        "ready: branch {me} ({name}){of} peer {} listening on {}",
        key.peer_id(),
        shown.join(" ")
    );
    tracing::info!(branch = %me, %name, "branch node ready");
}

/// The fence while this node may write its store (a replica: while it leads): the
/// witness of the other branches, and the holder of this branch's lease.
struct Active {
    witness: Arc<fence::Witness>,
    lease: fence::Lease,
    epoch: u64,
    holder: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Active {
    async fn start(node: &Node) -> anyhow::Result<Active> {
        let (rows, own) = node
            .writer
            .call_local(|c, _| {
                let rows = crate::store::fence::witness_rows(c)?;
                Ok((rows, crate::store::fence::own(c)?))
            })
            .await?;
        let witness = Arc::new(fence::Witness::new(
            node.me,
            Arc::clone(&node.network),
            node.writes.clone(),
            rows,
        ));
        // A replicated branch's Raft group is one instance: its leaders follow each
        // other, and Raft keeps a deposed leader from committing anything.
        let claiming = node.claiming.unwrap_or(fence::Claiming {
            epoch: own.epoch,
            instance: 0,
            successor_of: Some(0),
        });
        let (holder, lease) = fence::Holder::new(
            node.me,
            Arc::clone(&node.key),
            Arc::clone(&node.network),
            node.client.clone(),
            node.reader.clone(),
            claiming,
        );
        let (stop, stop_rx) = watch::channel(false);
        let holder = tokio::spawn(holder.run(stopped(stop_rx)));
        Ok(Active {
            witness,
            lease,
            epoch: claiming.epoch,
            holder,
            stop,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.holder.await;
    }
}

/// Serves the branch until `shutdown`: for each period this node may write its store
/// (always, for one replica; while it leads, for a replica), the fence, then, once the
/// lease holds, the serving stack.
async fn serve_loop(
    node: &Node,
    replica: Option<&Arc<Replica>>,
    shared: &Shared,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        if let Some(r) = replica {
            let leads = tokio::select! {
                () = &mut shutdown => return Ok(()),
                ok = r.until_serving() => ok,
            };
            if !leads {
                // Its Raft stopped (its log or store could not be written: a full disk,
                // say): the others serve on, and this process says why and exits.
                return Err(anyhow::anyhow!(
                    "this replica's raft stopped ({}); restart it once the cause is fixed: \
                     it catches up from the others",
                    r.stopped_why()
                ));
            }
        }
        let active = Active::start(node).await?;
        shared
            .witness
            .send_replace(Some(Arc::clone(&active.witness)));
        shared.lease.send_replace(Some(active.lease.clone()));
        let end = serve_period(node, replica, shared, &active, &mut shutdown).await?;
        shared.witness.send_replace(None);
        shared.lease.send_replace(None);
        let epoch = active.epoch;
        active.stop().await;
        match end {
            Ended::Shutdown => return Ok(()),
            Ended::Fenced(newest, by) => return Err(fenced(node, epoch, newest, by).await),
            Ended::EngineStopped if replica.is_none() => {
                return Err(anyhow::anyhow!("2pc engine stopped"));
            }
            Ended::EngineStopped | Ended::NoLongerLeader => {}
        }
    }
}

/// This copy was fenced: it says so, marks its store so it never serves again, and
/// stops with the error.
async fn fenced(node: &Node, epoch: u64, newest: u64, by: wire::BranchId) -> anyhow::Error {
    tracing::error!(
        newest, epoch, witness = %by,
        "FENCED: a newer copy of this branch (a restore) replaced this one; it stops and \
         will not serve again from this data dir"
    );
    crate::metrics::get().fence_state.set(2);
    let marked = node
        .writes
        .call_write(crate::store::ops::WriteOp::Fence(
            crate::store::ops::FenceOp::Fenced { newest },
        ))
        .await;
    if let Err(e) = marked {
        tracing::warn!("could not mark the store as fenced: {e}");
    }
    FencedCopy {
        branch: node.me,
        epoch,
        newest,
    }
    .into()
}

/// One period of writing the store: waits for the lease, serves while it holds, and
/// says why the period ended.
async fn serve_period(
    node: &Node,
    replica: Option<&Arc<Replica>>,
    shared: &Shared,
    active: &Active,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Ended> {
    let not_leader = || async {
        match replica {
            Some(r) => r.until_not_serving().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = &mut *shutdown => return Ok(Ended::Shutdown),
        () = not_leader() => return Ok(Ended::NoLongerLeader),
        confirmed = active.lease.confirmed() => if let Err((newest, by)) = confirmed {
            return Ok(Ended::Fenced(newest, by));
        },
    }
    crate::metrics::get().fence_state.set(0);
    let stack = Stack::start(node, &active.lease, active.epoch).await?;
    shared.serving.send_replace(Some(stack.serving.clone()));
    shared.engine_running.store(true, Ordering::Relaxed);
    tracing::info!(branch = %node.me, epoch = active.epoch, "serving the branch");
    println!("serving: branch {} epoch {}", node.me, active.epoch);
    let mut engine_task = stack.engine_task;
    let end = tokio::select! {
        () = &mut *shutdown => End::Shutdown,
        ended = &mut engine_task => End::EngineStopped(ended),
        () = not_leader() => End::NoLongerLeader,
        (newest, by) = active.lease.fenced() => End::Fenced(newest, by),
    };
    let stack = Stack {
        engine_task,
        ..stack
    };
    shared.serving.send_replace(None);
    shared.engine_running.store(false, Ordering::Relaxed);
    stop_stack(stack, end, replica.is_some()).await
}

/// Takes the stack down for `end`, saying why.
async fn stop_stack(stack: Stack, end: End, replicated: bool) -> anyhow::Result<Ended> {
    Ok(match end {
        End::Shutdown => {
            tracing::info!("shutting down: finishing queued storage");
            stack.stop(None).await?;
            Ended::Shutdown
        }
        End::Fenced(newest, by) => {
            let _ = stack.stop(None).await;
            Ended::Fenced(newest, by)
        }
        End::EngineStopped(ended) if !replicated => {
            // A node never serves with a dead 2PC engine: if the engine stops (its
            // store failed), the node stops too, with a non-zero exit, and recovery
            // at the next start finishes whatever was in flight.
            tracing::error!(
                "the 2pc engine stopped (see the store error above): stopping this node; \
                 restart it once the store is healthy, and recovery finishes what was in flight"
            );
            let _ = stack.stop(Some(ended)).await;
            Ended::EngineStopped
        }
        End::EngineStopped(ended) => {
            // A replica's engine stops when its writes can no longer be committed
            // (it lost its leadership): it serves again once it leads again.
            let why = stack.stop(Some(ended)).await;
            tracing::warn!(
                ?why,
                "stopped serving the branch: its writes were not committed"
            );
            Ended::EngineStopped
        }
        End::NoLongerLeader => {
            let why = stack.stop(None).await;
            tracing::warn!(
                ?why,
                "stopped serving the branch: this replica no longer leads it"
            );
            Ended::NoLongerLeader
        }
    })
}

/// Says where the metrics endpoint listens, and serves it until `stop`.
fn start_metrics(
    listener: tokio::net::TcpListener,
    health: readiness::Health,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stop = stopped(stop.clone());
    let bound = listener.local_addr()?;
    println!("metrics: http://{bound}/metrics (and /healthz, /readyz)");
    tracing::info!(%bound, "serving metrics");
    Ok(tokio::spawn(readiness::serve(listener, health, stop)))
}

async fn dispatch(
    mut queues: InboundQueues,
    shared: Shared,
    network: Arc<NetworkFile>,
    replica: Option<Arc<Replica>>,
    client: network::Client,
    recoveries: recovery::Recoveries,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let busy = Arc::new(InFlight::default());
    let (serving, witness) = (shared.serving.subscribe(), shared.witness.subscribe());
    loop {
        // 2PC first: a flood of teller requests waits behind it, never the other way.
        let next = tokio::select! {
            biased;
            () = &mut shutdown => return,
            n = queues.twopc.recv() => n,
            n = queues.requests.recv() => n,
        };
        let Some(next) = next else { return };
        // A leader serves only while it holds its lease: cut off from its replicas (or
        // just resumed from a pause) it answers as a replica that does not lead.
        let leased = replica.as_ref().is_none_or(|r| r.holds_lease());
        let current = serving.borrow().clone().filter(|_| leased);
        let witness = witness.borrow().clone();
        let fence = Fence {
            witness: witness.as_ref(),
            serving: current.as_ref(),
            network: &network,
            recoveries: &recoveries,
            busy: &busy,
        };
        let Some(next) = fence.take(next) else {
            continue;
        };
        match (current, &replica) {
            (Some(s), _) => serve(next, &s, &network, witness.as_deref(), &busy),
            (None, Some(r)) => not_leader(next, r, &network, &client, &busy),
            (None, None) => starting(next),
        }
    }
}

/// The requests a node answers whenever it may write its store, serving or not: other
/// branches' fence claims, and a restored branch's recovery.
struct Fence<'a> {
    witness: Option<&'a Arc<fence::Witness>>,
    serving: Option<&'a Serving>,
    network: &'a NetworkFile,
    recoveries: &'a recovery::Recoveries,
    busy: &'a Arc<InFlight>,
}

impl Fence<'_> {
    /// Answers `request` if it is the fence's, else gives it back.
    fn take(&self, request: Inbound) -> Option<Inbound> {
        let Some(witness) = self.witness else {
            return Some(request);
        };
        let overloaded = LinkResponse::Refused(EnvelopeRefusal::Overloaded);
        match request {
            Inbound::Link {
                peer,
                request: LinkRequest::Fence(bytes),
                reply,
            } => {
                let w = Arc::clone(witness);
                let answer = async move { LinkResponse::Fence(w.claim(&peer, &bytes).await) };
                InFlight::answer(self.busy, peer, reply, overloaded, answer);
                None
            }
            Inbound::Link {
                peer,
                request: LinkRequest::Forward(ForwardRequest::Recover { since_ms, after }),
                reply,
            } => {
                let Some(asker) = self.network.by_peer(&peer).map(|b| b.id) else {
                    reply.answer(&LinkResponse::Refused(EnvelopeRefusal::PeerNotListed));
                    return None;
                };
                let engine = self.serving.map(|s| s.engine.clone());
                let r = self.recoveries.clone();
                let answer = async move { r.answer(engine, asker, since_ms, after).await };
                InFlight::answer(self.busy, peer, reply, overloaded, answer);
                None
            }
            other => Some(other),
        }
    }
}

/// Answers a request that came before the node serves (it is starting, or its fence
/// has not confirmed it yet): nothing was done, try again shortly.
fn starting(request: Inbound) {
    match request {
        Inbound::Teller { reply, .. } => {
            reply.answer(&TellerResponse::Unavailable(Unavailable::NotConfirmed));
        }
        Inbound::Link { reply, .. } => {
            reply.answer(&LinkResponse::Refused(EnvelopeRefusal::NotConfirmed));
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
            let leader_gone = replica.until_leader_is_not(leader);
            let answer = async move {
                tokio::select! {
                    r = to_leader(&client, me, to, peer, request) => r,
                    // Its leader changed (it stopped answering, the others elect
                    // another): no waiting out the forward timeout. The request may
                    // have reached the old one, so it may have been carried out; the
                    // teller asks again (money with the same id) and reaches the new.
                    () = leader_gone => TellerResponse::Unavailable(Unavailable::NoAnswer(me)),
                }
            };
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
        Ok(Err(
            network::LinkError::NotSent(_)
            | network::LinkError::NotOpened(_)
            | network::LinkError::Blocked,
        )) => TellerResponse::Unavailable(Unavailable::NotLeader { leader: None }),
        Ok(Ok(_) | Err(_)) | Err(_) => TellerResponse::Unavailable(Unavailable::NoAnswer(me)),
    }
}

/// Hands one request to the serving stack.
fn serve(
    request: Inbound,
    s: &Serving,
    network: &NetworkFile,
    witness: Option<&fence::Witness>,
    busy: &Arc<InFlight>,
) {
    match request {
        Inbound::Teller {
            peer,
            request,
            reply,
        } => {
            let service = Arc::clone(&s.service);
            let answer =
                async move { service.teller(peer, request, service::Origin::Teller).await };
            InFlight::answer(busy, peer, reply, teller_overloaded(), answer);
        }
        Inbound::Link {
            peer,
            request: LinkRequest::TwoPc { epoch, envelope },
            reply,
        } => {
            let from = Sender { peer, epoch };
            let fence = |b, e| {
                witness.map_or(Err(EnvelopeRefusal::NotConfirmed), |w| {
                    w.check_envelope(b, e)
                })
            };
            reply.answer(&twopc_envelope(
                network,
                s.service.me,
                &s.engine,
                from,
                fence,
                envelope,
            ));
        }
        Inbound::Link {
            request: LinkRequest::Fence(_),
            reply,
            ..
        } => reply.answer(&LinkResponse::Refused(EnvelopeRefusal::Overloaded)),
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

/// Who sent a 2PC envelope: the connected peer, and the epoch of its branch it sent at.
struct Sender {
    peer: libp2p::PeerId,
    epoch: u64,
}

/// Verifies a 2PC envelope, checks its sender's epoch with the fence, and hands it to
/// the engine.
fn twopc_envelope(
    network: &NetworkFile,
    me: wire::BranchId,
    engine: &EngineHandle,
    sender: Sender,
    fence: impl Fn(wire::BranchId, u64) -> Result<(), EnvelopeRefusal>,
    bytes: Vec<u8>,
) -> LinkResponse {
    let peer = &sender.peer;
    let checked = link::verify_envelope(network, me, peer, &bytes, now_ms())
        .and_then(|(from, message)| fence(from, sender.epoch).map(|()| (from, message)));
    match checked {
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
#[derive(Debug)]
struct InFlight {
    all: std::sync::atomic::AtomicUsize,
    peers: Arc<shares::Shares>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            all: std::sync::atomic::AtomicUsize::new(0),
            peers: Arc::new(shares::Shares::new(REQUESTS_PER_PEER_MAX)),
        }
    }
}

/// One request's place in [`InFlight`], given back when dropped.
#[derive(Debug)]
struct Slot {
    table: Arc<InFlight>,
    _peer: shares::Share,
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
        reply: client::pipe::Responder,
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
        use std::sync::atomic::Ordering;
        if table.all.fetch_add(1, Ordering::AcqRel) >= REQUESTS_IN_FLIGHT_MAX {
            table.all.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let Some(share) = shares::Shares::take(&table.peers, peer) else {
            table.all.fetch_sub(1, Ordering::AcqRel);
            return None;
        };
        Some(Slot {
            table: Arc::clone(table),
            _peer: share,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table
            .all
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
