//! The subcommands: each file takes its part of the parsed command line, resolves everything
//! (repository, configuration, profile, snapshot) before it touches the engine, prints for
//! people or `--json`, and returns the exit code. `mod.rs` dispatches.
//!
//! The top layer: nothing below imports from here.
//!
//! May not: be imported by anything below; touch the engine before every input is resolved.

mod doctor;
mod image;
mod logs;
mod manual;
mod plan;
mod run;
mod status;
mod unit;
mod verify;

use std::io::Write;
use std::path::Path;

use crate::cli::{Cli, Command, GlobalArgs};

use crate::config;
use crate::error::{exit, Error, Result};

use crate::images::{self};
use crate::output::{print_json, JsonLines, Reporter, Silent, Terminal};
use crate::project::{open_repo, Project};
use crate::snapshot::{self, Snapshot};

pub(super) fn reporter(global: &GlobalArgs, json: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(JsonLines::new())
    } else if global.quiet {
        Box::new(Silent)
    } else {
        Box::new(Terminal::new(global.verbose > 0))
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    let global = &cli.global;
    // Settings from the environment are checked before any command touches anything.
    images::build_method()?;
    crate::extract::upper::mechanism()?;
    match cli.command {
        Command::Init { profile } => {
            let repo = open_repo(global)?;
            // The agent: Codex when its key variable is set here (its name only is written).
            let codex_key = std::env::var_os("CODEX_API_KEY")
                .is_some_and(|v| !v.is_empty())
                .then_some("CODEX_API_KEY");
            let done = config::init::run(&repo.root, profile.as_deref(), codex_key)?;
            let why = match &done.detected_from {
                Some(file) => format!(" (detected from {file})"),
                None => String::new(),
            };
            println!("profile: {}{why}", done.profile);
            println!(
                "agent: {}",
                match codex_key {
                    Some(var) => format!("codex, its key from {var}, through the model gateway"),
                    None =>
                        "none yet (a placeholder command: set [agent] in boxdelegate.toml)".into(),
                }
            );
            for path in &done.written {
                println!("wrote {}", path.display());
            }
            println!("next:");
            println!("  1. say what to build in units/example.md: title, scope, the task");
            if codex_key.is_none() {
                println!("  2. set [agent] in boxdelegate.toml: your command, or kind = \"codex\" (docs/codex.md)");
            } else {
                println!("  2. check [agent] in boxdelegate.toml (docs/codex.md)");
            }
            println!("  3. git add boxdelegate.toml units && git commit -m \"boxdelegate: units\"");
            println!("  4. boxdelegate unit check && boxdelegate run --unit example");
            Ok(exit::OK)
        }
        Command::Snapshot { snap, tar, json } => {
            let repo = open_repo(global)?;
            let snapshot = Snapshot::take(&repo, snap.include_dirty)?;
            if let Some(path) = tar {
                let entries = snapshot::list_tree(&repo, &snapshot.tree)?;
                let stats = if path == Path::new("-") {
                    snapshot::write_tar(&repo, &entries, &[], std::io::stdout().lock())?
                } else {
                    let file = std::fs::File::create(&path)
                        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                    snapshot::write_tar(&repo, &entries, &[], std::io::BufWriter::new(file))?
                };
                if !global.quiet && path != Path::new("-") {
                    eprintln!(
                        "wrote {} ({} files, {} bytes)",
                        path.display(),
                        stats.files,
                        stats.bytes
                    );
                }
            } else if json {
                print_json(&snapshot)?;
            } else {
                println!("{}", snapshot.tree);
            }
            Ok(exit::OK)
        }
        Command::Image(cmd) => image::image(global, cmd).await,
        Command::Run {
            units,
            all,
            branch,
            rerun,
            jobs,
            wait,
            detach,
            run_id,
            snap,
            json,
        } => {
            if detach {
                return run::detach(global, json);
            }
            if let Some(id) = run_id
                .as_ref()
                .filter(|id| !crate::state::journal::valid_run_id(id))
            {
                return Err(Error::Usage {
                    message: format!("--run-id {id:?} is not a run id"),
                    hint: "leave it to --detach".into(),
                });
            }
            let args = crate::run::RunArgs {
                units,
                all,
                branch,
                rerun,
                include_dirty: snap.include_dirty,
                jobs: jobs.map(usize::from),
                wait,
                resume: None,
                run_id,
            };
            run::run_command(global, args, json).await
        }
        Command::Wait {
            unit,
            run: id,
            timeout,
            json,
        } => {
            let project = Project::open(global)?;
            run::wait(&project, &unit, id, timeout, json).await
        }
        Command::Resume {
            run,
            jobs,
            wait,
            json,
        } => {
            let project = Project::open(global)?;
            let state = crate::state::dir(&project.repo);
            let id = match run {
                Some(id) => {
                    status::check_run_id(&state, &id)?;
                    id
                }
                None => status::newest_unfinished(&state)?,
            };
            let args = crate::run::RunArgs {
                units: vec![],
                all: false,
                branch: None,
                rerun: false,
                include_dirty: false,
                jobs: jobs.map(usize::from),
                wait,
                resume: Some(id),
                run_id: None,
            };
            run::run_command(global, args, json).await
        }
        Command::Status { run, all, json } => {
            let project = Project::open(global)?;
            status::status(&project, run, all, json).await
        }
        Command::Clean {
            run,
            force,
            dry_run,
            older_than,
            keep,
            json,
        } => {
            let project = Project::open(global)?;
            let _lock = crate::state::lock::RepoLock::acquire(
                &crate::state::dir(&project.repo),
                "clean",
                false,
            )?;
            let how = status::Clean {
                force,
                dry_run,
                older_than,
                keep,
            };
            status::clean(&project, run, how, json).await
        }
        Command::Unit(cmd) => unit::unit_command(global, cmd),
        Command::Diff { unit } => {
            let project = Project::open(global)?;
            let r = crate::state::last_result(&project.repo, &unit)?;
            let patch = r.patch.ok_or_else(|| Error::Usage {
                message: format!("the last run of unit {unit} kept no patch ({})", r.message),
                hint: format!("run it: boxdelegate run --unit {unit}"),
            })?;
            let data = std::fs::read(&patch)
                .map_err(|e| Error::io(format!("reading {}", patch.display()), e))?;
            std::io::stdout()
                .write_all(&data)
                .map_err(|e| Error::io("writing the patch", e))?;
            Ok(exit::OK)
        }
        Command::Show { unit, json } => {
            let project = Project::open(global)?;
            let r = crate::state::last_result(&project.repo, &unit)?;
            if json {
                print_json(&r)?;
            } else {
                // print_result names the patch and the log already.
                run::print_result(&r);
            }
            Ok(exit::OK)
        }
        Command::Apply {
            unit,
            branch,
            wait,
            json,
        } => {
            let project = Project::open(global)?;
            let r = crate::run::apply(&project, &unit, branch, wait)?;
            if json {
                print_json(&r)?;
            } else {
                run::print_result(&r);
            }
            Ok(r.status.exit_code())
        }
        Command::Doctor { json } => doctor::run(global, json).await,
        Command::Verify(args) => {
            let repo = open_repo(global)?;
            let json = args.json;
            let reporter = reporter(global, json);
            let done = verify::run(&repo, args, reporter.as_ref()).await;
            reporter.finish();
            let done = done?;
            if json {
                print_json(&done.record)?;
            } else {
                verify::print_verification(&done);
            }
            Ok(done.exit_code)
        }
        Command::Logs {
            unit,
            run,
            attempt,
            follow,
        } => {
            let project = Project::open(global)?;
            let request = logs::Request {
                unit,
                run,
                attempt,
                follow,
            };
            logs::run(&project, &request).await
        }
        Command::Completions { shell } => manual::completions(shell),
        Command::Man { dir } => manual::man(dir.as_deref()),
        Command::Plan(cmd) => plan::command(global, cmd),
    }
}
