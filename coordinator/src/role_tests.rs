//! Data-driven tests of both roles: given these inputs, exactly these commands come out.

use std::collections::BTreeSet;
use std::sync::Arc;

use wire::teller::TransferState;
use wire::twopc::{
    BranchBody, DecisionItem, PrepareItem, StatusItem, TransferSpec, TransferStatus, Vote, VoteItem,
};
use wire::{AccountNumber, Amount, BranchId, Decision, Refusal, TransferId};

use crate::shard::{
    ApplyOutcome, ApplyRefusal, BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord,
    Evidence, InDoubtRecord,
};
use crate::{Branch, Command, Config, Input};

const B1: BranchId = BranchId(1);
const B2: BranchId = BranchId(2);
const B3: BranchId = BranchId(3);
const CONFIG: Config = Config {
    prepare_timeout_ms: 1_000,
    // Past the deadline: the exact-command tests below see no resent prepares; one
    // test of its own sets a shorter one.
    prepare_resend_ms: 2_000,
    decision_resend_ms: 100,
    status_query_delay_ms: 50,
    retry_backoff_max_ms: 400,
    in_flight_transfers_max: 4,
};
/// The prepare timeout, the deadline of a transfer begun at time 0.
const T: u64 = CONFIG.prepare_timeout_ms;

fn acct(b: BranchId, serial: u32) -> AccountNumber {
    AccountNumber::new(b, serial).expect("valid")
}

fn spec(id: u128, from: AccountNumber, to: AccountNumber, minor: i64) -> TransferSpec {
    TransferSpec {
        id: TransferId(id),
        from,
        to,
        amount: Amount::from_minor(minor).expect("non-negative"),
    }
}

/// Transfer 1: 60 from an account at branch 2 to one at branch 3.
fn cross() -> TransferSpec {
    spec(1, acct(B2, 1), acct(B3, 1), 60)
}

fn ev(tag: u8) -> Evidence {
    Some(Arc::from(vec![tag]))
}

fn branch(me: BranchId) -> Branch {
    Branch::new(me, BTreeSet::from([B1, B2, B3]), CONFIG)
}

fn msg(from: BranchId, body: BranchBody) -> Input {
    Input::Message {
        from,
        body,
        evidence: ev(u8::try_from(from.0).expect("small id")),
    }
}

fn send(to: BranchId, body: BranchBody) -> Command {
    Command::Send { to, body }
}

fn reply(ticket: u64, id: u128, state: TransferState) -> Command {
    Command::Reply {
        ticket,
        id: TransferId(id),
        state,
    }
}

fn prepare_item(s: TransferSpec, now: u64) -> PrepareItem {
    PrepareItem {
        transfer: s,
        deadline_ms: now + T,
    }
}

/// Feeds each `(now, input)` in turn and asserts the commands of each step.
fn check(b: &mut Branch, steps: Vec<(u64, Input, Vec<Command>)>) {
    for (i, (now, input, want)) in steps.into_iter().enumerate() {
        let mut out = Vec::new();
        let shown = format!("{input:?}");
        b.step(now, input, &mut out);
        assert_eq!(out, want, "step {i}: {shown}");
    }
}

/// Steps that take transfer 1 at coordinator branch 1 to "prepares sent".
fn started(b: &mut Branch) {
    let item = BeginItem {
        spec: cross(),
        deadline_ms: T,
    };
    let prep = BranchBody::Prepare(vec![prepare_item(cross(), 0)]);
    check(
        b,
        vec![
            (
                0,
                Input::Request(vec![(7, cross())]),
                vec![Command::Begin { items: vec![item] }],
            ),
            (
                1,
                Input::Begun {
                    items: vec![item],
                    outcomes: vec![BeginOutcome::New(None)],
                    evidence: None,
                },
                vec![send(B2, prep.clone()), send(B3, prep)],
            ),
        ],
    );
}

fn commit_record(votes: Vec<Evidence>) -> Command {
    Command::RecordDecisions {
        items: vec![DecisionRecord {
            id: TransferId(1),
            decision: Decision::Commit,
            reason: None,
            votes,
        }],
    }
}

