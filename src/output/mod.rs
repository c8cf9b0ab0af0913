//! Output for people and programs: progress reporters (terminal, silent, JSON Lines), the final
//! JSON object of a command, and the names of enums as people read them.
//!
//! May not: act on a unit, the engine or the repository; import anything but the error type (ground
//! layer); print anything but JSON on stdout with `--json`.

mod progress;

pub use progress::{clear_live, JsonLines, Reporter, Silent, Terminal};

use crate::error::{Error, Result};

/// The secret values this process was given (the values of the variables passed to agents,
/// credentials): every diagnostic line (`-v`, `-vv`, `RUST_LOG`, `--log-format json`) is
/// redacted through them before it is written.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Remembers secret values for [`redact_secrets`] (values shorter than 6 characters are not
/// secrets enough to redact: they would redact ordinary words).
pub fn remember_secrets<'a>(values: impl IntoIterator<Item = &'a String>) {
    let mut known = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in values {
        if v.len() >= 6 && !known.contains(v) {
            known.push(v.clone());
        }
    }
    known.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every remembered secret value replaced by `[redacted]`.
pub fn redact_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    let known = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|s| text.contains(s.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in known.iter() {
        out = out.replace(s.as_str(), "[redacted]");
    }
    std::borrow::Cow::Owned(out)
}

/// Standard error for diagnostics: each write redacted of the remembered secrets and made
/// visible (one event is one write).
pub struct DiagnosticWriter;

impl std::io::Write for DiagnosticWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = redact_secrets(&text);
        let shown = visible(&text);
        std::io::stderr().write_all(shown.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `text` as a terminal may show it: every control character but newline and tab (the escape
/// that starts colour, cursor, clipboard and title sequences, carriage returns, backspaces,
/// bells, C1 controls) written as a visible escape such as `\x1b`. Everything from a box
/// (agent output, check output, paths) goes through it before it reaches a terminal.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| (c.is_control() && c != '\n' && c != '\t') || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if bad(c) {
            let n = c as u32;
            if n <= 0xff {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:04x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The serialized (kebab-case) name of a unit enum, e.g. a status, for people.
pub fn label<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Prints a command's final JSON object as one line (the last line of `--json` output).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::Internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn control_and_escape_sequences_are_made_visible() {
        // OSC 52 (clipboard), a screen clear, a title, a bell, a carriage return, C1 CSI.
        let hostile = "a\x1b]52;c;cHduZWQ=\x07b\x1b[2J\x1b]0;title\x07\rc\u{9b}31m";
        let shown = visible(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(
            shown,
            "a\\x1b]52;c;cHduZWQ=\\x07b\\x1b[2J\\x1b]0;title\\x07\\x0dc\\x9b31m"
        );
        assert_eq!(visible("plain\ttext\nnext"), "plain\ttext\nnext");
    }
}
