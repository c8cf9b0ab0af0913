//! Verification in a second, clean container: the image of the base tree with the change
//! applied, no network, no secrets, the same hardening and limits. Each check's exit code comes
//! from the engine, never from parsing output; output is read only to count tests and to learn
//! their names.
//!
//! The same checks run on the unmodified base (the baseline, cached per deps key, tree and
//! commands), so a failure is told apart as a regression, a pre-existing failure or a fix.
//! Failing checks may be re-run to classify flakes. A timeout, an OOM kill or an engine error is
//! an infrastructure verdict, never "the change is wrong".
//!
//! This module never lands anything and never trusts the container: the tree it checks is
//! written on the host from git objects, and protected paths are restored from the base first.
//!
//! May not: land anything; give the verify container network or the agent's environment; trust the
//! container's output for anything but counting and naming tests.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use sha2::{Digest, Sha256};

use crate::config::profile::Profile;
use crate::config::unit::Globs;
use crate::config::{Limits, VerifyConfig};
use crate::engine::{hardened_host_config, labels, Engine};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::images;
use crate::record::{
    BaselineCheck, BaselineInfo, CheckResult, Counts, Expectation, ExpectationStatus, Kind,
    Outcome, Verdict,
};
use crate::snapshot::{self, EntryKind};
pub use gate::{Refused, Verified};

pub mod counts;
pub mod gate;
pub mod junit;
pub mod names;
pub mod record;

/// Default limit per check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Lines of output kept per check for the report.
const TAIL_LINES: usize = 30;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub command: String,
}

