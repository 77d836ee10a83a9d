//! One account or one ledger entry as people and programs see it: table rows and JSON
//! objects, shared by every answer that shows them (`output.rs`) and by `admin trace`
//! (`trace.rs`).

use comfy_table::Table;
use serde_json::{Value, json};
use wire::teller::{AccountView, EntryKind, EntryView};

pub fn account_json(a: &AccountView) -> Value {
    json!({
        "account": a.number.to_string(),
        "owner": a.owner_name,
        "balance": a.balance.to_string(),
        "held": a.held.to_string(),
        "status": format!("{:?}", a.status).to_lowercase(),
        "opened_at_ms": a.opened_at_ms,
        "national_id_masked": a.contact.national_id_masked,
        "phone": a.contact.phone,
        "sms_opt_in": a.contact.sms_opt_in,
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

/// Widest a table may be: it fits a 100-column terminal (long cells wrap).
pub const TABLE_WIDTH: u16 = 100;

/// Ledger entries for people: time (UTC), kinds in words, borderless, to fit a
/// 100-column terminal with whole ids. One account's entries (a history) show the
/// balance after each; many accounts' (a listing) show the account instead. The
/// sequence numbers are left out: paging says the next `--before`.
pub fn entries_table(entries: &[EntryView]) -> Table {
    let one_account = entries.windows(2).all(|w| w[0].account == w[1].account);
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH);
    if one_account {
        t.set_header([
            "time (UTC)",
            "balance",
            "kind",
            "amount",
            "other account",
            "id",
        ]);
    } else {
        // Two account columns and a whole id leave no room for a separate "other
        // account": the kind names it ("to ..." / "from ..."), so the time stays whole.
        t.set_header(["time (UTC)", "account", "kind", "amount", "id"]);
    }
    for e in entries {
        let when = teller_cli::when::utc_second(e.at_ms);
        let mut row = vec![when];
        if one_account {
            row.extend([
                e.balance_after.to_string(),
                teller_cli::kind_words(e.kind).to_owned(),
                e.amount.to_string(),
                e.counterparty.map(|c| c.to_string()).unwrap_or_default(),
            ]);
        } else {
            row.extend([
                e.account.to_string(),
                kind_naming_the_other(e),
                e.amount.to_string(),
            ]);
        }
        row.push(e.transfer_id.to_string());
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 1));
    }
    t
}

/// A ledger line's kind in words, naming the other account of a transfer.
fn kind_naming_the_other(e: &EntryView) -> String {
    match (e.kind, e.counterparty) {
        (EntryKind::TransferDebit, Some(to)) => format!("to {to}"),
        (EntryKind::TransferCredit, Some(from)) => format!("from {from}"),
        (kind, _) => teller_cli::kind_words(kind).to_owned(),
    }
}
