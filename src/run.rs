//! `boxdelegate run`: a unit from its file to a commit on a host branch.
//!
//! plan (validate everything) → snapshot → images → agent container → extract → scope →
//! verify (seam: runs only when checks are configured) → land. Each unit's result is recorded
//! in the run directory (`<git common dir>/boxdelegate/runs/<run-id>/<unit>/`), private to the
//! user, with its change set, patch and agent log; a rejected unit keeps its patch.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use futures_util::StreamExt;

use crate::agent::{self, Agent, PROMPT_DIR, PROMPT_FILE};
use crate::change::ChangeSet;
use crate::config::unit::{self, Unit, UnitGlobs};
use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, short, Engine};
use crate::error::{exit, Error, Result};
use crate::extract::{self, ReadLimits};
use crate::images;
use crate::land::{self, LandRequest};
use crate::output::Reporter;
use crate::project::Project;
use crate::record::{AttemptSummary, Landed, Rejection, Role, Status, UnitResult};
use crate::scope;
use crate::snapshot::{self, Snapshot};
use crate::state::journal::{AttemptPhase, UnitPhase};
use crate::state::PrivateOpen;

/// Default time without output after which the agent is reported silent.
pub const DEFAULT_SILENCE_WARNING: Duration = Duration::from_secs(30 * 60);

/// Default wall-clock limit of one agent attempt.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl UnitResult {
    /// A result with nothing done yet.
    fn new(p: &Planned, agent: &str, snapshot: &Snapshot, run_id: &str) -> UnitResult {
        UnitResult {
            unit: p.unit.meta.id.clone(),
            title: p.unit.meta.title.clone(),
            status: Status::NoChange,
            run_id: run_id.to_string(),
            branch: p.branch.clone(),
            agent: agent.into(),
            snapshot_commit: snapshot.commit.clone(),
            snapshot_tree: snapshot.tree.clone(),
            unit_image: None,
            agent_exit_code: None,
            files_changed: 0,
            tree: None,
            patch: None,
            patch_sha256: None,
            rejections: vec![],
            verdict: None,
            merged_verdict: None,
            landed: None,
            log: None,
            message: String::new(),
            warnings: p.warnings.clone(),
            network_refused: vec![],
            usage: None,
            cost_usd: None,
            agent_failure: None,
            agent_activity: None,
            seconds: 0.0,
            agent_seconds: 0.0,
            attempts: vec![],
            retries: 0,
            fallback: false,
            attempt_dir: None,
            co_author: String::new(),
            body: String::new(),
            timings: Default::default(),
        }
    }
}

fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:04x}",
        now.as_secs(),
        (now.subsec_nanos() ^ std::process::id()) & 0xffff
    )
}

pub struct RunArgs {
    pub units: Vec<String>,
    pub all: bool,
    pub branch: Option<String>,
    pub rerun: bool,
    pub include_dirty: bool,
    /// Units worked on at once (None: `[run] jobs`, else from the engine's capacity).
    pub jobs: Option<usize>,
    /// When another boxdelegate works on the repository: wait for it (else refuse).
    pub wait: bool,
    /// Resume this run (`boxdelegate resume`) instead of looking for one with the same request.
    pub resume: Option<String>,
}

/// One agent configuration, resolved for a unit.
struct AgentPlan {
    role: Role,
    agent: Box<dyn Agent>,
    env: Vec<String>,
    /// Hides the values of `env` and the agent's own secrets in everything written down.
    redactor: crate::agent::Redactor,
    timeout: Duration,
    network: AgentNetwork,
    silence_warning: Duration,
    price: Option<crate::config::Price>,
}

/// Where an agent container's traffic may go.
#[derive(Debug, Clone, PartialEq)]
enum AgentNetwork {
    /// Loopback only.
    None,
    /// Only the allowed destinations, through the attempt's egress proxy.
    Proxy {
        allow: Vec<crate::config::allow::Allow>,
        egress: String,
    },
    /// An engine network: the default bridge for "open", else one the user created.
    Engine(String),
}

impl AgentNetwork {
    fn from_config(config: &crate::config::AgentConfig) -> AgentNetwork {
        match config.network.as_deref().unwrap_or("none") {
            "none" => AgentNetwork::None,
            "open" => AgentNetwork::Engine("bridge".into()),
            "proxy" => {
                // Validated with the configuration.
                let allow = match &config.allow {
                    Some(list) => list
                        .iter()
                        .filter_map(|a| crate::config::allow::Allow::parse(a).ok())
                        .collect(),
                    None => default_allow(config),
                };
                AgentNetwork::Proxy {
                    allow,
                    egress: config
                        .egress_network
                        .clone()
                        .unwrap_or_else(|| crate::proxy::DEFAULT_EGRESS.into()),
                }
            }
            name => AgentNetwork::Engine(name.into()),
        }
    }

    /// In words, for the prompt.
    fn describe(&self) -> String {
        match self {
            AgentNetwork::None => "off: the container has no network".into(),
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

/// The model API's host, which a proxied codex agent needs.
fn default_allow(config: &crate::config::AgentConfig) -> Vec<crate::config::allow::Allow> {
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
struct Planned {
    unit: Unit,
    globs: UnitGlobs,
    /// The primary agent, then the fallback when one is configured.
    agents: Vec<AgentPlan>,
    retries: u32,
    limits: Limits,
    branch: String,
    checks: Vec<crate::verify::Check>,
    settings: crate::verify::Settings,
    merged: crate::config::MergedPolicy,
    /// Settings looser than the defaults, said at the start and kept in the result.
    warnings: Vec<String>,
}

impl Planned {
    fn agent(&self, role: Role) -> &AgentPlan {
        self.agents
            .iter()
            .find(|a| a.role == role)
            .unwrap_or(&self.agents[0])
    }
}

/// How often an agent container's written bytes are read.
const DISK_POLL: Duration = Duration::from_secs(1);

/// Default retries of a failed change.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default retries of an attempt stopped by the infrastructure.
pub const DEFAULT_INFRA_RETRIES: u32 = 2;
/// Default wait before the first infrastructure retry.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Default consecutive infrastructure failures that open the circuit breaker.
pub const DEFAULT_BREAKER: u32 = 3;

fn agent_plan(
    project: &Project,
    config: &crate::config::AgentConfig,
    role: Role,
    unit: &Unit,
) -> Result<AgentPlan> {
    let agent = agent::for_config(config, unit, &project.repo.root)?;
    let env = agent::host_env(&config.env)?;
    let redactor = crate::agent::Redactor::new(&env, &agent.spec(unit).secrets);
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
        network: AgentNetwork::from_config(config),
        silence_warning: config.silence_warning.unwrap_or(DEFAULT_SILENCE_WARNING),
        price: config
            .model
            .as_ref()
            .and_then(|m| project.config.prices.get(m))
            .or_else(|| project.config.prices.get("*"))
            .cloned(),
    })
}

fn plan(project: &Project, args: &RunArgs) -> Result<Vec<Planned>> {
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
            warnings,
        });
    }
    Ok(planned)
}

/// How the units of a run share the machine and meet infrastructure failures.
#[derive(Debug, Clone, Copy)]
struct Policy {
    infra_retries: u32,
    backoff: Duration,
    breaker: u32,
}

/// What a run came to.
pub struct RunOutcome {
    pub results: Vec<UnitResult>,
    pub report: Option<RunReport>,
}

/// The summary of a run: how the units ended, time, tokens and cost.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub resumed: bool,
    pub jobs: usize,
    pub units: usize,
    pub landed_first_attempt: usize,
    pub landed_after_retries: usize,
    pub landed_by_fallback: usize,
    pub already_landed: usize,
    pub failed: usize,
    pub conflict: usize,
    pub skipped: usize,
    /// Why the circuit breaker opened, when it did.
    pub breaker: Option<String>,
    pub wall_seconds: f64,
    pub agent_seconds: f64,
    pub usage: crate::record::Usage,
    pub cost_usd: Option<f64>,
    /// Snapshot and images, in milliseconds.
    #[serde(default)]
    pub timings: crate::timings::RunTimings,
}

impl RunReport {
    fn new(run_id: &str, resumed: bool, jobs: usize, results: &[UnitResult]) -> RunReport {
        let mut r = RunReport {
            run_id: run_id.to_string(),
            resumed,
            jobs,
            units: results.len(),
            ..Default::default()
        };
        for u in results {
            match u.status {
                Status::Landed if u.fallback => r.landed_by_fallback += 1,
                Status::Landed if u.retries > 0 => r.landed_after_retries += 1,
                Status::Landed => r.landed_first_attempt += 1,
                Status::AlreadyLanded => r.already_landed += 1,
                Status::Conflict => r.conflict += 1,
                Status::Skipped => r.skipped += 1,
                _ => r.failed += 1,
            }
            r.agent_seconds += u.agent_seconds;
            if let Some(usage) = &u.usage {
                r.usage.add(usage);
            }
            if let Some(c) = u.cost_usd {
                *r.cost_usd.get_or_insert(0.0) += c;
            }
        }
        r
    }
}

