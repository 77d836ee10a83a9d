//! A rogue peer for scenario runs: against a running branch it sends link messages from
//! an unlisted key, forged signatures, unknown signers, a signer that is not the
//! connection, misaddressed, expired and malformed envelopes, and one validly signed
//! prepare (a stolen key of a branch that is down) replayed several times. Every answer
//! is compared with what an honest branch must say.

use std::time::Duration;

use branch_node::init::read_key;
use client::LINK_PROTOCOL;
use client::peer::PeerClient;
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::twopc::{BranchBody, BranchMessage, PrepareItem, TransferSpec};
use wire::{AccountNumber, Amount, BranchId, BranchKey, Signed, TransferId};

use teller_cli::Target;

use crate::cluster::Cluster;

type Link = PeerClient<LinkRequest, LinkResponse>;

/// How long the rogue's envelopes are valid for.
const ENVELOPE_TTL_MS: u64 = 60_000;
/// The valid prepare's deadline: near, so the target soon asks the absent coordinator.
const PREPARE_DEADLINE_MS: u64 = 3_000;

/// How many replays of the one valid prepare are sent.
pub const REPLAYS: usize = 3;

/// `m` signed by `key` as branch `signer`, encoded as it travels.
pub fn envelope(key: &BranchKey, signer: BranchId, m: &BranchMessage) -> anyhow::Result<Vec<u8>> {
    Ok(wire::encode(&Signed::sign(key, signer, m)?)?)
}

/// A prepare of one transfer for branch `to`.
pub fn prepare(
    to: BranchId,
    expires_at_ms: u64,
    spec: TransferSpec,
    deadline_ms: u64,
) -> BranchMessage {
    BranchMessage {
        to,
        expires_at_ms,
        body: BranchBody::Prepare(vec![PrepareItem {
            transfer: spec,
            deadline_ms,
        }]),
    }
}

/// What the rogue knows of its victim: where it is, and the stolen key it uses.
#[derive(Debug)]
pub struct Setup {
    pub target: Target,
    /// The victim's branch id, the impersonated branch's id, and another branch if any.
    pub me: BranchId,
    pub other: BranchId,
    pub third: Option<BranchId>,
    pub stolen: BranchKey,
    /// The impersonated branch's epoch (its envelopes carry it; see the fence).
    pub epoch: u64,
}

impl Setup {
    /// The rogue against node `target` (index) with the key of node `impersonate`, which
    /// must be down so the rogue is the only peer with its identity.
    pub fn new(cluster: &Cluster, target: usize, impersonate: usize) -> anyhow::Result<Setup> {
        let me = cluster.nodes[target].id;
        let other = cluster.nodes[impersonate].id;
        Ok(Setup {
            target: cluster.target(target)?,
            me,
            other,
            third: cluster
                .nodes
                .iter()
                .map(|n| n.id)
                .find(|id| *id != me && *id != other),
            stolen: read_key(&cluster.nodes[impersonate].dir)?,
            epoch: branch_node::store::fence::epoch_of(
                &cluster.nodes[impersonate]
                    .dir
                    .join(branch_node::init::DB_FILE),
            )?,
        })
    }
}

