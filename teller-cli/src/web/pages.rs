//! The console's HTML, server-rendered with maud (every value escaped): the page
//! frame, the boxes that say what happened, and the fields every form shares.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use wire::teller::{EntryKind, Role, TransferState};
use wire::{AccountNumber, Amount, TransferId};

use super::visits::Visit;
use crate::money::MoneyAnswer;
use crate::{TellerError, say};

/// A whole page: header, navigation for the visit's role, then `body`.
pub(crate) fn page(status: StatusCode, v: &Visit, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · BankMate" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "BankMate" }
                    span.where { "branch " (v.branch()) }
                    @if let Some(user) = v.user() {
                        span.who { "signed in as " strong { (user) } }
                        form.inline method="post" action="/logout" {
                            (csrf_field(v))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                (nav(v))
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (status, markup).into_response()
}

fn nav(v: &Visit) -> Markup {
    let links: &[(&str, &str)] = match v.role() {
        None => &[],
        Some(Role::Customer) => &[
            ("/accounts", "Accounts"),
            ("/deposit", "Deposit"),
            ("/withdraw", "Withdraw"),
            ("/transfer", "Transfer"),
            ("/bulk", "Bulk payments"),
            ("/history", "History"),
            ("/status", "Transfer status"),
            ("/otp", "One-time codes"),
        ],
        Some(Role::Admin) => &[
            ("/admin/accounts", "Accounts"),
            ("/admin/transactions", "Transactions"),
            ("/deposit", "Deposit"),
            ("/withdraw", "Withdraw"),
            ("/admin/open", "Open account"),
            ("/admin/close", "Close account"),
            ("/bulk", "Bulk payments"),
            ("/status", "Transfer status"),
            ("/otp", "One-time codes"),
        ],
    };
    html! {
        @if !links.is_empty() {
            nav aria-label="Main" { ul { @for (href, label) in links { li { a href=(href) { (label) } } } } }
        }
    }
}

/// The hidden field every form carries.
pub(crate) fn csrf_field(v: &Visit) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf()); }
}

/// A one-line problem; its stable code is on `data-code` for programs, not shown.
pub(crate) fn problem_box(code: &str, message: &str) -> Markup {
    html! {
        div.problem role="alert" data-code=(code) {
            p { (say::capitalised(message)) }
        }
    }
}

/// A good outcome.
pub(crate) fn done_box(message: &str) -> Markup {
    html! { div.done role="status" { p { (message) } } }
}

/// A teller error as a problem box, in the words people are told ([`say`]).
pub(crate) fn error_box(v: &Visit, e: &TellerError) -> Markup {
    problem_box(e.code(), &say::error(e, v.names()))
}

