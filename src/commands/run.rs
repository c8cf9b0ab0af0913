//! `boxdelegate run` and `resume` (the orchestration is `crate::run`'s), and what a person
//! reads of a run: the report, the summary table, one unit's result (also for `show` and
//! `apply`).
//!
//! May not: drive the phases itself (the orchestration is `run`'s); print anything but JSON on
//! stdout with `--json`.

use super::reporter;
use crate::cli::GlobalArgs;
use crate::error::{Error, Result};
use crate::output::print_json;
use crate::project::Project;
use crate::state::PrivateOpen;

pub async fn run_command(
    global: &GlobalArgs,
    args: crate::run::RunArgs,
    json: bool,
) -> Result<i32> {
    let project = Project::open(global)?;
    if !args.include_dirty && args.resume.is_none() {
        if let Some(w) = uncommitted_settings(&project) {
            eprintln!("warning: {w}");
        }
    }
    if std::env::var_os("CODEX_THREAD_ID").is_some() {
        // Started by a Codex session: its sandbox usually hides the engine, so say so
        // before anything fails for that reason.
        eprintln!("note: boxdelegate was started inside a Codex session (CODEX_THREAD_ID is set); the container engine is usually unreachable from there, and no CODEX_* session variable is passed to any container");
    }
    let reporter = reporter(global, json);
    let outcome = crate::run::run(&project, args, reporter.as_ref()).await;
    reporter.finish();
    let outcome = outcome?;
    if json {
        print_json(
            &serde_json::json!({ "type": "result", "run": outcome.report, "units": outcome.results }),
        )?;
    } else {
        print_summary(&outcome.results);
        if let Some(report) = &outcome.report {
            print_report(report);
        }
    }
    let breaker = outcome.report.as_ref().is_some_and(|r| r.breaker.is_some());
    Ok(crate::run::exit_code(&outcome.results, breaker))
}

/// The configuration, unit and profile files that differ from `HEAD` (changed, staged or new),
/// said as a warning: `run` reads them from the working tree while the agent gets `HEAD`'s
/// tree, so a unit edited but not committed is delegated against code that predates it.
fn uncommitted_settings(project: &Project) -> Option<String> {
    let units = &project.config.project.units_dir;
    let out = project
        .repo
        .run(&[
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--",
            crate::config::CONFIG_FILE,
            units.as_str(),
            ".boxdelegate",
        ])
        .ok()?;
    let paths: Vec<String> = out
        .split(|b| *b == 0)
        .filter(|e| e.len() > 3)
        .map(|e| String::from_utf8_lossy(&e[3..]).into_owned())
        .collect();
    if paths.is_empty() {
        return None;
    }
    let shown = if paths.len() > 4 {
        format!("{} and {} more", paths[..3].join(", "), paths.len() - 3)
    } else {
        paths.join(", ")
    };
    let (verb, them) = if paths.len() == 1 {
        ("differs", "it")
    } else {
        ("differ", "them")
    };
    Some(format!(
        "{shown} {verb} from HEAD: run reads {them} from the working tree, while the agent works on HEAD's tree; commit {them} (or pass --include-dirty) so the two agree"
    ))
}

fn print_report(r: &crate::run::RunReport) {
    let width = crate::output::stdout_width();
    println!();
    let line = format!(
        "run {}{}: {} unit(s): {} landed on the first attempt, {} after retries, {} by the fallback agent, {} already landed, {} failed, {} in conflict, {} skipped",
        r.run_id,
        if r.resumed { " (resumed)" } else { "" },
        r.units,
        r.landed_first_attempt,
        r.landed_after_retries,
        r.landed_by_fallback,
        r.already_landed,
        r.failed,
        r.conflict,
        r.skipped
    );
    println!("{}", crate::output::wrap(&line, width, 2));
    let line = format!(
        "  wall time {:.1}s, agent time {:.1}s, {} job(s); tokens: {} input ({} cached), {} output{}",
        r.wall_seconds,
        r.agent_seconds,
        r.jobs,
        r.usage.input_tokens,
        r.usage.cached_input_tokens,
        r.usage.output_tokens,
        r.cost_usd
            .map(|c| format!("; cost ≈ ${c:.4}"))
            .unwrap_or_default()
    );
    println!("{}", crate::output::wrap(&line, width, 4));
    if let Some(b) = &r.breaker {
        println!(
            "{}",
            crate::output::wrap(&format!("  circuit breaker open: {b}"), width, 4)
        );
    }
}

