//! An exited attempt judged: its change extracted (host side), checked against the scope and
//! verified in a clean container; the failure classified (the change, or the infrastructure).
//!
//! May not: land anything; write outside the attempt's directory and the journal.

use super::ledger::{update_attempt, Ctx};
use super::plan::{AgentPlan, Planned};
use crate::change::ChangeSet;
use crate::engine::short;
use crate::error::{Error, Result};
use crate::extract::{self, ReadLimits};
use crate::land::{self};
use crate::record::{Rejection, Status, UnitResult};
use crate::scope;
use crate::state::journal::AttemptPhase;
use crate::verify::Ahead;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

/// Reads the change out of the exited agent container, stores it in the attempt's directory
/// and removes the container.
pub(super) async fn extract_change(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let container = a
        .container
        .clone()
        .expect("an exited attempt has a container");
    if ctx.engine.container_running(&container).await?.is_none() {
        ctx.reporter.unit(id, &format!("the agent container {} is gone before its change was read; starting the attempt again", short(&container)));
        return update_attempt(ctx, id, |a| {
            a.phase = AttemptPhase::Starting;
            a.container = None;
        });
    }
    ctx.reporter.unit(id, "extracting the change");
    let read_limits = ReadLimits {
        entries: p.limits.max_files,
        bytes: p.limits.max_bytes,
    };
    let extract_started = Instant::now();
    let extracted = extract::extract(
        ctx.engine,
        &container,
        &ctx.project.repo,
        ctx.agent_tree,
        ctx.agent_entries,
        read_limits,
    )
    .await;
    let extracted = match extracted {
        Ok(e) => e,
        Err(e) => {
            ctx.engine.remove_container(&container).await?;
            return Err(e);
        }
    };
    let set: &ChangeSet = &extracted.set;
    let redactor = &plan.redactor;
    // A change that carries a secret's value is rejected and never written down: not as a
    // patch, not as objects.
    let leaks = extracted.paths_where(|data| redactor.occurs_in(data));
    let changes_json =
        serde_json::to_string_pretty(set).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(
        &a.dir.join("changes.json"),
        redactor.redact(&changes_json).as_bytes(),
    )?;
    let mut written = None;
    if set.truncated.is_none() && !set.changes.is_empty() && leaks.is_empty() {
        let patch = a.dir.join("change.patch");
        let w = extracted.write(
            &ctx.project.repo,
            &a.dir.join("objects"),
            ctx.agent_tree,
            &patch,
        )?;
        crate::state::make_private(&a.dir.join("objects"))?;
        written = Some((w, patch));
    }
    let files = set.changes.len();
    // The scope is checked here, on the change as read (the stored change set names paths
    // lossily, for people).
    let mut rejections = scope::check(set, &p.globs, &p.limits, &p.unit.file);
    // Symlinks as a checkout resolves them: through every link of the new tree.
    let (links, changed_links) = new_tree_links(ctx, set)?;
    // git's own object checks, on the objects the change wrote.
    if let Some((w, _)) = &written {
        rejections.extend(extract::fsck::check(
            &ctx.project.repo,
            &a.dir.join("objects"),
            &w.tree,
        )?);
    }
    for r in scope::check_links(&links, &changed_links) {
        if !rejections
            .iter()
            .any(|e| e.path == r.path && e.rule == r.rule)
        {
            rejections.push(r);
        }
    }
    // A submodule's content is not in the snapshot (it is shipped as an empty directory), and
    // the tree cannot hold both the submodule and files under it.
    let submodules: Vec<&[u8]> = ctx
        .agent_entries
        .iter()
        .filter(|e| e.kind == crate::snapshot::EntryKind::Gitlink)
        .map(|e| e.path.as_slice())
        .collect();
    for c in &set.changes {
        if let Some(sub) = submodules
            .iter()
            .find(|s| c.path.starts_with(s) && (c.path.len() == s.len() || c.path[s.len()] == b'/'))
        {
            let sub = crate::change::display_path(sub);
            rejections.push(Rejection {
                path: crate::change::display_path(&c.path),
                rule: "submodule".into(),
                message: format!(
                    "the change touches submodule {sub}, whose content is not in the snapshot (it is an empty directory to the agent)"
                ),
                hint: format!(
                    "change {sub} in its own repository and commit the new submodule commit here yourself; keep {sub} out of the unit's work"
                ),
            });
        }
    }
    if ctx
        .project
        .config
        .verify
        .dependency_changes
        .unwrap_or_default()
        == crate::config::DependencyChanges::Refuse
    {
        for path in crate::images::manifests_touched(
            &ctx.project.profile,
            ctx.deps,
            set.changes.iter().map(|c| c.path.as_slice()),
        ) {
            rejections.push(Rejection {
                    path,
                    rule: "dependency-change".into(),
                    message: format!(
                        "the change edits a dependency manifest of profile {}, which this project refuses",
                        ctx.project.profile.name
                    ),
                    hint: format!(
                        "change the dependencies yourself and commit them, or allow units to: [verify] dependency_changes = \"rebuild\" in {}",
                        crate::config::CONFIG_FILE
                    ),
                });
        }
    }
    if !ctx.hidden.patterns.is_empty() {
        for c in &set.changes {
            let path = crate::change::display_path(&c.path);
            if ctx.hidden.is_match(std::path::Path::new(&path)) {
                rejections.push(Rejection {
                    path,
                    rule: "hidden".into(),
                    message: "the change writes where hidden acceptance tests live".into(),
                    hint: format!(
                        "hidden tests ({}) are the project's; keep the unit's work away from them",
                        ctx.hidden.patterns.join(", ")
                    ),
                });
            }
        }
    }
    rejections.extend(source_redirects(ctx, &extracted)?);
    for path in leaks {
        rejections.push(Rejection {
            path: crate::change::display_path(&path),
            rule: "secret".into(),
            message: "the change carries the value of a secret passed to the agent".into(),
            hint: "secrets must never be written into the repository; the change was not kept"
                .into(),
        });
    }
    for r in &mut rejections {
        r.path = redactor.redact(&r.path);
    }
    let extract_ms = crate::timings::since(extract_started);
    update_attempt(ctx, id, |a| {
        a.result.timings.extract_ms = Some(extract_ms);
        a.result.files_changed = files;
        a.result.rejections = rejections;
        if let Some((w, patch)) = written {
            a.result.tree = Some(w.tree);
            a.result.patch = Some(patch);
            a.result.patch_sha256 = Some(w.patch_sha256);
        }
        a.phase = AttemptPhase::Extracted;
    })?;
    // Removed while the change is judged; resume removes it if this process does not live
    // to.
    ctx.engine.remove_soon(&container);
    crate::failpoint::hit("extracted");
    Ok(())
}

