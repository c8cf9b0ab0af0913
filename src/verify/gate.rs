//! The landing gate's key: [`Verified`], the one value that lets a tree land. Only this module
//! makes it, and only from a verdict that passed on that exact tree with the checks in force, so
//! no path that moves a branch (`run`, `apply`, `resume`, a merged tree, `--rerun`) can land
//! without it: `land` takes it and refuses a tree it does not cover.
//!
//! May not: run a check, call the engine, or accept a verdict that is not a pass of that tree
//! with those checks.

use super::Check;
use crate::record::{Kind, Verdict};

/// A tree that passed verification with the checks in force (or a project that configures no
/// checks, said so). Its fields are private: outside this module it is read, never made.
#[derive(Debug, Clone)]
pub struct Verified {
    tree: String,
    /// One line for the commit's trailer: the verdict and what decided it.
    verdict: String,
    /// The sha256 of the verification record the verdict came with, for the commit's
    /// `Boxdelegate-Record` trailer (none when no check ran).
    record: Option<String>,
}

/// Why a verdict does not let its tree land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Verified {
    /// The key for `tree` from `verdict`: only a `pass` of that very tree, whose checks are the
    /// ones in force now (names and commands, in order), each of which lets the change land.
    pub fn from_verdict(verdict: &Verdict, tree: &str, checks: &[Check]) -> Result<Self, Refused> {
        if verdict.verdict != Kind::Pass || !verdict.passed {
            return Err(Refused(format!(
                "its verification says {} ({})",
                verdict.verdict.as_str(),
                verdict.summary
            )));
        }
        if verdict.tree != tree {
            return Err(Refused(format!(
                "its verification is of tree {}, not of the tree that would land ({tree})",
                verdict.tree
            )));
        }
        let ran: Vec<(&str, &str)> = verdict
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.command.as_str()))
            .collect();
        let in_force: Vec<(&str, &str)> = checks
            .iter()
            .map(|c| (c.name.as_str(), c.command.as_str()))
            .collect();
        if ran != in_force {
            return Err(Refused(format!(
                "its verification ran other checks ({}) than those in force now ({})",
                list(&ran),
                list(&in_force)
            )));
        }
        if let Some(c) = verdict.checks.iter().find(|c| !c.outcome.lets_land()) {
            return Err(Refused(format!(
                "its check {} is {}",
                c.name,
                c.outcome.as_str()
            )));
        }
        if checks.is_empty() {
            return Err(Refused("no checks ran".into()));
        }
        Ok(Verified {
            tree: tree.to_string(),
            verdict: one_line(&verdict.summary),
            record: None,
        })
    }

    /// The key for a project that configures no checks at all: the tree lands unverified, and
    /// its commit says so. Refused when any check is in force.
    pub fn without_checks(tree: &str, checks: &[Check]) -> Result<Self, Refused> {
        if !checks.is_empty() {
            return Err(Refused(format!(
                "checks are in force ({}) and none ran",
                list(
                    &checks
                        .iter()
                        .map(|c| (c.name.as_str(), c.command.as_str()))
                        .collect::<Vec<_>>()
                )
            )));
        }
        Ok(Verified {
            tree: tree.to_string(),
            verdict: "none: the project configures no checks".into(),
            record: None,
        })
    }

    /// The key for the tree a moved branch merges into, under `[verify] merged = "trust"`: the
    /// project's explicit choice to land a merge on the strength of the unit's own verdict.
    /// The trailer says so.
    pub fn trusting_merge(&self, merged_tree: &str) -> Verified {
        Verified {
            tree: merged_tree.to_string(),
            verdict: format!(
                "{} (of the unit's own tree {}; the merged tree is trusted, [verify] merged = \"trust\")",
                self.verdict, self.tree
            ),
            record: self.record.clone(),
        }
    }

    /// The key with the sha256 of the verification record its verdict was written to. A key
    /// without checks names none.
    pub fn recorded(mut self, record: Option<&str>) -> Verified {
        if self.verdict.starts_with("none:") {
            return self;
        }
        self.record = record
            .filter(|r| r.len() == 64 && r.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_string);
        self
    }

    /// The sha256 of the verification record, for the `Boxdelegate-Record` trailer.
    pub fn record(&self) -> Option<&str> {
        self.record.as_deref()
    }

    pub fn tree(&self) -> &str {
        &self.tree
    }

    /// The value of the commit's `Boxdelegate-Verified` trailer.
    pub fn trailer(&self) -> String {
        format!("{} {}", self.tree, self.verdict)
    }
}

