//! Acting on the parsed command line: resolve everything (repository, configuration, profile,
//! snapshot) first, then touch the engine.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use crate::cli::{Cli, Command, GlobalArgs, ImageCommand, SnapshotArgs, UnitCommand};

use crate::config;
use crate::config::unit;
use crate::engine::{labels, short, Engine};
use crate::error::{exit, Error, Result};

use crate::images::{self, DepsPlan};
use crate::output::{print_json, JsonLines, Reporter, Silent, Terminal};
use crate::project::{open_repo, Project};
use crate::snapshot::{self, Snapshot, TreeEntry};

fn reporter(global: &GlobalArgs, json: bool) -> Box<dyn Reporter> {
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
    match cli.command {
        Command::Init { profile } => {
            let repo = open_repo(global)?;
            let done = config::init::run(&repo.root, profile.as_deref())?;
            let why = match &done.detected_from {
                Some(file) => format!(" (detected from {file})"),
                None => String::new(),
            };
            println!("profile: {}{why}", done.profile);
            for path in &done.written {
                println!("wrote {}", path.display());
            }
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
        Command::Image(cmd) => image(global, cmd).await,
        Command::Run {
            units,
            all,
            branch,
            rerun,
            jobs,
            wait,
            snap,
            json,
        } => {
            let args = crate::run::RunArgs {
                units,
                all,
                branch,
                rerun,
                include_dirty: snap.include_dirty,
                jobs: jobs.map(usize::from),
                wait,
                resume: None,
            };
            run_command(global, args, json).await
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
                    crate::status::check_run_id(&state, &id)?;
                    id
                }
                None => crate::status::newest_unfinished(&state)?,
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
            };
            run_command(global, args, json).await
        }
        Command::Status { run, all, json } => {
            let project = Project::open(global)?;
            crate::status::status(&project, run, all, json).await
        }
        Command::Clean { run, force, json } => {
            let project = Project::open(global)?;
            let _lock = crate::state::lock::RepoLock::acquire(
                &crate::state::dir(&project.repo),
                "clean",
                false,
            )?;
            crate::status::clean(&project, run, force, json).await
        }
        Command::Unit(cmd) => unit_command(global, cmd),
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
                print_result(&r);
                if let Some(p) = &r.patch {
                    println!("  patch: {}", p.display());
                }
                if let Some(l) = &r.log {
                    println!("  log:   {}", l.display());
                }
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
                print_result(&r);
            }
            Ok(r.status.exit_code())
        }
        Command::Doctor { json } => crate::doctor::run(global, json).await,
        Command::Verify(args) => {
            let repo = open_repo(global)?;
            let json = args.json;
            let reporter = reporter(global, json);
            let done = crate::verify::command::run(&repo, args, reporter.as_ref()).await;
            reporter.finish();
            let done = done?;
            if json {
                print_json(&done.record)?;
            } else {
                print_verification(&done);
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
            let request = crate::logs::Request {
                unit,
                run,
                attempt,
                follow,
            };
            crate::logs::run(&project, &request).await
        }
        Command::Completions { shell } => crate::manual::completions(shell),
        Command::Man { dir } => crate::manual::man(dir.as_deref()),
        Command::Plan(cmd) => crate::plan::command(global, cmd),
    }
}

fn print_verification(done: &crate::verify::command::Outcome) {
    let r = &done.record;
    let v = &r.verdict;
    println!("verdict   {}", v.verdict.as_str());
    println!(
        "base      {}{}",
        r.base.tree,
        r.base
            .commit
            .as_deref()
            .map(|c| format!(" (commit {})", short(c)))
            .unwrap_or_default()
    );
    println!(
        "change    {}{}",
        r.change.tree,
        r.change
            .commit
            .as_deref()
            .map(|c| format!(" (commit {})", short(c)))
            .unwrap_or_default()
    );
    if !v.restored.is_empty() {
        println!(
            "restored  {} (protected, from the base)",
            v.restored.join(", ")
        );
    }
    for c in &v.checks {
        let tests = c
            .tests
            .as_ref()
            .map(|t| format!(", {} tests", t.total))
            .unwrap_or_default();
        println!(
            "check     {:<10} {:<13} exit {}{tests}, {:.1}s",
            c.name,
            c.outcome.as_str(),
            c.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            c.seconds
        );
    }
    println!("summary   {}", v.summary);
    if let Some(rp) = &r.replay {
        if rp.matches {
            println!("replay    the verdict matches the record");
        } else {
            println!("replay    the verdict differs from the record:");
            for d in &rp.differences {
                println!("  - {d}");
            }
        }
    }
    println!("record    {}", done.path.display());
    if !v.passed {
        for c in v.checks.iter().filter(|c| !c.passed) {
            println!(
                "--- {} ({}): last lines of its output:\n{}",
                c.name,
                c.outcome.as_str(),
                c.tail
            );
        }
    }
}

