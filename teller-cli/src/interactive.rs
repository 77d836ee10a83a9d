//! The menus of the original system: login, then the admin or the customer menu.
//! Passwords are read without echo; a bad choice or input re-prompts with the reason;
//! Ctrl-D (end of input) and Ctrl-C leave cleanly at any prompt.

use std::io::{BufRead, Write};

use teller_cli::money::{self, MoneyAnswer, RetryPolicy};
use teller_cli::say::{self, Names};
use teller_cli::{Target, Teller, TellerError, new_transfer_id};
use wire::teller::{NewCustomer, PageRequest, Role, Scope, TellerOp, TellerResponse};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, TransferId};

use crate::views::entries_table;

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
    crate::commands::amount(s)
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

/// Runs the menus until the user leaves; exit status 0, or 4 if the branch cannot be
/// reached at all. Money goes through the same retry policy as the subcommands.
pub async fn run(
    target: Target,
    key: &wire::BranchKey,
    policy: RetryPolicy,
) -> Result<u8, TellerError> {
    leave_on_ctrl_c();
    let mut teller = Teller::connect_with_key(&target, key).await?;
    teller.set_failover_wait(policy.wait);
    println!("BankMate: connected to {}", target.addr);
    loop {
        println!("\n== Login (Ctrl-D to quit) ==");
        let Ok(user) = ask("user (admin or account number): ") else {
            return Ok(0);
        };
        let Ok(password) = ask_secret("password: ") else {
            return Ok(0);
        };
        let accounts = match login(&mut teller, &user, &password).await {
            Ok(TellerResponse::LoggedIn { accounts, .. }) => accounts,
            Ok(_) => continue,
            Err(e @ TellerError::Refused(_)) => {
                println!(
                    "  login refused: {}",
                    say::error(&e, &teller.target.names())
                );
                continue;
            }
            Err(e) => {
                println!(
                    "  login not done: {}",
                    say::error(&e, &teller.target.names())
                );
                continue;
            }
        };
        let left = match teller.role {
            Some(Role::Admin) => admin_menu(&mut teller, &user, &policy).await,
            _ => {
                let first = accounts.first().map(|a| a.number);
                customer_menu(&mut teller, first, &user, &policy).await
            }
        };
        let _ = teller.logout().await;
        if left {
            return Ok(0);
        }
    }
}

/// Logs in; a login enrolled for one-time codes is asked for the current code.
async fn login(
    teller: &mut Teller,
    user: &str,
    password: &str,
) -> Result<TellerResponse, TellerError> {
    match teller.login(user, password).await {
        Err(TellerError::Refused(wire::Refusal::OneTimeCode)) => {
            let code = ask("one-time code (from your authenticator app): ")
                .map_err(|_| TellerError::Usage("no code given".into()))?;
            teller
                .login_with_code(user, password, Some(code.trim()))
                .await
        }
        other => other,
    }
}

/// Asks whom to enrol for one-time codes (an admin may name a login; a customer
/// enrols themselves) and the caller's password again.
fn enroll_op(admin: bool, me: &str) -> Result<TellerOp, Eof> {
    let user = if admin {
        let who = ask("login to enrol (blank for yourself): ")?;
        if who.trim().is_empty() {
            me.to_owned()
        } else {
            who.trim().to_owned()
        }
    } else {
        me.to_owned()
    };
    let password = ask_secret("your password again: ")?;
    Ok(TellerOp::EnrollOtp { user, password })
}

/// The answer, or `None` after saying in one line why there is none.
fn show(r: Result<TellerResponse, TellerError>, names: &Names) -> Option<TellerResponse> {
    match r {
        Ok(r) => Some(r),
        Err(e @ TellerError::Refused(_)) => {
            println!("  Refused. {}", say::error(&e, names));
            None
        }
        Err(e) => {
            println!("  {}", say::error(&e, names));
            None
        }
    }
}