/// The end-of-run table (one row per unit), then each unit's details.
fn print_summary(results: &[crate::record::UnitResult]) {
    // 75 columns: it fits an 80-column terminal; a longer unit id is cut with an ellipsis.
    println!(
        "{:<20} {:<14} {:>5} {:>5} {:>7} {:>9} {:>9}",
        "unit", "verdict", "tries", "files", "time", "tokens", "cost"
    );
    for r in results {
        let tokens = r
            .usage
            .as_ref()
            .map(|u| (u.input_tokens + u.output_tokens).to_string())
            .unwrap_or_else(|| "-".into());
        let cost = r
            .cost_usd
            .map(|c| format!("${c:.4}"))
            .unwrap_or_else(|| "-".into());
        let unit = if r.unit.chars().count() > 20 {
            format!("{}…", r.unit.chars().take(19).collect::<String>())
        } else {
            r.unit.clone()
        };
        let status = crate::output::label(r.status);
        let pad = " ".repeat(14usize.saturating_sub(status.chars().count()));
        println!(
            "{:<20} {}{pad} {:>5} {:>5} {:>6.1}s {:>9} {:>9}",
            unit,
            crate::output::status_styled(&status, false),
            r.attempts.len(),
            r.files_changed,
            r.seconds,
            tokens,
            cost
        );
    }
    for r in results {
        println!();
        print_result(r);
    }
}

/// A result's file as a person would open it: its path (relative to the current directory
/// when beneath it), or on a terminal too narrow for that path, the command that prints it
/// (`--json` has every path).
fn fitting(path: &std::path::Path, command: &str) -> String {
    let shown = crate::output::shown_path(path);
    match crate::output::stdout_width() {
        Some(w) if shown.chars().count() + 9 > w => command.to_string(),
        _ => shown,
    }
}

pub fn print_result(r: &crate::record::UnitResult) {
    let status = crate::output::label(r.status);
    // The message, warnings, rejections and refused requests may quote the box (check output,
    // paths, URLs): made visible, never interpreted by the terminal.
    let v = crate::output::visible;
    // Wrapped at words to the terminal, never cut.
    let line = format!("{}: {status}: {}", r.unit, v(&r.message));
    let line = crate::output::wrap(&line, crate::output::stdout_width(), 2);
    let styled = format!(
        "{}: {}",
        r.unit,
        crate::output::status_styled(&status, false)
    );
    println!(
        "{}",
        line.replacen(&format!("{}: {status}", r.unit), &styled, 1)
    );
    if let Some(p) = &r.patch {
        println!(
            "  patch: {}",
            fitting(p, &format!("boxdelegate diff {}", r.unit))
        );
    }
    if let Some(l) = &r.log {
        println!(
            "  log:   {}",
            fitting(l, &format!("boxdelegate logs {}", r.unit))
        );
    }
    if let Some(u) = &r.usage {
        println!(
            "  tokens: {} input ({} cached), {} output{}",
            u.input_tokens,
            u.cached_input_tokens,
            u.output_tokens,
            r.cost_usd
                .map(|c| format!("; cost ≈ ${c:.4}"))
                .unwrap_or_else(|| "; no price configured for this model ([prices])".into())
        );
    }
    if r.attempts.len() > 1 {
        for a in &r.attempts {
            println!(
                "  attempt {} ({}{}): {}{}",
                a.n,
                a.agent,
                if a.role == crate::record::Role::Fallback {
                    ", fallback"
                } else {
                    ""
                },
                a.infra
                    .as_deref()
                    .map(|k| format!("infra-error ({k})"))
                    .unwrap_or_else(|| crate::output::label(a.status)),
                a.patch
                    .as_ref()
                    .map(|p| format!(", patch {}", p.display()))
                    .unwrap_or_default()
            );
        }
    }
    if !r.network_refused.is_empty() {
        println!(
            "  the egress proxy refused {} request(s):",
            r.network_refused.len()
        );
        for req in &r.network_refused {
            println!("    {}", v(req));
        }
    }
    let width = crate::output::stdout_width();
    for w in &r.warnings {
        println!(
            "{}",
            crate::output::wrap(&format!("  warning: {}", v(w)), width, 4)
        );
    }
    for rej in &r.rejections {
        println!(
            "{}",
            crate::output::wrap(&format!("  - {}", v(&rej.to_string())), width, 4)
        );
    }
}

