//! `boxdelegate run`: units from their files to commits on a host branch — the orchestration
//! above the phases.
//!
//! plan (validate everything) → snapshot → images → agent container → extract → scope →
//! verify (seam: runs only when checks are configured) → land. Each unit's result is recorded
//! in the run directory (`<git common dir>/boxdelegate/runs/<run-id>/<unit>/`), private to the
//! user, with its change set, patch and agent log; a rejected unit keeps its patch.
//!
//! Files: `plan` (units and agents resolved before anything starts), `work` (one unit's
//! attempts, in parallel across units), `attempt` (the agent container), `judge` (extract,
//! scope, verify), `landing` (commits in unit order, `apply`), `policy` (retries, fallback,
//! breaker: pure), `ledger` (the journal and results written at each phase boundary),
//! `resume` (what a crashed run left). This module never lands a rejected, failed or
//! unverified change, never lands a unit twice and never loses an attempt's patch; it prints
//! nothing itself (the reporter and `commands::run` do).
//!
//! May not: land a rejected, failed or unverified change; land a unit twice; lose an attempt's
//! patch; print (the reporter and `commands::run` do).

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::engine::{short, Engine};
use crate::error::{exit, Error, Result};
use crate::images;
use crate::land::{self};
use crate::output::Reporter;
use crate::project::Project;
use crate::record::{Status, UnitResult};
use crate::snapshot::{self, Snapshot};
use crate::state::journal::UnitPhase;
use crate::state::lock::{Guarded, RepoLock};

mod attempt;
mod judge;
mod landing;
mod ledger;
mod plan;
mod policy;
mod resume;
mod work;

pub use landing::apply;
use landing::land_unit;
use ledger::Ctx;
use plan::{plan, AgentNetwork, Planned};
use resume::{already_landed, find_unfinished, remove_abandoned, unix_now};
use work::work_unit;

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
            record: None,
            merged_verdict: None,
            merged_record: None,
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

pub fn new_run_id() -> String {
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
    /// The id a new run takes (a detached run's, given by the command that started it).
    pub run_id: Option<String>,
}

