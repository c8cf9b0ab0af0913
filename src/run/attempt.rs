//! One agent attempt's container: the prompt assembled from the unit and the snapshot (with the
//! last failure on a retry), the hardened container started under the network policy, and
//! watched until it exits, times out, runs out of memory or disk, or goes silent.
//!
//! May not: read what the agent wrote (that is `judge`'s, through extraction), or trust the agent's
//! exit code for what changed.

use super::ledger::{update_attempt, Ctx};
use super::plan::{AgentNetwork, AgentPlan, Planned};
use super::resume::unix_now;
use crate::agent::{PROMPT_DIR, PROMPT_FILE};
use crate::change::ChangeSet;
use crate::engine::{hardened_host_config, labels, short};
use crate::error::{Error, Result};
use crate::images;
use crate::project::Project;
use crate::record::Status;
use crate::snapshot;
use crate::state::journal::AttemptPhase;
use crate::state::PrivateOpen;
use bollard::models::ContainerCreateBody;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often an agent container's written bytes are read.
pub(super) const DISK_POLL: Duration = Duration::from_secs(1);
/// Entries of a writable layer the disk watch walks at most each poll (beyond that the
/// engine's own figure alone is used).
const DISK_WALK_ENTRIES: usize = 1_000_000;

/// Creates, prepares and starts the agent container of an attempt.
pub(super) async fn start_agent(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    // A container made before a crash, never recorded as started: start afresh.
    for c in ctx
        .engine
        .list_containers(&[
            &format!("{}={}", labels::RUN, ctx.run_id),
            &format!("{}={id}", labels::UNIT),
            &format!("{}={}", labels::ATTEMPT, a.n),
        ])
        .await?
    {
        if let Some(c) = c.id {
            ctx.engine.remove_container(&c).await?;
        }
    }
    let proxy = matches!(plan.network, AgentNetwork::Proxy { .. })
        .then(|| crate::proxy::name(ctx.run_id, id, a.n));
    if let Some(name) = &proxy {
        ctx.engine.remove_network(name).await?;
    }
    let retry = retry_context(ctx, id, a.n)?;
    ctx.reporter.unit(
        id,
        &format!(
            "agent ({}) running{}",
            plan.agent.name(),
            if a.n > 1 {
                format!(", attempt {}", a.n)
            } else {
                String::new()
            }
        ),
    );
    let spec = plan.agent.spec(&p.unit);
    let mut env = spec.env.clone();
    env.extend(plan.env.iter().cloned());
    env.push(format!("BOXDELEGATE_ATTEMPT={}", a.n));
    let mut host = hardened_host_config(&p.limits);
    if ctx.disk_quota {
        host.storage_opt = Some(HashMap::from([(
            "size".to_string(),
            p.limits.disk.to_string(),
        )]));
    }
    let attempt_labels = HashMap::from([
        (labels::RUN.to_string(), ctx.run_id.to_string()),
        (labels::UNIT.to_string(), id.clone()),
        (labels::ATTEMPT.to_string(), a.n.to_string()),
    ]);
    let prompt = assemble_prompt(
        ctx.project,
        ctx.agent_tree,
        ctx.agent_entries,
        ctx.agent_tree != ctx.snapshot.tree,
        p,
        plan,
        retry,
    )?;
    crate::state::write_private(&a.dir.join("prompt.md"), prompt.as_bytes())?;
    let mut cmd = if ctx.upper {
        spec.cmd.clone()
    } else {
        crate::extract::watch::wrap(&spec.cmd)
    };
    let prompt_in_env = fits_in_env(&prompt);
    if prompt_in_env {
        env.push(format!("{PROMPT_VAR}={prompt}"));
        cmd = write_prompt_first(cmd);
    }
    let create_at_ms = crate::timings::now_ms();
    let create_started = Instant::now();
    let started = async {
        host.network_mode = Some(match (&plan.network, &proxy) {
            (
                AgentNetwork::Proxy {
                    allow,
                    egress,
                    gateway,
                },
                Some(name),
            ) => {
                crate::proxy::start(
                    ctx.engine,
                    name,
                    attempt_labels.clone(),
                    egress,
                    allow,
                    gateway.as_ref(),
                )
                .await?;
                env.extend(crate::proxy::agent_env());
                name.clone()
            }
            (AgentNetwork::Engine(n), _) => n.clone(),
            _ => "none".into(),
        });
        if let Some(tool) = &spec.tool_image {
            // The agent's binaries: a read-only volume shared by every container of that
            // image, not a copy in this one's writable layer.
            host.mounts
                .get_or_insert_with(Vec::new)
                .push(crate::engine::volumes::read_only(
                    &crate::agent::codex::volume_name(tool),
                    "/opt/boxdelegate",
                ));
        }
        let container = ctx
            .engine
            .create_container(ContainerCreateBody {
                image: Some(ctx.image.to_string()),
                cmd: Some(cmd),
                env: Some(env),
                working_dir: Some("/work".into()),
                labels: Some({
                    let mut l = attempt_labels;
                    l.insert(labels::KIND.to_string(), "agent".to_string());
                    l
                }),
                network_disabled: Some(plan.network == AgentNetwork::None),
                host_config: Some(host),
                ..Default::default()
            })
            .await?;
        crate::failpoint::hit("agent-created");
        let prepared = async {
            if !prompt_in_env {
                ctx.engine
                    .upload(&container, PROMPT_DIR, prompt_tar(&prompt)?)
                    .await?;
            }
            for f in &spec.files {
                ctx.engine
                    .upload(
                        &container,
                        &f.dir,
                        images::single_file_tar(&f.path, &f.data, f.mode)?,
                    )
                    .await?;
            }
            if let Some(dirs) = &ctx.watch_dirs {
                ctx.engine
                    .upload(
                        &container,
                        "/tmp",
                        images::single_file_tar(crate::extract::watch::DIRS, dirs, 0o600)?,
                    )
                    .await?;
            }
            ctx.engine.start(&container).await
        }
        .await;
        if let Err(e) = prepared {
            ctx.engine.remove_container(&container).await?;
            return Err(e);
        }
        Ok(container)
    }
    .await;
    let container = match started {
        Ok(c) => c,
        Err(e) => {
            if let Some(name) = &proxy {
                let _ = crate::proxy::stop(ctx.engine, name).await;
            }
            return Err(e);
        }
    };
    update_attempt(ctx, id, |a| {
        a.container = Some(container.clone());
        a.phase = AttemptPhase::Running;
        a.started_at = Some(unix_now());
        a.result.timings.agent_create_at_ms = Some(create_at_ms);
        a.result.timings.agent_start_ms = Some(crate::timings::since(create_started));
    })?;
    crate::failpoint::hit("agent-started");
    Ok(())
}

