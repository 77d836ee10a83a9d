//! A customer's screens (accounts with balances, deposit, withdraw, transfer,
//! history), and the two every login has: a transfer's status by id, and enrolling
//! for one-time codes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use wire::teller::{AccountView, EntryView, PageRequest, Role, TellerOp};

use crate::requests::Enrolled;
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, TransferId};

use super::pages::{self, csrf_field, error_box, page};
use super::visits::{Visit, Visitor};
use super::{Fields, Web, logged_in};
use crate::money::{self, MoneyAnswer};
use crate::{TellerError, new_transfer_id, say};

/// Rows per history page.
const HISTORY_ROWS: u32 = 25;

pub(crate) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/accounts", get(accounts))
        .route("/deposit", get(deposit_form).post(send_money))
        .route("/withdraw", get(withdraw_form).post(send_money))
        .route("/transfer", get(transfer_form).post(send_money))
        .route("/history", get(history))
        .route("/status", get(status))
        .route("/otp", get(otp_form).post(enroll))
}

/// The customer's accounts as the branch has them now (one opened since the login
/// shows up, and the forms offer it), with fresh balances.
async fn accounts(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    let teller = match logged_in(&mut v) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let rows: Vec<Result<AccountView, TellerError>> = match teller.own_accounts().await {
        Ok(accounts) => {
            v.set_accounts(accounts.iter().map(|a| a.number).collect());
            accounts.into_iter().map(Ok).collect()
        }
        Err(e) => vec![Err(e)],
    };
    let body = html! {
        p { a #refresh href="/accounts" { "Refresh balances" } }
        table {
            thead { tr { th { "Account" } th.num { "Balance" } th.num { "Held" } th.num { "Available" } th { "Status" } } }
            tbody {
                @for row in &rows {
                    @match row {
                        Ok(a) => tr {
                            td data-label="Account" { (a.number.to_string()) }
                            td.num data-label="Balance" data-balance=(a.number.to_string()) { (pages::money(a.balance)) }
                            td.num data-label="Held" { (pages::money(a.held)) }
                            td.num data-label="Available" { (pages::money(a.balance.checked_sub(a.held).unwrap_or(Amount::ZERO))) }
                            td data-label="Status" { (format!("{:?}", a.status).to_lowercase()) }
                        },
                        Err(e) => tr { td colspan="5" { (error_box(&v, e)) } },
                    }
                }
            }
        }
    };
    page(StatusCode::OK, &v, "Your accounts", body)
}

/// Which money form: deposit, withdrawal or transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deposit,
    Withdraw,
    Transfer,
}

impl Kind {
    fn words(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Withdraw => "withdrawal",
            Kind::Transfer => "transfer",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Deposit => "/deposit",
            Kind::Withdraw => "/withdraw",
            Kind::Transfer => "/transfer",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Deposit => "Deposit",
            Kind::Withdraw => "Withdraw",
            Kind::Transfer => "Transfer",
        }
    }

    fn from_path(path: &str) -> Kind {
        match path {
            "/deposit" => Kind::Deposit,
            "/withdraw" => Kind::Withdraw,
            _ => Kind::Transfer,
        }
    }
}

async fn deposit_form(visitor: Visitor) -> Response {
    money_form(visitor, Kind::Deposit).await
}

async fn withdraw_form(visitor: Visitor) -> Response {
    money_form(visitor, Kind::Withdraw).await
}

async fn transfer_form(visitor: Visitor) -> Response {
    money_form(visitor, Kind::Transfer).await
}