async fn run_command(global: &GlobalArgs, args: crate::run::RunArgs, json: bool) -> Result<i32> {
    let project = Project::open(global)?;
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
    Ok(crate::run::exit_code(&outcome.results))
}

fn print_report(r: &crate::run::RunReport) {
    println!();
    println!(
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
    println!(
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
    if let Some(b) = &r.breaker {
        println!("  circuit breaker open: {b}");
    }
}

/// The end-of-run table (one row per unit), then each unit's details.
fn print_summary(results: &[crate::record::UnitResult]) {
    println!(
        "{:<24} {:<15} {:>8} {:>6} {:>8} {:>10} {:>9}",
        "unit", "verdict", "attempts", "files", "time", "tokens", "cost"
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
        println!(
            "{:<24} {:<15} {:>8} {:>6} {:>7.1}s {:>10} {:>9}",
            r.unit,
            crate::output::label(r.status),
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

fn print_result(r: &crate::record::UnitResult) {
    let status = crate::output::label(r.status);
    println!("{}: {status}: {}", r.unit, r.message);
    if let Some(p) = &r.patch {
        println!("  patch: {}", p.display());
    }
    if let Some(l) = &r.log {
        println!("  log:   {}", l.display());
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
            println!("    {req}");
        }
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    for rej in &r.rejections {
        println!("  - {rej}");
    }
}

fn unit_command(global: &GlobalArgs, cmd: UnitCommand) -> Result<i32> {
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
            let mut first_error = None;
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
                        println!("{id}: error: {e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(exit::OK),
            }
        }
    }
}

/// The current snapshot's images, resolved and made to exist.
#[derive(serde::Serialize)]
struct Prepared {
    snapshot: Snapshot,
    files: usize,
    deps: DepsPlan,
    deps_image: images::Ensured,
    unit_image: images::Ensured,
}

/// Snapshot → dependency image → unit image, each a cache hit when its inputs are unchanged.
async fn prepare(
    project: &Project,
    snap: &SnapshotArgs,
    incremental: bool,
    reporter: &dyn Reporter,
) -> Result<Prepared> {
    let snapshot = Snapshot::take(&project.repo, snap.include_dirty)?;
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let engine = Engine::connect().await?;
    let (deps, deps_image, unit_image) =
        images::ensure_images(&engine, project, &snapshot, &entries, incremental, reporter).await?;
    Ok(Prepared {
        files: entries.len(),
        snapshot,
        deps,
        deps_image,
        unit_image,
    })
}

async fn image(global: &GlobalArgs, cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Build {
            name: Some(name),
            codex_version,
            codex_binary,
            json,
            ..
        } if name == "codex" => {
            let version = match codex_version {
                Some(v) => v,
                None => Project::open(global)
                    .ok()
                    .and_then(|p| p.config.agent.codex_version)
                    .unwrap_or_else(|| crate::agent::codex::DEFAULT_VERSION.to_string()),
            };
            crate::agent::codex::check_version(&version)?;
            if let Some(b) = &codex_binary {
                crate::agent::codex::check_binary(b)?;
            }
            let reporter = reporter(global, json);
            let engine = Engine::connect().await?;
            // The version pins the content: an existing image is reused; a local binary
            // always replaces it.
            let built = crate::agent::codex::ensure_image(
                &engine,
                &version,
                codex_binary.as_deref(),
                reporter.as_ref(),
            )
            .await;
            reporter.finish();
            let tag = built?;
            let id = engine.image_id(&tag).await?.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({"image": tag, "id": id, "version": version}))?;
            } else {
                println!("built {tag} ({})", short(&id));
            }
            Ok(exit::OK)
        }
        ImageCommand::Build {
            name: None,
            snap,
            full,
            json,
            ..
        } => {
            let project = Project::open(global)?;
            let reporter = reporter(global, json);
            let prepared = prepare(&project, &snap, !full, reporter.as_ref()).await;
            reporter.finish();
            let prepared = prepared?;
            if json {
                print_json(&prepared)?;
            } else {
                println!(
                    "snapshot    {}{}",
                    prepared.snapshot.tree,
                    if prepared.snapshot.dirty {
                        " (dirty)"
                    } else {
                        ""
                    }
                );
                println!(
                    "deps image  {} ({})",
                    prepared.deps_image.image, prepared.deps_image.how
                );
                let how = match &prepared.unit_image.parent_tree {
                    Some(p) => format!("incremental on {}", short(p)),
                    None => prepared.unit_image.how.clone(),
                };
                println!("unit image  {} ({how})", prepared.unit_image.image);
            }
            Ok(exit::OK)
        }
        ImageCommand::Build {
            name: Some(name),
            json,
            ..
        } => {
            let Some((_, tag, _)) = images::CONTAINERFILES.iter().find(|(n, _, _)| *n == name)
            else {
                return Err(Error::Usage {
                    message: format!("no shipped Containerfile named {name:?}"),
                    hint: format!(
                        "use one of {}",
                        images::CONTAINERFILES
                            .iter()
                            .map(|(n, _, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            let engine = Engine::connect().await?;
            let reporter = reporter(global, json);
            let result = images::build_shipped(&engine, &name, reporter.as_ref()).await;
            reporter.finish();
            result?;
            let id = engine.image_id(tag).await?.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({"image": tag, "id": id}))?;
            } else {
                println!("built {tag} ({})", short(&id));
            }
            Ok(exit::OK)
        }
        ImageCommand::Import { name, rootfs } => {
            if name != "base" {
                return Err(Error::Usage {
                    message: format!("cannot import {name:?}: only the base image is made from a root filesystem"),
                    hint: "boxdelegate image import base ROOTFS.tar".into(),
                });
            }
            let file = tokio::fs::File::open(&rootfs)
                .await
                .map_err(|e| Error::io(format!("opening {}", rootfs.display()), e))?;
            let engine = Engine::connect().await?;
            let stream = tokio_util::io::ReaderStream::new(file);
            let base = images::base_image();
            let (repo, tag) = base.rsplit_once(':').unwrap_or((base.as_str(), "latest"));
            engine
                .import_rootfs(
                    repo,
                    tag,
                    vec![
                        "USER box".into(),
                        "WORKDIR /work".into(),
                        "ENV HOME=/home/box".into(),
                        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                            .into(),
                        "CMD [\"/bin/sh\"]".into(),
                        format!("LABEL {}=base", labels::KIND),
                    ],
                    stream,
                )
                .await?;
            let id = engine.image_id(&base).await?.unwrap_or_default();
            println!("imported {base} ({})", short(&id));
            Ok(exit::OK)
        }
        ImageCommand::Ls { json } => {
            let engine = Engine::connect().await?;
            let mut list = engine.list_images(&[labels::KIND]).await?;
            list.sort_by_key(|i| std::cmp::Reverse(i.created));
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "tags": i.repo_tags,
                        "id": i.id,
                        "kind": i.labels.get(labels::KIND),
                        "tree": i.labels.get(labels::TREE),
                        "deps_key": i.labels.get(labels::DEPS_KEY),
                        "size": i.size,
                        "created": i.created,
                    })
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                println!("{:<10} {:<12} {:>9}  TAG", "KIND", "ID", "SIZE");
                for i in &list {
                    let tags = if i.repo_tags.is_empty() {
                        "<none>".to_string()
                    } else {
                        i.repo_tags.join(", ")
                    };
                    println!(
                        "{:<10} {:<12} {:>8}M  {tags}",
                        i.labels
                            .get(labels::KIND)
                            .map(String::as_str)
                            .unwrap_or("?"),
                        short(&i.id),
                        i.size / 1_000_000,
                    );
                }
            }
            Ok(exit::OK)
        }
        ImageCommand::Prune { all, dry_run } => prune(global, all, dry_run).await,
        ImageCommand::Save { output, snap } => save(global, &output, &snap).await,
        ImageCommand::Load { input } => {
            let file = tokio::fs::File::open(&input)
                .await
                .map_err(|e| Error::io(format!("opening {}", input.display()), e))?;
            let engine = Engine::connect().await?;
            let loaded = engine
                .load_images(tokio_util::io::ReaderStream::new(file))
                .await?;
            for line in loaded {
                println!("{line}");
            }
            Ok(exit::OK)
        }
    }
}

/// The tags the current snapshot uses, computed without building anything.
async fn current_tags(
    engine: &Engine,
    project: &Project,
    snap: &SnapshotArgs,
) -> Result<(DepsPlan, Snapshot, Vec<TreeEntry>)> {
    let snapshot = Snapshot::take(&project.repo, snap.include_dirty)?;
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let plan = images::plan_deps(
        engine,
        &project.repo,
        &project.profile,
        project.base_image(),
        &entries,
    )
    .await?;
    Ok((plan, snapshot, entries))
}

async fn prune(global: &GlobalArgs, all: bool, dry_run: bool) -> Result<i32> {
    let project = if all {
        None
    } else {
        Some(Project::open(global)?)
    };
    let engine = Engine::connect().await?;
    let keep: Vec<String> = match &project {
        Some(p) => match current_tags(&engine, p, &SnapshotArgs::default()).await {
            Ok((plan, snapshot, _)) => {
                vec![plan.tag(), images::snap_tag(&snapshot.tree, &plan.key)]
            }
            Err(Error::ImageMissing { .. }) => vec![],
            Err(e) => return Err(e),
        },
        None => vec![],
    };
    // Leftover helper containers first: they pin the images.
    for kind in ["deps-build", "snap-build"] {
        let filter = format!("{}={kind}", labels::KIND);
        for c in engine.list_containers(&[&filter]).await? {
            if c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            let id = c.id.unwrap_or_default();
            println!(
                "{}container {}",
                if dry_run { "would remove " } else { "removed " },
                short(&id)
            );
            if !dry_run {
                engine.remove_container(&id).await?;
            }
        }
    }
    let mut removed = 0;
    // Newest first, so incremental children go before the images they are built on.
    for kind in ["snap", "deps"] {
        let filter = format!("{}={kind}", labels::KIND);
        let mut list = engine.list_images(&[&filter]).await?;
        list.sort_by_key(|i| std::cmp::Reverse(i.created));
        for image in list {
            if image.repo_tags.iter().any(|t| keep.contains(t)) {
                continue;
            }
            let name = image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone());
            println!(
                "{}{name}",
                if dry_run { "would remove " } else { "removed " }
            );
            if !dry_run {
                engine.remove_image(&name).await?;
                removed += 1;
            }
        }
    }
    if !dry_run && !global.quiet {
        eprintln!("{removed} image(s) removed");
    }
    Ok(exit::OK)
}