/// What the retry prompt says about the last failed change, when there was one.
pub(super) fn retry_context(
    ctx: &Ctx<'_>,
    id: &str,
    n: u32,
) -> Result<Option<crate::agent::prompt::Retry>> {
    let failed = ctx.journal.read(|j| {
        j.unit(id)
            .attempts
            .iter()
            .rev()
            .find(|a| a.n < n && a.phase == AttemptPhase::Done && a.infra.is_none())
            .cloned()
    });
    let Some(f) = failed else { return Ok(None) };
    let r = &f.result;
    if ctx.agent_tree != ctx.snapshot.tree {
        return Ok(Some(withholding_hidden(ctx, &f)?));
    }
    // Each failure once (tokens are paid for every copy): the outcome in one line (a verdict's
    // summary, not the message that quotes the checks' output), then the checks' own log.
    let outcome = match &r.verdict {
        Some(v) => format!("{}: {}", crate::output::label(r.status), v.summary),
        None => r.message.clone(),
    };
    let mut summary = format!("Outcome: {outcome}\n");
    if let Ok(data) = std::fs::read(f.dir.join("changes.json")) {
        if let Ok(set) = serde_json::from_slice::<ChangeSet>(&data) {
            summary.push_str(&format!("Files it changed ({}):\n", set.changes.len()));
            for c in &set.changes {
                summary.push_str(&format!("- {}\n", String::from_utf8_lossy(&c.path)));
            }
        }
    }
    if !r.rejections.is_empty() {
        summary.push_str("Scope rules it broke:\n");
        for rej in &r.rejections {
            summary.push_str(&format!("- {rej}\n"));
        }
    }
    let mut output = String::new();
    if let Some(v) = &r.verdict {
        match std::fs::read(f.dir.join("verify.log")) {
            Ok(log) => output.push_str(&String::from_utf8_lossy(&log)),
            Err(_) => output.push_str(&v.explain()),
        }
    } else if r.status == Status::AgentFailed {
        if let Ok(log) = std::fs::read(f.dir.join("agent.log")) {
            output.push_str(&String::from_utf8_lossy(&log));
        }
    }
    Ok(Some(crate::agent::prompt::Retry {
        attempt: f.n,
        failure_output: output,
        rejected_summary: summary,
    }))
}

