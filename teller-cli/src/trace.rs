//! How `admin trace` and `admin in-doubt` are shown to people: a transfer branch by
//! branch, and the unfinished transfers with what each waits on.

use comfy_table::Table;
use teller_cli::when::utc_second;
use wire::TransferId;
use wire::teller::TransferState;
use wire::trace::{BranchTrace, StuckRole, StuckView};
use wire::twopc::{Decision, Vote};

fn decision(d: Option<Decision>) -> &'static str {
    match d {
        Some(Decision::Commit) => "commit",
        Some(Decision::Abort) => "abort",
        None => "not decided",
    }
}

fn vote(v: &Option<Vote>) -> String {
    match v {
        Some(Vote::Yes) => "yes".into(),
        Some(Vote::No(r)) => format!("no ({})", r.code()),
        None => "not voted".into(),
    }
}

/// A recorded outcome in words.
fn state_words(s: &TransferState) -> String {
    match s {
        TransferState::Committed => "committed".into(),
        TransferState::Aborted(r) => format!("refused ({}: {r})", r.code()),
        TransferState::Pending => "pending".into(),
        TransferState::Unknown => "not known".into(),
    }
}

/// One branch's part of a trace, a few lines.
fn branch_text(t: &BranchTrace) -> String {
    let mut out = format!("branch {}:\n", t.branch);
    if let Some(c) = &t.coordinated {
        out.push_str(&format!(
            "  coordinator: {} {} from {} to {}; decision {}; {}; deadline {}\n",
            c.spec.id,
            c.spec.amount,
            c.spec.from,
            c.spec.to,
            decision(c.decision),
            if c.ended {
                "every participant acknowledged"
            } else {
                "acknowledgements awaited"
            },
            utc_second(c.deadline_ms)
        ));
    }
    if let Some(l) = &t.leg {
        out.push_str(&format!(
            "  participant: coordinator {}; vote {}; decision {}; deadline {}\n",
            l.coordinator,
            vote(&l.vote),
            decision(l.decision),
            utc_second(l.deadline_ms)
        ));
    }
    if let Some(m) = &t.movement {
        let accounts: Vec<String> = m.accounts.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "  one-step record (deposit, withdrawal or local transfer) on {}: {} at {}\n",
            accounts.join(" -> "),
            state_words(&m.state),
            utc_second(m.at_ms)
        ));
    }
    for e in &t.evidence {
        out.push_str(&format!(
            "  kept: {} signed by branch {} ({}), valid until {}\n",
            e.what,
            e.signer,
            if e.verified {
                "signature verified"
            } else {
                "SIGNATURE DOES NOT VERIFY"
            },
            utc_second(e.expires_at_ms)
        ));
    }
    for l in &t.ledger {
        out.push_str(&format!(
            "  ledger: {} {} {} on {} (balance after {}) at {}\n",
            l.seq,
            teller_cli::kind_words(l.kind),
            l.amount,
            l.account,
            l.balance_after,
            utc_second(l.at_ms)
        ));
    }
    if t.is_empty() {
        out.push_str("  no record of this id\n");
    }
    out
}

/// A whole trace, branch by branch.
pub fn trace_text(id: TransferId, branches: &[BranchTrace]) -> String {
    let mut out = format!("transfer {id}\n");
    for t in branches {
        out.push_str(&branch_text(t));
    }
    out
}

/// The unfinished transfers as a table.
pub fn stuck_table(items: &[StuckView]) -> String {
    if items.is_empty() {
        return "nothing in doubt: every transfer is finished at every branch that answered".into();
    }
    let mut t = Table::new();
    t.set_header([
        "branch",
        "id",
        "waits for",
        "on branch",
        "amount",
        "deadline (UTC)",
    ]);
    for s in items {
        let waits = match s.role {
            StuckRole::AwaitingDecision => "the decision",
            StuckRole::AwaitingVotes => "votes",
            StuckRole::AwaitingAcks => "acknowledgements",
        };
        let on: Vec<String> = s.waiting_on.iter().map(ToString::to_string).collect();
        t.add_row([
            s.branch.to_string(),
            s.id.to_string(),
            waits.to_owned(),
            on.join(", "),
            s.amount.map(|a| a.to_string()).unwrap_or_default(),
            utc_second(s.deadline_ms),
        ]);
    }
    t.to_string()
}

fn decision_json(d: Option<Decision>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| format!("{d:?}").into())
}

/// A trace for programs: ids and amounts as strings, times in Unix milliseconds.
pub fn trace_json(branches: &[BranchTrace]) -> serde_json::Value {
    let branch = |t: &BranchTrace| {
        serde_json::json!({
            "branch": t.branch.0,
            "coordinated": t.coordinated.as_ref().map(|c| serde_json::json!({
                "from": c.spec.from.to_string(), "to": c.spec.to.to_string(),
                "amount": c.spec.amount.to_string(), "decision": decision_json(c.decision),
                "ended": c.ended, "deadline_ms": c.deadline_ms,
            })),
            "leg": t.leg.as_ref().map(|l| serde_json::json!({
                "coordinator": l.coordinator.0, "vote": l.vote.as_ref().map(|v| vote(&Some(*v))),
                "decision": decision_json(l.decision), "deadline_ms": l.deadline_ms,
            })),
            "movement": t.movement.as_ref().map(|m| serde_json::json!({
                "accounts": m.accounts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "outcome": state_words(&m.state), "at_ms": m.at_ms,
            })),
            "evidence": t.evidence.iter().map(|e| serde_json::json!({
                "what": e.what, "signer": e.signer.0, "verified": e.verified,
                "expires_at_ms": e.expires_at_ms,
            })).collect::<Vec<_>>(),
            "ledger": t.ledger.iter().map(crate::views::entry_json).collect::<Vec<_>>(),
        })
    };
    branches.iter().map(branch).collect()
}

/// The unfinished transfers for programs.
pub fn stuck_json(items: &[StuckView]) -> serde_json::Value {
    items
        .iter()
        .map(|s| {
            serde_json::json!({
                "branch": s.branch.0, "id": s.id.to_string(), "role": format!("{:?}", s.role),
                "waiting_on": s.waiting_on.iter().map(|b| b.0).collect::<Vec<_>>(),
                "amount": s.amount.map(|a| a.to_string()), "deadline_ms": s.deadline_ms,
            })
        })
        .collect()
}
