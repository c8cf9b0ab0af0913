//! `boxdelegate run`: a unit from its file to a commit on a host branch.
//!
//! plan (validate everything) → snapshot → images → agent container → extract → scope →
//! verify (seam: runs only when checks are configured) → land. Each unit's result is recorded
//! in the run directory (`<git common dir>/boxdelegate/runs/<run-id>/<unit>/`), private to the
//! user, with its change set, patch and agent log; a rejected unit keeps its patch.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use futures_util::StreamExt;

use crate::agent::{self, Agent, PROMPT_DIR, PROMPT_FILE};
use crate::commands::Project;
use crate::config::unit::{self, Unit, UnitGlobs};
use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, short, Engine};
use crate::error::{exit, Error, Result};
use crate::extract::{self, ChangeSet, ReadLimits};
use crate::images;
use crate::land::{self, LandRequest, Landed};
use crate::report::Reporter;
use crate::scope::{self, Rejection};
use crate::snapshot::{self, Snapshot};

/// Default time without output after which the agent is reported silent.
pub const DEFAULT_SILENCE_WARNING: Duration = Duration::from_secs(30 * 60);

/// Default wall-clock limit of one agent attempt.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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
    /// Verification was stopped by the infrastructure (OOM kill, engine error); nothing
    /// landed, the patch is kept. Says nothing about the change.
    InfraError,
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
            Status::InfraError => exit::INFRA,
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
    pub verdict: Option<crate::verify::Verdict>,
    /// When the branch had moved: the verdict on the merged tree that would land.
    pub merged_verdict: Option<crate::verify::Verdict>,
    pub landed: Option<Landed>,
    pub log: Option<PathBuf>,
    pub message: String,
    /// Things worth knowing that did not decide the status.
    pub warnings: Vec<String>,
    /// Tokens the agent used (codex), summed over its turn.
    pub usage: Option<crate::agent::events::Usage>,
    /// Estimated cost in USD, from `[prices]`.
    pub cost_usd: Option<f64>,
    /// Why codex's turn failed, when it did.
    pub agent_failure: Option<crate::agent::events::FailureKind>,
    /// What codex reported doing.
    pub agent_activity: Option<crate::agent::events::Activity>,
    pub seconds: f64,
    /// For `apply`: what landing needs.
    pub co_author: String,
    pub body: String,
}

impl UnitResult {
    /// A result with nothing done yet.
    fn new(p: &Planned, snapshot: &Snapshot, run_id: &str) -> UnitResult {
        UnitResult {
            unit: p.unit.meta.id.clone(),
            title: p.unit.meta.title.clone(),
            status: Status::NoChange,
            run_id: run_id.to_string(),
            branch: p.branch.clone(),
            agent: p.agent.name().into(),
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
            warnings: vec![],
            usage: None,
            cost_usd: None,
            agent_failure: None,
            agent_activity: None,
            seconds: 0.0,
            co_author: String::new(),
            body: String::new(),
        }
    }
}

