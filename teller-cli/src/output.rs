//! How answers are shown: comfy-table tables for people, JSON for programs (amounts as
//! exact decimal strings, never floats).

use comfy_table::Table;
use serde_json::{Value, json};
use wire::TransferId;
use wire::teller::{AccountView, EntryView, TellerResponse, TransferState};

/// Prints answers as tables or as JSON.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
}

fn state_text(s: &TransferState) -> String {
    match s {
        TransferState::Committed => "committed".into(),
        TransferState::Aborted(r) => format!("refused: {r}"),
        TransferState::Pending => "pending".into(),
        TransferState::Unknown => "unknown".into(),
    }
}

pub fn account_json(a: &AccountView) -> Value {
    json!({
        "account": a.number.to_string(),
        "owner": a.owner_name,
        "balance": a.balance.to_string(),
        "held": a.held.to_string(),
        "status": format!("{:?}", a.status).to_lowercase(),
        "opened_at_ms": a.opened_at_ms,
    })
}

pub fn entry_json(e: &EntryView) -> Value {
    json!({
        "branch": e.branch.0,
        "seq": e.seq,
        "account": e.account.to_string(),
        "kind": format!("{:?}", e.kind),
        "counterparty": e.counterparty.map(|c| c.to_string()),
        "amount": e.amount.to_string(),
        "balance_after": e.balance_after.to_string(),
        "transfer_id": e.transfer_id.to_string(),
        "at_ms": e.at_ms,
    })
}

pub fn accounts_table(accounts: &[AccountView]) -> Table {
    let mut t = Table::new();
    t.set_header(["account", "owner", "balance", "held", "status"]);
    for a in accounts {
        t.add_row([
            a.number.to_string(),
            a.owner_name.clone(),
            a.balance.to_string(),
            a.held.to_string(),
            format!("{:?}", a.status).to_lowercase(),
        ]);
    }
    t
}

pub fn entries_table(entries: &[EntryView]) -> Table {
    let mut t = Table::new();
    t.set_header([
        "branch",
        "seq",
        "account",
        "kind",
        "amount",
        "balance after",
        "counterparty",
        "id",
    ]);
    for e in entries {
        t.add_row([
            e.branch.to_string(),
            e.seq.to_string(),
            e.account.to_string(),
            format!("{:?}", e.kind),
            e.amount.to_string(),
            e.balance_after.to_string(),
            e.counterparty.map(|c| c.to_string()).unwrap_or_default(),
            e.transfer_id.to_string(),
        ]);
    }
    t
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
            TellerResponse::Accounts(v) => (
                Value::Array(v.iter().map(account_json).collect()),
                accounts_table(v).to_string(),
            ),
            TellerResponse::Entries {
                entries,
                next_before,
            } => (
                json!({
                    "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "next_before": next_before,
                }),
                match next_before {
                    Some(n) => format!("{}\nmore: --before {n}", entries_table(entries)),
                    None => entries_table(entries).to_string(),
                },
            ),
            TellerResponse::Receipt { id, state } | TellerResponse::Status { id, state } => (
                json!({ "id": id.to_string(), "state": state_text(state) }),
                format!("{}: {id}", state_text(state)),
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

    /// Says that a transfer's outcome is not known, and how to find it.
    pub fn unknown(&self, id: TransferId, why: &str) {
        if self.json {
            println!(
                "{}",
                json!({ "id": id.to_string(), "state": "unknown", "reason": why })
            );
        } else {
            println!(
                "outcome unknown for transfer {id} ({why}); it may still complete. \
                 Check with: teller-cli transfer-status {id}"
            );
        }
    }
}
