//! `branch-node`: the process a bank runs at each branch. Thin: parses arguments and
//! calls the library (`init` makes a data dir, `run` serves it).

use std::path::PathBuf;
use std::process::ExitCode;

use branch_node::keys::{KekSource, KeyError};
use branch_node::node::RunConfig;
use branch_node::node::notifier::{SmsSink, TwilioConfig};
use branch_node::store::Durability;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use tracing_subscriber::EnvFilter;
use wire::BranchId;

#[derive(Parser, Debug)]
#[command(name = "branch-node", version, about = "A BankMate branch node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the key-encryption key that wraps a data dir's keys comes from. `init` needs
/// one; other commands use the one the data dir's `data.keys` names unless told.
#[derive(clap::Args, Debug, Clone, Default)]
struct KekArgs {
    /// A file of 64 hex digits, readable by its owner only, kept outside the data dir
    /// (make one with `branch-node keygen FILE`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_command", "passphrase"])]
    key_file: Option<PathBuf>,
    /// A command whose output is the key (64 hex digits), e.g. a KMS or HSM client.
    #[arg(long, value_name = "COMMAND", conflicts_with = "passphrase")]
    key_command: Option<String>,
    /// A passphrase (argon2id), from BANKMATE_PASSPHRASE or asked on the terminal.
    #[arg(long)]
    passphrase: bool,
}

impl KekArgs {
    fn source(&self) -> Option<KekSource> {
        match (&self.key_file, &self.key_command, self.passphrase) {
            (Some(f), _, _) => Some(KekSource::File(f.clone())),
            (None, Some(c), _) => Some(KekSource::Command(c.clone())),
            (None, None, true) => Some(KekSource::Passphrase),
            (None, None, false) => None,
        }
    }
}

