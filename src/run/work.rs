//! One unit worked through: attempts driven phase by phase from the journal (start → running →
//! exited → extracted → judged) until the policy says the unit is ready to land or final.
//!
//! May not: skip a journal boundary; decide what follows an attempt (the policy does).

use super::attempt::{start_agent, watch_agent};
use super::judge::{extract_change, judge};
use super::ledger::{attempt_done, finish_unit, Ctx};
use super::plan::{AgentPlan, Planned};
use super::policy::{decide, view, Next};
use crate::error::{Error, Result};
use crate::record::{Role, Status, UnitResult};
use crate::state::journal::{AttemptPhase, UnitPhase};
use crate::verify::Ahead;

/// Works a unit until it is ready to land or has ended: attempts, retries, the fallback.
pub(super) async fn work_unit(ctx: &Ctx<'_>, p: &Planned) -> Result<()> {
    let id = &p.unit.meta.id;
    loop {
        let (phase, last, views) = ctx.journal.read(|j| {
            let u = j.unit(id);
            (
                u.phase,
                u.attempts.last().cloned(),
                u.attempts
                    .iter()
                    .filter(|a| a.phase == AttemptPhase::Done)
                    .map(view)
                    .collect::<Vec<_>>(),
            )
        });
        if matches!(
            phase,
            UnitPhase::Done | UnitPhase::Ready | UnitPhase::Landing
        ) {
            return Ok(());
        }
        if let Some(a) = last.filter(|a| a.phase != AttemptPhase::Done) {
            let plan = p.agent(a.role);
            let outcome = drive_attempt(ctx, p, plan).await;
            if let Err(e) = outcome {
                if !matches!(e, Error::Engine { .. } | Error::EngineUnreachable { .. }) {
                    return Err(e);
                }
                // The engine failed under the attempt: the change is lost, nothing is wrong
                // with it; the attempt counts as an infrastructure failure.
                if let Some(c) = ctx
                    .journal
                    .read(|j| j.unit(id).attempts.last().and_then(|a| a.container.clone()))
                {
                    let _ = ctx.engine.remove_container(&c).await;
                }
                let message = format!("the container engine failed during the attempt: {e}");
                ctx.journal.update(|j| {
                    let a = j.unit_mut(id).attempts.last_mut().expect("an attempt");
                    a.phase = AttemptPhase::Done;
                    a.infra = Some("engine".into());
                    a.result.status = Status::InfraError;
                    a.result.message = message;
                })?;
            }
            attempt_done(ctx, id)?;
            continue;
        }
        let breaker_open = ctx.journal.read(|j| j.breaker.is_some());
        match decide(
            &views,
            p.retries,
            p.agents.len() > 1,
            &ctx.policy,
            breaker_open,
        ) {
            Next::Ready => {
                ctx.journal
                    .update(|j| j.unit_mut(id).phase = UnitPhase::Ready)?;
                return Ok(());
            }
            Next::Skip => {
                let reason = ctx.journal.read(|j| j.breaker.clone()).unwrap_or_default();
                let mut r = UnitResult::new(p, p.agents[0].agent.name(), ctx.snapshot, ctx.run_id);
                r.status = Status::Skipped;
                r.message = format!("not started: the circuit breaker is open ({reason}); run the same command again once the cause is fixed");
                ctx.reporter.unit(id, &format!("skipped ({reason})"));
                finish_unit(ctx, id, r)?;
                return Ok(());
            }
            Next::Final { status, message } => {
                let mut r = ctx.journal.read(|j| {
                    j.unit(id)
                        .attempts
                        .last()
                        .expect("an attempt")
                        .result
                        .clone()
                });
                r.status = status;
                r.message = message;
                finish_unit(ctx, id, r)?;
                return Ok(());
            }
            Next::Attempt { role, backoff } => {
                if let Some(why) = over_budget(ctx, id) {
                    let mut r = ctx.journal.read(|j| {
                        j.unit(id)
                            .attempts
                            .last()
                            .expect("a unit over budget has attempts")
                            .result
                            .clone()
                    });
                    r.status = Status::OverBudget;
                    r.message = format!(
                        "stopped: {why}; no further attempt started, every attempt's patch is kept (the last: {})",
                        r.message
                    );
                    ctx.reporter.unit(id, &format!("over budget: {why}"));
                    finish_unit(ctx, id, r)?;
                    return Ok(());
                }
                if let Some(wait) = backoff.filter(|w| !w.is_zero()) {
                    ctx.reporter.unit(
                        id,
                        &format!(
                            "infrastructure failure; retrying in {}",
                            humantime::format_duration(wait)
                        ),
                    );
                    tokio::time::sleep(wait).await;
                }
                let plan = p.agent(role);
                let n = views.len() as u32 + 1;
                let dir = ctx.run_dir.join(id).join(format!("attempt-{n}"));
                crate::state::create_private_dir(&dir)?;
                let mut result = UnitResult::new(p, plan.agent.name(), ctx.snapshot, ctx.run_id);
                result.unit_image = Some(ctx.image.to_string());
                result.attempt_dir = Some(dir.clone());
                result.log = Some(dir.join("agent.log"));
                result.fallback = role == Role::Fallback;
                result.co_author = plan.agent.spec(&p.unit).co_author;
                result.body = p.unit.body.clone();
                ctx.journal.update(|j| {
                    let u = j.unit_mut(id);
                    u.phase = UnitPhase::Working;
                    u.attempts.push(crate::state::journal::Attempt {
                        n,
                        role,
                        agent: plan.agent.name().into(),
                        dir,
                        phase: AttemptPhase::Starting,
                        container: None,
                        started_at: None,
                        agent_seconds: 0.0,
                        infra: None,
                        result,
                    });
                })?;
            }
        }
    }
}