/// The form, with the id of the movement it will make: made now, once, so a second
/// click or a resubmitted page sends the same id and can only learn its outcome.
fn money_fields(v: &Visit, kind: Kind, id: TransferId, f: &Fields) -> Markup {
    let value = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    html! {
        form.card method="post" action=(kind.path()) data-once data-wait=(v.wait_s()) {
            (csrf_field(v))
            input type="hidden" name="id" value=(id.to_string());
            @let label = if kind == Kind::Transfer { "From account" } else { "Account" };
            // An admin moves money on any account of the branch: typed, checked as typed.
            @if v.role() == Some(Role::Admin) {
                (pages::account_field("account", label, value("account")))
            } @else {
                (pages::own_accounts("account", label, v.accounts()))
            }
            @if kind == Kind::Transfer { (pages::account_field("to", "To account", value("to"))) }
            (pages::amount_field(value("amount")))
            button type="submit" { (kind.title()) }
        }
    }
}

async fn money_form(visitor: Visitor, kind: Kind) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = logged_in(&mut v) {
        return r;
    }
    let body = money_fields(&v, kind, new_transfer_id(), &Fields::new());
    page(StatusCode::OK, &v, kind.title(), body)
}

/// The request a money form asks for, or why it cannot be sent.
fn money_op(kind: Kind, f: &Fields) -> Result<TellerOp, String> {
    let get = |k: &str| f.get(k).map(|s| s.trim()).unwrap_or_default();
    let id: TransferId = get("id")
        .parse()
        .map_err(|e| format!("the form's id is not valid ({e})"))?;
    let account: AccountNumber = get("account")
        .parse()
        .map_err(|e| format!("account: {e}"))?;
    let amount = Amount::parse(get("amount"))
        .and_then(Amount::validate_movable)
        .map_err(|e| format!("amount: {e}"))?;
    Ok(match kind {
        Kind::Transfer => {
            let to: AccountNumber = get("to").parse().map_err(|e| format!("to account: {e}"))?;
            TellerOp::Transfer(TransferSpec {
                id,
                from: account,
                to,
                amount,
            })
        }
        _ => TellerOp::movement(kind == Kind::Deposit, id, account, amount),
    })
}

/// What a money request asks, in words: "Transfer of 1,250.50 from A to B".
fn asked(op: &TellerOp) -> String {
    match op {
        TellerOp::Deposit {
            account, amount, ..
        } => {
            format!("Deposit of {} to {account}", pages::money(*amount))
        }
        TellerOp::Withdraw {
            account, amount, ..
        } => {
            format!("Withdrawal of {} from {account}", pages::money(*amount))
        }
        TellerOp::Transfer(t) => format!(
            "Transfer of {} from {} to {}",
            pages::money(t.amount),
            t.from,
            t.to
        ),
        other => other.name().to_owned(),
    }
}

fn money_status(a: &MoneyAnswer) -> StatusCode {
    match a {
        MoneyAnswer::Committed { .. } => StatusCode::OK,
        MoneyAnswer::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        MoneyAnswer::NotDone { .. } => StatusCode::SERVICE_UNAVAILABLE,
        MoneyAnswer::Unknown { .. } => StatusCode::ACCEPTED,
    }
}

/// Sends a deposit, withdrawal or transfer under the form's id, with the CLI's retry
/// policy, and says what it came to. A form that cannot be read is shown again, with
/// the same id, and nothing is sent.
async fn send_money(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    uri: axum::http::Uri,
    axum::Form(f): axum::Form<Fields>,
) -> Response {
    let kind = Kind::from_path(uri.path());
    let mut v = visitor.lock().await;
    let op = match money_op(kind, &f) {
        Ok(op) => op,
        Err(why) => {
            let id = f
                .get("id")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(new_transfer_id);
            let body = html! {
                (error_box(&v, &TellerError::Invalid(why)))
                (money_fields(&v, kind, id, &f))
            };
            return page(StatusCode::UNPROCESSABLE_ENTITY, &v, kind.title(), body);
        }
    };
    let teller = match logged_in(&mut v) {
        Ok(t) => t,
        Err(r) => return r,
    };
    // A transfer is confirmed first: whom it pays, as the bank knows the account.
    if let TellerOp::Transfer(spec) = &op
        && f.get("confirmed").map(String::as_str) != Some("yes")
    {
        let spec = *spec;
        let payee = teller.payee(spec.to).await;
        return confirm_transfer(&v, &op, spec, payee, &f);
    }
    let asked = asked(&op);
    let answer = money::send(teller, op, &web.policy).await;
    let body = html! {
        p.asked { (asked) }
        (pages::money_answer(&v, kind.words(), &answer))
        @if let MoneyAnswer::NotDone { id, .. } = &answer { (money_fields(&v, kind, *id, &f)) }
        p { a href=(kind.path()) { "New " (kind.words()) } " · " a href="/" { "Accounts" } }
    };
    page(money_status(&answer), &v, kind.title(), body)
}