/// `run --detach`: the same command started again as a process of its own session (it outlives
/// this one and a closed terminal), given a run id now so a caller can follow it; its output
/// goes to `.git/boxdelegate/detached/ID.log`, its pid to `ID.pid`. Prints the id.
pub fn detach(global: &GlobalArgs, json: bool) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let project = Project::open(global)?;
    let id = crate::run::new_run_id();
    let dir = crate::state::dir(&project.repo).join("detached");
    crate::state::create_private_dir(&dir)?;
    let log_path = dir.join(format!("{id}.log"));
    let log = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode_private()
        .open(&log_path)
        .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::io("duplicating the log's handle", e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    // The same arguments, less --detach, plus the id; JSON events in the log when asked.
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .chain(["--run-id".into(), id.clone().into()])
        .collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .current_dir(&project.repo.root)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setsid in the child between fork and exec, which only makes it a session leader.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("starting the detached run", e))?;
    crate::state::write_private(
        &dir.join(format!("{id}.pid")),
        format!("{}\n", child.id()).as_bytes(),
    )?;
    let log_shown = crate::output::shown_path(&log_path);
    if json {
        print_json(&serde_json::json!({
            "type": "detached",
            "run_id": id,
            "pid": child.id(),
            "log": log_path,
        }))?;
    } else {
        println!("run {id} goes on in the background (pid {})", child.id());
        println!("  its output: {log_shown}");
        println!("  follow a unit: boxdelegate wait UNIT --run {id}");
    }
    Ok(crate::error::exit::OK)
}

/// `wait UNIT`: blocks until the unit's delegation in run `run` (else its newest run) ends,
/// reading the run's journal as it is written; prints the result as `show` does and exits
/// with the code `run` would have.
pub async fn wait(
    project: &Project,
    unit: &str,
    run: Option<String>,
    timeout: Option<std::time::Duration>,
    json: bool,
) -> Result<i32> {
    use crate::state::journal::{self, UnitPhase};
    let state = crate::state::dir(&project.repo);
    if let Some(id) = run.as_ref().filter(|id| !journal::valid_run_id(id)) {
        return Err(Error::Usage {
            message: format!("--run {id:?} is not a run id"),
            hint: "`boxdelegate status --all` lists the runs".into(),
        });
    }
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    // A detached run's process, while it lives (before it has written a journal, too).
    let alive = |id: &str| -> bool {
        let pid = std::fs::read_to_string(state.join("detached").join(format!("{id}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        // Alive: it exists and is no zombie (a killed process whose parent is gone may wait
        // a while to be reaped).
        pid.is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        })
    };
    use crate::state::lock::{Guarded, RepoLock};
    loop {
        // A process working on the unit (before its run's journal exists, too).
        let unit_busy = RepoLock::holder_of(&state, Guarded::Unit(unit)).is_some();
        let found = match &run {
            Some(id) => journal::load(&state, id).ok(),
            None => journal::run_ids(&state)
                .into_iter()
                .rev()
                .filter_map(|id| journal::load(&state, &id).ok())
                .find(|j| j.units.iter().any(|u| u.id == unit)),
        };
        match found {
            Some(j) => {
                let Some(u) = j.units.iter().find(|u| u.id == unit) else {
                    return Err(Error::Usage {
                        message: format!("run {} does not delegate unit {unit}", j.run_id),
                        hint: format!("its units: {}", j.request.units.join(", ")),
                    });
                };
                if let (UnitPhase::Done, Some(r)) = (u.phase, &u.result) {
                    if json {
                        print_json(r)?;
                    } else {
                        print_result(r);
                    }
                    return Ok(r.status.exit_code());
                }
                let live = RepoLock::holder_of(&state, Guarded::Run(&j.run_id)).is_some();
                if !live && !alive(&j.run_id) {
                    return Err(Error::WaitEnded {
                        message: format!(
                            "run {} stopped before unit {unit} ended (interrupted, or its process died)",
                            j.run_id
                        ),
                        hint: format!("`boxdelegate resume {}` continues it", j.run_id),
                        timed_out: false,
                    });
                }
            }
            None => match &run {
                Some(id) if !alive(id) && !unit_busy => {
                    let log = state.join("detached").join(format!("{id}.log"));
                    return Err(Error::WaitEnded {
                        message: format!("run {id} never started its units"),
                        hint: if log.is_file() {
                            format!("its output says why: {}", log.display())
                        } else {
                            "`boxdelegate status --all` lists the runs".into()
                        },
                        timed_out: false,
                    });
                }
                None if !unit_busy => {
                    return Err(Error::Usage {
                        message: format!("no run delegates unit {unit}"),
                        hint: format!("start one: boxdelegate run --unit {unit} --detach"),
                    });
                }
                _ => {}
            },
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(Error::WaitEnded {
                message: format!("unit {unit} did not end within the --timeout"),
                hint: "wait again, or see `boxdelegate status`".into(),
                timed_out: true,
            });
        }
        // The journal is rewritten at each phase boundary; reading it is cheap.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