pub async fn run(project: &Project, args: RunArgs, reporter: &dyn Reporter) -> Result<RunOutcome> {
    let started = Instant::now();
    let state = crate::state::dir(&project.repo);
    // A run to resume: the one named, or an unfinished one with the same request.
    let named = match &args.resume {
        Some(id) => Some(crate::state::journal::load(&state, id)?),
        None => None,
    };
    let args = match &named {
        Some(j) => RunArgs {
            units: j.request.units.clone(),
            all: false,
            branch: j.request.branch.clone(),
            rerun: j.request.rerun,
            include_dirty: j.request.include_dirty,
            ..args
        },
        None => args,
    };
    // Everything is validated before anything is written or the engine is used.
    let planned = plan(project, &args)?;
    let mut said = Vec::new();
    for w in planned.iter().flat_map(|p| &p.warnings) {
        if !said.contains(&w) {
            eprintln!("warning: {w}");
            said.push(w);
        }
    }
    let request = crate::state::journal::Request {
        units: planned.iter().map(|p| p.unit.meta.id.clone()).collect(),
        branch: args.branch.clone(),
        rerun: args.rerun,
        include_dirty: args.include_dirty,
    };
    let landed_before = |p: &Planned| -> Result<Option<String>> {
        if args.rerun {
            return Ok(None);
        }
        land::find_landed(&project.repo, &p.branch, &p.unit.meta.id)
    };
    // Every unit landed before and no run of them was interrupted: nothing to do.
    if named.is_none() && find_unfinished(&state, &request)?.is_none() {
        let mut all_landed = Vec::new();
        for p in &planned {
            match landed_before(p)? {
                Some(commit) => all_landed.push((p, commit)),
                None => break,
            }
        }
        if all_landed.len() == planned.len() {
            // Nothing to do: no engine, no run directory.
            let snapshot = Snapshot::take(&project.repo, args.include_dirty)?;
            let run_id = new_run_id();
            let results = all_landed
                .into_iter()
                .map(|(p, commit)| already_landed(p, &commit, &snapshot, &run_id, reporter))
                .collect();
            return Ok(RunOutcome {
                results,
                report: None,
            });
        }
    }
    let engine = Engine::connect().await?;
    // The agents' networks exist, before anything is written.
    for a in planned.iter().flat_map(|p| p.agents.iter()) {
        let (n, hint) = match &a.network {
            AgentNetwork::None => continue,
            AgentNetwork::Engine(n) => (n, format!("create it first (e.g. `docker network create --internal {n}`), or set network = \"none\"")),
            AgentNetwork::Proxy { egress, .. } => (egress, format!("set agent.egress_network to an engine network that reaches the allowed hosts, or create {egress:?}")),
        };
        if !engine.network_exists(n).await? {
            return Err(Error::config_hint(
                crate::config::CONFIG_FILE,
                format!("agent network: the engine has no network {n:?}"),
                hint,
            ));
        }
    }
    // One boxdelegate per repository from here on; then the run to resume, if any.
    let _lock = crate::state::lock::RepoLock::acquire(&state, "run", args.wait)?;
    let resume = match named {
        Some(j) => Some(j),
        None => find_unfinished(&state, &request)?,
    };
    let resumed = resume.is_some();
    let snapshot_started = Instant::now();
    let snapshot = match &resume {
        Some(j) => {
            reporter.phase(&format!(
                "resuming run {} (snapshot {})",
                j.run_id,
                short(&j.snapshot_tree)
            ));
            Snapshot {
                commit: j.snapshot_commit.clone(),
                tree: j.snapshot_tree.clone(),
                dirty: false,
            }
        }
        None => Snapshot::take(&project.repo, args.include_dirty)?,
    };
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let snapshot_ms = crate::timings::since(snapshot_started);
    let images_started = Instant::now();
    let (deps, _, unit_image) =
        crate::images::ensure_images(&engine, project, &snapshot, &entries, true, reporter).await?;
    let run_timings = crate::timings::RunTimings {
        snapshot_ms,
        images_ms: crate::timings::since(images_started),
    };
    let journal = match resume {
        Some(j) => j,
        None => {
            let run_id = new_run_id();
            let mut units = Vec::new();
            for p in &planned {
                let mut entry = crate::state::journal::UnitEntry {
                    id: p.unit.meta.id.clone(),
                    phase: UnitPhase::Pending,
                    attempts: vec![],
                    landing: None,
                    result: None,
                };
                if let Some(commit) = landed_before(p)? {
                    entry.phase = UnitPhase::Done;
                    entry.result = Some(already_landed(p, &commit, &snapshot, &run_id, reporter));
                }
                units.push(entry);
            }
            crate::state::journal::Journal {
                schema: crate::state::journal::SCHEMA,
                run_id,
                started_at: unix_now() as u64,
                finished_at: None,
                request: request.clone(),
                snapshot_commit: snapshot.commit.clone(),
                snapshot_tree: snapshot.tree.clone(),
                unit_image: Some(unit_image.image.clone()),
                breaker: None,
                consecutive_infra: 0,
                units,
            }
        }
    };
    let run_id = journal.run_id.clone();
    let run_dir = crate::state::journal::runs_dir(&state).join(&run_id);
    crate::state::create_private_dir(&run_dir)?;
    let live = crate::state::journal::Live::new(&run_dir, journal)?;
    if !resumed {
        reporter.phase(&format!(
            "run {run_id}: {} unit(s) from snapshot {}",
            planned.len(),
            short(&snapshot.tree)
        ));
        crate::failpoint::hit("run-created");
    }
    let todo: Vec<&Planned> = planned
        .iter()
        .filter(|p| live.read(|j| j.unit(&p.unit.meta.id).phase) != UnitPhase::Done)
        .collect();
    reporter.units(
        &todo
            .iter()
            .map(|p| p.unit.meta.id.clone())
            .collect::<Vec<_>>(),
    );
    // What the agents need beyond the unit image: the codex image, their networks.
    let mut versions: Vec<&str> = todo
        .iter()
        .flat_map(|p| p.agents.iter().filter_map(|a| a.agent.codex_version()))
        .collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        crate::agent::codex::ensure_image(&engine, v, None, reporter).await?;
    }
    let proxied = todo
        .iter()
        .flat_map(|p| p.agents.iter())
        .any(|a| matches!(a.network, AgentNetwork::Proxy { .. }));
    if proxied && engine.image_id(crate::proxy::IMAGE).await?.is_none() {
        reporter.phase(&format!(
            "building the egress proxy image {} (once)",
            crate::proxy::IMAGE
        ));
        images::build_shipped(&engine, "proxy", reporter).await?;
    }
    if resumed {
        remove_abandoned(&engine, &live, &run_id).await?;
    }

    let config = &project.config.run;
    let jobs = match args.jobs.or(config.jobs) {
        Some(j) => j.max(1),
        None => {
            let (cpus, memory) = engine.capacity().await?;
            let per_unit = todo
                .first()
                .map(|p| p.limits.memory)
                .unwrap_or(4 << 30)
                .max(1);
            cpus.min((memory / per_unit).max(1) as usize).clamp(1, 8)
        }
    };
    let policy = Policy {
        infra_retries: config.infra_retries.unwrap_or(DEFAULT_INFRA_RETRIES),
        backoff: config.backoff.unwrap_or(DEFAULT_BACKOFF),
        breaker: config.breaker.unwrap_or(DEFAULT_BREAKER),
    };
    if todo.len() > 1 {
        reporter.phase(&format!(
            "{} unit(s), {jobs} at a time; landing in unit order",
            todo.len()
        ));
    }
    let ctx = Ctx {
        project,
        engine: &engine,
        snapshot: &snapshot,
        entries: &entries,
        image: &unit_image.image,
        deps_key: &deps.key,
        run_id: &run_id,
        run_dir: &run_dir,
        reporter,
        journal: &live,
        policy,
        disk_quota: engine.supports_disk_quota().await,
        watch_dirs: crate::watch::dirs_file(&entries),
    };

    // Units work in parallel; each reports when it is done, and the lander takes them in
    // unit order, so landing is serialized and ordered.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in &todo {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        senders.push(Some(tx));
        receivers.push(rx);
    }
    let senders = std::sync::Mutex::new(senders);
    let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let workers =
        futures_util::stream::iter(todo.iter().enumerate()).for_each_concurrent(jobs, |(i, p)| {
            let ctx = &ctx;
            let senders = &senders;
            let failure = &failure;
            async move {
                if let Err(e) = work_unit(ctx, p).await {
                    failure.lock().expect("poisoned").get_or_insert(e);
                }
                if let Some(tx) = senders.lock().expect("poisoned")[i].take() {
                    let _ = tx.send(());
                }
            }
        });
    let lander = async {
        for (p, rx) in todo.iter().zip(receivers) {
            let _ = rx.await;
            if let Err(e) = land_unit(&ctx, p).await {
                failure.lock().expect("poisoned").get_or_insert(e);
            }
        }
    };
    tokio::join!(workers, lander);
    if let Some(e) = failure.into_inner().expect("poisoned") {
        return Err(e);
    }

    let results: Vec<UnitResult> =
        live.read(|j| j.units.iter().filter_map(|u| u.result.clone()).collect());
    let mut report = RunReport::new(&run_id, resumed, jobs, &results);
    report.breaker = live.read(|j| j.breaker.clone());
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.timings = run_timings;
    live.update(|j| j.finished_at = Some(unix_now() as u64))?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(&run_dir.join("report.json"), &json)?;
    Ok(RunOutcome {
        results,
        report: Some(report),
    })
}

