//! Codex's event stream: what `codex exec --json` prints on stdout, one JSON object per line.
//!
//! This module owns decoding that stream tolerantly and summing it into an [`Activity`]: unknown
//! event types, unknown item types, unknown or mistyped fields and lines that are not JSON at all
//! (codex may print plain warnings) never make decoding fail. It also prices token usage
//! ([`cost`]) and sorts turn failures into kinds ([`classify_failure`]) so the runner can tell
//! an infrastructure problem from a failed attempt.
//!
//! The stream is the agent's own account and is never trusted for what changed: the file paths
//! collected here feed progress displays and reports only, while extraction of the container's
//! tree decides the actual change. Nothing here stores secrets: only what codex prints is kept,
//! capped in size, with anything shaped like an API key masked.
//!
//! May not: fail on a line it does not understand; decide what changed from the stream; keep an
//! unmasked key.

use serde_json::Value;

use crate::config::Price;
use crate::record::{Activity, FailureKind, Usage};

/// Most distinct paths kept in [`Activity::files_touched`] and [`Activity::failed_file_changes`].
const MAX_FILES: usize = 1000;
/// Most notices kept in [`Activity::notices`].
const MAX_NOTICES: usize = 50;
/// Longest notice or failure message kept, in characters.
const MAX_NOTICE_CHARS: usize = 1000;
/// Longest agent message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 4000;
/// Longest command kept, in characters.
const MAX_COMMAND_CHARS: usize = 1000;
/// Longest command shown in [`Activity::status_line`], in characters.
const STATUS_COMMAND_CHARS: usize = 60;

/// The USD cost of `usage` at `price`. Cached and cache-write tokens are billed at their own
/// prices and the rest of the input at the input price; reasoning tokens are ordinary output.
pub fn cost(usage: &Usage, price: &Price) -> f64 {
    let cached_price = price.cached_input.unwrap_or(price.input);
    let write_price = price.cache_write.unwrap_or(price.input);
    let plain_input = usage
        .input_tokens
        .saturating_sub(usage.cached_input_tokens)
        .saturating_sub(usage.cache_write_input_tokens);
    let micro = plain_input as f64 * price.input
        + usage.cached_input_tokens as f64 * cached_price
        + usage.cache_write_input_tokens as f64 * write_price
        + usage.output_tokens as f64 * price.output;
    micro / 1_000_000.0
}

/// Sorts a `turn.failed` message into a [`FailureKind`] by robust substrings, since the exact
/// wording varies between codex versions. An HTTP status counts only as a whole number right
/// after `status`, `status code` or `http`, so counts like "1429 tokens" never look like 429.
pub fn classify_failure(message: &str) -> FailureKind {
    let text = message.to_lowercase();
    if let Some(code) = http_status(&text) {
        match code {
            401 | 403 => return FailureKind::Authentication,
            429 => return FailureKind::RateLimit,
            500..=599 => return FailureKind::ServerError,
            _ => {}
        }
    }
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "unauthorized",
        "forbidden",
        "invalid api key",
        "incorrect api key",
        "authentication",
    ]) {
        FailureKind::Authentication
    } else if has(&[
        "rate limit",
        "rate_limit",
        "ratelimit",
        "too many requests",
        "quota",
    ]) {
        FailureKind::RateLimit
    } else if has(&[
        "internal server error",
        "bad gateway",
        "service unavailable",
        "gateway timeout",
        "overloaded",
        // What codex 0.163 says for an HTTP 5xx from the provider.
        "high demand",
        "temporary errors",
    ]) {
        FailureKind::ServerError
    } else if has(&[
        "stream disconnected",
        "stream closed",
        "before completion",
        "connection reset",
        "error decoding response body",
    ]) {
        FailureKind::Stream
    } else if has(&["connection refused", "failed to connect", "timed out"])
        || has_word(&text, "dns")
    {
        FailureKind::Unreachable
    } else {
        FailureKind::Other
    }
}