/// The retry context when hidden acceptance tests judge the change: which checks failed and
/// the failing tests the agent can see, by name; no check output (a hidden test's output, or
/// its name in another's, would show it), and hidden tests only counted.
fn withholding_hidden(
    ctx: &Ctx<'_>,
    f: &crate::state::journal::Attempt,
) -> Result<crate::agent::prompt::Retry> {
    let r = &f.result;
    let hidden_files: Vec<String> =
        snapshot::diff_trees(&ctx.project.repo, ctx.agent_tree, &ctx.snapshot.tree)?
            .upserted
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
    let is_hidden = |name: &str| {
        let head = name
            .split(['[', ' '])
            .next()
            .unwrap_or(name)
            .split("::")
            .next()
            .unwrap_or(name);
        ctx.hidden.is_match(std::path::Path::new(head))
            || hidden_files.iter().any(|file| {
                let stem = std::path::Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !stem.is_empty() && name.contains(&stem)
            })
    };
    let mut summary = format!("Outcome: {}\n", crate::output::label(r.status));
    if !r.rejections.is_empty() {
        summary.push_str("Scope rules it broke:\n");
        for rej in &r.rejections {
            summary.push_str(&format!("- {rej}\n"));
        }
    }
    let mut output = String::new();
    for v in r.verdict.iter().chain(r.merged_verdict.iter()) {
        for c in v.checks.iter().filter(|c| !c.passed) {
            let (hidden, shown): (Vec<&String>, Vec<&String>) =
                c.failed_tests.iter().partition(|t| is_hidden(t));
            output.push_str(&format!("check {} {}", c.name, c.outcome.as_str()));
            if !shown.is_empty() {
                let names: Vec<&str> = shown.iter().map(|s| s.as_str()).collect();
                output.push_str(&format!("; failing: {}", names.join(", ")));
            }
            if !hidden.is_empty() {
                output.push_str(&format!(
                    "; {} hidden acceptance test(s) failed",
                    hidden.len()
                ));
            }
            output.push('\n');
        }
    }
    output.push_str(
        "(The checks' output is not shown: hidden acceptance tests judge this change.)\n",
    );
    Ok(crate::agent::prompt::Retry {
        attempt: f.n,
        failure_output: output,
        rejected_summary: summary,
    })
}

