//! An admin's screens: every account with its customer's details (branch or
//! network), every transaction (paged, filtered), opening and closing accounts.

use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use wire::teller::{
    AccountsPage, EntryFilter, EntryKind, NetworkCursor, NewCustomer, PageRequest, Role, Scope,
};
use wire::{AccountNumber, Refusal};

use super::customer::entries_table;
use super::pages::{self, csrf_field, error_box, page};
use super::visits::{Visit, Visitor};
use super::{Fields, Web, logged_in};
use crate::{Teller, TellerError};

/// Rows per page of the account and transaction listings.
const ROWS: u32 = 50;

pub(crate) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/admin/accounts", get(accounts))
        .route("/admin/transactions", get(transactions))
        .route("/admin/open", get(open_form).post(open))
        .route("/admin/close", get(close_form).post(close))
}

/// The visit's teller when an admin is logged in; otherwise the page that says why not
/// (a login page, or "not authorized" for a customer).
fn admin(v: &mut Visit) -> Result<&mut Teller, Response> {
    if v.role() == Some(Role::Customer) {
        let refused = TellerError::Refused(Refusal::Unauthorized);
        return Err(page(
            StatusCode::FORBIDDEN,
            v,
            "Not for this login",
            error_box(v, &refused),
        ));
    }
    logged_in(v)
}

fn scope_of(q: &Fields) -> Scope {
    match q.get("scope").map(String::as_str) {
        Some("network") => Scope::Network,
        _ => Scope::Branch,
    }
}

fn scope_select(scope: Scope) -> Markup {
    html! {
        label for="scope" { "Show" }
        select #scope name="scope" {
            option value="branch" selected[scope == Scope::Branch] { "this branch" }
            option value="network" selected[scope == Scope::Network] { "the whole network" }
        }
    }
}

fn unreachable_note(unreachable: &[wire::BranchId]) -> Markup {
    let names: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
    html! {
        @if !names.is_empty() {
            (pages::problem_box("branch_unreachable", &format!(
                "not listed: branch {} did not answer; the rest is shown", names.join(", "))))
        }
    }
}

/// Every account with its customer's details, a page at a time.
async fn accounts(visitor: Visitor, Query(q): Query<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let scope = scope_of(&q);
    let after = q.get("after").and_then(|a| a.parse::<AccountNumber>().ok());
    let asked = AccountsPage { after, limit: ROWS };
    let r = match admin(&mut v) {
        Ok(t) => t.accounts(scope, asked).await,
        Err(r) => return r,
    };
    let (accounts, next, unreachable) = match r {
        Ok(a) => (a.accounts, a.next_after, a.unreachable),
        Err(e) => return page(pages::status_of(&e), &v, "Accounts", error_box(&v, &e)),
    };
    let scope_arg = if scope == Scope::Network {
        "network"
    } else {
        "branch"
    };
    let body = html! {
        form.inline method="get" action="/admin/accounts" { (scope_select(scope)) button type="submit" { "List" } }
        (unreachable_note(&unreachable))
        table.accounts {
            thead { tr {
                th { "Account" } th { "Customer" } th { "National id" } th { "Phone" } th { "SMS" }
                th.num { "Balance" } th.num { "Held" } th { "Status" } th { "Opened" }
            } }
            tbody { @for a in &accounts { tr {
                td data-label="Account" { (a.number.to_string()) }
                td data-label="Customer" { (pages::name(&a.owner_name)) }
                td data-label="National id" { (a.contact.national_id_masked) }
                td data-label="Phone" { (a.contact.phone) }
                td data-label="SMS" { @if a.contact.sms_opt_in { "yes" } @else { "no" } }
                td.num data-label="Balance" { (pages::money(a.balance)) }
                td.num data-label="Held" { (pages::money(a.held)) }
                td data-label="Status" { (format!("{:?}", a.status).to_lowercase()) }
                td data-label="Opened" { (pages::when(a.opened_at_ms)) }
            } } }
        }
        @if accounts.is_empty() { p { "No accounts." } }
        @if let Some(n) = next { p { a rel="next" href=(format!("/admin/accounts?scope={scope_arg}&after={n}")) { "Next accounts" } } }
    };
    page(StatusCode::OK, &v, "Accounts", body)
}

