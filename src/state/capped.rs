//! A log file of bounded size for output the box produces: its first [`HEAD_BYTES`] as they
//! come, then only the last [`TAIL_BYTES`] kept in memory and written after a marker saying how
//! much was left out. However much an agent prints, the file and the memory holding it stay
//! bounded; lines longer than [`MAX_LINE_BYTES`] are cut into pieces (see [`Lines`]).
//!
//! May not: grow without bound, in memory or on disk; know where the lines come from.

use std::collections::VecDeque;
use std::io::Write;

/// Bytes of the log's head written as they come.
pub const HEAD_BYTES: u64 = 4 << 20;
/// Bytes of the log's tail kept (in memory until the end).
pub const TAIL_BYTES: u64 = 1 << 20;
/// The longest line kept whole; a longer run of output without a newline is cut.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// The marker between the head and the tail.
pub fn marker(lines: u64, bytes: u64, head: u64, tail: u64) -> String {
    format!(
        "[boxdelegate: {lines} line(s), {bytes} bytes of output left out here; the log keeps the first {head} and the last {tail} bytes]"
    )
}

pub struct CappedLog<W: Write> {
    out: W,
    written: u64,
    tail: VecDeque<String>,
    tail_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    head: u64,
    keep: u64,
}

impl<W: Write> CappedLog<W> {
    pub fn new(out: W) -> Self {
        Self::with_limits(out, HEAD_BYTES, TAIL_BYTES)
    }

    pub fn with_limits(out: W, head: u64, keep: u64) -> Self {
        CappedLog {
            out,
            written: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            head,
            keep,
        }
    }

    /// Adds one line (without its newline).
    pub fn line(&mut self, line: &str) {
        let n = line.len() as u64 + 1;
        if self.written + n <= self.head && self.tail.is_empty() {
            self.written += n;
            let _ = writeln!(self.out, "{line}");
            let _ = self.out.flush();
            return;
        }
        self.tail.push_back(line.to_string());
        self.tail_bytes += n;
        while self.tail_bytes > self.keep {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() as u64 + 1;
            self.dropped_lines += 1;
            self.dropped_bytes += old.len() as u64 + 1;
        }
    }

    /// Writes what the tail holds, after the marker when anything was left out.
    pub fn finish(mut self) {
        if self.dropped_lines > 0 {
            let _ = writeln!(
                self.out,
                "{}",
                marker(self.dropped_lines, self.dropped_bytes, self.head, self.keep)
            );
        }
        for line in self.tail.drain(..) {
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
    }
}

/// Splits a byte stream (decoded chunks) into lines, holding at most [`MAX_LINE_BYTES`] of an
/// unfinished one: a longer one comes out in pieces, each marked as cut.
#[derive(Default)]
pub struct Lines {
    partial: String,
}

impl Lines {
    /// The whole lines `chunk` completes (without their newline, `\r` trimmed).
    pub fn feed(&mut self, chunk: &str) -> Vec<String> {
        self.partial.push_str(chunk);
        let mut out = Vec::new();
        loop {
            if let Some(i) = self.partial.find('\n') {
                let line: String = self.partial.drain(..=i).collect();
                out.push(line.trim_end_matches(['\n', '\r']).to_string());
            } else if self.partial.len() > MAX_LINE_BYTES {
                let mut cut = MAX_LINE_BYTES;
                while !self.partial.is_char_boundary(cut) {
                    cut -= 1;
                }
                let piece: String = self.partial.drain(..cut).collect();
                out.push(format!(
                    "{piece} [boxdelegate: line cut at {MAX_LINE_BYTES} bytes]"
                ));
            } else {
                return out;
            }
        }
    }

    /// What is left once the stream ends.
    pub fn rest(self) -> Option<String> {
        (!self.partial.is_empty()).then_some(self.partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_the_tail_with_a_marker_between() {
        let mut buf = Vec::new();
        let mut log = CappedLog::with_limits(&mut buf, 20, 16);
        for i in 0..100 {
            log.line(&format!("line {i}"));
        }
        log.finish();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
        assert!(text.ends_with("line 98\nline 99\n"), "{text}");
        assert!(text.contains("[boxdelegate: 96 line(s)"), "{text}");
        assert!(
            text.contains("keeps the first 20 and the last 16 bytes"),
            "{text}"
        );
        assert!(text.len() < 20 + 12 + 200, "{text}");
    }

    #[test]
    fn a_small_log_is_written_whole() {
        let mut buf = Vec::new();
        let mut log = CappedLog::new(&mut buf);
        log.line("a");
        log.line("b");
        log.finish();
        assert_eq!(buf, b"a\nb\n");
    }

    #[test]
    fn output_without_newlines_is_held_only_up_to_a_line() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for _ in 0..40 {
            out.extend(lines.feed(&"x".repeat(10_000)));
            assert!(lines.partial.len() <= MAX_LINE_BYTES);
        }
        assert_eq!(out.len(), 6, "400k bytes in 64k pieces");
        assert!(out[0].ends_with("[boxdelegate: line cut at 65536 bytes]"));
        assert_eq!(
            lines.feed("y\nz\r\n"),
            vec![
                "x".repeat(400_000 - 6 * MAX_LINE_BYTES) + "y",
                "z".to_string()
            ]
        );
        assert_eq!(lines.rest(), None);
    }
}
