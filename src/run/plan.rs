//! The run planned before anything starts: each unit loaded and validated, its agents (primary
//! and fallback) with their network policy, limits, timeouts and retry budget resolved.
//!
//! May not: touch the engine: it reads files only, and a bad input stops the run here.

use super::{RunArgs, DEFAULT_AGENT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_SILENCE_WARNING};
use crate::agent::{self, Agent};
use crate::config::unit::{self, Unit, UnitGlobs};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::land::{self};
use crate::project::Project;
use crate::record::Role;
use std::time::Duration;

/// One agent configuration, resolved for a unit.
pub(super) struct AgentPlan {
    pub(super) role: Role,
    pub(super) agent: Box<dyn Agent>,
    pub(super) env: Vec<String>,
    /// Hides the values of `env` and the agent's own secrets in everything written down.
    pub(super) redactor: crate::agent::Redactor,
    pub(super) timeout: Duration,
    pub(super) network: AgentNetwork,
    pub(super) silence_warning: Duration,
    pub(super) price: Option<crate::config::Price>,
}

/// Where an agent container's traffic may go.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AgentNetwork {
    /// Loopback only.
    None,
    /// Only the allowed destinations, through the attempt's egress proxy; with a gateway, the
    /// model API through the proxy's model gateway, which holds the credential.
    Proxy {
        allow: Vec<crate::config::allow::Allow>,
        egress: String,
        gateway: Option<crate::proxy::Gateway>,
    },
    /// An engine network: the default bridge for "open", else one the user created.
    Engine(String),
}

impl AgentNetwork {
    /// The network of `config`'s agent. With the model gateway, the credential's entry in
    /// `env` (`VAR=value`) is replaced by a dummy value: the key goes to the gateway alone.
    fn from_config(
        config: &crate::config::AgentConfig,
        env: &mut [String],
    ) -> Result<AgentNetwork> {
        Ok(match config.network.as_deref().unwrap_or("none") {
            "none" => AgentNetwork::None,
            "open" => AgentNetwork::Engine("bridge".into()),
            "proxy" => {
                let gateway = if crate::agent::codex::uses_gateway(config) {
                    Some(gateway(config, env)?)
                } else {
                    None
                };
                // Validated with the configuration.
                let allow = match &config.allow {
                    Some(list) => list
                        .iter()
                        .filter_map(|a| crate::config::allow::Allow::parse(a).ok())
                        .collect(),
                    // Behind the gateway the agent needs no host of its own.
                    None if gateway.is_some() => Vec::new(),
                    None => default_allow(config),
                };
                AgentNetwork::Proxy {
                    allow,
                    egress: config
                        .egress_network
                        .clone()
                        .unwrap_or_else(|| crate::proxy::DEFAULT_EGRESS.into()),
                    gateway,
                }
            }
            name => AgentNetwork::Engine(name.into()),
        })
    }

