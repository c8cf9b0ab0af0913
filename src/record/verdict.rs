//! The verdict of a verification: each check's outcome, the expectations, the baseline.
//!
//! May not: decide a verdict (verify does) or hold logic beyond pure accessors.

/// The tests a runner reported, summed over its summary lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub runner: String,
    pub total: u64,
}

/// What a check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Passed, and passed (or was not run) on the base too.
    Pass,
    /// Passes now; failed on the base.
    Fixed,
    /// Fails now, with only the failures it already had on the base.
    PreExisting,
    /// Failed, then passed when run again.
    Flaky,
    /// A lint or typecheck that did not run (it exited 77, the "skipped" code), with why: says
    /// nothing about the change either way.
    Skipped,
    /// Fails because of the change.
    Fail,
    /// The command could not start (not found, not executable, no such module or subcommand)
    /// on the base and the change alike: a configuration error, never a pass.
    NotStarted,
    /// Failed on the base and on the change, and the runner named no tests: nothing tells a
    /// regression from the old failure, so it is not a pass (unless the project opts in with
    /// `[verify] trust_exit_code = true`). Also a test check whose output showed neither a
    /// count nor a test name.
    Inconclusive,
    /// The test command ran zero tests: not a pass.
    NoTests,
    /// Outlived its limit; the container was killed.
    Timeout,
    /// Killed by the infrastructure (out of memory) or stopped by an engine error.
    InfraError,
}

impl Outcome {
    /// Whether a check with this outcome lets the change land.
    pub fn lets_land(self) -> bool {
        matches!(
            self,
            Outcome::Pass
                | Outcome::Fixed
                | Outcome::PreExisting
                | Outcome::Flaky
                | Outcome::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fixed => "fixed",
            Outcome::PreExisting => "pre-existing",
            Outcome::Flaky => "flaky",
            Outcome::Skipped => "skipped",
            Outcome::Fail => "fail",
            Outcome::NoTests => "no-tests",
            Outcome::NotStarted => "not-started",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Timeout => "timeout",
            Outcome::InfraError => "infra-error",
        }
    }
}

