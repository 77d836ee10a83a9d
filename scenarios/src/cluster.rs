//! A local network of real `branch-node` processes on 127.0.0.1: data dirs made with
//! `branch-node`'s `init`, free ports, a network file, and process control (start,
//! SIGKILL, SIGTERM, SIGSTOP/SIGCONT, restart with failpoints). Every process started
//! here is ended here, by its PID.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use branch_node::init;
use branch_node::keys::KekSource;
use client::network_file::NetworkFile;
use teller_cli::{Target, Teller};
use wire::teller::{NewCustomer, TellerOp, TellerResponse};
use wire::{AccountNumber, BranchId};

/// How long a node may take to print its ready line.
pub const NODE_START_TIMEOUT_MS: u64 = 30_000;

/// How long a node may take to stop after SIGTERM before it is killed.
pub const NODE_STOP_TIMEOUT_MS: u64 = 10_000;

/// The fence lease of a local network (its network file's `fence_lease_ms`).
pub const LOCAL_FENCE_LEASE_MS: u64 = 6_000;

/// The admin password every branch of a local network gets (a local test network only).
pub const ADMIN_PASSWORD: &str = "local-admin-password";

/// Where the `branch-node` binary is (see [`workspace_bin`]).
pub fn branch_node_bin() -> anyhow::Result<PathBuf> {
    workspace_bin("branch-node", "branch-node")
}

/// Where the `teller-cli` binary is (see [`workspace_bin`]).
pub fn teller_cli_bin() -> anyhow::Result<PathBuf> {
    workspace_bin("teller-cli", "teller-cli")
}

/// The packages whose binaries a run needs, built in one `cargo build` (their names are
/// also their binaries' names).
const BUILT_TOGETHER: [&str; 3] = ["scenarios", "branch-node", "teller-cli"];

/// Variables cargo sets for the program it runs (by prefix), not for a cargo it starts.
const PROGRAM_VARS: [&str; 9] = [
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_BIN_EXE_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// Where binary `bin` of workspace package `package` is: `BANKMATE_BIN_DIR`, else next
/// to the running program (target/<profile>/, or its parent for test binaries in deps/).
/// When it is not there yet it is built with the same profile.
pub fn workspace_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let name = format!("{bin}{}", std::env::consts::EXE_SUFFIX);
    if let Ok(dir) = std::env::var("BANKMATE_BIN_DIR") {
        return Ok(Path::new(&dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("program has no directory")?
        .to_path_buf();
    // Test binaries live in deps/ and were built with the test profile: build the
    // binary with the same profile, or every `cargo test` would rebuild it.
    let profile = if dir.ends_with("deps") {
        dir.pop();
        "test"
    } else if dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    let path = dir.join(&name);
    // Tests of one binary run in parallel; one of them builds, the others wait.
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .map_err(|_| anyhow::anyhow!("build registry poisoned"))?;
    // Under cargo (tests, `cargo run`) the binary may be stale: `cargo test -p tests`
    // does not build other packages' binaries. Build it once per process; a fresh
    // build is a no-op.
    let under_cargo = std::env::var_os("CARGO").is_some();
    if !built.iter().any(|b| b == bin) && (under_cargo || !path.exists()) {
        let status = build_command(package, bin, profile)
            .status()
            .context("running cargo build")?;
        if !status.success() || !path.exists() {
            bail!("cannot find or build {}", path.display());
        }
        built.push(bin.to_owned());
        if BUILT_TOGETHER.contains(&package) {
            built.extend(BUILT_TOGETHER.iter().map(|p| p.to_string()));
        }
    }
    Ok(path)
}

/// The `cargo build` of binary `bin` of `package` with the others a run needs (and
/// no other binary: `branch-node`'s `store-torture` is not built for a run).
fn build_command(package: &str, bin: &str, profile: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Every binary a run needs at once, with `scenarios` in the set: cargo resolves features
    // over the packages named, so this is the feature set `cargo run -p scenarios`
    // built with, and no shared library (libp2p, branch-node) is built twice.
    build.args(["build", "--profile", profile]);
    // `cargo run` and `cargo test` give their program the package's variables
    // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts (ring's, through
    // `cc`) rerun when those change, so a build that inherits them redoes libp2p's
    // crypto and everything above it, and the next plain build redoes it back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if PROGRAM_VARS.iter().any(|p| name.starts_with(p)) {
            build.env_remove(name.as_ref());
        }
    }
    let extra = (!BUILT_TOGETHER.contains(&package)).then_some(package);
    for p in BUILT_TOGETHER.into_iter().chain(extra) {
        build.args(["-p", p]);
    }
    let extra_bin = (!BUILT_TOGETHER.contains(&bin)).then_some(bin);
    for b in BUILT_TOGETHER.into_iter().chain(extra_bin) {
        build.args(["--bin", b]);
    }
    // Build in the workspace this program came from, so it works from any folder.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if workspace.join("Cargo.toml").exists() {
        build.current_dir(workspace);
    }
    build
}

