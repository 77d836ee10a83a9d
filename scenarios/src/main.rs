//! `scenarios`: the README's main command. Until the branch node exists it says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "scenarios: not built yet; the wire vocabulary, the 2PC core and the branch store \
         exist, the branch-node process the demo runs does not (see README.md)"
    );
    ExitCode::from(2)
}