/// Default retries of a failed change.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default retries of an attempt stopped by the infrastructure.
pub const DEFAULT_INFRA_RETRIES: u32 = 2;
/// Default wait before the first infrastructure retry.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Default consecutive infrastructure failures that open the circuit breaker.
pub const DEFAULT_BREAKER: u32 = 3;

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
    let started_at = unix_now();
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
    // One process per unit from here on (other processes may work on other units of this
    // repository); then the run to resume, if any. Taken in one order, so two processes that
    // wait for each other's units cannot each hold what the other waits for.
    let mut unit_ids: Vec<&str> = planned.iter().map(|p| p.unit.meta.id.as_str()).collect();
    unit_ids.sort();
    let mut _units = Vec::new();
    for id in unit_ids {
        _units.push(RepoLock::on(&state, Guarded::Unit(id), "run", args.wait)?);
    }
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
    // The agents' view: without the hidden acceptance tests of any unit of the run.
    let hidden: Vec<String> = planned
        .iter()
        .flat_map(|p| p.hidden.patterns.iter().cloned())
        .collect();
    let hidden = crate::config::unit::Globs::new(&hidden)
        .map_err(|(g, e)| Error::Internal(format!("hidden glob {g:?}: {e}")))?;
    let agent_view = Snapshot {
        tree: snapshot::without(&project.repo, &snapshot.tree, &entries, &hidden)?,
        ..snapshot.clone()
    };
    let agent_entries = if agent_view.tree == snapshot.tree {
        entries.clone()
    } else {
        snapshot::list_tree(&project.repo, &agent_view.tree)?
    };
    let snapshot_ms = crate::timings::since(snapshot_started);
    let images_started = Instant::now();
    // One build of a key, not one per process: a second waits and finds it made.
    let images_lock = RepoLock::on(&state, Guarded::Images, "run", true)?;
    let (deps, _, unit_image) = crate::images::ensure_images(
        &engine,
        project,
        &agent_view,
        &agent_entries,
        true,
        reporter,
    )
    .await?;
    drop(images_lock);
    let run_timings = crate::timings::RunTimings {
        snapshot_ms,
        images_ms: crate::timings::since(images_started),
    };
    let journal = match resume {
        Some(mut j) => {
            // A unit of the interrupted run that landed since (another run delegated it) is
            // not delegated again: its attempts end, their containers go with the run's
            // abandoned ones.
            if !j.request.rerun {
                let run_id = j.run_id.clone();
                for p in &planned {
                    let u = j.unit_mut(&p.unit.meta.id);
                    if u.phase == UnitPhase::Done || u.landing.is_some() {
                        continue;
                    }
                    if let Some(commit) = landed_before(p)? {
                        for a in &mut u.attempts {
                            a.phase = crate::state::journal::AttemptPhase::Done;
                        }
                        u.phase = UnitPhase::Done;
                        u.result = Some(already_landed(p, &commit, &snapshot, &run_id, reporter));
                    }
                }
            }
            j
        }
        None => {
            let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
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
                started_at_ms: crate::timings::now_ms(),
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
    // This run is live while this process holds its lock (`status`, `wait`, `clean` read it).
    let _run = RepoLock::on(&state, Guarded::Run(&run_id), "run", false)?;
    let run_dir = crate::state::journal::runs_dir(&state).join(&run_id);
    crate::state::create_private_dir(&run_dir)?;
    let live = crate::state::journal::Live::new(&run_dir, journal)?;
    *CURRENT.lock().expect("poisoned") = Some((state.clone(), run_id.clone()));
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
    let images_lock = RepoLock::on(&state, Guarded::Images, "run", true)?;
    for v in versions {
        crate::agent::codex::ensure_image(&engine, v, None, reporter).await?;
        crate::agent::codex::ensure_volume(&engine, v).await?;
    }
    let proxied = todo
        .iter()
        .flat_map(|p| p.agents.iter())
        .any(|a| matches!(a.network, AgentNetwork::Proxy { .. }));
    if proxied {
        images::ensure_proxy(&engine, reporter).await?;
    }
    drop(images_lock);
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
    let upper = crate::extract::upper::wanted()? && engine.upper_layers_local().await?;
    let ctx = Ctx {
        project,
        engine: &engine,
        snapshot: &snapshot,
        agent_tree: &agent_view.tree,
        agent_entries: &agent_entries,
        hidden: &hidden,
        image: &unit_image.image,
        deps_key: &deps.key,
        deps: &deps,
        run_id: &run_id,
        run_dir: &run_dir,
        reporter,
        journal: &live,
        started_at,
        policy,
        disk_quota: engine.supports_disk_quota().await,
        upper,
        watch_dirs: if upper {
            None
        } else {
            crate::extract::watch::dirs_file(&agent_entries)
        },
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
    // How many units (in unit order) the lander is done with.
    let landed = std::sync::atomic::AtomicUsize::new(0);
    let workers =
        futures_util::stream::iter(todo.iter().enumerate()).for_each_concurrent(jobs, |(i, p)| {
            let ctx = &ctx;
            let senders = &senders;
            let failure = &failure;
            let landed = &landed;
            let todo = &todo;
            async move {
                if let Err(e) = work_unit(ctx, p).await {
                    failure.lock().expect("poisoned").get_or_insert(e);
                }
                // Verified, but an earlier unit lands first: say so, rather than leave the
                // unit's line on "verifying".
                let ready = ctx.journal.read(|j| j.unit(&p.unit.meta.id).phase) == UnitPhase::Ready;
                let done = landed.load(std::sync::atomic::Ordering::SeqCst);
                if ready && done < i {
                    ctx.reporter.unit(
                        &p.unit.meta.id,
                        &format!("passed; waiting to land after {}", todo[done].unit.meta.id),
                    );
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
            landed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

/// The run this process works on (its state directory and id), for what an interrupt says.
static CURRENT: std::sync::Mutex<Option<(std::path::PathBuf, String)>> =
    std::sync::Mutex::new(None);

/// What an interrupt stopped, from the journal as the run last wrote it: the run, its units that
/// had not ended (and where each was), then how to go on (the last line). Lines fit 80
/// columns but for long unit ids. `None` outside a run.
pub fn interrupted() -> Option<Vec<String>> {
    let (state, run_id) = CURRENT.lock().expect("poisoned").clone()?;
    let j = crate::state::journal::load(&state, &run_id).ok()?;
    let open: Vec<_> = j
        .units
        .iter()
        .filter(|u| u.phase != UnitPhase::Done)
        .collect();
    let mut lines = vec![format!(
        "stopped run {run_id}: {} of {} unit(s) had ended (their results stand)",
        j.units.len() - open.len(),
        j.units.len()
    )];
    for u in open {
        lines.push(format!("  {}: {}", u.id, crate::output::label(u.phase)));
    }
    lines.push(format!("continue it with `boxdelegate resume {run_id}`"));
    Some(lines)
}

/// The process exit code for a set of results: 0 when every unit landed (now or before);
/// [`exit::BREAKER`] when the circuit breaker skipped units; else the code of the first unit
/// that did not land.
pub fn exit_code(results: &[UnitResult], breaker_opened: bool) -> i32 {
    // The breaker's own code whether or not units were left to skip (one unit, or the last):
    // the same cause says the same thing.
    if breaker_opened || results.iter().any(|r| r.status == Status::Skipped) {
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
        // The breaker's code when it opened, with units left to skip or not.
        assert_eq!(exit_code(&results, false), exit::BREAKER);
        let one = [r(Status::InfraError, 0, false)];
        assert_eq!(exit_code(&one, false), exit::INFRA);
        assert_eq!(exit_code(&one, true), exit::BREAKER);
        assert_eq!(exit_code(&results[..3], false), exit::OK);
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