/// A port free now and never handed out before by this process: clusters started at once
/// (parallel tests) must not pick the same port between its release and the node's bind.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN
            .lock()
            .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// The key-encryption key of a local network's data dirs: a generated key file in the
/// network's folder (beside the data dirs, never in one), made at its first use.
pub fn kek_file(network_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = network_dir.join(KEK_FILE);
    if !path.is_file() {
        std::fs::create_dir_all(network_dir)?;
        branch_node::keys::keygen(&path)?;
    }
    Ok(path)
}

/// The name of [`kek_file`]'s file.
pub const KEK_FILE: &str = "network.kek";

/// The folder a data dir `data` is in.
fn parent(data: &Path) -> &Path {
    data.parent().unwrap_or(Path::new("."))
}

/// Makes branch `id`'s data dir (its first admin's password [`ADMIN_PASSWORD`]).
fn init_branch(data: &Path, id: u16, name: &str) -> anyhow::Result<init::Initialized> {
    Ok(init::init(
        data,
        BranchId(id),
        name,
        Some(ADMIN_PASSWORD.into()),
        false,
        &KekSource::File(kek_file(parent(data))?),
    )?)
}

/// Makes replica data dir `data` of branch `id`, with the keys of replica data dir
/// `first`.
fn init_replica(data: &Path, id: BranchId, first: &Path) -> anyhow::Result<init::Initialized> {
    let keys = first.join(branch_node::keys::KEYS_FILE);
    Ok(init::init_replica(
        data,
        id,
        &keys,
        &KekSource::File(kek_file(parent(data))?),
    )?)
}

/// How long a replicated branch may take to serve after its replicas start (its first
/// replica makes the log and a snapshot, the others install it, a leader is elected).
pub const SERVE_WAIT: Duration = Duration::from_secs(30);

/// The port a node placed in a network namespace of its own listens on.
pub const NETNS_PORT: u16 = 7001;

/// One branch of the local network (one replica of it, for a replicated branch).
#[derive(Debug)]
pub struct Node {
    pub id: BranchId,
    pub name: String,
    /// Its replica id within the branch (1 for a branch that is not replicated).
    pub replica: u64,
    /// The network namespace it runs in, if not this process's.
    pub netns: Option<String>,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub port: u16,
    /// Its metrics endpoint (`http://ADDR/metrics`), when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    /// Set once the node said it serves its branch (its fence confirmed it).
    pub serving: Arc<AtomicBool>,
}

/// A running local network.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub network_file: PathBuf,
    pub nodes: Vec<Node>,
    bin: PathBuf,
    /// Extra `branch-node run` flags for every node.
    pub flags: Vec<String>,
}