/// The result of a unit whose trailer is already on its branch: it is not run again.
fn already_landed(
    p: &Planned,
    commit: &str,
    snapshot: &Snapshot,
    run_id: &str,
    reporter: &dyn Reporter,
) -> UnitResult {
    reporter.phase(&format!(
        "{}: already landed as {}",
        p.unit.meta.id,
        short(commit)
    ));
    let mut r = UnitResult::new(p, p.agents[0].agent.name(), snapshot, run_id);
    r.status = Status::AlreadyLanded;
    r.message = format!("already landed as {commit} (run again with --rerun to delegate it anew)");
    r
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The newest unfinished run with this request, if any. A journal that cannot be read stops
/// the run: it might be this one.
fn find_unfinished(
    state: &Path,
    request: &crate::state::journal::Request,
) -> Result<Option<crate::state::journal::Journal>> {
    for id in crate::state::journal::run_ids(state).into_iter().rev() {
        let j = crate::state::journal::load(state, &id)?;
        if !j.finished() && j.request == *request {
            return Ok(Some(j));
        }
    }
    Ok(None)
}

/// Removes the run's containers that no unfinished attempt is waiting on (left by a crash
/// between creating a container and recording it, or a verify container).
async fn remove_abandoned(
    engine: &Engine,
    live: &crate::state::journal::Live,
    run_id: &str,
) -> Result<()> {
    let (keep, proxies): (Vec<String>, Vec<String>) = live.read(|j| {
        j.units
            .iter()
            .flat_map(|u| u.attempts.iter().map(move |a| (u, a)))
            .filter(|(_, a)| matches!(a.phase, AttemptPhase::Running | AttemptPhase::Exited))
            .filter_map(|(u, a)| {
                let proxy = crate::proxy::name(run_id, &u.id, a.n);
                a.container.clone().map(|c| (c, proxy))
            })
            .unzip()
    });
    for c in engine
        .list_containers(&[&format!("{}={run_id}", labels::RUN)])
        .await?
    {
        let Some(id) = c.id else { continue };
        let proxy_of_kept = c
            .names
            .unwrap_or_default()
            .iter()
            .any(|n| proxies.contains(&n.trim_start_matches('/').to_string()));
        if !keep.contains(&id) && !proxy_of_kept {
            engine.remove_container(&id).await?;
        }
    }
    for n in engine
        .list_networks(&[&format!("{}={run_id}", labels::RUN)])
        .await?
    {
        if !proxies.contains(&n) {
            engine.remove_network(&n).await?;
        }
    }
    Ok(())
}

/// What every unit of a run shares.
struct Ctx<'a> {
    project: &'a Project,
    engine: &'a Engine,
    snapshot: &'a Snapshot,
    entries: &'a [snapshot::TreeEntry],
    image: &'a str,
    deps_key: &'a str,
    run_id: &'a str,
    run_dir: &'a Path,
    reporter: &'a dyn Reporter,
    journal: &'a crate::state::journal::Live,
    policy: Policy,
    /// Whether the engine caps a container's writable layer itself.
    disk_quota: bool,
    /// The directories the agent container's watcher watches (`watch::dirs_file`).
    watch_dirs: Option<Vec<u8>>,
}

/// What to do next with a unit, from its attempts so far.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    Attempt {
        role: Role,
        backoff: Option<Duration>,
    },
    Ready,
    Final {
        status: Status,
        message: String,
    },
    Skip,
}

/// What [`decide`] needs of an attempt.
#[derive(Debug, Clone)]
struct AttemptView {
    role: Role,
    status: Status,
    infra: bool,
    /// Whether another attempt may do better (false e.g. for refused credentials).
    retryable: bool,
    message: String,
}

/// The retry policy: a change that failed gets `retries` fresh attempts, then the fallback
/// agent one; an attempt stopped by the infrastructure is repeated (with a growing wait) up to
/// `infra_retries` times in a row, apart from that budget, unless the breaker is open.
fn decide(
    attempts: &[AttemptView],
    retries: u32,
    has_fallback: bool,
    policy: &Policy,
    breaker_open: bool,
) -> Next {
    let Some(last) = attempts.last() else {
        return if breaker_open {
            Next::Skip
        } else {
            Next::Attempt {
                role: Role::Primary,
                backoff: None,
            }
        };
    };
    if last.status == Status::Landed {
        return Next::Ready;
    }
    let regular: Vec<&AttemptView> = attempts.iter().filter(|a| !a.infra).collect();
    let final_status = |last: &AttemptView| {
        if regular.len() > 1 {
            let fallback = regular.iter().any(|a| a.role == Role::Fallback);
            Next::Final {
                status: Status::Failed,
                message: format!(
                    "failed after {} attempts ({} retr{}{}); every attempt's patch is kept; the last: {}",
                    regular.len(),
                    regular.iter().filter(|a| a.role == Role::Primary).count() - 1,
                    if regular.iter().filter(|a| a.role == Role::Primary).count() == 2 { "y" } else { "ies" },
                    if fallback { ", then the fallback agent" } else { "" },
                    last.message
                ),
            }
        } else {
            Next::Final {
                status: last.status,
                message: last.message.clone(),
            }
        }
    };
    if last.infra {
        let in_a_row = attempts.iter().rev().take_while(|a| a.infra).count() as u32;
        if breaker_open || in_a_row > policy.infra_retries {
            return final_status(last);
        }
        return Next::Attempt {
            role: last.role,
            backoff: Some(policy.backoff.saturating_mul(1 << (in_a_row - 1).min(16))),
        };
    }
    let retry_worthy = last.retryable
        && matches!(
            last.status,
            Status::Rejected | Status::VerifyFailed | Status::AgentFailed | Status::Timeout
        );
    if !retry_worthy {
        return final_status(last);
    }
    let primary_failures = regular.iter().filter(|a| a.role == Role::Primary).count() as u32;
    match last.role {
        Role::Primary if primary_failures <= retries => Next::Attempt {
            role: Role::Primary,
            backoff: None,
        },
        Role::Primary if has_fallback => Next::Attempt {
            role: Role::Fallback,
            backoff: None,
        },
        _ => final_status(last),
    }
}

fn view(a: &crate::state::journal::Attempt) -> AttemptView {
    AttemptView {
        role: a.role,
        status: a.result.status,
        infra: a.infra.is_some(),
        retryable: a.result.agent_failure != Some(crate::record::FailureKind::Authentication),
        message: a.result.message.clone(),
    }
}

/// Works a unit until it is ready to land or has ended: attempts, retries, the fallback.
async fn work_unit(ctx: &Ctx<'_>, p: &Planned) -> Result<()> {
    let id = &p.unit.meta.id;
    loop {
        let (phase, last, views) = ctx.journal.read(|j| {
            let u = j.unit(id);
            (
                u.phase,
                u.attempts.last().cloned(),
                u.attempts
                    .iter()
                    .filter(|a| a.phase == AttemptPhase::Done)
                    .map(view)
                    .collect::<Vec<_>>(),
            )
        });
        if matches!(
            phase,
            UnitPhase::Done | UnitPhase::Ready | UnitPhase::Landing
        ) {
            return Ok(());
        }
        if let Some(a) = last.filter(|a| a.phase != AttemptPhase::Done) {
            let plan = p.agent(a.role);
            let outcome = drive_attempt(ctx, p, plan).await;
            if let Err(e) = outcome {
                if !matches!(e, Error::Engine { .. } | Error::EngineUnreachable { .. }) {
                    return Err(e);
                }
                // The engine failed under the attempt: the change is lost, nothing is wrong
                // with it; the attempt counts as an infrastructure failure.
                if let Some(c) = ctx
                    .journal
                    .read(|j| j.unit(id).attempts.last().and_then(|a| a.container.clone()))
                {
                    let _ = ctx.engine.remove_container(&c).await;
                }
                let message = format!("the container engine failed during the attempt: {e}");
                ctx.journal.update(|j| {
                    let a = j.unit_mut(id).attempts.last_mut().expect("an attempt");
                    a.phase = AttemptPhase::Done;
                    a.infra = Some("engine".into());
                    a.result.status = Status::InfraError;
                    a.result.message = message;
                })?;
            }
            attempt_done(ctx, id)?;
            continue;
        }
        let breaker_open = ctx.journal.read(|j| j.breaker.is_some());
        match decide(
            &views,
            p.retries,
            p.agents.len() > 1,
            &ctx.policy,
            breaker_open,
        ) {
            Next::Ready => {
                ctx.journal
                    .update(|j| j.unit_mut(id).phase = UnitPhase::Ready)?;
                return Ok(());
            }
            Next::Skip => {
                let reason = ctx.journal.read(|j| j.breaker.clone()).unwrap_or_default();
                let mut r = UnitResult::new(p, p.agents[0].agent.name(), ctx.snapshot, ctx.run_id);
                r.status = Status::Skipped;
                r.message = format!("not started: the circuit breaker is open ({reason}); run the same command again once the cause is fixed");
                ctx.reporter.unit(id, &format!("skipped ({reason})"));
                finish_unit(ctx, id, r)?;
                return Ok(());
            }
            Next::Final { status, message } => {
                let mut r = ctx.journal.read(|j| {
                    j.unit(id)
                        .attempts
                        .last()
                        .expect("an attempt")
                        .result
                        .clone()
                });
                r.status = status;
                r.message = message;
                finish_unit(ctx, id, r)?;
                return Ok(());
            }
            Next::Attempt { role, backoff } => {
                if let Some(wait) = backoff.filter(|w| !w.is_zero()) {
                    ctx.reporter.unit(
                        id,
                        &format!(
                            "infrastructure failure; retrying in {}",
                            humantime::format_duration(wait)
                        ),
                    );
                    tokio::time::sleep(wait).await;
                }
                let plan = p.agent(role);
                let n = views.len() as u32 + 1;
                let dir = ctx.run_dir.join(id).join(format!("attempt-{n}"));
                crate::state::create_private_dir(&dir)?;
                let mut result = UnitResult::new(p, plan.agent.name(), ctx.snapshot, ctx.run_id);
                result.unit_image = Some(ctx.image.to_string());
                result.attempt_dir = Some(dir.clone());
                result.log = Some(dir.join("agent.log"));
                result.fallback = role == Role::Fallback;
                result.co_author = plan.agent.spec(&p.unit).co_author;
                result.body = p.unit.body.clone();
                ctx.journal.update(|j| {
                    let u = j.unit_mut(id);
                    u.phase = UnitPhase::Working;
                    u.attempts.push(crate::state::journal::Attempt {
                        n,
                        role,
                        agent: plan.agent.name().into(),
                        dir,
                        phase: AttemptPhase::Starting,
                        container: None,
                        started_at: None,
                        agent_seconds: 0.0,
                        infra: None,
                        result,
                    });
                })?;
            }
        }
    }
}