fn abort_record(reason: Refusal) -> Command {
    Command::RecordDecisions {
        items: vec![DecisionRecord {
            id: TransferId(1),
            decision: Decision::Abort,
            reason: Some(reason),
            votes: vec![],
        }],
    }
}

fn votes(v: Vote) -> BranchBody {
    BranchBody::Votes(vec![VoteItem {
        id: TransferId(1),
        vote: v,
    }])
}

fn decisions(d: Decision) -> BranchBody {
    BranchBody::Decisions(vec![DecisionItem {
        id: TransferId(1),
        decision: d,
    }])
}

#[test]
fn coordinator_commits_after_all_yes_and_ends_after_all_acks() {
    let mut b = branch(B1);
    started(&mut b);
    check(
        &mut b,
        vec![
            (2, msg(B2, votes(Vote::Yes)), vec![]),
            (2, msg(B2, votes(Vote::Yes)), vec![]), // a duplicate vote changes nothing
            (3, msg(B1, votes(Vote::Yes)), vec![]), // not a participant: ignored
            (
                3,
                msg(B3, votes(Vote::Yes)),
                vec![commit_record(vec![ev(2), ev(3)])],
            ),
            (
                4,
                Input::DecisionsDurable {
                    ids: vec![TransferId(1)],
                },
                vec![
                    reply(7, 1, TransferState::Committed),
                    send(B2, decisions(Decision::Commit)),
                    send(B3, decisions(Decision::Commit)),
                ],
            ),
            (5, msg(B2, BranchBody::Acks(vec![TransferId(1)])), vec![]),
            (
                4 + 100,
                Input::Tick,
                vec![send(B3, decisions(Decision::Commit))],
            ), // only the unacked
            (
                4 + 100 + 200,
                Input::Tick,
                vec![send(B3, decisions(Decision::Commit))],
            ), // backoff doubled
            (
                400,
                msg(B3, BranchBody::Acks(vec![TransferId(1)])),
                vec![Command::MarkEnded {
                    ids: vec![TransferId(1)],
                }],
            ),
            (2_000, Input::Tick, vec![]),
        ],
    );
    assert_eq!(b.coordinator().in_flight(), 0);
}

#[test]
fn coordinator_settles_its_own_leg_with_its_begin_and_decision_records() {
    // Transfer 2: 60 from an account at branch 1 (the coordinator) to one at branch 2.
    let own = spec(2, acct(B1, 1), acct(B2, 1), 60);
    let item = BeginItem {
        spec: own,
        deadline_ms: T,
    };
    let mut b = branch(B1);
    let record = |votes| Command::RecordDecisions {
        items: vec![DecisionRecord {
            id: TransferId(2),
            decision: Decision::Commit,
            reason: None,
            votes,
        }],
    };
    let to_b2 = BranchBody::Prepare(vec![prepare_item(own, 0)]);
    let yes = BranchBody::Votes(vec![VoteItem {
        id: TransferId(2),
        vote: Vote::Yes,
    }]);
    check(
        &mut b,
        vec![
            (
                0,
                Input::Request(vec![(7, own)]),
                vec![Command::Begin { items: vec![item] }],
            ),
            (
                1,
                Input::Begun {
                    items: vec![item],
                    outcomes: vec![BeginOutcome::New(Some(Vote::Yes))],
                    evidence: ev(1),
                },
                vec![send(B2, to_b2)],
            ),
            // Its own signed vote is kept with the other's.
            (2, msg(B2, yes), vec![record(vec![ev(1), ev(2)])]),
            // Its own leg settled with the decision record: only branch 2 is told, and
            // its ack ends the transfer.
            (
                3,
                Input::DecisionsDurable {
                    ids: vec![TransferId(2)],
                },
                vec![
                    reply(7, 2, TransferState::Committed),
                    send(
                        B2,
                        BranchBody::Decisions(vec![DecisionItem {
                            id: TransferId(2),
                            decision: Decision::Commit,
                        }]),
                    ),
                ],
            ),
            (
                4,
                msg(B2, BranchBody::Acks(vec![TransferId(2)])),
                vec![Command::MarkEnded {
                    ids: vec![TransferId(2)],
                }],
            ),
        ],
    );
    assert_eq!(b.coordinator().in_flight(), 0);
    // Its own leg refused: aborted at once, no other branch hears of it.
    let mut b = branch(B1);
    check(
        &mut b,
        vec![
            (
                0,
                Input::Request(vec![(7, own)]),
                vec![Command::Begin { items: vec![item] }],
            ),
            (
                1,
                Input::Begun {
                    items: vec![item],
                    outcomes: vec![BeginOutcome::New(Some(Vote::No(
                        Refusal::InsufficientFunds,
                    )))],
                    evidence: None,
                },
                vec![Command::RecordDecisions {
                    items: vec![DecisionRecord {
                        id: TransferId(2),
                        decision: Decision::Abort,
                        reason: Some(Refusal::InsufficientFunds),
                        votes: vec![],
                    }],
                }],
            ),
            // Told, and ended: no decision goes to a branch that was never asked.
            (
                2,
                Input::DecisionsDurable {
                    ids: vec![TransferId(2)],
                },
                vec![
                    reply(7, 2, TransferState::Aborted(Refusal::InsufficientFunds)),
                    Command::MarkEnded {
                        ids: vec![TransferId(2)],
                    },
                ],
            ),
        ],
    );
    assert_eq!(b.coordinator().in_flight(), 0);
}

