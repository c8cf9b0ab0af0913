//! Agent adapters: how a unit's prompt becomes a process in the agent container.
//!
//! An [`Agent`] only describes the container's command and environment; the runner owns the
//! container's life (create, start, timeout, extraction). The prompt reaches the agent as a
//! file piped to its stdin, never through argv.
//!
//! May not: create, start or remove a container (the runner does); pass the prompt through argv.

use std::path::Path;

use crate::config::unit::Unit;
use crate::config::{AgentConfig, AgentKind};
use crate::error::{Error, Result};

pub mod codex;
pub mod events;
pub mod prompt;

/// Where the runner uploads the prompt in the agent container (outside `/work`, so it is never
/// part of the change).
pub const PROMPT_DIR: &str = "/tmp";
pub const PROMPT_FILE: &str = ".boxdelegate-prompt.md";

/// What the runner starts.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// The co-author trailer of landed commits.
    pub co_author: String,
    /// Files uploaded into the container before it starts (e.g. credentials).
    pub files: Vec<AgentFile>,
    /// An image whose `/opt/boxdelegate` is mounted read-only into the container (from the
    /// volume filled from it).
    pub tool_image: Option<String>,
    /// How to read the agent's output.
    pub events: Events,
    /// Values that must never appear in a stored or printed text.
    pub secrets: Vec<String>,
}

/// A file put into the agent container at start, owned by the container's user.
#[derive(Debug, Clone)]
pub struct AgentFile {
    /// An existing directory in the container.
    pub dir: String,
    /// The path under `dir`; missing parent directories are created (mode 0700).
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The agent's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// Plain text.
    Text,
    /// `codex exec --json` lines.
    Codex,
}

pub trait Agent: Send + Sync {
    /// Short name recorded in trailers and reports (`command`, `codex`).
    fn name(&self) -> &'static str;
    fn spec(&self, unit: &Unit) -> AgentSpec;
    /// The Codex CLI version whose image the agent needs, if any.
    fn codex_version(&self) -> Option<&str> {
        None
    }
}

/// `kind = "command"`: `[agent] command` run with `sh -c` in `/work`, the prompt on stdin.
pub struct CommandAgent {
    pub command: String,
}

impl Agent for CommandAgent {
    fn name(&self) -> &'static str {
        "command"
    }

    fn spec(&self, unit: &Unit) -> AgentSpec {
        AgentSpec {
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("exec sh -c \"$BOXDELEGATE_COMMAND\" < {PROMPT_DIR}/{PROMPT_FILE}"),
            ],
            env: vec![
                format!("BOXDELEGATE_COMMAND={}", self.command),
                format!("BOXDELEGATE_UNIT_ID={}", unit.meta.id),
                format!("BOXDELEGATE_UNIT_TITLE={}", unit.meta.title),
            ],
            co_author: "boxdelegate command agent <command-agent@boxdelegate.invalid>".into(),
            files: vec![],
            tool_image: None,
            events: Events::Text,
            secrets: vec![],
        }
    }
}

/// The agent for a unit's effective `[agent]` configuration; fails on what cannot run.
pub fn for_config(config: &AgentConfig, unit: &Unit, root: &Path) -> Result<Box<dyn Agent>> {
    match config.kind {
        AgentKind::Command => {
            let command = config.command.clone().filter(|c| !c.trim().is_empty()).ok_or_else(|| {
                Error::config_hint(
                    crate::config::CONFIG_FILE,
                    format!("agent.command: unit {} uses kind = \"command\" but no command is set", unit.meta.id),
                    "set [agent] command in boxdelegate.toml (or agent.command in the unit file)",
                )
            })?;
            Ok(Box::new(CommandAgent { command }))
        }
        AgentKind::Codex => Ok(Box::new(codex::CodexAgent::from_config(config, root)?)),
    }
}

/// `KEY=VALUE` for each host variable named in `[agent] env`; a missing one is an error raised
/// before any container starts.
pub fn host_env(names: &[String]) -> Result<Vec<String>> {
    names
        .iter()
        .map(|name| match std::env::var(name) {
            // A Codex session's own variables would make the agent believe it runs inside that
            // session; they are never forwarded.
            _ if SESSION_VARS.contains(&name.as_str()) => Err(Error::config_hint(
                crate::config::CONFIG_FILE,
                format!("agent.env: {name} is a Codex session variable and is never passed to a container"),
                "remove it from [agent] env; pass credentials such as CODEX_API_KEY instead",
            )),
            Ok(v) => Ok(format!("{name}={v}")),
            Err(_) => Err(Error::config_hint(
                crate::config::CONFIG_FILE,
                format!("agent.env: {name} is not set in this environment"),
                format!("export {name} before running, or remove it from [agent] env"),
            )),
        })
        .collect()
}

/// Variables a Codex session sets for the processes it starts.
pub const SESSION_VARS: &[&str] = &[
    "CODEX_THREAD_ID",
    "CODEX_SESSION_ID",
    "CODEX_CI",
    "CODEX_VERSION",
    "CODEX_SANDBOX",
    "CODEX_SANDBOX_NETWORK_DISABLED",
];

/// Replaces every secret value in stored or printed text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// From `KEY=VALUE` environment entries and extra secret strings; values shorter than 6
    /// characters are ignored (they would redact ordinary words).
    pub fn new(env: &[String], extra: &[String]) -> Redactor {
        let mut secrets: Vec<String> = env
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
            .chain(extra.iter().cloned())
            .filter(|v| v.len() >= 6)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        crate::output::remember_secrets(&secrets);
        Redactor { secrets }
    }

    /// Whether any secret occurs in `data`.
    pub fn occurs_in(&self, data: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|s| data.windows(s.len()).any(|w| w == s.as_bytes()))
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_replaces_every_secret() {
        let r = Redactor::new(
            &["CODEX_API_KEY=sk-abcdef123".into(), "SHORT=abc".into()],
            &["tok-999999".into()],
        );
        assert_eq!(
            r.redact("key sk-abcdef123 and tok-999999, abc stays"),
            "key [redacted] and [redacted], abc stays"
        );
    }

    #[test]
    fn session_variables_are_never_forwarded() {
        let err = host_env(&["CODEX_THREAD_ID".into()]).unwrap_err();
        assert!(err.to_string().contains("never passed"), "{err}");
    }
}
