//! Ledger listings: this branch's transactions, and the whole network's, merged.

use futures::future::join_all;
use wire::BranchId;
use wire::link::{ForwardRequest, LinkResponse};
use wire::teller::{
    EntryFilter, EntryView, NetworkCursor, PageRequest, TellerResponse, Unavailable,
};

use super::{Answer, Fail, Service, store_failed};
use crate::node::listing;
use crate::store::bank;

impl Service {
    pub(super) async fn local_transactions(
        &self,
        page: PageRequest,
        filter: EntryFilter,
    ) -> Result<(Vec<EntryView>, Option<u64>), Fail> {
        self.reader
            .read(move |c, me| bank::history(c, me, filter, page))
            .await
            .map_err(store_failed)
    }

    /// A page of this branch's ledger.
    pub(super) async fn branch_transactions(
        &self,
        page: PageRequest,
        filter: EntryFilter,
    ) -> Answer {
        let (entries, next_before) = self.local_transactions(page, filter).await?;
        Ok(TellerResponse::Entries {
            entries,
            next_before,
            next_network: None,
            unreachable: Vec::new(),
        })
    }

    /// One branch's page of a network listing: this branch's own, or another's by a
    /// forward.
    pub(super) async fn branch_page(
        &self,
        b: BranchId,
        page: PageRequest,
        filter: EntryFilter,
    ) -> Result<(Vec<EntryView>, Option<u64>), Fail> {
        if b == self.me {
            return self.local_transactions(page, filter).await;
        }
        match self
            .link(b, ForwardRequest::Transactions { page, filter })
            .await?
        {
            LinkResponse::Entries {
                entries,
                next_before,
            } => Ok((entries, next_before)),
            _ => Err(Fail::Unavailable(Unavailable::NoAnswer(b))),
        }
    }

    /// A page of every branch's ledger merged newest first, going on from `cursor`
    /// (see [`listing::merge`]); a branch with no more is not asked, and one that does
    /// not answer is named, not fatal.
    pub(super) async fn network_transactions(
        &self,
        page: PageRequest,
        filter: EntryFilter,
        cursor: NetworkCursor,
    ) -> Answer {
        let asked: Vec<BranchId> = self
            .network
            .branches()
            .map(|b| b.id)
            .filter(|&b| listing::before_of(&cursor, b) != Some(0))
            .collect();
        let page_of = |b| PageRequest {
            before: listing::before_of(&cursor, b),
            limit: page.limit,
        };
        let asks = asked
            .iter()
            .map(|&b| self.branch_page(b, page_of(b), filter));
        let (mut pages, mut unreachable) = (Vec::new(), Vec::new());
        for (answer, &branch) in join_all(asks).await.into_iter().zip(&asked) {
            match answer {
                Ok((entries, next_before)) => pages.push(listing::BranchPage {
                    branch,
                    entries,
                    next_before,
                }),
                Err(Fail::Unavailable(_)) => unreachable.push(branch),
                Err(e) => return Err(e),
            }
        }
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let (entries, next_network) = listing::merge(pages, &cursor, &unreachable, limit);
        Ok(TellerResponse::Entries {
            entries,
            next_before: None,
            next_network,
            unreachable,
        })
    }
}
