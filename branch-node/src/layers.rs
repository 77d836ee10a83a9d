//! The crate's layers, as data: which top-level modules each may use. A module may use
//! those named on its row and nothing else of this crate; the rows form no cycle, so
//! each layer can be read, tested and changed knowing only what lies below it. The
//! test at the bottom reads every source file and holds the code to this table.
//!
//! From the bottom: `metrics`, `totp`, `lock`, `logs` and `keys` (the data keys and
//! what wraps them) are leaves; `store` (SQLite, the
//! writer, the records) knows nothing of the network or the node; `p2p` (the swarm)
//! knows nothing of the store; `replica` (Raft) builds on both; `init` makes data
//! dirs; `node` runs a branch; `backup`, `restore`, `verify` and `rotate` are the
//! operator's commands on top.

/// `(module, what it may use)`, bottom up.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("metrics", &[]),
    ("totp", &[]),
    ("lock", &[]),
    ("logs", &[]),
    ("keys", &[]),
    ("store", &["metrics", "totp", "keys"]),
    ("p2p", &["metrics"]),
    ("replica", &["metrics", "store", "p2p", "keys"]),
    ("init", &["lock", "totp", "store", "replica", "keys"]),
    ("rotate", &["lock", "store", "replica", "init", "keys"]),
    (
        "node",
        &[
            "metrics", "totp", "lock", "store", "p2p", "replica", "init", "keys", "rotate",
        ],
    ),
    (
        "backup",
        &["lock", "store", "replica", "init", "node", "keys"],
    ),
    (
        "restore",
        &["store", "p2p", "init", "node", "backup", "keys"],
    ),
    ("verify", &["lock", "store", "replica", "init", "keys"]),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::LAYERS;

    /// The `crate::<module>` paths a line of code names (comments left out).
    fn named(line: &str) -> Vec<&str> {
        let code = line.split("//").next().unwrap_or("");
        code.split("crate::")
            .skip(1)
            .map(|rest| {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn each_module_uses_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut broken = Vec::new();
        for path in all {
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.iter().next().and_then(|s| s.to_str()).unwrap_or("");
            let module = first.trim_end_matches(".rs");
            if ["lib", "main", "bin", "layers"].contains(&module) {
                continue;
            }
            let (_, allowed) = LAYERS
                .iter()
                .find(|(m, _)| *m == module)
                .unwrap_or_else(|| panic!("{module} has no row in LAYERS"));
            let text = std::fs::read_to_string(&path).expect("source");
            for (n, line) in text.lines().enumerate() {
                for used in named(line) {
                    if used != module && !allowed.contains(&used) {
                        broken.push(format!("{}:{}: {module} uses {used}", rel.display(), n + 1));
                    }
                }
            }
        }
        assert!(
            broken.is_empty(),
            "layer rules broken:\n{}",
            broken.join("\n")
        );
    }

    #[test]
    fn each_row_names_only_rows_above_it() {
        for (i, (module, allowed)) in LAYERS.iter().enumerate() {
            for used in *allowed {
                let below = LAYERS[..i].iter().any(|(m, _)| m == used);
                assert!(below, "{module} may use {used}, which is not below it");
            }
        }
    }
}
