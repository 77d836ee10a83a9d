//! A hand-made rogue peer against a real branch node: forged signatures, unknown
//! signers, a signer that is not the connected peer, an unlisted peer, replays, stale
//! and misaddressed messages, malformed and oversized bytes. Each is refused (or, for a
//! replay, answered from the records) and the branch's store is left unchanged. And a
//! forwarded teller request that arrives after its expiry is not acted on.

use std::time::Duration;

use branch_node::init::read_key;

/// The epoch of a branch never restored: what the impersonated branch's envelopes carry.
const FIRST_EPOCH: u64 = 1;
use client::LINK_PROTOCOL;
use client::network_file::NetworkFile;
use client::peer::PeerClient;
use libp2p::StreamProtocol;
use scenarios::check;
use scenarios::cluster::Cluster;
use scenarios::rogue::{envelope, prepare};
use wire::limits::SEAL_HORIZON_MS;
use wire::link::{EnvelopeRefusal, LinkRequest, LinkResponse};
use wire::login_box::{LoginSecret, SealedSecret};
use wire::seal::Seal;
use wire::teller::{TellerOp, TellerRequest, TellerResponse, Unavailable};
use wire::twopc::{BranchBody, BranchMessage, Bundle, TransferSpec};
use wire::{AccountNumber, Amount, BranchId, BranchKey, TransferId};

mod common;

type Link = PeerClient<LinkRequest, LinkResponse>;

fn now_ms() -> u64 {
    branch_node::node::now_ms()
}

async fn link(c: &Cluster, as_key: &BranchKey) -> Link {
    connect(c, as_key, LINK_PROTOCOL).await
}

/// A connection on the forward protocol, the one teller requests passed on travel by.
async fn forward_link(c: &Cluster, as_key: &BranchKey) -> Link {
    connect(c, as_key, client::FORWARD_PROTOCOL).await
}

async fn connect(c: &Cluster, as_key: &BranchKey, protocol: StreamProtocol) -> Link {
    let t = c.target(0).expect("target");
    PeerClient::connect(
        as_key.libp2p_keypair(),
        protocol,
        t.addr,
        t.peer,
        Duration::from_secs(5),
    )
    .await
    .expect("connect")
}