/// Bookkeeping once an attempt is judged: the breaker's count of infrastructure failures in a
/// row, and the progress line.
fn attempt_done(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let (a, opened) = ctx.journal.update(|j| {
        let a = j.unit(id).attempts.last().expect("an attempt").clone();
        let mut opened = None;
        if let Some(kind) = &a.infra {
            j.consecutive_infra += 1;
            if j.consecutive_infra >= ctx.policy.breaker && j.breaker.is_none() {
                let reason = format!(
                    "{} infrastructure failures in a row, the last in unit {id} ({kind}: {})",
                    j.consecutive_infra, a.result.message
                );
                j.breaker = Some(reason.clone());
                opened = Some(reason);
            }
        } else {
            j.consecutive_infra = 0;
        }
        (a, opened)
    })?;
    crate::failpoint::hit("attempt-judged");
    let status = crate::output::label(a.result.status);
    if a.result.status != Status::Landed {
        ctx.reporter.unit(
            id,
            &format!(
                "attempt {} ({}) ended {}{}",
                a.n,
                a.agent,
                a.infra
                    .as_deref()
                    .map(|k| format!("infra-error ({k})"))
                    .unwrap_or(status),
                if a.result.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.result.message)
                }
            ),
        );
    }
    if let Some(reason) = opened {
        ctx.reporter.phase(&format!(
            "circuit breaker open: {reason}; no new unit will start"
        ));
    }
    Ok(())
}

/// Records a unit's final result: in the journal, in its directory and as its last result.
fn finish_unit(ctx: &Ctx<'_>, id: &str, mut result: UnitResult) -> Result<()> {
    let attempts = ctx.journal.read(|j| j.unit(id).attempts.clone());
    result.attempts = attempts
        .iter()
        .map(|a| AttemptSummary {
            n: a.n,
            role: a.role,
            agent: a.agent.clone(),
            status: a.result.status,
            infra: a.infra.clone(),
            message: a.result.message.clone(),
            patch: a.result.patch.clone(),
            dir: a.dir.clone(),
            agent_seconds: a.agent_seconds,
        })
        .collect();
    let regular: Vec<_> = attempts.iter().filter(|a| a.infra.is_none()).collect();
    result.retries = regular
        .iter()
        .filter(|a| a.role == Role::Primary)
        .count()
        .saturating_sub(1) as u32;
    result.fallback = attempts.last().is_some_and(|a| a.role == Role::Fallback);
    if result.status == Status::Landed {
        if result.fallback {
            result.message.push_str(" by the fallback agent");
        } else if result.retries > 0 {
            let n = result.retries;
            result.message.push_str(&format!(
                " after {n} retr{}",
                if n == 1 { "y" } else { "ies" }
            ));
        }
    }
    result.agent_seconds = attempts.iter().map(|a| a.agent_seconds).sum();
    let mut usage: Option<crate::record::Usage> = None;
    let mut cost: Option<f64> = None;
    for a in &attempts {
        if let Some(u) = &a.result.usage {
            usage.get_or_insert_with(Default::default).add(u);
        }
        if let Some(c) = a.result.cost_usd {
            *cost.get_or_insert(0.0) += c;
        }
    }
    result.usage = usage;
    result.cost_usd = cost;
    result.network_refused = Vec::new();
    for r in attempts.iter().flat_map(|a| &a.result.network_refused) {
        if !result.network_refused.contains(r) {
            result.network_refused.push(r.clone());
        }
    }
    let started = ctx.journal.read(|j| j.started_at) as f64;
    result.seconds = (unix_now() - started).max(0.0);
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(&ctx.run_dir.join(id).join("result.json"), &json)?;
    crate::state::write_private(
        &crate::state::dir(&ctx.project.repo)
            .join("last")
            .join(format!("{id}.json")),
        &json,
    )?;
    ctx.reporter
        .unit_done(id, &crate::output::label(result.status), &result.message);
    ctx.journal.update(|j| {
        let u = j.unit_mut(id);
        u.phase = UnitPhase::Done;
        u.result = Some(result);
    })?;
    Ok(())
}

/// Sets fields of the unit's current attempt and saves the journal.
fn update_attempt(
    ctx: &Ctx<'_>,
    id: &str,
    f: impl FnOnce(&mut crate::state::journal::Attempt),
) -> Result<()> {
    ctx.journal
        .update(|j| f(j.unit_mut(id).attempts.last_mut().expect("an attempt")))
}

/// Takes the unit's current attempt from its recorded phase to `done`: start the agent
/// container, watch it, extract the change, judge it (scope, verify).
async fn drive_attempt(ctx: &Ctx<'_>, p: &Planned, plan: &AgentPlan) -> Result<()> {
    let id = &p.unit.meta.id;
    loop {
        let a = ctx
            .journal
            .read(|j| j.unit(id).attempts.last().expect("an attempt").clone());
        match a.phase {
            AttemptPhase::Starting => start_agent(ctx, p, plan, &a).await?,
            AttemptPhase::Running => watch_agent(ctx, p, plan, &a).await?,
            AttemptPhase::Exited => extract_change(ctx, p, plan, &a).await?,
            AttemptPhase::Extracted => judge(ctx, p, plan, &a).await?,
            AttemptPhase::Done => return Ok(()),
        }
    }
}