async fn save(global: &GlobalArgs, output: &PathBuf, snap: &SnapshotArgs) -> Result<i32> {
    let project = Project::open(global)?;
    let engine = Engine::connect().await?;
    let (plan, snapshot, _) = current_tags(&engine, &project, snap).await?;
    let mut names = vec![images::base_image()];
    if !names.contains(&plan.toolchain_image) {
        names.push(plan.toolchain_image.clone());
    }
    names.push(plan.tag());
    let unit = images::snap_tag(&snapshot.tree, &plan.key);
    for name in [&plan.tag(), &unit] {
        if engine.image_id(name).await?.is_none() {
            return Err(Error::ImageMissing {
                image: name.clone(),
                hint: "run `boxdelegate image build` first, then save".into(),
            });
        }
    }
    names.push(unit);
    // The egress proxy's image goes along when the project's agents use it.
    let agents = [
        Some(&project.config.agent),
        project.config.agent.fallback.as_deref(),
    ];
    let proxied = agents
        .iter()
        .flatten()
        .any(|a| a.network.as_deref() == Some("proxy"));
    if proxied && engine.image_id(crate::proxy::IMAGE).await?.is_some() {
        names.push(crate::proxy::IMAGE.to_string());
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".boxdelegate-save-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    let mut bytes = 0u64;
    {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut stream = Box::pin(engine.export_images(&refs));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            tmp.write_all(&chunk)
                .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
        }
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
    tmp.persist(output)
        .map_err(|e| Error::io(format!("writing {}", output.display()), e.error))?;
    if !global.quiet {
        eprintln!(
            "saved {} image(s), {} MB, to {}",
            names.len(),
            bytes / 1_000_000,
            output.display()
        );
    }
    for n in names {
        println!("{n}");
    }
    Ok(exit::OK)
}
