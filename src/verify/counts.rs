//! How many tests a check ran, read from the summary lines of common test runners, so that a
//! check that ran zero tests is not taken for a pass. Runners not recognised here are judged by
//! their exit code alone, and the report says so.
//!
//! May not: decide a verdict alone: the exit code comes first.

use std::sync::LazyLock;

use regex::Regex;

use crate::record::Counts;

struct Rule {
    runner: &'static str,
    re: Regex,
    /// Sums the numbers a match carries into the total.
    total: fn(&regex::Captures) -> u64,
}

fn num(c: &regex::Captures, name: &str) -> u64 {
    c.name(name)
        .and_then(|m| m.as_str().parse().ok())
        .unwrap_or(0)
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let r = |p: &str| Regex::new(p).expect("valid regex");
    vec![
        // nextest: "Summary [   0.2s] 10 tests run: 10 passed, 0 skipped"
        Rule {
            runner: "cargo-nextest",
            re: r(r"Summary \[[^\]]*\]\s+(?P<n>\d+) tests? run"),
            total: |c| num(c, "n"),
        },
        // cargo test: "test result: ok. 3 passed; 1 failed; 0 ignored; ..."
        Rule {
            runner: "cargo-test",
            re: r(r"test result: \w+\. (?P<p>\d+) passed; (?P<f>\d+) failed"),
            total: |c| num(c, "p") + num(c, "f"),
        },
        // jest: "Tests:       1 failed, 2 passed, 3 total"
        Rule {
            runner: "jest",
            re: r(r"^Tests:\s+.*?(?P<n>\d+) total"),
            total: |c| num(c, "n"),
        },
        // vitest: "      Tests  2 passed (2)" / "Tests  1 failed | 1 passed (2)"
        Rule {
            runner: "vitest",
            re: r(r"^\s*Tests\s+.*\((?P<n>\d+)\)\s*$"),
            total: |c| num(c, "n"),
        },
        // node --test: "# tests 3" (TAP) / "ℹ tests 3" (spec)
        Rule {
            runner: "node-test",
            re: r(r"^(?:#|ℹ) tests (?P<n>\d+)\s*$"),
            total: |c| num(c, "n"),
        },
        // go test: "ok  	example.com/pkg	0.01s" (a package with tests) and its no-test variants
        Rule {
            runner: "go-test",
            // go separates the package and the time with tabs, which TAP's "ok 1 - name" lacks.
            re: r(r"^(?:ok|FAIL|\?)\s+\S+\t(?P<rest>.*)$"),
            total: |c| {
                let rest = c.name("rest").map(|m| m.as_str()).unwrap_or_default();
                u64::from(!(rest.contains("[no test files]") || rest.contains("[no tests to run]")))
            },
        },
        // pytest: "3 passed, 1 failed in 0.12s", "no tests ran in 0.01s"
        Rule {
            runner: "pytest",
            re: r(r"^=*\s*(?P<body>(?:\d+ \w+(?:, )?)+) in [\d.]+s\b|^=*\s*no tests ran\b"),
            total: |c| {
                let body = c.name("body").map(|m| m.as_str()).unwrap_or_default();
                body.split(", ")
                    .filter_map(|part| {
                        let (n, what) = part.split_once(' ')?;
                        matches!(
                            what,
                            "passed" | "failed" | "error" | "errors" | "xfailed" | "xpassed"
                        )
                        .then(|| n.parse::<u64>().ok())
                        .flatten()
                    })
                    .sum()
            },
        },
        // unittest: "Ran 3 tests in 0.002s" (and "Ran 0 tests in 0.000s", then "OK" or, from
        // Python 3.12, "NO TESTS RAN").
        Rule {
            runner: "unittest",
            re: r(r"^Ran (?P<n>\d+) tests? in [\d.]+s$"),
            total: |c| num(c, "n"),
        },
        // mocha: "  3 passing (12ms)", "  1 failing" (the failing line follows the passing one).
        Rule {
            runner: "mocha",
            re: r(r"^\s*(?P<n>\d+) (?:passing \(\d+(?:\.\d+)?m?s\)|failing)\s*$"),
            total: |c| num(c, "n"),
        },
        // TAP's plan line, "1..N" (bats, prove, any TAP producer); "1..0" means nothing ran.
        Rule {
            runner: "tap",
            re: r(r"^1\.\.(?P<n>\d+)(?:\s+#.*)?$"),
            total: |c| num(c, "n"),
        },
        // The plain line any runner may print: "N passed, N failed" (", N skipped" may follow).
        Rule {
            runner: "plain",
            re: r(r"^(?:\w+:\s*)?(?P<p>\d+) passed, (?P<f>\d+) failed(?:, \d+ skipped)?\s*$"),
            total: |c| num(c, "p") + num(c, "f"),
        },
    ]
});

/// The tests counted in `output`, by the first runner whose summary lines appear in it.
#[cfg(test)]
pub fn count(output: &str) -> Option<Counts> {
    let mut counter = Counter::default();
    for line in output.lines() {
        counter.feed(line);
    }
    counter.finish()
}