/// Takes the unit's current attempt from its recorded phase to `done`: start the agent
/// container, watch it, extract the change, judge it (scope, verify). When the unit has checks,
/// the verify container is created and started once the agent's has started (not beside it:
/// the two starts would slow each other), while the agent works, so verification does not
/// wait for one; it is removed if the judgement does not reach the checks.
pub(super) async fn drive_attempt(ctx: &Ctx<'_>, p: &Planned, plan: &AgentPlan) -> Result<()> {
    let mut standby = None;
    let driven = drive(ctx, p, plan, &mut standby).await;
    if let Some(s) = standby {
        s.discard(ctx.engine).await;
    }
    driven
}

async fn drive(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    standby: &mut Option<Ahead>,
) -> Result<()> {
    let id = &p.unit.meta.id;
    loop {
        let a = ctx
            .journal
            .read(|j| j.unit(id).attempts.last().expect("an attempt").clone());
        match a.phase {
            AttemptPhase::Starting => {
                start_agent(ctx, p, plan, &a).await?;
                if !p.checks.is_empty() && standby.is_none() {
                    let target = crate::verify::Target {
                        image: ctx.image,
                        limits: &p.limits,
                        run_id: ctx.run_id,
                        unit_id: id,
                    };
                    *standby = Some(crate::verify::standby(ctx.engine, &target));
                }
            }
            AttemptPhase::Running => watch_agent(ctx, p, plan, &a).await?,
            AttemptPhase::Exited => extract_change(ctx, p, plan, &a).await?,
            AttemptPhase::Extracted => judge(ctx, p, plan, &a, standby).await?,
            AttemptPhase::Done => return Ok(()),
        }
    }
}

/// Why the unit may not start another attempt: its attempts' tokens or estimated cost reached
/// `[agent] max_tokens` or `[run] max_cost_usd`. Usage is known once an attempt ends (codex
/// reports it when its turn completes), so the check is between attempts.
fn over_budget(ctx: &Ctx<'_>, id: &str) -> Option<String> {
    let config = &ctx.project.config;
    let (tokens, cost) = ctx.journal.read(|j| {
        j.unit(id).attempts.iter().fold((0u64, 0f64), |(t, c), a| {
            let used = a
                .result
                .usage
                .as_ref()
                .map_or(0, |u| u.input_tokens + u.output_tokens);
            (t + used, c + a.result.cost_usd.unwrap_or(0.0))
        })
    });
    if let Some(max) = config.agent.max_tokens.filter(|m| tokens >= *m) {
        return Some(format!(
            "its attempts used {tokens} tokens, [agent] max_tokens is {max}"
        ));
    }
    if let Some(max) = config.run.max_cost_usd.filter(|m| cost >= *m) {
        return Some(format!(
            "its attempts cost about ${cost:.4}, [run] max_cost_usd is ${max}"
        ));
    }
    None
}