/// Signs `message` as `signer` with `key`, sends it over `conn` and returns the answer.
async fn send_signed(
    conn: &Link,
    key: &BranchKey,
    signer: BranchId,
    message: &BranchMessage,
) -> LinkResponse {
    let bytes = envelope(key, signer, message).expect("sign");
    conn.request(LinkRequest::two_pc(FIRST_EPOCH, bytes))
        .await
        .expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_peer_messages_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(dir.path(), 3, &[]).expect("cluster");
    let network = NetworkFile::load(&c.network_file).expect("network");
    // An account at b1 with money in it, the target of the rogue prepares.
    let from = c
        .open_account(0, "R1", "rogue-password", false)
        .await
        .expect("open");
    let admin = c.admin(0).await.expect("admin");
    let id = teller_cli::new_transfer_id();
    admin
        .call(TellerOp::Deposit {
            id,
            account: from,
            amount: Amount::from_minor(10_000).expect("amount"),
        })
        .await
        .expect("deposit");
    // b3 goes down; the rogue holds its key (a stolen or replaying branch identity).
    c.kill(2);
    let b2_key = read_key(&c.nodes[1].dir).expect("key");
    let b3_key = read_key(&c.nodes[2].dir).expect("key");
    let stranger = BranchKey::from_secret([7; 32]);
    let to = AccountNumber::new(BranchId(2), 1).expect("account");
    let spec = TransferSpec {
        id: TransferId(0xbad),
        from,
        to,
        amount: Amount::from_minor(500).expect("amount"),
    };
    // Its deadline is near, so b1 asks b3 for the outcome soon after.
    let fresh = prepare(BranchId(1), now_ms() + 60_000, spec, now_ms() + 3_000);
    let before = check::audit_all(&c.databases()[..1])
        .expect("audit")
        .remove(0);

    // An unlisted peer may not speak the link protocol at all.
    let rogue = link(&c, &stranger).await;
    assert_eq!(
        send_signed(&rogue, &stranger, BranchId(3), &fresh).await,
        LinkResponse::Refused(EnvelopeRefusal::PeerNotListed)
    );
    // Connected as b3 from here on.
    let as_b3 = link(&c, &b3_key).await;
    let elsewhere = prepare(BranchId(2), now_ms() + 60_000, spec, now_ms() + 60_000);
    let old = prepare(BranchId(1), now_ms() - 1, spec, now_ms() + 60_000);
    let cases = [
        // Forged: claims b3 but signed with another key.
        (
            &stranger,
            BranchId(3),
            &fresh,
            EnvelopeRefusal::BadSignature,
        ),
        // Unknown signer.
        (
            &stranger,
            BranchId(77),
            &fresh,
            EnvelopeRefusal::UnknownSigner(BranchId(77)),
        ),
        // Genuinely signed by b2, but sent over b3's connection.
        (
            &b2_key,
            BranchId(2),
            &fresh,
            EnvelopeRefusal::SignerNotPeer(BranchId(2)),
        ),
        // Addressed to another branch.
        (
            &b3_key,
            BranchId(3),
            &elsewhere,
            EnvelopeRefusal::WrongRecipient,
        ),
        // An expired envelope.
        (&b3_key, BranchId(3), &old, EnvelopeRefusal::Expired),
    ];
    for (key, signer, message, want) in cases {
        assert_eq!(
            send_signed(&as_b3, key, signer, message).await,
            LinkResponse::Refused(want)
        );
    }
    // Malformed envelope bytes.
    let malformed = || async {
        as_b3
            .request(LinkRequest::two_pc(FIRST_EPOCH, vec![0xff; 40]))
            .await
            .expect("answer")
    };
    assert_eq!(
        malformed().await,
        LinkResponse::Refused(EnvelopeRefusal::Malformed)
    );
    // Oversized bytes on the wire: the node drops the stream and keeps serving.
    let t = c.target(0).expect("target");
    let raw: Link = PeerClient::connect(
        b3_key.libp2p_keypair(),
        LINK_PROTOCOL,
        t.addr.clone(),
        t.peer,
        Duration::from_secs(5),
    )
    .await
    .expect("connect");
    // No answer comes back for either: an error, or a stream closed with no bytes.
    let no_answer = |r: Result<Vec<u8>, _>| r.map_or(true, |v| v.is_empty());
    assert!(no_answer(
        raw.request_raw(vec![0; wire::limits::MESSAGE_BYTES_MAX + 10])
            .await
    ));
    assert!(
        no_answer(raw.request_raw(b"garbage".to_vec()).await),
        "undecodable link request"
    );
    assert_eq!(
        malformed().await,
        LinkResponse::Refused(EnvelopeRefusal::Malformed),
        "still serving after the oversized and undecodable requests"
    );
    let after = check::audit_all(&c.databases()[..1])
        .expect("audit")
        .remove(0);
    assert_eq!(
        (after.balance_total, after.held_total, after.in_doubt.len()),
        (before.balance_total, before.held_total, 0)
    );

    // A validly signed prepare that debits an account here: only this branch may
    // coordinate a debit of its own accounts, so it is refused whole.
    assert_eq!(
        send_signed(&as_b3, &b3_key, BranchId(3), &fresh).await,
        LinkResponse::Refused(EnvelopeRefusal::RemoteDebit)
    );
    // The same prepare bundled with another kind in one envelope: refused all the same.
    let mut hidden = fresh.clone();
    hidden.body.merge(BranchBody::Acks(vec![TransferId(0xacc)]));
    assert!(matches!(hidden.body, BranchBody::Several(_)));
    assert_eq!(
        send_signed(&as_b3, &b3_key, BranchId(3), &hidden).await,
        LinkResponse::Refused(EnvelopeRefusal::RemoteDebit)
    );
    // A bundle of one kind is not the canonical form of anything: refused.
    let lone = BranchMessage {
        body: BranchBody::Several(Bundle {
            acks: vec![TransferId(0xacc)],
            ..Bundle::default()
        }),
        ..fresh.clone()
    };
    assert_eq!(
        send_signed(&as_b3, &b3_key, BranchId(3), &lone).await,
        LinkResponse::Refused(EnvelopeRefusal::BadBatch)
    );
    // From here on the rogue's prepares credit b1's account, as an honest b3 would.
    let spec = TransferSpec {
        from: AccountNumber::new(BranchId(3), 1).expect("account"),
        to: from,
        ..spec
    };
    let fresh = prepare(BranchId(1), now_ms() + 60_000, spec, now_ms() + 3_000);
    // A stale prepare (its deadline passed) in a valid envelope: voted no, nothing held.
    let stale_spec = TransferSpec {
        id: TransferId(0x57a1e),
        ..spec
    };
    let stale = prepare(BranchId(1), now_ms() + 60_000, stale_spec, now_ms() - 1);
    assert_eq!(
        send_signed(&as_b3, &b3_key, BranchId(3), &stale).await,
        LinkResponse::Accepted
    );
    // A valid prepare, then the same envelope replayed: promised once, not twice.
    let bytes = envelope(&b3_key, BranchId(3), &fresh).expect("sign");
    for _ in 0..3 {
        assert_eq!(
            as_b3
                .request(LinkRequest::two_pc(FIRST_EPOCH, bytes.clone()))
                .await
                .expect("answer"),
            LinkResponse::Accepted
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let held = loop {
        let a = check::audit_all(&c.databases()[..1])
            .expect("audit")
            .remove(0);
        if a.pending_credit_total > 0 || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (held.pending_credit_total, held.held_total),
        (500, 0),
        "the replay promised the money once"
    );
    assert_eq!(
        held.in_doubt,
        vec![spec.id],
        "the stale prepare was refused, the valid one is in doubt"
    );
    assert_eq!(held.balance_total, before.balance_total);

    // The rogue leaves (its connections were b1's only route to "b3"), and b3 comes back
    // with no record of the transfer: presumed abort releases the hold.
    drop((as_b3, raw, rogue));
    c.start_node(2, &[]).expect("restart b3");
    let settled = check::wait_settled(&c.databases(), Duration::from_secs(30)).expect("audit");
    assert!(settled.is_some(), "the rogue prepare was not resolved");
    c.stop();
    let report = check::check(
        &network,
        &check::audit_all(&c.databases()).expect("audit"),
        &Default::default(),
    );
    assert!(report.ok(), "{:#?}", report.violations);
    assert_eq!(report.network_total, 10_000);
}

/// A forwarded teller request that reaches its branch after its expiry (the forwarding
/// branch has told its teller "no answer" by then) is not acted on; the same request
/// in time is. Sent by a listed branch (b2) to b1, for a customer of b1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_arrives_after_its_expiry_is_not_acted_on() {
    use wire::link::ForwardRequest;
    use wire::teller::TransferState;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let account = c
        .open_account(0, "LATE", "late-password", false)
        .await
        .expect("open");
    let admin = c.admin(0).await.expect("admin");
    let b2_key = read_key(&c.nodes[1].dir).expect("key");
    // On the 2PC protocol a forward is refused: each kind has its own protocol.
    let wrong_protocol = link(&c, &b2_key)
        .await
        .request(LinkRequest::Forward(ForwardRequest::Outcome {
            id: TransferId(1),
        }))
        .await
        .expect("answer");
    assert_eq!(
        wrong_protocol,
        LinkResponse::Refused(EnvelopeRefusal::Malformed)
    );
    let as_b2 = forward_link(&c, &b2_key).await;
    let teller_key = BranchKey::from_secret(rand::random());
    let teller = teller_key.peer_id().to_bytes();
    let forward = |request: TellerRequest, expires_at_ms: u64| {
        LinkRequest::Forward(ForwardRequest::Teller {
            teller: teller.clone(),
            request,
            expires_at_ms,
        })
    };
    let login = TellerRequest::new(
        None,
        TellerOp::Login {
            user: account.to_string(),
            password: "late-password".into(),
            otp: None,
        },
    );
    let stale = |r| {
        r == LinkResponse::Teller(TellerResponse::Unavailable(Unavailable::NoAnswer(
            BranchId(1),
        )))
    };
    let late = as_b2
        .request(forward(login.clone(), now_ms() - 1))
        .await
        .expect("answer");
    assert!(stale(late.clone()), "{late:?}");
    let LinkResponse::Teller(TellerResponse::LoggedIn { session, .. }) = as_b2
        .request(forward(login, now_ms() + 5_000))
        .await
        .expect("answer")
    else {
        panic!("a forward in time logs in")
    };
    let deposit = |id| {
        let op = TellerOp::Deposit {
            id,
            account,
            amount: Amount::from_minor(700).expect("amount"),
        };
        let mut r = TellerRequest::new(Some(session), op);
        let seal = (BranchId(1), rand::random(), now_ms() + SEAL_HORIZON_MS);
        r.seal = Some(Seal::make(&teller_key, seal, r.session, &r.op).expect("seal"));
        r
    };
    let id = teller_cli::new_transfer_id();
    // "As if the teller were connected here" is taken only from this branch's own
    // replicas: another branch gets a refusal, and nothing is done.
    let as_replica = LinkRequest::Forward(ForwardRequest::Replica {
        teller: teller.clone(),
        request: deposit(id),
        expires_at_ms: now_ms() + 5_000,
    });
    let r = as_b2.request(as_replica).await.expect("answer");
    assert_eq!(r, LinkResponse::ForwardRefused(wire::Refusal::Unauthorized));
    let late = as_b2
        .request(forward(deposit(id), now_ms() - 1))
        .await
        .expect("answer");
    assert!(stale(late.clone()), "{late:?}");
    assert_unknown_and_balance(&admin, id, account, 0).await;
    let r = as_b2
        .request(forward(deposit(id), now_ms() + 5_000))
        .await
        .expect("answer");
    assert_eq!(
        r,
        LinkResponse::Teller(TellerResponse::Receipt {
            id,
            state: TransferState::Committed
        })
    );
}

/// A listed branch that passes a teller's requests on cannot make, change or repeat
/// one: it knows the teller's PeerId and session token, but a request runs at the
/// issuing branch only under the teller's own seal. (Before seals, branch 2's key and a
/// b1 customer's PeerId and token moved her money.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_branch_cannot_make_change_or_repeat_a_tellers_request() {
    use wire::link::ForwardRequest;
    use wire::teller::TransferState;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 2, &[]).expect("cluster");
    let mut c = c;
    let (account, payee, funded) = tests::funded_pair(&c, "SEAL", "seal-password", 50_000).await;
    let admin = c.admin(0).await.expect("admin");
    // The customer logs in at b2 with her own key: b2 passes the login on to b1.
    let key = BranchKey::from_secret(rand::random());
    let target = c.target(1).expect("target");
    let mut customer = teller_cli::Teller::connect_with_key(&target, &key)
        .await
        .expect("connect");
    customer
        .login(&account.to_string(), "seal-password")
        .await
        .expect("login");
    let session = customer.session().expect("session");
    let as_b2 = forward_link(&c, &read_key(&c.nodes[1].dir).expect("key")).await;
    let as_her = |request: TellerRequest| {
        let forward = ForwardRequest::Teller {
            teller: key.peer_id().to_bytes(),
            request,
            expires_at_ms: now_ms() + 5_000,
        };
        as_b2.request(LinkRequest::Forward(forward))
    };
    let bad_seal = LinkResponse::Teller(TellerResponse::Refused(wire::Refusal::BadSeal));
    let amount = Amount::from_minor(12_345).expect("amount");
    let transfer = |id| {
        TellerOp::Transfer(TransferSpec {
            id,
            from: account,
            to: payee,
            amount,
        })
    };
    // Made up by b2: her token and PeerId, no seal, or b2's own seal.
    let id = teller_cli::new_transfer_id();
    let unsealed = TellerRequest::new(Some(session), transfer(id));
    assert_eq!(as_her(unsealed.clone()).await.expect("answer"), bad_seal);
    let mut b2_sealed = unsealed.clone();
    let b2 = read_key(&c.nodes[1].dir).expect("key");
    let seal = (BranchId(1), 1, now_ms() + SEAL_HORIZON_MS);
    b2_sealed.seal = Some(Seal::make(&b2, seal, b2_sealed.session, &b2_sealed.op).expect("seal"));
    assert_eq!(as_her(b2_sealed).await.expect("answer"), bad_seal);
    // Changed by b2: her sealed request with another payee or amount.
    let mut sealed = unsealed;
    sealed.seal = Some(Seal::make(&key, seal, sealed.session, &sealed.op).expect("seal"));
    let mut changed = sealed.clone();
    changed.op = TellerOp::Transfer(TransferSpec {
        id,
        from: account,
        to: account,
        amount,
    });
    assert_eq!(as_her(changed).await.expect("answer"), bad_seal);
    assert_unknown_and_balance(&admin, id, account, 50_000).await;
    // Her own request, passed on as it is, runs once; b2 cannot send it again.
    let committed = LinkResponse::Teller(TellerResponse::Receipt {
        id,
        state: TransferState::Committed,
    });
    assert_eq!(as_her(sealed.clone()).await.expect("answer"), committed);
    assert_eq!(as_her(sealed).await.expect("answer"), bad_seal);
    // Her login went to b1 sealed to b1's key and bound to her PeerId: b2, holding such
    // a login, cannot read the password nor log in with it as another teller.
    let secret = SealedSecret::seal(
        &LoginSecret {
            password: "seal-password".into(),
            otp: None,
        },
        (&key.peer_id(), &account.to_string(), BranchId(1)),
        &[read_key(&c.nodes[0].dir).expect("key").public()],
        rand::random(),
    );
    let login = TellerOp::SealedLogin {
        user: account.to_string(),
        secret,
    };
    let as_b2_itself = ForwardRequest::Teller {
        teller: b2.peer_id().to_bytes(),
        request: TellerRequest::new(None, login.clone()),
        expires_at_ms: now_ms() + 5_000,
    };
    let r = as_b2.request(LinkRequest::Forward(as_b2_itself)).await;
    let refused = LinkResponse::Teller(TellerResponse::Refused(wire::Refusal::BadCredentials));
    assert_eq!(r.expect("answer"), refused);
    let r = as_her(TellerRequest::new(None, login))
        .await
        .expect("answer");
    assert!(
        matches!(r, LinkResponse::Teller(TellerResponse::LoggedIn { .. })),
        "{r:?}"
    );
    // Her teller's own requests through b2 carry her seal and run.
    let second = teller_cli::new_transfer_id();
    let r = customer.call(transfer(second)).await.expect("transfer");
    tests::assert_committed(&r);
    assert_unknown_and_balance(&admin, TransferId(1), account, 50_000 - 2 * 12_345).await;
    let committed = [funded, id, second].into_iter().collect();
    let report = check::finish(&mut c, &committed, Duration::from_secs(20)).expect("finish");
    assert!(report.ok(), "{report:?}");
}