#[test]
fn several_kinds_in_one_envelope_act_as_each_kind_in_turn() {
    // Branch 1 coordinates transfer 1 and is asked by branch 2 about transfer 9, which
    // it never heard of; branch 2 votes on 1 and asks about 9 in one envelope.
    let mut bundled = branch(B1);
    started(&mut bundled);
    let mut apart = bundled.clone();
    let mut body = votes(Vote::Yes);
    body.merge(BranchBody::StatusQuery(vec![TransferId(9)]));
    let (mut one, mut two) = (Vec::new(), Vec::new());
    bundled.step(2, msg(B2, body), &mut one);
    apart.step(2, msg(B2, votes(Vote::Yes)), &mut two);
    apart.step(
        2,
        msg(B2, BranchBody::StatusQuery(vec![TransferId(9)])),
        &mut two,
    );
    assert_eq!(one, two);
    assert_eq!(bundled, apart);
    assert!(
        one.contains(&Command::ReadDecisions {
            asker: B2,
            ids: vec![TransferId(9)]
        }),
        "{one:?}"
    );
}

#[test]
fn coordinator_aborts_on_a_no_vote_or_the_deadline() {
    let mut b = branch(B1);
    started(&mut b);
    check(
        &mut b,
        vec![
            (
                2,
                msg(B2, votes(Vote::No(Refusal::InsufficientFunds))),
                vec![abort_record(Refusal::InsufficientFunds)],
            ),
            (3, msg(B3, votes(Vote::Yes)), vec![]), // already deciding
            (
                4,
                Input::DecisionsDurable {
                    ids: vec![TransferId(1)],
                },
                vec![
                    reply(7, 1, TransferState::Aborted(Refusal::InsufficientFunds)),
                    send(B2, decisions(Decision::Abort)),
                    send(B3, decisions(Decision::Abort)),
                ],
            ),
        ],
    );
    let mut b = branch(B1);
    started(&mut b);
    check(
        &mut b,
        vec![
            (2, msg(B2, votes(Vote::Yes)), vec![]),
            (T - 1, Input::Tick, vec![]),
            (T, Input::Tick, vec![abort_record(Refusal::NoVote)]),
            (T + 1, msg(B3, votes(Vote::Yes)), vec![]), // too late
        ],
    );
}

