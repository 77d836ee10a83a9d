//! Bulk payments: a CSV file of transfers (`id,from,to,amount` per line), checked whole
//! before anything is sent, then sent in chunks of at most
//! [`wire::limits::BATCH_LINES_MAX`] lines, several chunks in flight, each line under
//! its own id with its own answer ([`crate::money::send_batch`]).
//!
//! Running the same file again is safe: every line carries its id in the file, so a
//! line already done gets its recorded outcome again and moves nothing twice.

use futures::StreamExt;
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, TransferId};

use crate::Teller;
use crate::money::{self, MoneyAnswer, RetryPolicy};

/// One transfer of the file, with its line number (1-based) for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLine {
    pub line: usize,
    pub spec: TransferSpec,
}

/// Most problems the message of a refused file names (the rest are counted).
pub const FILE_PROBLEMS_SHOWN: usize = 5;

/// Why a file was not sent: every problem found, by line (nothing was sent); shown in
/// one line naming the first few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblems {
    pub problems: Vec<(usize, String)>,
}

impl std::fmt::Display for FileProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        write!(f, "{n} wrong line(s), nothing was sent: ")?;
        let shown: Vec<String> = self
            .problems
            .iter()
            .take(FILE_PROBLEMS_SHOWN)
            .map(|(line, why)| format!("line {line}: {why}"))
            .collect();
        write!(f, "{}", shown.join("; "))?;
        if n > FILE_PROBLEMS_SHOWN {
            write!(f, "; and {} more", n - FILE_PROBLEMS_SHOWN)?;
        }
        Ok(())
    }
}

/// Reads a transfer file: one `id,from,to,amount` per line; an optional first line
/// `id,from,to,amount` (a header); blank lines and lines starting with `#` skipped;
/// fields may be quoted and padded with spaces. Ids are 32 hex digits or a UUID
/// (`teller-cli new-id` makes them). Every line is checked as `teller-cli transfer` would check
/// it (check digits, a movable amount, two different accounts), and no id may appear
/// twice; any problem refuses the whole file, so a typo is fixed before money moves.
pub fn parse(text: &str) -> Result<Vec<BatchLine>, FileProblems> {
    parse_with(text, None)
}

/// Gives a line without an id (its number and text) an id.
pub type NewId<'a> = dyn FnMut(usize, &str) -> TransferId + 'a;

/// As [`parse`]; with `new_id`, a line of three fields (`from,to,amount`, under an
/// optional header `from,to,amount`) gets an id from it (given the line's number and
/// text: [`derived_id`]). Only for a caller that hands
/// the file back with those ids ([`with_ids`]): a file sent again without them would be
/// new payments.
pub fn parse_with(
    text: &str,
    mut new_id: Option<&mut NewId<'_>>,
) -> Result<Vec<BatchLine>, FileProblems> {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') || (line == 1 && is_header(raw)) {
            continue;
        }
        let id = match (&mut new_id, raw.split(',').count()) {
            (Some(make), 3) => Some(make(line, raw)),
            _ => None,
        };
        match parse_line(raw, id) {
            Ok(spec) => match seen.insert(spec.id, line) {
                Some(first) => {
                    problems.push((line, format!("id {} is also on line {first}", spec.id)));
                }
                None => lines.push(BatchLine { line, spec }),
            },
            Err(why) => problems.push((line, why)),
        }
    }
    if lines.is_empty() && problems.is_empty() {
        problems.push((0, "the file has no transfers".into()));
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        Err(FileProblems { problems })
    }
}

fn is_header(line: &str) -> bool {
    let fields: Vec<String> = line.split(',').map(|f| field(f).to_lowercase()).collect();
    fields == ["id", "from", "to", "amount"] || fields == ["from", "to", "amount"]
}

/// The id of line `line` (text `raw`) of a list sent under `base` that gave the line
/// none: the same list sent again under the same base (a resubmitted form) gets the
/// same ids, so it moves nothing twice. Keeps `base`'s time and version bits.
pub fn derived_id(base: TransferId, line: usize, raw: &str) -> TransferId {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ line as u64;
    for b in raw.trim().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    // The low 62 bits: the variant bits above them stay as `base` has them.
    TransferId(base.0 ^ u128::from(h & 0x3fff_ffff_ffff_ffff))
}

