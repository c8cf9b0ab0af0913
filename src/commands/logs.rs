//! `boxdelegate logs UNIT`: the agent log and the verify log of a unit's attempt, found through
//! the run journals, printed once or followed while the run works on the unit.
//!
//! May not: write anything on the host, whatever the input: it only reads.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::unit;
use crate::error::{exit, Error, Result};
use crate::output::label;
use crate::project::Project;
use crate::state::journal::{self, AttemptPhase, Journal, UnitPhase};

/// How often `--follow` looks at the journal and the log files again.
const POLL: Duration = Duration::from_millis(500);

pub struct Request {
    pub unit: String,
    pub run: Option<String>,
    pub attempt: Option<u32>,
    pub follow: bool,
}

pub async fn run(project: &Project, req: &Request) -> Result<i32> {
    unit::validate_id(&req.unit).map_err(|m| Error::Usage {
        message: format!("unit {m}"),
        hint: "`boxdelegate unit ls` lists the units".into(),
    })?;
    let state = crate::state::dir(&project.repo);
    let run_id = match &req.run {
        Some(id) => {
            super::status::check_run_id(&state, id)?;
            id.clone()
        }
        None => latest_run_with(project, &state, &req.unit)?,
    };
    let journal = journal::load(&state, &run_id)?;
    let entry = unit_entry(&journal, &req.unit)?;
    let attempt = match req.attempt {
        Some(n) => {
            if !entry.attempts.iter().any(|a| a.n == n) {
                return Err(Error::Usage {
                    message: format!("run {run_id} has no attempt {n} of unit {}", req.unit),
                    hint: format!("its attempts: {}", attempt_list(entry)),
                });
            }
            n
        }
        None => match entry.attempts.iter().map(|a| a.n).max() {
            Some(n) => n,
            None => {
                return Err(Error::Usage {
                    message: format!(
                        "unit {} made no attempt in run {run_id} ({})",
                        req.unit,
                        unit_state(entry)
                    ),
                    hint: "`boxdelegate status --all` lists the runs".into(),
                })
            }
        },
    };
    let view = View {
        state,
        run_id,
        unit: req.unit.clone(),
        attempt,
        // With an explicit attempt, following stops when that attempt is done.
        next_attempts: req.attempt.is_none(),
        follow: req.follow,
        redactor: redactor(project),
        poll: POLL,
    };
    // Blocking file reads (and, with --follow, waiting) off the async threads, so Ctrl-C is
    // still handled.
    tokio::task::spawn_blocking(move || view.print(&mut std::io::stdout()))
        .await
        .map_err(|e| Error::Internal(format!("the log reader stopped: {e}")))??;
    Ok(exit::OK)
}

/// The newest run in which `unit` made an attempt.
fn latest_run_with(project: &Project, state: &Path, unit: &str) -> Result<String> {
    let mut without_attempts = None;
    for id in journal::run_ids(state).into_iter().rev() {
        let j = match journal::load(state, &id) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("note: skipping run {id}: {e}");
                continue;
            }
        };
        if let Some(u) = j.units.iter().find(|u| u.id == unit) {
            if !u.attempts.is_empty() {
                return Ok(id);
            }
            without_attempts.get_or_insert_with(|| format!("run {id}: {}", unit_state(u)));
        }
    }
    if let Some(latest) = without_attempts {
        return Err(Error::Usage {
            message: format!("unit {unit} made no attempt in any run (latest: {latest})"),
            hint: format!("delegate it anew: boxdelegate run --unit {unit} --rerun"),
        });
    }
    let root = &project.repo.root;
    let dir = &project.config.project.units_dir;
    if !root.join(dir).join(format!("{unit}.md")).is_file() {
        let known = unit::list_ids(root, dir);
        return Err(Error::Usage {
            message: format!("unknown unit {unit:?}: no {dir}/{unit}.md and no run with it"),
            hint: if known.is_empty() {
                format!("create it with `boxdelegate unit new {unit} --scope GLOB`")
            } else {
                format!("known units: {}", known.join(", "))
            },
        });
    }
    Err(Error::Usage {
        message: format!("unit {unit} has no recorded run in this repository"),
        hint: format!("run it first: boxdelegate run --unit {unit}"),
    })
}