/// The filter the transactions form asks for, or why it cannot be read.
fn filter_of(q: &Fields) -> Result<EntryFilter, String> {
    let get = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let account = get("account")
        .map(|a| {
            a.parse::<AccountNumber>()
                .map_err(|e| format!("account: {e}"))
        })
        .transpose()?;
    let kind = match get("kind") {
        None => None,
        Some("deposit") => Some(EntryKind::Deposit),
        Some("withdrawal") => Some(EntryKind::Withdrawal),
        Some("transfer_out") => Some(EntryKind::TransferDebit),
        Some("transfer_in") => Some(EntryKind::TransferCredit),
        Some(other) => return Err(format!("kind {other:?} is not one of the listed kinds")),
    };
    let since_ms = get("since").map(crate::when::parse_day).transpose()?;
    let until_day = get("until").map(crate::when::parse_day).transpose()?;
    if let (Some(since), Some(until)) = (since_ms, until_day)
        && until < since
    {
        return Err("the dates end before they start".into());
    }
    // "Until" a day includes that whole day.
    let until_ms = until_day.map(|d| d + crate::when::DAY_MS);
    Ok(EntryFilter {
        account,
        kind,
        since_ms,
        until_ms,
    })
}

fn transactions_form(scope: Scope, q: &Fields) -> Markup {
    let value = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let kinds = [
        ("", "any kind"),
        ("deposit", "deposit"),
        ("withdrawal", "withdrawal"),
        ("transfer_out", "transfer out"),
        ("transfer_in", "transfer in"),
    ];
    html! {
        form.filters method="get" action="/admin/transactions" {
            (scope_select(scope))
            label for="account" { "Account" }
            input #account name="account" value=(value("account")) data-account data-optional
                placeholder="any account" aria-describedby="account-hint" autocomplete="off";
            small #account-hint aria-live="polite" {}
            label for="kind" { "Kind" }
            select #kind name="kind" { @for (k, label) in kinds { option value=(k) selected[value("kind") == k] { (label) } } }
            label for="since" { "From (UTC)" }
            input #since name="since" type="date" value=(value("since"));
            label for="until" { "Until (UTC, inclusive)" }
            input #until name="until" type="date" value=(value("until"));
            button type="submit" { "Filter" }
        }
    }
}

/// Ledger entries, newest first, filtered; this branch's pages go on by seq, the
/// network's by a cursor that says where each branch's shown entries end.
async fn transactions(visitor: Visitor, Query(q): Query<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let scope = scope_of(&q);
    let (filter, network) = match filter_of(&q).and_then(|f| Ok((f, cursor_of(&q)?))) {
        Ok(parsed) => parsed,
        Err(why) => {
            if let Err(r) = admin(&mut v) {
                return r;
            }
            let body = html! { (error_box(&v, &TellerError::Invalid(why))) (transactions_form(scope, &q)) };
            return page(StatusCode::UNPROCESSABLE_ENTITY, &v, "Transactions", body);
        }
    };
    let before = q.get("before").and_then(|b| b.parse().ok());
    let asked = PageRequest {
        before,
        limit: ROWS,
    };
    let r = match admin(&mut v) {
        Ok(t) => t.transactions(scope, asked, filter, network).await,
        Err(r) => return r,
    };
    let (entries, next_link, unreachable) = match r {
        Ok(e) => {
            let next = match scope {
                Scope::Branch => e
                    .next_before
                    .map(|n| older_link(&q, "before", &n.to_string())),
                Scope::Network => e
                    .next_network
                    .map(|c| older_link(&q, "net", &wire::teller::cursor_text(&c))),
            };
            (e.entries, next, e.unreachable)
        }
        Err(e) => {
            return page(
                pages::status_of(&e),
                &v,
                "Transactions",
                html! { (error_box(&v, &e)) (transactions_form(scope, &q)) },
            );
        }
    };
    let body = html! {
        (transactions_form(scope, &q))
        (unreachable_note(&unreachable))
        (entries_table(&entries))
        @if let Some(href) = next_link { p { a rel="next" href=(href) { "Older entries" } } }
    };
    page(StatusCode::OK, &v, "Transactions", body)
}

/// The network cursor of an "older entries" link (none: the first page).
fn cursor_of(q: &Fields) -> Result<NetworkCursor, String> {
    match q.get("net").map(|t| t.trim()).filter(|t| !t.is_empty()) {
        Some(text) => wire::teller::parse_cursor(text),
        None => Ok(Vec::new()),
    }
}

/// The link to the next (older) page: the filters kept, the page's place `key=value`.
fn older_link(q: &Fields, key: &str, value: &str) -> String {
    let mut args: Vec<String> = q
        .iter()
        .filter(|(k, _)| *k != "before" && *k != "net")
        .map(|(k, v)| format!("{}={}", k, client::uri_escape(v)))
        .collect();
    args.sort();
    args.push(format!("{key}={}", client::uri_escape(value)));
    format!("/admin/transactions?{}", args.join("&"))
}

