//! What each fuzz target does with its bytes, as library functions: `fuzz/` runs them
//! under libFuzzer and `tests/fuzz_corpus.rs` replays the saved corpus through them.
//! Each must return normally for any input; a panic is a bug.

use wire::link::{LinkRequest, LinkResponse};
use wire::trace::Statement;
use wire::twopc::BranchMessage;
use wire::{BranchId, Signed, TellerRequest, TellerResponse};

/// A teller request as a branch receives it: decode, and validate what decodes.
/// Whatever decodes re-encodes to the same bytes (one byte form per message).
pub fn teller_request(data: &[u8]) {
    if let Ok(request) = wire::decode::<TellerRequest>(data) {
        let _ = request.validate();
        assert_eq!(wire::encode(&request).ok().as_deref(), Some(data));
    }
    let _ = wire::decode::<TellerResponse>(data);
}

/// A link request and, inside it, a signed 2PC envelope or fence claim and its payload.
pub fn link_request(data: &[u8]) {
    if let Ok(request) = wire::decode::<LinkRequest>(data) {
        assert_eq!(wire::encode(&request).ok().as_deref(), Some(data));
        match request {
            LinkRequest::TwoPc { envelope, .. } => {
                let _ = wire::decode::<Signed<BranchMessage>>(&envelope);
            }
            LinkRequest::Fence(claim) => {
                let _ = wire::decode::<Signed<wire::fence::Claim>>(&claim);
            }
            LinkRequest::Forward(_) => {}
        }
    }
    // A fence claim as a witness decodes it, and its payload.
    if let Ok(signed) = wire::decode::<Signed<wire::fence::Claim>>(data) {
        assert_eq!(wire::encode(&signed).ok().as_deref(), Some(data));
    }
    if let Ok(claim) = wire::decode::<wire::fence::Claim>(data) {
        assert_eq!(wire::encode(&claim).ok().as_deref(), Some(data));
    }
    if let Ok(signed) = wire::decode::<Signed<BranchMessage>>(data) {
        assert_eq!(wire::encode(&signed).ok().as_deref(), Some(data));
    }
    // The payload decoder, reached here without a valid signature.
    if let Ok(message) = wire::decode::<BranchMessage>(data) {
        let _ = message.check_shape(BranchId(1), 0);
        assert_eq!(wire::encode(&message).ok().as_deref(), Some(data));
    }
}

/// What another node answers, as a node or a teller receives it: a link answer (and,
/// inside it, a signed reconcile statement), and a Raft call or answer between
/// replicas.
pub fn peer_answer(data: &[u8]) {
    if let Ok(answer) = wire::decode::<LinkResponse>(data) {
        assert_eq!(wire::encode(&answer).ok().as_deref(), Some(data));
        if let LinkResponse::Statement(bytes) = answer {
            let _ = wire::decode::<Signed<Statement>>(&bytes);
        }
    }
    if let Ok(signed) = wire::decode::<Signed<Statement>>(data) {
        assert_eq!(wire::encode(&signed).ok().as_deref(), Some(data));
    }
    use branch_node::replica::transport::{Answer, Call};
    let _ = wire::codec::decode_record::<Call>(data);
    let _ = wire::codec::decode_record::<Answer>(data);
}

/// A network file's text.
pub fn network_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = client::network_file::NetworkFile::parse(text);
    }
}

/// A scenario file's text.
pub fn scenario_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = scenarios::scenario::Scenario::parse(text);
    }
}

/// A fuzz body: takes any bytes, panics only on a bug.
pub type Body = fn(&[u8]);

/// Every target by name, as `fuzz/` and the corpus replay know them.
pub const TARGETS: [(&str, Body); 5] = [
    ("teller_request", teller_request),
    ("link_request", link_request),
    ("peer_answer", peer_answer),
    ("network_file", network_file),
    ("scenario_file", scenario_file),
];
