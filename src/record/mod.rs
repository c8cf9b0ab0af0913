//! What the phases of a run produced, as `result.json`, the run journal and `--json` store
//! them: a unit's status and result, each attempt's summary, the scope's rejections, the
//! verdict, the agent's activity and usage, the landing.
//!
//! Plain data below the phases, so a phase's output can be stored and read back by the state
//! and the orchestration without either importing the other, and no phase imports another's
//! types. The code that makes each value lives with its phase (scope, verify, agent, land);
//! here are only the types and their pure accessors.
//!
//! May not: hold logic beyond pure accessors, or import a phase.

mod activity;
mod verdict;

use std::path::PathBuf;

pub use activity::{Activity, FailureKind, Usage};
pub use verdict::{
    BaselineCheck, BaselineInfo, CheckResult, Counts, Expectation, ExpectationStatus, Kind,
    Outcome, Verdict,
};

use crate::error::exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// A commit landed on the target branch.
    Landed,
    /// The unit had landed before; nothing was run.
    AlreadyLanded,
    /// The change broke the scope policy; nothing landed, the patch is kept.
    Rejected,
    /// The branch moved and the change overlaps; nothing was written.
    Conflict,
    /// The agent outlived its timeout; its container was killed.
    Timeout,
    /// The agent exited with a non-zero code; nothing landed, the patch is kept.
    AgentFailed,
    /// The agent changed nothing.
    NoChange,
    /// A check failed in the clean verify container; nothing landed, the patch is kept.
    VerifyFailed,
    /// A check could not start in the verify image (its command is missing there): the
    /// project's configuration, not the change; nothing landed, the patch is kept.
    ConfigError,
    /// Verification was stopped by the infrastructure (OOM kill, engine error); nothing
    /// landed, the patch is kept. Says nothing about the change.
    InfraError,
    /// Every attempt failed (the retries, then the fallback agent); each one's patch is kept.
    Failed,
    /// Not started: the circuit breaker had opened.
    Skipped,
    /// Its attempts reached `[run] max_cost_usd` or `[agent] max_tokens`; no further attempt
    /// started. Every attempt's patch is kept.
    OverBudget,
}

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Landed | Status::AlreadyLanded => exit::OK,
            Status::Rejected => exit::REJECTED,
            Status::Conflict => exit::CONFLICT,
            Status::Timeout => exit::TIMEOUT,
            Status::AgentFailed => exit::AGENT_FAILED,
            Status::NoChange => exit::NO_CHANGE,
            Status::VerifyFailed => exit::VERIFY_FAILED,
            Status::ConfigError => exit::CONFIG,
            Status::InfraError => exit::INFRA,
            Status::Failed | Status::OverBudget => exit::FAILED,
            Status::Skipped => exit::BREAKER,
        }
    }
}

/// What one unit came to; stored as `result.json` and printed with `--json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnitResult {
    pub unit: String,
    pub title: String,
    pub status: Status,
    pub run_id: String,
    pub branch: String,
    pub agent: String,
    pub snapshot_commit: String,
    pub snapshot_tree: String,
    pub unit_image: Option<String>,
    pub agent_exit_code: Option<i64>,
    pub files_changed: usize,
    pub tree: Option<String>,
    pub patch: Option<PathBuf>,
    pub patch_sha256: Option<String>,
    pub rejections: Vec<Rejection>,
    pub verdict: Option<crate::record::Verdict>,
    /// The sha256 of `verdict`'s verification record (`.git/boxdelegate/verify/<sha256>.json`),
    /// which the landed commit's `Boxdelegate-Record` trailer names.
    #[serde(default)]
    pub record: Option<String>,
    /// When the branch had moved: the verdict on the merged tree that would land.
    pub merged_verdict: Option<crate::record::Verdict>,
    /// The sha256 of `merged_verdict`'s verification record.
    #[serde(default)]
    pub merged_record: Option<String>,
    pub landed: Option<Landed>,
    pub log: Option<PathBuf>,
    pub message: String,
    /// Things worth knowing that did not decide the status.
    pub warnings: Vec<String>,
    /// Requests the egress proxy refused (`METHOD URL`), with `network = "proxy"`.
    #[serde(default)]
    pub network_refused: Vec<String>,
    /// Tokens the agent used (codex), summed over its turn.
    pub usage: Option<crate::record::Usage>,
    /// Estimated cost in USD, from `[prices]`.
    pub cost_usd: Option<f64>,
    /// Why codex's turn failed, when it did.
    pub agent_failure: Option<crate::record::FailureKind>,
    /// What codex reported doing.
    pub agent_activity: Option<crate::record::Activity>,
    pub seconds: f64,
    /// Seconds the agent containers ran, over every attempt.
    #[serde(default)]
    pub agent_seconds: f64,
    /// Every attempt, in order (infrastructure retries included).
    #[serde(default)]
    pub attempts: Vec<AttemptSummary>,
    /// Attempts after the first that were made because a change failed (infrastructure
    /// retries not counted).
    #[serde(default)]
    pub retries: u32,
    /// The fallback agent made the final attempt.
    #[serde(default)]
    pub fallback: bool,
    /// The directory of the attempt this result comes from (patch, change set, logs).
    #[serde(default)]
    pub attempt_dir: Option<PathBuf>,
    /// For `apply`: what landing needs.
    pub co_author: String,
    pub body: String,
    /// Where the time went, per phase.
    #[serde(default)]
    pub timings: crate::timings::UnitTimings,
}

/// One attempt at a unit, as the final result lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttemptSummary {
    pub n: u32,
    pub role: crate::record::Role,
    pub agent: String,
    pub status: Status,
    /// What stopped it when the infrastructure did (`oom`, `timeout`, `engine`, `model-endpoint`, `verify`).
    pub infra: Option<String>,
    pub message: String,
    pub patch: Option<PathBuf>,
    pub dir: PathBuf,
    pub agent_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The configured agent.
    Primary,
    /// `[agent.fallback]`, after the primary's retries.
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// The path, escaped for display.
    pub path: String,
    /// The rule's name: out-of-scope, denied, protected, git-path, path-name, special-file,
    /// symlink-escape, setuid, exec-bit, file-size, limit-files, limit-bytes, secret.
    pub rule: String,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} [{}] (hint: {})",
            self.path, self.message, self.rule, self.hint
        )
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Landed {
    Committed {
        commit: String,
        branch: String,
        /// The branch head the commit was placed on when it had moved since the snapshot.
        rebased_onto: Option<String>,
        worktree_updated: bool,
        /// What the user should do, when something is left for them.
        note: Option<String>,
    },
    Conflict {
        branch: String,
        head: String,
        paths: Vec<String>,
    },
    /// The branch already held exactly the tree that would land (a re-run of a change that
    /// landed): nothing was committed.
    Already { commit: String, branch: String },
}
