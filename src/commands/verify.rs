//! `boxdelegate verify`: re-checks a commit or a patch against its base in a clean container,
//! for CI and for people, and writes a verification record; `--replay` checks a record again.
//!
//! Every input is resolved before the engine is touched: the revisions, the patch (applied to
//! the base in a temporary index), the record (its trees must be in this repository). The
//! checks and the profile come from the base commit's `boxdelegate.toml`, so a change cannot
//! weaken the checks that judge it.
//!
//! May not: read the checks from the change; touch the engine before the revisions, the patch and
//! the record are resolved.

use std::path::{Path, PathBuf};

use crate::config::unit::{self, Globs};
use crate::config::{profile::Profile, Config, CONFIG_FILE};
use crate::engine::{short, Engine};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::output::Reporter;
use crate::project::Project;
use crate::snapshot::{self, Snapshot};

use crate::verify::record::{self, Record, Replay, Side};
use crate::verify::{Check, Settings, VerifyRequest};

pub use crate::cli::VerifyArgs;

/// What `verify` did: the record, where it was written, and the exit code.
pub struct Outcome {
    pub record: Record,
    pub path: PathBuf,
    pub exit_code: i32,
}

/// Everything resolved before the engine: the trees, the checks and what applies to them.
struct Resolved {
    base: Side,
    change: Side,
    patch_sha256: Option<String>,
    unit: Option<String>,
    protected: Vec<String>,
    expect: Vec<String>,
    checks: Vec<Check>,
    settings: Settings,
    replay: Option<(Record, String)>,
}

fn usage(message: String, hint: &str) -> Error {
    Error::Usage {
        message,
        hint: hint.into(),
    }
}

/// Resolves `rev` to a commit, or fails with a message naming it.
fn commit_of(repo: &Repo, rev: &str, flag: &str) -> Result<String> {
    if rev.starts_with('-') || rev.is_empty() {
        return Err(usage(
            format!("{flag}: {rev:?} is not a revision"),
            "name a commit: a branch, a tag or a hash",
        ));
    }
    repo.resolve(&format!("{rev}^{{commit}}"))?.ok_or_else(|| {
        usage(
            format!("{flag}: unknown revision {rev:?} in {}", repo.root.display()),
            "name a commit of this repository: a branch, a tag or a hash (`git log --oneline` lists them)",
        )
    })
}

fn tree_of(repo: &Repo, commit: &str) -> Result<String> {
    repo.text(&["rev-parse", &format!("{commit}^{{tree}}")])
}

/// The base tree with the patch applied, written through a temporary index; the user's index
/// and work tree are not touched.
fn apply_patch(repo: &Repo, base_tree: &str, patch: &Path) -> Result<(String, String)> {
    let data = std::fs::read(patch).map_err(|e| {
        usage(
            format!("--patch: cannot read {}: {e}", patch.display()),
            "pass a patch file in git diff format (`git diff BASE > change.patch`)",
        )
    })?;
    let dir = tempfile::Builder::new()
        .prefix("boxdelegate-patch-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary index", e))?;
    let index = dir.path().join("index");
    let git = |args: &[&str], input: Option<&[u8]>| {
        let mut cmd = repo.cmd()?;
        cmd.env("GIT_INDEX_FILE", &index);
        repo.run_with(cmd, args, input)
    };
    git(&["read-tree", base_tree], None)?;
    // `git apply` checks every hunk before it writes anything, so a patch that does not apply
    // leaves the object database as it was.
    git(&["apply", "--cached", "--whitespace=nowarn", "-"], Some(&data)).map_err(|e| {
        let detail = match e {
            Error::Git { message, .. } => message,
            other => other.to_string(),
        };
        usage(
            format!(
                "--patch: {} does not apply to the base {}: {detail}",
                patch.display(),
                short(base_tree)
            ),
            "make the patch against the base you name (`git diff BASE > change.patch`), or name the base it was made on with --base",
        )
    })?;
    let tree = String::from_utf8_lossy(&git(&["write-tree"], None)?)
        .trim()
        .to_string();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    Ok((tree, sha))
}

