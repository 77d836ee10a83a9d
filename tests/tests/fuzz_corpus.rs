//! Replays the fuzz corpus (`fuzz/seeds/TARGET/*`: seeds, and every input a fuzz run
//! made a crash) through the fuzz bodies, so a crash found once stays fixed
//! without the fuzzer; and runs a bounded number of mutations of it through them
//! on every test run.

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

/// Mutations of one seed a run tries per target: bounded, so the suite stays short.
const MUTATIONS_PER_TARGET: usize = 100_000;

/// A small fixed-seed generator (xorshift64*): the same inputs on every run.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// `seed` changed a little: a byte flipped, set, inserted or removed, or cut short.
fn mutate(seed: &[u8], rng: &mut Xorshift) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        let byte = rng.next().to_le_bytes()[0];
        match rng.below(5) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => data[at] = byte,
            2 => data.insert(at, byte),
            3 if at < data.len() => {
                data.remove(at);
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// A bounded fuzz run inside the suite (no fuzzer needed): every target takes
/// thousands of mutations of its saved inputs and must return normally for each.
#[test]
fn every_target_survives_mutations_of_its_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (name, body) in tests::fuzz::TARGETS {
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
            .expect("seeds")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("reads"))
            .collect();
        assert!(!seeds.is_empty(), "{name} has seeds");
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..MUTATIONS_PER_TARGET {
            let seed = &seeds[rng.below(seeds.len())];
            body(&mutate(seed, &mut rng));
        }
    }
}

/// Every fuzz body is a target the fuzzer builds, with its source file.
#[test]
fn every_fuzz_body_is_a_target_of_the_fuzzer() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz manifest");
    for (name, _) in tests::fuzz::TARGETS {
        let source = fuzz.join(format!("fuzz_targets/{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        let bin = format!("name = \"{name}\"");
        assert!(
            manifest.contains(&bin),
            "fuzz/Cargo.toml has no target {name}"
        );
    }
}