#[test]
fn coordinator_sends_prepares_again_to_the_silent_until_the_deadline() {
    let config = Config {
        prepare_resend_ms: 300,
        ..CONFIG
    };
    let mut b = Branch::new(B1, BTreeSet::from([B1, B2, B3]), config);
    started(&mut b);
    let again = || send(B3, BranchBody::Prepare(vec![prepare_item(cross(), 0)]));
    check(
        &mut b,
        vec![
            (2, msg(B2, votes(Vote::Yes)), vec![]),
            (299, Input::Tick, vec![]),
            // Only B3 has not voted: only B3 is asked again.
            (300, Input::Tick, vec![again()]),
            (599, Input::Tick, vec![]),
            (600, Input::Tick, vec![again()]),
            (900, Input::Tick, vec![again()]),
            // The deadline still holds.
            (T, Input::Tick, vec![abort_record(Refusal::NoVote)]),
        ],
    );
    // A vote that comes after a resend decides as any vote does.
    let mut b = Branch::new(B1, BTreeSet::from([B1, B2, B3]), config);
    started(&mut b);
    check(
        &mut b,
        vec![
            (2, msg(B2, votes(Vote::Yes)), vec![]),
            (300, Input::Tick, vec![again()]),
            (
                301,
                msg(B3, votes(Vote::Yes)),
                vec![commit_record(vec![ev(2), ev(3)])],
            ),
            (T, Input::Tick, vec![]),
        ],
    );
}

#[test]
fn coordinator_records_refusals_on_content_in_one_step() {
    // Refused by the one-step path, which records the refusal under the id: no 2PC.
    let mut b = branch(B1);
    let (a1, a2) = (acct(B1, 1), acct(B1, 2));
    let (stranger, remote) = (acct(BranchId(9), 1), acct(B2, 1));
    let local = |t, s| {
        vec![Command::TransferLocal {
            items: vec![(t, s)],
        }]
    };
    check(
        &mut b,
        vec![
            (
                0,
                Input::Request(vec![(1, spec(1, a1, a1, 5))]),
                local(1, spec(1, a1, a1, 5)),
            ),
            (
                0,
                Input::Request(vec![(2, spec(2, a1, remote, 0))]),
                local(2, spec(2, a1, remote, 0)),
            ),
            (
                0,
                Input::Request(vec![(3, spec(3, a1, stranger, 5))]),
                local(3, spec(3, a1, stranger, 5)),
            ),
            (
                0,
                Input::Request(vec![(4, spec(4, a1, a2, 5))]),
                vec![Command::TransferLocal {
                    items: vec![(4, spec(4, a1, a2, 5))],
                }],
            ),
        ],
    );
}

#[test]
fn coordinator_dedupes_requests_by_id() {
    let mut b = branch(B1);
    started(&mut b);
    let mut other = cross();
    other.amount = Amount::from_minor(61).expect("non-negative");
    check(
        &mut b,
        vec![
            (2, Input::Request(vec![(8, cross())]), vec![]), // waits with the first
            (
                2,
                Input::Request(vec![(9, other)]),
                vec![reply(9, 1, TransferState::Aborted(Refusal::IdConflict))],
            ),
            (3, msg(B2, votes(Vote::Yes)), vec![]),
            (
                3,
                msg(B3, votes(Vote::Yes)),
                vec![commit_record(vec![ev(2), ev(3)])],
            ),
            (
                4,
                Input::DecisionsDurable {
                    ids: vec![TransferId(1)],
                },
                vec![
                    reply(7, 1, TransferState::Committed),
                    reply(8, 1, TransferState::Committed),
                    send(B2, decisions(Decision::Commit)),
                    send(B3, decisions(Decision::Commit)),
                ],
            ),
            (
                5,
                Input::Request(vec![(10, cross())]),
                vec![reply(10, 1, TransferState::Committed)],
            ),
        ],
    );
    // Not in memory: the store says what happened before.
    let mut b = branch(B1);
    let item = BeginItem {
        spec: cross(),
        deadline_ms: T,
    };
    check(
        &mut b,
        vec![
            (
                0,
                Input::Request(vec![(1, cross())]),
                vec![Command::Begin { items: vec![item] }],
            ),
            (
                1,
                Input::Begun {
                    items: vec![item],
                    outcomes: vec![BeginOutcome::Existing(TransferState::Committed)],
                    evidence: None,
                },
                vec![reply(1, 1, TransferState::Committed)],
            ),
        ],
    );
    assert_eq!(b.coordinator().in_flight(), 0);
}

