//! JUnit XML of a verdict, for CI systems that display test reports: one suite per check, one
//! case for the check itself and one per test the verdict names.
//!
//! May not: say anything the verdict does not hold.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::error::{Error, Result};
use crate::record::{CheckResult, Outcome, Verdict};

fn failure(message: String, description: &str) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
    s.set_message(message);
    s.set_description(description);
    s
}

fn suite(check: &CheckResult) -> TestSuite {
    let mut suite = TestSuite::new(format!("boxdelegate verify: {}", check.name));
    suite.set_time(Duration::from_secs_f64(check.seconds.max(0.0)));
    let status = if check.outcome == Outcome::Skipped {
        let mut s = TestCaseStatus::skipped();
        s.set_message(format!(
            "skipped: {}",
            check.note.as_deref().unwrap_or("the check did not run")
        ));
        s
    } else if check.passed {
        TestCaseStatus::success()
    } else {
        failure(
            format!(
                "{}: {}{}",
                check.outcome.as_str(),
                check.command,
                check
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            &check.tail,
        )
    };
    let mut case = TestCase::new(check.name.clone(), status);
    case.set_classname("boxdelegate.check")
        .set_time(Duration::from_secs_f64(check.seconds.max(0.0)));
    if check.passed {
        case.set_system_out(check.tail.clone());
    }
    suite.add_test_case(case);
    let named = [
        (&check.regressions, "regression", false),
        (&check.pre_existing, "pre-existing", true),
        (&check.fixed, "fixed", true),
        (&check.flaky, "flaky", true),
    ];
    for (tests, what, ok) in named {
        for t in tests {
            let status = if ok {
                TestCaseStatus::success()
            } else {
                failure(format!("{what}: fails with the change"), &check.tail)
            };
            let mut case = TestCase::new(t.clone(), status);
            case.set_classname(format!("boxdelegate.{}.{what}", check.name));
            suite.add_test_case(case);
        }
    }
    // A failing check whose failures were not compared with a baseline still names its tests.
    if check.outcome == Outcome::Fail && check.regressions.is_empty() {
        for t in &check.failed_tests {
            let mut case = TestCase::new(t.clone(), failure("failed".into(), &check.tail));
            case.set_classname(format!("boxdelegate.{}", check.name));
            suite.add_test_case(case);
        }
    }
    suite
}

/// The verdict as JUnit XML.
pub fn render(verdict: &Verdict) -> Result<String> {
    let mut report = Report::new("boxdelegate verify");
    for c in &verdict.checks {
        report.add_test_suite(suite(c));
    }
    if !verdict.expectations.is_empty() {
        let mut suite = TestSuite::new("boxdelegate verify: expected tests");
        for e in &verdict.expectations {
            let status = match e.status {
                super::ExpectationStatus::Passed => TestCaseStatus::success(),
                super::ExpectationStatus::Unchecked => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message("the runner reports no test names");
                    s
                }
                super::ExpectationStatus::Failed => failure("failed".into(), ""),
                super::ExpectationStatus::NotRun => failure("was not run".into(), ""),
            };
            suite.add_test_case(TestCase::new(e.test.clone(), status));
        }
        report.add_test_suite(suite);
    }
    if verdict.checks.is_empty() {
        // An infrastructure verdict has no checks; say why in one failing case.
        let mut suite = TestSuite::new("boxdelegate verify");
        let status = if verdict.passed {
            TestCaseStatus::success()
        } else {
            failure(verdict.summary.clone(), "")
        };
        suite.add_test_case(TestCase::new("verdict", status));
        report.add_test_suite(suite);
    }
    report
        .to_string()
        .map_err(|e| Error::Internal(format!("writing JUnit XML: {e}")))
}
