//! What an agent reported doing (codex's event stream summed up) and the tokens it used.
//! Decoding the stream is `agent::events`'s; these are the values it produces.
//!
//! May not: decode the stream or hold logic beyond pure accessors.

use serde::{Deserialize, Serialize};

/// Token counts of one or more turns. Cached input is part of input, reasoning output part of
/// output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_output_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.cache_write_input_tokens = self
            .cache_write_input_tokens
            .saturating_add(other.cache_write_input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_output_tokens = self
            .reasoning_output_tokens
            .saturating_add(other.reasoning_output_tokens);
    }

    /// Input plus output tokens (cached and reasoning tokens are already inside those).
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Why a turn failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The provider refused the credentials (401, 403, bad API key).
    Authentication,
    /// Too many requests or an exhausted quota (429).
    RateLimit,
    /// The provider failed (5xx, overloaded).
    ServerError,
    /// The response stream was cut before completion.
    Stream,
    /// The provider could not be reached (refused, DNS, timeout).
    Unreachable,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Whether running the same unit again may succeed without any change.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimit
                | FailureKind::ServerError
                | FailureKind::Stream
                | FailureKind::Unreachable
        )
    }

    /// Whether the failure lies with the provider or the network rather than the agent's work or
    /// the configuration.
    pub fn is_infrastructure(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimit
                | FailureKind::ServerError
                | FailureKind::Unreachable
                | FailureKind::Stream
        )
    }
}

/// What a session has done so far, fed line by line (the progress display and the unit's result
/// read it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Activity {
    pub thread_id: Option<String>,
    pub turn_completed: bool,
    /// The message of the last `turn.failed`.
    pub turn_failed: Option<String>,
    pub failure: Option<FailureKind>,
    /// Summed over `turn.completed` events.
    pub usage: Usage,
    pub last_command: Option<String>,
    /// Completed (not declined) command executions.
    pub commands: u32,
    /// Distinct paths of completed `file_change` items, in first-seen order.
    pub files_touched: Vec<String>,
    /// Paths of `file_change` items with status `failed` (codex's inner sandbox blocked them).
    pub failed_file_changes: Vec<String>,
    /// Messages of `error` events and error items.
    pub notices: Vec<String>,
    /// The last agent message.
    pub last_message: Option<String>,
    /// JSON events seen.
    pub events: u64,
}
