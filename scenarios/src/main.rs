//! `scenarios`: the README's main command. `demo` runs a 3-branch network through a
//! mixed workload with a branch killed midway; `up` keeps a local network running;
//! `run` plays scenario files (workload + fault schedule + checks); `bench` measures
//! throughput, `failover` how long a replicated branch takes to serve again.
//! Exit status: 0 when every invariant holds, 1 on a violation, 2 on a usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scenarios::bench::{self, BenchMix, BenchOptions};
use scenarios::cluster::{ADMIN_PASSWORD, Cluster};
use scenarios::failover::{self, FailoverOptions, FaultKind};
use scenarios::scenario::{self, RunOptions, Scenario};

/// The demo scenario (also in scenarios/demo.toml).
const DEMO: &str = include_str!("../demo.toml");

#[derive(Parser, Debug)]
#[command(
    name = "scenarios",
    version,
    about = "BankMate: run local networks of branch nodes, inject faults, check invariants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell):
    /// `source <(scenarios completions bash)`.
    Completions { shell: clap_complete::Shell },
    /// 3 branches, accounts, a mixed workload, one branch killed -9 and restarted, report.
    Demo {
        /// Keep the network's files here (default: a temporary folder, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the report as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// Start a local network and keep it running until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        branches: u16,
        /// Replicas per branch (1, 3 or 5): each branch a Raft group of that many
        /// `branch-node` processes, served by its leader.
        #[arg(long, default_value_t = 1, value_parser = replica_count)]
        replicas: u64,
        /// Where the branches' data lives (default: ./bankmate-local).
        #[arg(long, default_value = "bankmate-local")]
        dir: PathBuf,
    },
    /// Run scenario files (see scenarios/*.toml); each prints a report.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Keep each run's files under this folder (default: temporary folders).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print each report as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// Time to the first commit after b1's leader is killed, paused or cut off, with
    /// a stream of transfers running and every answer checked.
    Failover {
        /// Trials of each fault.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Which faults (partition needs root: it makes network namespaces).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "kill,pause,partition"
        )]
        faults: Vec<FaultKind>,
        #[arg(long, default_value_t = 3)]
        branches: u16,
        /// How long each fault lasts, in milliseconds, before the restart, SIGCONT or heal.
        #[arg(long, default_value_t = 5_000)]
        fault_ms: u64,
        /// Clients of the stream of transfers.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Keep the network's data dirs and logs under this folder (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the result as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// Closed-loop throughput of local and cross-branch transfers, fsync on.
    Bench {
        #[arg(long, default_value_t = 3)]
        branches: u16,
        /// Replicas per branch (1, 3 or 5).
        #[arg(long, default_value_t = 1, value_parser = replica_count)]
        replicas: u64,
        /// Seconds per mix.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 128)]
        clients: usize,
        /// Teller connections per branch shared by the clients.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Keep the network's data dirs and logs under this folder (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which mixes to measure.
        #[arg(long, value_enum, default_value_t = BenchMix::Both)]
        mix: BenchMix,
        /// Also measure each mix as bulk payments of N transfers per request
        /// (`TransferBatch`, at most 1024).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Concurrent clients for the bulk payments.
        #[arg(long, default_value_t = bench::BATCH_CLIENTS_DEFAULT)]
        batch_clients: usize,
        /// Where to write the JSON result.
        #[arg(long, default_value = "bench-result.json")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scenarios: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("scenarios: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A folder for one run: the one given (created), or a temporary one.
fn workdir(
    given: Option<&Path>,
    name: &str,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(d) => {
            let d = d.join(name);
            if d.exists() {
                anyhow::bail!("{} exists; give an empty place with --dir", d.display());
            }
            std::fs::create_dir_all(&d)?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new().prefix("bankmate-").tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

async fn play(s: &Scenario, dir: Option<&Path>, json: bool) -> anyhow::Result<bool> {
    let slug: String = s
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let (path, _keep) = workdir(dir, &slug)?;
    eprintln!("running {:?} in {}", s.name, path.display());
    let summary = scenario::run(s, &path, &RunOptions { progress: true }).await?;
    println!("{}", summary.table());
    if json {
        println!("{}", summary.json());
    }
    Ok(summary.ok())
}

async fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            teller_cli::print_completions(shell, &mut command, "scenarios");
            Ok(true)
        }
        Command::Demo { dir, json } => {
            let s = Scenario::parse(DEMO)?;
            play(&s, dir.as_deref(), json).await
        }
        Command::Run { files, dir, json } => {
            let scenarios = files
                .iter()
                .map(|f| Scenario::load(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut all_ok = true;
            for s in &scenarios {
                all_ok &= play(s, dir.as_deref(), json).await?;
            }
            Ok(all_ok)
        }
        Command::Up {
            branches,
            replicas,
            dir,
        } => up(branches, replicas, &dir).await,
        Command::Failover {
            trials,
            faults,
            branches,
            fault_ms,
            clients,
            dir,
            json,
        } => {
            let opts = FailoverOptions {
                trials,
                kinds: faults,
                branches,
                fault: std::time::Duration::from_millis(fault_ms),
                clients,
            };
            failover_trials(&opts, dir.as_deref(), json).await
        }
        Command::Bench {
            branches,
            replicas,
            duration,
            clients,
            connections,
            dir,
            mix,
            batch,
            batch_clients,
            out,
        } => {
            let (path, _keep) = workdir(dir.as_deref(), "bench")?;
            let opts = BenchOptions {
                branches,
                replicas,
                duration_s: duration,
                clients,
                connections,
                accounts_per_branch: 200,
                mix,
                batch: batch.min(wire::limits::BATCH_LINES_MAX),
                batch_clients,
            };
            eprintln!(
                "bench: {branches} branches of {replicas} replica(s), {clients} clients, \
                 {duration} s per mix, fsync on"
            );
            let result = bench::run(&opts, &path).await?;
            std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
            eprintln!("result written to {}", out.display());
            Ok(result["invariants_ok"].as_bool().unwrap_or(false))
        }
    }
}

/// `scenarios failover`: runs the trials in a work dir and prints the report.
async fn failover_trials(
    opts: &FailoverOptions,
    dir: Option<&Path>,
    json: bool,
) -> anyhow::Result<bool> {
    let (path, _keep) = workdir(dir, "failover")?;
    let report = failover::run(opts, &path).await?;
    println!("{}", report.table());
    if json {
        println!("{}", report.json());
    }
    Ok(report.ok())
}

/// A branch runs as 1, 3 or 5 replicas: an odd count, so a majority outlives the loss
/// of one (3) or two (5) of them.
fn replica_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("{text:?}: a branch runs 1, 3 or 5 replicas")),
    }
}