fn open_fields(v: &Visit, f: &Fields) -> Markup {
    let value = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let text = |name: &'static str, label: &'static str, auto: &'static str| {
        html! {
            label for=(name) { (label) }
            input id=(name) name=(name) value=(value(name)) required autocomplete=(auto);
        }
    };
    html! {
        form.card method="post" action="/admin/open" {
            (csrf_field(v))
            (text("first_name", "First name", "off"))
            (text("last_name", "Last name", "off"))
            (text("national_id", "National id", "off"))
            label for="phone" { "Phone" }
            input #phone name="phone" value=(value("phone")) required inputmode="tel" pattern="[0-9+ ]+" autocomplete="off";
            small { "digits, spaces and + only" }
            div.check {
                input #sms_opt_in name="sms_opt_in" type="checkbox" value="yes" checked[value("sms_opt_in") == "yes"];
                label for="sms_opt_in" { "SMS alerts for every movement" }
            }
            label for="password" { "Customer's password" }
            input #password name="password" type="password" required minlength="8" autocomplete="new-password";
            small { "at least 8 characters, not a common password" }
            label for="password2" { "Password again" }
            input #password2 name="password2" type="password" required minlength="8" autocomplete="new-password";
            label for="existing" { "Existing account of the same customer (optional)" }
            input #existing name="existing" value=(value("existing")) data-account data-optional autocomplete="off"
                aria-describedby="existing-hint";
            small #existing-hint aria-live="polite" { "leave blank for a new customer" }
            button type="submit" { "Open account" }
        }
    }
}

async fn open_form(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = admin(&mut v) {
        return r;
    }
    let body = open_fields(&v, &Fields::new());
    page(StatusCode::OK, &v, "Open an account", body)
}

/// What the open-account form asks for (the customer, their password, the account of
/// an existing customer), or why it cannot be sent.
fn open_op(f: &Fields) -> Result<(NewCustomer, String, Option<AccountNumber>), String> {
    let get = |k: &str| f.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    if f.get("password2") != Some(&password) {
        return Err("the two passwords differ".into());
    }
    wire::teller::new_password_ok(&password).map_err(|r| r.to_string())?;
    let existing = Some(get("existing"))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<AccountNumber>()
                .map_err(|e| format!("existing account: {e}"))
        })
        .transpose()?;
    let customer = NewCustomer {
        national_id: get("national_id"),
        phone: get("phone"),
        first_name: get("first_name"),
        last_name: get("last_name"),
        sms_opt_in: f.get("sms_opt_in").is_some_and(|s| s == "yes"),
    };
    Ok((customer, password, existing))
}

async fn open(visitor: Visitor, axum::Form(f): axum::Form<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let r = match (open_op(&f), admin(&mut v)) {
        (_, Err(r)) => return r,
        (Err(why), Ok(_)) => Err(TellerError::Invalid(why)),
        (Ok((customer, password, existing)), Ok(t)) => {
            t.open_account(customer, password, existing).await
        }
    };
    let (status, body) = match r {
        Ok(a) => (
            StatusCode::OK,
            html! {
                (pages::done_box(&format!("Opened {} for {}; the customer logs in with the account number.", a.number, a.owner_name)))
                p { a href="/admin/open" { "Open another" } " · " a href="/admin/accounts" { "Accounts" } }
            },
        ),
        Err(e) => (
            pages::status_of(&e),
            html! { (error_box(&v, &e)) (open_fields(&v, &f)) },
        ),
    };
    page(status, &v, "Open an account", body)
}

fn close_fields(v: &Visit, account: &str) -> Markup {
    html! {
        form.card method="post" action="/admin/close" {
            (csrf_field(v))
            (pages::account_field("account", "Account to close", account))
            p.note { "Only an empty account with nothing held can be closed; its login goes with it." }
            label for="admin_password" { "Your admin password again" }
            input #admin_password name="admin_password" type="password" required autocomplete="current-password";
            button type="submit" { "Close account" }
        }
    }
}

async fn close_form(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = admin(&mut v) {
        return r;
    }
    let body = close_fields(&v, "");
    page(StatusCode::OK, &v, "Close an account", body)
}

async fn close(visitor: Visitor, axum::Form(f): axum::Form<Fields>) -> Response {
    let mut v = visitor.lock().await;
    let typed = f
        .get("account")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let admin_password = f.get("admin_password").cloned().unwrap_or_default();
    let r = match (typed.parse::<AccountNumber>(), admin(&mut v)) {
        (_, Err(r)) => return r,
        (Err(e), Ok(_)) => Err(TellerError::Invalid(format!("account: {e}"))),
        (Ok(account), Ok(t)) => t.close_account(account, admin_password).await,
    };
    let (status, body) = match r {
        Ok(a) => (
            StatusCode::OK,
            pages::done_box(&format!("Closed {}.", a.number)),
        ),
        Err(e) => (
            pages::status_of(&e),
            html! { (error_box(&v, &e)) (close_fields(&v, &typed)) },
        ),
    };
    page(status, &v, "Close an account", body)
}