/// Runs every attack; `from` is an account at the target. Returns one line per case
/// answered wrongly (empty when each was refused or answered as it must be).
pub async fn attack(setup: &Setup, from: AccountNumber) -> anyhow::Result<Vec<String>> {
    let Setup {
        target: t,
        me,
        other,
        third,
        stolen,
        epoch,
    } = setup;
    let (me, other, third) = (*me, *other, *third);
    let stranger = BranchKey::from_secret(rand::random());
    let now = branch_node::node::now_ms();
    let spec = TransferSpec {
        id: TransferId::from_random_bytes(rand::random()),
        from,
        to: AccountNumber::new(other, 1)?,
        amount: Amount::from_minor(100)?,
    };
    // Its deadline is near, so the target asks the (absent) coordinator soon after, and
    // presumed abort releases the hold once the real branch is back.
    let valid = prepare(me, now + ENVELOPE_TTL_MS, spec, now + PREPARE_DEADLINE_MS);
    // Only the debit account's branch coordinates: a prepare from another branch that
    // debits an account here is refused whole. The valid prepare credits one instead.
    let remote_debit = valid.clone();
    let credit = TransferSpec {
        from: spec.to,
        to: spec.from,
        ..spec
    };
    let valid = prepare(me, now + ENVELOPE_TTL_MS, credit, now + PREPARE_DEADLINE_MS);
    let connect = |key: &BranchKey| {
        PeerClient::<LinkRequest, LinkResponse>::connect(
            key.libp2p_keypair(),
            LINK_PROTOCOL,
            t.addr.clone(),
            t.peer,
            Duration::from_secs(5),
        )
    };
    let mut wrong = Vec::new();
    let check = |case: &str, got: Result<LinkResponse, _>, want: LinkResponse| match got {
        Ok(r) if r == want => None,
        other => Some(format!("rogue {case}: expected {want:?}, got {other:?}")),
    };
    let refused = LinkResponse::Refused;
    let outsider: Link = connect(&stranger).await?;
    wrong.extend(check(
        "unlisted peer",
        outsider
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(&stranger, other, &valid)?,
            ))
            .await,
        refused(EnvelopeRefusal::PeerNotListed),
    ));
    let as_other: Link = connect(stolen).await?;
    wrong.extend(check(
        "forged signature",
        as_other
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(&stranger, other, &valid)?,
            ))
            .await,
        refused(EnvelopeRefusal::BadSignature),
    ));
    wrong.extend(check(
        "unknown signer",
        as_other
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(&stranger, BranchId(999), &valid)?,
            ))
            .await,
        refused(EnvelopeRefusal::UnknownSigner(BranchId(999))),
    ));
    if let Some(third) = third {
        // Claims a third branch's identity over this connection: its signature cannot
        // verify (the rogue has no key of it), or if it did, the signer is not the peer.
        let got = as_other
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(&stranger, third, &valid)?,
            ))
            .await;
        if !matches!(
            got,
            Ok(LinkResponse::Refused(
                EnvelopeRefusal::BadSignature | EnvelopeRefusal::SignerNotPeer(_)
            ))
        ) {
            wrong.push(format!("rogue third-branch claim: got {got:?}"));
        }
    }
    let elsewhere = prepare(other, now + ENVELOPE_TTL_MS, spec, now + ENVELOPE_TTL_MS);
    wrong.extend(check(
        "misaddressed",
        as_other
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(stolen, other, &elsewhere)?,
            ))
            .await,
        refused(EnvelopeRefusal::WrongRecipient),
    ));
    let old = prepare(me, now.saturating_sub(1), spec, now + ENVELOPE_TTL_MS);
    wrong.extend(check(
        "expired",
        as_other
            .request(LinkRequest::two_pc(*epoch, envelope(stolen, other, &old)?))
            .await,
        refused(EnvelopeRefusal::Expired),
    ));
    wrong.extend(check(
        "malformed",
        as_other
            .request(LinkRequest::two_pc(*epoch, vec![0xff; 40]))
            .await,
        refused(EnvelopeRefusal::Malformed),
    ));
    wrong.extend(check(
        "remote debit",
        as_other
            .request(LinkRequest::two_pc(
                *epoch,
                envelope(stolen, other, &remote_debit)?,
            ))
            .await,
        refused(EnvelopeRefusal::RemoteDebit),
    ));
    // A valid prepare and its replays: every copy is accepted (answered from the records),
    // and the checker later proves nothing was held twice or left in doubt.
    let bytes = envelope(stolen, other, &valid)?;
    for n in 0..=REPLAYS {
        wrong.extend(check(
            &format!("replay {n}"),
            as_other
                .request(LinkRequest::two_pc(*epoch, bytes.clone()))
                .await,
            LinkResponse::Accepted,
        ));
    }
    Ok(wrong)
}
