//! `teller-cli admin reconcile`: checks every branch's signed statement against the
//! network file's keys, then holds each pair of branches against each other: what A
//! says it sent B must be what B says it received from A (count, total and the digest
//! of every transfer with its amount, so every transfer is compared however many there
//! are). A disagreement names the transfers the listed ids show.

use std::collections::BTreeMap;

use client::network_file::NetworkFile;
use serde_json::{Value, json};
use wire::trace::{Flow, Statement};
use wire::{BranchId, Signed, TransferId};

/// One direction between two branches, as both sides state it.
#[derive(Debug, Clone)]
pub struct Pair {
    pub from: BranchId,
    pub to: BranchId,
    pub sent: Flow,
    pub received: Flow,
    /// Transfers (with amounts) only the sender lists, and only the receiver lists.
    pub only_sent: Vec<(TransferId, i64)>,
    pub only_received: Vec<(TransferId, i64)>,
}

impl Pair {
    /// Both sides state the same transfers with the same amounts: same count, total
    /// and digest (the digest covers every transfer, listed or not).
    pub fn agrees(&self) -> bool {
        self.sent.count == self.received.count
            && self.sent.total_minor == self.received.total_minor
            && self.sent.digest == self.received.digest
            && self.only_sent.is_empty()
            && self.only_received.is_empty()
    }

    /// How many transfers were compared: every one either side states.
    pub fn compared(&self) -> u64 {
        self.sent.count.max(self.received.count)
    }

    /// A disagreement whose transfers the listed ids may not all name (a side listed
    /// only its lowest ids).
    pub fn names_partly(&self) -> bool {
        !self.agrees() && (self.sent.truncated || self.received.truncated)
    }
}

/// The verified statements, and the branches whose statement did not verify.
pub fn verify(net: &NetworkFile, encoded: &[Vec<u8>]) -> (Vec<Statement>, Vec<String>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for bytes in encoded {
        let Ok(signed) = wire::decode::<Signed<Statement>>(bytes) else {
            bad.push("a statement that does not decode".to_owned());
            continue;
        };
        let checked = net
            .get(signed.signer)
            .map(|b| b.verify_in_domain(&signed, wire::signed::STATEMENT_DOMAIN));
        match checked {
            Some(Ok(s)) if s.branch == signed.signer => good.push(s),
            _ => bad.push(format!(
                "branch {}'s statement does not verify",
                signed.signer
            )),
        }
    }
    (good, bad)
}

fn flow(s: &Statement, peer: BranchId, sent: bool) -> Flow {
    s.positions
        .iter()
        .find(|p| p.peer == peer)
        .map(|p| {
            if sent {
                p.sent.clone()
            } else {
                p.received.clone()
            }
        })
        .unwrap_or_default()
}

/// The transfers `a` lists that `b` does not list with the same amount. Where `b` listed
/// only its lowest ids, ids above its last one are not held against it.
fn only_in(a: &Flow, b: &Flow) -> Vec<(TransferId, i64)> {
    let theirs: BTreeMap<TransferId, i64> = b.ids.iter().copied().collect();
    let last = b
        .truncated
        .then(|| b.ids.last().map(|(id, _)| *id))
        .flatten();
    a.ids
        .iter()
        .filter(|(id, _)| last.is_none_or(|l| *id <= l))
        .filter(|(id, amount)| theirs.get(id) != Some(amount))
        .copied()
        .collect()
}

/// Every ordered pair of branches that both stated.
pub fn pairs(statements: &[Statement]) -> Vec<Pair> {
    let mut out = Vec::new();
    for a in statements {
        for b in statements.iter().filter(|b| b.branch != a.branch) {
            let (sent, received) = (flow(a, b.branch, true), flow(b, a.branch, false));
            out.push(Pair {
                from: a.branch,
                to: b.branch,
                only_sent: only_in(&sent, &received),
                only_received: only_in(&received, &sent),
                sent,
                received,
            });
        }
    }
    out
}

fn money(minor: i64) -> String {
    wire::Amount::from_minor(minor).map_or_else(|_| minor.to_string(), |a| a.to_string())
}

fn ids(list: &[(TransferId, i64)]) -> Vec<String> {
    list.iter()
        .map(|(id, a)| format!("{id} ({})", money(*a)))
        .collect()
}

/// The report for people.
pub fn text(pairs: &[Pair], bad: &[String], unreachable: &[BranchId]) -> String {
    let mut out = String::new();
    for p in pairs {
        let said = format!(
            "branch {} -> {}: sent {} ({}), received {} ({}); {} compared",
            p.from,
            p.to,
            p.sent.count,
            money(p.sent.total_minor),
            p.received.count,
            money(p.received.total_minor),
            p.compared()
        );
        if p.agrees() {
            out.push_str(&format!("agree     {said}\n"));
        } else {
            out.push_str(&format!("DISAGREE  {said}\n"));
            for id in ids(&p.only_sent) {
                out.push_str(&format!("          only {} lists {id}\n", p.from));
            }
            for id in ids(&p.only_received) {
                out.push_str(&format!("          only {} lists {id}\n", p.to));
            }
            if p.names_partly() {
                out.push_str(
                    "          (a side has more transfers than a statement lists: some \
                     differing ones may be unnamed; reconcile an earlier cut to name them)\n",
                );
            }
        }
    }
    for b in bad {
        out.push_str(&format!("BAD       {b}\n"));
    }
    for b in unreachable {
        out.push_str(&format!("unchecked branch {b} did not answer\n"));
    }
    out
}

