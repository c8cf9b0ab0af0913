//! `boxdelegate run` and `resume` (the orchestration is `crate::run`'s), and what a person
//! reads of a run: the report, the summary table, one unit's result (also for `show` and
//! `apply`).
//!
//! May not: drive the phases itself (the orchestration is `run`'s); print anything but JSON on
//! stdout with `--json`.

use super::reporter;
use crate::cli::GlobalArgs;
use crate::error::Result;
use crate::output::print_json;
use crate::project::Project;

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