/// Creates, prepares and starts the agent container of an attempt.
async fn start_agent(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    // A container made before a crash, never recorded as started: start afresh.
    for c in ctx
        .engine
        .list_containers(&[
            &format!("{}={}", labels::RUN, ctx.run_id),
            &format!("{}={id}", labels::UNIT),
            &format!("{}={}", labels::ATTEMPT, a.n),
        ])
        .await?
    {
        if let Some(c) = c.id {
            ctx.engine.remove_container(&c).await?;
        }
    }
    let proxy = matches!(plan.network, AgentNetwork::Proxy { .. })
        .then(|| crate::proxy::name(ctx.run_id, id, a.n));
    if let Some(name) = &proxy {
        ctx.engine.remove_network(name).await?;
    }
    let retry = retry_context(ctx, id, a.n)?;
    ctx.reporter.unit(
        id,
        &format!(
            "agent ({}) running{}",
            plan.agent.name(),
            if a.n > 1 {
                format!(", attempt {}", a.n)
            } else {
                String::new()
            }
        ),
    );
    let spec = plan.agent.spec(&p.unit);
    let mut env = spec.env.clone();
    env.extend(plan.env.iter().cloned());
    env.push(format!("BOXDELEGATE_ATTEMPT={}", a.n));
    let mut host = hardened_host_config(&(&p.limits).into());
    if ctx.disk_quota {
        host.storage_opt = Some(HashMap::from([(
            "size".to_string(),
            p.limits.disk.to_string(),
        )]));
    }
    let attempt_labels = HashMap::from([
        (labels::RUN.to_string(), ctx.run_id.to_string()),
        (labels::UNIT.to_string(), id.clone()),
        (labels::ATTEMPT.to_string(), a.n.to_string()),
    ]);
    let prompt = assemble_prompt(ctx.project, ctx.snapshot, ctx.entries, p, plan, retry)?;
    crate::state::write_private(&a.dir.join("prompt.md"), prompt.as_bytes())?;
    let create_at_ms = crate::timings::now_ms();
    let create_started = Instant::now();
    let started = async {
        host.network_mode = Some(match (&plan.network, &proxy) {
            (AgentNetwork::Proxy { allow, egress }, Some(name)) => {
                crate::proxy::start(ctx.engine, name, attempt_labels.clone(), egress, allow)
                    .await?;
                env.extend(crate::proxy::agent_env());
                name.clone()
            }
            (AgentNetwork::Engine(n), _) => n.clone(),
            _ => "none".into(),
        });
        let container = ctx
            .engine
            .create_container(ContainerCreateBody {
                image: Some(ctx.image.to_string()),
                cmd: Some(crate::watch::wrap(&spec.cmd)),
                env: Some(env),
                working_dir: Some("/work".into()),
                labels: Some({
                    let mut l = attempt_labels;
                    l.insert(labels::KIND.to_string(), "agent".to_string());
                    l
                }),
                network_disabled: Some(plan.network == AgentNetwork::None),
                host_config: Some(host),
                ..Default::default()
            })
            .await?;
        crate::failpoint::hit("agent-created");
        let prepared = async {
            ctx.engine
                .upload(&container, PROMPT_DIR, prompt_tar(&prompt)?)
                .await?;
            for f in &spec.files {
                ctx.engine
                    .upload(
                        &container,
                        &f.dir,
                        images::single_file_tar(&f.path, &f.data, f.mode)?,
                    )
                    .await?;
            }
            if let Some(dirs) = &ctx.watch_dirs {
                ctx.engine
                    .upload(
                        &container,
                        "/tmp",
                        images::single_file_tar(crate::watch::DIRS, dirs, 0o600)?,
                    )
                    .await?;
            }
            if let Some(tool) = &spec.tool_image {
                crate::agent::codex::install_into(ctx.engine, tool, &container).await?;
            }
            ctx.engine.start(&container).await
        }
        .await;
        if let Err(e) = prepared {
            ctx.engine.remove_container(&container).await?;
            return Err(e);
        }
        Ok(container)
    }
    .await;
    let container = match started {
        Ok(c) => c,
        Err(e) => {
            if let Some(name) = &proxy {
                let _ = crate::proxy::stop(ctx.engine, name).await;
            }
            return Err(e);
        }
    };
    update_attempt(ctx, id, |a| {
        a.container = Some(container.clone());
        a.phase = AttemptPhase::Running;
        a.started_at = Some(unix_now());
        a.result.timings.agent_create_at_ms = Some(create_at_ms);
        a.result.timings.agent_start_ms = Some(crate::timings::since(create_started));
    })?;
    crate::failpoint::hit("agent-started");
    Ok(())
}

/// What the retry prompt says about the last failed change, when there was one.
fn retry_context(ctx: &Ctx<'_>, id: &str, n: u32) -> Result<Option<crate::agent::prompt::Retry>> {
    let failed = ctx.journal.read(|j| {
        j.unit(id)
            .attempts
            .iter()
            .rev()
            .find(|a| a.n < n && a.phase == AttemptPhase::Done && a.infra.is_none())
            .cloned()
    });
    let Some(f) = failed else { return Ok(None) };
    let r = &f.result;
    let mut summary = format!("Outcome: {}\n", r.message);
    if let Ok(data) = std::fs::read(f.dir.join("changes.json")) {
        if let Ok(set) = serde_json::from_slice::<ChangeSet>(&data) {
            summary.push_str(&format!("Files it changed ({}):\n", set.changes.len()));
            for c in &set.changes {
                summary.push_str(&format!("- {}\n", String::from_utf8_lossy(&c.path)));
            }
        }
    }
    if !r.rejections.is_empty() {
        summary.push_str("Scope rules it broke:\n");
        for rej in &r.rejections {
            summary.push_str(&format!("- {rej}\n"));
        }
    }
    let mut output = String::new();
    if let Some(v) = &r.verdict {
        output.push_str(&v.explain());
        output.push('\n');
        if let Ok(log) = std::fs::read(f.dir.join("verify.log")) {
            output.push_str(&String::from_utf8_lossy(&log));
        }
    } else if r.status == Status::AgentFailed {
        if let Ok(log) = std::fs::read(f.dir.join("agent.log")) {
            output.push_str(&String::from_utf8_lossy(&log));
        }
    }
    Ok(Some(crate::agent::prompt::Retry {
        attempt: f.n,
        failure_output: output,
        rejected_summary: summary,
    }))
}

/// Watches a started agent container until it exits or outlives its timeout; after a resume
/// this re-attaches to the container the earlier process started.
async fn watch_agent(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let container = a
        .container
        .clone()
        .expect("a running attempt has a container");
    match ctx.engine.container_running(&container).await? {
        None => {
            // Gone (removed by hand or by an interrupted process): the attempt starts afresh.
            ctx.reporter.unit(
                id,
                &format!(
                    "the agent container {} is gone; starting the attempt again",
                    short(&container)
                ),
            );
            return update_attempt(ctx, id, |a| {
                a.phase = AttemptPhase::Starting;
                a.container = None;
            });
        }
        Some(running) => {
            ctx.engine.adopt(&container);
            if running && a.started_at.is_some_and(|s| unix_now() - s > 1.0) {
                ctx.reporter.unit(
                    id,
                    &format!(
                        "re-attached to the running agent container {}",
                        short(&container)
                    ),
                );
            }
        }
    }
    let spec = plan.agent.spec(&p.unit);
    let redactor = &plan.redactor;
    let activity = std::sync::Arc::new(std::sync::Mutex::new(crate::record::Activity::default()));
    let oom = ctx.engine.watch_oom(&container);
    let log_task = {
        let engine = ctx.engine.clone();
        let container = container.clone();
        let log_path = a.dir.join("agent.log");
        let sink = ctx.reporter.line_sink();
        let activity_sink = ctx.reporter.activity_sink(id);
        let redactor = redactor.clone();
        let activity = activity.clone();
        let codex = spec.events == crate::agent::Events::Codex;
        let silence = plan.silence_warning;
        let unit = id.clone();
        tokio::spawn(async move {
            // The engine replays the whole output, so the log is written anew.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode_private()
                .open(&log_path)
                .ok();
            let mut logs = Box::pin(engine.logs(&container, None, true));
            let mut partial = String::new();
            let mut warned = false;
            loop {
                let next = match tokio::time::timeout(silence, logs.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if !warned {
                            sink(&format!(
                                "warning: {unit}: the agent has printed nothing for {}",
                                humantime::format_duration(silence)
                            ));
                            warned = true;
                        }
                        continue;
                    }
                };
                let Some(Ok(chunk)) = next else { break };
                warned = false;
                partial.push_str(&chunk);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let line = redactor.redact(line.trim_end_matches(['\n', '\r']));
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    if codex {
                        let mut a = activity.lock().expect("poisoned");
                        if a.feed(&line) {
                            activity_sink(&a.status_line());
                            continue;
                        }
                    }
                    sink(&line);
                }
            }
            if !partial.is_empty() {
                let line = redactor.redact(&partial);
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if codex {
                    activity.lock().expect("poisoned").feed(&line);
                }
            }
        })
    };
    let started = a.started_at.unwrap_or_else(unix_now);
    let remaining = plan
        .timeout
        .saturating_sub(Duration::from_secs_f64((unix_now() - started).max(0.0)));
    // The writable layer is watched where the engine cannot cap it (and checked where it
    // can): a container over its disk limit is stopped.
    let disk_watch = async {
        loop {
            tokio::time::sleep(DISK_POLL).await;
            match ctx.engine.written_bytes(&container).await {
                Ok(n) if n > p.limits.disk => return n,
                _ => {}
            }
        }
    };
    enum End {
        Exited(i64),
        TimedOut,
        OverDisk(u64),
    }
    let end = tokio::select! {
        waited = tokio::time::timeout(remaining, ctx.engine.wait(&container)) => match waited {
            Ok(code) => End::Exited(code?),
            Err(_) => End::TimedOut,
        },
        n = disk_watch => End::OverDisk(n),
    };
    let code = match end {
        End::Exited(code) => Some(code),
        End::TimedOut | End::OverDisk(_) => {
            ctx.engine.kill(&container).await?;
            None
        }
    };
    let refused = match &plan.network {
        AgentNetwork::Proxy { .. } => {
            let name = crate::proxy::name(ctx.run_id, id, a.n);
            crate::proxy::stop(ctx.engine, &name)
                .await?
                .iter()
                .map(|r| redactor.redact(r))
                .collect()
        }
        _ => Vec::new(),
    };
    let agent_seconds = (unix_now() - started).max(0.0);
    // The log stream ends with the container; give it a moment to drain, then stop it.
    let _ = tokio::time::timeout(Duration::from_secs(5), log_task).await;
    let oom_killed = code.is_some()
        && (oom.count() > 0 || ctx.engine.oom_killed(&container).await.unwrap_or(false));
    let activity = activity.lock().expect("poisoned").clone();
    let codex = spec.events == crate::agent::Events::Codex;
    let stopped = match end {
        End::OverDisk(written) => Some((
            Status::InfraError,
            "disk",
            format!(
                "the agent container wrote {} MiB, over the disk limit of {} MiB, and was stopped; nothing landed",
                written >> 20,
                p.limits.disk >> 20
            ),
        )),
        End::TimedOut => Some((
            Status::Timeout,
            "timeout",
            format!(
                "the agent ran longer than {}s and was killed; nothing landed",
                plan.timeout.as_secs()
            ),
        )),
        End::Exited(_) if oom_killed => Some((
            Status::InfraError,
            "oom",
            format!(
                "the agent container was killed by the out-of-memory killer (limit {} MiB); nothing landed",
                p.limits.memory >> 20
            ),
        )),
        End::Exited(_) => None,
    };
    if stopped.is_some() {
        ctx.engine.remove_container(&container).await?;
    }
    update_attempt(ctx, id, |at| {
        at.agent_seconds = agent_seconds;
        let r = &mut at.result;
        r.agent_exit_code = code;
        r.network_refused = refused;
        if codex {
            r.usage = Some(activity.usage.clone());
            r.cost_usd = plan
                .price
                .as_ref()
                .map(|price| crate::agent::events::cost(&activity.usage, price));
            r.agent_activity = Some(activity.clone());
        }
        match stopped {
            Some((status, kind, message)) => {
                r.status = status;
                r.message = message;
                at.infra = Some(kind.into());
                at.phase = AttemptPhase::Done;
            }
            None => at.phase = AttemptPhase::Exited,
        }
    })?;
    crate::failpoint::hit("agent-exited");
    Ok(())
}