/// The HTTP status that goes with an error: 422 refused, 503 not done, 502 unknown.
pub(crate) fn status_of(e: &TellerError) -> StatusCode {
    match e {
        TellerError::Refused(_)
        | TellerError::Invalid(_)
        | TellerError::Caught(_)
        | TellerError::Usage(_) => StatusCode::UNPROCESSABLE_ENTITY,
        TellerError::LoginNotDone(inner) => status_of(inner),
        e if e.may_have_happened() => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The login page, with the last error if any.
pub(crate) fn login(
    status: StatusCode,
    v: &Visit,
    branch: &str,
    error: Option<&TellerError>,
    user: &str,
) -> Response {
    let body = html! {
        @if let Some(e) = error { (error_box(v, e)) }
        form.card method="post" action="/login" {
            (csrf_field(v))
            label for="user" { "Login" }
            input #user name="user" value=(user) required autocomplete="username" autofocus;
            small { "\"admin\" for the branch admin, or your account number" }
            label for="password" { "Password" }
            input #password name="password" type="password" required autocomplete="current-password";
            label for="otp" { "One-time code (only if your login is enrolled)" }
            input #otp name="otp" inputmode="numeric" pattern="[0-9]{6}" autocomplete="one-time-code";
            button type="submit" { "Log in" }
        }
    };
    page(status, v, &format!("Log in at {branch}"), body)
}

/// An instant to the second: UTC on the page (and on hover), shown in the browser's
/// own time zone by `app.js` where scripts run.
pub(crate) fn when(ms: u64) -> Markup {
    let utc = format!("{} UTC", crate::when::utc_second(ms));
    html! { time datetime=(crate::when::iso_second(ms)) title=(utc) { (utc) } }
}

/// A person's name, cut to one line with an ellipsis where it is long; the whole
/// name is in its `title` (shown on hover) and read by screen readers.
pub(crate) fn name(full: &str) -> Markup {
    html! { span.name title=(full) { (full) } }
}

/// An amount for people: `1,250.50`.
pub(crate) fn money(a: Amount) -> String {
    let text = a.to_string();
    let (sign, rest) = text.split_at(usize::from(text.starts_with('-')));
    let (whole, cents) = rest.split_once('.').unwrap_or((rest, "00"));
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}.{cents}")
}

/// An entry's amount with a minus when money left the account.
pub(crate) fn signed(k: EntryKind, a: Amount) -> String {
    match k {
        EntryKind::Withdrawal | EntryKind::TransferDebit => format!("\u{2212}{}", money(a)),
        EntryKind::Deposit | EntryKind::TransferCredit => money(a),
    }
}

/// A text field for an account number, checked as it is typed (check digits).
pub(crate) fn account_field(name: &str, label: &str, value: &str) -> Markup {
    let hint = format!("{name}-hint");
    html! {
        label for=(name) { (label) }
        input id=(name) name=(name) value=(value) required data-account
            placeholder="001-00000042-20" aria-describedby=(hint) autocomplete="off"
            pattern="[0-9]{3}-?[0-9]{8}-?[0-9]{2}";
        small id=(hint) aria-live="polite" { "like 001-00000042-20" }
    }
}

/// A field for an amount of money.
pub(crate) fn amount_field(value: &str) -> Markup {
    html! {
        label for="amount" { "Amount" }
        input #amount name="amount" value=(value) required inputmode="decimal"
            pattern="[0-9]+([.][0-9]{1,2})?" aria-describedby="amount-hint" autocomplete="off";
        small #amount-hint { "like 1250.50" }
    }
}

/// A select of the customer's own accounts.
pub(crate) fn own_accounts(name: &str, label: &str, accounts: &[AccountNumber]) -> Markup {
    html! {
        label for=(name) { (label) }
        select id=(name) name=(name) {
            @for a in accounts { option value=(a.to_string()) { (a.to_string()) } }
        }
    }
}

/// A button that asks where transfer `id` stands.
pub(crate) fn status_button(id: TransferId) -> Markup {
    html! {
        form.inline method="get" action="/status" {
            input type="hidden" name="id" value=(id.to_string());
            button type="submit" { "Check status" }
        }
    }
}

/// A transfer state for people; the state is also on `data-outcome` (committed,
/// refused, unknown, or none: no payment with this id was made) with the id on
/// `data-id`.
pub(crate) fn state_box(id: TransferId, s: &TransferState) -> Markup {
    let (outcome, said) = match s {
        TransferState::Committed => (
            "committed",
            done_box(&format!("Payment {id} is done: the money moved.")),
        ),
        TransferState::Aborted(r) => (
            "refused",
            problem_box(r.code(), &say::sentence(r.code(), &say::Context::default())),
        ),
        TransferState::Unknown if !say::may_still_arrive(id, crate::when::now_ms()) => (
            "none",
            problem_box("no_record", say::no_record(id, crate::when::now_ms())),
        ),
        TransferState::Unknown => (
            "unknown",
            html! {
                (problem_box("no_record_yet", say::no_record(id, crate::when::now_ms())))
                (status_button(id))
            },
        ),
        TransferState::Pending => (
            "unknown",
            html! {
                (problem_box("not_known_yet", &say::sentence("not_known_yet", &say::Context::default())))
                (status_button(id))
            },
        ),
    };
    html! { div.outcome data-outcome=(outcome) data-id=(id.to_string()) { (said) } }
}

/// What a deposit, withdrawal or transfer came to, said plainly. The outcome and id
/// are also on the box's `data-outcome` and `data-id`, for scripts and tests.
pub(crate) fn money_answer(v: &Visit, what: &str, answer: &MoneyAnswer) -> Markup {
    let said = say::money(answer, v.names());
    let (outcome, said) = match answer {
        MoneyAnswer::Committed { .. } => (
            "committed",
            done_box(&format!("Done: the {what} is committed.")),
        ),
        MoneyAnswer::Refused { reason, .. } => ("refused", problem_box(reason.code(), &said)),
        MoneyAnswer::NotDone { why, .. } => (
            "not_done",
            problem_box(why.code, &format!("{said} Sending the form again is safe.")),
        ),
        MoneyAnswer::Unknown { .. } => ("unknown", problem_box("outcome_unknown", &said)),
    };
    let id = answer.id();
    html! {
        div.outcome data-outcome=(outcome) data-id=(id.to_string()) {
            (said)
            p { "Its id is " code.id { (id.to_string()) } "." }
            @if outcome == "unknown" { (status_button(id)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_grouped_in_thousands() {
        let m = |minor| money(Amount::from_minor(minor).expect("amount"));
        assert_eq!(m(0), "0.00");
        assert_eq!(m(5), "0.05");
        assert_eq!(m(99_999), "999.99");
        assert_eq!(m(100_000), "1,000.00");
        assert_eq!(m(125_050), "1,250.50");
        assert_eq!(m(123_456_789_012), "1,234,567,890.12");
    }
}
