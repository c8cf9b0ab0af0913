//! `boxdelegate.toml`, profiles and their validation: parse, then resolve, before any container.
//!
//! Parsing is strict: unknown keys and wrong types are errors that name the file, the key and the
//! line. Nothing in this module talks to the engine or writes to the repository (except `init`).
//!
//! May not: accept an unknown key; talk to the engine; write to the repository (except `init`).

pub mod allow;
pub mod init;
pub mod plan;
pub mod profile;
pub mod unit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "boxdelegate.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub project: ProjectConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub run: RunConfig,
    /// Prices per model, in USD per million tokens, for the cost estimate (`"*"` matches any
    /// model). No prices are built in: they would silently go stale.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Profile name: an embedded one (rust, node, python, go, generic) or one defined in
    /// `.boxdelegate/profiles/NAME.toml`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Overrides the profile's toolchain image (the image the dependency image starts from).
    #[serde(default)]
    pub base_image: Option<String>,
    /// Directory of the unit files, relative to the repository root.
    #[serde(default = "default_units_dir")]
    pub units_dir: String,
    /// The engine runtime every container runs under, e.g. "runsc" (gVisor) where it is
    /// installed; unset means the engine's default (usually runc).
    #[serde(default)]
    pub runtime: Option<String>,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig {
            profile: default_profile(),
            base_image: None,
            units_dir: default_units_dir(),
            runtime: None,
        }
    }
}

fn default_profile() -> String {
    "generic".into()
}
fn default_units_dir() -> String {
    "units".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// A shell command run with `sh -c` in `/work`, the prompt on stdin.
    #[default]
    Command,
    /// The OpenAI Codex CLI (`codex exec`).
    Codex,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub kind: AgentKind,
    /// For `kind = "command"`: the command line.
    #[serde(default)]
    pub command: Option<String>,
    /// Overrides the image the agent runs in.
    #[serde(default)]
    pub image: Option<String>,
    /// Model name passed to the agent; unset means the agent's own default.
    #[serde(default)]
    pub model: Option<String>,
    /// Names of host environment variables passed to the agent container at start.
    #[serde(default)]
    pub env: Vec<String>,
    /// The tokens (input and output) a unit's attempts may use: once they have, no further
    /// attempt starts (status `over-budget`).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Wall-clock limit for one agent attempt, e.g. "30m" or 1800 (seconds).
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Warn when the agent has printed nothing for this long (default 30 minutes).
    #[serde(default, with = "duration_opt")]
    pub silence_warning: Option<Duration>,
    /// The agent container's network: "none" (default, loopback only), "proxy" (only the
    /// `allow` list, through an egress proxy), "open" (the engine's default bridge), or the
    /// name of an existing engine network (e.g. an internal network with a model gateway).
    #[serde(default)]
    pub network: Option<String>,
    /// With `network = "proxy"`: the `host:port` destinations the proxy lets through
    /// (default: the model API's host).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// With `network = "proxy"`: the engine network the proxy reaches them through
    /// (default "bridge").
    #[serde(default)]
    pub egress_network: Option<String>,
    /// With `kind = "codex"` and `network = "proxy"`: the model gateway (default on). The
    /// agent gets the gateway's address and a dummy key; the egress proxy forwards only the
    /// model API's `POST …/responses` to the provider, adding the credential itself, so the
    /// key never enters the agent container. `false` passes the key into the container and
    /// lets the agent reach the model's host through the proxy instead.
    #[serde(default)]
    pub gateway: Option<bool>,
    /// For `kind = "codex"`: the Codex CLI version (default 0.163.0).
    #[serde(default)]
    pub codex_version: Option<String>,
    /// For `kind = "codex"`: `model_reasoning_effort` (e.g. "low", "medium", "high").
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// For `kind = "codex"`: extra `-c key=value` overrides.
    #[serde(default)]
    pub codex_config: Vec<String>,
    /// For `kind = "codex"`: a Codex `auth.json` copied into the container's `CODEX_HOME` at
    /// start (relative to the repository root or absolute).
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// For `kind = "codex"`: a custom model provider (a local model or a gateway).
    #[serde(default)]
    pub provider: Option<CodexProvider>,
    /// Fresh attempts after a change is rejected or fails verification (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Another agent configuration that gets the unit once the retries are spent (same keys
    /// as `[agent]`, without a fallback of its own).
    #[serde(default)]
    pub fallback: Option<Box<AgentConfig>>,
}

