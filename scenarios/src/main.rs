//! `scenarios`: the README's main command. Until the branch node exists it says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "scenarios: not built yet; the wire vocabulary and the 2PC core exist, \
         the branch node that the demo runs does not (see ARCHITECTURE.md)"
    );
    ExitCode::from(2)
}