/// Reads the change out of the exited agent container, stores it in the attempt's directory
/// and removes the container.
async fn extract_change(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let container = a
        .container
        .clone()
        .expect("an exited attempt has a container");
    if ctx.engine.container_running(&container).await?.is_none() {
        ctx.reporter.unit(id, &format!("the agent container {} is gone before its change was read; starting the attempt again", short(&container)));
        return update_attempt(ctx, id, |a| {
            a.phase = AttemptPhase::Starting;
            a.container = None;
        });
    }
    ctx.reporter.unit(id, "extracting the change");
    let read_limits = ReadLimits {
        entries: p.limits.max_files,
        bytes: p.limits.max_bytes,
    };
    let extract_started = Instant::now();
    let extracted = extract::extract(
        ctx.engine,
        &container,
        &ctx.project.repo,
        &ctx.snapshot.tree,
        ctx.entries,
        read_limits,
    )
    .await;
    let extracted = match extracted {
        Ok(e) => e,
        Err(e) => {
            ctx.engine.remove_container(&container).await?;
            return Err(e);
        }
    };
    let set: &ChangeSet = &extracted.set;
    let redactor = &plan.redactor;
    // A change that carries a secret's value is rejected and never written down: not as a
    // patch, not as objects.
    let leaks = extracted.paths_where(|data| redactor.occurs_in(data));
    let changes_json =
        serde_json::to_string_pretty(set).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(
        &a.dir.join("changes.json"),
        redactor.redact(&changes_json).as_bytes(),
    )?;
    let mut written = None;
    if set.truncated.is_none() && !set.changes.is_empty() && leaks.is_empty() {
        let patch = a.dir.join("change.patch");
        let w = extracted.write(
            &ctx.project.repo,
            &a.dir.join("objects"),
            &ctx.snapshot.tree,
            &patch,
        )?;
        crate::state::make_private(&a.dir.join("objects"))?;
        written = Some((w, patch));
    }
    let files = set.changes.len();
    // The scope is checked here, on the change as read (the stored change set names paths
    // lossily, for people).
    let mut rejections = scope::check(set, &p.globs, &p.limits, &p.unit.file);
    for path in leaks {
        rejections.push(Rejection {
            path: crate::change::display_path(&path),
            rule: "secret".into(),
            message: "the change carries the value of a secret passed to the agent".into(),
            hint: "secrets must never be written into the repository; the change was not kept"
                .into(),
        });
    }
    for r in &mut rejections {
        r.path = redactor.redact(&r.path);
    }
    let extract_ms = crate::timings::since(extract_started);
    update_attempt(ctx, id, |a| {
        a.result.timings.extract_ms = Some(extract_ms);
        a.result.files_changed = files;
        a.result.rejections = rejections;
        if let Some((w, patch)) = written {
            a.result.tree = Some(w.tree);
            a.result.patch = Some(patch);
            a.result.patch_sha256 = Some(w.patch_sha256);
        }
        a.phase = AttemptPhase::Extracted;
    })?;
    ctx.engine.remove_container(&container).await?;
    crate::failpoint::hit("extracted");
    Ok(())
}

/// Judges an extracted change: the agent's own outcome, the scope, then verification in a
/// clean container. `landed` as the attempt's status means "ready to land".
async fn judge(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let mut result = a.result.clone();
    let spec = plan.agent.spec(&p.unit);
    let mut infra = None;
    let verdict = judge_change(ctx, p, &spec, &plan.redactor, a, &mut result, &mut infra).await?;
    if verdict {
        result.status = Status::Landed;
        result.message = "passed every check; waiting to land".into();
    }
    update_attempt(ctx, id, |at| {
        at.result = result;
        at.infra = infra;
        at.phase = AttemptPhase::Done;
    })?;
    Ok(())
}

/// Fills `result` with the judgement of the change; true when it may land.
#[allow(clippy::too_many_arguments)]
async fn judge_change(
    ctx: &Ctx<'_>,
    p: &Planned,
    spec: &crate::agent::AgentSpec,
    redactor: &crate::agent::Redactor,
    a: &crate::state::journal::Attempt,
    result: &mut UnitResult,
    infra: &mut Option<String>,
) -> Result<bool> {
    let id = &p.unit.meta.id;
    let code = result.agent_exit_code.unwrap_or(-1);
    if spec.events == crate::agent::Events::Codex {
        let activity = result.agent_activity.clone().unwrap_or_default();
        if let Some(message) = &activity.turn_failed {
            let kind = activity
                .failure
                .unwrap_or_else(|| crate::agent::events::classify_failure(message));
            result.agent_failure = Some(kind);
            result.status = if kind.is_infrastructure() {
                *infra = Some("model-endpoint".into());
                Status::InfraError
            } else {
                Status::AgentFailed
            };
            result.message = format!(
                "codex failed ({}{}): {}; nothing landed",
                crate::output::label(kind),
                if kind.retryable() {
                    ", retryable"
                } else {
                    ", not retryable"
                },
                redactor.redact(message)
            );
            return Ok(false);
        }
        if code == 0 && !activity.turn_completed {
            result.status = Status::AgentFailed;
            result.message =
                "codex exited 0 without completing its turn (no turn.completed event); nothing landed".into();
            return Ok(false);
        }
        if !activity.failed_file_changes.is_empty() {
            result.warnings.push(format!(
                "codex reported {} file change(s) that failed ({}): its own sandbox may have blocked them",
                activity.failed_file_changes.len(),
                activity.failed_file_changes.join(", ")
            ));
        }
    }
    if code != 0 {
        result.status = Status::AgentFailed;
        result.message = format!(
            "the agent exited with code {code}; nothing landed (see the log{})",
            if result.patch.is_some() {
                " and the kept patch"
            } else {
                ""
            }
        );
        return Ok(false);
    }
    if result.files_changed == 0 && result.rejections.is_empty() {
        result.status = Status::NoChange;
        result.message = "the agent changed nothing".into();
        return Ok(false);
    }

    // Scope (checked at extraction). Edits of protected paths are reported and the change is
    // rejected, but it is still verified with those paths restored, so the report says what
    // the original tests make of it.
    let protected_only =
        !result.rejections.is_empty() && result.rejections.iter().all(|r| r.rule == "protected");
    let rejected_message = |r: &UnitResult| {
        format!(
            "{} scope violation(s); nothing landed{}",
            r.rejections.len(),
            if r.patch.is_some() {
                ", the patch is kept"
            } else {
                ""
            }
        )
    };
    if !result.rejections.is_empty() && (!protected_only || p.checks.is_empty()) {
        result.status = Status::Rejected;
        result.message = rejected_message(result);
        return Ok(false);
    }
    if p.checks.is_empty() {
        return Ok(true);
    }

    // Verify in a clean container.
    land::import_objects(&ctx.project.repo, &a.dir.join("objects"))?;
    let tree = result.tree.clone().expect("an accepted change has a tree");
    let cache_dir = crate::verify::state_paths(&ctx.project.repo.common_dir).1;
    let verify_log = a.dir.join("verify.log");
    let sink = ctx.reporter.line_sink();
    let on_line = |l: &str| sink(l);
    let check_names = p
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let vreq = verify_request(ctx, p, &tree, &verify_log, &cache_dir);
    ctx.reporter.unit(id, &format!("verifying ({check_names})"));
    result.timings.verify_at_ms = Some(crate::timings::now_ms());
    let verify_started = Instant::now();
    let verdict = crate::verify::verify(ctx.engine, &ctx.project.repo, &vreq, &on_line).await?;
    result.timings.verify_ms = Some(crate::timings::since(verify_started));
    let passed = verdict.passed;
    let summary = verdict.summary.clone();
    let failure = (!passed).then(|| failure_status(&verdict, "", p.settings.timeout_secs));
    if verdict.verdict == crate::record::Kind::InfraError {
        *infra = Some("verify".into());
    }
    result.verdict = Some(verdict);
    if protected_only {
        result.status = Status::Rejected;
        result.message = format!(
            "{}; with the protected paths restored, verification says {summary}",
            rejected_message(result)
        );
        return Ok(false);
    }
    if let Some((status, message)) = failure {
        result.status = status;
        result.message = message;
        return Ok(false);
    }
    Ok(true)
}