/// How a run with several units behaves.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Units worked on at once (default: from the engine's CPUs and memory).
    #[serde(default)]
    pub jobs: Option<usize>,
    /// Retries of an attempt stopped by the infrastructure (engine error, OOM kill, agent
    /// timeout, model endpoint failure), apart from `[agent] retries` (default 2).
    #[serde(default)]
    pub infra_retries: Option<u32>,
    /// Wait before the first infrastructure retry, doubled for each further one (default 10s).
    #[serde(default, with = "duration_opt")]
    pub backoff: Option<Duration>,
    /// Consecutive infrastructure failures after which no new unit is started (default 3).
    #[serde(default)]
    pub breaker: Option<u32>,
    /// The estimated cost (USD, from `[prices]`) a unit's attempts may reach: once they have,
    /// no further attempt starts (status `over-budget`).
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

/// A model provider for Codex, speaking the Responses API.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CodexProvider {
    /// A short identifier, e.g. "gateway".
    pub name: String,
    /// E.g. "http://gateway.internal:8080/v1".
    pub base_url: String,
    /// The variable holding the key (it must be listed in `[agent] env`).
    pub env_key: String,
    /// Request and stream retries (codex's default when unset).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Overrides the profile's test command ("" disables it).
    #[serde(default)]
    pub test: Option<String>,
    #[serde(default)]
    pub lint: Option<String>,
    #[serde(default)]
    pub typecheck: Option<String>,
    /// Wall-clock limit for each check.
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Re-runs of a failing check before it counts as failed (a pass on a re-run is `flaky`).
    #[serde(default)]
    pub reruns: Option<u32>,
    /// Run the checks on the unmodified base too, to tell regressions from pre-existing
    /// failures (default true).
    #[serde(default)]
    pub baseline: Option<bool>,
    /// When the branch moved and the landed tree is a merge: "reverify" it first (default)
    /// or "trust" the verification of the unit's own tree.
    #[serde(default)]
    pub merged: Option<MergedPolicy>,
    /// A unit whose change edits the profile's dependency manifests (a lockfile): "rebuild"
    /// its verify image with the new dependencies (default) or "refuse" the change.
    #[serde(default)]
    pub dependency_changes: Option<DependencyChanges>,
    /// Judge a test runner that reports no test names by its exit code alone: a failure
    /// that the base shares, compared by exit code, is `pre-existing` and lands; a pass
    /// without a count or a name is a pass. Off by default (such a check is `inconclusive`
    /// and does not land).
    #[serde(default)]
    pub trust_exit_code: Option<bool>,
    /// Hidden acceptance tests (globs): files of the repository that no agent's snapshot
    /// holds, added only in the verify container (for the baseline and the change). The
    /// prompt says they exist; a change that writes at one is rejected (rule `hidden`).
    #[serde(default)]
    pub hidden: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DependencyChanges {
    #[default]
    Rebuild,
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MergedPolicy {
    #[default]
    Reverify,
    Trust,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory limit per container, e.g. "4g" (bytes if a bare number).
    #[serde(default, with = "size_opt")]
    pub memory: Option<u64>,
    /// CPUs per container, e.g. 2 or 1.5.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of processes per container.
    #[serde(default)]
    pub pids: Option<i64>,
    /// Maximum number of files a change may touch.
    #[serde(default)]
    pub max_files: Option<u64>,
    /// Maximum total size of the files a change writes, e.g. "50m".
    #[serde(default, with = "size_opt")]
    pub max_bytes: Option<u64>,
    /// Disk a container may write (its writable layer), e.g. "10g".
    #[serde(default, with = "size_opt")]
    pub disk: Option<u64>,
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Price of cached input tokens; the input price when unset.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Price of input tokens written to the cache; the input price when unset.
    #[serde(default)]
    pub cache_write: Option<f64>,
    pub output: f64,
}

/// Effective limits with the defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub memory: u64,
    pub cpus: f64,
    pub pids: i64,
    pub max_files: u64,
    pub max_bytes: u64,
    pub disk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 4 << 30,
            cpus: 2.0,
            pids: 512,
            max_files: 1000,
            max_bytes: 50 << 20,
            disk: 10 << 30,
        }
    }
}