/// Counts tests line by line, so output of any length is read once and never kept.
#[derive(Debug, Default)]
pub struct Counter {
    /// Per rule: whether its summary line was seen, and the sum of its totals.
    seen: Vec<Option<u64>>,
}

impl Counter {
    pub fn feed(&mut self, line: &str) {
        if self.seen.is_empty() {
            self.seen = vec![None; RULES.len()];
        }
        let line = line.trim_end();
        for (rule, seen) in RULES.iter().zip(self.seen.iter_mut()) {
            if let Some(c) = rule.re.captures(line) {
                *seen = Some(seen.unwrap_or(0) + (rule.total)(&c));
            }
        }
    }

    /// The first runner (in the order of the rules) whose summary lines were seen.
    pub fn finish(&self) -> Option<Counts> {
        RULES.iter().zip(&self.seen).find_map(|(rule, seen)| {
            seen.map(|total| Counts {
                runner: rule.runner.to_string(),
                total,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(s: &str) -> Option<(String, u64)> {
        count(s).map(|c| (c.runner, c.total))
    }

    #[test]
    fn cargo_and_nextest() {
        let out = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\nrunning 0 tests\ntest result: ok. 0 passed; 0 failed; 0 ignored\n";
        assert_eq!(total(out), Some(("cargo-test".to_string(), 3)));
        assert_eq!(
            total("test result: ok. 0 passed; 0 failed; 0 ignored"),
            Some(("cargo-test".to_string(), 0))
        );
        assert_eq!(
            total("     Summary [   0.2s] 10 tests run: 10 passed, 0 skipped"),
            Some(("cargo-nextest".to_string(), 10))
        );
        assert_eq!(
            total("     Summary [   0.0s] 0 tests run: 0 passed, 0 skipped"),
            Some(("cargo-nextest".to_string(), 0))
        );
    }

    #[test]
    fn pytest() {
        assert_eq!(
            total("...\n3 passed in 0.03s"),
            Some(("pytest".to_string(), 3))
        );
        assert_eq!(
            total("===== 1 failed, 2 passed, 1 warning in 0.12s ====="),
            Some(("pytest".to_string(), 3))
        );
        assert_eq!(
            total("no tests ran in 0.01s"),
            Some(("pytest".to_string(), 0))
        );
        assert_eq!(
            total("===== 2 skipped in 0.01s ====="),
            Some(("pytest".to_string(), 0))
        );
    }

    #[test]
    fn unittest() {
        let out = "test_add (t.T.test_add) ... ok\n\n----\nRan 2 tests in 0.001s\n\nOK\n";
        assert_eq!(total(out), Some(("unittest".to_string(), 2)));
        assert_eq!(
            total("\n----\nRan 0 tests in 0.000s\n\nOK\n"),
            Some(("unittest".to_string(), 0))
        );
    }

    #[test]
    fn mocha() {
        let out = "  calc\n    ✓ adds\n\n  2 passing (5ms)\n  1 failing\n\n  1) calc\n";
        assert_eq!(total(out), Some(("mocha".to_string(), 3)));
        assert_eq!(
            total("\n  0 passing (1ms)\n"),
            Some(("mocha".to_string(), 0))
        );
    }

    #[test]
    fn go_test() {
        assert_eq!(
            total("ok  \texample.com/a\t0.002s\n?   \texample.com/b\t[no test files]\n"),
            Some(("go-test".to_string(), 1))
        );
        assert_eq!(total("?   \texample.com/b\t[no test files]\nok  \texample.com/a\t0.002s [no tests to run]\n"), Some(("go-test".to_string(), 0)));
    }

    #[test]
    fn javascript_runners() {
        assert_eq!(
            total("Tests:       1 failed, 2 passed, 3 total"),
            Some(("jest".to_string(), 3))
        );
        assert_eq!(total("Tests:       0 total"), Some(("jest".to_string(), 0)));
        assert_eq!(
            total("      Tests  2 passed (2)"),
            Some(("vitest".to_string(), 2))
        );
        assert_eq!(
            total("# tests 4\n# pass 4\n# fail 0"),
            Some(("node-test".to_string(), 4))
        );
        assert_eq!(total("ℹ tests 0"), Some(("node-test".to_string(), 0)));
    }

    #[test]
    fn plain_line_and_unknown_output() {
        assert_eq!(
            total("results: 5 passed, 0 failed, 1 skipped"),
            Some(("plain".to_string(), 5))
        );
        assert_eq!(
            total("1..3\nok 1 - a\nok 2 - b\nnot ok 3 - c"),
            Some(("tap".to_string(), 3))
        );
        assert_eq!(
            total("1..0 # SKIP nothing to do"),
            Some(("tap".to_string(), 0))
        );
        assert_eq!(total("all good"), None);
        assert_eq!(total(""), None);
    }
}
