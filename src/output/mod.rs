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

/// How wide standard output is, when it is a terminal (lines for a person are wrapped to it;
/// a pipe gets them whole).
pub fn stdout_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let (_, cols) = console::Term::stdout().size_checked()?;
    Some(cols as usize)
}

/// `text` wrapped at word boundaries to `width` columns (a word longer than a line is left
/// whole), continuation lines indented by `indent` spaces. Without a width, `text` as it is.
pub fn wrap(text: &str, width: Option<usize>, indent: usize) -> String {
    let Some(width) = width.filter(|w| *w > indent + 10) else {
        return text.to_string();
    };
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
        } else if len > 0 {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

/// Whether output is coloured: `--color always|never`, else (`auto`) when the stream is a
/// terminal and `NO_COLOR` is unset or empty (no-color.org).
pub fn set_color(choice: crate::cli::ColorChoice) {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let (out, err) = match choice {
        crate::cli::ColorChoice::Always => (true, true),
        crate::cli::ColorChoice::Never => (false, false),
        crate::cli::ColorChoice::Auto => (
            !no_color && std::io::stdout().is_terminal(),
            !no_color && std::io::stderr().is_terminal(),
        ),
    };
    console::set_colors_enabled(out);
    console::set_colors_enabled_stderr(err);
}

/// A unit status as a person reads it, coloured by what it means (when colours are on):
/// green landed, yellow not run or not for the change, red the change did not make it.
pub fn status_styled(label: &str, for_stderr: bool) -> String {
    let style = match label {
        "landed" | "already-landed" => console::Style::new().green(),
        "skipped" | "infra-error" | "timeout" | "config-error" | "over-budget" => {
            console::Style::new().yellow()
        }
        _ => console::Style::new().red(),
    };
    let style = if for_stderr {
        style.for_stderr()
    } else {
        style.for_stdout()
    };
    style.apply_to(label).to_string()
}

/// A path as a person in the current directory would type it: relative when it is beneath
/// that directory (a run's files sit deep in `.git/boxdelegate/runs/…`), else whole.
pub fn shown_path(path: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::{visible, wrap};

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

    #[test]
    fn wrap_breaks_at_words_and_never_inside_one() {
        let text =
            "u: verify-failed: the change broke test_login and test_logout in tests/test_auth.py";
        let wrapped = wrap(text, Some(30), 2);
        for line in wrapped.lines() {
            assert!(line.chars().count() <= 30, "{line:?}");
        }
        assert_eq!(wrapped.replace("\n  ", " "), text);
        // A word longer than a line stays whole; no width, no wrapping.
        let long = "x".repeat(50);
        assert_eq!(
            wrap(&format!("a {long} b"), Some(30), 0),
            format!("a\n{long}\nb")
        );
        assert_eq!(wrap(text, None, 2), text);
    }
}