/// Watches a started agent container until it exits or outlives its timeout; after a resume
/// this re-attaches to the container the earlier process started.
pub(super) async fn watch_agent(
    ctx: &Ctx<'_>,
    p: &Planned,
    plan: &AgentPlan,
    a: &crate::state::journal::Attempt,
) -> Result<()> {
    let id = &p.unit.meta.id;
    let container = a
        .container
        .clone()
        .expect("a running attempt has a container");
    match ctx.engine.container_running(&container).await? {
        None => {
            // Gone (removed by hand or by an interrupted process): the attempt starts afresh.
            ctx.reporter.unit(
                id,
                &format!(
                    "the agent container {} is gone; starting the attempt again",
                    short(&container)
                ),
            );
            return update_attempt(ctx, id, |a| {
                a.phase = AttemptPhase::Starting;
                a.container = None;
            });
        }
        Some(running) => {
            ctx.engine.adopt(&container);
            if running && a.started_at.is_some_and(|s| unix_now() - s > 1.0) {
                ctx.reporter.unit(
                    id,
                    &format!(
                        "re-attached to the running agent container {}",
                        short(&container)
                    ),
                );
            }
        }
    }
    let spec = plan.agent.spec(&p.unit);
    let redactor = &plan.redactor;
    let activity = std::sync::Arc::new(std::sync::Mutex::new(crate::record::Activity::default()));
    let oom = ctx.engine.watch_oom(&container);
    let log_task = {
        let engine = ctx.engine.clone();
        let container = container.clone();
        let log_path = a.dir.join("agent.log");
        let sink = ctx.reporter.line_sink();
        let activity_sink = ctx.reporter.activity_sink(id);
        let redactor = redactor.clone();
        let activity = activity.clone();
        let codex = spec.events == crate::agent::Events::Codex;
        let silence = plan.silence_warning;
        let unit = id.clone();
        tokio::spawn(async move {
            // The engine replays the whole output, so the log is written anew.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode_private()
                .open(&log_path)
                .ok()
                .map(crate::state::capped::CappedLog::new);
            let mut logs = Box::pin(engine.logs(&container, None, true));
            let mut lines = crate::state::capped::Lines::default();
            let mut warned = false;
            loop {
                let next = match tokio::time::timeout(silence, logs.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if !warned {
                            sink(&format!(
                                "warning: {unit}: the agent has printed nothing for {}",
                                humantime::format_duration(silence)
                            ));
                            warned = true;
                        }
                        continue;
                    }
                };
                let Some(Ok(chunk)) = next else { break };
                warned = false;
                for line in lines.feed(&chunk) {
                    let line = redactor.redact(&line);
                    if let Some(f) = file.as_mut() {
                        f.line(&line);
                    }
                    if codex {
                        let mut a = activity.lock().expect("poisoned");
                        if a.feed(&line) {
                            activity_sink(&a.status_line());
                            continue;
                        }
                    } else if !line.trim().is_empty() {
                        // Any other agent: its last line of output is what it is doing.
                        activity_sink(line.trim());
                    }
                    sink(&line);
                }
            }
            if let Some(rest) = lines.rest() {
                let line = redactor.redact(&rest);
                if let Some(f) = file.as_mut() {
                    f.line(&line);
                }
                if codex {
                    activity.lock().expect("poisoned").feed(&line);
                }
            }
            if let Some(f) = file {
                f.finish();
            }
        })
    };
    let started = a.started_at.unwrap_or_else(unix_now);
    let remaining = plan
        .timeout
        .saturating_sub(Duration::from_secs_f64((unix_now() - started).max(0.0)));
    // The writable layer is watched where the engine cannot cap it (and checked where it
    // can): a container over its disk limit is stopped.
    // Where the writable layer is on this host, its real usage counts too (blocks and
    // inodes): many empty files or directories take disk the engine reports as almost nothing.
    let upper_dir = if ctx.upper {
        ctx.engine.local_upper_dir(&container).await.ok().flatten()
    } else {
        None
    };
    let disk_watch = async {
        loop {
            tokio::time::sleep(DISK_POLL).await;
            let reported = ctx.engine.written_bytes(&container).await.ok();
            let real = match upper_dir.clone() {
                Some(dir) => tokio::task::spawn_blocking(move || {
                    crate::extract::upper::disk_usage(&dir, DISK_WALK_ENTRIES)
                })
                .await
                .ok()
                .flatten(),
                None => None,
            };
            let n = reported.unwrap_or(0).max(real.unwrap_or(0));
            if n > p.limits.disk {
                return n;
            }
        }
    };
    enum End {
        Exited(i64),
        TimedOut,
        OverDisk(u64),
    }
    let end = tokio::select! {
        waited = tokio::time::timeout(remaining, ctx.engine.wait(&container)) => match waited {
            Ok(code) => End::Exited(code?),
            Err(_) => End::TimedOut,
        },
        n = disk_watch => End::OverDisk(n),
    };
    let code = match end {
        End::Exited(code) => Some(code),
        End::TimedOut | End::OverDisk(_) => {
            ctx.engine.kill(&container).await?;
            None
        }
    };
    let refused = match &plan.network {
        AgentNetwork::Proxy { .. } => {
            let name = crate::proxy::name(ctx.run_id, id, a.n);
            crate::proxy::stop(ctx.engine, &name)
                .await?
                .iter()
                .map(|r| redactor.redact(r))
                .collect()
        }
        _ => Vec::new(),
    };
    let agent_seconds = (unix_now() - started).max(0.0);
    // The log stream ends with the container; give it a moment to drain, then stop it.
    let _ = tokio::time::timeout(Duration::from_secs(5), log_task).await;
    let oom_killed = code.is_some()
        && (oom.count() > 0 || ctx.engine.oom_killed(&container).await.unwrap_or(false));
    let activity = activity.lock().expect("poisoned").clone();
    let codex = spec.events == crate::agent::Events::Codex;
    let stopped = match end {
        End::OverDisk(written) => Some((
            Status::InfraError,
            "disk",
            format!(
                "the agent container wrote {} MiB, over the disk limit of {} MiB, and was stopped; nothing landed",
                written >> 20,
                p.limits.disk >> 20
            ),
        )),
        End::TimedOut => Some((
            Status::Timeout,
            "timeout",
            format!(
                "the agent ran longer than {}s and was killed; nothing landed",
                plan.timeout.as_secs()
            ),
        )),
        End::Exited(_) if oom_killed => Some((
            Status::InfraError,
            "oom",
            format!(
                "the agent container was killed by the out-of-memory killer (limit {} MiB); nothing landed",
                p.limits.memory >> 20
            ),
        )),
        End::Exited(_) => None,
    };
    if stopped.is_some() {
        ctx.engine.remove_container(&container).await?;
    }
    update_attempt(ctx, id, |at| {
        at.agent_seconds = agent_seconds;
        let r = &mut at.result;
        r.agent_exit_code = code;
        r.network_refused = refused;
        if codex {
            r.usage = Some(activity.usage.clone());
            r.cost_usd = plan
                .price
                .as_ref()
                .map(|price| crate::agent::events::cost(&activity.usage, price));
            r.agent_activity = Some(activity.clone());
        }
        match stopped {
            Some((status, kind, message)) => {
                r.status = status;
                r.message = message;
                at.infra = Some(kind.into());
                at.phase = AttemptPhase::Done;
            }
            None => at.phase = AttemptPhase::Exited,
        }
    })?;
    crate::failpoint::hit("agent-exited");
    Ok(())
}