/// Branch 1 has no record of `id`, and `account` holds `minor`.
async fn assert_unknown_and_balance(
    admin: &teller_cli::Teller,
    id: TransferId,
    account: AccountNumber,
    minor: i64,
) {
    let r = admin
        .call(TellerOp::TransferStatus { id })
        .await
        .expect("status");
    assert_eq!(
        r,
        TellerResponse::Status {
            id,
            state: wire::teller::TransferState::Unknown
        },
        "no record of it"
    );
    let r = admin
        .call(TellerOp::Balance { account })
        .await
        .expect("balance");
    assert!(
        matches!(&r, TellerResponse::Account(a) if a.balance.minor() == minor),
        "{r:?}"
    );
}

/// A teller-protocol client with a fresh key on `c`'s first branch.
async fn teller_stream(c: &Cluster) -> PeerClient<TellerRequest, TellerResponse> {
    tests::teller_stranger(c, rand::random()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_answers_out_of_order_and_a_peer_gets_a_bounded_number_of_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path(), 1, &["--metrics-listen", "127.0.0.1:0"]).expect("cluster");
    let metrics = c.nodes[0].metrics_url.clone().expect("a metrics address");
    let refused_count = |why: &str| {
        let metrics = metrics.clone();
        let series = format!("bankmate_streams_refused_total{{kind=\"{why}\"}}");
        async move { common::sample(&common::fetch(&metrics).await.1, &series) }
    };
    let teller = teller_stream(&c).await;
    let no_session = |op| TellerRequest::new(None, op);
    let account = AccountNumber::new(BranchId(1), 1).expect("account");
    let quick = no_session(TellerOp::Balance { account });
    let expired = TellerResponse::Unavailable(Unavailable::SessionExpired);

    // Pipelined: a password check (argon2, tens of ms) sent first does not hold up a
    // quick answer sent after it on the same stream.
    let started = std::time::Instant::now();
    let slow = async {
        let login = TellerOp::Login {
            user: "admin".into(),
            password: "not-the-password".into(),
            otp: None,
        };
        let r = teller.request(no_session(login)).await.expect("answer");
        (r, started.elapsed())
    };
    let fast = async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let r = teller.request(quick.clone()).await.expect("answer");
        (r, started.elapsed())
    };
    let ((login, slow_at), (balance, fast_at)) = tokio::join!(slow, fast);
    assert!(matches!(login, TellerResponse::Refused(_)), "{login:?}");
    assert_eq!(balance, expired);
    assert!(
        fast_at < slow_at,
        "answered in order: {fast_at:?} vs {slow_at:?}"
    );

    // Eight streams of one protocol per peer; a ninth is closed at once, before its
    // hello, so the teller knows its request was never sent.
    let mut streams = vec![teller.clone()];
    for _ in 1..branch_node::p2p::STREAMS_PER_PEER_MAX {
        streams.push(teller.another_stream());
    }
    for s in &streams {
        assert_eq!(s.request(quick.clone()).await.expect("answer"), expired);
    }
    let ninth = teller.another_stream();
    let refused = ninth
        .request(quick.clone())
        .await
        .expect_err("over the limit");
    assert!(!refused.may_have_arrived(), "{refused}");
    // The teller opened it again, as it does for a stream dropped on arrival.
    let attempts = f64::from(client::pipe::OPEN_ATTEMPTS_MAX);
    assert_eq!(refused_count("peer_limit").await, attempts);
    // One closed (all its clients gone) makes room for another.
    streams.truncate(streams.len() - 1);
    let tenth = teller.another_stream();
    let mut answered = false;
    for _ in 0..100 {
        if tenth.request(quick.clone()).await.ok() == Some(expired.clone()) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "a stream slot freed when a stream closed");
    assert_eq!(
        streams[0].request(quick.clone()).await.expect("answer"),
        expired
    );

    // A body that does not decode ends its stream (and only it), counted.
    let garbage = teller_stream(&c).await;
    let broken = garbage.request_raw(vec![0xff; 16]).await;
    assert!(broken.is_err(), "an undecodable request is not answered");
    assert_eq!(refused_count("framing").await, 1.0);
    assert_eq!(
        teller.request(quick.clone()).await.expect("answer"),
        expired
    );

    // Many tellers opening streams at the same moment: the node's accept queue drops
    // some streams on arrival, and every teller still gets its answer, because a
    // requester sends nothing before the node's hello and opens another stream.
    // (Without the hello, about one wave in three lost an answer.)
    for _wave in 0..4 {
        let many = (0..48).map(|_| {
            let quick = quick.clone();
            let c = &c;
            async move {
                let t = teller_stream(c).await;
                t.request(quick).await
            }
        });
        for answer in futures::future::join_all(many).await {
            assert_eq!(answer.expect("answered"), expired);
        }
    }
}