/// Says what a money request ended as, always with its id.
fn show_money(answer: &MoneyAnswer, names: &Names) {
    let id = answer.id();
    match answer {
        MoneyAnswer::Committed { .. } => println!("  Done: the money moved. Its id is {id}."),
        MoneyAnswer::Refused { .. } => {
            println!("  Refused. {} Its id is {id}.", say::money(answer, names))
        }
        MoneyAnswer::Unknown { .. } => println!(
            "  {} Its id is {id}: check it with \"Transfer status\".",
            say::money(answer, names)
        ),
        _ => println!("  {} Its id is {id}.", say::money(answer, names)),
    }
}

/// What an admin's menu choice asks of the branch.
enum AdminStep {
    /// A request to send and show.
    Call(TellerOp),
    /// A deposit or withdrawal, under the money policy.
    Money(TellerOp),
    /// Every account of the network.
    Accounts,
    /// Back to the menu (a choice that is no choice).
    Again,
    LogOut,
}

/// Asks what choice `choice` needs (Ctrl-D: `Err`).
fn admin_step(choice: &str, me: &str) -> Result<AdminStep, Eof> {
    Ok(match choice {
        "1" => AdminStep::Call(new_account()?),
        "2" => {
            let account = ask_parsed("account to close: ", account_input)?;
            let admin_password = ask_secret("your admin password again: ")?;
            AdminStep::Call(TellerOp::CloseAccount {
                account,
                admin_password,
            })
        }
        "3" | "4" => {
            let account = ask_parsed("account: ", account_input)?;
            // The customer menu's numbering: deposit is "2" and withdraw "3" there.
            let kind = if choice == "3" { "2" } else { "3" };
            AdminStep::Money(money_op(kind, account)?)
        }
        "5" => AdminStep::Accounts,
        "6" => AdminStep::Call(TellerOp::ListTransactions {
            scope: Scope::Network,
            page: PageRequest {
                before: None,
                limit: 100,
            },
            filter: wire::teller::EntryFilter::default(),
            network: Vec::new(),
        }),
        "7" => AdminStep::Call(status_op()?),
        "8" => AdminStep::Call(enroll_op(true, me)?),
        "9" => AdminStep::LogOut,
        _ => {
            println!("  choose 1 to 9");
            AdminStep::Again
        }
    })
}

/// Returns true when the user left (Ctrl-D), false on log out.
async fn admin_menu(teller: &mut Teller, me: &str, policy: &RetryPolicy) -> bool {
    loop {
        println!(
            "\n== Admin menu ==\n1) Create account\n2) Close account\n3) Deposit\n4) Withdraw\n5) View all accounts\n6) View all transactions\n7) Transfer status\n8) Enrol a login for one-time codes\n9) Log out"
        );
        let Ok(step) = ask("choice: ").and_then(|choice| admin_step(&choice, me)) else {
            return true;
        };
        let names = teller.target.names();
        match step {
            AdminStep::Call(op) => show_admin(show(teller.call_renewing(op).await, &names)),
            AdminStep::Money(op) => show_money(&money::send(teller, op, policy).await, &names),
            AdminStep::Accounts => match teller.all_accounts(Scope::Network).await {
                Ok(r) => crate::output::Printer::default().response(&r),
                Err(e) => println!("  Not listed. {}", say::error(&e, &names)),
            },
            AdminStep::Again => {}
            AdminStep::LogOut => return false,
        }
    }
}

/// Shows what an admin's request came to.
fn show_admin(answer: Option<TellerResponse>) {
    match answer {
        Some(TellerResponse::AccountOpened(a)) => println!(
            "  opened {} for {}; the customer logs in with the account number",
            a.number, a.owner_name
        ),
        Some(TellerResponse::AccountClosed(a)) => println!("  closed {}", a.number),
        Some(r @ (TellerResponse::OtpEnrolled { .. } | TellerResponse::Status { .. })) => {
            crate::output::Printer::default().response(&r)
        }
        Some(TellerResponse::Entries { entries, .. }) => println!("{}", entries_table(&entries)),
        _ => {}
    }
}