#[test]
fn coordinator_batches_per_participant_and_limits_in_flight() {
    let mut b = branch(B1);
    let specs: Vec<_> = (1..=5)
        .map(|i| spec(i, acct(B2, 1), acct(B3, 1), 10))
        .collect();
    let mut out = Vec::new();
    b.step(
        0,
        Input::Request(
            specs
                .iter()
                .enumerate()
                .map(|(t, s)| (t as u64, *s))
                .collect(),
        ),
        &mut out,
    );
    let begun: Vec<BeginItem> = specs[..4]
        .iter()
        .map(|s| BeginItem {
            spec: *s,
            deadline_ms: T,
        })
        .collect();
    assert_eq!(
        out,
        vec![
            reply(4, 5, TransferState::Unknown),
            Command::Begin {
                items: begun.clone()
            }
        ]
    );
    out.clear();
    b.step(
        1,
        Input::Begun {
            items: begun,
            outcomes: vec![BeginOutcome::New(None); 4],
            evidence: None,
        },
        &mut out,
    );
    let prep = BranchBody::Prepare(specs[..4].iter().map(|s| prepare_item(*s, 0)).collect());
    assert_eq!(
        out,
        vec![send(B2, prep.clone()), send(B3, prep)],
        "one batch per participant"
    );
}

#[test]
fn coordinator_answers_status_queries_only_with_durable_decisions() {
    let mut b = branch(B1);
    started(&mut b);
    let query = BranchBody::StatusQuery(vec![TransferId(1), TransferId(5)]);
    let answer = |id, status| StatusItem {
        id: TransferId(id),
        status,
    };
    check(
        &mut b,
        vec![
            (
                2,
                msg(B2, query.clone()),
                vec![
                    send(
                        B2,
                        BranchBody::StatusAnswer(vec![answer(1, TransferStatus::Pending)]),
                    ),
                    Command::ReadDecisions {
                        asker: B2,
                        ids: vec![TransferId(5)],
                    },
                ],
            ),
            (
                2,
                Input::DecisionsRead {
                    asker: B2,
                    items: vec![(TransferId(5), None)],
                },
                vec![send(
                    B2,
                    BranchBody::StatusAnswer(vec![answer(
                        5,
                        TransferStatus::Decided(Decision::Abort),
                    )]),
                )],
            ),
            (3, msg(B2, votes(Vote::Yes)), vec![]),
            (
                3,
                msg(B3, votes(Vote::Yes)),
                vec![commit_record(vec![ev(2), ev(3)])],
            ),
            // Deciding: the commit is not durable yet, so it is not revealed.
            (
                3,
                msg(B2, BranchBody::StatusQuery(vec![TransferId(1)])),
                vec![send(
                    B2,
                    BranchBody::StatusAnswer(vec![answer(1, TransferStatus::Pending)]),
                )],
            ),
        ],
    );
    // Past the deadline and undecided: the query aborts it on the spot.
    let mut b = branch(B1);
    started(&mut b);
    check(
        &mut b,
        vec![(
            T + 1,
            msg(B2, BranchBody::StatusQuery(vec![TransferId(1)])),
            vec![
                abort_record(Refusal::NoVote),
                send(
                    B2,
                    BranchBody::StatusAnswer(vec![answer(1, TransferStatus::Pending)]),
                ),
            ],
        )],
    );
}

#[test]
fn coordinator_recovery_aborts_undecided_and_resends_decided() {
    let mut b = branch(B1);
    let mut two = cross();
    two.id = TransferId(2);
    let rec = |s: TransferSpec, decision| CoordinatedRecord {
        spec: s,
        deadline_ms: T,
        decision,
        reason: None,
    };
    check(
        &mut b,
        vec![
            (
                10,
                Input::Recovered {
                    coordinated: vec![rec(cross(), None), rec(two, Some(Decision::Commit))],
                    in_doubt: vec![],
                },
                vec![
                    abort_record(Refusal::Interrupted),
                    send(
                        B2,
                        BranchBody::Decisions(vec![DecisionItem {
                            id: TransferId(2),
                            decision: Decision::Commit,
                        }]),
                    ),
                    send(
                        B3,
                        BranchBody::Decisions(vec![DecisionItem {
                            id: TransferId(2),
                            decision: Decision::Commit,
                        }]),
                    ),
                ],
            ),
            (
                11,
                Input::DecisionsDurable {
                    ids: vec![TransferId(1)],
                },
                vec![
                    send(B2, decisions(Decision::Abort)),
                    send(B3, decisions(Decision::Abort)),
                ],
            ),
        ],
    );
}

