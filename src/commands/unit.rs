//! `boxdelegate unit ls|show|new|check`: the unit files, listed, shown, scaffolded and checked
//! without touching the engine.
//!
//! May not: touch the engine; overwrite a unit file.

use std::path::Path;

use crate::cli::{GlobalArgs, UnitCommand};
use crate::config::unit::{self};
use crate::error::{exit, Error, Result};
use crate::output::print_json;
use crate::project::Project;
use crate::snapshot::{self, TreeEntry};

pub fn unit_command(global: &GlobalArgs, cmd: UnitCommand) -> Result<i32> {
    let project = Project::open(global)?;
    let root = &project.repo.root;
    let dir = &project.config.project.units_dir;
    match cmd {
        UnitCommand::New { id, scope } => {
            unit::validate_id(&id).map_err(|m| Error::Usage {
                message: format!("unit {m}"),
                hint: "pick another id".into(),
            })?;
            if let Err((glob, err)) = unit::Globs::new(&scope) {
                return Err(Error::Usage {
                    message: format!("--scope {glob:?} does not compile: {err}"),
                    hint: "`*` matches within a directory, `**` across directories".into(),
                });
            }
            let rel = Path::new(dir).join(format!("{id}.md"));
            let path = root.join(&rel);
            if path.exists() || path.is_symlink() {
                return Err(Error::Exists {
                    path: rel,
                    hint: "boxdelegate never overwrites a unit file; edit it or pick another id"
                        .into(),
                });
            }
            std::fs::create_dir_all(root.join(dir))
                .map_err(|e| Error::io(format!("creating {dir}"), e))?;
            std::fs::write(&path, unit::scaffold(&id, &scope))
                .map_err(|e| Error::io(format!("writing {}", rel.display()), e))?;
            println!("wrote {}", rel.display());
            Ok(exit::OK)
        }
        UnitCommand::Ls { json } => {
            let mut rows = Vec::new();
            for id in unit::list_ids(root, dir) {
                let row = match unit::load(root, dir, &id) {
                    Ok(u) => {
                        serde_json::json!({"id": id, "title": u.meta.title, "scope": u.meta.scope, "valid": true})
                    }
                    Err(e) => serde_json::json!({"id": id, "valid": false, "error": e.to_string()}),
                };
                rows.push(row);
            }
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    match r["valid"].as_bool() {
                        Some(true) => println!(
                            "{:<20} {}",
                            r["id"].as_str().unwrap_or_default(),
                            r["title"].as_str().unwrap_or_default()
                        ),
                        _ => println!(
                            "{:<20} INVALID: {}",
                            r["id"].as_str().unwrap_or_default(),
                            r["error"].as_str().unwrap_or_default()
                        ),
                    }
                }
            }
            Ok(exit::OK)
        }
        UnitCommand::Check { id } => {
            let ids = match id {
                Some(id) => vec![id],
                None => unit::list_ids(root, dir),
            };
            let head = project.repo.resolve("HEAD^{tree}")?;
            let files: Vec<TreeEntry> = match &head {
                Some(tree) => snapshot::list_tree(&project.repo, tree)?,
                None => vec![],
            };
            let mut invalid = 0;
            for id in ids {
                match unit::load(root, dir, &id) {
                    Ok(u) => {
                        let globs = u.globs()?;
                        let in_scope = files
                            .iter()
                            .filter(|e| globs.scope.is_match(e.path()))
                            .count();
                        let prompt = u.prompt().len();
                        let mut warnings = Vec::new();
                        // A scope glob that matches nothing at HEAD: right for files the unit
                        // creates, and the sign of a typo otherwise; said, never a quiet ok.
                        for g in globs.scope.unmatched(files.iter().map(|e| e.path())) {
                            warnings.push(format!("scope {g:?} matches no file at HEAD: right if the unit creates files there, else check it for a typo"));
                        }
                        if in_scope > unit::MAX_SCOPE_FILES {
                            warnings.push(format!("{in_scope} files in scope (more than {}): small, focused units are cheaper and succeed more often; consider splitting it", unit::MAX_SCOPE_FILES));
                        }
                        if prompt > unit::MAX_PROMPT_BYTES {
                            warnings.push(format!("the prompt is {prompt} bytes (more than {}): consider splitting the unit", unit::MAX_PROMPT_BYTES));
                        }
                        if warnings.is_empty() {
                            println!(
                                "{id}: ok ({in_scope} file(s) in scope, prompt {prompt} bytes)"
                            );
                        }
                        for w in warnings {
                            println!("{id}: warning: {w}");
                        }
                    }
                    Err(e) => {
                        // Said once, here; the command's own error only counts them.
                        println!("{id}: error: {e}");
                        invalid += 1;
                    }
                }
            }
            if invalid > 0 {
                return Err(Error::config_hint(
                    dir,
                    format!("{invalid} unit file(s) invalid (listed above)"),
                    "fix each as its line says; docs/configuration.md lists every key of a unit",
                ));
            }
            Ok(exit::OK)
        }
    }
}