/// The first HTTP status code named in `text` (already lowercased): a whole three-digit number
/// following `status`, `status code` or `http`, separated by spaces, `:`, `=` or `/`.
fn http_status(text: &str) -> Option<u16> {
    for marker in ["status code", "status", "http"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(marker) {
            let start = from + pos;
            let end = start + marker.len();
            from = end;
            let word_start = text[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric());
            if !word_start {
                continue;
            }
            let rest = text[end..].trim_start_matches([' ', ':', '=', '/', '_']);
            // Skip an HTTP version such as "http/1.1 ".
            let rest = if marker == "http" {
                let version_len = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(rest.len());
                if rest[..version_len].contains('.') {
                    rest[version_len..].trim_start()
                } else {
                    rest
                }
            } else {
                rest
            };
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let after_ok = rest[digits..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric());
            if digits == 3 && after_ok {
                if let Ok(code) = rest[..digits].parse::<u16>() {
                    if (100..=599).contains(&code) {
                        return Some(code);
                    }
                }
            }
        }
    }
    None
}

/// Whether `word` occurs in `text` bounded by non-alphanumeric characters.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, w)| {
        let before = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = text[i + w.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        before && after
    })
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ThreadStarted {
        thread_id: String,
    },
    TurnStarted,
    ItemStarted(Item),
    ItemUpdated(Item),
    ItemCompleted(Item),
    TurnCompleted {
        usage: Usage,
    },
    TurnFailed {
        message: String,
    },
    /// A non-fatal notice.
    Error {
        message: String,
    },
    /// A JSON object of a type this module does not know.
    Unknown,
}

/// The `item` of an `item.*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    AgentMessage {
        text: String,
    },
    Reasoning {
        text: String,
    },
    CommandExecution {
        command: String,
        exit_code: Option<i64>,
        status: String,
    },
    FileChange {
        changes: Vec<FileChangeEntry>,
        status: String,
    },
    Error {
        message: String,
    },
    /// Any other item type (`mcp_tool_call`, `web_search`, `todo_list`, ...), by its `type`.
    Other {
        kind: String,
    },
}

/// One path of a `file_change` item; `kind` is `add`, `delete` or `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChangeEntry {
    pub path: String,
    pub kind: String,
}

/// None when the line is not a JSON object.
pub fn decode(line: &str) -> Option<Event> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let value: Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    let event = match object.get("type").and_then(Value::as_str).unwrap_or("") {
        "thread.started" => Event::ThreadStarted {
            thread_id: string_field(&value, "thread_id"),
        },
        "turn.started" => Event::TurnStarted,
        "item.started" => item_event(&value, Event::ItemStarted),
        "item.updated" => item_event(&value, Event::ItemUpdated),
        "item.completed" => item_event(&value, Event::ItemCompleted),
        "turn.completed" => Event::TurnCompleted {
            usage: value.get("usage").map(usage_from_value).unwrap_or_default(),
        },
        "turn.failed" => Event::TurnFailed {
            message: error_message(value.get("error")),
        },
        "error" => Event::Error {
            message: message_field(&value),
        },
        _ => Event::Unknown,
    };
    Some(event)
}

fn item_event(value: &Value, wrap: fn(Item) -> Event) -> Event {
    match value.get("item") {
        Some(item @ Value::Object(_)) => wrap(decode_item(item)),
        _ => Event::Unknown,
    }
}

