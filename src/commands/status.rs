//! `boxdelegate status` and `boxdelegate clean`: what the runs of a repository hold (from their
//! journals and from the engine's labels), and removing what finished runs left behind.
//!
//! May not: remove a running agent's container without `--force`; remove what an unfinished run
//! still needs.

use std::path::Path;

use crate::engine::{labels, short, Engine};
use crate::error::{exit, Error, Result};
use crate::output::label;
use crate::project::Project;
use crate::state::journal::{self, Journal};

/// A run id given on the command line: well formed and present.
pub fn check_run_id(state: &Path, id: &str) -> Result<()> {
    if !journal::valid_run_id(id) || !journal::runs_dir(state).join(id).is_dir() {
        return Err(Error::Usage {
            message: format!("there is no run {id:?} in this repository"),
            hint: "`boxdelegate status --all` lists the runs".into(),
        });
    }
    Ok(())
}

/// The newest run that did not finish.
pub fn newest_unfinished(state: &Path) -> Result<String> {
    for id in journal::run_ids(state).into_iter().rev() {
        if !journal::load(state, &id)?.finished() {
            return Ok(id);
        }
    }
    Err(Error::Usage {
        message: "there is no unfinished run to resume".into(),
        hint: "`boxdelegate status --all` lists the runs; start one with `boxdelegate run`".into(),
    })
}

#[derive(Debug, serde::Serialize)]
struct ContainerInfo {
    id: String,
    kind: String,
    unit: String,
    attempt: Option<String>,
    state: String,
}

/// The label filters of run `run_id`'s containers: the run's, and this repository's (a run id
/// names a run of one repository; the label makes sure).
fn run_filters(run_id: &str) -> Vec<String> {
    let mut f = vec![format!("{}={run_id}", labels::RUN)];
    f.extend(crate::engine::repository());
    f
}

fn as_filters(f: &[String]) -> Vec<&str> {
    f.iter().map(String::as_str).collect()
}

async fn containers(engine: Option<&Engine>, run_id: &str) -> Option<Vec<ContainerInfo>> {
    let engine = engine?;
    let list = engine
        .list_containers(&as_filters(&run_filters(run_id)))
        .await
        .ok()?;
    Some(
        list.into_iter()
            .map(|c| {
                let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k)).cloned();
                ContainerInfo {
                    id: c.id.clone().unwrap_or_default(),
                    kind: label(labels::KIND).unwrap_or_default(),
                    unit: label(labels::UNIT).unwrap_or_default(),
                    attempt: label(labels::ATTEMPT),
                    state: c
                        .state
                        .map(|s| s.to_string().to_lowercase())
                        .unwrap_or_default(),
                }
            })
            .collect(),
    )
}

fn state_of(j: &Journal, busy: bool) -> &'static str {
    if j.finished() {
        "finished"
    } else if busy {
        "running"
    } else {
        "interrupted"
    }
}