fn verify_request<'a>(
    ctx: &'a Ctx<'_>,
    p: &'a Planned,
    tree: &'a str,
    log: &'a Path,
    cache_dir: &'a Path,
) -> crate::verify::VerifyRequest<'a> {
    crate::verify::VerifyRequest {
        image: ctx.image,
        image_tree: &ctx.snapshot.tree,
        base_tree: &ctx.snapshot.tree,
        tree,
        deps_key: ctx.deps_key,
        checks: &p.checks,
        settings: &p.settings,
        protected: Some(&p.globs.protected),
        expect: &p.unit.meta.tests,
        limits: &p.limits,
        run_id: ctx.run_id,
        unit_id: &p.unit.meta.id,
        log,
        cache_dir,
    }
}

/// Lands a unit that is ready, exactly once: the commit made for it is recorded before the
/// branch moves, so a resumed run can tell whether the move happened.
async fn land_unit(ctx: &Ctx<'_>, p: &Planned) -> Result<()> {
    let id = &p.unit.meta.id;
    let (phase, landing, attempt) = ctx.journal.read(|j| {
        let u = j.unit(id);
        (u.phase, u.landing.clone(), u.attempts.last().cloned())
    });
    if !matches!(phase, UnitPhase::Ready | UnitPhase::Landing) {
        return Ok(());
    }
    let attempt = attempt.expect("a ready unit has an attempt");
    let mut result = attempt.result.clone();
    let req = land_request(&result).expect("a ready change has a tree");
    let repo = &ctx.project.repo;
    if let Some(l) = &landing {
        let on_branch = repo
            .resolve(&format!("refs/heads/{}", p.branch))?
            .is_some_and(|head| {
                head == l.commit
                    || repo
                        .run(&["merge-base", "--is-ancestor", &l.commit, &head])
                        .is_ok()
            });
        if on_branch {
            ctx.reporter.unit(
                id,
                &format!("landed before the interruption as {}", short(&l.commit)),
            );
            let rebased_onto = (l.old.is_some() && l.old.as_deref() != Some(&req.snapshot_commit))
                .then(|| l.old.clone())
                .flatten();
            finish_landing(
                &mut result,
                Landed::Committed {
                    commit: l.commit.clone(),
                    branch: p.branch.clone(),
                    rebased_onto,
                    worktree_updated: false,
                    note: None,
                },
            );
            return finish_unit(ctx, id, result);
        }
    }
    ctx.reporter.unit(id, &format!("landing on {}", p.branch));
    let land_started = Instant::now();
    land::import_objects(repo, &attempt.dir.join("objects"))?;
    let prepared = land::prepare(repo, &req)?;
    if let land::Prepared::Ready {
        merged: Some((head, merged_tree)),
        ..
    } = &prepared
    {
        let tree = result.tree.clone().unwrap_or_default();
        let reverify = *merged_tree != tree
            && p.merged == crate::config::MergedPolicy::Reverify
            && !p.checks.is_empty();
        if reverify {
            ctx.reporter.unit(
                id,
                &format!(
                    "{} moved to {}; verifying the merged tree before landing it",
                    p.branch,
                    short(head)
                ),
            );
            let head_tree = repo.text(&["rev-parse", &format!("{head}^{{tree}}")])?;
            let cache_dir = crate::verify::state_paths(&repo.common_dir).1;
            let log = attempt.dir.join("verify-merged.log");
            let sink = ctx.reporter.line_sink();
            let on_line = |l: &str| sink(l);
            // The merged tree, judged against the head it lands on; protected paths are the
            // head's (the unit's own edits of them were refused by the scope check).
            let vreq = crate::verify::VerifyRequest {
                base_tree: &head_tree,
                tree: merged_tree,
                protected: None,
                ..verify_request(ctx, p, &tree, &log, &cache_dir)
            };
            let verdict = crate::verify::verify(ctx.engine, repo, &vreq, &on_line).await?;
            let failure = (!verdict.passed).then(|| {
                failure_status(
                    &verdict,
                    &format!(
                        "{} moved to {} and the merged tree fails verification: ",
                        p.branch,
                        short(head)
                    ),
                    p.settings.timeout_secs,
                )
            });
            result.merged_verdict = Some(verdict);
            if let Some((status, message)) = failure {
                result.status = status;
                result.message = message;
                return finish_unit(ctx, id, result);
            }
        }
    }
    if let land::Prepared::Ready { commit, old, .. } = &prepared {
        ctx.journal.update(|j| {
            let u = j.unit_mut(id);
            u.phase = UnitPhase::Landing;
            u.landing = Some(crate::state::journal::Landing {
                commit: commit.clone(),
                old: old.clone(),
            });
        })?;
        crate::failpoint::hit("landing");
    }
    let landed = land::finish(repo, &req, prepared)?;
    crate::failpoint::hit("landed");
    result.timings.land_ms = Some(crate::timings::since(land_started));
    finish_landing(&mut result, landed);
    finish_unit(ctx, id, result)
}

/// The status and message of a unit whose verdict keeps it from landing.
fn failure_status(
    verdict: &crate::record::Verdict,
    prefix: &str,
    timeout_secs: u64,
) -> (Status, String) {
    use crate::record::Kind;
    match verdict.verdict {
        Kind::Timeout => (
            Status::Timeout,
            format!(
                "{prefix}a check ran longer than {timeout_secs}s in the clean container and was killed; nothing landed, the patch is kept ({})",
                verdict.summary
            ),
        ),
        Kind::InfraError => (
            Status::InfraError,
            format!(
                "{prefix}verification was stopped by the infrastructure, which says nothing about the change; nothing landed, the patch is kept; run it again ({})",
                verdict.summary
            ),
        ),
        Kind::Fail | Kind::Pass => (
            Status::VerifyFailed,
            format!(
                "{prefix}verification failed in the clean container; nothing landed, the patch is kept: {}",
                verdict.explain()
            ),
        ),
    }
}

fn land_request(r: &UnitResult) -> Option<LandRequest> {
    Some(LandRequest {
        branch: r.branch.clone(),
        snapshot_commit: r.snapshot_commit.clone(),
        snapshot_tree: r.snapshot_tree.clone(),
        tree: r.tree.clone()?,
        unit_id: r.unit.clone(),
        title: r.title.clone(),
        body: r.body.clone(),
        agent: r.agent.clone(),
        co_author: r.co_author.clone(),
        patch_sha256: r.patch_sha256.clone()?,
    })
}

fn finish_landing(result: &mut UnitResult, landed: Landed) {
    match &landed {
        Landed::Committed {
            commit,
            branch,
            rebased_onto,
            note,
            ..
        } => {
            result.status = Status::Landed;
            result.message = format!(
                "landed as {} on {branch}{}{}",
                short(commit),
                rebased_onto
                    .as_ref()
                    .map(|h| format!(" (on top of {}, the branch had moved)", short(h)))
                    .unwrap_or_default(),
                note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            );
        }
        Landed::Conflict { branch, paths, .. } => {
            result.status = Status::Conflict;
            result.message = format!(
                "{branch} moved and the change conflicts with it in {}; nothing was written, the patch is kept",
                paths.join(", ")
            );
        }
    }
    result.landed = Some(landed);
}

/// `boxdelegate apply UNIT`: lands the last kept result of a unit, after the same checks.
pub fn apply(
    project: &Project,
    id: &str,
    branch: Option<String>,
    wait: bool,
) -> Result<UnitResult> {
    let mut result = crate::state::last_result(&project.repo, id)?;
    if let Some(b) = branch {
        result.branch = b;
    }
    land::check_target(&project.repo, &result.branch)?;
    let unit = unit::load(&project.repo.root, &project.config.project.units_dir, id)?;
    let globs = unit.globs()?;
    let unit_dir = result.attempt_dir.clone().unwrap_or_else(|| {
        crate::state::dir(&project.repo)
            .join("runs")
            .join(&result.run_id)
            .join(id)
    });
    let set: ChangeSet = serde_json::from_slice(
        &std::fs::read(unit_dir.join("changes.json"))
            .map_err(|e| Error::io("reading the kept change set", e))?,
    )
    .map_err(|e| Error::Internal(format!("the kept change set is unreadable: {e}")))?;
    if matches!(result.status, Status::Landed | Status::AlreadyLanded) {
        return Err(Error::Usage {
            message: format!("unit {id} already landed ({})", result.message),
            hint: "nothing to apply".into(),
        });
    }
    if result.tree.is_none() {
        return Err(Error::Usage {
            message: format!(
                "the last run of unit {id} kept no change ({})",
                result.message
            ),
            hint: format!("run it again: boxdelegate run --unit {id}"),
        });
    }
    result.rejections = scope::check(&set, &globs, &project.limits, &unit.file);
    if !result.rejections.is_empty() {
        result.status = Status::Rejected;
        result.message = format!(
            "{} scope violation(s); nothing landed",
            result.rejections.len()
        );
        return Ok(result);
    }
    let _lock =
        crate::state::lock::RepoLock::acquire(&crate::state::dir(&project.repo), "apply", wait)?;
    land::import_objects(&project.repo, &unit_dir.join("objects"))?;
    let req = land_request(&result).expect("checked above");
    let landed = land::land(&project.repo, &req)?;
    finish_landing(&mut result, landed);
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(
        &crate::state::dir(&project.repo)
            .join("last")
            .join(format!("{id}.json")),
        &json,
    )?;
    Ok(result)
}

