//! What an interrupted run left: units that already landed, attempts unfinished in the
//! journal, and abandoned containers to remove before resuming.
//!
//! May not: resume an attempt the journal does not hold; remove a container that is not the run's
//! own.

use super::plan::Planned;
use crate::engine::{labels, short, Engine};
use crate::error::Result;
use crate::output::Reporter;
use crate::record::{Status, UnitResult};
use crate::snapshot::Snapshot;
use crate::state::journal::AttemptPhase;
use std::path::Path;

/// The result of a unit whose trailer is already on its branch: it is not run again.
pub(super) fn already_landed(
    p: &Planned,
    commit: &str,
    snapshot: &Snapshot,
    run_id: &str,
    reporter: &dyn Reporter,
) -> UnitResult {
    reporter.phase(&format!(
        "{}: already landed as {}",
        p.unit.meta.id,
        short(commit)
    ));
    let mut r = UnitResult::new(p, p.agents[0].agent.name(), snapshot, run_id);
    r.status = Status::AlreadyLanded;
    r.message = format!("already landed as {commit} (run again with --rerun to delegate it anew)");
    r
}

pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The newest unfinished run with this request, if any. A journal that cannot be read stops
/// the run: it might be this one.
pub(super) fn find_unfinished(
    state: &Path,
    request: &crate::state::journal::Request,
) -> Result<Option<crate::state::journal::Journal>> {
    for id in crate::state::journal::run_ids(state).into_iter().rev() {
        // Another process's live run is not one to resume (nor one being created: no journal
        // yet).
        if crate::state::lock::RepoLock::holder_of(state, crate::state::lock::Guarded::Run(&id))
            .is_some()
        {
            continue;
        }
        let j = match crate::state::journal::load(state, &id) {
            Ok(j) => j,
            Err(_)
                if !state
                    .join("runs")
                    .join(&id)
                    .join(crate::state::journal::FILE)
                    .exists() =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if !j.finished() && j.request == *request {
            return Ok(Some(j));
        }
    }
    Ok(None)
}

/// Removes the run's containers that no unfinished attempt is waiting on (left by a crash
/// between creating a container and recording it, or a verify container).
pub(super) async fn remove_abandoned(
    engine: &Engine,
    live: &crate::state::journal::Live,
    run_id: &str,
) -> Result<()> {
    let (keep, proxies): (Vec<String>, Vec<String>) = live.read(|j| {
        j.units
            .iter()
            .flat_map(|u| u.attempts.iter().map(move |a| (u, a)))
            .filter(|(_, a)| matches!(a.phase, AttemptPhase::Running | AttemptPhase::Exited))
            .filter_map(|(u, a)| {
                let proxy = crate::proxy::name(run_id, &u.id, a.n);
                a.container.clone().map(|c| (c, proxy))
            })
            .unzip()
    });
    for c in engine
        .list_containers(&[&format!("{}={run_id}", labels::RUN)])
        .await?
    {
        let Some(id) = c.id else { continue };
        let proxy_of_kept = c
            .names
            .unwrap_or_default()
            .iter()
            .any(|n| proxies.contains(&n.trim_start_matches('/').to_string()));
        if !keep.contains(&id) && !proxy_of_kept {
            engine.remove_container(&id).await?;
        }
    }
    for n in engine
        .list_networks(&[&format!("{}={run_id}", labels::RUN)])
        .await?
    {
        if !proxies.contains(&n) {
            engine.remove_network(&n).await?;
        }
    }
    Ok(())
}