/// The report for programs.
pub fn json(cut_ms: u64, pairs: &[Pair], bad: &[String], unreachable: &[BranchId]) -> Value {
    let pair = |p: &Pair| {
        json!({
            "from": p.from.0, "to": p.to.0, "agree": p.agrees(),
            "sent_count": p.sent.count, "sent_total": money(p.sent.total_minor),
            "received_count": p.received.count, "received_total": money(p.received.total_minor),
            "compared": p.compared(), "named_partly": p.names_partly(),
            "only_sender_lists": ids(&p.only_sent), "only_receiver_lists": ids(&p.only_received),
        })
    };
    json!({
        "cut_ms": cut_ms,
        "pairs": pairs.iter().map(pair).collect::<Vec<_>>(),
        "bad_statements": bad,
        "unreachable": unreachable.iter().map(|b| b.0).collect::<Vec<_>>(),
        "all_agree": bad.is_empty() && unreachable.is_empty() && pairs.iter().all(Pair::agrees),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::trace::Position;

    fn statement(
        branch: u16,
        sent: &[(u128, i64)],
        received: &[(u128, i64)],
        peer: u16,
    ) -> Statement {
        let f = |l: &[(u128, i64)]| Flow {
            count: l.len() as u64,
            total_minor: l.iter().map(|x| x.1).sum(),
            digest: digest(l),
            ids: l.iter().map(|(i, a)| (TransferId(*i), *a)).collect(),
            truncated: false,
        };
        Statement {
            branch: BranchId(branch),
            cut_ms: 1,
            positions: vec![Position {
                peer: BranchId(peer),
                sent: f(sent),
                received: f(received),
            }],
        }
    }

    #[test]
    fn a_statement_signed_with_another_key_or_domain_does_not_verify() {
        let key = wire::BranchKey::from_secret([7; 32]);
        let public: String = key
            .public()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let toml = format!(
            "[[branch]]\nid = 1\nname = \"b1\"\npublic_key = \"{public}\"\npeer_id = \"{}\"\naddresses = []\n",
            key.peer_id()
        );
        let path = std::env::temp_dir().join(format!("reconcile-{}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write");
        let net = NetworkFile::load(&path).expect("network file");
        let _ = std::fs::remove_file(&path);
        let s = statement(1, &[(1, 100)], &[], 2);
        let sign = |k: &wire::BranchKey, domain: &[u8]| {
            let signed = Signed::sign_in_domain(domain, k, BranchId(1), &s).expect("sign");
            wire::encode(&signed).expect("encode")
        };
        let good = sign(&key, wire::signed::STATEMENT_DOMAIN);
        let stranger = sign(
            &wire::BranchKey::from_secret([8; 32]),
            wire::signed::STATEMENT_DOMAIN,
        );
        let as_2pc = sign(&key, wire::signed::SIGNING_DOMAIN);
        let (ok, bad) = verify(&net, &[good, stranger, as_2pc, vec![1, 2, 3]]);
        assert_eq!(ok, vec![s]);
        assert_eq!(bad.len(), 3, "{bad:?}");
    }

    /// A flow's digest as a branch computes it (a stand-in: any function of the list).
    fn digest(l: &[(u128, i64)]) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, (id, a)) in l.iter().enumerate() {
            d[i % 32] ^= id.to_le_bytes()[0] ^ a.to_le_bytes()[0];
        }
        d
    }

    #[test]
    fn a_difference_beyond_the_listed_ids_still_disagrees() {
        let a = statement(1, &[(1, 100), (2, 50), (3, 7)], &[], 2);
        let mut b = statement(2, &[], &[(1, 100), (2, 50), (3, 8)], 1);
        // b lists only its lowest id: transfer 3 differs in amount beyond the list.
        let received = &mut b.positions[0].received;
        received.ids.truncate(1);
        received.truncated = true;
        let ps = pairs(&[a, b]);
        let p = ps.iter().find(|p| p.from == BranchId(1)).expect("1 -> 2");
        assert!(!p.agrees() && p.names_partly(), "{p:?}");
        assert_eq!(p.compared(), 3);
        assert!(text(&ps, &[], &[]).contains("3 compared"));
    }

    #[test]
    fn both_sides_must_state_the_same_transfers() {
        let a = statement(1, &[(1, 100), (2, 50)], &[(9, 5)], 2);
        let b = statement(2, &[(9, 5)], &[(1, 100), (2, 50)], 1);
        assert!(pairs(&[a.clone(), b]).iter().all(Pair::agrees));
        // b lost transfer 2, and states 1 with another amount.
        let b = statement(2, &[(9, 5)], &[(1, 101)], 1);
        let ps = pairs(&[a, b]);
        let p = ps.iter().find(|p| p.from == BranchId(1)).expect("1 -> 2");
        assert!(!p.agrees());
        assert_eq!(p.only_sent, vec![(TransferId(1), 100), (TransferId(2), 50)]);
        assert_eq!(p.only_received, vec![(TransferId(1), 101)]);
    }
}