#[test]
fn participant_prepares_votes_and_applies() {
    let mut b = branch(B2);
    let item = prepare_item(cross(), 0);
    check(
        &mut b,
        vec![
            (
                1,
                msg(B1, BranchBody::Prepare(vec![item])),
                vec![Command::Prepare {
                    coordinator: B1,
                    items: vec![item],
                    evidence: ev(1),
                }],
            ),
            (
                2,
                Input::Prepared {
                    coordinator: B1,
                    items: vec![item],
                    votes: vec![Vote::Yes],
                },
                vec![send(B1, votes(Vote::Yes))],
            ),
        ],
    );
    assert_eq!(b.participant().in_doubt(), 1);
    let d = DecisionItem {
        id: TransferId(1),
        decision: Decision::Commit,
    };
    check(
        &mut b,
        vec![
            (
                3,
                msg(B1, decisions(Decision::Commit)),
                vec![Command::Apply {
                    coordinator: B1,
                    items: vec![d],
                    evidence: ev(1),
                }],
            ),
            (
                4,
                Input::Applied {
                    coordinator: B1,
                    items: vec![d],
                    outcomes: vec![ApplyOutcome::Applied],
                },
                vec![send(B1, BranchBody::Acks(vec![TransferId(1)]))],
            ),
            (T + 1_000, Input::Tick, vec![]),
        ],
    );
    assert_eq!(b.participant().in_doubt(), 0);
}

#[test]
fn participant_in_doubt_asks_with_backoff_and_never_acks_a_refusal() {
    let mut b = branch(B2);
    let item = prepare_item(cross(), 0);
    let query = send(B1, BranchBody::StatusQuery(vec![TransferId(1)]));
    let d = DecisionItem {
        id: TransferId(1),
        decision: Decision::Commit,
    };
    check(
        &mut b,
        vec![
            (
                2,
                Input::Prepared {
                    coordinator: B1,
                    items: vec![item],
                    votes: vec![Vote::Yes],
                },
                vec![send(B1, votes(Vote::Yes))],
            ),
            (T + 49, Input::Tick, vec![]),
            (T + 50, Input::Tick, vec![query.clone()]),
            (T + 50 + 49, Input::Tick, vec![]),
            (T + 50 + 50, Input::Tick, vec![query.clone()]),
            (T + 100 + 100, Input::Tick, vec![query.clone()]),
            (
                T + 200,
                msg(
                    B1,
                    BranchBody::StatusAnswer(vec![StatusItem {
                        id: TransferId(1),
                        status: TransferStatus::Pending,
                    }]),
                ),
                vec![],
            ),
            (
                T + 201,
                msg(
                    B3,
                    BranchBody::StatusAnswer(vec![StatusItem {
                        id: TransferId(1),
                        status: TransferStatus::Decided(Decision::Commit),
                    }]),
                ),
                vec![Command::Apply {
                    coordinator: B3,
                    items: vec![d],
                    evidence: ev(3),
                }],
            ),
            (
                T + 202,
                Input::Applied {
                    coordinator: B3,
                    items: vec![d],
                    outcomes: vec![ApplyOutcome::Refused(ApplyRefusal::WrongCoordinator)],
                },
                vec![],
            ),
        ],
    );
    assert_eq!(
        b.participant().in_doubt(),
        1,
        "a refused decision resolves nothing"
    );
    // After a restart it asks at once.
    let mut b = branch(B2);
    let rec = InDoubtRecord {
        id: TransferId(1),
        coordinator: B1,
        deadline_ms: T,
    };
    check(
        &mut b,
        vec![(
            5,
            Input::Recovered {
                coordinated: vec![],
                in_doubt: vec![rec],
            },
            vec![query],
        )],
    );
}