fn list(checks: &[(&str, &str)]) -> String {
    if checks.is_empty() {
        return "none".into();
    }
    checks
        .iter()
        .map(|(n, c)| format!("{n}: {c}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A trailer value must be one line.
fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CheckResult, Outcome};

    fn check(name: &str, command: &str) -> Check {
        Check {
            name: name.into(),
            command: command.into(),
        }
    }

    fn verdict(kind: Kind, tree: &str, outcome: Outcome) -> Verdict {
        Verdict {
            verdict: kind,
            passed: kind == Kind::Pass,
            tree: tree.into(),
            restored: vec![],
            checks: vec![CheckResult {
                name: "test".into(),
                command: "make test".into(),
                outcome,
                passed: outcome.lets_land(),
                exit_code: Some(0),
                seconds: 0.0,
                tail: String::new(),
                tests: None,
                failed_tests: vec![],
                regressions: vec![],
                pre_existing: vec![],
                fixed: vec![],
                flaky: vec![],
                reruns: 0,
                baseline: None,
                note: None,
            }],
            expectations: vec![],
            baseline: None,
            summary: "pass: test pass\n(3 tests)".into(),
        }
    }

    #[test]
    fn only_a_pass_of_that_tree_with_the_checks_in_force_opens_the_gate() {
        let checks = [check("test", "make test")];
        let ok = verdict(Kind::Pass, "t1", Outcome::Pass);
        let v = Verified::from_verdict(&ok, "t1", &checks).unwrap();
        assert_eq!(v.tree(), "t1");
        assert_eq!(v.trailer(), "t1 pass: test pass (3 tests)");
        // Another tree.
        assert!(Verified::from_verdict(&ok, "t2", &checks)
            .unwrap_err()
            .0
            .contains("not of the tree"));
        // Other checks in force now.
        assert!(
            Verified::from_verdict(&ok, "t1", &[check("test", "make check")])
                .unwrap_err()
                .0
                .contains("other checks")
        );
        // Not a pass.
        for kind in [
            Kind::Fail,
            Kind::Inconclusive,
            Kind::ConfigError,
            Kind::Timeout,
            Kind::InfraError,
        ] {
            let v = verdict(kind, "t1", Outcome::Pass);
            assert!(
                Verified::from_verdict(&v, "t1", &checks).is_err(),
                "{kind:?}"
            );
        }
        // A pass whose check did not let it land (a hand-edited record).
        let forged = verdict(Kind::Pass, "t1", Outcome::Inconclusive);
        assert!(Verified::from_verdict(&forged, "t1", &checks).is_err());
        // No checks: only said so, and only when none are in force.
        assert!(Verified::without_checks("t1", &checks).is_err());
        let none = Verified::without_checks("t1", &[]).unwrap();
        assert!(none.trailer().contains("configures no checks"));
    }

    #[test]
    fn the_key_names_its_record_when_checks_ran() {
        let checks = [check("test", "make test")];
        let ok = verdict(Kind::Pass, "t1", Outcome::Pass);
        let sha = "ab".repeat(32);
        let v = Verified::from_verdict(&ok, "t1", &checks)
            .unwrap()
            .recorded(Some(&sha));
        assert_eq!(v.record(), Some(sha.as_str()));
        // A trusted merge lands on the strength of the unit's own record.
        assert_eq!(v.trusting_merge("t9").record(), Some(sha.as_str()));
        // Not a sha256: no name at all rather than a wrong one.
        let v = Verified::from_verdict(&ok, "t1", &checks)
            .unwrap()
            .recorded(Some("../../etc/passwd"));
        assert_eq!(v.record(), None);
        // Without checks there is nothing to name.
        let none = Verified::without_checks("t1", &[])
            .unwrap()
            .recorded(Some(&sha));
        assert_eq!(none.record(), None);
    }
}