pub async fn status(project: &Project, run: Option<String>, all: bool, json: bool) -> Result<i32> {
    let state = crate::state::dir(&project.repo);
    let ids = match &run {
        Some(id) => {
            check_run_id(&state, id)?;
            vec![id.clone()]
        }
        None if all => journal::run_ids(&state),
        None => journal::run_ids(&state).into_iter().rev().take(1).collect(),
    };
    let engine = if ids.is_empty() {
        None
    } else {
        Engine::connect().await.ok()
    };
    let mut runs = Vec::new();
    let mut code = exit::OK;
    for id in &ids {
        let containers = containers(engine.as_ref(), id).await;
        match journal::load(&state, id) {
            Ok(j) => {
                // Live while a process holds its lock.
                let holder = crate::state::lock::RepoLock::holder_of(
                    &state,
                    crate::state::lock::Guarded::Run(&j.run_id),
                );
                let busy = holder.is_some() && !j.finished();
                if !json {
                    print_run(
                        &j,
                        state_of(&j, busy),
                        holder.as_deref(),
                        containers.as_deref(),
                    );
                }
                runs.push(serde_json::json!({
                    "run_id": j.run_id,
                    "state": state_of(&j, busy),
                    "started_at": j.started_at,
                    "finished_at": j.finished_at,
                    "snapshot_commit": j.snapshot_commit,
                    "snapshot_tree": j.snapshot_tree,
                    "request": j.request,
                    "breaker": j.breaker,
                    "units": j.units.iter().map(|u| serde_json::json!({
                        "id": u.id,
                        "phase": u.phase,
                        "status": u.result.as_ref().map(|r| r.status),
                        "message": u.result.as_ref().map(|r| r.message.clone()),
                        "landing": u.landing,
                        "attempts": u.attempts.iter().map(|a| serde_json::json!({
                            "n": a.n,
                            "role": a.role,
                            "agent": a.agent,
                            "phase": a.phase,
                            "status": (a.phase == journal::AttemptPhase::Done).then_some(a.result.status),
                            "infra": a.infra,
                            "container": a.container,
                            "patch": a.result.patch,
                            "dir": a.dir,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "containers": containers,
                }));
            }
            Err(e) => {
                code = e.exit_code();
                if !json {
                    eprintln!("error: {e}");
                    if let Some(h) = e.hint() {
                        eprintln!("hint: {h}");
                    }
                }
                runs.push(serde_json::json!({
                    "run_id": id,
                    "state": "unreadable",
                    "error": e.to_string(),
                    "hint": e.hint(),
                    "containers": containers,
                }));
            }
        }
    }
    if json {
        crate::output::print_json(&serde_json::json!({ "runs": runs }))?;
    } else if ids.is_empty() {
        println!("no runs in this repository");
    }
    Ok(code)
}

fn print_run(j: &Journal, state: &str, holder: Option<&str>, containers: Option<&[ContainerInfo]>) {
    println!(
        "run {}  {state}{}  snapshot {}  {} unit(s)",
        j.run_id,
        match (state, holder) {
            ("running", Some(h)) => format!(" ({h})"),
            ("interrupted", _) => " (`boxdelegate resume` continues it)".into(),
            _ => String::new(),
        },
        short(&j.snapshot_tree),
        j.units.len()
    );
    if let Some(b) = &j.breaker {
        println!("  circuit breaker open: {b}");
    }
    for u in &j.units {
        let status = u
            .result
            .as_ref()
            .map(|r| format!("{}: {}", label(r.status), r.message))
            .unwrap_or_else(|| match state {
                "interrupted" => format!("{} (interrupted)", label(u.phase)),
                _ => label(u.phase),
            });
        println!("  {:<20} {status}", u.id);
        for a in &u.attempts {
            // The journal's last word against the engine's: an attempt whose container an
            // interrupt (or anyone) removed is stopped, not running.
            let gone = a.phase != journal::AttemptPhase::Done
                && a.container.as_deref().is_some_and(|c| {
                    containers.is_some_and(|list| {
                        !list
                            .iter()
                            .any(|l| l.id.starts_with(c) || c.starts_with(&l.id))
                    })
                });
            println!(
                "    attempt {} {} ({}){}{}",
                a.n,
                if gone {
                    "stopped".to_string()
                } else {
                    label(a.phase)
                },
                a.agent,
                if a.phase == journal::AttemptPhase::Done {
                    format!(
                        ": {}",
                        a.infra
                            .as_deref()
                            .map(|k| format!("infra-error ({k})"))
                            .unwrap_or_else(|| label(a.result.status))
                    )
                } else {
                    String::new()
                },
                a.container
                    .as_deref()
                    .filter(|_| a.phase != journal::AttemptPhase::Done)
                    .map(|c| {
                        format!(
                            ", container {}{}",
                            short(c),
                            if gone { " (removed)" } else { "" }
                        )
                    })
                    .unwrap_or_default()
            );
        }
    }
    match containers {
        Some([]) => {}
        Some(list) => {
            for c in list {
                println!(
                    "  container {} {} unit {}{} {}",
                    short(&c.id),
                    c.kind,
                    c.unit,
                    c.attempt
                        .as_deref()
                        .map(|a| format!(" attempt {a}"))
                        .unwrap_or_default(),
                    c.state
                );
            }
        }
        None => println!("  containers: unknown (the engine is unreachable)"),
    }
}

/// Removes the containers, unit images and directories of finished runs, or of run `run`.
/// The caller holds the repository lock, so no boxdelegate is working on these runs.
/// How `clean` goes about it: `--force`, `--dry-run`, and which finished runs it keeps
/// (`--older-than`, `--keep`).
pub struct Clean {
    pub force: bool,
    pub dry_run: bool,
    pub older_than: Option<std::time::Duration>,
    pub keep: Option<usize>,
}

pub async fn clean(project: &Project, run: Option<String>, how: Clean, json: bool) -> Result<i32> {
    let Clean {
        force,
        dry_run,
        older_than,
        keep,
    } = how;
    let state = crate::state::dir(&project.repo);
    let mut targets = Vec::new();
    let mut kept = Vec::new();
    match &run {
        Some(id) => {
            check_run_id(&state, id)?;
            targets.push((id.clone(), journal::load(&state, id)));
        }
        None => {
            // Oldest first, by when each started (ids begin with the second only).
            let mut ids = journal::run_ids(&state);
            let started = |id: &String| {
                journal::load(&state, id)
                    .map(|j| (j.started_at, j.started_at_ms))
                    .unwrap_or_default()
            };
            ids.sort_by_cached_key(|id| (started(id), id.clone()));
            let finished = ids
                .iter()
                .filter(|id| journal::load(&state, id).is_ok_and(|j| j.finished()))
                .count();
            let mut seen = 0;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            for id in ids {
                match journal::load(&state, &id) {
                    Ok(j) if j.finished() => {
                        seen += 1;
                        let age = now.saturating_sub(j.started_at);
                        if keep.is_some_and(|k| finished - seen < k) {
                            kept.push(format!("{id} (one of the newest {} finished)", keep.unwrap_or(0)));
                        } else if older_than.is_some_and(|d| age < d.as_secs()) {
                            kept.push(format!(
                                "{id} (started {} ago, newer than {})",
                                humantime::format_duration(std::time::Duration::from_secs(age)),
                                humantime::format_duration(older_than.unwrap_or_default())
                            ));
                        } else {
                            targets.push((id, Ok(j)));
                        }
                    }
                    Ok(_) => kept.push(format!("{id} (not finished: `boxdelegate resume` continues it, `clean --run {id}` removes it)")),
                    Err(_) => kept.push(format!("{id} (unreadable journal: `clean --run {id}` removes it)")),
                }
            }
        }
    }
    if targets.is_empty() {
        if json {
            crate::output::print_json(
                &serde_json::json!({ "removed": [], "kept": kept, "dry_run": dry_run }),
            )?;
        } else {
            println!("nothing to clean");
            for k in &kept {
                println!("  kept run {k}");
            }
        }
        return Ok(exit::OK);
    }
    let engine = Engine::connect().await?;
    let repo_id = crate::state::repo_id(&project.repo)?;
    // Images still wanted by the runs that stay.
    let cleaned: Vec<&str> = targets.iter().map(|(id, _)| id.as_str()).collect();
    let wanted: Vec<String> = journal::run_ids(&state)
        .iter()
        .filter(|id| !cleaned.contains(&id.as_str()))
        .filter_map(|id| journal::load(&state, id).ok())
        .filter_map(|j| j.unit_image)
        .collect();
    let mut removed = Vec::new();
    for (id, loaded) in &targets {
        let list = engine
            .list_containers(&as_filters(&run_filters(id)))
            .await?;
        let unfinished = !matches!(loaded, Ok(j) if j.finished());
        // A live run is its process's to end, --force or not.
        if let Some(holder) =
            crate::state::lock::RepoLock::holder_of(&state, crate::state::lock::Guarded::Run(id))
        {
            return Err(Error::Busy {
                message: format!("run {id} is live: {holder} is working on it"),
                hint: "wait for it to end (`boxdelegate wait UNIT --run ID`), or stop that process first".into(),
            });
        }
        let running = list
            .iter()
            .filter(|c| c.state.map(|s| s.to_string().to_lowercase()) == Some("running".into()))
            .count();
        if dry_run {
            let image = match loaded {
                Ok(Journal {
                    unit_image: Some(image),
                    ..
                }) if !wanted.contains(image) => Some(image.clone()),
                _ => None,
            };
            if !json {
                println!(
                    "would remove run {id}: {} container(s){}, its directory",
                    list.len(),
                    image
                        .as_ref()
                        .map(|i| format!(", its claim on image {i} (the image too, if no other repository uses it)"))
                        .unwrap_or_default()
                );
            }
            removed.push(serde_json::json!({
                "run_id": id,
                "containers": list.len(),
                "images": image.into_iter().collect::<Vec<_>>(),
            }));
            continue;
        }
        if unfinished && running > 0 && !force {
            return Err(Error::Usage {
                message: format!(
                    "run {id} is not finished and {running} of its container(s) still run (an agent at work)"
                ),
                hint: format!(
                    "continue it with `boxdelegate resume {id}`, or remove it anyway with `boxdelegate clean --run {id} --force`"
                ),
            });
        }
        for c in &list {
            if let Some(c) = &c.id {
                engine.remove_container(c).await?;
            }
        }
        for n in engine
            .list_networks(&[&format!("{}={id}", labels::RUN)])
            .await?
        {
            engine.remove_network(&n).await?;
        }
        let mut images = Vec::new();
        if let Ok(Journal {
            unit_image: Some(image),
            ..
        }) = loaded
        {
            // Only this repository's claim on the image goes; the image with it when no
            // other repository on the engine uses it.
            if !wanted.contains(image)
                && crate::images::uses::release(&engine, &repo_id, image)
                    .await
                    .ok()
                    == Some(crate::images::uses::Released::Removed)
            {
                images.push(image.clone());
            }
        }
        // Last results that point into this run go with it.
        let last = state.join("last");
        for e in std::fs::read_dir(&last).into_iter().flatten().flatten() {
            let points_here = std::fs::read(e.path())
                .ok()
                .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
                .is_some_and(|v| v["run_id"] == id.as_str());
            if points_here {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let dir = journal::runs_dir(&state).join(id);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        if !json {
            println!(
                "removed run {id}: {} container(s){}, its directory",
                list.len(),
                images
                    .iter()
                    .map(|i| format!(", image {i}"))
                    .collect::<String>()
            );
        }
        removed.push(serde_json::json!({
            "run_id": id,
            "containers": list.len(),
            "images": images,
        }));
    }
    if json {
        crate::output::print_json(
            &serde_json::json!({ "removed": removed, "kept": kept, "dry_run": dry_run }),
        )?;
    } else {
        for k in &kept {
            println!("  kept run {k}");
        }
    }
    Ok(exit::OK)
}
