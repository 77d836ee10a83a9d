//! `branch-node`: the process a bank runs at each branch. Thin: parses arguments and
//! calls the library. `init` exists today; `run` (serving the network) comes with the
//! node itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wire::BranchId;

#[derive(Parser, Debug)]
#[command(name = "branch-node", version, about = "A BankMate branch node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a branch's data dir: key (mode 0600), database and first admin ("admin").
    Init {
        /// Directory for the branch's key and database (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The branch's id, 1..=999 (the first 3 digits of its account numbers).
        #[arg(long)]
        branch_id: u16,
        /// The branch's name, as tellers will use it.
        #[arg(long)]
        name: String,
        /// File holding the first admin's password; without it one is generated and shown once.
        #[arg(long)]
        admin_password_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("branch-node: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            branch_id,
            name,
            admin_password_file,
        } => {
            let password = match admin_password_file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                    Some(text.trim_end_matches(['\n', '\r']).to_owned())
                }
                None => None,
            };
            let done = branch_node::init::init(&data_dir, BranchId(branch_id), &name, password)?;
            println!(
                "initialized branch {} ({}) in {}",
                done.branch,
                done.name,
                data_dir.display()
            );
            println!("admin login: {}", branch_node::init::ADMIN_LOGIN);
            if let Some(p) = &done.generated_password {
                println!("admin password: {p}  (shown once: keep it safe)");
            }
            println!(
                "\nadd this branch to network.toml:\n\n{}",
                done.network_entry()
            );
            Ok(())
        }
    }
}
