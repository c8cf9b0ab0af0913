//! Agent adapters: how a unit's prompt becomes a process in the agent container.
//!
//! An [`Agent`] only describes the container's command and environment; the runner owns the
//! container's life (create, start, timeout, extraction). The prompt reaches the agent as a
//! file piped to its stdin, never through argv.

use crate::config::unit::Unit;
use crate::config::{AgentConfig, AgentKind};
use crate::error::{Error, Result};

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
}

pub trait Agent: Send + Sync {
    /// Short name recorded in trailers and reports (`command`, `codex`).
    fn name(&self) -> &'static str;
    fn spec(&self, unit: &Unit) -> AgentSpec;
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
        }
    }
}

/// The agent for a unit's effective `[agent]` configuration; fails on what cannot run.
pub fn for_config(config: &AgentConfig, unit: &Unit) -> Result<Box<dyn Agent>> {
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
        AgentKind::Codex => Err(Error::config_hint(
            crate::config::CONFIG_FILE,
            "agent.kind: \"codex\" is not available in this version of boxdelegate",
            "use kind = \"command\" for now",
        )),
    }
}

/// `KEY=VALUE` for each host variable named in `[agent] env`; a missing one is an error raised
/// before any container starts.
pub fn host_env(names: &[String]) -> Result<Vec<String>> {
    names
        .iter()
        .map(|name| match std::env::var(name) {
            Ok(v) => Ok(format!("{name}={v}")),
            Err(_) => Err(Error::config_hint(
                crate::config::CONFIG_FILE,
                format!("agent.env: {name} is not set in this environment"),
                format!("export {name} before running, or remove it from [agent] env"),
            )),
        })
        .collect()
}
