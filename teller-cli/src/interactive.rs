//! The menus of the original system: login, then the admin or the customer menu.
//! Passwords are read without echo; a bad choice or input re-prompts with the reason;
//! Ctrl-D (end of input) and Ctrl-C leave cleanly at any prompt.

use std::io::{BufRead, Write};

use teller_cli::{Target, Teller, TellerError, new_transfer_id};
use wire::AccountNumber;
use wire::teller::{
    NewCustomer, PageRequest, Role, Scope, TellerOp, TellerResponse, TransferState,
};
use wire::twopc::TransferSpec;

use crate::output::{accounts_table, entries_table};

/// End of input: the user left.
struct Eof;

fn ask(prompt: &str) -> Result<String, Eof> {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => Err(Eof),
        Ok(_) => Ok(line.trim().to_owned()),
    }
}

fn ask_secret(prompt: &str) -> Result<String, Eof> {
    match rpassword::prompt_password(prompt) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Eof),
        Err(_) => ask(prompt),
    }
}

fn ask_parsed<T>(prompt: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, Eof> {
    loop {
        let text = ask(prompt)?;
        match parse(&text) {
            Ok(v) => return Ok(v),
            Err(why) => println!("  {why}; try again"),
        }
    }
}

fn account_input(s: &str) -> Result<AccountNumber, String> {
    s.parse::<AccountNumber>()
        .map_err(|e| format!("not an account number ({e})"))
}

fn amount_input(s: &str) -> Result<wire::Amount, String> {
    crate::amount(s)
        .map_err(|_| "not an amount like 1250.50 (more than 0, at most 2 decimals)".to_string())
}

fn yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(true),
        "n" | "no" => Ok(false),
        _ => Err("answer Y or N".into()),
    }
}

/// Ctrl-C leaves cleanly: the terminal is put back as it was (a password prompt turns
/// echo off) and the program exits with status 0.
fn leave_on_ctrl_c() {
    let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            if let Some(t) = saved {
                let _ = nix::sys::termios::tcsetattr(
                    std::io::stdin(),
                    nix::sys::termios::SetArg::TCSANOW,
                    &t,
                );
            }
            println!("\nbye");
            std::process::exit(0);
        }
    });
}