    /// In words, for the prompt.
    pub(super) fn describe(&self) -> String {
        match self {
            AgentNetwork::None => "off: the container has no network".into(),
            AgentNetwork::Proxy {
                allow,
                gateway: Some(_),
                ..
            } if allow.is_empty() => {
                "only the model API (through boxdelegate's gateway); nothing else".into()
            }
            AgentNetwork::Proxy { allow, .. } if allow.is_empty() => {
                "through a proxy that lets nothing through".into()
            }
            AgentNetwork::Proxy { allow, .. } => format!(
                "only {}, through the proxy HTTP_PROXY and HTTPS_PROXY name",
                allow
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AgentNetwork::Engine(n) if n == "bridge" => "open".into(),
            AgentNetwork::Engine(n) => {
                format!("limited to the engine network {n:?} (the model's endpoint)")
            }
        }
    }
}

/// The model gateway of a codex agent: the provider it forwards to, and the credential taken
/// out of the agent's environment (its entry there becomes a dummy value).
fn gateway(
    config: &crate::config::AgentConfig,
    env: &mut [String],
) -> Result<crate::proxy::Gateway> {
    use crate::agent::codex::{key_var, upstream_url, GATEWAY_DUMMY_KEY};
    let file = crate::config::CONFIG_FILE;
    let var = key_var(config);
    let prefix = format!("{var}=");
    let entry = env.iter_mut().find(|e| e.starts_with(&prefix)).ok_or_else(|| {
        Error::config_hint(
            file,
            format!("agent: the model gateway needs the credential {var}, which is not among [agent] env"),
            format!("add it: env = [\"{var}\"] (and set it when you run), or set gateway = false"),
        )
    })?;
    let key = entry[prefix.len()..].to_string();
    if !crate::proxy::Gateway::key_is_plain(&key) {
        return Err(Error::config_hint(
            file,
            format!("agent: the value of {var} holds a space, a quote, a backslash or a control character, which the model gateway cannot send as a bearer token"),
            "check the variable's value, or set gateway = false",
        ));
    }
    let url = upstream_url(config);
    let gw = crate::proxy::Gateway::new(url, key).ok_or_else(|| {
        Error::config_hint(
            file,
            format!("agent.provider.base_url: the model gateway cannot forward to {url:?} (an http(s) URL whose path is letters, digits and / - _ .)"),
            "fix the base URL, or set gateway = false",
        )
    })?;
    *entry = format!("{prefix}{GATEWAY_DUMMY_KEY}");
    Ok(gw)
}

/// The model API's host, which a proxied codex agent needs.
pub(super) fn default_allow(
    config: &crate::config::AgentConfig,
) -> Vec<crate::config::allow::Allow> {
    if config.kind != crate::config::AgentKind::Codex {
        return Vec::new();
    }
    let url = config
        .provider
        .as_ref()
        .map(|p| p.base_url.as_str())
        .unwrap_or("https://api.openai.com/v1");
    crate::config::allow::Allow::from_url(url)
        .into_iter()
        .collect()
}

/// A unit with everything resolved before the engine is touched.
pub(super) struct Planned {
    pub(super) unit: Unit,
    pub(super) globs: UnitGlobs,
    /// The primary agent, then the fallback when one is configured.
    pub(super) agents: Vec<AgentPlan>,
    pub(super) retries: u32,
    pub(super) limits: Limits,
    pub(super) branch: String,
    pub(super) checks: Vec<crate::verify::Check>,
    pub(super) settings: crate::verify::Settings,
    pub(super) merged: crate::config::MergedPolicy,
    /// Hidden acceptance tests: `[verify] hidden` and the unit's own `hidden`.
    pub(super) hidden: crate::config::unit::Globs,
    /// Settings looser than the defaults, said at the start and kept in the result.
    pub(super) warnings: Vec<String>,
}

impl Planned {
    pub(super) fn agent(&self, role: Role) -> &AgentPlan {
        self.agents
            .iter()
            .find(|a| a.role == role)
            .unwrap_or(&self.agents[0])
    }
}

pub(super) fn agent_plan(
    project: &Project,
    config: &crate::config::AgentConfig,
    role: Role,
    unit: &Unit,
) -> Result<AgentPlan> {
    let agent = agent::for_config(config, unit, &project.repo.root)?;
    let mut env = agent::host_env(&config.env)?;
    // The redactor knows every value, the credential the gateway takes out of `env` too.
    let redactor = crate::agent::Redactor::new(&env, &agent.spec(unit).secrets);
    let network = AgentNetwork::from_config(config, &mut env)?;
    Ok(AgentPlan {
        role,
        agent,
        env,
        redactor,
        timeout: unit
            .meta
            .timeout
            .or(config.timeout)
            .unwrap_or(DEFAULT_AGENT_TIMEOUT),
        network,
        silence_warning: config.silence_warning.unwrap_or(DEFAULT_SILENCE_WARNING),
        price: config
            .model
            .as_ref()
            .and_then(|m| project.config.prices.get(m))
            .or_else(|| project.config.prices.get("*"))
            .cloned(),
    })
}

pub(super) fn plan(project: &Project, args: &RunArgs) -> Result<Vec<Planned>> {
    let units_dir = &project.config.project.units_dir;
    let ids: Vec<String> = if args.all {
        let ids = unit::list_ids(&project.repo.root, units_dir);
        if ids.is_empty() {
            return Err(Error::Usage {
                message: format!("--all: no unit files in {units_dir}/"),
                hint: "create one with `boxdelegate unit new ID --scope GLOB`".into(),
            });
        }
        ids
    } else if args.units.is_empty() {
        return Err(Error::Usage {
            message: "no unit given".into(),
            hint: "name units with --unit ID (repeatable) or run them all with --all".into(),
        });
    } else {
        args.units.clone()
    };
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(Error::Usage {
                message: format!("unit {id} is given twice"),
                hint: "name each unit once".into(),
            });
        }
    }
    let mut planned = Vec::new();
    for id in ids {
        let unit = unit::load(&project.repo.root, units_dir, &id)?;
        let globs = unit.globs()?;
        let config = match &unit.meta.agent {
            Some(o) => o.apply(&project.config.agent),
            None => project.config.agent.clone(),
        };
        let mut agents = vec![agent_plan(project, &config, Role::Primary, &unit)?];
        if let Some(fallback) = &config.fallback {
            agents.push(agent_plan(project, fallback, Role::Fallback, &unit)?);
        }
        let limits = match &unit.meta.limits {
            Some(l) => l.over(&project.config.limits),
            None => project.config.limits.clone(),
        };
        let mut warnings = limits.loosened();
        let limits = limits.resolve();
        for a in &agents {
            if a.network == AgentNetwork::Engine("bridge".into()) {
                warnings.push(format!(
                    "agent network \"open\" ({} agent) loosens the default \"none\": the agent can reach any host",
                    crate::output::label(a.role)
                ));
            }
        }
        let branch = args
            .branch
            .clone()
            .unwrap_or_else(|| format!("boxdelegate/{id}"));
        land::check_target(&project.repo, &branch)?;
        let checks = crate::verify::checks(&project.profile, &project.config.verify);
        let settings = crate::verify::Settings::from_config(&project.config.verify);
        let mut hidden = project.config.verify.hidden.clone().unwrap_or_default();
        hidden.extend(globs.hidden.patterns.iter().cloned());
        let hidden = crate::config::unit::Globs::new(&hidden).map_err(|(glob, err)| {
            Error::config_hint(
                crate::config::CONFIG_FILE,
                format!("[verify] hidden: glob {glob:?} does not compile: {err}"),
                "fix the glob (`*` matches within a directory, `**` across directories)",
            )
        })?;
        planned.push(Planned {
            unit,
            globs,
            agents,
            retries: config.retries.unwrap_or(DEFAULT_RETRIES),
            limits,
            branch,
            checks,
            settings,
            merged: project.config.verify.merged.unwrap_or_default(),
            hidden,
            warnings,
        });
    }
    Ok(planned)
}
