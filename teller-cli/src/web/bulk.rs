//! The bulk-payment screen (admins and customers): a transfer file pasted as CSV
//! (`id,from,to,amount` per line), checked whole before anything is sent, then every
//! line answered on its own, as `teller-cli transfer-batch` does. Each line carries its
//! id, so sending the same page again (a double click, a reload) asks about the same
//! ids and moves nothing twice.

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
use crate::TellerError;
use crate::batch::{self, BatchLine, BatchOptions, Tally};
use crate::money::{self, MoneyAnswer};
use crate::say::{self, Names};

pub(crate) fn routes() -> Router<Arc<Web>> {
    Router::new().route("/bulk", get(form).post(send))
}

const TITLE: &str = "Bulk payments";

fn fields(v: &Visit, csv: &str) -> Markup {
    html! {
        form.card method="post" action="/bulk" {
            (csrf_field(v))
            label for="csv" { "Transfers, one per line: id,from,to,amount" }
            textarea #csv name="csv" rows="12" required spellcheck="false" aria-describedby="csv-hint" { (csv) }
            small #csv-hint {
                "Each line's id (a UUID) is its own: sending the same lines again is safe. "
                "The whole list is checked before anything is sent."
            }
            button type="submit" { "Send payments" }
        }
    }
}

async fn form(visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    if let Err(r) = logged_in(&mut v) {
        return r;
    }
    let body = fields(&v, "id,from,to,amount\n");
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
    let lines = match batch::parse(&csv) {
        Ok(lines) => lines,
        Err(problems) => {
            let e = TellerError::Invalid(problems.to_string());
            let body = html! { (pages::error_box(&v, &e)) (fields(&v, &csv)) };
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
    let body =
        html! { (tally_box(&tally)) (lines_table(&lines, &answers, v.names())) (fields(&v, &csv)) };
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
            thead { tr { th { "Line" } th { "Id" } th { "To" } th.num { "Amount" } th { "Answer" } } }
            tbody {
                @for (l, a) in lines.iter().zip(answers) {
                    @let (outcome, words) = said(a, names);
                    tr data-outcome=(outcome) data-id=(l.spec.id.to_string()) {
                        td data-label="Line" { (l.line) }
                        td data-label="Id" { code.id { (l.spec.id.to_string()) } }
                        td data-label="To" { (l.spec.to.to_string()) }
                        td.num data-label="Amount" { (pages::money(l.spec.amount)) }
                        td data-label="Answer" { (words) @if outcome == "unknown" { " " (pages::status_button(l.spec.id)) } }
                    }
                }
            }
        }
    }
}