/// Runs the menus until the user leaves; exit status 0, or 4 if the branch is unreachable.
pub async fn run(target: Target) -> Result<u8, TellerError> {
    leave_on_ctrl_c();
    let mut teller = Teller::connect(&target).await?;
    println!("BankMate: connected to {}", target.addr);
    loop {
        println!("\n== Login (Ctrl-D to quit) ==");
        let Ok(user) = ask("user (admin or account number): ") else {
            return Ok(0);
        };
        let Ok(password) = ask_secret("password: ") else {
            return Ok(0);
        };
        let accounts = match teller.login(&user, &password).await {
            Ok(TellerResponse::LoggedIn { accounts, .. }) => accounts,
            Ok(_) => continue,
            Err(TellerError::Refused(r)) => {
                println!("  login refused: {r}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let left = match teller.role {
            Some(Role::Admin) => admin_menu(&mut teller).await?,
            _ => customer_menu(&mut teller, accounts.first().map(|a| a.number)).await?,
        };
        let _ = teller.logout().await;
        if left {
            return Ok(0);
        }
    }
}

fn show(r: Result<TellerResponse, TellerError>) -> Result<Option<TellerResponse>, TellerError> {
    match r {
        Ok(r) => Ok(Some(r)),
        Err(TellerError::Refused(reason)) => {
            println!("  refused: {reason}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Returns true when the user left (Ctrl-D), false on log out.
async fn admin_menu(teller: &mut Teller) -> Result<bool, TellerError> {
    loop {
        println!(
            "\n== Admin menu ==\n1) Create account\n2) Close account\n3) View all accounts\n4) View all transactions\n5) Log out"
        );
        let Ok(choice) = ask("choice: ") else {
            return Ok(true);
        };
        let op = match choice.as_str() {
            "1" => {
                let Ok(op) = new_account() else {
                    return Ok(true);
                };
                op
            }
            "2" => {
                let Ok(account) = ask_parsed("account to close: ", account_input) else {
                    return Ok(true);
                };
                let Ok(admin_password) = ask_secret("your admin password again: ") else {
                    return Ok(true);
                };
                TellerOp::CloseAccount {
                    account,
                    admin_password,
                }
            }
            "3" => TellerOp::ListAccounts {
                scope: Scope::Network,
            },
            "4" => TellerOp::ListTransactions {
                scope: Scope::Network,
                page: PageRequest {
                    before: None,
                    limit: 100,
                },
            },
            "5" => return Ok(false),
            _ => {
                println!("  choose 1 to 5");
                continue;
            }
        };
        match show(teller.call(op).await)? {
            Some(TellerResponse::AccountOpened(a)) => println!(
                "  opened {} for {}; the customer logs in with the account number",
                a.number, a.owner_name
            ),
            Some(TellerResponse::AccountClosed(a)) => println!("  closed {}", a.number),
            Some(TellerResponse::Accounts(v)) => println!("{}", accounts_table(&v)),
            Some(TellerResponse::Entries { entries, .. }) => {
                println!("{}", entries_table(&entries))
            }
            _ => {}
        }
    }
}

fn new_account() -> Result<TellerOp, Eof> {
    let text = |s: &str| {
        if s.is_empty() {
            Err("must not be empty".to_string())
        } else {
            Ok(s.to_owned())
        }
    };
    let national_id = ask_parsed("national id: ", text)?;
    let phone = ask_parsed("phone: ", |s| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_digit() || c == '+' || c == ' ')
        {
            Ok(s.to_owned())
        } else {
            Err("digits, spaces and + only".to_string())
        }
    })?;
    let first_name = ask_parsed("first name: ", text)?;
    let last_name = ask_parsed("last name: ", text)?;
    let sms_opt_in = ask_parsed("SMS alerts (Y/N): ", yes_no)?;
    let password = loop {
        let p = ask_secret("customer password: ")?;
        if p.is_empty() {
            println!("  must not be empty; try again");
        } else {
            break p;
        }
    };
    Ok(TellerOp::OpenAccount {
        customer: NewCustomer {
            national_id,
            phone,
            first_name,
            last_name,
            sms_opt_in,
        },
        password,
        existing: None,
    })
}

async fn customer_menu(
    teller: &mut Teller,
    account: Option<AccountNumber>,
) -> Result<bool, TellerError> {
    let Some(account) = account else {
        println!("  this login has no open account");
        return Ok(false);
    };
    loop {
        if let Some(TellerResponse::Account(a)) =
            show(teller.call(TellerOp::Balance { account }).await)?
        {
            println!(
                "\n== {}  balance {}  (held {}) ==",
                a.number, a.balance, a.held
            );
        }
        println!(
            "1) Refresh\n2) Deposit\n3) Withdraw\n4) Transfer\n5) Transaction history\n6) Log out"
        );
        let Ok(choice) = ask("choice: ") else {
            return Ok(true);
        };
        let op = match choice.as_str() {
            "1" => continue,
            "2" | "3" => {
                let Ok(amount) = ask_parsed("amount: ", amount_input) else {
                    return Ok(true);
                };
                TellerOp::movement(choice == "2", new_transfer_id(), account, amount)
            }
            "4" => {
                let Ok(to) = ask_parsed("receiver account: ", account_input) else {
                    return Ok(true);
                };
                let Ok(amount) = ask_parsed("amount: ", amount_input) else {
                    return Ok(true);
                };
                TellerOp::Transfer(TransferSpec {
                    id: new_transfer_id(),
                    from: account,
                    to,
                    amount,
                })
            }
            "5" => TellerOp::History {
                account,
                page: PageRequest {
                    before: None,
                    limit: 50,
                },
            },
            "6" => return Ok(false),
            _ => {
                println!("  choose 1 to 6");
                continue;
            }
        };
        match show(teller.call(op).await)? {
            Some(TellerResponse::Receipt { id, state }) => match state {
                TransferState::Committed => println!("  done ({id})"),
                TransferState::Aborted(r) => println!("  refused: {r}"),
                _ => println!(
                    "  outcome unknown for {id}; it may still complete. Check with: teller-cli transfer-status {id}"
                ),
            },
            Some(TellerResponse::Entries { entries, .. }) => {
                println!("{}", entries_table(&entries))
            }
            _ => {}
        }
    }
}
