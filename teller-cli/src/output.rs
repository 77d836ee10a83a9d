//! How answers are shown: comfy-table tables for people, JSON for programs (amounts as
//! exact decimal strings, never floats).

use comfy_table::Table;
use serde_json::{Value, json};
use teller_cli::batch::{BatchLine, Tally};
use teller_cli::money::MoneyAnswer;
use teller_cli::say::{self, Names};
use wire::TransferId;
use wire::teller::{TellerResponse, TransferState};

use crate::views::{TABLE_WIDTH, account_json, accounts_table, entries_table, entry_json};

/// Prints answers as tables or as JSON.
#[derive(Debug, Clone, Default)]
pub struct Printer {
    pub json: bool,
    /// Branch names, for what people are told.
    pub names: Names,
}

fn state_text(id: TransferId, s: &TransferState) -> String {
    match s {
        TransferState::Committed => "committed: the money moved.".into(),
        TransferState::Aborted(r) => {
            format!("refused: {}", say::sentence(r.code(), &Default::default()))
        }
        TransferState::Pending => format!(
            "not known yet: {}",
            say::sentence("pending", &Default::default())
        ),
        TransferState::Unknown => format!(
            "no record: {}",
            say::no_record(id, crate::commands::now_ms())
        ),
    }
}

/// A transfer state as JSON: `state` is committed, refused, pending or unknown; a
/// refusal carries its stable `code` and its message.
fn state_json(id: TransferId, s: &TransferState) -> Value {
    match s {
        TransferState::Committed => json!({ "id": id.to_string(), "state": "committed" }),
        TransferState::Aborted(r) => json!({
            "id": id.to_string(), "state": "refused", "code": r.code(), "message": r.to_string(),
        }),
        TransferState::Pending => json!({ "id": id.to_string(), "state": "pending" }),
        TransferState::Unknown => json!({ "id": id.to_string(), "state": "unknown" }),
    }
}

/// What a teller is finally told about a money request, as JSON: `state` committed,
/// refused (with `code` and `message`), not_done (`code`, `message`) or unknown
/// (`message`, and the `check` command).
fn money_json(answer: &MoneyAnswer) -> Value {
    let id = answer.id();
    match answer {
        MoneyAnswer::Committed { .. } => state_json(id, &TransferState::Committed),
        MoneyAnswer::Refused { reason, .. } => state_json(id, &TransferState::Aborted(*reason)),
        MoneyAnswer::NotDone { why, .. } => {
            json!({ "id": id.to_string(), "state": "not_done", "code": why.code, "message": why.text })
        }
        MoneyAnswer::Unknown { why, .. } => json!({
            "id": id.to_string(), "state": "unknown", "code": "outcome_unknown",
            "message": why.text, "check": format!("teller-cli transfer-status {id}"),
        }),
    }
}

/// A line naming the branches a network listing could not reach, or nothing.
pub fn unreachable_note(unreachable: &[wire::BranchId]) -> String {
    if unreachable.is_empty() {
        return String::new();
    }
    let names: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
    format!(
        "\nnot listed: branch {} did not answer (the rest is complete)",
        names.join(", branch ")
    )
}

