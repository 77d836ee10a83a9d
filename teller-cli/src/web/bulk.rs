//! The bulk-payment screen (admins and customers): a transfer file pasted as CSV (or
//! loaded from a file by `app.js`), `from,to,amount` or `id,from,to,amount` per line,
//! checked whole before anything is sent, then every line answered on its own, as
//! `teller-cli transfer-batch` does. A line without an id gets one, and the answer
//! gives the file back with every id filled in (in the form, and to download), so
//! sending it again (a double click, a reload, a resend) asks about the same ids and
//! moves nothing twice.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};

use super::pages::{self, csrf_field, page};
use super::visits::{Visit, Visitor};
use super::{Fields, Web, logged_in};
use crate::batch::{self, BatchLine, BatchOptions, Tally};
use crate::money::{self, MoneyAnswer};
use crate::say::{self, Names};

pub(crate) fn routes() -> Router<Arc<Web>> {
    Router::new().route("/bulk", get(form).post(send))
}

const TITLE: &str = "Bulk payments";

fn fields(v: &Visit, csv: &str) -> Markup {
    html! {
        form.card.wide method="post" action="/bulk" data-once {
            (csrf_field(v))
            // The base of the ids of lines without one: made once, with the form, so
            // the form sent again gives its lines the same ids.
            input type="hidden" name="batch" value=(crate::new_transfer_id().to_string());
            label for="csv" { "Payments, one per line: from,to,amount (an id first is optional)" }
            textarea #csv name="csv" rows="12" required spellcheck="false" aria-describedby="csv-hint" data-csv-file { (csv) }
            small #csv-hint {
                "A line without an id gets one when it is sent, and the list comes back with "
                "every id: sending that list again is safe. The whole list is checked before "
                "anything is sent."
            }
            button type="submit" { "Send payments" }
        }
    }
}

/// Every wrong line of a list that was not sent, one item each.
fn problems_box(problems: &batch::FileProblems) -> Markup {
    let n = problems.problems.len();
    html! {
        div.problem role="alert" data-code="invalid_input" {
            p { (n) " wrong line(s); nothing was sent. Correct them and send the list again." }
            ul { @for (line, why) in &problems.problems {
                li { @if *line > 0 { "Line " (line) ": " } (why) }
            } }
        }
    }
}

/// The list with every line's id, to keep and to send again (safe).
fn with_ids_box(lines: &[BatchLine]) -> Markup {
    let csv = batch::with_ids(lines);
    let href = format!("data:text/csv;charset=utf-8,{}", percent(&csv));
    html! {
        p.note {
            "Every line now has its id; the list below carries them, so sending it again "
            "is safe. "
            a href=(href) download="payments-with-ids.csv" { "Download the list with its ids" }
        }
    }
}

/// `text` percent-encoded for a `data:` address.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

async fn form(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = logged_in(&mut v) {
        return r;
    }
    let body = fields(&v, "from,to,amount\n");
    page(StatusCode::OK, &v, TITLE, body)
}

async fn send(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    axum::Form(f): axum::Form<Fields>,
) -> Response {
    let mut v = visitor.lock().await;
    let csv = f.get("csv").cloned().unwrap_or_default();
    let policy = web.policy;
    let teller = match logged_in(&mut v) {
        Ok(t) => t.clone(),
        Err(r) => return r,
    };
    let base = f
        .get("batch")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(crate::new_transfer_id);
    let mut new_id = |line: usize, raw: &str| batch::derived_id(base, line, raw);
    let lines = match batch::parse_with(&csv, Some(&mut new_id)) {
        Ok(lines) => lines,
        Err(problems) => {
            let body = html! { (problems_box(&problems)) (fields(&v, &csv)) };
            return page(StatusCode::UNPROCESSABLE_ENTITY, &v, TITLE, body);
        }
    };
    let options = BatchOptions {
        chunk: batch::CHUNK_LINES_DEFAULT,
        in_flight: batch::CHUNKS_IN_FLIGHT_DEFAULT,
        policy,
    };
    let answers = batch::send(&teller, &lines, options, |_| {}).await;
    let tally = Tally::of(&answers);
    let body = html! {
        (tally_box(&tally))
        (lines_table(&lines, &answers, v.names()))
        (with_ids_box(&lines))
        (fields(&v, &batch::with_ids(&lines)))
    };
    page(status_of(&tally), &v, TITLE, body)
}

/// The worst line's answer as an HTTP status: 202 some unknown, 503 some not done, 422
/// some refused, 200 all committed.
fn status_of(t: &Tally) -> StatusCode {
    match t.exit_code() {
        money::EXIT_UNKNOWN => StatusCode::ACCEPTED,
        money::EXIT_NOT_DONE => StatusCode::SERVICE_UNAVAILABLE,
        money::EXIT_REFUSED => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    }
}

fn tally_box(t: &Tally) -> Markup {
    let said = format!(
        "{} committed, {} refused, {} not done, {} unknown",
        t.committed, t.refused, t.not_done, t.unknown
    );
    if t.refused + t.not_done + t.unknown == 0 {
        pages::done_box(&said)
    } else {
        html! {
            (pages::problem_box("some_lines_not_committed", &said))
            @if t.unknown > 0 {
                p.note { "A line whose outcome is unknown may still be carried out: check its status, or send the same lines again (safe)." }
            }
        }
    }
}

/// A line's answer in words, and its `data-outcome`.
fn said(a: &MoneyAnswer, names: &Names) -> (&'static str, String) {
    let words = say::money(a, names);
    match a {
        MoneyAnswer::Committed { .. } => ("committed", "Done.".into()),
        MoneyAnswer::Refused { .. } => ("refused", words),
        MoneyAnswer::NotDone { .. } => ("not_done", words),
        MoneyAnswer::Unknown { .. } => ("unknown", words),
    }
}

fn lines_table(lines: &[BatchLine], answers: &[MoneyAnswer], names: &Names) -> Markup {
    html! {
        table.lines {
            thead { tr { th { "Line" } th { "Id" } th { "From" } th { "To" } th.num { "Amount" } th { "Answer" } } }
            tbody {
                @for (l, a) in lines.iter().zip(answers) {
                    @let (outcome, words) = said(a, names);
                    tr data-outcome=(outcome) data-id=(l.spec.id.to_string()) {
                        td data-label="Line" { (l.line) }
                        td data-label="Id" { code.id { (l.spec.id.to_string()) } }
                        td data-label="From" { (l.spec.from.to_string()) }
                        td data-label="To" { (l.spec.to.to_string()) }
                        td.num data-label="Amount" { (pages::money(l.spec.amount)) }
                        td.said data-label="Answer" { (words) @if outcome == "unknown" { " " (pages::status_button(l.spec.id)) } }
                    }
                }
            }
        }
    }
}