impl LimitsConfig {
    pub fn resolve(&self) -> Limits {
        let d = Limits::default();
        Limits {
            memory: self.memory.unwrap_or(d.memory),
            cpus: self.cpus.unwrap_or(d.cpus),
            pids: self.pids.unwrap_or(d.pids),
            max_files: self.max_files.unwrap_or(d.max_files),
            max_bytes: self.max_bytes.unwrap_or(d.max_bytes),
            disk: self.disk.unwrap_or(d.disk),
        }
    }

    /// These limits, with the unset ones taken from `base`.
    pub fn over(&self, base: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            memory: self.memory.or(base.memory),
            cpus: self.cpus.or(base.cpus),
            pids: self.pids.or(base.pids),
            max_files: self.max_files.or(base.max_files),
            max_bytes: self.max_bytes.or(base.max_bytes),
            disk: self.disk.or(base.disk),
        }
    }

    /// One warning per limit set looser than its default.
    pub fn loosened(&self) -> Vec<String> {
        let (d, l) = (Limits::default(), self.resolve());
        let mib = |b: u64| format!("{} MiB", b >> 20);
        [
            ("memory", l.memory > d.memory, mib(l.memory), mib(d.memory)),
            (
                "cpus",
                l.cpus > d.cpus,
                l.cpus.to_string(),
                d.cpus.to_string(),
            ),
            (
                "pids",
                l.pids > d.pids,
                l.pids.to_string(),
                d.pids.to_string(),
            ),
            (
                "max_files",
                l.max_files > d.max_files,
                l.max_files.to_string(),
                d.max_files.to_string(),
            ),
            (
                "max_bytes",
                l.max_bytes > d.max_bytes,
                mib(l.max_bytes),
                mib(d.max_bytes),
            ),
            ("disk", l.disk > d.disk, mib(l.disk), mib(d.disk)),
        ]
        .into_iter()
        .filter(|(_, looser, _, _)| *looser)
        .map(|(key, _, set, default)| format!("limits.{key} = {set} loosens the default {default}"))
        .collect()
    }
}

impl Config {
    /// Loads `boxdelegate.toml` from the repository root.
    pub fn load(root: &Path) -> Result<Config> {
        let path = root.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::config_hint(
                    CONFIG_FILE,
                    format!("not found in {}", root.display()),
                    "run `boxdelegate init` to create one",
                ))
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Config::parse(&text)
    }

    /// Parses and validates the text of a `boxdelegate.toml` (e.g. one read from a commit).
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = parse_toml(text, Path::new(CONFIG_FILE))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let file = Path::new(CONFIG_FILE);
        if let Some(cpus) = self.limits.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return Err(Error::config(
                    file,
                    format!("limits.cpus: must be a positive number, got {cpus}"),
                ));
            }
        }
        if let Some(pids) = self.limits.pids {
            if pids <= 0 {
                return Err(Error::config(
                    file,
                    format!("limits.pids: must be positive, got {pids}"),
                ));
            }
        }
        for (key, a) in [
            ("agent", Some(&self.agent)),
            ("agent.fallback", self.agent.fallback.as_deref()),
        ] {
            if let Some(image) = a.and_then(|a| a.image.as_ref()) {
                return Err(Error::config_hint(
                    file,
                    format!("{key}.image: {image:?} is not supported: the agent always runs in the unit image (the profile's toolchain, the dependencies and the snapshot)"),
                    "remove the key; to give the agent other tools, put them in the profile's image (its `image`, or [project] base_image)",
                ));
            }
        }
        if self.agent.kind == AgentKind::Command
            && self
                .agent
                .command
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
        {
            return Err(Error::config(file, "agent.command: is empty"));
        }
        if let Some(p) = &self.agent.provider {
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::config(
                    file,
                    format!(
                        "agent.provider.name: {:?} must be letters, digits, - or _",
                        p.name
                    ),
                ));
            }
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(Error::config(
                    file,
                    format!(
                        "agent.provider.base_url: {:?} is not an http(s) URL",
                        p.base_url
                    ),
                ));
            }
        }
        if let Some(f) = &self.agent.fallback {
            if f.fallback.is_some() {
                return Err(Error::config(
                    file,
                    "agent.fallback.fallback: a fallback agent has no fallback of its own",
                ));
            }
            if f.kind == AgentKind::Command
                && f.command.as_deref().is_none_or(|c| c.trim().is_empty())
            {
                return Err(Error::config(
                    file,
                    "agent.fallback.command: is empty or missing",
                ));
            }
        }
        if self.run.jobs == Some(0) {
            return Err(Error::config(file, "run.jobs: must be at least 1"));
        }
        if self.run.breaker == Some(0) {
            return Err(Error::config(file, "run.breaker: must be at least 1"));
        }
        check_network(file, "agent", &self.agent)?;
        if let Some(f) = &self.agent.fallback {
            check_network(file, "agent.fallback", f)?;
        }
        if let Some(d) = self.limits.disk {
            if d < 1 << 20 {
                return Err(Error::config(
                    file,
                    format!("limits.disk: must be at least 1 MiB, got {d} bytes"),
                ));
            }
        }
        if let Some(r) = &self.project.runtime {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::config(
                    file,
                    format!("project.runtime: {r:?} is not a runtime name"),
                ));
            }
        }
        for name in &self.agent.env {
            if name.is_empty() || name.contains('=') {
                return Err(Error::config(
                    file,
                    format!("agent.env: {name:?} is not a variable name (list names only; values come from the host environment)"),
                ));
            }
        }
        if self.project.units_dir.trim().is_empty()
            || Path::new(&self.project.units_dir).is_absolute()
        {
            return Err(Error::config(
                file,
                "project.units_dir: must be a relative directory",
            ));
        }
        Ok(())
    }
}

