//! The network-wide ledger listing, a page at a time: each branch's page (newest first
//! by its own seq) merged newest first by time, and the cursor that goes on from
//! exactly where each branch's shown entries end, so no entry is shown twice or
//! skipped across pages, whatever the branches' clocks say.

use wire::BranchId;
use wire::teller::{EntryView, NetworkCursor};

/// One branch's answer to a network listing: its entries, newest first by seq, and
/// whether it has more after them (`next_before`).
#[derive(Debug, Clone)]
pub struct BranchPage {
    pub branch: BranchId,
    pub entries: Vec<EntryView>,
    pub next_before: Option<u64>,
}

/// Where branch `b`'s listing goes on by `cursor`: `None` from its newest entry,
/// `Some(0)` when it has no more.
pub fn before_of(cursor: &NetworkCursor, b: BranchId) -> Option<u64> {
    cursor.iter().find(|(c, _)| *c == b).map(|&(_, seq)| seq)
}

/// Merges the branches' pages into one page of at most `limit` entries, newest first
/// by (time, branch, seq), taking each branch's entries in its own order; returns the
/// page and the cursor for the next one (`None` when no branch has more). Branches
/// that did not answer, or were not asked, keep their place in `prior`.
pub fn merge(
    pages: Vec<BranchPage>,
    prior: &NetworkCursor,
    unreachable: &[BranchId],
    limit: usize,
) -> (Vec<EntryView>, Option<NetworkCursor>) {
    let mut heads: Vec<(BranchPage, usize)> = pages.into_iter().map(|p| (p, 0)).collect();
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (p, at))| p.entries.get(*at).map(|e| (i, e)))
            .max_by_key(|(_, e)| (e.at_ms, e.branch, e.seq));
        let Some((i, e)) = newest else { break };
        out.push(e.clone());
        heads[i].1 += 1;
    }
    let mut next: NetworkCursor = Vec::new();
    let mut more = false;
    for (p, taken) in &heads {
        let place = if *taken == p.entries.len() && p.next_before.is_none() {
            Some(0)
        } else {
            match taken.checked_sub(1) {
                Some(last) => Some(p.entries[last].seq),
                None => before_of(prior, p.branch),
            }
        };
        more |= place != Some(0);
        next.extend(place.map(|seq| (p.branch, seq)));
    }
    // A branch that did not answer may have more, and keeps its place; one that was
    // not asked (it had no more) stays at its end.
    more |= !unreachable.is_empty();
    for &(b, seq) in prior {
        if before_of(&next, b).is_none() {
            next.push((b, seq));
        }
    }
    next.sort();
    (out, more.then_some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::teller::EntryKind;
    use wire::{AccountNumber, Amount, TransferId};

    fn entry(branch: u16, seq: u64, at_ms: u64) -> EntryView {
        EntryView {
            branch: BranchId(branch),
            seq,
            account: AccountNumber::new(BranchId(branch), 1).expect("account"),
            kind: EntryKind::Deposit,
            counterparty: None,
            amount: Amount::from_minor(1).expect("amount"),
            balance_after: Amount::from_minor(1).expect("amount"),
            transfer_id: TransferId(u128::from(seq)),
            at_ms,
        }
    }

    /// Branch `b`'s whole ledger: seqs `1..=n`, with the times `at(seq)`.
    fn ledger(b: u16, n: u64, at: impl Fn(u64) -> u64) -> Vec<EntryView> {
        (1..=n).rev().map(|seq| entry(b, seq, at(seq))).collect()
    }

    /// What a branch answers for a page before `before` of `limit` entries.
    fn page(all: &[EntryView], before: Option<u64>, limit: usize) -> BranchPage {
        let mut rest = all.iter().filter(|e| before.is_none_or(|b| e.seq < b));
        let entries: Vec<EntryView> = rest.by_ref().take(limit).cloned().collect();
        let next_before = match rest.next() {
            Some(_) => entries.last().map(|e| e.seq),
            None => None,
        };
        BranchPage {
            branch: all[0].branch,
            entries,
            next_before,
        }
    }

    /// Pages through `ledgers` with the cursor until it ends: every entry once.
    fn every_page(ledgers: &[Vec<EntryView>], limit: usize) -> Vec<(u16, u64)> {
        let mut cursor: NetworkCursor = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..100 {
            let pages = ledgers
                .iter()
                .filter(|l| before_of(&cursor, l[0].branch) != Some(0))
                .map(|l| page(l, before_of(&cursor, l[0].branch), limit))
                .collect();
            let (entries, next) = merge(pages, &cursor, &[], limit);
            assert!(entries.len() <= limit);
            seen.extend(entries.iter().map(|e| (e.branch.0, e.seq)));
            match next {
                Some(c) => cursor = c,
                None => return seen,
            }
        }
        panic!("the pages never ended");
    }

    #[test]
    fn pages_show_every_entry_once_newest_first() {
        let ledgers = [
            ledger(1, 23, |s| s * 10),
            ledger(2, 7, |s| s * 31),
            ledger(3, 12, |s| 1_000 + s),
        ];
        let seen = every_page(&ledgers, 5);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!((seen.len(), sorted.len()), (42, 42), "each entry once");
        let first = &every_page(&ledgers, 50)[..5];
        assert_eq!(first, &[(3, 12), (3, 11), (3, 10), (3, 9), (3, 8)]);
    }

    #[test]
    fn clocks_out_of_order_skip_nothing() {
        // Branch 2's times run backwards against its seq: still every entry once.
        let ledgers = [ledger(1, 9, |s| s * 5), ledger(2, 9, |s| 100 - s)];
        let seen = every_page(&ledgers, 4);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!((seen.len(), sorted.len()), (18, 18));
    }

    #[test]
    fn an_unreachable_branch_keeps_its_place_and_an_empty_network_ends() {
        let prior = vec![(BranchId(2), 40)];
        let pages = vec![page(&ledger(1, 3, |s| s), None, 10)];
        let (entries, next) = merge(pages, &prior, &[BranchId(2)], 10);
        assert_eq!(entries.len(), 3);
        assert_eq!(next, Some(vec![(BranchId(1), 0), (BranchId(2), 40)]));
        let (entries, next) = merge(Vec::new(), &Vec::new(), &[], 10);
        assert!(entries.is_empty() && next.is_none());
    }
}