/// Where run state lives: inside the git directory, so the work tree is never touched.
pub fn state_dir(project: &Project) -> PathBuf {
    project.repo.common_dir.join("boxdelegate")
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

pub fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

pub struct RunArgs {
    pub units: Vec<String>,
    pub all: bool,
    pub branch: Option<String>,
    pub rerun: bool,
}

/// A unit with everything resolved before the engine is touched.
struct Planned {
    unit: Unit,
    globs: UnitGlobs,
    agent: Box<dyn Agent>,
    env: Vec<String>,
    timeout: Duration,
    limits: Limits,
    branch: String,
    checks: Vec<crate::verify::Check>,
    settings: crate::verify::Settings,
    merged: crate::config::MergedPolicy,
    network: Option<String>,
    silence_warning: Duration,
    price: Option<crate::agent::events::Price>,
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
    if args.branch.is_some() && ids.len() > 1 {
        return Err(Error::Usage {
            message: "--branch names one target branch, but several units were given".into(),
            hint: "run the units one at a time with --branch, or let each land on boxdelegate/<unit-id>".into(),
        });
    }
    let mut planned = Vec::new();
    for id in ids {
        let unit = unit::load(&project.repo.root, units_dir, &id)?;
        let globs = unit.globs()?;
        let config = match &unit.meta.agent {
            Some(o) => o.apply(&project.config.agent),
            None => project.config.agent.clone(),
        };
        let agent = agent::for_config(&config, &unit, &project.repo.root)?;
        let env = agent::host_env(&config.env)?;
        let timeout = unit
            .meta
            .timeout
            .or(config.timeout)
            .unwrap_or(DEFAULT_AGENT_TIMEOUT);
        let limits = match &unit.meta.limits {
            Some(l) => crate::config::LimitsConfig {
                memory: l.memory.or(project.config.limits.memory),
                cpus: l.cpus.or(project.config.limits.cpus),
                pids: l.pids.or(project.config.limits.pids),
                max_files: l.max_files.or(project.config.limits.max_files),
                max_bytes: l.max_bytes.or(project.config.limits.max_bytes),
            }
            .resolve(),
            None => project.limits,
        };
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
            agent,
            env,
            timeout,
            limits,
            branch,
            checks,
            settings,
            merged: project.config.verify.merged.unwrap_or_default(),
            network: config.network.clone().filter(|n| n != "none"),
            silence_warning: config.silence_warning.unwrap_or(DEFAULT_SILENCE_WARNING),
            price: config
                .model
                .as_ref()
                .and_then(|m| project.config.prices.get(m))
                .or_else(|| project.config.prices.get("*"))
                .cloned(),
        });
    }
    Ok(planned)
}

