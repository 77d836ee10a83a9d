//! Log lines that repeat are counted instead of written: a warning or error of the same
//! shape (the same text once its numbers are set aside, timestamps included) is
//! written once per [`WINDOW`]; the next one written says how many were left out, and a
//! line left out is written with its count once its window has passed, if nothing like
//! it came since. A follower that is down no longer fills the log with a pair of lines
//! every heartbeat. Info and debug lines pass untouched.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How often a line of one shape is written at most.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most shapes remembered; past it, the table is cleared (a few repeats then show).
const SHAPES_MAX: usize = 1_024;
/// Most bytes of a left-out line kept to write with its count.
const LINE_BYTES_MAX: usize = 4_096;
/// Most bytes of a line its shape is made from: the table stays within
/// `SHAPES_MAX` x (this + `LINE_BYTES_MAX`), whatever a line holds.
const SHAPE_BYTES_MAX: usize = 512;

/// What is remembered of one shape.
#[derive(Debug)]
struct Shape {
    written_at: Instant,
    left_out: u64,
    /// The latest line left out, written with its count once the window passes.
    last: Vec<u8>,
}

/// The shapes seen, shared by every writer the subscriber makes.
#[derive(Debug, Default)]
struct Seen {
    shapes: HashMap<String, Shape>,
    swept_at: Option<Instant>,
}

/// A [`MakeWriter`] for `inner` that leaves out repeated warnings and errors.
#[derive(Debug, Clone)]
pub struct QuietRepeats<W> {
    inner: W,
    seen: Arc<Mutex<Seen>>,
}

impl<W> QuietRepeats<W> {
    pub fn new(inner: W) -> QuietRepeats<W> {
        QuietRepeats {
            inner,
            seen: Arc::default(),
        }
    }
}

/// A warning or error, by its text: the level word in a text line, or the JSON field.
fn is_warning(line: &str) -> bool {
    let level = line.split_whitespace().nth(1).unwrap_or_default();
    matches!(level, "WARN" | "ERROR")
        || line.contains("\"level\":\"WARN\"")
        || line.contains("\"level\":\"ERROR\"")
}

/// The line with every run of digits as one `#`: lines that differ only in numbers
/// (times, intervals, counts) have one shape.
fn shape(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(SHAPE_BYTES_MAX));
    let mut in_digits = false;
    for c in line.chars() {
        if out.len() >= SHAPE_BYTES_MAX {
            break;
        }
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// `line` with a note that `n` more like it were left out.
fn with_count(line: &[u8], n: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let body = text.trim_end_matches('\n');
    let out = if let Some(rest) = body.strip_prefix('{') {
        format!("{{\"repeats_left_out\":{n},{rest}\n")
    } else {
        format!("{body} (and {n} more like this left out)\n")
    };
    out.into_bytes()
}

impl Seen {
    /// What to write for `line` now: lines left out earlier whose window has passed
    /// (with their counts), then `line` itself (with a count) unless it is left out.
    fn take(&mut self, line: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let own = self.own(line, now);
        let mut out = self.sweep(now);
        out.extend(own);
        out
    }

    /// `line` (with a count), or nothing when it is left out.
    fn own(&mut self, line: &[u8], now: Instant) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(line);
        if !is_warning(&text) {
            return Some(line.to_vec());
        }
        if self.shapes.len() >= SHAPES_MAX {
            self.shapes.clear();
        }
        let shape = self.shapes.entry(shape(&text)).or_insert(Shape {
            written_at: now,
            left_out: 0,
            last: Vec::new(),
        });
        if shape.written_at == now || now.duration_since(shape.written_at) >= WINDOW {
            let n = std::mem::take(&mut shape.left_out);
            shape.written_at = now;
            shape.last.clear();
            Some(if n > 0 {
                with_count(line, n)
            } else {
                line.to_vec()
            })
        } else {
            shape.left_out += 1;
            shape.last = line[..line.len().min(LINE_BYTES_MAX)].to_vec();
            None
        }
    }

    /// Lines left out whose window has passed with nothing like them since: the last
    /// one of each, with its count. Looked at once a window at most.
    fn sweep(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self
            .swept_at
            .is_some_and(|at| now.duration_since(at) < WINDOW)
        {
            return Vec::new();
        }
        self.swept_at = Some(now);
        let mut out = Vec::new();
        self.shapes.retain(|_, s| {
            if now.duration_since(s.written_at) < WINDOW {
                return true;
            }
            if s.left_out == 0 {
                return false;
            }
            // Written now with its count: a new window starts for its shape, so one
            // that goes on repeating is written once a window.
            let n = s.left_out - 1;
            out.push(if n > 0 {
                with_count(&s.last, n)
            } else {
                std::mem::take(&mut s.last)
            });
            s.written_at = now;
            s.left_out = 0;
            s.last.clear();
            true
        });
        out
    }
}