/// The new key-encryption key of `rekey`.
#[derive(clap::Args, Debug, Clone)]
struct NewKekArgs {
    /// The new KEK's file (64 hex digits, owner-only).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["new_key_command", "new_passphrase"])]
    new_key_file: Option<PathBuf>,
    /// The new KEK's command.
    #[arg(long, value_name = "COMMAND", conflicts_with = "new_passphrase")]
    new_key_command: Option<String>,
    /// A new passphrase, from BANKMATE_NEW_PASSPHRASE or asked twice on the terminal.
    #[arg(long)]
    new_passphrase: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a key-encryption key file: 32 random bytes as 64 hex digits, owner-only.
    /// Keep it outside every data dir and away from the backups.
    Keygen { file: PathBuf },
    /// Wrap a data dir's keys by a new key-encryption key (the store is not rewritten;
    /// the node may run). Backups taken before keep the old wrapping.
    Rekey {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        #[command(flatten)]
        new: NewKekArgs,
    },
    /// Re-encrypt a stopped branch's stores (branch.db, raft.db) under a new store key.
    /// A replicated branch: rotate one replica, then each other with --keys-from its
    /// new data.keys, before any starts again.
    RotateDataKey {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        /// Take the new store key from this keys file (another replica's, rotated).
        #[arg(long, value_name = "FILE")]
        keys_from: Option<PathBuf>,
    },
    /// Encrypt a stopped data dir made before encryption at rest (its stores plain
    /// SQLite): new data keys wrapped by the key-encryption key given, every store file
    /// re-written under them; national ids are sealed at the next start.
    Encrypt {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Print a data dir's SMS log (sms.log), each message unsealed with its keys.
    SmsLog {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell):
    /// `source <(branch-node completions bash)`.
    Completions { shell: clap_complete::Shell },
    /// Make a branch's data dir: key (mode 0600), database and first admin ("admin").
    Init {
        /// Directory for the branch's key and database (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        /// The branch's id, 1..=999 (the first 3 digits of its account numbers).
        #[arg(long)]
        branch_id: u16,
        /// The branch's name, as tellers will use it.
        #[arg(long)]
        name: String,
        /// File holding the first admin's password; without it one is generated and shown once.
        #[arg(long)]
        admin_password_file: Option<PathBuf>,
        /// Enrol the admin for one-time codes (TOTP): prints the otpauth:// URI to add
        /// to an authenticator app; every admin login then needs the current code.
        #[arg(long)]
        totp: bool,
        /// Where the branch will listen (repeatable), e.g. /ip4/192.168.1.20/tcp/7001:
        /// the printed network-file block lists it, ready to paste.
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// This is replica 1 of a branch that runs as several replicas (make the others
        /// with `init-replica`): its first run makes the branch's log.
        #[arg(long)]
        replicated: bool,
        /// The largest deposit a customer may make into their own account, e.g.
        /// 10000.00; larger deposits are refused (`deposit_limit`) unless an admin
        /// makes them.
        #[arg(long, default_value = "10000.00", value_parser = parse_amount)]
        customer_deposit_max: wire::Amount,
    },
    /// Make the data dir of another replica of a branch (its own key, an empty store);
    /// list it in the network file and it catches up from the leader.
    InitReplica {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        #[arg(long)]
        branch_id: u16,
        /// Its replica id within the branch (2 and up; replica 1 is made by `init`).
        #[arg(long)]
        replica: u64,
        /// The branch's keys: another replica's data.keys (a branch's replicas share
        /// them), unwrapped with this command's key-encryption key.
        #[arg(long, value_name = "FILE")]
        keys_from: PathBuf,
        #[arg(long)]
        listen: Vec<Multiaddr>,
    },
    /// Copy a branch's database to a new file FILE (owner-only) while the node runs:
    /// one consistent moment (SQLite's online backup), encrypted like the store, with
    /// its wrapped keys beside it as FILE.keys. Neither key file is included.
    Backup {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup back as the database of a data dir that holds the branch's key and
    /// no database, and recover what the network knows: refused while another copy of
    /// the branch serves; then the restored copy becomes the branch's newest (the old
    /// one is fenced), and every cross-branch transfer made after the backup is put back
    /// from the other branches' signed records. What only the lost disk knew (deposits,
    /// withdrawals and local transfers after the backup) is counted in the report
    /// (restore-report.txt in the data dir). Every other branch must answer. A
    /// replicated branch is restored only when every replica is lost: one replica makes
    /// the branch's new log from the backup, the others restore with --join.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        /// The network file listing every branch (the other branches are asked).
        #[arg(long = "network-file", visible_alias = "network")]
        network: PathBuf,
        /// A replicated branch's other replicas: wait for the replica that makes the new
        /// log (restored without --join) and take the branch from it.
        #[arg(long)]
        join: bool,
        /// How long to wait for every other branch to answer, in seconds.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Audit a stopped branch's data dir (or a restored backup) offline: SQLite
    /// integrity, the ledger's hash chain, balances recomputed from the ledger, the
    /// signed votes and decisions of every cross-branch commit against the network
    /// file's keys, nothing half-applied. Exit 0 only when every check holds.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        #[arg(long = "network-file", visible_alias = "network")]
        network: PathBuf,
    },
    /// Serve a branch: teller protocol, 2PC with the other branches, SMS notifier.
    ///
    /// Logs go to stderr (filter with RUST_LOG, default info). Ctrl-C or SIGTERM stops
    /// it after queued storage is durable. FAILPOINTS=name=panic crashes it at a 2PC
    /// step (before_prepare_durable, after_vote_sent, after_decision_durable, ...).
    Run {
        /// The branch's data dir, made by `branch-node init`.
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        /// The network file listing every branch's id, name, key and addresses.
        #[arg(long = "network-file", visible_alias = "network")]
        network: PathBuf,
        /// Listen here instead of the addresses network.toml lists for this branch.
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// Find listed branches' LAN addresses with mDNS (never adds trust).
        #[arg(long)]
        mdns: bool,
        /// Let admins block or delay links to other branches (fault scenarios only).
        #[arg(long)]
        fault_switch: bool,
        /// Send SMS through Twilio's Messages API at this base URL (https://api.twilio.com;
        /// plain http:// only to a loopback relay), with TWILIO_ACCOUNT_SID,
        /// TWILIO_AUTH_TOKEN and TWILIO_FROM from the environment, and optionally
        /// TWILIO_CA_FILE (a PEM CA to trust instead of the public roots). Without it,
        /// messages are appended to sms.log in the data dir.
        #[arg(long)]
        sms_url: Option<String>,
        /// Log lines as text (colours only on a terminal) or as one JSON object each.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Serve Prometheus metrics at http://ADDR/metrics, with /healthz and /readyz
        /// (port 0 picks a free port; the address is printed).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// synchronous=NORMAL instead of FULL: an acknowledged write may be lost on power
        /// loss. For benchmarks only.
        #[arg(long)]
        unsafe_no_fsync: bool,
    },
}

fn main() -> ExitCode {
    // Every file a branch-node command creates is its owner's alone: the key, the
    // stores, the Raft log and SQLite's files beside them, snapshots, logs, reports.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // A panic anywhere (including a failpoint) stops the whole node at once, like a crash:
    // a half-alive node with a dead 2PC task would be worse than a restart.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = code_of(&e).map_or_else(String::new, |c| format!(" [{c}]"));
            eprintln!("branch-node: {}{code}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// `e` and its causes on one line, each cause once: an error that already quotes its
/// cause (`path: reason`) does not have it repeated.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The stable code of a refusal an operator may meet, where the error is one.
fn code_of(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| {
        if let Some(l) = cause.downcast_ref::<branch_node::lock::LockError>() {
            Some(l.code())
        } else if cause.is::<branch_node::p2p::AddressInUse>() {
            Some("address_in_use")
        } else if cause.is::<branch_node::restore::InUse>() {
            Some("branch_in_use")
        } else if cause.is::<branch_node::node::FencedCopy>() {
            Some("fenced")
        } else if let Some(k) = cause.downcast_ref::<KeyError>() {
            Some(k.code())
        } else if let Some(branch_node::init::InitError::Keys(k)) =
            cause.downcast_ref::<branch_node::init::InitError>()
        {
            Some(k.code())
        } else if let Some(branch_node::store::StoreError::Keys(k)) =
            cause.downcast_ref::<branch_node::store::StoreError>()
        {
            Some(k.code())
        } else if let Some(branch_node::store::StoreError::Unreadable(_)) =
            cause.downcast_ref::<branch_node::store::StoreError>()
        {
            Some("store_unreadable")
        } else {
            None
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "branch-node", &mut script);
            // As `teller_cli::print_completions` mends it: clap_complete 4 spells a
            // hyphenated name's nested bash functions two ways.
            let script =
                String::from_utf8_lossy(&script).replace("branch__subcmd__node", "branch__node");
            print!("{script}");
            Ok(())
        }
        command @ (Command::Keygen { .. }
        | Command::Rekey { .. }
        | Command::RotateDataKey { .. }
        | Command::Encrypt { .. }
        | Command::SmsLog { .. }) => key_command(command),
        Command::Backup { data_dir, kek, to } => backup_command(&data_dir, &to, &kek),
        Command::Restore {
            from,
            data_dir,
            kek,
            network,
            join,
            wait_secs,
        } => restore_command((&from, &data_dir), &network, (join, &kek), wait_secs),
        Command::Verify {
            data_dir,
            kek,
            network,
        } => verify_command(&data_dir, &network, &kek),
        Command::Init {
            data_dir,
            kek,
            branch_id,
            name,
            admin_password_file,
            totp,
            listen,
            replicated,
            customer_deposit_max,
        } => {
            let password = admin_password_file
                .as_deref()
                .map(read_password)
                .transpose()?;
            let branch = (BranchId(branch_id), name.as_str());
            let made = (password, totp, customer_deposit_max);
            let kek = kek.source().ok_or(KeyError::NoKek)?;
            init_command((&data_dir, &kek), branch, made, &listen, replicated)
        }
        Command::InitReplica {
            data_dir,
            kek,
            branch_id,
            replica,
            keys_from,
            listen,
        } => {
            let kek = kek.source().ok_or(KeyError::NoKek)?;
            let branch = (BranchId(branch_id), replica);
            init_replica_command((&data_dir, &kek), branch, &keys_from, &listen)
        }
        Command::Run {
            data_dir,
            kek,
            network,
            listen,
            mdns,
            fault_switch,
            sms_url,
            unsafe_no_fsync,
            metrics_listen,
            log_format,
        } => {
            init_logs(log_format);
            let _failpoints = fail::FailScenario::setup();
            let cfg = RunConfig {
                data_dir,
                network_file: network,
                listen,
                mdns,
                fault_switch,
                sms: sms_sink(sms_url)?,
                durability: durability(unsafe_no_fsync),
                metrics_listen,
                kek: kek.source(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(branch_node::node::run(cfg, shutdown_signal()))
        }
    }
}

/// fsync on every commit, unless the operator asked for none (benchmarks only).
fn durability(unsafe_no_fsync: bool) -> Durability {
    match unsafe_no_fsync {
        true => Durability::Normal,
        false => Durability::Full,
    }
}

/// Where SMS alerts go: Twilio's API at `url` (credentials from the environment), or
/// by default the data dir's log file.
fn sms_sink(url: Option<String>) -> anyhow::Result<Option<SmsSink>> {
    let Some(url) = url else { return Ok(None) };
    let twilio = TwilioConfig::from_env(url).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(SmsSink::Twilio(twilio)))
}

/// The first line of the admin password file (without its line end).
fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// `branch-node init`: `made` is the admin password (if given), whether the admin
/// needs one-time codes, and the customer deposit limit.
fn init_command(
    (data_dir, kek): (&std::path::Path, &KekSource),
    (branch, name): (BranchId, &str),
    (password, totp, customer_deposit_max): (Option<String>, bool, wire::Amount),
    listen: &[Multiaddr],
    replicated: bool,
) -> anyhow::Result<()> {
    let done = branch_node::init::init_with(
        data_dir,
        (branch, name),
        password,
        (totp, customer_deposit_max),
        kek,
    )?;
    println!(
        "initialized branch {} ({}) in {}",
        done.branch,
        done.name,
        data_dir.display()
    );
    println!("admin login: {}", branch_node::init::ADMIN_LOGIN);
    println!("customers may deposit up to {customer_deposit_max} at a time");
    if let Some(p) = &done.generated_password {
        println!("admin password: {p}  (shown once: keep it safe)");
    }
    if let Some(uri) = &done.otp_uri {
        println!("admin one-time codes: add this to an authenticator app (shown once):");
        println!("  {uri}");
    }
    if replicated {
        branch_node::init::mark_bootstrap(data_dir)?;
        println!(
            "\nadd this branch to network.toml, with a [[branch.replica]] table for each \
             other replica (from init-replica):\n\n[[branch]]\nid = {}\nname = {:?}\n{}",
            done.branch,
            done.name,
            done.replica_entry_at(1, listen)
        );
    } else {
        println!(
            "\nadd this branch to network.toml:\n\n{}",
            done.network_entry_at(listen)
        );
    }
    Ok(())
}

/// `branch-node init-replica`.
fn init_replica_command(
    (data_dir, kek): (&std::path::Path, &KekSource),
    (branch, replica): (BranchId, u64),
    keys_from: &std::path::Path,
    listen: &[Multiaddr],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        replica >= 2,
        "replica 1 is made by `branch-node init --replicated`"
    );
    let done = branch_node::init::init_replica(data_dir, branch, keys_from, kek)?;
    println!(
        "initialized replica {replica} of branch {} in {}",
        done.branch,
        data_dir.display()
    );
    println!(
        "\nadd this under the branch's [[branch]] in network.toml:\n\n{}",
        done.replica_entry_at(replica, listen)
    );
    Ok(())
}

/// `branch-node backup`.
fn backup_command(
    data_dir: &std::path::Path,
    to: &std::path::Path,
    kek: &KekArgs,
) -> anyhow::Result<()> {
    let c = branch_node::backup::backup(data_dir, to, kek.source().as_ref())?;
    println!(
        "backed up branch {:03} to {} (encrypted; its wrapped keys in {}): {} accounts, \
         {} ledger entries, {} legs in doubt (no key file is in it)",
        c.branch,
        to.display(),
        branch_node::backup::keys_beside(to).display(),
        c.accounts,
        c.ledger_entries,
        c.legs_in_doubt
    );
    Ok(())
}

/// `branch-node restore`: the copy, then the network's part under the same lock; if
/// that fails, the copy is taken back so the restore can be run again.
fn restore_command(
    (from, data_dir): (&std::path::Path, &std::path::Path),
    network: &std::path::Path,
    (join, kek): (bool, &KekArgs),
    wait_secs: u64,
) -> anyhow::Result<()> {
    use branch_node::backup::{self, Rejoin};
    let kek = kek.source();
    let lock = backup::lock_for_restore(data_dir)?;
    let (c, rejoin) = backup::restore_locked(from, data_dir, (join, kek.as_ref()), &lock)?;
    let wait = std::time::Duration::from_secs(wait_secs);
    let runtime = tokio::runtime::Runtime::new()?;
    let recovered = runtime.block_on(branch_node::restore::recover(
        data_dir,
        (network, kek.as_ref()),
        join,
        wait,
    ));
    let report = match recovered {
        Ok(r) => r,
        Err(e) => {
            backup::undo_restore(data_dir, rejoin);
            return Err(e);
        }
    };
    println!(
        "restored branch {:03} into {}: {} accounts, {} ledger entries, {} legs in doubt \
         (recovery finishes them at start); next: branch-node verify, then run",
        c.branch,
        data_dir.display(),
        c.accounts,
        c.ledger_entries,
        c.legs_in_doubt
    );
    if !join {
        let text = report.text();
        print!("{text}");
        let keep = |name: &str, bytes: &[u8]| -> anyhow::Result<std::path::PathBuf> {
            let path = data_dir.join(name);
            let _ = std::fs::remove_file(&path);
            let mut f = branch_node::init::owner_only_file(&path)?;
            std::io::Write::write_all(&mut f, bytes)?;
            Ok(path)
        };
        let path = keep(branch_node::restore::REPORT_FILE, text.as_bytes())?;
        keep(
            branch_node::restore::REPORT_JSON_FILE,
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        println!("(this report is kept in {})", path.display());
    }
    match rejoin {
        Rejoin::Alone => {}
        Rejoin::NewLog => println!(
            "this replica makes the branch's new log from the backup at its first run: \
             restore every other replica of the branch with --join (or make it anew with \
             init-replica); none may keep its old log"
        ),
        Rejoin::Join => println!(
            "this replica waits for the one that makes the branch's new log, and takes \
             the branch from it"
        ),
    }
    Ok(())
}

/// The commands about keys: keygen, rekey, rotate-data-key, encrypt, sms-log.
fn key_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { file } => {
            branch_node::keys::keygen(&file)?;
            println!(
                "wrote a key-encryption key to {} (owner-only)",
                file.display()
            );
        }
        Command::Rekey { data_dir, kek, new } => rekey_command(&data_dir, &kek, &new)?,
        Command::RotateDataKey {
            data_dir,
            kek,
            keys_from,
        } => {
            let (kek, from) = (kek.source(), keys_from.as_deref());
            let n = branch_node::rotate::rotate(&data_dir, kek.as_ref(), from)?;
            let dir = data_dir.display();
            println!("{dir}: a new store key; {n} file(s) re-encrypted under it");
        }
        Command::Encrypt { data_dir, kek } => {
            let kek = kek.source().ok_or(KeyError::NoKek)?;
            let n = branch_node::rotate::encrypt(&data_dir, &kek)?;
            let dir = data_dir.display();
            println!("{dir}: encrypted; {n} file(s) re-written under new data keys (data.keys)");
        }
        Command::SmsLog { data_dir, kek } => {
            let keys = branch_node::keys::unlock(&data_dir, None, kek.source().as_ref())?;
            let log = data_dir.join(branch_node::node::SMS_LOG_FILE);
            if !log.exists() {
                println!("{}: no SMS has been logged yet", data_dir.display());
                return Ok(());
            }
            let lines = branch_node::store::outbox::read_log(&log, &keys)
                .map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
            lines.iter().for_each(|line| println!("{line}"));
        }
        _ => anyhow::bail!("not a key command"),
    }
    Ok(())
}

/// `branch-node rekey`: the old KEK from `kek` (or as recorded), the new from `new`.
fn rekey_command(
    data_dir: &std::path::Path,
    kek: &KekArgs,
    new: &NewKekArgs,
) -> anyhow::Result<()> {
    let to = match (&new.new_key_file, &new.new_key_command, new.new_passphrase) {
        (Some(f), _, _) => KekSource::File(f.clone()),
        (None, Some(c), _) => KekSource::Command(c.clone()),
        (None, None, true) => KekSource::Passphrase,
        (None, None, false) => return Err(KeyError::NoKek.into()),
    };
    branch_node::keys::rekey(data_dir, kek.source().as_ref(), &to)?;
    println!(
        "{}: the data keys are wrapped by the new key-encryption key (the store was not rewritten)",
        data_dir.display()
    );
    Ok(())
}

/// `branch-node verify`.
fn verify_command(
    data_dir: &std::path::Path,
    network: &std::path::Path,
    kek: &KekArgs,
) -> anyhow::Result<()> {
    let report = branch_node::verify::verify(data_dir, network, kek.source().as_ref())?;
    print!("{}", report.text());
    anyhow::ensure!(report.ok(), "{} did not verify", data_dir.display());
    Ok(())
}

/// How `run` writes its log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by RUST_LOG (default info): text with colours only when
/// stderr is a terminal, or JSON lines; a warning or error that repeats is written
/// once per 10 s with a count (`logs.rs`).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(branch_node::logs::QuietRepeats::new(std::io::stderr));
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}

/// An amount typed on the command line: positive, with at most two decimals.
fn parse_amount(text: &str) -> Result<wire::Amount, String> {
    wire::Amount::parse(text).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoting = anyhow::Error::new(branch_node::init::InitError::Io {
            path: "dir/branch.key".into(),
            source: io,
        });
        assert_eq!(message(&quoting), "dir/branch.key: no such file");
        let wrapped = anyhow::anyhow!("no such file").context("reading the key");
        assert_eq!(message(&wrapped), "reading the key: no such file");
    }
}
