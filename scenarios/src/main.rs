//! `scenarios`: the README's main command. The demo, scenario files and bench are not
//! built yet; until they are it says so and points at what already runs.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "scenarios: demo not built yet; branch nodes and teller-cli run today \
         (README.md, \"A network by hand\"), and `cargo test -p tests` runs a 3-branch network"
    );
    ExitCode::from(2)
}