fn unit_entry<'a>(j: &'a Journal, unit: &str) -> Result<&'a journal::UnitEntry> {
    j.units
        .iter()
        .find(|u| u.id == unit)
        .ok_or_else(|| Error::Usage {
            message: format!("run {} did not work on unit {unit}", j.run_id),
            hint: format!(
                "its units: {}",
                j.units
                    .iter()
                    .map(|u| u.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

fn unit_state(u: &journal::UnitEntry) -> String {
    match &u.result {
        Some(r) => format!("{}: {}", label(r.status), r.message),
        None => label(u.phase),
    }
}

fn attempt_list(u: &journal::UnitEntry) -> String {
    if u.attempts.is_empty() {
        return "none".into();
    }
    u.attempts
        .iter()
        .map(|a| a.n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The logs are redacted when written; this second pass uses the values of the agent's
/// variables in the current environment, so a log written by an older version, or a value
/// that reached the verify log some other way, is not printed either.
fn redactor(project: &Project) -> crate::agent::Redactor {
    let agents = [
        Some(&project.config.agent),
        project.config.agent.fallback.as_deref(),
    ];
    let env: Vec<String> = agents
        .iter()
        .flatten()
        .flat_map(|a| a.env.iter())
        .filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
        .collect();
    crate::agent::Redactor::new(&env, &[])
}

/// What to print and how: one attempt of one unit in one run.
struct View {
    state: PathBuf,
    run_id: String,
    unit: String,
    attempt: u32,
    /// Go on with the unit's later attempts (retries) when following.
    next_attempts: bool,
    follow: bool,
    redactor: crate::agent::Redactor,
    poll: Duration,
}

/// A log file read from where the last read stopped; only whole lines are printed until the
/// writer is done, so a secret split across two reads is still redacted.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    header: Option<String>,
}

impl Tail {
    fn new(path: PathBuf, header: String) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            header: Some(header),
        }
    }

    fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Prints what was added since the last call; with `complete`, also an unfinished last line.
    fn pump(
        &mut self,
        out: &mut dyn Write,
        redactor: &crate::agent::Redactor,
        complete: bool,
    ) -> std::io::Result<()> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.print_header(out)?;
        let len = file.metadata()?.len();
        if len < self.offset {
            // Rewritten from the start (a resumed run re-attaches to the agent's output).
            writeln!(out, "(the log was rewritten; from its start again)")?;
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        self.offset += data.len() as u64;
        self.partial.extend_from_slice(&data);
        let cut = if complete {
            self.partial.len()
        } else {
            self.partial
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if cut > 0 {
            let text: Vec<u8> = self.partial.drain(..cut).collect();
            let mut text =
                crate::output::visible(&redactor.redact(&String::from_utf8_lossy(&text)))
                    .into_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
        }
        out.flush()
    }

    fn print_header(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if let Some(h) = self.header.take() {
            writeln!(out, "{h}")?;
        }
        Ok(())
    }

    /// Prints the header with a note instead of content.
    fn note(&mut self, out: &mut dyn Write, note: &str) -> std::io::Result<()> {
        self.print_header(out)?;
        writeln!(out, "({note})")
    }
}

impl View {
    fn tails(&self, attempt: &journal::Attempt) -> (Tail, Tail) {
        let what = format!(
            "unit {}, run {}, attempt {} ({})",
            self.unit, self.run_id, attempt.n, attempt.agent
        );
        (
            Tail::new(
                attempt.dir.join("agent.log"),
                format!("==> agent log: {what} <=="),
            ),
            Tail::new(
                attempt.dir.join("verify.log"),
                format!("==> verify log: {what} <=="),
            ),
        )
    }

    fn load(&self) -> Result<Journal> {
        journal::load(&self.state, &self.run_id)
    }

    /// Prints the attempt's logs; with `follow`, keeps printing until the unit (or, with an
    /// explicit attempt, that attempt) is done, or the run stops without finishing.
    fn print(&self, out: &mut dyn Write) -> Result<()> {
        match self.print_inner(out) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                Ok(())
            }
            other => other,
        }
    }

    fn print_inner(&self, out: &mut dyn Write) -> Result<()> {
        let io = |e: std::io::Error| Error::io("printing the logs", e);
        let mut n = self.attempt;
        let mut journal = self.load()?;
        let mut attempt = find_attempt(&journal, &self.unit, n)?;
        let (mut agent, mut verify) = self.tails(&attempt);
        loop {
            let agent_done = matches!(attempt.phase, AttemptPhase::Extracted | AttemptPhase::Done);
            let attempt_done = attempt.phase == AttemptPhase::Done;
            // The run stopped when no process holds its lock and its journal is still
            // unfinished (read again, in case the run finished between the two looks).
            let stopped = self.follow
                && !journal.finished()
                && crate::state::lock::RepoLock::holder_of(
                    &self.state,
                    crate::state::lock::Guarded::Run(&self.run_id),
                )
                .is_none()
                && !self.load()?.finished();
            // Without --follow (or once nothing more will be written) print everything there is.
            let complete = !self.follow || stopped;

            agent
                .pump(out, &self.redactor, agent_done || complete)
                .map_err(io)?;
            if !agent.exists() && (agent_done || complete) {
                agent
                    .note(
                        out,
                        &format!("no agent log: the attempt is {}", label(attempt.phase)),
                    )
                    .map_err(io)?;
            }
            if agent_done || complete {
                verify
                    .pump(out, &self.redactor, attempt_done || complete)
                    .map_err(io)?;
                if !verify.exists() && (attempt_done || complete) {
                    let why = if attempt_done {
                        format!(
                            "the change was not verified: {}: {}",
                            label(attempt.result.status),
                            attempt.result.message
                        )
                    } else {
                        format!("not verified yet: the attempt is {}", label(attempt.phase))
                    };
                    verify.note(out, &why).map_err(io)?;
                }
            }
            if !self.follow {
                return Ok(());
            }
            if attempt_done {
                let entry = unit_entry(&journal, &self.unit)?;
                let next = entry.attempts.iter().map(|a| a.n).filter(|m| *m > n).min();
                match next {
                    Some(m) if self.next_attempts => {
                        n = m;
                        attempt = find_attempt(&journal, &self.unit, n)?;
                        (agent, verify) = self.tails(&attempt);
                        writeln!(out).map_err(io)?;
                        continue;
                    }
                    _ if !self.next_attempts
                        || entry.phase == UnitPhase::Done
                        || journal.finished() =>
                    {
                        return Ok(());
                    }
                    // The unit is landing, or its next attempt is being prepared.
                    _ => {}
                }
            }
            if stopped {
                eprintln!(
                    "note: run {} stopped before unit {} was done; `boxdelegate resume {}` continues it",
                    self.run_id, self.unit, self.run_id
                );
                return Ok(());
            }
            std::thread::sleep(self.poll);
            journal = self.load()?;
            attempt = find_attempt(&journal, &self.unit, n)?;
        }
    }
}

fn find_attempt(j: &Journal, unit: &str, n: u32) -> Result<journal::Attempt> {
    unit_entry(j, unit)?
        .attempts
        .iter()
        .find(|a| a.n == n)
        .cloned()
        .ok_or_else(|| Error::Usage {
            message: format!("run {} has no attempt {n} of unit {unit}", j.run_id),
            hint: "`boxdelegate status` shows the run's attempts".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: &str) -> serde_json::Value {
        serde_json::json!({
            "unit": "u", "title": "U", "status": status, "run_id": "1-0001", "branch": "b",
            "agent": "command", "snapshot_commit": "c", "snapshot_tree": "t",
            "files_changed": 0, "rejections": [], "message": "it went", "warnings": [],
            "seconds": 0.0, "co_author": "", "body": "",
        })
    }

    fn attempt(dir: &Path, n: u32, phase: &str, status: &str) -> serde_json::Value {
        serde_json::json!({
            "n": n, "role": "primary", "agent": "command", "dir": dir.join(format!("attempt-{n}")),
            "phase": phase, "agent_seconds": 0.0, "result": result(status),
        })
    }

    /// Writes the journal of run 1-0001 with unit `u` and `attempts`.
    fn write_journal(state: &Path, phase: &str, attempts: Vec<serde_json::Value>, done: bool) {
        let dir = journal::runs_dir(state).join("1-0001");
        std::fs::create_dir_all(&dir).unwrap();
        let j = serde_json::json!({
            "schema": journal::SCHEMA, "run_id": "1-0001", "started_at": 1,
            "finished_at": if done { Some(2) } else { None },
            "request": {"units": ["u"], "branch": null, "rerun": false, "include_dirty": false},
            "snapshot_commit": "c", "snapshot_tree": "t",
            "units": [{"id": "u", "phase": phase, "attempts": attempts}],
        });
        let tmp = dir.join("journal.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&j).unwrap()).unwrap();
        std::fs::rename(tmp, dir.join(journal::FILE)).unwrap();
    }

    fn view(state: &Path, attempt: u32, follow: bool) -> View {
        View {
            state: state.to_path_buf(),
            run_id: "1-0001".into(),
            unit: "u".into(),
            attempt,
            next_attempts: true,
            follow,
            redactor: crate::agent::Redactor::new(&["KEY=s3cr3t-value".into()], &[]),
            poll: Duration::from_millis(20),
        }
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_finished_attempt_prints_both_logs_redacted_and_says_why_one_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let runs = journal::runs_dir(dir.path()).join("1-0001").join("u");
        write(
            runs.join("attempt-1/agent.log"),
            "first try, key s3cr3t-value\n",
        );
        write(runs.join("attempt-2/agent.log"), "second try");
        write(runs.join("attempt-2/verify.log"), "$ pytest\n1 passed\n");
        write_journal(
            dir.path(),
            "done",
            vec![
                attempt(&runs, 1, "done", "rejected"),
                attempt(&runs, 2, "done", "landed"),
            ],
            true,
        );
        let mut out = Vec::new();
        view(dir.path(), 2, false).print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "==> agent log: unit u, run 1-0001, attempt 2 (command) <==\nsecond try\n\
             ==> verify log: unit u, run 1-0001, attempt 2 (command) <==\n$ pytest\n1 passed\n"
        );
        let mut out = Vec::new();
        view(dir.path(), 1, false).print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("first try, key [redacted]\n"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains("(the change was not verified: rejected: it went)"),
            "{text}"
        );
    }

    #[test]
    fn follow_prints_what_is_added_until_the_unit_is_done_and_goes_on_to_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        let runs = journal::runs_dir(&state).join("1-0001").join("u");
        // The run holds its lock while it works.
        let lock = crate::state::lock::RepoLock::on(
            &state,
            crate::state::lock::Guarded::Run("1-0001"),
            "run",
            false,
        )
        .unwrap();
        write(runs.join("attempt-1/agent.log"), "started\n");
        write_journal(
            &state,
            "working",
            vec![attempt(&runs, 1, "running", "no-change")],
            false,
        );
        let writer = {
            let runs = runs.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                let step = || std::thread::sleep(Duration::from_millis(60));
                step();
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(runs.join("attempt-1/agent.log"))
                    .unwrap();
                f.write_all(b"half a li").unwrap();
                step();
                f.write_all(b"ne\n").unwrap();
                write_journal(
                    &state,
                    "working",
                    vec![attempt(&runs, 1, "done", "rejected")],
                    false,
                );
                step();
                write(runs.join("attempt-2/agent.log"), "retrying\n");
                write(runs.join("attempt-2/verify.log"), "ok\n");
                write_journal(
                    &state,
                    "done",
                    vec![
                        attempt(&runs, 1, "done", "rejected"),
                        attempt(&runs, 2, "done", "landed"),
                    ],
                    true,
                );
                drop(lock);
            })
        };
        let mut out = Vec::new();
        view(&state, 1, true).print(&mut out).unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("started\nhalf a line\n"), "{text}");
        assert!(
            text.contains("(the change was not verified: rejected"),
            "{text}"
        );
        assert!(
            text.contains("attempt 2 (command) <==\nretrying\n==> verify log"),
            "{text}"
        );
        assert!(text.ends_with("ok\n"), "{text}");
    }

    #[test]
    fn follow_stops_when_the_run_stopped_between_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let runs = journal::runs_dir(dir.path()).join("1-0001").join("u");
        write(runs.join("attempt-1/agent.log"), "tried\n");
        write_journal(
            dir.path(),
            "working",
            vec![attempt(&runs, 1, "done", "verify-failed")],
            false,
        );
        let mut out = Vec::new();
        view(dir.path(), 1, true).print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("tried\n"), "{text}");
    }

    #[test]
    fn follow_stops_when_the_run_stopped_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let runs = journal::runs_dir(dir.path()).join("1-0001").join("u");
        write(runs.join("attempt-1/agent.log"), "working on it");
        write_journal(
            dir.path(),
            "working",
            vec![attempt(&runs, 1, "running", "no-change")],
            false,
        );
        let mut out = Vec::new();
        view(dir.path(), 1, true).print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("working on it\n"), "{text}");
        assert!(
            text.contains("(not verified yet: the attempt is running)"),
            "{text}"
        );
    }
}