/// Parses TOML strictly into `T`, turning errors into messages that name the file, the key
/// (the path serde was at) and the line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(text, file, None, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        toml_error(text, file, Some(path), &inner)
    })
}

fn toml_error(text: &str, file: &Path, key: Option<String>, e: &toml::de::Error) -> Error {
    let location = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!(":{line}:{col}")
        })
        .unwrap_or_default();
    let key = key
        .filter(|k| !k.is_empty() && k != ".")
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default();
    Error::config_hint(
        PathBuf::from(format!("{}{location}", file.display())),
        format!("{key}{}", e.message().trim()),
        format!(
            "fix {} (docs/configuration.md lists every key)",
            file.display()
        ),
    )
}

/// Parses sizes the way container engines write them: a number with an optional
/// b/k/m/g/t suffix (binary multiples), e.g. "512m", "4g", "1.5g".
/// The network keys of one agent configuration.
fn check_network(file: &Path, key: &str, a: &AgentConfig) -> Result<()> {
    let network = a.network.as_deref().unwrap_or("none");
    if network.is_empty() || network == "host" || network.starts_with("container:") {
        return Err(Error::config_hint(
            file,
            format!("{key}.network: {network:?} is not allowed"),
            "use \"none\", \"proxy\", \"open\" or the name of an engine network you created (e.g. `docker network create --internal NAME`)",
        ));
    }
    if network != "proxy" && (a.allow.is_some() || a.egress_network.is_some()) {
        return Err(Error::config_hint(
            file,
            format!("{key}.allow and {key}.egress_network apply only to network = \"proxy\""),
            "set network = \"proxy\", or remove them",
        ));
    }
    if a.gateway == Some(true) && (network != "proxy" || a.kind != AgentKind::Codex) {
        return Err(Error::config_hint(
            file,
            format!("{key}.gateway applies only to kind = \"codex\" with network = \"proxy\""),
            "set network = \"proxy\", or remove gateway",
        ));
    }
    for entry in a.allow.iter().flatten() {
        crate::config::allow::Allow::parse(entry).map_err(|e| {
            Error::config_hint(
                file,
                format!("{key}.allow: {e}"),
                "list destinations as \"host:port\", e.g. \"api.openai.com:443\"",
            )
        })?;
    }
    Ok(())
}