/// The unit's prompt, with its context files, standards and gotchas read from the snapshot.
#[allow(clippy::too_many_arguments)]
pub(super) fn assemble_prompt(
    project: &Project,
    tree: &str,
    entries: &[snapshot::TreeEntry],
    hidden_tests: bool,
    p: &Planned,
    plan: &AgentPlan,
    retry: Option<crate::agent::prompt::Retry>,
) -> Result<String> {
    use crate::agent::prompt::{self, ContextFile};
    let read = |path: &str| -> Option<String> {
        project
            .repo
            .run(&["cat-file", "blob", &format!("{tree}:{path}")])
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    // A file the snapshot does not hold is not asked of git (a process each).
    let read_held = |path: &str| -> Option<String> {
        entries
            .iter()
            .any(|e| e.path.as_slice() == path.as_bytes())
            .then(|| read(path))
            .flatten()
    };
    let context_globs =
        crate::config::unit::Globs::new(&p.unit.meta.context).map_err(|(g, e)| {
            Error::config(
                &p.unit.file,
                format!("context: glob {g:?} does not compile: {e}"),
            )
        })?;
    let mut context = Vec::new();
    if !p.unit.meta.context.is_empty() {
        for e in entries {
            if matches!(e.kind, snapshot::EntryKind::File { .. })
                && context_globs.is_match(e.path())
            {
                let path = e.path().display().to_string();
                if let Some(content) = read(&path) {
                    context.push(ContextFile { path, content });
                }
            }
        }
    }
    let standards = ["AGENTS.md", "CLAUDE.md"].iter().find_map(|name| {
        read_held(name).map(|content| ContextFile {
            path: name.to_string(),
            content,
        })
    });
    let gotchas = read_held(".boxdelegate/gotchas.md");
    let test_command = p
        .checks
        .iter()
        .find(|c| c.name == "test")
        .map(|c| c.command.clone());
    let network = plan.network.describe();
    Ok(prompt::assemble(&prompt::PromptInput {
        unit_id: &p.unit.meta.id,
        title: &p.unit.meta.title,
        task: &p.unit.body,
        scope: &p.unit.meta.scope,
        deny: &p.unit.meta.deny,
        protected: &p.unit.meta.protected,
        context: &context,
        done: &p.unit.meta.done,
        tests: &p.unit.meta.tests,
        test_command: test_command.as_deref(),
        hidden_tests,
        standards,
        gotchas: gotchas.as_deref(),
        network: &network,
        retry,
    }))
}

/// The variable that carries the prompt into the agent container when it fits.
const PROMPT_VAR: &str = "BOXDELEGATE_PROMPT";

/// The largest prompt carried in the container's environment. The kernel caps one environment
/// string at 128 KiB (`MAX_ARG_STRLEN`); a larger prompt, or one holding a NUL (which no
/// environment string can), is uploaded into the created container instead. Uploading costs
/// the engine a mount and unmount of the container's filesystem before it starts (tens of
/// milliseconds on overlay drivers, a sizeable part of a unit's floor); the variable costs
/// nothing.
const PROMPT_IN_ENV_MAX: usize = 96 * 1024;

fn fits_in_env(prompt: &str) -> bool {
    prompt.len() <= PROMPT_IN_ENV_MAX && !prompt.contains('\0')
}

/// `cmd` preceded by writing the prompt from [`PROMPT_VAR`] to the prompt file (mode 0600,
/// where the agent's command reads it), the variable then dropped: the agent sees the same file
/// an upload would have made and an environment without the prompt.
fn write_prompt_first(cmd: Vec<String>) -> Vec<String> {
    let mut wrapped = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "(umask 077 && printf '%s' \"${PROMPT_VAR}\" > {PROMPT_DIR}/{PROMPT_FILE}) && unset {PROMPT_VAR} && exec \"$@\""
        ),
        "sh".to_string(),
    ];
    wrapped.extend(cmd);
    wrapped
}

pub(super) fn prompt_tar(prompt: &str) -> Result<impl crate::engine::ByteStream> {
    images::single_file_tar(PROMPT_FILE, prompt.as_bytes(), 0o600)
}