/// A change that edits an installer's configuration file, or adds a line or key to a
/// dependency manifest that sends the install elsewhere (another index, a URL, git, a path
/// outside the repository): the install of a change's manifests runs with a network.
fn source_redirects(ctx: &Ctx<'_>, extracted: &extract::Extracted) -> Result<Vec<Rejection>> {
    use crate::change::ChangeKind;
    let mut out = Vec::new();
    for c in &extracted.set.changes {
        if c.kind == ChangeKind::Deleted {
            continue;
        }
        let path = crate::change::display_path(&c.path);
        if crate::sources::is_config_file(&path) {
            out.push(Rejection {
                path,
                rule: "dependency-source".into(),
                message: "the change writes an installer's configuration file (registries, mirrors, credentials)".into(),
                hint: "configure package sources yourself, in a commit of your own".into(),
            });
            continue;
        }
        let Some(new) = extracted
            .content(&c.path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
        else {
            continue;
        };
        let now = crate::sources::redirects(&path, &new);
        if now.is_empty() {
            continue;
        }
        let before = if ctx.agent_entries.iter().any(|e| e.path == c.path) {
            let old = ctx
                .project
                .repo
                .run(&["cat-file", "blob", &format!("{}:{path}", ctx.agent_tree)])
                .unwrap_or_default();
            crate::sources::redirects(&path, &String::from_utf8_lossy(&old))
        } else {
            Default::default()
        };
        for line in now.difference(&before) {
            out.push(Rejection {
                path: path.clone(),
                rule: "dependency-source".into(),
                message: format!(
                    "the change adds a package source the dependency install would use: {line}"
                ),
                hint: "dependencies come from the profile's registries; add other sources yourself, in a commit of your own".into(),
            });
        }
    }
    Ok(out)
}

/// Symlinks by path, with their targets.
type Links = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// Every symlink of the tree the change makes (path → target): the agent's view's links
/// less those the change deleted or replaced, plus those it wrote; and which the change wrote.
fn new_tree_links(ctx: &Ctx<'_>, set: &ChangeSet) -> Result<(Links, BTreeSet<Vec<u8>>)> {
    use crate::change::{ChangeKind, Node};
    let gone = |path: &[u8]| {
        set.changes.iter().any(|c| {
            path == c.path.as_slice()
                || (path.len() > c.path.len()
                    && path.starts_with(&c.path)
                    && path[c.path.len()] == b'/'
                    && c.kind == ChangeKind::Deleted)
        })
    };
    let old: Vec<&crate::snapshot::TreeEntry> = ctx
        .agent_entries
        .iter()
        .filter(|e| e.kind == crate::snapshot::EntryKind::Symlink && !gone(&e.path))
        .collect();
    let ids: Vec<&str> = old.iter().map(|e| e.oid.as_str()).collect();
    let mut links: Links = old
        .iter()
        .map(|e| e.path.clone())
        .zip(ctx.project.repo.blobs(&ids)?)
        .collect();
    let mut changed = BTreeSet::new();
    for c in &set.changes {
        if let (Node::Symlink { target }, false) = (&c.node, c.kind == ChangeKind::Deleted) {
            links.insert(c.path.clone(), target.clone());
            changed.insert(c.path.clone());
        }
    }
    Ok((links, changed))
}

/// Judges an extracted change: the agent's own outcome, the scope, then verification in a
/// clean container. `landed` as the attempt's status means "ready to land".
pub(super) async fn judge(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
    standby: &mut Option<Ahead>,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let mut result = a.result.clone();
    let spec = plan.agent.spec(&p.unit);
    let mut infra = None;
    let verdict = judge_change(
        ctx,
        p,
        &spec,
        &plan.redactor,
        a,
        &mut result,
        &mut infra,
        standby,
    )
    .await?;
    if verdict {
        result.status = Status::Landed;
        result.message = "passed every check; waiting to land".into();
    }
    update_attempt(ctx, id, |at| {
        at.result = result;
        at.infra = infra;
        at.phase = AttemptPhase::Done;
    })?;
    Ok(())
}

/// Fills `result` with the judgement of the change; true when it may land.
#[allow(clippy::too_many_arguments)]
pub(super) async fn judge_change(
    ctx: &Ctx<'_>,
    p: &Planned,
    spec: &crate::agent::AgentSpec,
    redactor: &crate::agent::Redactor,
    a: &crate::state::journal::Attempt,
    result: &mut UnitResult,
    infra: &mut Option<String>,
    standby: &mut Option<Ahead>,
) -> Result<bool> {
    let id = &p.unit.meta.id;
    let code = result.agent_exit_code.unwrap_or(-1);
    if spec.events == crate::agent::Events::Codex {
        let activity = result.agent_activity.clone().unwrap_or_default();
        if let Some(message) = &activity.turn_failed {
            let kind = activity
                .failure
                .unwrap_or_else(|| crate::agent::events::classify_failure(message));
            result.agent_failure = Some(kind);
            result.status = if kind.is_infrastructure() {
                *infra = Some("model-endpoint".into());
                Status::InfraError
            } else {
                Status::AgentFailed
            };
            result.message = format!(
                "codex failed ({}{}): {}; nothing landed",
                crate::output::label(kind),
                if kind.retryable() {
                    ", retryable"
                } else {
                    ", not retryable"
                },
                redactor.redact(message)
            );
            return Ok(false);
        }
        if code == 0 && !activity.turn_completed {
            result.status = Status::AgentFailed;
            result.message =
                "codex exited 0 without completing its turn (no turn.completed event); nothing landed".into();
            return Ok(false);
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
        return Ok(false);
    }
    if result.files_changed == 0 && result.rejections.is_empty() {
        result.status = Status::NoChange;
        result.message = "the agent changed nothing".into();
        return Ok(false);
    }

    // Scope (checked at extraction). Edits of protected paths are reported and the change is
    // rejected, but it is still verified with those paths restored, so the report says what
    // the original tests make of it.
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
        result.message = rejected_message(result);
        return Ok(false);
    }
    land::import_objects(&ctx.project.repo, &a.dir.join("objects"))?;
    // The agent saw no hidden acceptance test: they are put back from the snapshot, so the
    // tree that is verified and lands holds them as the branch does.
    if ctx.agent_tree != ctx.snapshot.tree {
        if let Some(tree) = &result.tree {
            let (full, _) = crate::verify::restore_protected(
                &ctx.project.repo,
                &ctx.snapshot.tree,
                tree,
                Some(ctx.hidden),
            )?;
            result.tree = Some(full);
        }
    }
    if p.checks.is_empty() {
        return Ok(true);
    }

    // Verify in a clean container.
    let tree = result.tree.clone().expect("an accepted change has a tree");
    let cache_dir = crate::verify::state_paths(&ctx.project.repo.common_dir).1;
    let verify_log = a.dir.join("verify.log");
    let sink = ctx.reporter.line_sink();
    let on_line = |l: &str| sink(l);
    let check_names = p
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let change_image = match image_for(ctx, &tree).await {
        Ok(i) => i,
        Err(Error::Install(f)) => {
            // The change's own manifests could not be installed, where the snapshot's were
            // (its image stands): the change's fault (a package that does not exist, a
            // lockfile that no longer matches), not the infrastructure's. It is a failed
            // verification, retried as one, and opens no circuit breaker for other units.
            result.status = Status::VerifyFailed;
            result.message = change_install_failed(&f);
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let vreq = crate::verify::VerifyRequest {
        change_image: change_image.as_ref().map(|(i, k)| (i.as_str(), k.as_str())),
        ..verify_request(ctx, p, &tree, &verify_log, &cache_dir)
    };
    ctx.reporter.unit(id, &format!("verifying ({check_names})"));
    result.timings.verify_at_ms = Some(crate::timings::now_ms());
    let verify_started = Instant::now();
    let verdict = crate::verify::verify(
        ctx.engine,
        &ctx.project.repo,
        &vreq,
        match standby.take() {
            Some(ahead) => ahead.ready().await,
            None => None,
        },
        &on_line,
    )
    .await?;
    result.timings.verify_ms = Some(crate::timings::since(verify_started));
    result.record = Some(store_record(ctx, &vreq, &ctx.snapshot.commit, result, &verdict).await?);
    let passed = verdict.passed;
    let summary = verdict.summary.clone();
    let failure = (!passed).then(|| failure_status(&verdict, "", p.settings.timeout_secs));
    if verdict.verdict == crate::record::Kind::InfraError {
        *infra = Some("verify".into());
    }
    result.verdict = Some(verdict);
    if protected_only {
        result.status = Status::Rejected;
        result.message = format!(
            "{}; with the protected paths restored, verification says {summary}",
            rejected_message(result)
        );
        return Ok(false);
    }
    if let Some((status, message)) = failure {
        result.status = status;
        result.message = message;
        return Ok(false);
    }
    Ok(true)
}

/// What a unit's result says when the dependencies of its change's own manifests could not be
/// installed.
pub(super) fn change_install_failed(f: &crate::error::InstallFailure) -> String {
    format!(
        "verification failed: the change's dependency manifests could not be installed ({} for profile {} exited {}), where the snapshot's install succeeded; nothing landed, the patch is kept; its whole log: {}; last lines:\n{}",
        f.step,
        f.profile,
        f.code,
        f.log.display(),
        f.tail
    )
}

/// The image a tree that edits the dependency manifests is verified on, with its deps key:
/// built (or found) for that tree's own manifests; `None` when the manifests are the
/// snapshot's, whose unit image serves.
pub(super) async fn image_for(ctx: &Ctx<'_>, tree: &str) -> Result<Option<(String, String)>> {
    let cx = crate::images::Context {
        engine: ctx.engine,
        repo: &ctx.project.repo,
        profile: &ctx.project.profile,
        limits: &ctx.project.limits,
        reporter: ctx.reporter,
    };
    Ok(crate::images::ensure_for_change(
        &cx,
        ctx.deps,
        ctx.project.base_image(),
        &ctx.snapshot.tree,
        &ctx.snapshot.commit,
        tree,
    )
    .await?
    .map(|(plan, unit)| (unit.image, plan.key)))
}

/// Writes the verification record of `verdict`, reached by verifying `req` against
/// `base_commit`, where `verify --replay` finds it; returns its sha256, which the landed
/// commit's `Boxdelegate-Record` trailer names.
pub(super) async fn store_record(
    ctx: &Ctx<'_>,
    req: &crate::verify::VerifyRequest<'_>,
    base_commit: &str,
    result: &UnitResult,
    verdict: &crate::record::Verdict,
) -> Result<String> {
    let origin = crate::verify::record::Origin {
        base_commit: Some(base_commit),
        change_commit: None,
        patch_sha256: result.patch_sha256.as_deref(),
        unit: Some(&result.unit),
        profile: &ctx.project.profile.name,
        deps_image: &ctx.deps.tag(),
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let record =
        crate::verify::record::make(ctx.engine, req, origin, verdict.clone(), created).await?;
    let dir = crate::verify::state_paths(&ctx.project.repo.common_dir).0;
    crate::verify::record::store(&dir, &record)
}

pub(super) fn verify_request<'a>(
    ctx: &'a Ctx<'_>,
    p: &'a Planned,
    tree: &'a str,
    log: &'a Path,
    cache_dir: &'a Path,
) -> crate::verify::VerifyRequest<'a> {
    crate::verify::VerifyRequest {
        image: ctx.image,
        image_tree: ctx.agent_tree,
        base_tree: &ctx.snapshot.tree,
        tree,
        deps_key: ctx.deps_key,
        change_image: None,
        checks: &p.checks,
        settings: &p.settings,
        protected: Some(&p.globs.protected),
        expect: &p.unit.meta.tests,
        limits: &p.limits,
        run_id: ctx.run_id,
        unit_id: &p.unit.meta.id,
        log,
        cache_dir,
    }
}

/// The status and message of a unit whose verdict keeps it from landing.
pub(super) fn failure_status(
    verdict: &crate::record::Verdict,
    prefix: &str,
    timeout_secs: u64,
) -> (Status, String) {
    use crate::record::Kind;
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
        Kind::ConfigError => (
            Status::ConfigError,
            format!(
                "{prefix}a check could not start in the clean container, which is the project's configuration, not the change; nothing landed, the patch is kept: {}",
                verdict.explain()
            ),
        ),
        Kind::Inconclusive => (
            Status::VerifyFailed,
            format!(
                "{prefix}verification was inconclusive: nothing shows the checks passed on this change; nothing landed, the patch is kept: {}",
                verdict.explain()
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