impl Cluster {
    /// Makes `n` branches in `dir` (ids 1..=n, names b1..bn) and starts them all.
    pub fn start(dir: &Path, n: u16, flags: &[&str]) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::create(dir, n, flags)?;
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i, &[])?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_node_serving(i, Duration::from_millis(NODE_START_TIMEOUT_MS))?;
        }
        Ok(cluster)
    }

    /// Waits until node `i` (started by this cluster) said it serves its branch: its
    /// fence confirmed it, so money moves.
    pub fn wait_node_serving(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.nodes[i].serving.load(Ordering::Relaxed) {
            if std::time::Instant::now() > deadline {
                let log = self.nodes[i].dir.join("node.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "branch {} did not start serving within {timeout:?}; {} ends:\n{}",
                    self.nodes[i].name,
                    log.display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Makes `n` branches in `dir` (ids 1..=n, names b1..bn) without starting them.
    pub fn create(dir: &Path, n: u16, flags: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::create_replicated(dir, n, 1, flags)
    }

    /// Makes `n` branches of `replicas` replicas each and starts them all; returns once
    /// every branch serves (its replicas elected a leader that holds its first snapshot).
    pub async fn start_replicated(
        dir: &Path,
        n: u16,
        replicas: u64,
        flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::create_replicated(dir, n, replicas, flags)?;
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i, &[])?;
        }
        for b in 0..usize::from(n) {
            cluster.wait_serving(b, SERVE_WAIT).await?;
        }
        Ok(cluster)
    }

    /// Waits until branch index `b` (0-based) answers its admin's login.
    pub async fn wait_serving(&self, b: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let answer = match Teller::connect(&self.branch_target(b)?).await {
                Ok(mut t) => t.login(init::ADMIN_LOGIN, ADMIN_PASSWORD).await.map(drop),
                Err(e) => Err(e),
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    bail!("branch b{} does not serve: {e}", b + 1)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Where to reach branch index `b` (0-based): any of its replicas.
    pub fn branch_target(&self, b: usize) -> anyhow::Result<Target> {
        Ok(Target::by_name(&self.network_file, &format!("b{}", b + 1))?)
    }

    /// A teller logged in as the admin of branch index `b` (0-based), through any of its
    /// replicas.
    pub async fn admin_of_branch(&self, b: usize) -> anyhow::Result<Teller> {
        let mut t = Teller::connect(&self.branch_target(b)?).await?;
        t.login(init::ADMIN_LOGIN, ADMIN_PASSWORD).await?;
        Ok(t)
    }

    /// The replica (node index) of branch `id` that serves it, by its log: the one whose
    /// last word on it is "serving the branch", most recently.
    pub fn serving_replica(&self, id: BranchId) -> Option<usize> {
        let mut best: Option<(String, usize)> = None;
        for i in self.replicas_of(id) {
            let log =
                std::fs::read_to_string(self.nodes[i].dir.join("node.log")).unwrap_or_default();
            // "serving the branch", or "stopped serving the branch: ...".
            let last = log.lines().rev().find(|l| l.contains("serving the branch"));
            if let Some(line) = last.filter(|l| !l.contains("stopped")) {
                let at = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if best.as_ref().is_none_or(|(t, _)| at > *t) {
                    best = Some((at, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Replaces replica node `i`, whose machine is gone: kills it and deletes its data
    /// dir, makes a new, empty replica (a new key, the branch's next replica id, a new
    /// port) in its place, and lists it in the network file instead of the old one.
    /// Nothing is started: every node reads the network file when it starts, so the
    /// caller restarts them (one at a time) and starts the new one.
    pub fn replace_replica(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let id = self.nodes[i].id;
        let next = self
            .replicas_of(id)
            .iter()
            .map(|&k| self.nodes[k].replica)
            .max()
            .unwrap_or(0)
            + 1;
        let old_dir = self.nodes[i].dir.clone();
        let network = NetworkFile::load(&self.network_file)?;
        let old_peer = network
            .get(id)
            .and_then(|b| b.replica(self.nodes[i].replica))
            .map(|r| r.peer_id.to_string())
            .context("the replica is not listed")?;
        let dir = self.dir.join(format!("{}-r{next}", self.nodes[i].name));
        let done = init_replica(&dir, id, &old_dir)?;
        std::fs::remove_dir_all(&old_dir)?;
        let port = free_port()?;
        let addr: multiaddr::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
        // A replica's table, as `init` prints it: the header, its id, key, PeerId and
        // addresses, one line each.
        let text = std::fs::read_to_string(&self.network_file)?;
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("peer_id") && l.contains(&old_peer))
            .context("the replica's table")?;
        anyhow::ensure!(
            at >= 3 && lines[at - 3] == "[[branch.replica]]",
            "unexpected table"
        );
        let table = done.replica_entry_at(next, &[addr]);
        lines.splice(at - 3..=at + 1, table.lines().map(str::to_owned));
        let out = lines.join("\n") + "\n";
        NetworkFile::parse(&out).context("the new network file")?;
        std::fs::write(&self.network_file, out)?;
        let node = &mut self.nodes[i];
        node.dir = dir;
        node.replica = next;
        node.port = port;
        Ok(())
    }

    /// The nodes (replicas) of branch `id`.
    pub fn replicas_of(&self, id: BranchId) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].id == id)
            .collect()
    }

    /// Makes `n` branches in `dir`, each of `replicas` replicas (1: not replicated), without
    /// starting them. Nodes are ordered by branch, then replica.
    pub fn create_replicated(
        dir: &Path,
        n: u16,
        replicas: u64,
        flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        Cluster::create_placed(dir, n, replicas, flags, &|_| None)
    }

    /// [`Cluster::create_replicated`], with node `k` (in node order) placed by `place`:
    /// `Some((ip, netns))` runs it in network namespace `netns` (which the caller made),
    /// listening on `ip` port [`NETNS_PORT`]; `None` on 127.0.0.1 at a free port.
    pub fn create_placed(
        dir: &Path,
        n: u16,
        replicas: u64,
        flags: &[&str],
        place: &dyn Fn(usize) -> Option<(String, String)>,
    ) -> anyhow::Result<Cluster> {
        let where_ = |k: usize| -> anyhow::Result<(String, u16, Option<String>)> {
            Ok(match place(k) {
                Some((ip, ns)) => (ip, NETNS_PORT, Some(ns)),
                None => ("127.0.0.1".into(), free_port()?, None),
            })
        };
        let bin = branch_node_bin()?;
        let mut nodes = Vec::new();
        // A local network's fence lease is short (the default is 30 s): a restore waits
        // out the lease and half again after a branch was killed, and scenarios restore.
        let mut network = format!("fence_lease_ms = {LOCAL_FENCE_LEASE_MS}\n\n");
        for i in (1..=n).filter(|_| replicas > 1) {
            let name = format!("b{i}");
            network.push_str(&format!("[[branch]]\nid = {i}\nname = {name:?}\n"));
            for r in 1..=replicas {
                let data = dir.join(format!("{name}-r{r}"));
                let done = if r == 1 {
                    let done = init_branch(&data, i, &name)?;
                    init::mark_bootstrap(&data)?;
                    done
                } else {
                    init_replica(&data, BranchId(i), &dir.join(format!("{name}-r1")))?
                };
                let (ip, port, netns) = where_(nodes.len())?;
                let addr: multiaddr::Multiaddr = format!("/ip4/{ip}/tcp/{port}").parse()?;
                network.push_str(&done.replica_entry_at(r, &[addr]));
                nodes.push(Node {
                    id: BranchId(i),
                    name: name.clone(),
                    replica: r,
                    netns,
                    dir: data,
                    child: None,
                    port,
                    metrics_url: None,
                    serving: Arc::default(),
                });
            }
            network.push('\n');
        }
        for i in (1..=n).filter(|_| replicas <= 1) {
            let name = format!("b{i}");
            let data = dir.join(&name);
            let done = init_branch(&data, i, &name)?;
            let (ip, port, netns) = where_(nodes.len())?;
            let entry = done.network_entry();
            let addr = format!("addresses = [\"/ip4/{ip}/tcp/{port}\"]");
            let entry: Vec<String> = entry
                .lines()
                .map(|l| {
                    if l.starts_with("addresses") {
                        addr.clone()
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            network.push_str(&entry.join("\n"));
            network.push_str("\n\n");
            nodes.push(Node {
                id: BranchId(i),
                name,
                replica: 1,
                netns,
                dir: data,
                child: None,
                port,
                metrics_url: None,
                serving: Arc::default(),
            });
        }
        let network_file = dir.join("network.toml");
        std::fs::write(&network_file, network)?;
        Ok(Cluster {
            dir: dir.to_path_buf(),
            network_file,
            nodes,
            bin,
            flags: flags.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// Starts node `i` (index into `nodes`) with extra environment (e.g. FAILPOINTS)
    /// and waits for its ready line.
    pub fn start_node(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        // Owner-only, like every file in a data dir (it names accounts and peers).
        let log = branch_node::init::owner_only_append(&node.dir.join("node.log"))?;
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--network-file")
            .arg(&self.network_file)
            .args(&self.flags)
            .env(
                "RUST_LOG",
                std::env::var("BANKMATE_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let serving = Arc::new(AtomicBool::new(false));
        node.serving = Arc::clone(&serving);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("serving:") {
                    serving.store(true, Ordering::Relaxed);
                } else if line.starts_with("ready:") || line.starts_with("metrics: ") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
        let ready = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready:") => break Ok(()),
                Ok(line) => {
                    let url = line.trim_start_matches("metrics: ");
                    node.metrics_url = url.split_whitespace().next().map(str::to_owned);
                }
                Err(e) => break Err(e),
            }
        };
        node.child = Some(child);
        if ready.is_err() {
            let name = node.name.clone();
            self.kill(i);
            bail!(
                "branch {name} did not become ready; see {}",
                self.nodes[i].dir.join("node.log").display()
            );
        }
        Ok(())
    }

    /// A backup of node `i`'s store (`branch-node backup`, while it runs) into the
    /// cluster's dir; where it is.
    pub fn backup(&self, i: usize) -> anyhow::Result<PathBuf> {
        let n = &self.nodes[i];
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let to = self.dir.join(format!("{}-{stamp}.backup", n.name));
        let out = Command::new(&self.bin)
            .arg("backup")
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--to")
            .arg(&to)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "backup of {}: {}",
            n.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(to)
    }

    /// Deletes node `i`'s database and the files SQLite keeps beside it (a lost disk;
    /// the node must be stopped).
    pub fn lose_database(&self, i: usize) -> anyhow::Result<()> {
        for f in ["", "-wal", "-shm"] {
            let path = self.nodes[i].dir.join(format!("{}{f}", init::DB_FILE));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Restores backup `from` into node `i`'s data dir (`branch-node restore`); its report.
    pub fn restore(&self, i: usize, from: &Path) -> anyhow::Result<branch_node::restore::Report> {
        let n = &self.nodes[i];
        let out = Command::new(&self.bin)
            .arg("restore")
            .arg("--from")
            .arg(from)
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--network-file")
            .arg(&self.network_file)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "restore of {}: {}{}",
            n.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read_to_string(n.dir.join(branch_node::restore::REPORT_JSON_FILE))?;
        Ok(serde_json::from_str(&json)?)
    }

    /// Whether node `i` is running (started and not seen to exit).
    pub fn running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Process ids of the running nodes (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().into_iter().map(|(pid, _)| pid).collect()
    }

    /// Each running node's process id with its name (b1, or b1r2 for a replica).
    pub fn processes(&self) -> Vec<(u32, String)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let pid = n.child.as_ref().map(Child::id)?;
                let name = match n.replica {
                    1 => n.name.clone(),
                    r => format!("{}r{r}", n.name),
                };
                Some((pid, name))
            })
            .collect()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits, at most `timeout`, for node `i` to exit by itself (a failpoint crash).
    /// True when it exited.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.nodes[i].child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let Some(c) = self.nodes[i].child.as_ref() else {
            bail!("branch {} is not running", self.nodes[i].name);
        };
        let status = Command::new("kill")
            .args(["-s", sig, &c.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -s {sig} failed");
        Ok(())
    }

    /// SIGSTOP node `i` (it keeps its sockets but answers nothing).
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")
    }

    /// SIGTERM every node and wait for each to finish its queued work.
    pub fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.signal(i, "TERM");
        }
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let deadline =
                    std::time::Instant::now() + Duration::from_millis(NODE_STOP_TIMEOUT_MS);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => break,
                        _ if std::time::Instant::now() > deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }

    /// Where to reach node `i`.
    pub fn target(&self, i: usize) -> anyhow::Result<Target> {
        Ok(Target::by_name(&self.network_file, &self.nodes[i].name)?)
    }

    /// A teller logged in as node `i`'s admin.
    pub async fn admin(&self, i: usize) -> anyhow::Result<Teller> {
        let mut t = Teller::connect(&self.target(i)?).await?;
        t.login(init::ADMIN_LOGIN, ADMIN_PASSWORD).await?;
        Ok(t)
    }

    /// Opens an account at node `i` (as its admin) for a new customer with this national
    /// id, whose login password is `password`; returns its number.
    pub async fn open_account(
        &self,
        i: usize,
        national_id: &str,
        password: &str,
        sms_opt_in: bool,
    ) -> anyhow::Result<AccountNumber> {
        let opened = self
            .admin(i)
            .await?
            .call(TellerOp::OpenAccount {
                customer: NewCustomer {
                    national_id: national_id.into(),
                    phone: "+1 555 0100".into(),
                    first_name: "Test".into(),
                    last_name: national_id.into(),
                    sms_opt_in,
                },
                password: password.into(),
                existing: None,
            })
            .await?;
        match opened {
            TellerResponse::AccountOpened(view) => Ok(view.number),
            other => bail!("open account: {other:?}"),
        }
    }

    /// Each branch's database file (of a replicated branch: its first running replica's).
    pub fn databases(&self) -> Vec<(BranchId, PathBuf)> {
        let mut ids: Vec<BranchId> = self.nodes.iter().map(|n| n.id).collect();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let of = || self.nodes.iter().filter(move |n| n.id == id);
                let node = of().find(|n| n.child.is_some()).or_else(|| of().next())?;
                Some((id, node.dir.join(init::DB_FILE)))
            })
            .collect()
    }

    /// Each replicated branch's replicas' database files, by branch.
    pub fn replica_databases(&self) -> Vec<(BranchId, Vec<PathBuf>)> {
        let mut out: Vec<(BranchId, Vec<PathBuf>)> = Vec::new();
        for n in self
            .nodes
            .iter()
            .filter(|n| self.replicas_of(n.id).len() > 1)
        {
            let path = n.dir.join(init::DB_FILE);
            match out.iter_mut().find(|(id, _)| *id == n.id) {
                Some((_, paths)) => paths.push(path),
                None => out.push((n.id, vec![path])),
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(c) = self.nodes[i].child.as_ref() {
                // A paused node cannot handle SIGTERM; wake it first.
                let _ = Command::new("kill")
                    .args(["-s", "CONT", &c.id().to_string()])
                    .status();
            }
            self.kill(i);
        }
    }
}