/// The page that asks to confirm a transfer: whom it pays (the payee's masked name),
/// with the form's fields (its id too) to send it, or the form again to change it. An
/// account the bank does not know, or a closed one, is said at once and nothing is
/// sent; when the name cannot be had now (a branch out of reach, too many lookups),
/// the page says so and the teller may still send.
fn confirm_transfer(
    v: &Visit,
    op: &TellerOp,
    spec: TransferSpec,
    payee: Result<crate::requests::Payee, TellerError>,
    f: &Fields,
) -> Response {
    let kind = Kind::Transfer;
    let refused = match &payee {
        Err(e @ TellerError::Refused(_)) => Some(error_box(v, e)),
        Ok(p) if !p.open => Some(pages::problem_box(
            "account_closed",
            &say::sentence("account_closed", &say::Context::default()),
        )),
        _ => None,
    };
    if let Some(problem) = refused {
        let body = html! { (problem) (money_fields(v, kind, spec.id, f)) };
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            v,
            "Check the transfer",
            body,
        );
    }
    let body = html! {
        p.asked { (asked(op)) }
        @match &payee {
            Ok(p) => div.payee data-payee=(p.name) {
                p { "This pays " strong { (p.name) } ", the holder of " (spec.to.to_string())
                    " as the bank knows them. Is that whom you mean to pay?" }
            },
            Err(e) => div.payee data-payee="" {
                (error_box(v, e))
                p { "The bank could not say whom " (spec.to.to_string()) " belongs to just now: check the number before you send." }
            },
        }
        form.card method="post" action=(kind.path()) data-once data-wait=(v.wait_s()) {
            (csrf_field(v))
            input type="hidden" name="id" value=(spec.id.to_string());
            input type="hidden" name="account" value=(spec.from.to_string());
            input type="hidden" name="to" value=(spec.to.to_string());
            input type="hidden" name="amount" value=(spec.amount.to_string());
            input type="hidden" name="confirmed" value="yes";
            button type="submit" { "Send the transfer" }
        }
        p { a href=(kind.path()) { "Change it" } " (nothing has been sent)" }
    };
    page(StatusCode::OK, v, "Confirm the transfer", body)
}

/// A table of ledger entries, newest first, dates in UTC.
pub(crate) fn entries_table(entries: &[EntryView]) -> Markup {
    html! {
        @if entries.is_empty() { p { "No entries." } } @else {
            table.entries {
                thead { tr {
                    th { "Date" } th { "Account" } th { "Kind" } th.num { "Amount" }
                    th.num { "Balance after" } th { "Other account" } th { "Id" }
                } }
                tbody { @for e in entries { tr {
                    td data-label="Date" { (pages::when(e.at_ms)) }
                    td data-label="Account" { (e.account.to_string()) }
                    td data-label="Kind" { (crate::kind_words(e.kind)) }
                    td.num data-label="Amount" { (pages::signed(e.kind, e.amount)) }
                    td.num data-label="Balance after" { (pages::money(e.balance_after)) }
                    td data-label="Other account" { (e.counterparty.map(|c| c.to_string()).unwrap_or_default()) }
                    td data-label="Id" { code.id { (e.transfer_id.to_string()) } }
                } } }
            }
        }
    }
}