fn decode_item(item: &Value) -> Item {
    match item.get("type").and_then(Value::as_str).unwrap_or("") {
        "agent_message" => Item::AgentMessage {
            text: string_field(item, "text"),
        },
        "reasoning" => Item::Reasoning {
            text: string_field(item, "text"),
        },
        "command_execution" => Item::CommandExecution {
            command: command_field(item.get("command")),
            exit_code: item.get("exit_code").and_then(Value::as_i64),
            status: string_field(item, "status"),
        },
        "file_change" => Item::FileChange {
            changes: item
                .get("changes")
                .and_then(Value::as_array)
                .map(|changes| {
                    changes
                        .iter()
                        .filter_map(|change| {
                            let path = change.get("path").and_then(Value::as_str)?;
                            Some(FileChangeEntry {
                                path: path.to_string(),
                                kind: string_field(change, "kind"),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            status: string_field(item, "status"),
        },
        "error" => Item::Error {
            message: message_field(item),
        },
        other => Item::Other {
            kind: other.to_string(),
        },
    }
}

/// A string field, or empty when absent or not a string.
fn string_field(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn message_field(value: &Value) -> String {
    string_field(value, "message")
}

/// `error` of `turn.failed`: normally `{message}`, tolerated as a bare string.
fn error_message(error: Option<&Value>) -> String {
    match error {
        Some(Value::String(s)) => s.clone(),
        Some(other) => message_field(other),
        None => String::new(),
    }
}

/// A command is a string; an argv array is joined with spaces.
fn command_field(command: Option<&Value>) -> String {
    match command {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

impl Activity {
    /// Feeds one line of codex's stdout; returns true when it was an event.
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(event) = decode(line) else {
            return false;
        };
        self.events = self.events.saturating_add(1);
        match event {
            Event::ThreadStarted { thread_id } => {
                if !thread_id.is_empty() {
                    self.thread_id = Some(thread_id);
                }
            }
            Event::TurnStarted | Event::Unknown => {}
            Event::ItemStarted(item) | Event::ItemUpdated(item) => {
                if let Item::CommandExecution { command, .. } = item {
                    self.note_command(&command);
                }
            }
            Event::ItemCompleted(item) => self.item_completed(item),
            Event::TurnCompleted { usage } => {
                self.turn_completed = true;
                self.usage.add(&usage);
            }
            Event::TurnFailed { message } => {
                self.failure = Some(classify_failure(&message));
                self.turn_failed = Some(clean(&message, MAX_NOTICE_CHARS));
            }
            Event::Error { message } => self.notice(&message),
        }
        true
    }

    fn item_completed(&mut self, item: Item) {
        match item {
            Item::AgentMessage { text } => {
                self.last_message = Some(clean(&text, MAX_MESSAGE_CHARS))
            }
            Item::CommandExecution {
                command, status, ..
            } => {
                self.note_command(&command);
                if status != "declined" {
                    self.commands = self.commands.saturating_add(1);
                }
            }
            Item::FileChange { changes, status } => {
                let target = match status.as_str() {
                    "failed" | "declined" => &mut self.failed_file_changes,
                    _ => &mut self.files_touched,
                };
                for change in changes {
                    push_distinct(target, change.path);
                }
            }
            Item::Error { message } => self.notice(&message),
            Item::Reasoning { .. } | Item::Other { .. } => {}
        }
    }

    fn note_command(&mut self, command: &str) {
        if !command.trim().is_empty() {
            self.last_command = Some(clean(command.trim(), MAX_COMMAND_CHARS));
        }
    }

    fn notice(&mut self, message: &str) {
        if self.notices.len() < MAX_NOTICES && !message.trim().is_empty() {
            self.notices.push(clean(message.trim(), MAX_NOTICE_CHARS));
        }
    }

    /// One line for a progress display, e.g. "12 events, 3 commands, last: cargo test, 2 files,
    /// 1.3k tokens".
    pub fn status_line(&self) -> String {
        let mut parts = vec![
            plural(self.events, "event", "events"),
            plural(u64::from(self.commands), "command", "commands"),
        ];
        if let Some(command) = &self.last_command {
            let first_line = command.lines().next().unwrap_or_default();
            parts.push(format!(
                "last: {}",
                truncate_chars(first_line, STATUS_COMMAND_CHARS)
            ));
        }
        if !self.files_touched.is_empty() {
            parts.push(plural(self.files_touched.len() as u64, "file", "files"));
        }
        if !self.failed_file_changes.is_empty() {
            parts.push(format!(
                "{} blocked",
                plural(self.failed_file_changes.len() as u64, "file", "files")
            ));
        }
        if self.usage.total() > 0 {
            parts.push(format!("{} tokens", compact_count(self.usage.total())));
        }
        if let Some(kind) = self.failure {
            parts.push(format!("failed: {}", failure_label(kind)));
        }
        parts.join(", ")
    }
}

fn push_distinct(paths: &mut Vec<String>, path: String) {
    if path.is_empty() || paths.len() >= MAX_FILES || paths.contains(&path) {
        return;
    }
    paths.push(path);
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn failure_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Authentication => "authentication",
        FailureKind::RateLimit => "rate-limit",
        FailureKind::ServerError => "server-error",
        FailureKind::Stream => "stream",
        FailureKind::Unreachable => "unreachable",
        FailureKind::Other => "other",
    }
}

/// `950`, `1.3k`, `12k`, `2.1M`.
fn compact_count(n: u64) -> String {
    let scaled = |value: f64, suffix: &str| {
        if value < 10.0 {
            format!("{:.1}{suffix}", (value * 10.0).floor() / 10.0)
        } else {
            format!("{}{suffix}", value.floor() as u64)
        }
    };
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => scaled(n as f64 / 1_000.0, "k"),
        _ => scaled(n as f64 / 1_000_000.0, "M"),
    }
}

/// Masks secret-shaped words, then caps the text at `max` characters.
fn clean(text: &str, max: usize) -> String {
    truncate_chars(&mask_secrets(text), max)
}

/// At most `max` characters, the last one an ellipsis when the text was cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Replaces words that look like API keys (`sk-…`, `Bearer <token>`) so that a provider echoing
/// a credential in an error message never lands in a report.
fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end();
        let tail = &piece[word.len()..];
        let token = word.trim_matches(|c: char| {
            matches!(
                c,
                '"' | '\'' | ',' | '.' | ';' | ':' | '`' | '(' | ')' | '[' | ']' | '{' | '}'
            )
        });
        let secret =
            (token.starts_with("sk-") && token.len() >= 20) || (after_bearer && token.len() >= 16);
        if secret {
            out.push_str(&word.replace(token, "[redacted]"));
        } else {
            out.push_str(word);
        }
        out.push_str(tail);
        after_bearer = token.eq_ignore_ascii_case("bearer");
    }
    out
}

/// Reads a `usage` object field by field; an absent, null or mistyped count is 0.
fn usage_from_value(value: &Value) -> Usage {
    let count = |key: &str| -> u64 {
        match value.get(key) {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .map(|f| f as u64)
                })
                .unwrap_or(0),
            _ => 0,
        }
    };
    Usage {
        input_tokens: count("input_tokens"),
        cached_input_tokens: count("cached_input_tokens"),
        cache_write_input_tokens: count("cache_write_input_tokens"),
        output_tokens: count("output_tokens"),
        reasoning_output_tokens: count("reasoning_output_tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(lines: &str) -> Activity {
        let mut activity = Activity::default();
        for line in lines.lines() {
            activity.feed(line);
        }
        activity
    }

    const SUCCESS: &str = r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Looking at the parser**"}}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc 'cargo test'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc 'cargo test'","aggregated_output":"test result: ok. 3 passed\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":[{"path":"/work/src/lib.rs","kind":"update"},{"path":"/work/src/parse.rs","kind":"add"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"file_change","changes":[{"path":"/work/src/lib.rs","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"Added the parser and its tests."}}
{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122,"reasoning_output_tokens":64}}"#;

    #[test]
    fn successful_session() {
        let activity = feed_all(SUCCESS);
        assert_eq!(activity.events, 9);
        assert_eq!(
            activity.thread_id.as_deref(),
            Some("0199a213-81c0-7800-8aa1-bbab2a035a53")
        );
        assert!(activity.turn_completed);
        assert_eq!(activity.turn_failed, None);
        assert_eq!(activity.failure, None);
        assert_eq!(activity.commands, 1);
        assert_eq!(
            activity.last_command.as_deref(),
            Some("bash -lc 'cargo test'")
        );
        assert_eq!(
            activity.files_touched,
            vec!["/work/src/lib.rs", "/work/src/parse.rs"]
        );
        assert!(activity.failed_file_changes.is_empty());
        assert!(activity.notices.is_empty());
        assert_eq!(
            activity.last_message.as_deref(),
            Some("Added the parser and its tests.")
        );
        assert_eq!(
            activity.usage,
            Usage {
                input_tokens: 24763,
                cached_input_tokens: 24448,
                cache_write_input_tokens: 0,
                output_tokens: 122,
                reasoning_output_tokens: 64,
            }
        );
        assert_eq!(activity.usage.total(), 24885);
        assert_eq!(
            activity.status_line(),
            "9 events, 1 command, last: bash -lc 'cargo test', 2 files, 24k tokens"
        );
    }

    #[test]
    fn failed_session_with_401() {
        let activity = feed_all(
            r#"{"type":"thread.started","thread_id":"t-1"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 1/5"}
{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: {\"error\":{\"message\":\"Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz\"}}"}}"#,
        );
        assert_eq!(activity.events, 4);
        assert!(!activity.turn_completed);
        assert_eq!(activity.failure, Some(FailureKind::Authentication));
        let message = activity.turn_failed.as_deref().unwrap();
        assert!(message.starts_with("unexpected status 401 Unauthorized"));
        assert!(
            !message.contains("abcdefghijklmnop"),
            "secret kept: {message}"
        );
        assert!(message.contains("[redacted]"));
        assert_eq!(activity.notices, vec!["Reconnecting... 1/5"]);
        assert_eq!(activity.usage, Usage::default());
        assert_eq!(
            activity.status_line(),
            "4 events, 0 commands, failed: authentication"
        );
        assert!(!FailureKind::Authentication.retryable());
        assert!(!FailureKind::Authentication.is_infrastructure());
    }

    #[test]
    fn failed_file_change_then_completed_turn() {
        let activity = feed_all(
            r#"{"type":"thread.started","thread_id":"t-2"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":"/etc/hosts","kind":"update"}],"status":"failed"}}
{"type":"item.completed","item":{"id":"item_1","type":"error","message":"patch rejected: writing outside of the project"}}
{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":[{"path":"src/main.rs","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"rm -rf /","aggregated_output":"","exit_code":null,"status":"declined"}}
{"type":"item.completed","item":{"id":"item_4","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}
{"type":"turn.completed","usage":{"input_tokens":900,"output_tokens":100}}"#,
        );
        assert!(activity.turn_completed);
        assert_eq!(activity.failed_file_changes, vec!["/etc/hosts"]);
        assert_eq!(activity.files_touched, vec!["src/main.rs"]);
        assert_eq!(
            activity.notices,
            vec!["patch rejected: writing outside of the project"]
        );
        assert_eq!(activity.commands, 1);
        assert_eq!(activity.last_command.as_deref(), Some("false"));
        assert_eq!(activity.usage.total(), 1000);
        assert_eq!(
            activity.status_line(),
            "8 events, 1 command, last: false, 1 file, 1 file blocked, 1.0k tokens"
        );
    }

    #[test]
    fn unknown_types_and_extra_fields_are_tolerated() {
        assert_eq!(
            decode(r#"{"type":"session.configured","model":"gpt-5"}"#),
            Some(Event::Unknown)
        );
        assert_eq!(decode(r#"{"no_type":true}"#), Some(Event::Unknown));
        assert_eq!(
            decode(
                r#"{"type":"item.completed","item":{"id":"i","type":"mcp_tool_call","server":"x","tool":"y"}}"#
            ),
            Some(Event::ItemCompleted(Item::Other {
                kind: "mcp_tool_call".into()
            }))
        );
        assert_eq!(
            decode(
                r#"{"type":"item.updated","item":{"id":"i","type":"todo_list","items":[{"text":"a","completed":false}]}}"#
            ),
            Some(Event::ItemUpdated(Item::Other {
                kind: "todo_list".into()
            }))
        );
        assert_eq!(
            decode(r#"{"type":"item.started","item":{"id":"i","type":"hologram","shiny":1}}"#),
            Some(Event::ItemStarted(Item::Other {
                kind: "hologram".into()
            }))
        );
        assert_eq!(decode(r#"{"type":"item.completed"}"#), Some(Event::Unknown));
        assert_eq!(
            decode(
                r#"{"type":"item.completed","extra":[1,2],"item":{"id":"i","type":"agent_message","text":"hi","new_field":{"a":1}}}"#
            ),
            Some(Event::ItemCompleted(Item::AgentMessage {
                text: "hi".into()
            }))
        );
        assert_eq!(
            decode(
                r#"{"type":"item.completed","item":{"type":"command_execution","command":["bash","-lc","ls"],"exit_code":"zero"}}"#
            ),
            Some(Event::ItemCompleted(Item::CommandExecution {
                command: "bash -lc ls".into(),
                exit_code: None,
                status: String::new(),
            }))
        );
        assert_eq!(
            decode(
                r#"{"type":"item.completed","item":{"type":"file_change","changes":[{"kind":"add"},{"path":"a","kind":"add","move_path":null}],"status":"completed"}}"#
            ),
            Some(Event::ItemCompleted(Item::FileChange {
                changes: vec![FileChangeEntry {
                    path: "a".into(),
                    kind: "add".into()
                }],
                status: "completed".into(),
            }))
        );
        assert_eq!(
            decode(r#"{"type":"turn.failed","error":"boom"}"#),
            Some(Event::TurnFailed {
                message: "boom".into()
            })
        );

        let mut activity = Activity::default();
        assert!(activity.feed(r#"{"type":"brand.new.event","payload":{}}"#));
        assert_eq!(activity.events, 1);
    }

    #[test]
    fn non_json_lines_are_ignored() {
        for line in [
            "",
            "   ",
            "WARNING: proceeding, even though we could not update PATH",
            "[2025-01-01T00:00:00] codex starting",
            "{not json",
            "42",
            "\"a string\"",
            "[1,2,3]",
            "null",
        ] {
            assert_eq!(decode(line), None, "{line:?}");
        }
        let mut activity = Activity::default();
        assert!(!activity.feed("Reading prompt from stdin..."));
        assert!(activity.feed("  {\"type\":\"turn.started\"}\r"));
        assert_eq!(activity.events, 1);
    }

    #[test]
    fn missing_usage_fields_are_zero() {
        assert_eq!(
            decode(
                r#"{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":null,"output_tokens":-3}}"#
            ),
            Some(Event::TurnCompleted {
                usage: Usage {
                    input_tokens: 10,
                    ..Usage::default()
                }
            })
        );
        assert_eq!(
            decode(r#"{"type":"turn.completed"}"#),
            Some(Event::TurnCompleted {
                usage: Usage::default()
            })
        );
        let usage: Usage = serde_json::from_str(r#"{"output_tokens":5}"#).unwrap();
        assert_eq!(
            usage,
            Usage {
                output_tokens: 5,
                ..Usage::default()
            }
        );

        let activity = feed_all(
            r#"{"type":"turn.completed","usage":{"input_tokens":100,"output_tokens":10}}
{"type":"turn.completed","usage":{"input_tokens":50,"cached_input_tokens":20,"cache_write_input_tokens":5,"reasoning_output_tokens":2}}"#,
        );
        assert_eq!(
            activity.usage,
            Usage {
                input_tokens: 150,
                cached_input_tokens: 20,
                cache_write_input_tokens: 5,
                output_tokens: 10,
                reasoning_output_tokens: 2,
            }
        );
    }

    #[test]
    fn cost_arithmetic() {
        let price = Price {
            input: 1.25,
            cached_input: Some(0.125),
            cache_write: None,
            output: 10.0,
        };
        let usage = Usage {
            input_tokens: 1200,
            cached_input_tokens: 200,
            output_tokens: 50,
            ..Usage::default()
        };
        // 1000 * 1.25 + 200 * 0.125 + 50 * 10 = 1775 micro-dollars.
        assert!((cost(&usage, &price) - 0.001775).abs() < 1e-12);

        // Unset cached and cache-write prices fall back to the input price.
        let flat = Price {
            input: 2.0,
            cached_input: None,
            cache_write: None,
            output: 8.0,
        };
        let usage = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 400_000,
            cache_write_input_tokens: 100_000,
            output_tokens: 500_000,
            reasoning_output_tokens: 300_000,
        };
        assert!((cost(&usage, &flat) - 6.0).abs() < 1e-9);

        let write = Price {
            input: 3.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
            output: 15.0,
        };
        // 500k plain * 3 + 400k * 0.3 + 100k * 3.75 + 500k * 15 = 1.5 + 0.12 + 0.375 + 7.5.
        assert!((cost(&usage, &write) - 9.495).abs() < 1e-9);

        // Inconsistent counts never underflow.
        let odd = Usage {
            input_tokens: 10,
            cached_input_tokens: 50,
            ..Usage::default()
        };
        assert!((cost(&odd, &write) - 50.0 * 0.3 / 1e6).abs() < 1e-12);
        assert_eq!(cost(&Usage::default(), &write), 0.0);
    }

    #[test]
    fn price_decoding() {
        let price: Price = serde_json::from_str(r#"{"input":1.25,"output":10}"#).unwrap();
        assert_eq!(
            price,
            Price {
                input: 1.25,
                cached_input: None,
                cache_write: None,
                output: 10.0
            }
        );
        assert!(serde_json::from_str::<Price>(r#"{"input":1,"output":2,"outptu":3}"#).is_err());
        assert!(serde_json::from_str::<Price>(r#"{"input":1}"#).is_err());
    }

    #[test]
    fn classify_failure_cases() {
        use FailureKind::*;
        let cases = [
            (
                "unexpected status 401 Unauthorized: invalid token",
                Authentication,
            ),
            ("unexpected status 403 Forbidden: {}", Authentication),
            ("Invalid API key", Authentication),
            ("authentication failed", Authentication),
            (
                "unexpected status 429 Too Many Requests: slow down",
                RateLimit,
            ),
            (
                "Rate limit reached for gpt-5 in organization org-x",
                RateLimit,
            ),
            (
                "You exceeded your current quota, please check your plan",
                RateLimit,
            ),
            (
                "unexpected status 500 Internal Server Error: oops",
                ServerError,
            ),
            ("unexpected status 502 Bad Gateway", ServerError),
            ("unexpected status 503 Service Unavailable", ServerError),
            ("HTTP/1.1 504 while waiting", ServerError),
            ("status code: 529", ServerError),
            ("the model is overloaded, try later", ServerError),
            (
                "We\u{2019}re currently experiencing high demand, which may cause temporary errors.",
                ServerError,
            ),
            (
                "stream disconnected before completion: stream closed",
                Stream,
            ),
            ("error decoding response body: unexpected EOF", Stream),
            ("connection reset by peer", Stream),
            (
                "error sending request: Connection refused (os error 111)",
                Unreachable,
            ),
            (
                "dns error: failed to lookup address information",
                Unreachable,
            ),
            ("failed to connect to api.openai.com", Unreachable),
            ("request timed out", Unreachable),
            ("the model refused to do the task", Other),
            ("", Other),
            // Numbers that merely contain a status code are not status codes.
            ("context window exceeded: 1429 tokens over the limit", Other),
            (
                "input of 4290 tokens and 401k characters is too long",
                Other,
            ),
            ("used 500 tokens, 503 left", Other),
            ("status 4011 is not a thing", Other),
            ("addnsx", Other),
        ];
        for (message, expected) in cases {
            assert_eq!(classify_failure(message), expected, "{message:?}");
        }
    }

    #[test]
    fn failure_kind_properties() {
        use FailureKind::*;
        for kind in [RateLimit, ServerError, Stream, Unreachable] {
            assert!(kind.retryable(), "{kind:?}");
            assert!(kind.is_infrastructure(), "{kind:?}");
        }
        for kind in [Authentication, Other] {
            assert!(!kind.retryable(), "{kind:?}");
            assert!(!kind.is_infrastructure(), "{kind:?}");
        }
        assert_eq!(serde_json::to_string(&RateLimit).unwrap(), "\"rate-limit\"");
        assert_eq!(
            serde_json::from_str::<FailureKind>("\"server-error\"").unwrap(),
            ServerError
        );
        let mut activity = Activity::default();
        activity.feed(r#"{"type":"turn.failed","error":{"message":"stream disconnected before completion: x"}}"#);
        assert_eq!(activity.failure, Some(Stream));
        assert!(activity.status_line().ends_with("failed: stream"));
    }

    #[test]
    fn caps_and_dedup() {
        let mut activity = Activity::default();
        for i in 0..1200 {
            activity.feed(&format!(
                r#"{{"type":"item.completed","item":{{"type":"file_change","changes":[{{"path":"f{i}","kind":"add"}},{{"path":"f0","kind":"update"}}],"status":"completed"}}}}"#
            ));
        }
        assert_eq!(activity.files_touched.len(), MAX_FILES);
        assert_eq!(activity.files_touched[0], "f0");
        assert_eq!(activity.files_touched[1], "f1");

        let long = "x".repeat(5000);
        for _ in 0..60 {
            activity.feed(&format!(r#"{{"type":"error","message":"{long}"}}"#));
        }
        assert_eq!(activity.notices.len(), MAX_NOTICES);
        assert_eq!(activity.notices[0].chars().count(), MAX_NOTICE_CHARS);
        assert!(activity.notices[0].ends_with('…'));

        activity.feed(&format!(
            r#"{{"type":"item.completed","item":{{"type":"agent_message","text":"{long}"}}}}"#
        ));
        assert_eq!(
            activity.last_message.as_ref().unwrap().chars().count(),
            MAX_MESSAGE_CHARS
        );
        activity
            .feed(r#"{"type":"item.completed","item":{"type":"agent_message","text":"done ✓"}}"#);
        assert_eq!(activity.last_message.as_deref(), Some("done ✓"));
    }

    #[test]
    fn status_line_formats() {
        assert_eq!(Activity::default().status_line(), "0 events, 0 commands");
        assert_eq!(compact_count(950), "950");
        assert_eq!(compact_count(1_300), "1.3k");
        assert_eq!(compact_count(12_345), "12k");
        assert_eq!(compact_count(2_100_000), "2.1M");
        let activity = Activity {
            events: 12,
            commands: 3,
            last_command: Some(format!("cargo test\n{}", "y".repeat(10))),
            files_touched: vec!["a".into(), "b".into()],
            usage: Usage {
                input_tokens: 1000,
                output_tokens: 300,
                ..Usage::default()
            },
            ..Activity::default()
        };
        assert_eq!(
            activity.status_line(),
            "12 events, 3 commands, last: cargo test, 2 files, 1.3k tokens"
        );
        let long = Activity {
            last_command: Some("z".repeat(200)),
            ..Activity::default()
        };
        let line = long.status_line();
        assert!(line.ends_with('…'));
        assert!(line.chars().count() < 100);
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_secrets("key sk-abcdefghijklmnopqrstuvwx, rejected"),
            "key [redacted], rejected"
        );
        assert_eq!(
            mask_secrets("Authorization: Bearer abcdefghijklmnopqrst"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(mask_secrets("sk-short stays"), "sk-short stays");
        assert_eq!(
            mask_secrets("plain  text\twith\nbreaks"),
            "plain  text\twith\nbreaks"
        );
    }

    #[test]
    fn activity_round_trips_through_json() {
        let activity = feed_all(SUCCESS);
        let json = serde_json::to_string(&activity).unwrap();
        let back: Activity = serde_json::from_str(&json).unwrap();
        assert_eq!(back.files_touched, activity.files_touched);
        assert_eq!(back.usage, activity.usage);
        assert_eq!(back.thread_id, activity.thread_id);
    }
}