pub async fn run(
    project: &Project,
    args: RunArgs,
    include_dirty: bool,
    reporter: &dyn Reporter,
) -> Result<Vec<UnitResult>> {
    let planned = plan(project, &args)?;
    let snapshot = Snapshot::take(&project.repo, include_dirty)?;
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let run_id = new_run_id();
    let run_dir = state_dir(project).join("runs").join(&run_id);

    // Units that landed before need neither the engine nor a run directory.
    let mut results = Vec::new();
    let mut todo = Vec::new();
    for p in planned {
        if !args.rerun {
            if let Some(commit) = land::find_landed(&project.repo, &p.branch, &p.unit.meta.id)? {
                reporter.phase(&format!(
                    "{}: already landed as {}",
                    p.unit.meta.id,
                    short(&commit)
                ));
                let mut r = UnitResult::new(&p, &snapshot, &run_id);
                r.status = Status::AlreadyLanded;
                r.message = format!(
                    "already landed as {commit} (run again with --rerun to delegate it anew)"
                );
                results.push(r);
                continue;
            }
        }
        todo.push(p);
    }
    if todo.is_empty() {
        return Ok(results);
    }

    let engine = Engine::connect().await?;
    let (deps, _, unit_image) =
        crate::commands::ensure_images(&engine, project, &snapshot, &entries, true, reporter)
            .await?;
    // What the agents need beyond the unit image: the codex image, their networks.
    let mut versions: Vec<&str> = todo
        .iter()
        .filter_map(|p| p.agent.codex_version())
        .collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        crate::agent::codex::ensure_image(&engine, v, None, reporter).await?;
    }
    for p in &todo {
        if let Some(n) = &p.network {
            if !engine.network_exists(n).await? {
                return Err(Error::config_hint(
                    crate::config::CONFIG_FILE,
                    format!("agent.network: the engine has no network {n:?}"),
                    format!("create it first (e.g. `docker network create --internal {n}`), or set network = \"none\""),
                ));
            }
        }
    }
    create_private_dir(&run_dir)?;

    for p in todo {
        let result = run_unit(
            project,
            &engine,
            &p,
            &snapshot,
            &entries,
            &unit_image.image,
            &deps.key,
            &run_id,
            &run_dir,
            reporter,
        )
        .await?;
        let unit_dir = run_dir.join(&p.unit.meta.id);
        let json =
            serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
        extract::write_private(&unit_dir.join("result.json"), &json)?;
        extract::write_private(
            &state_dir(project)
                .join("last")
                .join(format!("{}.json", p.unit.meta.id)),
            &json,
        )?;
        results.push(result);
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
async fn run_unit(
    project: &Project,
    engine: &Engine,
    p: &Planned,
    snapshot: &Snapshot,
    entries: &[snapshot::TreeEntry],
    image: &str,
    deps_key: &str,
    run_id: &str,
    run_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<UnitResult> {
    let started = Instant::now();
    let id = &p.unit.meta.id;
    let unit_dir = run_dir.join(id);
    create_private_dir(&unit_dir)?;
    let spec = p.agent.spec(&p.unit);
    let mut result = UnitResult::new(p, snapshot, run_id);
    result.unit_image = Some(image.to_string());
    result.log = Some(unit_dir.join("agent.log"));
    result.co_author = spec.co_author.clone();
    result.body = p.unit.body.clone();

    // The agent container.
    reporter.phase(&format!("{id}: agent ({}) running", p.agent.name()));
    let mut env = spec.env.clone();
    env.extend(p.env.iter().cloned());
    let redactor = crate::agent::Redactor::new(&p.env, &spec.secrets);
    let mut host = hardened_host_config(&p.limits);
    host.network_mode = Some(p.network.clone().unwrap_or_else(|| "none".into()));
    let prompt = assemble_prompt(project, snapshot, entries, p)?;
    let container = engine
        .create_container(ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(spec.cmd.clone()),
            env: Some(env),
            working_dir: Some("/work".into()),
            labels: Some(HashMap::from([
                (labels::KIND.to_string(), "agent".to_string()),
                (labels::RUN.to_string(), run_id.to_string()),
                (labels::UNIT.to_string(), id.clone()),
            ])),
            network_disabled: Some(p.network.is_none()),
            host_config: Some(host),
            ..Default::default()
        })
        .await?;
    let activity = std::sync::Arc::new(std::sync::Mutex::new(
        crate::agent::events::Activity::default(),
    ));
    let outcome = async {
        engine
            .upload(&container, PROMPT_DIR, prompt_tar(&prompt)?)
            .await?;
        for f in &spec.files {
            engine
                .upload(
                    &container,
                    &f.dir,
                    images::single_file_tar(&f.path, &f.data, f.mode)?,
                )
                .await?;
        }
        if let Some(tool) = &spec.tool_image {
            crate::agent::codex::install_into(engine, tool, &container).await?;
        }
        engine.start(&container).await?;
        let log_task = {
            let engine = engine.clone();
            let container = container.clone();
            let log_path = unit_dir.join("agent.log");
            let sink = reporter.line_sink();
            let redactor = redactor.clone();
            let activity = activity.clone();
            let codex = spec.events == crate::agent::Events::Codex;
            let silence = p.silence_warning;
            let unit = id.clone();
            tokio::spawn(async move {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
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
                                sink(&format!("{unit}: {}", a.status_line()));
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
        let waited = tokio::time::timeout(p.timeout, engine.wait(&container)).await;
        let code = match waited {
            Ok(code) => Some(code?),
            Err(_) => {
                engine.kill(&container).await?;
                None
            }
        };
        // The log stream ends with the container; give it a moment to drain, then stop it.
        let _ = tokio::time::timeout(Duration::from_secs(5), log_task).await;
        Ok::<_, Error>(code)
    }
    .await;
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            engine.remove_container(&container).await?;
            return Err(e);
        }
    };
    let activity = activity.lock().expect("poisoned").clone();
    if spec.events == crate::agent::Events::Codex {
        result.usage = Some(activity.usage.clone());
        result.cost_usd = p
            .price
            .as_ref()
            .map(|price| crate::agent::events::cost(&activity.usage, price));
        result.agent_activity = Some(activity.clone());
    }
    let Some(code) = code else {
        engine.remove_container(&container).await?;
        result.status = Status::Timeout;
        result.message = format!(
            "the agent ran longer than {}s and was killed; nothing landed",
            p.timeout.as_secs()
        );
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(result);
    };
    result.agent_exit_code = Some(code);

    // Extract, then the container is gone.
    reporter.phase(&format!("{id}: extracting the change"));
    let read_limits = ReadLimits {
        entries: p.limits.max_files,
        bytes: p.limits.max_bytes,
    };
    let extracted = extract::extract(
        engine,
        &container,
        &project.repo,
        &snapshot.tree,
        entries,
        read_limits,
    )
    .await;
    engine.remove_container(&container).await?;
    let extracted = extracted?;
    let set: &ChangeSet = &extracted.set;
    result.files_changed = set.changes.len();
    let changes_json =
        serde_json::to_vec_pretty(set).map_err(|e| Error::Internal(e.to_string()))?;
    extract::write_private(&unit_dir.join("changes.json"), &changes_json)?;

    if set.truncated.is_none() && !set.changes.is_empty() {
        let patch = unit_dir.join("change.patch");
        let written = extracted.write(
            &project.repo,
            &unit_dir.join("objects"),
            &snapshot.tree,
            &patch,
        )?;
        result.tree = Some(written.tree);
        result.patch = Some(patch);
        result.patch_sha256 = Some(written.patch_sha256);
    }
    if spec.events == crate::agent::Events::Codex {
        if let Some(message) = &activity.turn_failed {
            let kind = activity
                .failure
                .unwrap_or_else(|| crate::agent::events::classify_failure(message));
            result.agent_failure = Some(kind);
            result.status = if kind.is_infrastructure() {
                Status::InfraError
            } else {
                Status::AgentFailed
            };
            result.message = format!(
                "codex failed ({}{}): {}; nothing landed",
                serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                if kind.retryable() {
                    ", retryable"
                } else {
                    ", not retryable"
                },
                redactor.redact(message)
            );
            result.seconds = started.elapsed().as_secs_f64();
            return Ok(result);
        }
        if code == 0 && !activity.turn_completed {
            result.status = Status::AgentFailed;
            result.message =
                "codex exited 0 without completing its turn (no turn.completed event); nothing landed".into();
            result.seconds = started.elapsed().as_secs_f64();
            return Ok(result);
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
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(result);
    }
    if set.is_empty() {
        result.status = Status::NoChange;
        result.message = "the agent changed nothing".into();
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(result);
    }

    // Scope. Edits of protected paths are reported and the change is rejected, but it is still
    // verified with those paths restored, so the report says what the original tests make of it.
    result.rejections = scope::check(set, &p.globs, &p.limits, &p.unit.file);
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
        result.message = rejected_message(&result);
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(result);
    }

    // Verify in a clean container, then land.
    land::import_objects(&project.repo, &unit_dir.join("objects"))?;
    let tree = result.tree.clone().expect("an accepted change has a tree");
    let cache_dir = crate::verify::state_paths(&project.repo.common_dir).1;
    let verify_log = unit_dir.join("verify.log");
    let sink = reporter.line_sink();
    let on_line = |l: &str| sink(l);
    let check_names = p
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let vreq = crate::verify::VerifyRequest {
        image,
        image_tree: &snapshot.tree,
        base_tree: &snapshot.tree,
        tree: &tree,
        deps_key,
        checks: &p.checks,
        settings: &p.settings,
        protected: Some(&p.globs.protected),
        expect: &p.unit.meta.tests,
        limits: &p.limits,
        run_id,
        unit_id: id,
        log: &verify_log,
        cache_dir: &cache_dir,
    };
    if !p.checks.is_empty() {
        reporter.phase(&format!("{id}: verifying ({check_names})"));
        let verdict = crate::verify::verify(engine, &project.repo, &vreq, &on_line).await?;
        let passed = verdict.passed;
        let summary = verdict.summary.clone();
        let failure = (!passed).then(|| failure_status(&verdict, "", p.settings.timeout_secs));
        result.verdict = Some(verdict);
        if protected_only {
            result.status = Status::Rejected;
            result.message = format!(
                "{}; with the protected paths restored, verification says {summary}",
                rejected_message(&result)
            );
            result.seconds = started.elapsed().as_secs_f64();
            return Ok(result);
        }
        if let Some((status, message)) = failure {
            result.status = status;
            result.message = message;
            result.seconds = started.elapsed().as_secs_f64();
            return Ok(result);
        }
    }
    reporter.phase(&format!("{id}: landing on {}", p.branch));
    let req = land_request(&result).expect("an accepted change has a tree");
    let prepared = land::prepare(&project.repo, &req)?;
    if let land::Prepared::Ready {
        merged: Some((head, merged_tree)),
        ..
    } = &prepared
    {
        let reverify = *merged_tree != tree
            && p.merged == crate::config::MergedPolicy::Reverify
            && !p.checks.is_empty();
        if reverify {
            reporter.phase(&format!(
                "{id}: {} moved to {}; verifying the merged tree before landing it",
                p.branch,
                short(head)
            ));
            let head_tree = project
                .repo
                .text(&["rev-parse", &format!("{head}^{{tree}}")])?;
            // The merged tree, judged against the head it lands on; protected paths are the
            // head's (the unit's own edits of them were refused by the scope check).
            let vreq = crate::verify::VerifyRequest {
                base_tree: &head_tree,
                tree: merged_tree,
                protected: None,
                ..vreq
            };
            let verdict = crate::verify::verify(engine, &project.repo, &vreq, &on_line).await?;
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
                result.seconds = started.elapsed().as_secs_f64();
                return Ok(result);
            }
        }
    }
    let landed = land::finish(&project.repo, &req, prepared)?;
    finish_landing(&mut result, landed);
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// The status and message of a unit whose verdict keeps it from landing.
fn failure_status(
    verdict: &crate::verify::Verdict,
    prefix: &str,
    timeout_secs: u64,
) -> (Status, String) {
    use crate::verify::Kind;
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
pub fn apply(project: &Project, id: &str, branch: Option<String>) -> Result<UnitResult> {
    let mut result = last_result(project, id)?;
    if let Some(b) = branch {
        result.branch = b;
    }
    land::check_target(&project.repo, &result.branch)?;
    let unit = unit::load(&project.repo.root, &project.config.project.units_dir, id)?;
    let globs = unit.globs()?;
    let unit_dir = state_dir(project)
        .join("runs")
        .join(&result.run_id)
        .join(id);
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
    land::import_objects(&project.repo, &unit_dir.join("objects"))?;
    let req = land_request(&result).expect("checked above");
    let landed = land::land(&project.repo, &req)?;
    finish_landing(&mut result, landed);
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
    extract::write_private(
        &state_dir(project).join("last").join(format!("{id}.json")),
        &json,
    )?;
    Ok(result)
}

/// The last recorded result of unit `id`.
pub fn last_result(project: &Project, id: &str) -> Result<UnitResult> {
    unit::validate_id(id).map_err(|m| Error::Usage {
        message: format!("unit {m}"),
        hint: "`boxdelegate unit ls` lists the units".into(),
    })?;
    let path = state_dir(project).join("last").join(format!("{id}.json"));
    let data = std::fs::read(&path).map_err(|_| Error::Usage {
        message: format!("unit {id} has no recorded result"),
        hint: format!("run it first: boxdelegate run --unit {id}"),
    })?;
    serde_json::from_slice(&data)
        .map_err(|e| Error::Internal(format!("{} is unreadable: {e}", path.display())))
}

/// The unit's prompt, with its context files, standards and gotchas read from the snapshot.
fn assemble_prompt(
    project: &Project,
    snapshot: &Snapshot,
    entries: &[snapshot::TreeEntry],
    p: &Planned,
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
    let network = match &p.network {
        None => "off: the container has no network".to_string(),
        Some(n) => format!("limited to the engine network {n:?} (the model's endpoint)"),
    };
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
        retry: None,
    }))
}

fn prompt_tar(prompt: &str) -> Result<impl crate::engine::ByteStream> {
    images::single_file_tar(PROMPT_FILE, prompt.as_bytes(), 0o600)
}

trait PrivateOpen {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateOpen for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// The process exit code for a set of results: 0 when every unit landed (now or before), else
/// the code of the first unit that did not.
pub fn exit_code(results: &[UnitResult]) -> i32 {
    results
        .iter()
        .map(|r| r.status.exit_code())
        .find(|c| *c != exit::OK)
        .unwrap_or(exit::OK)
}