/// One event's writer: the subscriber writes each event whole, then drops it.
#[derive(Debug)]
pub struct Quiet<W: Write> {
    inner: W,
    seen: Arc<Mutex<Seen>>,
    buf: Vec<u8>,
}

impl<W: Write> Write for Quiet<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return self.inner.flush();
        }
        let line = std::mem::take(&mut self.buf);
        let lines = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&line, Instant::now());
        for l in lines {
            self.inner.write_all(&l)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for Quiet<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for QuietRepeats<M> {
    type Writer = Quiet<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Quiet {
            inner: self.inner.make_writer(),
            seen: self.seen.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2026-12-05T09:59:44.262432Z ERROR openraft::replication: RPCError err=Unreachable node 3\n";
    const B: &str = "2026-12-05T09:59:44.762441Z ERROR openraft::replication: RPCError err=Unreachable node 3\n";
    const INFO: &str = "2026-12-05T09:59:44.762441Z  INFO branch_node: serving\n";

    fn texts(lines: Vec<Vec<u8>>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| String::from_utf8(l).expect("utf-8"))
            .collect()
    }

    #[test]
    fn a_repeated_warning_is_written_once_a_window_with_its_count() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        assert_eq!(texts(seen.take(A.as_bytes(), t0)), [A]);
        for k in 1..=20u64 {
            let at = t0 + Duration::from_millis(100 * k);
            assert!(seen.take(B.as_bytes(), at).is_empty(), "left out");
            assert_eq!(texts(seen.take(INFO.as_bytes(), at)), [INFO], "info passes");
        }
        let later = t0 + WINDOW + Duration::from_millis(50);
        let out = texts(seen.take(A.as_bytes(), later));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].ends_with("(and 20 more like this left out)\n"),
            "{out:?}"
        );
    }

    #[test]
    fn lines_left_out_are_written_when_their_window_passes() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        seen.take(A.as_bytes(), t0);
        seen.take(B.as_bytes(), t0 + Duration::from_secs(1));
        seen.take(B.as_bytes(), t0 + Duration::from_secs(2));
        let out = texts(seen.take(INFO.as_bytes(), t0 + WINDOW + WINDOW));
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("2026-12-05T09:59:44.762441Z ERROR"));
        assert!(
            out[0].ends_with("(and 1 more like this left out)\n"),
            "{out:?}"
        );
        assert_eq!(out[1], INFO);
    }

    #[test]
    fn a_warning_that_goes_on_repeating_is_written_once_a_window() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let mut written = 0;
        // Every 100 ms for a minute, with an info line every second to sweep.
        for k in 0..600u64 {
            let at = t0 + Duration::from_millis(100 * k);
            written += seen.take(A.as_bytes(), at).len();
            if k % 10 == 0 {
                written += seen.take(INFO.as_bytes(), at).len() - 1;
            }
        }
        assert!(
            (6..=8).contains(&written),
            "{written} lines of 600 in a minute"
        );
    }

    #[test]
    fn a_shape_is_bounded_whatever_the_line() {
        let long = format!("2026-12-05T09:59:44Z ERROR x: {}\n", "y".repeat(100_000));
        assert!(shape(&long).len() <= SHAPE_BYTES_MAX + 4);
        assert_eq!(shape("a 12 b 3.5"), "a # b #.#");
    }

    #[test]
    fn json_lines_get_a_field() {
        let line = br#"{"timestamp":"x","level":"WARN","fields":{"message":"m"}}"#;
        assert_eq!(
            String::from_utf8(with_count(line, 3)).expect("utf-8"),
            "{\"repeats_left_out\":3,\"timestamp\":\"x\",\"level\":\"WARN\",\"fields\":{\"message\":\"m\"}}\n"
        );
        assert!(is_warning(std::str::from_utf8(line).expect("utf-8")));
        assert!(!is_warning(INFO));
    }
}