/// The file of `lines` with every line's id, ready to be sent again safely.
pub fn with_ids(lines: &[BatchLine]) -> String {
    let mut out = String::from("id,from,to,amount\n");
    for l in lines {
        let s = &l.spec;
        out.push_str(&format!("{},{},{},{}\n", s.id, s.from, s.to, s.amount));
    }
    out
}

/// One field without its padding and quotes.
fn field(f: &str) -> &str {
    let f = f.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f)
        .trim()
}

/// One line's transfer; `given` is the id for a line without one (three fields).
fn parse_line(raw: &str, given: Option<TransferId>) -> Result<TransferSpec, String> {
    let mut fields: Vec<&str> = raw.split(',').map(field).collect();
    if given.is_some() {
        fields.insert(0, "");
    }
    if fields.len() == 3 {
        return Err(
            "this line has no id: give every line its own id (teller-cli new-id \
                    --count N makes them), so the file can be sent again safely"
                .into(),
        );
    }
    let [id, from, to, amount] = fields[..] else {
        return Err(format!(
            "expected 4 fields (id,from,to,amount), found {}",
            fields.len()
        ));
    };
    let id: TransferId = match given {
        Some(id) => id,
        None => id.parse().map_err(|e| format!("id {id:?}: {e}"))?,
    };
    let account = |text: &str| {
        text.parse::<AccountNumber>()
            .map_err(|e| format!("account {text:?}: {e}"))
    };
    let (from, to) = (account(from)?, account(to)?);
    let amount = Amount::parse(amount)
        .and_then(Amount::validate_movable)
        .map_err(|e| format!("amount {amount:?}: {e}"))?;
    if from == to {
        return Err(format!("from and to are the same account {from}"));
    }
    Ok(TransferSpec {
        id,
        from,
        to,
        amount,
    })
}

/// How a file is sent.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Lines per request, 1 to [`wire::limits::BATCH_LINES_MAX`].
    pub chunk: usize,
    /// Chunks in flight at once over the one connection.
    pub in_flight: usize,
    pub policy: RetryPolicy,
}

/// Default lines per request: one whole 2PC batch.
pub const CHUNK_LINES_DEFAULT: usize = wire::limits::BATCH_LINES_MAX;
/// Default chunks in flight: enough to keep a branch's engine and writer busy while an
/// answer travels back.
pub const CHUNKS_IN_FLIGHT_DEFAULT: usize = 4;

/// Sends every line, in chunks, and returns each line's final answer in file order.
/// `progress` is called with the number of lines answered after each chunk.
pub async fn send(
    teller: &Teller,
    lines: &[BatchLine],
    options: BatchOptions,
    mut progress: impl FnMut(usize),
) -> Vec<MoneyAnswer> {
    let chunk = options.chunk.clamp(1, wire::limits::BATCH_LINES_MAX);
    let policy = options.policy;
    let parts: Vec<Vec<TransferSpec>> = lines
        .chunks(chunk)
        .map(|part| part.iter().map(|l| l.spec).collect())
        .collect();
    let teller = teller.clone();
    let sends = parts.into_iter().map(move |specs| {
        let mut teller = teller.clone();
        async move { money::send_batch(&mut teller, &specs, &policy).await }
    });
    let mut answers = Vec::with_capacity(lines.len());
    let mut chunks = futures::stream::iter(sends).buffered(options.in_flight.max(1));
    while let Some(part) = chunks.next().await {
        progress(part.len());
        answers.extend(part);
    }
    answers
}

/// How many lines came to each answer, and the exit status that says the whole run:
/// the worst line's (unknown 5, then not done 4, then refused 3; 0 when all committed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub committed: usize,
    pub refused: usize,
    pub not_done: usize,
    pub unknown: usize,
}

impl Tally {
    pub fn of(answers: &[MoneyAnswer]) -> Tally {
        let mut t = Tally::default();
        for a in answers {
            match a {
                MoneyAnswer::Committed { .. } => t.committed += 1,
                MoneyAnswer::Refused { .. } => t.refused += 1,
                MoneyAnswer::NotDone { .. } => t.not_done += 1,
                MoneyAnswer::Unknown { .. } => t.unknown += 1,
            }
        }
        t
    }

