//! Landing verified units in unit order (re-verifying a merged tree when the branch moved),
//! and `boxdelegate apply` of a unit's last result.
//!
//! May not: land a result that is not verified, or a unit that already landed; force a conflict.

use super::judge::{change_install_failed, failure_status, image_for, verify_request};
use super::ledger::{finish_unit, Ctx};
use super::plan::Planned;
use crate::change::ChangeSet;
use crate::config::unit::{self};
use crate::engine::short;
use crate::error::{Error, Result};
use crate::land::{self, LandRequest};
use crate::project::Project;
use crate::record::{Landed, Status, UnitResult};
use crate::scope;
use crate::state::journal::UnitPhase;
use std::time::Instant;

/// Lands a unit that is ready, exactly once: the commit made for it is recorded before the
/// branch moves, so a resumed run can tell whether the move happened.
pub(super) async fn land_unit(ctx: &Ctx<'_>, p: &Planned) -> Result<()> {
    let id = &p.unit.meta.id;
    let (phase, landing, attempt) = ctx.journal.read(|j| {
        let u = j.unit(id);
        (u.phase, u.landing.clone(), u.attempts.last().cloned())
    });
    if !matches!(phase, UnitPhase::Ready | UnitPhase::Landing) {
        return Ok(());
    }
    let attempt = attempt.expect("a ready unit has an attempt");
    let mut result = attempt.result.clone();
    let req = land_request(&result).expect("a ready change has a tree");
    let repo = &ctx.project.repo;
    if let Some(l) = &landing {
        let on_branch = repo
            .resolve(&format!("refs/heads/{}", p.branch))?
            .is_some_and(|head| {
                head == l.commit
                    || repo
                        .run(&["merge-base", "--is-ancestor", &l.commit, &head])
                        .is_ok()
            });
        if on_branch {
            ctx.reporter.unit(
                id,
                &format!("landed before the interruption as {}", short(&l.commit)),
            );
            let rebased_onto = (l.old.is_some() && l.old.as_deref() != Some(&req.snapshot_commit))
                .then(|| l.old.clone())
                .flatten();
            finish_landing(
                &mut result,
                Landed::Committed {
                    commit: l.commit.clone(),
                    branch: p.branch.clone(),
                    rebased_onto,
                    worktree_updated: false,
                    note: None,
                },
            );
            return finish_unit(ctx, id, result);
        }
    }
    ctx.reporter.unit(id, &format!("landing on {}", p.branch));
    let land_started = Instant::now();
    land::import_objects(repo, &attempt.dir.join("objects"))?;
    // One landing on a branch at a time, across processes: from the head it is prepared on
    // to the compare-and-swap that moves it (the lock goes with this function).
    let _branch = crate::state::lock::RepoLock::on(
        &crate::state::dir(repo),
        crate::state::lock::Guarded::Branch(&p.branch),
        "run",
        true,
    )?;
    let prepared = land::prepare(repo, &req)?;
    let tree = result.tree.clone().unwrap_or_default();
    // The unit's own verification, the key to landing its tree.
    let own = match gate_key(&result, &tree, &p.checks) {
        Ok(k) => k.recorded(result.record.as_deref()),
        Err(why) => {
            result.status = Status::VerifyFailed;
            result.message = format!("not landed: {why}; the patch is kept");
            return finish_unit(ctx, id, result);
        }
    };
    let mut key = own.clone();
    if let land::Prepared::Ready {
        merged: Some((head, merged_tree)),
        ..
    } = &prepared
    {
        let reverify = *merged_tree != tree
            && p.merged == crate::config::MergedPolicy::Reverify
            && !p.checks.is_empty();
        if *merged_tree != tree && !reverify {
            key = if p.checks.is_empty() {
                crate::verify::Verified::without_checks(merged_tree, &p.checks)
                    .map_err(|r| Error::Internal(r.0))?
            } else {
                own.trusting_merge(merged_tree)
            };
        }
        if reverify {
            ctx.reporter.unit(
                id,
                &format!(
                    "{} moved to {}; verifying the merged tree before landing it",
                    p.branch,
                    short(head)
                ),
            );
            let head_tree = repo.text(&["rev-parse", &format!("{head}^{{tree}}")])?;
            let cache_dir = crate::verify::state_paths(&repo.common_dir).1;
            let log = attempt.dir.join("verify-merged.log");
            let sink = ctx.reporter.line_sink();
            let on_line = |l: &str| sink(l);
            // The merged tree, judged against the head it lands on; protected paths are the
            // head's (the unit's own edits of them were refused by the scope check).
            // Either tree may edit the dependency manifests (this unit's change, or one that
            // landed meanwhile): each is checked on the dependencies of its own manifests.
            let images = match (
                image_for(ctx, &head_tree).await,
                image_for(ctx, merged_tree).await,
            ) {
                (Ok(h), Ok(m)) => (h, m),
                // The head's manifests install, the merged tree's do not: the change's.
                (Ok(_), Err(Error::Install(f))) => {
                    result.status = Status::VerifyFailed;
                    result.message = format!(
                        "{} moved to {}; merged onto it, {}",
                        p.branch,
                        short(head),
                        change_install_failed(&f)
                    );
                    return finish_unit(ctx, id, result);
                }
                (Err(e @ Error::Install(_)), _) => {
                    result.status = Status::InfraError;
                    result.message = format!(
                        "{} moved to {} and the merged tree could not be verified: {e}; nothing landed, the patch is kept",
                        p.branch,
                        short(head)
                    );
                    return finish_unit(ctx, id, result);
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            let (head_image, merged_image) = &images;
            let base = verify_request(ctx, p, &tree, &log, &cache_dir);
            let vreq = crate::verify::VerifyRequest {
                base_tree: &head_tree,
                tree: merged_tree,
                protected: None,
                image: head_image.as_ref().map_or(base.image, |(i, _)| i.as_str()),
                image_tree: head_image
                    .as_ref()
                    .map_or(base.image_tree, |_| head_tree.as_str()),
                deps_key: head_image
                    .as_ref()
                    .map_or(base.deps_key, |(_, k)| k.as_str()),
                change_image: merged_image.as_ref().map(|(i, k)| (i.as_str(), k.as_str())),
                ..base
            };
            let verdict = crate::verify::verify(ctx.engine, repo, &vreq, None, &on_line).await?;
            result.merged_record =
                Some(super::judge::store_record(ctx, &vreq, head, &result, &verdict).await?);
            let failure = (!verdict.passed).then(|| {
                failure_status(
                    &verdict,
                    &format!(
                        "{} moved to {} and the merged tree fails verification: ",
                        p.branch,
                        short(head)
                    ),
                    p.settings.timeout_secs,
                )
            });
            let merged_key =
                crate::verify::Verified::from_verdict(&verdict, merged_tree, &p.checks);
            result.merged_verdict = Some(verdict);
            if let Some((status, message)) = failure {
                result.status = status;
                result.message = message;
                return finish_unit(ctx, id, result);
            }
            key = match merged_key {
                Ok(k) => k.recorded(result.merged_record.as_deref()),
                Err(why) => {
                    result.status = Status::VerifyFailed;
                    result.message = format!(
                        "{} moved to {}; the merged tree is not landed: {why}; the patch is kept",
                        p.branch,
                        short(head)
                    );
                    return finish_unit(ctx, id, result);
                }
            };
        }
    }
    let landed = match &prepared {
        land::Prepared::Conflict(landed) => landed.clone(),
        land::Prepared::Already { head } => land::already(&req, head),
        land::Prepared::Ready { .. } => {
            let commit = land::commit(repo, &req, &prepared, &key)?;
            ctx.journal.update(|j| {
                let u = j.unit_mut(id);
                u.phase = UnitPhase::Landing;
                u.landing = Some(crate::state::journal::Landing {
                    commit: commit.id().to_string(),
                    old: commit.old().map(str::to_string),
                });
            })?;
            crate::failpoint::hit("landing");
            land::finish(repo, &req, commit)?
        }
    };
    crate::failpoint::hit("landed");
    result.timings.land_ms = Some(crate::timings::since(land_started));
    finish_landing(&mut result, landed);
    finish_unit(ctx, id, result)
}

/// What `apply` says when it lands nothing.
fn not_applied(id: &str, why: &dyn std::fmt::Display) -> String {
    format!("not applied: {why}; nothing landed (run the unit again: boxdelegate run --unit {id} --rerun)")
}

/// The key to landing `tree` from a unit's result: its verdict, a pass of that tree with the
/// checks in force; or, when the project configures no checks, a key that says so.
fn gate_key(
    result: &UnitResult,
    tree: &str,
    checks: &[crate::verify::Check],
) -> std::result::Result<crate::verify::Verified, crate::verify::Refused> {
    match &result.verdict {
        Some(v) => crate::verify::Verified::from_verdict(v, tree, checks),
        None if checks.is_empty() => crate::verify::Verified::without_checks(tree, checks),
        None => Err(crate::verify::Refused(
            "its change was never verified (the scope check rejected it, or it stopped before verification)".into(),
        )),
    }
}

pub(super) fn land_request(r: &UnitResult) -> Option<LandRequest> {
    Some(LandRequest {
        branch: r.branch.clone(),
        snapshot_commit: r.snapshot_commit.clone(),
        snapshot_tree: r.snapshot_tree.clone(),
        tree: r.tree.clone()?,
        unit_id: r.unit.clone(),
        title: r.title.clone(),
        body: r.body.clone(),
        agent: r.agent.clone(),
        co_author: r.co_author.clone(),
        patch_sha256: r.patch_sha256.clone()?,
    })
}

pub(super) fn finish_landing(result: &mut UnitResult, landed: Landed) {
    match &landed {
        Landed::Committed {
            commit,
            branch,
            rebased_onto,
            note,
            ..
        } => {
            result.status = Status::Landed;
            result.message = format!(
                "landed as {} on {branch}{}{}",
                short(commit),
                rebased_onto
                    .as_ref()
                    .map(|h| format!(" (on top of {}, the branch had moved)", short(h)))
                    .unwrap_or_default(),
                note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            );
        }
        Landed::Already { commit, branch } => {
            result.status = Status::AlreadyLanded;
            result.message = format!(
                "already-landed: {branch} already holds this change at {}; nothing was committed",
                short(commit)
            );
        }
        Landed::Conflict { branch, paths, .. } => {
            result.status = Status::Conflict;
            result.message = format!(
                "{branch} moved and the change conflicts with it in {}; nothing was written, the patch is kept",
                paths.join(", ")
            );
        }
    }
    result.landed = Some(landed);
}

/// `boxdelegate apply UNIT`: lands the last kept result of a unit, after the same checks.
pub fn apply(
    project: &Project,
    id: &str,
    branch: Option<String>,
    wait: bool,
) -> Result<UnitResult> {
    let mut result = crate::state::last_result(&project.repo, id)?;
    if let Some(b) = branch {
        result.branch = b;
    }
    land::check_target(&project.repo, &result.branch)?;
    let unit = unit::load(&project.repo.root, &project.config.project.units_dir, id)?;
    let globs = unit.globs()?;
    let unit_dir = result.attempt_dir.clone().unwrap_or_else(|| {
        crate::state::dir(&project.repo)
            .join("runs")
            .join(&result.run_id)
            .join(id)
    });
    let set: ChangeSet = serde_json::from_slice(
        &std::fs::read(unit_dir.join("changes.json"))
            .map_err(|e| Error::io("reading the kept change set", e))?,
    )
    .map_err(|e| Error::Internal(format!("the kept change set is unreadable: {e}")))?;
    if matches!(result.status, Status::Landed | Status::AlreadyLanded) {
        return Err(Error::Usage {
            message: format!("unit {id} already landed ({})", result.message),
            hint: "nothing to apply".into(),
        });
    }
    if result.tree.is_none() {
        return Err(Error::Usage {
            message: format!(
                "the last run of unit {id} kept no change ({})",
                result.message
            ),
            hint: format!("run it again: boxdelegate run --unit {id}"),
        });
    }
    result.rejections = scope::check(&set, &globs, &project.limits, &unit.file);
    if !result.rejections.is_empty() {
        result.status = Status::Rejected;
        result.message = format!(
            "{} scope violation(s); nothing landed",
            result.rejections.len()
        );
        return Ok(result);
    }
    // The same gate as `run`: a pass of this very tree with the checks in force now.
    let checks = crate::verify::checks(&project.profile, &project.config.verify);
    let tree = result.tree.clone().expect("checked above");
    let key = match gate_key(&result, &tree, &checks) {
        Ok(k) => k.recorded(result.record.as_deref()),
        Err(why) => {
            result.message = not_applied(id, &why);
            return Ok(result);
        }
    };
    let state = crate::state::dir(&project.repo);
    let _unit = crate::state::lock::RepoLock::on(
        &state,
        crate::state::lock::Guarded::Unit(id),
        "apply",
        wait,
    )?;
    land::import_objects(&project.repo, &unit_dir.join("objects"))?;
    let req = land_request(&result).expect("checked above");
    let _branch = crate::state::lock::RepoLock::on(
        &state,
        crate::state::lock::Guarded::Branch(&req.branch),
        "apply",
        true,
    )?;
    let trust =
        project.config.verify.merged.unwrap_or_default() == crate::config::MergedPolicy::Trust;
    let landed = land::land(&project.repo, &req, &key, |merged| {
        if checks.is_empty() {
            crate::verify::Verified::without_checks(merged, &checks).ok()
        } else {
            trust.then(|| key.trusting_merge(merged))
        }
    })?;
    let landed = match landed {
        Ok(l) => l,
        Err(why) => {
            result.message = not_applied(id, &why);
            return Ok(result);
        }
    };
    finish_landing(&mut result, landed);
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(
        &crate::state::dir(&project.repo)
            .join("last")
            .join(format!("{id}.json")),
        &json,
    )?;
    Ok(result)
}
