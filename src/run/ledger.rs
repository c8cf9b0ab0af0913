//! The run's bookkeeping: the context every unit shares, and the journal and result files
//! rewritten at each phase boundary (an attempt updated or done, a unit finished).
//!
//! May not: start a container; write anything but the run state.

use super::resume::unix_now;
use super::Policy;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::output::Reporter;
use crate::project::Project;
use crate::record::{AttemptSummary, Role, Status, UnitResult};
use crate::snapshot::{self, Snapshot};
use crate::state::journal::UnitPhase;
use std::path::Path;

/// What every unit of a run shares.
pub(super) struct Ctx<'a> {
    pub(super) project: &'a Project,
    pub(super) engine: &'a Engine,
    pub(super) snapshot: &'a Snapshot,
    /// What the agents see: the snapshot without the hidden acceptance tests of every unit
    /// in the run (the snapshot itself when there are none). The unit image holds this tree.
    pub(super) agent_tree: &'a str,
    pub(super) agent_entries: &'a [snapshot::TreeEntry],
    /// The hidden acceptance tests of every unit in the run (what `agent_tree` lacks).
    pub(super) hidden: &'a crate::config::unit::Globs,
    pub(super) image: &'a str,
    pub(super) deps_key: &'a str,
    /// The snapshot's dependency image inputs (a change that edits them is verified on its own).
    pub(super) deps: &'a crate::images::DepsPlan,
    pub(super) run_id: &'a str,
    pub(super) run_dir: &'a Path,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) journal: &'a crate::state::journal::Live,
    /// When this process began the run (Unix seconds).
    pub(super) started_at: f64,
    pub(super) policy: Policy,
    /// Whether the engine caps a container's writable layer itself.
    pub(super) disk_quota: bool,
    /// Whether the change is listed from the container's upper layer on this host: then the
    /// agent runs without the change-log watcher (no per-directory setup before it starts).
    pub(super) upper: bool,
    /// The directories the agent container's watcher watches (`watch::dirs_file`).
    pub(super) watch_dirs: Option<Vec<u8>>,
}

/// Bookkeeping once an attempt is judged: the breaker's count of infrastructure failures in a
/// row, and the progress line.
pub(super) fn attempt_done(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let (a, opened) = ctx.journal.update(|j| {
        let a = j.unit(id).attempts.last().expect("an attempt").clone();
        let mut opened = None;
        if let Some(kind) = &a.infra {
            j.consecutive_infra += 1;
            if j.consecutive_infra >= ctx.policy.breaker && j.breaker.is_none() {
                let reason = format!(
                    "{} infrastructure failures in a row, the last in unit {id} ({kind}: {})",
                    j.consecutive_infra, a.result.message
                );
                j.breaker = Some(reason.clone());
                opened = Some(reason);
            }
        } else {
            j.consecutive_infra = 0;
        }
        (a, opened)
    })?;
    crate::failpoint::hit("attempt-judged");
    let status = crate::output::label(a.result.status);
    if a.result.status != Status::Landed {
        ctx.reporter.unit(
            id,
            &format!(
                "attempt {} ({}) ended {}{}",
                a.n,
                a.agent,
                a.infra
                    .as_deref()
                    .map(|k| format!("infra-error ({k})"))
                    .unwrap_or(status),
                if a.result.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.result.message)
                }
            ),
        );
    }
    if let Some(reason) = opened {
        ctx.reporter.phase(&format!(
            "circuit breaker open: {reason}; no new unit will start"
        ));
    }
    Ok(())
}

/// Records a unit's final result: in the journal, in its directory and as its last result.
pub(super) fn finish_unit(ctx: &Ctx<'_>, id: &str, mut result: UnitResult) -> Result<()> {
    let attempts = ctx.journal.read(|j| j.unit(id).attempts.clone());
    result.attempts = attempts
        .iter()
        .map(|a| AttemptSummary {
            n: a.n,
            role: a.role,
            agent: a.agent.clone(),
            status: a.result.status,
            infra: a.infra.clone(),
            message: a.result.message.clone(),
            patch: a.result.patch.clone(),
            dir: a.dir.clone(),
            agent_seconds: a.agent_seconds,
        })
        .collect();
    let regular: Vec<_> = attempts.iter().filter(|a| a.infra.is_none()).collect();
    result.retries = regular
        .iter()
        .filter(|a| a.role == Role::Primary)
        .count()
        .saturating_sub(1) as u32;
    result.fallback = attempts.last().is_some_and(|a| a.role == Role::Fallback);
    if result.status == Status::Landed {
        if result.fallback {
            result.message.push_str(" by the fallback agent");
        } else if result.retries > 0 {
            let n = result.retries;
            result.message.push_str(&format!(
                " after {n} retr{}",
                if n == 1 { "y" } else { "ies" }
            ));
        }
    }
    result.agent_seconds = attempts.iter().map(|a| a.agent_seconds).sum();
    let mut usage: Option<crate::record::Usage> = None;
    let mut cost: Option<f64> = None;
    for a in &attempts {
        if let Some(u) = &a.result.usage {
            usage.get_or_insert_with(Default::default).add(u);
        }
        if let Some(c) = a.result.cost_usd {
            *cost.get_or_insert(0.0) += c;
        }
    }
    result.usage = usage;
    result.cost_usd = cost;
    result.network_refused = Vec::new();
    for r in attempts.iter().flat_map(|a| &a.result.network_refused) {
        if !result.network_refused.contains(r) {
            result.network_refused.push(r.clone());
        }
    }
    // Since this process began the run (a resumed run's first start is not this one's, and
    // the journal keeps whole seconds): never more than the run's wall time.
    result.seconds = (unix_now() - ctx.started_at).max(0.0);
    let json = serde_json::to_vec_pretty(&result).map_err(|e| Error::Internal(e.to_string()))?;
    crate::state::write_private(&ctx.run_dir.join(id).join("result.json"), &json)?;
    crate::state::write_private(
        &crate::state::dir(&ctx.project.repo)
            .join("last")
            .join(format!("{id}.json")),
        &json,
    )?;
    ctx.reporter
        .unit_done(id, &crate::output::label(result.status), &result.message);
    ctx.journal.update(|j| {
        let u = j.unit_mut(id);
        u.phase = UnitPhase::Done;
        u.result = Some(result);
    })?;
    Ok(())
}

/// Sets fields of the unit's current attempt and saves the journal.
pub(super) fn update_attempt(
    ctx: &Ctx<'_>,
    id: &str,
    f: impl FnOnce(&mut crate::state::journal::Attempt),
) -> Result<()> {
    ctx.journal
        .update(|j| f(j.unit_mut(id).attempts.last_mut().expect("an attempt")))
}