/// A check's result on the base, as far as the verdict uses it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineCheck {
    pub exit_code: Option<i64>,
    pub passed: bool,
    pub failed_tests: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub command: String,
    pub outcome: Outcome,
    /// Whether this check lets the change land.
    pub passed: bool,
    pub exit_code: Option<i64>,
    pub seconds: f64,
    pub tail: String,
    pub tests: Option<Counts>,
    pub failed_tests: Vec<String>,
    /// Tests that fail now and did not fail on the base.
    pub regressions: Vec<String>,
    /// Tests that fail now and failed on the base too.
    pub pre_existing: Vec<String>,
    /// Tests that failed on the base and pass now.
    pub fixed: Vec<String>,
    /// Tests that failed, then passed on a re-run.
    pub flaky: Vec<String>,
    /// How many times the check was run again after failing.
    pub reruns: u32,
    pub baseline: Option<BaselineCheck>,
    /// Why the outcome is what it is, when the exit code alone does not say it.
    pub note: Option<String>,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Pass,
    Fail,
    /// No check failed because of the change, but the evidence that it passes is missing (see
    /// [`Outcome::Inconclusive`], an expected test that could not be checked).
    Inconclusive,
    /// A check could not start in the verify image: the project's configuration, not the change.
    ConfigError,
    Timeout,
    InfraError,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pass => "pass",
            Kind::Fail => "fail",
            Kind::Inconclusive => "inconclusive",
            Kind::ConfigError => "config-error",
            Kind::Timeout => "timeout",
            Kind::InfraError => "infra-error",
        }
    }

    pub fn exit_code(self) -> i32 {
        use crate::error::exit;
        match self {
            Kind::Pass => exit::OK,
            Kind::Fail | Kind::Inconclusive => exit::VERIFY_FAILED,
            Kind::ConfigError => exit::CONFIG,
            Kind::Timeout => exit::TIMEOUT,
            Kind::InfraError => exit::INFRA,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectationStatus {
    Passed,
    Failed,
    /// The runner reports names, and none matched.
    NotRun,
    /// The runner reports no names: the expectation could not be checked.
    Unchecked,
}

/// A test the unit expects to pass afterwards.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Expectation {
    pub test: String,
    pub status: ExpectationStatus,
    /// The reported test name that matched.
    pub matched: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineInfo {
    pub tree: String,
    pub key: String,
    /// True when the baseline came from the cache.
    pub cached: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub verdict: Kind,
    /// Whether the change may land.
    pub passed: bool,
    /// The tree the checks ran on (the change, with protected paths restored).
    pub tree: String,
    /// Protected paths the change touched, restored from the base before the checks.
    pub restored: Vec<String>,
    pub checks: Vec<CheckResult>,
    pub expectations: Vec<Expectation>,
    pub baseline: Option<BaselineInfo>,
    /// One line: the verdict and what decided it.
    pub summary: String,
}

impl Verdict {
    /// What a person reads: the summary, then for each failing check its failing tests and the
    /// tail of its log.
    pub fn explain(&self) -> String {
        let mut out = self.summary.clone();
        for c in self.checks.iter().filter(|c| !c.passed) {
            out.push_str(&format!(
                "\n--- {} ({}): last lines of its output:\n{}",
                c.name,
                c.outcome.as_str(),
                c.tail
            ));
        }
        out
    }
}

#[cfg(test)]
mod verdicts_doc {
    //! docs/verdicts.md against the code: every outcome, verdict and status, with whether it
    //! lands and its exit code, and nothing the code does not have.

    use super::{Kind, Outcome};
    use crate::record::Status;
    use std::collections::BTreeMap;

    const DOC: &str = include_str!("../../docs/verdicts.md");

    /// The rows of the table under `heading`: first cell (without backticks) → second cell.
    fn table(heading: &str) -> BTreeMap<String, String> {
        let section = DOC
            .split(&format!("## {heading}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("docs/verdicts.md has no section {heading:?}"));
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[1].to_string())
            })
            .collect()
    }

    // Exhaustive matches: a new variant does not compile until it is listed here (and so in
    // the page).
    fn outcomes() -> Vec<Outcome> {
        let all = [
            Outcome::Pass,
            Outcome::Fixed,
            Outcome::PreExisting,
            Outcome::Flaky,
            Outcome::Skipped,
            Outcome::Fail,
            Outcome::NoTests,
            Outcome::NotStarted,
            Outcome::Inconclusive,
            Outcome::Timeout,
            Outcome::InfraError,
        ];
        for o in all {
            match o {
                Outcome::Pass
                | Outcome::Fixed
                | Outcome::PreExisting
                | Outcome::Flaky
                | Outcome::Skipped
                | Outcome::Fail
                | Outcome::NoTests
                | Outcome::NotStarted
                | Outcome::Inconclusive
                | Outcome::Timeout
                | Outcome::InfraError => {}
            }
        }
        all.to_vec()
    }

    fn kinds() -> Vec<Kind> {
        let all = [
            Kind::Pass,
            Kind::Fail,
            Kind::Inconclusive,
            Kind::ConfigError,
            Kind::Timeout,
            Kind::InfraError,
        ];
        for k in all {
            match k {
                Kind::Pass
                | Kind::Fail
                | Kind::Inconclusive
                | Kind::ConfigError
                | Kind::Timeout
                | Kind::InfraError => {}
            }
        }
        all.to_vec()
    }

    fn statuses() -> Vec<Status> {
        let all = [
            Status::Landed,
            Status::AlreadyLanded,
            Status::Rejected,
            Status::Conflict,
            Status::Timeout,
            Status::AgentFailed,
            Status::NoChange,
            Status::VerifyFailed,
            Status::ConfigError,
            Status::InfraError,
            Status::Failed,
            Status::Skipped,
            Status::OverBudget,
        ];
        for s in all {
            match s {
                Status::Landed
                | Status::AlreadyLanded
                | Status::Rejected
                | Status::Conflict
                | Status::Timeout
                | Status::AgentFailed
                | Status::NoChange
                | Status::VerifyFailed
                | Status::ConfigError
                | Status::InfraError
                | Status::Failed
                | Status::Skipped
                | Status::OverBudget => {}
            }
        }
        all.to_vec()
    }

    #[test]
    fn every_outcome_is_documented_with_whether_it_lands() {
        let doc = table("A check's outcome");
        let code: BTreeMap<String, String> = outcomes()
            .into_iter()
            .map(|o| {
                let lands = if o.lets_land() { "yes" } else { "no" };
                (o.as_str().to_string(), lands.to_string())
            })
            .collect();
        assert_eq!(doc, code);
    }

    #[test]
    fn every_verdict_is_documented_with_its_exit_code() {
        let doc = table("The verdict");
        let code: BTreeMap<String, String> = kinds()
            .into_iter()
            .map(|k| (k.as_str().to_string(), k.exit_code().to_string()))
            .collect();
        assert_eq!(doc, code);
    }

    #[test]
    fn every_unit_status_is_documented_with_its_exit_code() {
        let doc = table("A unit's status");
        let code: BTreeMap<String, String> = statuses()
            .into_iter()
            .map(|s| (crate::output::label(s), s.exit_code().to_string()))
            .collect();
        assert_eq!(doc, code);
    }
}