/// An account's history, a page at a time (older pages by the `before` cursor).
async fn history(visitor: Visitor, Query(q): Query<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let chosen = q
        .get("account")
        .and_then(|a| a.parse::<AccountNumber>().ok());
    let Some(account) = chosen.or_else(|| v.accounts().first().copied()) else {
        return page(
            StatusCode::OK,
            &v,
            "History",
            html! { p { "This login has no account." } },
        );
    };
    let before = q.get("before").and_then(|b| b.parse().ok());
    let page_asked = PageRequest {
        before,
        limit: HISTORY_ROWS,
    };
    let r = match logged_in(&mut v) {
        Ok(t) => t.history(account, page_asked).await,
        Err(r) => return r,
    };
    let (entries, next) = match r {
        Ok(e) => (e.entries, e.next_before),
        Err(e) => return page(pages::status_of(&e), &v, "History", error_box(&v, &e)),
    };
    let body = html! {
        form.inline method="get" action="/history" {
            (pages::own_accounts("account", "Account", v.accounts()))
            button type="submit" { "Show" }
        }
        (entries_table(&entries))
        @if let Some(n) = next { p { a rel="next" href=(format!("/history?account={account}&before={n}")) { "Older entries" } } }
    };
    page(StatusCode::OK, &v, &format!("History of {account}"), body)
}

/// Where a transfer stands, by id (any login; the branch says what it may see).
async fn status(visitor: Visitor, Query(q): Query<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let typed = q.get("id").map(|s| s.trim().to_owned()).unwrap_or_default();
    let answer = if typed.is_empty() {
        html! {}
    } else {
        match typed.parse::<TransferId>() {
            Err(e) => error_box(
                &v,
                &TellerError::Invalid(format!("not a transfer id ({e})")),
            ),
            Ok(id) => match logged_in(&mut v) {
                Err(r) => return r,
                Ok(t) => match t.transfer_status(id).await {
                    Ok(state) => pages::state_box(id, &state),
                    Err(e) => error_box(&v, &e),
                },
            },
        }
    };
    if let Err(r) = logged_in(&mut v) {
        return r;
    }
    let body = html! {
        (answer)
        form.card method="get" action="/status" {
            label for="id" { "Transfer id" }
            input #id name="id" value=(typed) required autocomplete="off";
            button type="submit" { "Check status" }
        }
    };
    page(StatusCode::OK, &v, "Transfer status", body)
}

fn otp_fields(v: &Visit) -> Markup {
    html! {
        form.card method="post" action="/otp" {
            (csrf_field(v))
            @if v.role() == Some(Role::Admin) {
                label for="user" { "Login to enrol (blank for yourself)" }
                input #user name="user" autocomplete="off";
            }
            label for="password" { "Your password again" }
            input #password name="password" type="password" required autocomplete="current-password";
            button type="submit" { "Enrol" }
        }
    }
}

async fn otp_form(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = logged_in(&mut v) {
        return r;
    }
    let body = html! {
        p { "After enrolling, every login asks for the six-digit code of an authenticator app." }
        (otp_fields(&v))
    };
    page(StatusCode::OK, &v, "One-time codes", body)
}

/// Enrols the caller (or, for an admin, a named login) for one-time codes and shows
/// the `otpauth://` address to put into an authenticator app.
async fn enroll(visitor: Visitor, axum::Form(f): axum::Form<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let me = v.user().unwrap_or_default().to_owned();
    let user = f
        .get("user")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or(&me)
        .to_owned();
    let password = f.get("password").cloned().unwrap_or_default();
    let r = match logged_in(&mut v) {
        Ok(t) => t.enroll_otp(user, password).await,
        Err(r) => return r,
    };
    let (status, answer) = match r {
        Ok(Enrolled { user, uri }) => (
            StatusCode::OK,
            html! {
                (pages::done_box(&format!("{user} is enrolled: from now on a login needs the code.")))
                p { "Add this to the authenticator app (it is shown once):" }
                p { code.uri { (uri) } }
            },
        ),
        Err(e) => (
            pages::status_of(&e),
            html! { (error_box(&v, &e)) (otp_fields(&v)) },
        ),
    };
    page(status, &v, "One-time codes", answer)
}