/// The unit's prompt, with its context files, standards and gotchas read from the snapshot.
fn assemble_prompt(
    project: &Project,
    snapshot: &Snapshot,
    entries: &[snapshot::TreeEntry],
    p: &Planned,
    plan: &AgentPlan,
    retry: Option<crate::agent::prompt::Retry>,
) -> Result<String> {
    use crate::agent::prompt::{self, ContextFile};
    let read = |path: &str| -> Option<String> {
        project
            .repo
            .run(&["cat-file", "blob", &format!("{}:{path}", snapshot.tree)])
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let context_globs =
        crate::config::unit::Globs::new(&p.unit.meta.context).map_err(|(g, e)| {
            Error::config(
                &p.unit.file,
                format!("context: glob {g:?} does not compile: {e}"),
            )
        })?;
    let mut context = Vec::new();
    if !p.unit.meta.context.is_empty() {
        for e in entries {
            if matches!(e.kind, snapshot::EntryKind::File { .. })
                && context_globs.is_match(e.path())
            {
                let path = e.path().display().to_string();
                if let Some(content) = read(&path) {
                    context.push(ContextFile { path, content });
                }
            }
        }
    }
    let standards = ["AGENTS.md", "CLAUDE.md"].iter().find_map(|name| {
        read(name).map(|content| ContextFile {
            path: name.to_string(),
            content,
        })
    });
    let gotchas = read(".boxdelegate/gotchas.md");
    let test_command = p
        .checks
        .iter()
        .find(|c| c.name == "test")
        .map(|c| c.command.clone());
    let network = plan.network.describe();
    Ok(prompt::assemble(&prompt::PromptInput {
        unit_id: &p.unit.meta.id,
        title: &p.unit.meta.title,
        task: &p.unit.body,
        scope: &p.unit.meta.scope,
        deny: &p.unit.meta.deny,
        protected: &p.unit.meta.protected,
        context: &context,
        done: &p.unit.meta.done,
        tests: &p.unit.meta.tests,
        test_command: test_command.as_deref(),
        standards,
        gotchas: gotchas.as_deref(),
        network: &network,
        retry,
    }))
}

fn prompt_tar(prompt: &str) -> Result<impl crate::engine::ByteStream> {
    images::single_file_tar(PROMPT_FILE, prompt.as_bytes(), 0o600)
}

/// The process exit code for a set of results: 0 when every unit landed (now or before);
/// [`exit::BREAKER`] when the circuit breaker skipped units; else the code of the first unit
/// that did not land.
pub fn exit_code(results: &[UnitResult]) -> i32 {
    if results.iter().any(|r| r.status == Status::Skipped) {
        return exit::BREAKER;
    }
    results
        .iter()
        .map(|r| r.status.exit_code())
        .find(|c| *c != exit::OK)
        .unwrap_or(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        infra_retries: 2,
        backoff: Duration::from_secs(10),
        breaker: 3,
    };

    fn failed(role: Role, status: Status) -> AttemptView {
        AttemptView {
            role,
            status,
            infra: false,
            retryable: true,
            message: format!("{status:?}"),
        }
    }

    fn infra(role: Role) -> AttemptView {
        AttemptView {
            infra: true,
            ..failed(role, Status::InfraError)
        }
    }

    fn attempt(role: Role) -> Next {
        Next::Attempt {
            role,
            backoff: None,
        }
    }

    #[test]
    fn a_failed_change_is_retried_then_handed_to_the_fallback_then_failed() {
        let f = |n| vec![failed(Role::Primary, Status::VerifyFailed); n];
        assert_eq!(decide(&[], 2, true, &POLICY, false), attempt(Role::Primary));
        assert_eq!(
            decide(&f(1), 2, true, &POLICY, false),
            attempt(Role::Primary)
        );
        assert_eq!(
            decide(&f(2), 2, true, &POLICY, false),
            attempt(Role::Primary)
        );
        assert_eq!(
            decide(&f(3), 2, true, &POLICY, false),
            attempt(Role::Fallback)
        );
        let mut all = f(3);
        all.push(failed(Role::Fallback, Status::Rejected));
        match decide(&all, 2, true, &POLICY, false) {
            Next::Final { status, message } => {
                assert_eq!(status, Status::Failed);
                assert!(
                    message.starts_with(
                        "failed after 4 attempts (2 retries, then the fallback agent)"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Without a fallback the retries are the end.
        assert!(matches!(
            decide(&f(3), 2, false, &POLICY, false),
            Next::Final {
                status: Status::Failed,
                ..
            }
        ));
        // With no retries and no fallback, the attempt's own status stands.
        assert_eq!(
            decide(&f(1), 0, false, &POLICY, false),
            Next::Final {
                status: Status::VerifyFailed,
                message: "VerifyFailed".into()
            }
        );
    }

    #[test]
    fn a_passing_attempt_is_ready_and_what_cannot_improve_is_final() {
        let ok = failed(Role::Primary, Status::Landed);
        assert_eq!(decide(&[ok], 2, true, &POLICY, false), Next::Ready);
        for status in [Status::NoChange, Status::Conflict] {
            assert!(matches!(
                decide(&[failed(Role::Primary, status)], 2, true, &POLICY, false),
                Next::Final { status: s, .. } if s == status
            ));
        }
        let refused = AttemptView {
            retryable: false,
            ..failed(Role::Primary, Status::AgentFailed)
        };
        assert!(matches!(
            decide(&[refused], 2, true, &POLICY, false),
            Next::Final {
                status: Status::AgentFailed,
                ..
            }
        ));
    }

    #[test]
    fn infrastructure_failures_are_retried_with_a_growing_wait_outside_the_budget() {
        let one = [infra(Role::Primary)];
        assert_eq!(
            decide(&one, 0, false, &POLICY, false),
            Next::Attempt {
                role: Role::Primary,
                backoff: Some(Duration::from_secs(10))
            }
        );
        let two = [infra(Role::Primary), infra(Role::Primary)];
        assert_eq!(
            decide(&two, 0, false, &POLICY, false),
            Next::Attempt {
                role: Role::Primary,
                backoff: Some(Duration::from_secs(20))
            }
        );
        let three = [
            infra(Role::Primary),
            infra(Role::Primary),
            infra(Role::Primary),
        ];
        assert!(matches!(
            decide(&three, 0, false, &POLICY, false),
            Next::Final {
                status: Status::InfraError,
                ..
            }
        ));
        // An open breaker stops infrastructure retries and keeps new units from starting.
        assert!(matches!(
            decide(&one, 0, false, &POLICY, true),
            Next::Final { .. }
        ));
        assert_eq!(decide(&[], 2, false, &POLICY, true), Next::Skip);
        // Infrastructure failures do not use up the retries of a failed change.
        let mixed = [
            failed(Role::Primary, Status::VerifyFailed),
            infra(Role::Primary),
            failed(Role::Primary, Status::VerifyFailed),
        ];
        assert_eq!(
            decide(&mixed, 2, false, &POLICY, false),
            attempt(Role::Primary)
        );
    }

    #[test]
    fn the_report_counts_how_units_ended() {
        let r = |status, retries, fallback| UnitResult {
            status,
            retries,
            fallback,
            agent_seconds: 2.0,
            cost_usd: Some(0.5),
            ..serde_json::from_value(serde_json::json!({
                "unit": "u", "title": "", "status": "landed", "run_id": "r", "branch": "b",
                "agent": "command", "snapshot_commit": "c", "snapshot_tree": "t",
                "unit_image": null, "agent_exit_code": null, "files_changed": 0, "tree": null,
                "patch": null, "patch_sha256": null, "rejections": [], "verdict": null,
                "merged_verdict": null, "landed": null, "log": null, "message": "",
                "warnings": [], "usage": null, "cost_usd": null, "agent_failure": null,
                "agent_activity": null, "seconds": 0.0, "co_author": "", "body": ""
            }))
            .unwrap()
        };
        let results = vec![
            r(Status::Landed, 0, false),
            r(Status::Landed, 2, false),
            r(Status::Landed, 2, true),
            r(Status::Failed, 2, true),
            r(Status::Conflict, 0, false),
            r(Status::Skipped, 0, false),
        ];
        let report = RunReport::new("r", false, 2, &results);
        assert_eq!(
            (
                report.landed_first_attempt,
                report.landed_after_retries,
                report.landed_by_fallback,
                report.failed,
                report.conflict,
                report.skipped
            ),
            (1, 1, 1, 1, 1, 1)
        );
        assert_eq!(report.agent_seconds, 12.0);
        assert_eq!(report.cost_usd, Some(3.0));
    }
}
