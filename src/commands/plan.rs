//! `boxdelegate plan import`: a Markdown plan's marked sections into unit files (the parsing is
//! `config::plan`'s), each checked by the unit parser and written all or none; never
//! overwrites a unit file.
//!
//! May not: overwrite a unit file, or write some of a plan's units when one is bad.

use std::path::{Path, PathBuf};

use crate::cli::{GlobalArgs, PlanCommand};
use crate::config::plan::*;
use crate::config::unit::Unit;
use crate::config::Config;
use crate::error::{exit, Error, Result};

/// `boxdelegate plan …`.
pub fn command(global: &GlobalArgs, cmd: PlanCommand) -> Result<i32> {
    match cmd {
        PlanCommand::Import {
            plan,
            units_dir,
            dry_run,
            json,
        } => import(global, &plan, units_dir, dry_run, json),
    }
}

fn import(
    global: &GlobalArgs,
    plan: &Path,
    units_dir: Option<PathBuf>,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let repo = crate::project::open_repo(global)?;
    let root = &repo.root;
    let units_dir = match units_dir {
        Some(d) => d,
        None => PathBuf::from(Config::load(root)?.project.units_dir),
    };
    let text = std::fs::read_to_string(plan).map_err(|e| Error::Usage {
        message: format!("cannot read the plan {}: {e}", plan.display()),
        hint: "pass the path of a Markdown plan (UTF-8)".into(),
    })?;
    // How the plan is named in messages and in the files' comment: relative to the repository
    // when it is inside it, else by its file name.
    let plan_name = std::fs::canonicalize(plan)
        .ok()
        .and_then(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .or_else(|| plan.file_name().map(PathBuf::from))
        .unwrap_or_else(|| plan.to_path_buf());
    let kind = |p: &str| match std::fs::metadata(root.join(p)) {
        Ok(m) if m.is_dir() => PathKind::Dir,
        Ok(_) => PathKind::File,
        Err(_) => PathKind::Missing,
    };
    let plan_err = |e: PlanError| Error::Config {
        file: plan_name.clone(),
        message: e.message,
        hint: Some(e.hint),
    };
    let parsed = parse(&text, &kind).map_err(plan_err)?;
    if parsed.units.is_empty() {
        return Err(plan_err(plan_error(
            "no section is marked `Execution target: external-delegate`",
            "mark each section to delegate with a line such as `**Execution note:** Execution target: external-delegate`",
        )));
    }
    let mut files = Vec::new();
    for d in &parsed.units {
        let rel = units_dir.join(format!("{}.md", d.id));
        let text = render(d, &plan_name.display().to_string());
        // The project's own parser is the judge: what it rejects is never written.
        Unit::parse(&text, &rel).map_err(|e| {
            plan_err(plan_error(
                format!(
                    "section {:?} (line {}) would make an invalid unit file {}: {e}",
                    d.section,
                    d.line,
                    rel.display()
                ),
                e.hint().unwrap_or("fix the section in the plan"),
            ))
        })?;
        files.push((rel, text));
    }
    let existing: Vec<&PathBuf> = files
        .iter()
        .map(|(rel, _)| rel)
        .filter(|rel| {
            let p = root.join(rel);
            p.exists() || p.is_symlink()
        })
        .collect();
    if let Some(first) = existing.first() {
        return Err(Error::Exists {
            path: (*first).clone(),
            hint: format!(
                "boxdelegate never overwrites a unit file, so nothing was written ({} of the {} unit files exist: {}); remove or rename them, change the ids in the plan (an `ID:` line), or import into another directory with --units-dir",
                existing.len(),
                files.len(),
                existing
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if !dry_run {
        write_all(root, &units_dir, &files)?;
    }
    if json {
        let units: Vec<serde_json::Value> = parsed
            .units
            .iter()
            .zip(&files)
            .map(|(d, (rel, _))| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["file"] = serde_json::Value::String(rel.display().to_string());
                v
            })
            .collect();
        crate::output::print_json(&serde_json::json!({
            "plan": plan_name,
            "dry_run": dry_run,
            "units": units,
            "not_delegated": parsed.not_delegated,
        }))?;
    } else {
        let verb = if dry_run { "would write" } else { "wrote" };
        for (d, (rel, _)) in parsed.units.iter().zip(&files) {
            println!("{verb} {}  scope: {}", rel.display(), d.scope.join(", "));
        }
        if !parsed.not_delegated.is_empty() {
            println!(
                "not marked external-delegate: {}",
                parsed.not_delegated.join("; ")
            );
        }
    }
    Ok(exit::OK)
}

/// Writes every file or none: each is created exclusively, and on a failure the ones already
/// written are removed.
fn write_all(root: &Path, units_dir: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    use std::io::Write;
    let dir = root.join(units_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", units_dir.display()), e))?;
    let mut written: Vec<PathBuf> = Vec::new();
    for (rel, text) in files {
        let path = root.join(rel);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = result {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::Exists {
                    path: rel.clone(),
                    hint: "it appeared while importing; nothing was written".into(),
                });
            }
            return Err(Error::io(
                format!("writing {} (nothing was kept)", rel.display()),
                e,
            ));
        }
        written.push(path);
    }
    Ok(())
}