    pub fn exit_code(&self) -> u8 {
        if self.unknown > 0 {
            money::EXIT_UNKNOWN
        } else if self.not_done > 0 {
            money::EXIT_NOT_DONE
        } else if self.refused > 0 {
            money::EXIT_REFUSED
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID1: &str = "0192f5a0c3a07c4e8b2a000000000001";

    fn acct(serial: u32, branch: u16) -> String {
        AccountNumber::new(wire::BranchId(branch), serial)
            .expect("valid")
            .to_string()
    }

    #[test]
    fn a_file_with_a_header_comments_quotes_and_blank_lines_reads() {
        let (a, b) = (acct(1, 1), acct(2, 2));
        let text = format!(
            "\u{feff}id,from,to,amount\n# salaries\n\n{ID1},{a},{b},10.00\n\"0192f5a0-c3a0-7c4e-8b2a-000000000002\", \"{a}\" ,{b},0.01\r\n"
        );
        let lines = parse(&text).expect("reads");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].line, 4);
        assert_eq!(lines[1].line, 5);
        assert_eq!(lines[1].spec.amount, Amount::parse("0.01").expect("amount"));
    }

    #[test]
    fn every_wrong_line_is_named_and_nothing_is_kept() {
        let (a, b) = (acct(1, 1), acct(2, 2));
        // One check digit changed: a typo.
        let mut typo = acct(3, 1);
        let last = typo.pop().expect("digit");
        typo.push(if last == '0' { '1' } else { '0' });
        let text = [
            format!("{ID1},{a},{b},10.00"),
            format!("{ID1},{a},{b},10.00"),
            format!("nothex,{a},{b},1"),
            format!("0192f5a0c3a07c4e8b2a000000000003,{typo},{b},1"),
            format!("0192f5a0c3a07c4e8b2a000000000004,{a},{b},-5"),
            format!("0192f5a0c3a07c4e8b2a000000000005,{a},{a},5"),
            format!("0192f5a0c3a07c4e8b2a000000000006,{a},{b}"),
        ]
        .join("\n");
        let problems = parse(&text).expect_err("refused").problems;
        let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7], "{problems:?}");
        assert!(problems[0].1.contains("also on line 1"));
        assert!(problems[5].1.contains("has no id"), "{problems:?}");
    }

    #[test]
    fn lines_without_ids_get_them_and_the_file_comes_back_with_them() {
        let (a, b) = (acct(1, 1), acct(2, 2));
        let text = format!("from,to,amount\n{a},{b},10.00\n{ID1},{b},{a},1\n");
        assert!(parse(&text).is_err(), "the CLI needs every id in the file");
        let base = TransferId::from_time_and_random(1_800_000_000_000, [9; 10]);
        let mut make = |line: usize, raw: &str| derived_id(base, line, raw);
        let lines = parse_with(&text, Some(&mut make)).expect("reads");
        let again_same = parse_with(&text, Some(&mut make)).expect("reads");
        assert_eq!(
            lines, again_same,
            "the same list under the same base: the same ids"
        );
        assert_eq!(
            lines[0].spec.id.0 >> 64,
            base.0 >> 64,
            "time and version kept"
        );
        assert_ne!(lines[0].spec.id, base);
        assert_eq!(lines[1].spec.id.to_string(), ID1);
        let again = parse(&with_ids(&lines)).expect("the file with ids reads");
        assert_eq!(
            again.iter().map(|l| l.spec).collect::<Vec<_>>(),
            lines.iter().map(|l| l.spec).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert!(parse("id,from,to,amount\n\n# nothing\n").is_err());
    }

    #[test]
    fn the_worst_line_gives_the_exit_status() {
        let id = TransferId(1);
        let committed = MoneyAnswer::Committed { id };
        let refused = MoneyAnswer::Refused {
            id,
            reason: wire::Refusal::InsufficientFunds,
        };
        let unknown = MoneyAnswer::Unknown {
            id,
            why: money::Why::new("", "no_answer"),
        };
        assert_eq!(Tally::of(std::slice::from_ref(&committed)).exit_code(), 0);
        assert_eq!(
            Tally::of(&[committed.clone(), refused.clone()]).exit_code(),
            money::EXIT_REFUSED
        );
        assert_eq!(
            Tally::of(&[refused, unknown, committed]).exit_code(),
            money::EXIT_UNKNOWN
        );
    }
}
