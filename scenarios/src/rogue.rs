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
    let stranger = BranchKey::from_secret(rand::random());
    let now = branch_node::node::now_ms();
    let m = Messages::new(setup, from, now)?;
    let epoch = setup.epoch;
    let mut wrong = Vec::new();
    let outsider: Link = connect(setup, &stranger).await?;
    let bytes = envelope(&stranger, setup.other, &m.valid)?;
    let want = LinkResponse::Refused(EnvelopeRefusal::PeerNotListed);
    wrong.extend(check(
        "unlisted peer",
        send(&outsider, epoch, bytes).await,
        want,
    ));
    let as_other: Link = connect(setup, &setup.stolen).await?;
    for (case, bytes, refusal) in refused_cases(setup, &stranger, &m)? {
        let want = LinkResponse::Refused(refusal);
        wrong.extend(check(case, send(&as_other, epoch, bytes).await, want));
    }
    if let Some(third) = setup.third {
        // Claims a third branch's identity over this connection: its signature cannot
        // verify (the rogue has no key of it), or if it did, the signer is not the peer.
        let got = send(&as_other, epoch, envelope(&stranger, third, &m.valid)?).await;
        if !matches!(
            got,
            Ok(LinkResponse::Refused(
                EnvelopeRefusal::BadSignature | EnvelopeRefusal::SignerNotPeer(_)
            ))
        ) {
            wrong.push(format!("rogue third-branch claim: got {got:?}"));
        }
    }
    // A valid prepare and its replays: every copy is accepted (answered from the records),
    // and the checker later proves nothing was held twice or left in doubt.
    let bytes = envelope(&setup.stolen, setup.other, &m.valid)?;
    for n in 0..=REPLAYS {
        let got = send(&as_other, epoch, bytes.clone()).await;
        wrong.extend(check(&format!("replay {n}"), got, LinkResponse::Accepted));
    }
    Ok(wrong)
}

/// The prepares the rogue sends, each as the impersonated branch would word it.
struct Messages {
    /// A valid prepare that credits an account of the target: accepted.
    valid: BranchMessage,
    /// A prepare that debits an account of the target from another branch: refused,
    /// since only the debit account's branch coordinates.
    remote_debit: BranchMessage,
    /// Addressed to another branch than the target.
    elsewhere: BranchMessage,
    /// Expired before it is sent.
    old: BranchMessage,
}

impl Messages {
    fn new(setup: &Setup, from: AccountNumber, now: u64) -> anyhow::Result<Messages> {
        let spec = TransferSpec {
            id: TransferId::from_random_bytes(rand::random()),
            from,
            to: AccountNumber::new(setup.other, 1)?,
            amount: Amount::from_minor(100)?,
        };
        let credit = TransferSpec {
            from: spec.to,
            to: spec.from,
            ..spec
        };
        // Its deadline is near, so the target asks the (absent) coordinator soon after,
        // and presumed abort releases the hold once the real branch is back.
        let (ttl, deadline) = (now + ENVELOPE_TTL_MS, now + PREPARE_DEADLINE_MS);
        Ok(Messages {
            valid: prepare(setup.me, ttl, credit, deadline),
            remote_debit: prepare(setup.me, ttl, spec, deadline),
            elsewhere: prepare(setup.other, ttl, spec, ttl),
            old: prepare(setup.me, now.saturating_sub(1), spec, ttl),
        })
    }
}

/// Sends one 2PC envelope of `epoch` over `link`.
async fn send(
    link: &Link,
    epoch: u64,
    bytes: Vec<u8>,
) -> Result<LinkResponse, client::ClientError> {
    link.request(LinkRequest::two_pc(epoch, bytes)).await
}

/// Connects to the target with `key`, over the link protocol.
async fn connect(setup: &Setup, key: &BranchKey) -> anyhow::Result<Link> {
    let t = &setup.target;
    let link = PeerClient::connect(
        key.libp2p_keypair(),
        LINK_PROTOCOL,
        t.addr.clone(),
        t.peer,
        Duration::from_secs(5),
    );
    Ok(link.await?)
}

/// `None` when `got` is what an honest branch answers; else what was wrong.
fn check<E: std::fmt::Debug>(
    case: &str,
    got: Result<LinkResponse, E>,
    want: LinkResponse,
) -> Option<String> {
    match got {
        Ok(r) if r == want => None,
        other => Some(format!("rogue {case}: expected {want:?}, got {other:?}")),
    }
}

/// What the rogue sends over the stolen identity's connection that must be refused,
/// and the refusal each must get.
fn refused_cases(
    setup: &Setup,
    stranger: &BranchKey,
    m: &Messages,
) -> anyhow::Result<Vec<(&'static str, Vec<u8>, EnvelopeRefusal)>> {
    let (other, stolen) = (setup.other, &setup.stolen);
    let unknown = BranchId(999);
    Ok(vec![
        (
            "forged signature",
            envelope(stranger, other, &m.valid)?,
            EnvelopeRefusal::BadSignature,
        ),
        (
            "unknown signer",
            envelope(stranger, unknown, &m.valid)?,
            EnvelopeRefusal::UnknownSigner(unknown),
        ),
        (
            "misaddressed",
            envelope(stolen, other, &m.elsewhere)?,
            EnvelopeRefusal::WrongRecipient,
        ),
        (
            "expired",
            envelope(stolen, other, &m.old)?,
            EnvelopeRefusal::Expired,
        ),
        ("malformed", vec![0xff; 40], EnvelopeRefusal::Malformed),
        (
            "remote debit",
            envelope(stolen, other, &m.remote_debit)?,
            EnvelopeRefusal::RemoteDebit,
        ),
    ])
}