async fn up(branches: u16, replicas: u64, dir: &Path) -> anyhow::Result<bool> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; remove it or give another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let flags = ["--fault-switch", "--metrics-listen", "127.0.0.1:0"];
    let mut cluster = Cluster::start_replicated(&dir, branches, replicas, &flags).await?;
    let teller = scenarios::cluster::teller_cli_bin()?.display().to_string();
    let net = cluster.network_file.display().to_string();
    println!("{}", std::fs::read_to_string(&cluster.network_file)?);
    println!("network of {branches} branches is up; network file: {net}");
    if replicas > 1 {
        println!(
            "each branch runs {replicas} replicas (data dirs <branch>-r<N>); its leader serves, \
             and a teller may connect to any of them"
        );
    }
    println!("admin login on every branch: user admin, password {ADMIN_PASSWORD}");
    println!("connect a teller (menus):");
    for n in cluster.nodes.iter().filter(|n| n.replica == 1) {
        println!("  {teller} --network-file {net} --branch {}", n.name);
    }
    println!("or script one, for example:");
    println!(
        "  BANKMATE_ADMIN_PW={ADMIN_PASSWORD} {teller} --network-file {net} --branch b1 \
         --user admin --password-env BANKMATE_ADMIN_PW admin accounts --network"
    );
    println!("or the web console, then open http://127.0.0.1:8080/ in a browser:");
    println!("  {teller} --network-file {net} --branch b1 web");
    println!("metrics of each node (beside them: /healthz and /readyz):");
    for n in &cluster.nodes {
        let url = n.metrics_url.as_deref().unwrap_or("(not said)");
        match replicas {
            1 => println!("  {}: {url}", n.name),
            _ => println!("  {}-r{}: {url}", n.name, n.replica),
        }
    }
    println!(
        "logs: {}/<branch>[-r<N>]/node.log. Ctrl-C stops the network.",
        dir.display()
    );
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    cluster.stop();
    Ok(true)
}
