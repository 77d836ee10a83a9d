//! Replays the fuzz corpus (`fuzz/seeds/TARGET/*`: seeds, and every input a fuzz run
//! made a crash) through the fuzz bodies, so a crash found once stays fixed
//! without the fuzzer.

use std::path::Path;

#[test]
fn every_saved_fuzz_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut replayed = 0;
    for (name, body) in tests::fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("reads");
            body(&data);
            replayed += 1;
        }
    }
    assert!(
        replayed >= tests::fuzz::TARGETS.len(),
        "a seed per target at least"
    );
}

/// The two over-long encodings an outside fuzz run found no longer decode.
#[test]
fn non_canonical_link_bytes_are_refused() {
    for hex in ["0188270302faffffffffffffffffffffffff0000", "a3a300000000"] {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert!(
            wire::decode::<wire::twopc::BranchMessage>(&bytes).is_err(),
            "{hex}"
        );
    }
}