// Hand-written: engine users expect Docker's own `--memory` notation, which the size crates
// (SI/IEC unit names) do not parse.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let mut s = s.trim().to_ascii_lowercase();
    // "4gib" and "4gb" mean "4g".
    if let Some(rest) = s.strip_suffix("ib") {
        s = rest.to_string();
    } else if s.len() > 1
        && s.ends_with('b')
        && s[..s.len() - 1].ends_with(|c: char| c.is_ascii_alphabetic())
    {
        s.pop();
    }
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('t') => (&s[..s.len() - 1], 1 << 40),
        Some('b') => (&s[..s.len() - 1], 1),
        _ => (s.as_str(), 1),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 512m, 4g, 1048576)"))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((value * mult as f64) as u64)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(u64),
    Str(String),
}

mod size_opt {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<u64>, D::Error> {
        match Option::<NumOrString>::deserialize(d)? {
            None => Ok(None),
            Some(NumOrString::Num(n)) => Ok(Some(n)),
            Some(NumOrString::Str(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
    pub fn serialize<S: serde::Serializer>(
        v: &Option<u64>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        v.serialize(s)
    }
}

pub(crate) mod duration_opt {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Duration>, D::Error> {
        match Option::<NumOrString>::deserialize(d)? {
            None => Ok(None),
            Some(NumOrString::Num(n)) => Ok(Some(Duration::from_secs(n))),
            Some(NumOrString::Str(s)) => humantime::parse_duration(&s).map(Some).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration ({e}; examples: \"90s\", \"30m\", 1800)"
                ))
            }),
        }
    }
    pub fn serialize<S: serde::Serializer>(
        v: &Option<Duration>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        v.map(|d| d.as_secs()).serialize(s)
    }
}

/// A map of environment variables, sorted for deterministic encoding.
pub type EnvMap = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_fallback_and_run_settings_parse_and_are_checked() {
        let c = Config::parse(
            "[agent]\nretries = 1\ncommand = \"a\"\n[agent.fallback]\nkind = \"command\"\ncommand = \"b\"\n[run]\njobs = 2\ninfra_retries = 1\nbackoff = \"5s\"\nbreaker = 4\n",
        )
        .unwrap();
        assert_eq!(c.agent.retries, Some(1));
        assert_eq!(c.agent.fallback.unwrap().command.as_deref(), Some("b"));
        assert_eq!(c.run.jobs, Some(2));
        assert_eq!(c.run.backoff, Some(Duration::from_secs(5)));
        assert_eq!(c.run.breaker, Some(4));
        for (text, needle) in [
            (
                "[agent.fallback]\ncommand = \"b\"\n[agent.fallback.fallback]\ncommand = \"c\"\n",
                "no fallback of its own",
            ),
            (
                "[agent.fallback]\nkind = \"command\"\n",
                "agent.fallback.command",
            ),
            ("[run]\njobs = 0\n", "run.jobs"),
            ("[run]\nbreaker = 0\n", "run.breaker"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1g").is_err());
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let err = parse_toml::<Config>(
            "[project]\nprofile = \"rust\"\n\n[limits]\nmemroy = \"4g\"\n",
            Path::new("boxdelegate.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("boxdelegate.toml:5:1"), "{err}");
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err =
            parse_toml::<Config>("[limits]\npids = \"many\"\n", Path::new("boxdelegate.toml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("limits.pids"), "{err}");
        assert!(err.contains(":2:"), "{err}");
    }

    #[test]
    fn durations_accept_seconds_and_text() {
        let c: Config = parse_toml(
            "[agent]\ntimeout = \"30m\"\n[verify]\ntimeout = 90\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.agent.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.verify.timeout, Some(Duration::from_secs(90)));
        assert!(parse_toml::<Config>("[agent]\ntimeout = \"soon\"\n", Path::new("x")).is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c: Config = parse_toml("", Path::new("x")).unwrap();
        assert_eq!(c.project.profile, "generic");
        assert_eq!(c.limits.resolve(), Limits::default());
    }
}

#[cfg(test)]
mod reference {
    //! docs/configuration.md against the keys the code accepts.
    use std::collections::BTreeSet;

    use serde_aux::serde_introspection::serde_introspect;

    use super::*;
    use crate::config::profile::{Checks, Profile};
    use crate::config::unit::{AgentOverride, UnitMeta};

    const DOC: &str = include_str!("../../docs/configuration.md");

    /// `section.key` for each row of the `<!-- keys: NAME -->` table: "`[agent] model`" is
    /// `agent.model`, "`[prices."MODEL"] input`" is `prices.*.input`, "`[env]`" is `env`.
    fn documented(name: &str) -> BTreeSet<String> {
        let marker = format!("<!-- keys: {name} -->");
        let table = DOC.split(&marker).nth(1).expect("the table's marker");
        let mut keys = BTreeSet::new();
        for line in table.lines().skip(3) {
            let Some(rest) = line.strip_prefix("| `") else {
                if line.trim().is_empty() {
                    break;
                }
                continue;
            };
            let cell = rest.split('`').next().unwrap();
            let key = match cell.strip_prefix('[') {
                Some(r) => {
                    let (section, key) = r.split_once(']').unwrap();
                    let section = section.replace("\"MODEL\"", "*");
                    match key.trim() {
                        "" => section,
                        k => format!("{section}.{k}"),
                    }
                }
                None => cell.to_string(),
            };
            assert!(keys.insert(key.clone()), "{key} is listed twice");
        }
        keys
    }

    fn fields<'de, T: serde::Deserialize<'de>>(prefix: &str, except: &[&str]) -> Vec<String> {
        serde_introspect::<T>()
            .iter()
            .filter(|f| !except.contains(f))
            .map(|f| format!("{prefix}{f}"))
            .collect()
    }

    #[test]
    fn every_config_key_is_documented_and_every_documented_key_accepted() {
        let top: BTreeSet<&str> = serde_introspect::<Config>().iter().copied().collect();
        assert_eq!(
            top,
            BTreeSet::from(["project", "agent", "run", "verify", "limits", "prices"]),
            "a new top-level table needs its rows in docs/configuration.md and here"
        );
        let mut code = BTreeSet::new();
        code.extend(fields::<ProjectConfig>("project.", &[]));
        code.extend(fields::<AgentConfig>("agent.", &["provider"]));
        code.extend(fields::<CodexProvider>("agent.provider.", &[]));
        code.extend(fields::<RunConfig>("run.", &[]));
        code.extend(fields::<VerifyConfig>("verify.", &[]));
        code.extend(fields::<LimitsConfig>("limits.", &[]));
        code.extend(fields::<Price>("prices.*.", &[]));
        assert_eq!(documented("config"), code);
    }

    #[test]
    fn every_unit_key_is_documented_and_every_documented_key_accepted() {
        let mut code = BTreeSet::new();
        code.extend(fields::<UnitMeta>("", &["agent", "limits"]));
        code.extend(fields::<AgentOverride>("agent.", &[]));
        code.extend(fields::<LimitsConfig>("limits.", &[]));
        assert_eq!(documented("unit"), code);
    }

    #[test]
    fn every_profile_key_is_documented_and_every_documented_key_accepted() {
        let mut code = BTreeSet::new();
        code.extend(fields::<Profile>("", &["checks"]));
        code.extend(fields::<Checks>("checks.", &[]));
        assert_eq!(documented("profile"), code);
    }

    #[test]
    fn only_looser_limits_are_warned_about() {
        let l = LimitsConfig {
            memory: Some(8 << 30),
            pids: Some(64),
            disk: Some(20 << 30),
            ..Default::default()
        };
        assert_eq!(
            l.loosened(),
            vec![
                "limits.memory = 8192 MiB loosens the default 4096 MiB",
                "limits.disk = 20480 MiB loosens the default 10240 MiB",
            ]
        );
        assert!(LimitsConfig::default().loosened().is_empty());
    }

    #[test]
    fn a_documented_key_parses_in_a_real_file() {
        // The introspection sees the code's field names; this checks they are the spelling a
        // file uses (no rename in between) for a sample of nested keys.
        let text = "[agent]\nallow = [\"a.example:443\"]\nnetwork = \"proxy\"\negress_network = \"bridge\"\n[agent.provider]\nname = \"g\"\nbase_url = \"http://g:1/v1\"\nenv_key = \"K\"\n[limits]\ndisk = \"1g\"\n[prices.\"*\"]\ninput = 1.0\noutput = 2.0\n[project]\nruntime = \"runc\"\n";
        let c = parse_toml::<Config>(text, Path::new(CONFIG_FILE)).unwrap();
        assert_eq!(c.limits.disk, Some(1 << 30));
        assert_eq!(c.project.runtime.as_deref(), Some("runc"));
    }
}