impl Printer {
    /// Prints one answer.
    pub fn response(&self, r: &TellerResponse) {
        let (value, text): (Value, String) = match r {
            TellerResponse::Account(a)
            | TellerResponse::AccountOpened(a)
            | TellerResponse::AccountClosed(a) => (
                account_json(a),
                accounts_table(std::slice::from_ref(a)).to_string(),
            ),
            TellerResponse::Accounts {
                accounts,
                unreachable,
                ..
            } => (
                json!({
                    "accounts": accounts.iter().map(account_json).collect::<Vec<_>>(),
                    "unreachable": unreachable.iter().map(|b| b.0).collect::<Vec<_>>(),
                }),
                format!(
                    "{}{}",
                    accounts_table(accounts),
                    unreachable_note(unreachable)
                ),
            ),
            TellerResponse::Entries {
                entries,
                next_before,
                next_network,
                unreachable,
            } => {
                let cursor = next_network.as_ref().map(wire::teller::cursor_text);
                let more = match (next_before, &cursor) {
                    (Some(n), _) => format!("\nmore: --before {n}"),
                    (None, Some(c)) => format!("\nmore: --network --cursor {c}"),
                    (None, None) => String::new(),
                };
                (
                    json!({
                        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
                        "next_before": next_before,
                        "next_cursor": cursor,
                        "unreachable": unreachable.iter().map(|b| b.0).collect::<Vec<_>>(),
                    }),
                    format!(
                        "{}{}{more}",
                        entries_table(entries),
                        unreachable_note(unreachable)
                    ),
                )
            }
            TellerResponse::Receipt { id, state } | TellerResponse::Status { id, state } => (
                state_json(*id, state),
                format!("{} Id {id}.", state_text(*id, state)),
            ),
            TellerResponse::OtpEnrolled { user, uri } => (
                json!({ "user": user, "otpauth_uri": uri }),
                format!(
                    "{user} is enrolled for one-time codes. Add this to an authenticator app \
                     (shown once; it holds the secret):\n  {uri}\nFrom now on every login \
                     of {user} needs the app's current code."
                ),
            ),
            TellerResponse::Trace {
                id,
                branches,
                unreachable,
            } => (
                json!({ "id": id.to_string(), "branches": crate::trace::trace_json(branches),
                        "unreachable": unreachable.iter().map(|b| b.0).collect::<Vec<_>>() }),
                format!(
                    "{}{}",
                    crate::trace::trace_text(*id, branches),
                    unreachable_note(unreachable)
                ),
            ),
            TellerResponse::Stuck { items, unreachable } => (
                json!({ "in_doubt": crate::trace::stuck_json(items),
                        "unreachable": unreachable.iter().map(|b| b.0).collect::<Vec<_>>() }),
                format!(
                    "{}{}",
                    crate::trace::stuck_table(items),
                    unreachable_note(unreachable)
                ),
            ),
            TellerResponse::NationalId {
                account,
                national_id,
            } => (
                json!({ "account": account.to_string(), "national_id": national_id }),
                format!(
                    "The national id of {account}'s owner: {national_id}\n(this reveal is \
                     recorded in the branch's audit trail under your login)"
                ),
            ),
            TellerResponse::LinkFaultSet { branch, fault } => (
                json!({ "branch": branch.0, "fault": format!("{fault:?}") }),
                format!("link to branch {branch}: {fault:?}"),
            ),
            other => (
                json!({ "answer": format!("{other:?}") }),
                format!("{other:?}"),
            ),
        };
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    /// Prints what a teller is finally told about a money request: always with its id;
    /// an unknown outcome with the command that asks for it. Anything but "committed"
    /// is also one line on stderr, as every failing command's is.
    pub fn money(&self, answer: &MoneyAnswer) {
        let id = answer.id();
        let check = format!("teller-cli transfer-status {id}");
        let value = money_json(answer);
        let said = say::money(answer, &self.names);
        let text = match answer {
            MoneyAnswer::Committed { .. } => format!("committed: {id}"),
            MoneyAnswer::Refused { .. } => format!("refused: {said} Id {id}."),
            MoneyAnswer::NotDone { .. } => {
                format!("not done: {said} Id {id} (sending it again is safe).")
            }
            MoneyAnswer::Unknown { .. } => {
                format!("outcome unknown: {said} Id {id}; check with: {check}")
            }
        };
        let committed = matches!(answer, MoneyAnswer::Committed { .. });
        if !committed {
            eprintln!("teller-cli: {text}");
        }
        if self.json {
            println!("{value}");
        } else if committed {
            println!("{text}");
        }
    }

    /// Prints each line of a transfer file with its answer (a table, or JSON lines),
    /// then the tally; the tally goes to stderr too when not every line committed.
    pub fn batch(&self, lines: &[BatchLine], answers: &[MoneyAnswer], tally: &Tally) {
        let summary = format!(
            "{} lines: {} committed, {} refused, {} not done, {} unknown",
            lines.len(),
            tally.committed,
            tally.refused,
            tally.not_done,
            tally.unknown
        );
        if self.json {
            for (l, a) in lines.iter().zip(answers) {
                println!("{}", batch_line_json(l, a));
            }
            println!(
                "{}",
                json!({ "lines": lines.len(), "committed": tally.committed, "refused": tally.refused,
                        "not_done": tally.not_done, "unknown": tally.unknown })
            );
        } else {
            println!("{}", batch_table(lines, answers));
            println!("{summary}");
        }
        if tally.committed < lines.len() {
            eprintln!("teller-cli: {summary}");
        }
        if tally.unknown > 0 {
            eprintln!(
                "teller-cli: ask about an unknown line with: teller-cli transfer-status ID, or run the same file again (it is safe)"
            );
        }
    }
}

/// A line's answer in a word or a code: committed, the refusal's code, not_done (and
/// why), unknown.
fn answer_words(a: &MoneyAnswer) -> String {
    match a {
        MoneyAnswer::Committed { .. } => "committed".into(),
        MoneyAnswer::Refused { reason, .. } => format!("refused: {}", reason.code()),
        MoneyAnswer::NotDone { why, .. } => format!("not done: {}", why.code),
        MoneyAnswer::Unknown { .. } => "unknown".into(),
    }
}

/// A transfer file's lines with their answers, borderless to fit 100 columns with
/// whole ids (the `from` account is left out: it is in the file, and in `--json`).
fn batch_table(lines: &[BatchLine], answers: &[MoneyAnswer]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH);
    t.set_header(["line", "id", "to", "amount", "answer"]);
    for (l, a) in lines.iter().zip(answers) {
        t.add_row([
            l.line.to_string(),
            l.spec.id.to_string(),
            l.spec.to.to_string(),
            l.spec.amount.to_string(),
            answer_words(a),
        ]);
    }
    t
}

/// One line as JSON: the line, the transfer, and its answer as `money` prints it
/// (`state` committed, refused, not_done or unknown, with `code` and `message`).
fn batch_line_json(l: &BatchLine, a: &MoneyAnswer) -> Value {
    let mut v = money_json(a);
    if let Value::Object(map) = &mut v {
        map.insert("line".into(), json!(l.line));
        map.insert("from".into(), json!(l.spec.from.to_string()));
        map.insert("to".into(), json!(l.spec.to.to_string()));
        map.insert("amount".into(), json!(l.spec.amount.to_string()));
    }
    v
}
