//! `teller-cli`: every teller action as a subcommand for scripts (with `--json`), and
//! the interactive menus when run without one. Exit status (see `cli::EXIT_CODES`): 0 done,
//! 2 usage, 3 refused (finally), 4 not done (nothing happened), 5 outcome unknown.

mod cli;
mod commands;
mod interactive;
mod output;
mod reconcile;
mod trace;
mod views;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{
    Step, command_op, log_in, read_batch, reconciled, status_exit, target, without_a_branch,
};
use teller_cli::money::{EXIT_NOT_DONE, EXIT_REFUSED, EXIT_UNKNOWN, RetryPolicy};
use teller_cli::{Target, Teller, TellerError, say};
use wire::teller::TellerResponse;

/// Exit status for bad arguments (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("teller-cli: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    let mutating = cli.command.as_ref().is_some_and(Command::mutates);
    let names = target(&cli).map(|t| t.names()).unwrap_or_default();
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("teller-cli: {}", say::error(&e, &names));
            let (code, kind) = exit_for(&e, mutating);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": kind, "code": e.code(), "message": e.to_string() })
                );
            }
            ExitCode::from(code)
        }
    }
}

/// The exit status (and its name in `--json`) for a command that ended in `e`.
/// `mutating`: the command changes something (an admin action), so a request that may
/// have arrived leaves its outcome unknown.
fn exit_for(e: &TellerError, mutating: bool) -> (u8, &'static str) {
    match e {
        TellerError::Refused(_) => (EXIT_REFUSED, "refused"),
        // Caught here: nothing was sent.
        TellerError::Invalid(_) | TellerError::Caught(_) => (EXIT_USAGE, "invalid"),
        TellerError::Usage(_) => (EXIT_USAGE, "usage"),
        _ if mutating && e.may_have_happened() => (EXIT_UNKNOWN, "unknown"),
        TellerError::Unexpected { .. } => (1, "unexpected"),
        TellerError::Unavailable(_) | TellerError::Connection(_) | TellerError::LoginNotDone(_) => {
            (EXIT_NOT_DONE, "not_done")
        }
    }
}

/// Runs the web console until Ctrl-C or SIGTERM.
async fn web(
    target: Target,
    branch_name: String,
    policy: RetryPolicy,
    listen: std::net::SocketAddr,
    key: &wire::BranchKey,
) -> Result<u8, TellerError> {
    teller_cli::web::check_listen(&listen)?;
    let teller = Teller::connect_with_key(&target, key).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| TellerError::Usage(format!("cannot listen on {listen}: {e}")))?;
    let config = teller_cli::web::WebConfig {
        teller,
        branch_name: branch_name.clone(),
        policy,
    };
    println!("web console for branch {branch_name}: http://{listen}/ (Ctrl-C stops it)");
    teller_cli::web::serve(listener, config, stop_signal())
        .await
        .map_err(|e| TellerError::Usage(format!("web console failed: {e}")))?;
    Ok(0)
}

/// Resolves at Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> Result<u8, TellerError> {
    if let Some(code) = without_a_branch(&cli) {
        return Ok(code);
    }
    let target = target(&cli)?;
    let policy = RetryPolicy {
        wait: std::time::Duration::from_secs(cli.wait),
        ..RetryPolicy::default()
    };
    let key = match &cli.identity {
        Some(path) => teller_cli::identity(path)?,
        None => wire::BranchKey::from_secret(rand::random()),
    };
    let Some(command) = cli.command.as_ref() else {
        return interactive::run(target, &key, policy).await;
    };
    if let Command::Web { listen } = command {
        // The branch as the network file spells it (`--branch` matches without case).
        let name = (target.names().own().map(str::to_owned))
            .or_else(|| cli.branch.clone())
            .unwrap_or_else(|| target.peer.to_string());
        return web(target, name, policy, *listen, &key).await;
    }
    // A batch file is read whole before anything is sent: a bad one sends nothing.
    let batch = match command {
        Command::TransferBatch { file, .. } => Some(read_batch(file)?),
        _ => None,
    };
    let (mut teller, login) = log_in(&cli, &target, &key).await?;
    let out = output::Printer {
        json: cli.json,
        names: target.names(),
    };
    let op = match command_op(command, &login, &mut teller, &out, policy, batch).await? {
        Step::Done(code) => return Ok(code),
        Step::Call(op) => op,
    };
    let r = teller.call_renewing(op).await?;
    let _ = teller.logout().await;
    if let TellerResponse::Statements {
        cut_ms,
        statements,
        unreachable,
    } = &r
    {
        return reconciled(&cli, *cut_ms, statements, unreachable);
    }
    out.response(&r);
    Ok(match r {
        TellerResponse::Status { id, state } => status_exit(id, state),
        _ => 0,
    })
}