/// The checks to run: `[verify]` keys override the profile's (`""` disables one).
pub fn checks(profile: &Profile, verify: &VerifyConfig) -> Vec<Check> {
    let pick = |name: &str, over: &Option<String>, default: &Option<String>| {
        over.clone()
            .or_else(|| default.clone())
            .filter(|c| !c.trim().is_empty())
            .map(|command| Check {
                name: name.into(),
                command,
            })
    };
    [
        pick("test", &verify.test, &profile.checks.test),
        pick("lint", &verify.lint, &profile.checks.lint),
        pick("typecheck", &verify.typecheck, &profile.checks.typecheck),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How checks are run, from `[verify]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Limit of each check, in seconds.
    pub timeout_secs: u64,
    /// Re-runs of a failing check before it counts as failed.
    pub reruns: u32,
    /// Whether the checks also run on the unmodified base.
    pub baseline: bool,
    /// `[verify] trust_exit_code`: a test runner that names no tests is judged by its exit
    /// code (and compared with the base by it).
    #[serde(default)]
    pub trust_exit_code: bool,
}

impl Settings {
    pub fn from_config(verify: &VerifyConfig) -> Settings {
        Settings {
            timeout_secs: verify.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT).as_secs(),
            reruns: verify.reruns.unwrap_or(0),
            baseline: verify.baseline.unwrap_or(true),
            trust_exit_code: verify.trust_exit_code.unwrap_or(false),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// One execution of a check on one tree, as the engine and the runner's output tell it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckRun {
    /// None when the check did not finish (timeout, OOM kill of the container).
    pub exit_code: Option<i64>,
    pub seconds: f64,
    /// The last lines of the output.
    pub tail: String,
    /// For the test check: the tests the runner counted, when its summary was recognised.
    pub tests: Option<Counts>,
    /// The tests the runner reported failed, by name (empty when it reports no names).
    pub failed_tests: Vec<String>,
    /// Whether the runner reported tests by name.
    pub names_known: bool,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// Whether this is the test check (whose runner is read for counts and names).
    #[serde(default)]
    pub is_test: bool,
    #[serde(skip)]
    pub names: names::Names,
}

/// Lines by which a command says it never started: the interpreter's own "No module named"
/// (not a traceback's `ModuleNotFoundError: No module named 'x'`, which is the code's), cargo's
/// unknown subcommand, npm's missing script.
static NOT_STARTED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:\S*/)?python[\d.]*: No module named \S+|^error: no such (?:sub)?command: |^npm (?:ERR!|error) Missing script: ",
    )
    .expect("valid regex")
});

/// The exit code by which a lint or typecheck says it did not run (automake's "skipped"). The
/// test check has no such code: tests that did not run are not a pass.
pub const SKIP_EXIT: i64 = 77;

impl CheckRun {
    /// Why a lint or typecheck did not run, when it exited [`SKIP_EXIT`]: its last line of
    /// output, for people (the exit code decides; the text only explains).
    fn skipped(&self) -> Option<String> {
        if self.is_test || self.exit_code != Some(SKIP_EXIT) || self.timed_out || self.oom_killed {
            return None;
        }
        let why = self
            .tail
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("it printed no reason");
        Some(why.chars().take(300).collect())
    }

    /// Why the command could not start, when it could not: the shell's 126/127 (not
    /// executable, not found), an interpreter without the module it was asked to run
    /// (`python: No module named pytest`), cargo without the subcommand (`no such command`).
    /// Such a check verified nothing, on either side.
    pub fn not_started(&self) -> Option<String> {
        if self.timed_out || self.oom_killed {
            return None;
        }
        let last = || {
            self.tail
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("it printed nothing")
                .chars()
                .take(300)
                .collect::<String>()
        };
        match self.exit_code {
            Some(0) | None => return None,
            Some(126) => return Some(format!("exit 126, not executable: {}", last())),
            Some(127) => return Some(format!("exit 127, command not found: {}", last())),
            Some(_) => {}
        }
        self.tail
            .lines()
            .map(str::trim)
            .find(|l| NOT_STARTED.is_match(l))
            .map(|l| l.chars().take(300).collect())
    }

    fn zero_tests(&self) -> bool {
        self.exit_code == Some(0) && self.tests.as_ref().is_some_and(|t| t.total == 0)
    }

    /// Exit code 0 and, for a test check, at least one test run.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.zero_tests() && !self.oom_killed
    }

    /// Ran to its end and failed (not stopped by the infrastructure).
    fn failed(&self) -> bool {
        !self.ok() && !self.timed_out && !self.oom_killed && self.exit_code.is_some()
    }
}

#[derive(Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The image holding `image_tree` in /work with the dependencies installed.
    pub image: &'a str,
    pub image_tree: &'a str,
    /// The tree the change is judged against (the baseline runs on it).
    pub base_tree: &'a str,
    /// The changed tree; its objects must be in the repository.
    pub tree: &'a str,
    pub deps_key: &'a str,
    /// When the change edited the dependency manifests: the image holding `tree` itself on the
    /// dependencies of its own manifests, and their deps key. The checks on the change run
    /// there; the baseline stays on `image`.
    pub change_image: Option<(&'a str, &'a str)>,
    pub checks: &'a [Check],
    pub settings: &'a Settings,
    /// Paths restored from `base_tree` before the checks.
    pub protected: Option<&'a Globs>,
    /// Tests that must pass afterwards (the unit's `tests`).
    pub expect: &'a [String],
    pub limits: &'a Limits,
    pub run_id: &'a str,
    pub unit_id: &'a str,
    pub log: &'a Path,
    /// Where baselines are cached.
    pub cache_dir: &'a Path,
}

type LineSink<'a> = &'a (dyn Fn(&str) + Sync);

/// Verifies `req.tree`: the baseline (cached), then the checks on the change.
/// A container from `standby` serves the checks on the change when it is of the image they run
/// on; it is removed otherwise.
pub async fn verify(
    engine: &Engine,
    repo: &Repo,
    req: &VerifyRequest<'_>,
    standby: Option<Standby>,
    on_line: LineSink<'_>,
) -> Result<Verdict> {
    let on_image = req.change_image.map_or(req.image, |(image, _)| image);
    let mut standby = standby;
    if let Some(s) = standby.take_if(|s| s.image != on_image) {
        s.discard(engine).await;
    }
    let result = verify_with(engine, repo, req, &mut standby, on_line).await;
    // Not reached (a failure before the checks): nothing else will use it.
    if let Some(s) = standby {
        s.discard(engine).await;
    }
    result
}

async fn verify_with(
    engine: &Engine,
    repo: &Repo,
    req: &VerifyRequest<'_>,
    standby: &mut Option<Standby>,
    on_line: LineSink<'_>,
) -> Result<Verdict> {
    let (tree, restored) = restore_protected(repo, req.base_tree, req.tree, req.protected)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(req.log)
        .map_err(|e| Error::io(format!("opening {}", req.log.display()), e))?;
    for path in &restored {
        let _ = writeln!(log, "# protected path {path} restored from the base");
    }

    let mut baseline_info = None;
    let mut baseline: Option<Vec<CheckRun>> = None;
    if req.settings.baseline && req.base_tree != tree {
        let key = baseline_key(req.deps_key, req.base_tree, req.checks, req.settings);
        let file = req.cache_dir.join(format!("{key}.json"));
        let cached = std::fs::read(&file)
            .ok()
            .and_then(|d| serde_json::from_slice::<Vec<CheckRun>>(&d).ok())
            .filter(|runs| runs.len() == req.checks.len());
        let from_cache = cached.is_some();
        let runs = match cached {
            Some(runs) => runs,
            None => {
                on_line("verify: baseline (the checks on the unmodified base)");
                let _ = writeln!(log, "## baseline on {}", req.base_tree);
                match in_container(
                    engine,
                    repo,
                    req,
                    (req.image, req.image_tree),
                    req.base_tree,
                    "baseline",
                    None,
                    &mut log,
                    on_line,
                    &|_, _| false,
                )
                .await
                {
                    Ok(ran) => {
                        let runs: Vec<CheckRun> = ran.into_iter().map(|r| r.first).collect();
                        // A baseline cut short by the infrastructure says nothing; keep only
                        // complete ones.
                        if runs.len() == req.checks.len()
                            && runs.iter().all(|r| !r.timed_out && !r.oom_killed)
                        {
                            let json = serde_json::to_vec(&runs)
                                .map_err(|e| Error::Internal(e.to_string()))?;
                            crate::state::write_private(&file, &json)?;
                        }
                        runs
                    }
                    Err(e) if is_infra(&e) => return Ok(infra_verdict(&tree, restored, &e)),
                    Err(e) => return Err(e),
                }
            }
        };
        baseline_info = Some(BaselineInfo {
            tree: req.base_tree.to_string(),
            key,
            cached: from_cache,
        });
        baseline = Some(runs);
    }

    let _ = writeln!(log, "## checks on {tree}");
    let base_ref = baseline.as_deref();
    let trust = req.settings.trust_exit_code;
    let should_rerun = |i: usize, run: &CheckRun| {
        run.failed()
            && !run.zero_tests()
            && classify(run, base_ref.and_then(|b| b.get(i)), trust).0 == Outcome::Fail
    };
    let on = match req.change_image {
        Some((image, _)) => (image, tree.as_str()),
        None => (req.image, req.image_tree),
    };
    let runs = match in_container(
        engine,
        repo,
        req,
        on,
        &tree,
        "verify",
        standby.take(),
        &mut log,
        on_line,
        &should_rerun,
    )
    .await
    {
        Ok(runs) => runs,
        Err(e) if is_infra(&e) => return Ok(infra_verdict(&tree, restored, &e)),
        Err(e) => return Err(e),
    };
    Ok(judge(
        req,
        &tree,
        restored,
        runs,
        baseline.as_deref(),
        baseline_info,
    ))
}

/// A check's first run, and its re-runs.
struct Ran {
    first: CheckRun,
    reruns: Vec<CheckRun>,
}

fn judge(
    req: &VerifyRequest<'_>,
    tree: &str,
    restored: Vec<String>,
    runs: Vec<Ran>,
    baseline: Option<&[CheckRun]>,
    baseline_info: Option<BaselineInfo>,
) -> Verdict {
    let mut checks = Vec::new();
    let mut expectations = Vec::new();
    for (i, (check, ran)) in req.checks.iter().zip(&runs).enumerate() {
        let base = baseline.and_then(|b| b.get(i));
        let run = &ran.first;
        let trust = req.settings.trust_exit_code;
        let (mut outcome, mut lists, mut note) = classify(run, base, trust);
        if outcome == Outcome::Fail {
            if let Some((n, good)) = ran
                .reruns
                .iter()
                .enumerate()
                .find(|(_, r)| classify(r, base, trust).0 != Outcome::Fail)
            {
                outcome = Outcome::Flaky;
                let still: BTreeSet<&String> = good.failed_tests.iter().collect();
                lists.flaky = run
                    .failed_tests
                    .iter()
                    .filter(|t| !still.contains(t))
                    .cloned()
                    .collect();
                lists.regressions.clear();
                note = Some(format!(
                    "failed, then passed on re-run {} of {}",
                    n + 1,
                    req.settings.reruns
                ));
            }
        }
        if outcome == Outcome::NotStarted {
            let image = req.change_image.map_or(req.image, |(image, _)| image);
            note = Some(format!(
                "{}: `{}` in image {image}; a configuration error, not the change's (fix the command in [verify] {} of {}, or add what it needs to the profile)",
                note.unwrap_or_default(),
                check.command,
                check.name,
                crate::config::CONFIG_FILE,
            ));
        }
        if check.name == "test" {
            for want in req.expect {
                let (status, matched) = if run.names.is_empty() {
                    (ExpectationStatus::Unchecked, None)
                } else {
                    match run.names.lookup(want) {
                        Some((name, names::Outcome::Passed)) => {
                            (ExpectationStatus::Passed, Some(name.to_string()))
                        }
                        Some((name, names::Outcome::Failed)) => {
                            (ExpectationStatus::Failed, Some(name.to_string()))
                        }
                        None => (ExpectationStatus::NotRun, None),
                    }
                };
                expectations.push(Expectation {
                    test: want.clone(),
                    status,
                    matched,
                });
            }
        }
        checks.push(CheckResult {
            name: check.name.clone(),
            command: check.command.clone(),
            outcome,
            passed: outcome.lets_land(),
            exit_code: run.exit_code,
            seconds: run.seconds,
            tail: run.tail.clone(),
            tests: run.tests.clone(),
            failed_tests: run.failed_tests.clone(),
            regressions: lists.regressions,
            pre_existing: lists.pre_existing,
            fixed: lists.fixed,
            flaky: lists.flaky,
            reruns: ran.reruns.len() as u32,
            baseline: base.map(|b| BaselineCheck {
                exit_code: b.exit_code,
                passed: b.ok(),
                failed_tests: b.failed_tests.clone(),
            }),
            note,
        });
    }
    let mut notes = Vec::new();
    if runs.len() < req.checks.len() {
        notes.push(format!(
            "{} not run after the timeout",
            req.checks[runs.len()..]
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if req.checks.is_empty() {
        notes.push("no checks configured: nothing to run".into());
    }
    let unmet: Vec<&Expectation> = expectations
        .iter()
        .filter(|e| {
            matches!(
                e.status,
                ExpectationStatus::Failed | ExpectationStatus::NotRun
            )
        })
        .collect();
    let unchecked = expectations
        .iter()
        .filter(|e| e.status == ExpectationStatus::Unchecked)
        .count();
    let is = |o: Outcome| checks.iter().any(|c| c.outcome == o);
    let kind = if is(Outcome::Timeout) {
        Kind::Timeout
    } else if is(Outcome::InfraError) {
        Kind::InfraError
    } else if is(Outcome::NotStarted) {
        Kind::ConfigError
    } else if checks
        .iter()
        .any(|c| !c.passed && c.outcome != Outcome::Inconclusive)
        || !unmet.is_empty()
    {
        Kind::Fail
    } else if is(Outcome::Inconclusive) || unchecked > 0 {
        Kind::Inconclusive
    } else {
        Kind::Pass
    };
    let mut parts: Vec<String> = checks.iter().map(describe).collect();
    for e in &unmet {
        parts.push(format!(
            "expected test {} {}",
            e.test,
            match e.status {
                ExpectationStatus::Failed => "failed",
                _ => "was not run",
            }
        ));
    }
    if unchecked > 0 {
        parts.push(format!(
            "{unchecked} expected test(s) could not be checked: the test runner reports no test names (make it name them, e.g. pytest -rA, cargo test, go test -v), which does not land"
        ));
    }
    parts.extend(notes);
    Verdict {
        verdict: kind,
        passed: kind == Kind::Pass,
        tree: tree.to_string(),
        restored,
        checks,
        expectations,
        baseline: baseline_info,
        summary: format!("{}: {}", kind.as_str(), parts.join("; ")),
    }
}

fn describe(c: &CheckResult) -> String {
    let names = |v: &[String]| {
        let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            s.push_str(&format!(" and {} more", v.len() - 5));
        }
        s
    };
    let mut s = format!("{} {}", c.name, c.outcome.as_str());
    if let Some(t) = &c.tests {
        s.push_str(&format!(" ({} tests)", t.total));
    }
    if !c.regressions.is_empty() {
        s.push_str(&format!(", failing: {}", names(&c.regressions)));
    } else if c.outcome == Outcome::Fail && !c.failed_tests.is_empty() {
        s.push_str(&format!(", failing: {}", names(&c.failed_tests)));
    } else if c.outcome == Outcome::Fail {
        if let Some(code) = c.exit_code {
            s.push_str(&format!(" (exit {code})"));
        }
    }
    if !c.pre_existing.is_empty() {
        s.push_str(&format!(", pre-existing: {}", names(&c.pre_existing)));
    }
    if !c.fixed.is_empty() {
        s.push_str(&format!(", fixed: {}", names(&c.fixed)));
    }
    if !c.flaky.is_empty() {
        s.push_str(&format!(", flaky: {}", names(&c.flaky)));
    }
    match &c.note {
        // "lint skipped (ruff is not among the dependencies)", not "lint skipped [lint skipped: …]".
        Some(n) if c.outcome == Outcome::Skipped => {
            let why = n
                .strip_prefix(&format!("{} skipped:", c.name))
                .unwrap_or(n)
                .trim();
            s.push_str(&format!(" ({why})"));
        }
        Some(n) => s.push_str(&format!(" [{n}]")),
        None => {}
    }
    s
}

#[derive(Debug, Default, PartialEq)]
struct Lists {
    regressions: Vec<String>,
    pre_existing: Vec<String>,
    fixed: Vec<String>,
    flaky: Vec<String>,
}

/// A check's outcome on the change, compared with its result on the base.
fn classify(
    run: &CheckRun,
    base: Option<&CheckRun>,
    trust_exit_code: bool,
) -> (Outcome, Lists, Option<String>) {
    let mut lists = Lists::default();
    if run.timed_out {
        return (
            Outcome::Timeout,
            lists,
            Some("stopped by its time limit; the container was killed".into()),
        );
    }
    if run.oom_killed {
        return (
            Outcome::InfraError,
            lists,
            Some("killed for running out of memory (raise [limits] memory); this says nothing about the change".into()),
        );
    }
    // A base that skipped the check, or where it could not start, says nothing to compare with.
    let base_usable = base.filter(|b| {
        !b.timed_out
            && !b.oom_killed
            && b.exit_code.is_some()
            && b.skipped().is_none()
            && b.not_started().is_none()
    });
    if let Some(why) = run.not_started() {
        // Started on the base: the change took away what the check needs.
        if let Some(b) = base_usable {
            return (
                Outcome::Fail,
                lists,
                Some(format!(
                    "could not start with the change ({why}), but ran on the base (exit {})",
                    b.exit_code.unwrap_or_default()
                )),
            );
        }
        return (
            Outcome::NotStarted,
            lists,
            Some(format!("the command could not start ({why})")),
        );
    }
    if let Some(why) = run.skipped() {
        // Skipped now but run on the base: the change took away what the check needs (a
        // linter among the dependencies, say), so it cannot pass for that.
        if let Some(b) = base_usable {
            return (
                Outcome::Fail,
                lists,
                Some(format!(
                    "did not run with the change ({why}), but ran on the base (exit {})",
                    b.exit_code.unwrap_or_default()
                )),
            );
        }
        return (Outcome::Skipped, lists, Some(why));
    }
    if run.zero_tests() {
        let runner = run
            .tests
            .as_ref()
            .map(|t| t.runner.as_str())
            .unwrap_or("the runner");
        return (
            Outcome::NoTests,
            lists,
            Some(format!("{runner} ran zero tests, which is not a pass")),
        );
    }
    // Only a test runner is read for counts and names; a lint passes by its exit code alone.
    let unrecognised = run.is_test && run.tests.is_none() && !run.names_known;
    if run.ok() {
        if unrecognised && !trust_exit_code {
            return (
                Outcome::Inconclusive,
                lists,
                Some("exit 0, but the output shows no test count and no test name: nothing says a test ran (use a runner boxdelegate reads, print 'N passed, N failed', or set [verify] trust_exit_code = true)".into()),
            );
        }
        let note = unrecognised.then(|| {
            "test runner not recognised: judged by its exit code alone ([verify] trust_exit_code = true)"
                .to_string()
        });
        return match base_usable {
            Some(b) if !b.ok() => {
                lists.fixed = b.failed_tests.clone();
                (Outcome::Fixed, lists, note)
            }
            _ => (Outcome::Pass, lists, note),
        };
    }
    // Failed.
    let Some(b) = base_usable else {
        lists.regressions = run.failed_tests.clone();
        let note = base
            .is_some()
            .then(|| "the baseline did not finish, so every failure counts".to_string());
        return (Outcome::Fail, lists, note);
    };
    if b.ok() {
        lists.regressions = run.failed_tests.clone();
        return (Outcome::Fail, lists, None);
    }
    // Both failed without running a single test (a collection error, a broken conftest): the
    // suite verifies nothing on either side, which is not a pre-existing failure to let by.
    let none_ran = |r: &CheckRun| r.tests.as_ref().is_some_and(|t| t.total == 0);
    if run.is_test && none_ran(run) && none_ran(b) {
        return (
            Outcome::NoTests,
            lists,
            Some(format!(
                "ran zero tests and failed (exit {}), on the base too: the suite verifies nothing; fix it or disable the check",
                run.exit_code.unwrap_or_default()
            )),
        );
    }
    // Both failed. By name when the failures are explained by names on both sides.
    if !run.failed_tests.is_empty() && !b.failed_tests.is_empty() {
        let before: BTreeSet<&String> = b.failed_tests.iter().collect();
        let now: BTreeSet<&String> = run.failed_tests.iter().collect();
        lists.regressions = now.difference(&before).map(|s| s.to_string()).collect();
        lists.pre_existing = now.intersection(&before).map(|s| s.to_string()).collect();
        lists.fixed = before
            .difference(&now)
            .filter(|t| run.names.tests.contains_key(t.as_str()) || run.names.is_empty())
            .map(|s| s.to_string())
            .collect();
        let outcome = if lists.regressions.is_empty() {
            Outcome::PreExisting
        } else {
            Outcome::Fail
        };
        return (outcome, lists, None);
    }
    if run.failed_tests.is_empty() && b.failed_tests.is_empty() && run.exit_code == b.exit_code {
        // A test runner that names no tests: the same exit code on both sides cannot tell a
        // new failure from the old one.
        if run.is_test && !trust_exit_code {
            return (
                Outcome::Inconclusive,
                lists,
                Some(format!(
                    "failed (exit {}) on the base too, and the runner names no tests, so a regression cannot be told from the old failure (make the runner report test names, or set [verify] trust_exit_code = true to accept it)",
                    run.exit_code.unwrap_or_default()
                )),
            );
        }
        return (
            Outcome::PreExisting,
            lists,
            Some(format!(
                "failed on the base too, with the same exit code {}; compared by exit code only (no test names reported)",
                run.exit_code.unwrap_or_default()
            )),
        );
    }
    lists.regressions = run.failed_tests.clone();
    (
        Outcome::Fail,
        lists,
        Some("failed on the base too, but differently".into()),
    )
}

fn is_infra(e: &Error) -> bool {
    matches!(e, Error::Engine { .. } | Error::EngineUnreachable { .. })
}

fn infra_verdict(tree: &str, restored: Vec<String>, e: &Error) -> Verdict {
    Verdict {
        verdict: Kind::InfraError,
        passed: false,
        tree: tree.to_string(),
        restored,
        checks: vec![],
        expectations: vec![],
        baseline: None,
        summary: format!("infra-error: the engine failed during verification ({e}); this says nothing about the change"),
    }
}

/// The cache key of a baseline: what decides its result.
pub fn baseline_key(deps_key: &str, tree: &str, checks: &[Check], settings: &Settings) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field("boxdelegate-baseline-v1");
    field(deps_key);
    field(tree);
    field(&settings.timeout_secs.to_string());
    for c in checks {
        field(&c.name);
        field(&c.command);
    }
    hex::encode(h.finalize())
}

/// The tree to check: `tree` with every protected path the change touched put back as it is
/// in `base` (or removed, when the change added it).
pub fn restore_protected(
    repo: &Repo,
    base: &str,
    tree: &str,
    protected: Option<&Globs>,
) -> Result<(String, Vec<String>)> {
    let Some(globs) = protected.filter(|g| !g.patterns.is_empty()) else {
        return Ok((tree.to_string(), vec![]));
    };
    let diff = snapshot::diff_trees(repo, base, tree)?;
    let base_entries: HashMap<Vec<u8>, snapshot::TreeEntry> = snapshot::list_tree(repo, base)?
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    // A deleted directory is one path in the diff: every base entry under it was deleted.
    let under = |dir: &[u8], p: &[u8]| {
        p == dir || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
    };
    let deleted = diff.deleted.iter().flat_map(|d| {
        base_entries
            .keys()
            .filter(|p| under(d, p))
            .cloned()
            .chain(std::iter::once(d.clone()))
            .collect::<Vec<_>>()
    });
    let touched: BTreeSet<Vec<u8>> = deleted
        .chain(diff.upserted.iter().map(|e| e.path.clone()))
        .filter(|p| {
            use std::os::unix::ffi::OsStrExt;
            globs.is_match(Path::new(std::ffi::OsStr::from_bytes(p)))
        })
        .collect();
    if touched.is_empty() {
        return Ok((tree.to_string(), vec![]));
    }
    // Removals first, so a path that changed between file and directory can come back.
    let mut remove = Vec::new();
    let mut add = Vec::new();
    for p in &touched {
        remove.extend_from_slice(b"0 0000000000000000000000000000000000000000\t");
        remove.extend_from_slice(p);
        remove.push(0);
        if let Some(e) = base_entries.get(p) {
            let mode = match e.kind {
                EntryKind::File { executable: true } => "100755",
                EntryKind::File { executable: false } => "100644",
                EntryKind::Symlink => "120000",
                EntryKind::Gitlink => "160000",
            };
            add.extend_from_slice(format!("{mode} {}\t", e.oid).as_bytes());
            add.extend_from_slice(p);
            add.push(0);
        }
    }
    let restored_tree = repo.edit_tree(tree, &[&remove, &add])?;
    let restored = touched
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Ok((restored_tree, restored))
}

/// Where checks run: the image, the limits, and the run and unit the container is labelled with.
pub struct Target<'a> {
    pub image: &'a str,
    pub limits: &'a Limits,
    pub run_id: &'a str,
    pub unit_id: &'a str,
}

/// A verify container created and started ahead, while the agent works, so the checks on its
/// change need not wait for one. It is the container `verify` would make (same image, limits,
/// hardening, no network), holds only the image's tree, and serves one verification: `verify`
/// takes it, or it is removed with [`Standby::discard`].
pub struct Standby {
    image: String,
    id: String,
    oom: crate::engine::OomWatch,
}

/// A [`Standby`] being created and started in the background.
pub struct Ahead(tokio::task::JoinHandle<Option<Standby>>);

/// Starts creating and starting a verify container of `target` in the background, while the
/// caller goes on. One that cannot be made is no failure: `verify` makes its own then.
pub fn standby(engine: &Engine, target: &Target<'_>) -> Ahead {
    let engine = engine.clone();
    let (image, limits) = (target.image.to_string(), *target.limits);
    let (run_id, unit_id) = (target.run_id.to_string(), target.unit_id.to_string());
    Ahead(tokio::spawn(async move {
        let target = Target {
            image: &image,
            limits: &limits,
            run_id: &run_id,
            unit_id: &unit_id,
        };
        start_container(&engine, &target, "verify").await.ok()
    }))
}

impl Ahead {
    /// The container, once it is started; `None` if it could not be.
    pub async fn ready(self) -> Option<Standby> {
        self.0.await.ok().flatten()
    }

    /// Removes the container (waiting for it to be made first).
    pub async fn discard(self, engine: &Engine) {
        if let Some(s) = self.ready().await {
            s.discard(engine).await;
        }
    }
}

impl Standby {
    /// Removes the container; a failure is left to the run's cleanup, which finds it by label.
    pub async fn discard(self, engine: &Engine) {
        let _ = engine.remove_container(&self.id).await;
    }
}

/// Creates a check container (`role` is its kind label) and starts it, removing it when it
/// does not start.
async fn start_container(engine: &Engine, target: &Target<'_>, role: &str) -> Result<Standby> {
    let mut host = hardened_host_config(target.limits);
    host.network_mode = Some("none".into());
    let id = engine
        .create_container(ContainerCreateBody {
            image: Some(target.image.to_string()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            working_dir: Some("/work".into()),
            labels: Some(HashMap::from([
                (labels::KIND.to_string(), role.to_string()),
                (labels::RUN.to_string(), target.run_id.to_string()),
                (labels::UNIT.to_string(), target.unit_id.to_string()),
            ])),
            network_disabled: Some(true),
            host_config: Some(host),
            ..Default::default()
        })
        .await?;
    let oom = engine.watch_oom(&id);
    if let Err(e) = engine.start(&id).await {
        let _ = engine.remove_container(&id).await;
        return Err(e);
    }
    Ok(Standby {
        image: target.image.to_string(),
        id,
        oom,
    })
}

/// Runs every check in a container of `on`'s image (which holds `on`'s tree), with `tree` put
/// in /work: `standby`'s when given (of that image), else a fresh one. Stops at a timeout (the
/// container is killed) or an OOM kill.
#[allow(clippy::too_many_arguments)]
async fn in_container(
    engine: &Engine,
    repo: &Repo,
    req: &VerifyRequest<'_>,
    (image, image_tree): (&str, &str),
    tree: &str,
    role: &str,
    standby: Option<Standby>,
    log: &mut std::fs::File,
    on_line: LineSink<'_>,
    should_rerun: &(dyn Fn(usize, &CheckRun) -> bool + Sync),
) -> Result<Vec<Ran>> {
    let Standby { id, oom, .. } = match standby {
        Some(s) => s,
        None => {
            let target = Target {
                image,
                limits: req.limits,
                run_id: req.run_id,
                unit_id: req.unit_id,
            };
            start_container(engine, &target, role).await?
        }
    };
    let result = async {
        // On Docker the changed files ride on the first check's exec; Podman gets them
        // through the archive API first.
        let defer = !engine.is_podman().await?;
        let mut pending = apply_tree(engine, repo, &id, image_tree, tree, defer).await?;
        let mut ran = Vec::new();
        for (i, check) in req.checks.iter().enumerate() {
            on_line(&format!("{role} {}: {}", check.name, check.command));
            let first = match pending.take() {
                Some(p) => {
                    run_check_applying(engine, &id, &oom, check, req.settings, log, on_line, p)
                        .await?
                }
                None => run_check(engine, &id, &oom, check, req.settings, log, on_line).await?,
            };
            let stop = first.timed_out || first.oom_killed;
            let mut reruns = Vec::new();
            if !stop && should_rerun(i, &first) {
                for n in 1..=req.settings.reruns {
                    on_line(&format!(
                        "{role} {}: failed; re-run {n} of {}",
                        check.name, req.settings.reruns
                    ));
                    let _ = writeln!(log, "# re-run {n} of {}", req.settings.reruns);
                    let again =
                        run_check(engine, &id, &oom, check, req.settings, log, on_line).await?;
                    let done = again.ok()
                        || again.timed_out
                        || again.oom_killed
                        || !should_rerun(i, &again);
                    reruns.push(again);
                    if done {
                        break;
                    }
                }
            }
            ran.push(Ran { first, reruns });
            if stop {
                break; // the container is killed or broken; the rest cannot run cleanly
            }
        }
        Ok::<_, Error>(ran)
    }
    .await;
    // Removed while the verdict is judged and the change lands.
    engine.remove_soon(&id);
    result
}

/// Changed entries not written into the verify container yet: with `defer`, [`apply_tree`]
/// leaves them to ride on the first check's exec (see [`run_check_applying`]).
struct Pending {
    repo: Repo,
    entries: Vec<snapshot::TreeEntry>,
}

/// Makes /work in container `id` (which holds `from`) hold exactly `to`: deletions, then the
/// changed entries, written from git objects on the host; with `defer`, the changed entries
/// are returned rather than uploaded.
async fn apply_tree(
    engine: &Engine,
    repo: &Repo,
    id: &str,
    from: &str,
    to: &str,
    defer: bool,
) -> Result<Option<Pending>> {
    if from == to {
        return Ok(None);
    }
    let diff = snapshot::diff_trees(repo, from, to)?;
    if !diff.deleted.is_empty() {
        engine
            .upload(id, "/tmp", images::deletion_list(&diff.deleted)?)
            .await?;
        let code = engine
            .exec(
                id,
                vec!["sh".into(), "-c".into(), images::DELETE_SCRIPT.into()],
                "/work",
                |_| {},
            )
            .await?;
        if code != 0 {
            return Err(Error::Internal(format!(
                "applying deletions in the verify container failed (exit {code})"
            )));
        }
    }
    if diff.upserted.is_empty() {
        return Ok(None);
    }
    let pending = Pending {
        repo: repo.clone(),
        entries: diff.upserted,
    };
    if defer {
        return Ok(Some(pending));
    }
    upload_pending(engine, id, pending).await?;
    Ok(None)
}

/// Writes `pending` into /work through the engine's archive API.
async fn upload_pending(engine: &Engine, id: &str, pending: Pending) -> Result<()> {
    let (body, done) = images::tar_body(pending.repo, pending.entries, vec![]);
    engine.upload(id, "/work", body).await?;
    images::join_tar(done).await?;
    Ok(())
}

/// The first check with the change's files on its stdin: the container's own `tar` unpacks
/// them into /work (as the container's user, modes and times kept, as the archive API would
/// write them), then the check runs in the same process, so the change costs no archive
/// request of its own (the engine starts a process of its own for each). The archive is
/// written by the host from git objects. Where that `tar` fails (none in the image, a
/// directory it may not write), the line it prints with this call's marker says so; the files
/// then go through the archive API and the check runs again, as if alone.
#[allow(clippy::too_many_arguments)]
async fn run_check_applying(
    engine: &Engine,
    id: &str,
    oom: &crate::engine::OomWatch,
    check: &Check,
    settings: &Settings,
    log: &mut std::fs::File,
    on_line: LineSink<'_>,
    pending: Pending,
) -> Result<CheckRun> {
    let marker = format!(
        "boxdelegate-unpack-failed-{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let (body, done) = images::tar_body(pending.repo.clone(), pending.entries.clone(), vec![]);
    let fed = Feed {
        body: Box::pin(body),
        marker: &marker,
    };
    let (run, unpacked) =
        run_check_fed(engine, id, oom, check, settings, log, on_line, Some(fed)).await?;
    let whole = images::join_tar(done).await;
    if unpacked {
        whole?;
        return Ok(run);
    }
    let _ = writeln!(
        log,
        "# the container's tar could not unpack the change; written through the engine instead, and the check run again"
    );
    upload_pending(engine, id, pending).await?;
    run_check(engine, id, oom, check, settings, log, on_line).await
}

/// What the first check's exec is fed: the archive, and the marker its wrapper prints when
/// unpacking fails.
struct Feed<'a> {
    body: std::pin::Pin<Box<dyn crate::engine::ByteStream>>,
    marker: &'a str,
}

/// Unpacks stdin into /work, then runs the check (`$2`) in its place; prints `$1` when
/// unpacking fails.
const UNPACK_THEN_RUN: &str =
    r#"tar -xpf - -C /work 2>/dev/null || { printf '\n%s\n' "$1"; exit 125; }; exec sh -c "$2""#;

/// Runs one check; a timeout kills the container.
async fn run_check(
    engine: &Engine,
    id: &str,
    oom: &crate::engine::OomWatch,
    check: &Check,
    settings: &Settings,
    log: &mut std::fs::File,
    on_line: LineSink<'_>,
) -> Result<CheckRun> {
    Ok(
        run_check_fed(engine, id, oom, check, settings, log, on_line, None)
            .await?
            .0,
    )
}

/// [`run_check`], fed the change first when `feed` is given; says whether the change was
/// unpacked (always, without a feed).
#[allow(clippy::too_many_arguments)]
async fn run_check_fed(
    engine: &Engine,
    id: &str,
    oom: &crate::engine::OomWatch,
    check: &Check,
    settings: &Settings,
    log: &mut std::fs::File,
    on_line: LineSink<'_>,
    feed: Option<Feed<'_>>,
) -> Result<(CheckRun, bool)> {
    let started = Instant::now();
    let ooms_before = oom.count();
    // Podman's Docker API reports no OOM for a killed exec: its cgroup's counter tells.
    let kills_before = if engine.is_podman().await? {
        engine.oom_kills(id).await?
    } else {
        None
    };
    let _ = writeln!(log, "$ {}", check.command);
    let mut tail: Vec<String> = Vec::new();
    let mut partial = String::new();
    let mut names = names::Names::default();
    let mut counter = counts::Counter::default();
    let is_test = check.name == "test";
    let marker = feed.as_ref().map(|f| f.marker.to_string());
    let mut unpack_failed = false;
    let mut line_done = |line: &str, tail: &mut Vec<String>| {
        if marker.as_deref() == Some(line) {
            unpack_failed = true;
            return;
        }
        on_line(line);
        if is_test {
            names.feed(line);
            counter.feed(line);
        }
        tail.push(line.to_string());
        if tail.len() > TAIL_LINES {
            tail.remove(0);
        }
    };
    let (cmd, input) = match feed {
        Some(f) => (
            vec![
                "sh".into(),
                "-c".into(),
                UNPACK_THEN_RUN.into(),
                "sh".into(),
                f.marker.to_string(),
                check.command.clone(),
            ],
            Some(f.body),
        ),
        None => (vec!["sh".into(), "-c".into(), check.command.clone()], None),
    };
    let exec = engine.exec_fed(id, cmd, "/work", input, |chunk| {
        let _ = log.write_all(chunk);
        partial.push_str(&String::from_utf8_lossy(chunk));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            line_done(line.trim_end(), &mut tail);
        }
        // A runaway line without a newline must not grow without bound.
        if partial.len() > 64 * 1024 {
            let line = std::mem::take(&mut partial);
            line_done(line.trim_end(), &mut tail);
        }
    });
    let code = match tokio::time::timeout(settings.timeout(), exec).await {
        Ok(code) => Some(code?),
        Err(_) => None,
    };
    if !partial.is_empty() {
        let line = std::mem::take(&mut partial);
        line_done(line.trim_end(), &mut tail);
    }
    let timed_out = code.is_none();
    let oom_killed = match code {
        None => {
            engine.kill(id).await?;
            let _ = writeln!(
                log,
                "# stopped after {}s: the container was killed",
                settings.timeout_secs
            );
            false
        }
        Some(0) => false,
        // 137: killed by SIGKILL, as the OOM killer does; its event may trail the exit a little.
        Some(137) => {
            if let Some(before) = kills_before {
                engine.oom_kills(id).await?.is_some_and(|n| n > before)
            } else {
                oom.grows_beyond(ooms_before, Duration::from_secs(3)).await
                    || engine.oom_killed(id).await?
            }
        }
        Some(_) => oom.count() > ooms_before || engine.oom_killed(id).await?,
    };
    if oom_killed {
        let _ = writeln!(log, "# killed for running out of memory");
    }
    let unpacked = !unpack_failed;
    let tests = if is_test { counter.finish() } else { None };
    Ok((
        CheckRun {
            exit_code: code,
            seconds: started.elapsed().as_secs_f64(),
            tail: tail.join("\n"),
            tests,
            failed_tests: names.failed(),
            names_known: !names.is_empty(),
            timed_out,
            oom_killed,
            is_test,
            names,
        },
        unpacked,
    ))
}

/// Where verification records and baselines live.
pub fn state_paths(common_dir: &Path) -> (PathBuf, PathBuf) {
    let root = common_dir.join("boxdelegate");
    (root.join("verify"), root.join("baselines"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_keys_override_and_disable_profile_checks() {
        let mut profile: Profile = crate::config::parse_toml(
            "description = \"d\"\nimage = \"i\"\n[checks]\ntest = \"pytest\"\nlint = \"ruff\"\n",
            Path::new("p"),
        )
        .unwrap();
        profile.name = "p".into();
        let none = VerifyConfig::default();
        let names: Vec<String> = checks(&profile, &none)
            .into_iter()
            .map(|c| c.command)
            .collect();
        assert_eq!(names, ["pytest", "ruff"]);
        let over = VerifyConfig {
            test: Some("make test".into()),
            lint: Some("".into()),
            ..Default::default()
        };
        let names: Vec<String> = checks(&profile, &over)
            .into_iter()
            .map(|c| c.command)
            .collect();
        assert_eq!(names, ["make test"]);
    }

    fn run(code: i64, failed: &[&str], passed: &[&str]) -> CheckRun {
        let mut names = names::Names::default();
        for f in failed {
            names.feed(&format!("not ok 1 - {f}"));
        }
        for p in passed {
            names.feed(&format!("ok 1 - {p}"));
        }
        CheckRun {
            exit_code: Some(code),
            failed_tests: names.failed(),
            names_known: !names.is_empty(),
            tests: Some(Counts {
                runner: "tap".into(),
                total: (failed.len() + passed.len()) as u64,
            }),
            names,
            is_test: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_suite_that_runs_no_test_on_either_side_is_not_a_pre_existing_failure() {
        let collapsed = run(3, &[], &[]);
        let (outcome, _, note) = classify(&collapsed, Some(&collapsed), false);
        assert_eq!(outcome, Outcome::NoTests);
        assert!(note.unwrap().contains("verifies nothing"));
        // Failing the same way with tests run on both sides, but no failing test named: only
        // the exit code compares them, which is inconclusive unless the project trusts it.
        let failing = run(1, &[], &["a"]);
        assert_eq!(
            classify(&failing, Some(&failing), false).0,
            Outcome::Inconclusive
        );
        assert_eq!(
            classify(&failing, Some(&failing), true).0,
            Outcome::PreExisting
        );
    }

    #[test]
    fn a_lint_that_did_not_run_is_skipped_with_why_never_passed() {
        let lint = |code: i64, tail: &str| CheckRun {
            exit_code: Some(code),
            tail: tail.into(),
            ..Default::default()
        };
        let skipped = lint(
            SKIP_EXIT,
            "x\nlint skipped: ruff is not among the dependencies\n",
        );
        let (o, _, note) = classify(&skipped, None, false);
        assert_eq!(o, Outcome::Skipped);
        assert!(o.lets_land());
        assert_eq!(
            note.as_deref(),
            Some("lint skipped: ruff is not among the dependencies")
        );
        // Skipped on the base too: still skipped, nothing to compare.
        assert_eq!(
            classify(&skipped, Some(&skipped), false).0,
            Outcome::Skipped
        );
        // Ran on the base, skipped with the change: the change took the linter away.
        let (o, _, note) = classify(&skipped, Some(&lint(0, "")), false);
        assert_eq!(o, Outcome::Fail, "{note:?}");
        // Passing now after a skipped base is a pass, not a fix; a lint's pass carries no
        // note about test runners.
        assert_eq!(
            classify(&lint(0, ""), Some(&skipped), false),
            (Outcome::Pass, Lists::default(), None)
        );
        // The test check has no skip code: 77 is a failure there.
        let tests = CheckRun {
            is_test: true,
            ..lint(SKIP_EXIT, "skipped")
        };
        assert_eq!(classify(&tests, None, false).0, Outcome::Fail);
        // A test runner nobody recognises: exit 0 is no evidence that a test ran, unless the
        // project says to trust the exit code, and then the report says so.
        let plain_test = CheckRun {
            is_test: true,
            ..lint(0, "")
        };
        assert_eq!(classify(&plain_test, None, false).0, Outcome::Inconclusive);
        let (o, _, note) = classify(&plain_test, None, true);
        assert_eq!(o, Outcome::Pass);
        assert!(note.is_some_and(|n| n.contains("not recognised") && n.contains("trust_exit_code")));
    }

    #[test]
    fn classification_against_the_baseline() {
        let ok = run(0, &[], &["a", "b"]);
        let broke_a = run(1, &["a"], &["b"]);
        let broke_b = run(1, &["b"], &["a"]);
        let broke_ab = run(1, &["a", "b"], &[]);
        // No baseline: a failure is a failure.
        assert_eq!(classify(&broke_a, None, false).0, Outcome::Fail);
        // Regression: passed before.
        let (o, l, _) = classify(&broke_a, Some(&ok), false);
        assert_eq!((o, l.regressions), (Outcome::Fail, vec!["a".to_string()]));
        // The same failure before: pre-existing.
        let (o, l, _) = classify(&broke_a, Some(&broke_a), false);
        assert_eq!(
            (o, l.pre_existing),
            (Outcome::PreExisting, vec!["a".to_string()])
        );
        // A new failure next to an old one: a regression, named.
        let (o, l, _) = classify(&broke_ab, Some(&broke_a), false);
        assert_eq!(o, Outcome::Fail);
        assert_eq!(l.regressions, ["b"]);
        assert_eq!(l.pre_existing, ["a"]);
        // One fixed, another broken.
        let (o, l, _) = classify(&broke_b, Some(&broke_a), false);
        assert_eq!(
            (o, l.fixed, l.regressions),
            (Outcome::Fail, vec!["a".to_string()], vec!["b".to_string()])
        );
        // Fixed.
        let (o, l, _) = classify(&ok, Some(&broke_a), false);
        assert_eq!((o, l.fixed), (Outcome::Fixed, vec!["a".to_string()]));
        // Passing on both.
        assert_eq!(classify(&ok, Some(&ok), false).0, Outcome::Pass);
    }

    #[test]
    fn classification_without_names_and_infrastructure() {
        let plain = |code| CheckRun {
            exit_code: Some(code),
            ..Default::default()
        };
        assert_eq!(
            classify(&plain(2), Some(&plain(2)), false).0,
            Outcome::PreExisting
        );
        assert_eq!(classify(&plain(1), Some(&plain(2)), false).0, Outcome::Fail);
        // A failure without names (e.g. it no longer compiles) next to a named failure before.
        assert_eq!(
            classify(&plain(101), Some(&run(1, &["a"], &[])), false).0,
            Outcome::Fail
        );
        let timeout = CheckRun {
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(
            classify(&timeout, Some(&plain(0)), false).0,
            Outcome::Timeout
        );
        let oom = CheckRun {
            exit_code: Some(137),
            oom_killed: true,
            ..Default::default()
        };
        assert_eq!(classify(&oom, None, false).0, Outcome::InfraError);
        // A baseline that timed out says nothing.
        assert_eq!(classify(&plain(1), Some(&timeout), false).0, Outcome::Fail);
        let zero = CheckRun {
            exit_code: Some(0),
            tests: Some(Counts {
                runner: "pytest".into(),
                total: 0,
            }),
            ..Default::default()
        };
        assert_eq!(classify(&zero, Some(&zero), false).0, Outcome::NoTests);
    }

    #[test]
    fn a_test_check_without_names_failing_on_both_sides_is_inconclusive_unless_trusted() {
        let plain = |code| CheckRun {
            exit_code: Some(code),
            is_test: true,
            tests: Some(Counts {
                runner: "pytest".into(),
                total: 3,
            }),
            ..Default::default()
        };
        let (o, _, note) = classify(&plain(1), Some(&plain(1)), false);
        assert_eq!(o, Outcome::Inconclusive);
        assert!(!o.lets_land());
        assert!(note.unwrap().contains("trust_exit_code"));
        assert_eq!(
            classify(&plain(1), Some(&plain(1)), true).0,
            Outcome::PreExisting
        );
    }

    #[test]
    fn a_command_that_cannot_start_is_never_pre_existing() {
        let failed = |code, tail: &str| CheckRun {
            exit_code: Some(code),
            tail: tail.into(),
            is_test: true,
            ..Default::default()
        };
        for missing in [
            failed(127, "sh: 1: tox: not found"),
            failed(126, "sh: 1: ./run-tests: Permission denied"),
            failed(1, "/deps/.venv/bin/python: No module named pytest"),
            failed(101, "error: no such command: `nextest`"),
            failed(1, "npm error Missing script: \"test\""),
        ] {
            let (o, _, note) = classify(&missing, Some(&missing), true);
            assert_eq!(o, Outcome::NotStarted, "{}", missing.tail);
            assert!(note.unwrap().contains("could not start"));
            assert!(!o.lets_land());
        }
        // The code's own import error is a failure of the code, not of the command.
        let import = failed(2, "E   ModuleNotFoundError: No module named 'requests'");
        assert_eq!(import.not_started(), None);
        // Started on the base, not with the change: the change's fault.
        let ok = CheckRun {
            tests: Some(Counts {
                runner: "pytest".into(),
                total: 1,
            }),
            ..failed(0, "1 passed in 0.01s")
        };
        assert_eq!(
            classify(&failed(127, "x: not found"), Some(&ok), false).0,
            Outcome::Fail
        );
    }

    #[test]
    fn baseline_key_changes_with_every_input() {
        let s = Settings {
            timeout_secs: 60,
            reruns: 0,
            baseline: true,
            trust_exit_code: false,
        };
        let c = |cmd: &str| {
            vec![Check {
                name: "test".into(),
                command: cmd.into(),
            }]
        };
        let k = baseline_key("d", "t", &c("x"), &s);
        assert_eq!(k, baseline_key("d", "t", &c("x"), &s));
        assert_ne!(k, baseline_key("e", "t", &c("x"), &s));
        assert_ne!(k, baseline_key("d", "u", &c("x"), &s));
        assert_ne!(k, baseline_key("d", "t", &c("y"), &s));
        // Re-runs do not change what the baseline is.
        let r = Settings {
            reruns: 3,
            ..s.clone()
        };
        assert_eq!(k, baseline_key("d", "t", &c("x"), &r));
    }
}