/// Asks for the id to ask about.
fn status_op() -> Result<TellerOp, Eof> {
    ask_parsed("transfer id: ", |s| {
        s.parse::<TransferId>()
            .map_err(|e| format!("not a transfer id ({e})"))
    })
    .map(|id| TellerOp::TransferStatus { id })
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
        if let Err(why) = wire::teller::new_password_ok(&p) {
            println!("  {why}; try again");
            continue;
        }
        if ask_secret("the same password again: ")? == p {
            break p;
        }
        println!("  the two passwords differ; try again");
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
    me: &str,
    policy: &RetryPolicy,
) -> bool {
    let Some(account) = account else {
        println!("  this login has no open account");
        return false;
    };
    loop {
        if let Some(TellerResponse::Account(a)) = show(
            teller.call_renewing(TellerOp::Balance { account }).await,
            &teller.target.names(),
        ) {
            println!(
                "\n== {}  balance {}  (held {}) ==",
                a.number, a.balance, a.held
            );
        }
        println!(
            "1) Refresh\n2) Deposit\n3) Withdraw\n4) Transfer\n5) Transaction history\n6) Transfer status\n7) Enrol for one-time codes\n8) Log out"
        );
        let Ok(choice) = ask("choice: ") else {
            return true;
        };
        let Ok(op) = (match choice.as_str() {
            "1" => continue,
            "2" | "3" | "4" => money_op(&choice, account),
            "5" => Ok(TellerOp::History {
                account,
                page: PageRequest {
                    before: None,
                    limit: 50,
                },
            }),
            "6" => status_op(),
            "7" => enroll_op(false, me),
            "8" => return false,
            _ => {
                println!("  choose 1 to 8");
                continue;
            }
        }) else {
            return true;
        };
        if let TellerOp::Transfer(spec) = &op {
            let Ok(go) = confirm_payee(teller, spec.to).await else {
                return true;
            };
            if !go {
                println!("  Not sent.");
                continue;
            }
        }
        if op.money_id().is_some() {
            let answer = money::send(teller, op, policy).await;
            show_money(&answer, &teller.target.names());
            continue;
        }
        match show(teller.call_renewing(op).await, &teller.target.names()) {
            Some(TellerResponse::Entries { entries, .. }) => {
                println!("{}", entries_table(&entries))
            }
            Some(r @ (TellerResponse::Status { .. } | TellerResponse::OtpEnrolled { .. })) => {
                crate::output::Printer::default().response(&r)
            }
            _ => {}
        }
    }
}

/// Shows whom a transfer to `to` pays (the owner's masked name, as the bank knows the
/// account) and asks whether to send it. An account the bank does not know, or a
/// closed one, is said and not sent; when the name cannot be had now, the teller is
/// told so and may still send.
async fn confirm_payee(teller: &mut Teller, to: AccountNumber) -> Result<bool, Eof> {
    let names = teller.target.names();
    match teller.payee(to).await {
        Ok(p) if p.open => ask_parsed(
            &format!("  pays {} ({to}); send it? (Y/N): ", p.name),
            yes_no,
        ),
        Ok(_) => {
            println!("  {}", say::sentence("account_closed", &Default::default()));
            Ok(false)
        }
        Err(e @ TellerError::Refused(_)) => {
            println!("  {}", say::error(&e, &names));
            Ok(false)
        }
        Err(e) => {
            println!(
                "  Could not confirm whom {to} belongs to: {}",
                say::error(&e, &names)
            );
            ask_parsed("  send it anyway? (Y/N): ", yes_no)
        }
    }
}

/// Asks for a deposit ("2"), withdrawal ("3") or transfer ("4"); its id is made here,
/// once, so every retry reuses it.
fn money_op(choice: &str, account: AccountNumber) -> Result<TellerOp, Eof> {
    if choice == "4" {
        let to = ask_parsed("receiver account: ", account_input)?;
        let amount = ask_parsed("amount: ", amount_input)?;
        return Ok(TellerOp::Transfer(TransferSpec {
            id: new_transfer_id(),
            from: account,
            to,
            amount,
        }));
    }
    let amount = ask_parsed("amount: ", amount_input)?;
    Ok(TellerOp::movement(
        choice == "2",
        new_transfer_id(),
        account,
        amount,
    ))
}