/// The file at `path` in `commit`, if it is there.
fn file_at(repo: &Repo, commit: &str, path: &str) -> Option<String> {
    repo.run(&["cat-file", "blob", &format!("{commit}:{path}")])
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The project as the base commit configures it (falling back to the work tree's
/// `boxdelegate.toml` when the base has none).
fn project_at(repo: &Repo, commit: &str) -> Result<Project> {
    let config = match file_at(repo, commit, CONFIG_FILE) {
        Some(text) => Config::parse(&text)?,
        None => Config::load(&repo.root)?,
    };
    let name = &config.project.profile;
    let local = file_at(
        repo,
        commit,
        &Profile::local_path(name).display().to_string(),
    );
    let profile = match local {
        Some(text) => Profile::resolve(&repo.root, name, Some(text))?,
        None => Profile::load(&repo.root, name)?,
    };
    let limits = config.limits.resolve();
    Ok(Project {
        repo: repo.clone(),
        config,
        profile,
        limits,
    })
}

/// The values of `commit`'s trailers `key`, in order.
fn trailers(repo: &Repo, commit: &str, key: &str) -> Result<Vec<String>> {
    let text = repo.text(&[
        "log",
        "-1",
        &format!("--format=%(trailers:key={key},valueonly,separator=%x00)"),
        commit,
    ])?;
    Ok(text
        .split('\0')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// The unit named by the commit's `Boxdelegate-Unit` trailer, when there is exactly one.
fn unit_of_commit(repo: &Repo, commit: &str) -> Option<String> {
    let units = trailers(repo, commit, crate::land::TRAILER_UNIT).ok()?;
    (units.len() == 1).then(|| units[0].clone())
}

/// The record `--replay` names: a record file, or else a commit boxdelegate landed, whose
/// `Boxdelegate-Record` trailer names its record in this repository's records.
fn replayed(repo: &Repo, arg: &Path) -> Result<(Record, String)> {
    if arg.is_file() {
        return record::load(repo, arg);
    }
    let rev = arg.to_string_lossy();
    let hint = "pass a record file written by `boxdelegate verify`, or a commit boxdelegate landed";
    if rev.starts_with('-') || rev.is_empty() {
        return Err(usage(
            format!("--replay: {rev:?} is neither a record file nor a commit"),
            hint,
        ));
    }
    let Some(commit) = repo.resolve(&format!("{rev}^{{commit}}"))? else {
        return Err(usage(
            format!(
                "--replay: {rev:?} is neither a record file nor a commit of {}",
                repo.root.display()
            ),
            hint,
        ));
    };
    let records = trailers(repo, &commit, crate::land::TRAILER_RECORD)?;
    let short_commit = short(&commit);
    match records.as_slice() {
        [one] => {
            let dir = crate::verify::state_paths(&repo.common_dir).0;
            record::load_stored(repo, &dir, short_commit, one)
        }
        [] => {
            let verified = trailers(repo, &commit, crate::land::TRAILER_VERIFIED)?;
            let message = match verified.first() {
                Some(v) if v.split_once(' ').is_some_and(|(_, rest)| rest.starts_with("none:")) => format!(
                    "--replay {rev}: commit {short_commit} landed without checks (its project configured none), so there is no verification to replay"
                ),
                Some(_) => format!(
                    "--replay {rev}: commit {short_commit} names no verification record (no {} trailer; it landed before boxdelegate kept one per landing)",
                    crate::land::TRAILER_RECORD
                ),
                None => format!(
                    "--replay {rev}: commit {short_commit} was not landed by boxdelegate (no {} trailer)",
                    crate::land::TRAILER_VERIFIED
                ),
            };
            Err(usage(
                message,
                &format!("verify it anew: boxdelegate verify --commit {rev}"),
            ))
        }
        _ => Err(usage(
            format!(
                "--replay {rev}: commit {short_commit} names {} verification records; a landed commit names one",
                records.len()
            ),
            &format!("verify it anew: boxdelegate verify --commit {rev}"),
        )),
    }
}

fn resolve(repo: &Repo, args: &VerifyArgs) -> Result<(Resolved, Project)> {
    if let Some(path) = &args.replay {
        let (rec, sha) = replayed(repo, path)?;
        let base_commit = rec.base.commit.clone().ok_or_else(|| {
            usage(
                format!("{} names no base commit", path.display()),
                "replay a record written by `boxdelegate verify`",
            )
        })?;
        if repo
            .resolve(&format!("{base_commit}^{{commit}}"))?
            .is_none()
        {
            return Err(usage(
                format!(
                    "{} is not a record of this repository: its base commit {base_commit} is not in {}",
                    path.display(),
                    repo.root.display()
                ),
                "replay a record in the repository it was made in (fetch the commits it names first)",
            ));
        }
        let project = project_at(repo, &base_commit)?;
        let resolved = Resolved {
            base: rec.base.clone(),
            change: rec.change.clone(),
            patch_sha256: rec.patch_sha256.clone(),
            unit: rec.unit.clone(),
            protected: rec.protected.clone(),
            expect: rec.expect.clone(),
            checks: rec.checks.clone(),
            settings: rec.settings.clone(),
            replay: Some((rec, sha)),
        };
        return Ok((resolved, project));
    }

    let (base_commit, change, patch_sha256) = match (&args.commit, &args.patch) {
        (Some(rev), None) => {
            let commit = commit_of(repo, rev, "--commit")?;
            let base = match &args.base {
                Some(b) => commit_of(repo, b, "--base")?,
                None => repo.resolve(&format!("{commit}^1"))?.ok_or_else(|| {
                    usage(
                        format!("--commit {rev}: the commit has no parent to compare with"),
                        "name the base with --base REV",
                    )
                })?,
            };
            let tree = tree_of(repo, &commit)?;
            (
                base,
                Side {
                    commit: Some(commit),
                    tree,
                },
                None,
            )
        }
        (None, Some(patch)) => {
            let Some(b) = &args.base else {
                return Err(usage(
                    "--patch needs --base REV: the commit the patch applies to".into(),
                    "e.g. boxdelegate verify --patch change.patch --base main",
                ));
            };
            let base = commit_of(repo, b, "--base")?;
            let (tree, sha) = apply_patch(repo, &tree_of(repo, &base)?, patch)?;
            (base, Side { commit: None, tree }, Some(sha))
        }
        _ => {
            return Err(usage(
                "verify needs exactly one of --commit REV, --patch FILE or --replay RECORD".into(),
                "e.g. boxdelegate verify --commit HEAD",
            ))
        }
    };
    let base = Side {
        tree: tree_of(repo, &base_commit)?,
        commit: Some(base_commit.clone()),
    };
    let project = project_at(repo, &base_commit)?;
    let unit_id = args.unit.clone().or_else(|| {
        change
            .commit
            .as_deref()
            .and_then(|c| unit_of_commit(repo, c))
            .filter(|id| {
                unit::validate_id(id).is_ok()
                    && repo
                        .root
                        .join(&project.config.project.units_dir)
                        .join(format!("{id}.md"))
                        .is_file()
            })
    });
    let (protected, expect) = match &unit_id {
        Some(id) => {
            let u = unit::load(&repo.root, &project.config.project.units_dir, id)?;
            u.globs()?; // the globs must compile
            (u.meta.protected.clone(), u.meta.tests.clone())
        }
        None => (vec![], vec![]),
    };
    let resolved = Resolved {
        base,
        change,
        patch_sha256,
        unit: unit_id,
        protected,
        expect,
        checks: crate::verify::checks(&project.profile, &project.config.verify),
        settings: Settings::from_config(&project.config.verify),
        replay: None,
    };
    Ok((resolved, project))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Runs `boxdelegate verify`.
pub async fn run(repo: &Repo, args: VerifyArgs, reporter: &dyn Reporter) -> Result<Outcome> {
    let (r, project) = resolve(repo, &args)?;
    let protected = Globs::new(&r.protected).map_err(|(glob, err)| {
        usage(
            format!("protected glob {glob:?} does not compile: {err}"),
            "fix the unit's protected globs",
        )
    })?;
    let base_commit = r.base.commit.clone().expect("resolved with a base commit");

    let engine = Engine::connect().await?;
    let snap = Snapshot {
        commit: base_commit,
        tree: r.base.tree.clone(),
        dirty: false,
    };
    let entries = snapshot::list_tree(repo, &snap.tree)?;
    let (deps, deps_image, unit_image) =
        crate::images::ensure_images(&engine, &project, &snap, &entries, true, reporter).await?;

    // A change that edits the dependency manifests is checked on its own dependencies.
    let cx = crate::images::Context {
        engine: &engine,
        repo,
        profile: &project.profile,
        limits: &project.limits,
        reporter,
    };
    let change_image = crate::images::ensure_for_change(
        &cx,
        &deps,
        project.base_image(),
        &r.base.tree,
        &snap.commit,
        &r.change.tree,
    )
    .await?
    .map(|(plan, unit)| (unit.image, plan.key));

    let (records_dir, cache_dir) = crate::verify::state_paths(&repo.common_dir);
    crate::state::create_private_dir(&records_dir)?;
    let created = unix_now();
    let stem = format!("{created}-{}", short(&r.change.tree));
    let log = records_dir.join(format!("{stem}.log"));
    reporter.phase(&format!(
        "verifying {} against {} ({})",
        short(&r.change.tree),
        short(&r.base.tree),
        r.checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let sink = reporter.line_sink();
    let run_id = format!("verify-{stem}");
    let req = VerifyRequest {
        image: &unit_image.image,
        image_tree: &r.base.tree,
        base_tree: &r.base.tree,
        tree: &r.change.tree,
        deps_key: &deps.key,
        change_image: change_image.as_ref().map(|(i, k)| (i.as_str(), k.as_str())),
        checks: &r.checks,
        settings: &r.settings,
        protected: Some(&protected),
        expect: &r.expect,
        limits: &project.limits,
        run_id: &run_id,
        unit_id: r.unit.as_deref().unwrap_or("-"),
        log: &log,
        cache_dir: &cache_dir,
    };
    let verdict = crate::verify::verify(&engine, repo, &req, None, &|l: &str| sink(l)).await?;

    let mut exit_code = verdict.verdict.exit_code();
    let replay = r.replay.as_ref().map(|(rec, sha)| {
        let differences = record::compare(&rec.verdict, &verdict);
        if !rec.deps_key.is_empty() && rec.deps_key != deps.key {
            // Not a verdict difference, but the first thing to look at when there is one.
            reporter.phase(&format!(
                "note: the dependency image differs from the record's (deps key {} then, {} now)",
                short(&rec.deps_key),
                short(&deps.key)
            ));
        }
        Replay {
            record_sha256: sha.clone(),
            matches: differences.is_empty(),
            differences,
        }
    });
    if let Some(rp) = &replay {
        exit_code = if rp.matches {
            crate::error::exit::OK
        } else {
            crate::error::exit::REPLAY_MISMATCH
        };
    }
    let origin = record::Origin {
        base_commit: r.base.commit.as_deref(),
        change_commit: r.change.commit.as_deref(),
        patch_sha256: r.patch_sha256.as_deref(),
        unit: r.unit.as_deref(),
        profile: &project.profile.name,
        deps_image: &deps_image.image,
    };
    let mut record = record::make(&engine, &req, origin, verdict, created).await?;
    record.replay = replay;
    let path = args
        .record
        .clone()
        .unwrap_or_else(|| records_dir.join(format!("{stem}.json")));
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(&path, &json)?;
    if let Some(junit) = &args.junit {
        crate::state::write_private(
            junit,
            crate::verify::junit::render(&record.verdict)?.as_bytes(),
        )?;
    }
    Ok(Outcome {
        record,
        path,
        exit_code,
    })
}

pub fn print_verification(done: &Outcome) {
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
