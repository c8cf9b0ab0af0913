//! Which tests a check ran, by name, and how each ended, read from the per-test lines of common
//! test runners. The verifier uses this to compare the failing tests before and after a change
//! and to confirm that the tests a unit names actually passed.
//!
//! Recognition is line-based and incremental: output is fed one line at a time, so a check's
//! output never has to be held in memory whole. Lines no rule recognises are ignored, and a
//! skipped, ignored or to-do test is neither passed nor failed.
//!
//! May not: decide a verdict alone; hold a check's whole output in memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
}

/// Upper bound of names kept, so a huge suite cannot exhaust memory.
pub const MAX_NAMES: usize = 100_000;

/// The tests recognised so far in a check's output.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The runner whose per-test lines were recognised first ("tap", "cargo-test",
    /// "cargo-nextest", "pytest", "go-test", "jest", "node-test", "mocha").
    pub runner: Option<&'static str>,
    /// Test name → outcome. A test reported both passed and failed counts as failed.
    pub tests: BTreeMap<String, Outcome>,
    /// True when names were dropped because of MAX_NAMES.
    pub truncated: bool,
    /// mocha's failed tests (`  1) name`), held until mocha's own `N failing` line confirms the
    /// lines were its own; the numbered summary after that line repeats them under their
    /// suites and is not read.
    mocha_pending: Vec<String>,
    mocha_closed: bool,
}

/// One test outcome read from a line.
struct Hit {
    name: String,
    outcome: Outcome,
    /// A pass that supersedes an earlier failure of the same test: nextest's retry lines
    /// (`TRY 2 PASS`, `FLAKY 2/3`), where the earlier failure was only an attempt.
    supersedes: bool,
}

impl Hit {
    fn new(name: &str, outcome: Outcome) -> Option<Hit> {
        let name = name.trim();
        (!name.is_empty()).then(|| Hit {
            name: name.to_string(),
            outcome,
            supersedes: false,
        })
    }
}

struct Rule {
    runner: &'static str,
    re: Regex,
    /// Turns a match into a test outcome; `None` for matches that are no outcome (a skip, a
    /// suite or file line that only looks like a test).
    hit: fn(&Captures) -> Option<Hit>,
}

fn group<'h>(c: &Captures<'h>, name: &str) -> &'h str {
    c.name(name).map(|m| m.as_str()).unwrap_or_default()
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

/// Terminal escape sequences (colours, cursor movement): runners forced into colour in CI
/// wrap status words in them, which would otherwise hide the words from the rules.
static ANSI: LazyLock<Regex> = LazyLock::new(|| re(r"\x1b\[[0-9;?]*[ -/]*[@-~]"));

/// A TAP, node or bats directive that makes a test neither pass nor fail.
static SKIP_DIRECTIVE: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)(?:^|\s)#\s*(?:skip|todo)\b"));

/// node-tap's timing comment, `# time=1.2ms`, which is not part of the name.
static TAP_TIME: LazyLock<Regex> = LazyLock::new(|| re(r"\s+#\s*time=\S*$"));

/// A trailing duration: jest's `(3 ms)`, node's `(0.5ms)`, vitest's bare ` 2ms`. The bare form
/// is only taken in milliseconds, the unit vitest prints, so a name ending in "5s" survives.
static DURATION: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:\s*\(\d+(?:\.\d+)?\s*m?s\)|\s+\d+(?:\.\d+)?\s*ms)$"));

/// vitest's per-file lines, `✓ src/a.test.ts (3 tests) 5ms` and the older `✓ src/a.test.ts (3)`,
/// which report a file, not a test.
static VITEST_FILE: LazyLock<Regex> =
    LazyLock::new(|| re(r"\(\d+ tests?(?: \|[^)]*)?\)$|^\S+\.[cm]?[jt]sx? \(\d+\)$"));

/// mocha's spec reporter's failed test: "  1) divides" (indented, numbered; its passes are
/// "✔ name" lines, read by the node-test rule). A line ending in ':' is a summary's test line.
static MOCHA_FAILED: LazyLock<Regex> = LazyLock::new(|| re(r"^\s+\d+\) (?P<name>.*[^:\s])$"));

/// mocha's count of failures, "  2 failing", which ends its test lines.
static MOCHA_FAILING: LazyLock<Regex> = LazyLock::new(|| re(r"^\s*\d+ failing$"));

/// jest `●` headers that announce something other than a failed test.
fn is_jest_notice(name: &str) -> bool {
    name.ends_with(':')
        || name == "Console"
        || name.starts_with("Test suite failed to run")
        || name.starts_with("Cannot log after tests are done")
}

fn pytest_outcome(status: &str) -> Option<Outcome> {
    match status {
        "PASSED" | "XPASS" => Some(Outcome::Passed),
        "FAILED" | "ERROR" => Some(Outcome::Failed),
        // SKIPPED and XFAIL (an expected failure) are neither.
        _ => None,
    }
}

/// A pytest node id: a file (with an extension, which keeps `ERROR crate::module` log lines
/// out), then `::`-separated parts, then perhaps a parameter id in brackets, which may hold
/// spaces.
const PYTEST_ID: &str = r"[^\s\[:]+\.\w+(?:::[^\s\[:]+)+(?:\[.*?\])?";

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // nextest: "        PASS [   0.004s] (  1/100) mycrate::tests some::test_name".
        // The duration must be digits: "SLOW [>  60.000s]" (still running), "SKIP [         ]"
        // and "START [         ]" are no outcome. An optional "[2] " stress index and
        // "(  1/100) " counter precede the binary id, which is kept as part of the name.
        Rule {
            runner: "cargo-nextest",
            re: re(concat!(
                r"^\s*(?P<try>TRY \d+ )?",
                r"(?P<st>PASS|LEAK|TIMEOUT-PASS|TMPASS|SLOW \+ LEAK|SLOW\+TMPASS|SLOW",
                r"|FLAKY \d+/\d+|FLKY-FL \d+/\d+|FAIL \+ LEAK|FAIL|FL\+LK|XFAIL|LEAK-FAIL",
                r"|LKFAIL|TIMEOUT|TMT|ABORT(?: SIG \d+)?|SIG[A-Z0-9]+)",
                r" \[\s*\d+(?:\.\d+)?s\]\s+(?:\[[^\]]*\]\s+)?(?:\([^)]*\)\s+)?(?P<name>\S.*)$",
            )),
            hit: |c| {
                let status = group(c, "st");
                let retried = c.name("try").is_some();
                // LEAK, TIMEOUT-PASS and the SLOW forms are passes that nextest merely
                // flags; a retried pass or FLAKY supersedes the attempts that failed.
                let (outcome, supersedes) = match status {
                    "PASS" => (Outcome::Passed, retried),
                    "LEAK" | "TIMEOUT-PASS" | "TMPASS" | "SLOW" | "SLOW + LEAK" | "SLOW+TMPASS" => {
                        (Outcome::Passed, false)
                    }
                    s if s.starts_with("FLAKY ") => (Outcome::Passed, true),
                    _ => (Outcome::Failed, false),
                };
                let mut hit = Hit::new(group(c, "name"), outcome)?;
                hit.supersedes = supersedes;
                Some(hit)
            },
        },
        // cargo test: "test auth::tests::login ... ok", "... FAILED", "... ignored, slow".
        // Doc tests carry spaces: "test src/lib.rs - parse (line 12) ... ok".
        Rule {
            runner: "cargo-test",
            re: re(r"^test (?P<name>\S.*?) \.\.\. (?P<st>ok|FAILED|ignored(?:, .*)?)$"),
            hit: |c| match group(c, "st") {
                "ok" => Hit::new(group(c, "name"), Outcome::Passed),
                "FAILED" => Hit::new(group(c, "name"), Outcome::Failed),
                _ => None,
            },
        },
        // go test: "--- PASS: TestFoo (0.00s)", subtests indented: "    --- FAIL: TestBar/sub (0.00s)".
        Rule {
            runner: "go-test",
            re: re(r"^\s*--- (?P<st>PASS|FAIL|SKIP): (?P<name>\S+) \(\d+(?:\.\d+)?s\)$"),
            hit: |c| match group(c, "st") {
                "PASS" => Hit::new(group(c, "name"), Outcome::Passed),
                "FAIL" => Hit::new(group(c, "name"), Outcome::Failed),
                _ => None,
            },
        },
        // pytest -v: "tests/test_x.py::test_a PASSED  [ 50%]"; the progress may be a count
        // ("[1/3]") or absent, and pytest 8 adds a reason to some words: "XFAIL (flaky)".
        Rule {
            runner: "pytest",
            re: re(&format!(
                r"^(?P<id>{PYTEST_ID}) (?P<st>PASSED|FAILED|ERROR|XPASS|XFAIL|SKIPPED)(?: \(.*\))?(?:\s+\[[\s\d/%]+\])?$"
            )),
            hit: |c| Hit::new(group(c, "id"), pytest_outcome(group(c, "st"))?),
        },
        // pytest's short summary ("FAILED tests/test_x.py::test_b - AssertionError") and
        // pytest-xdist's verbose lines ("[gw0] [ 50%] PASSED tests/test_x.py::test_a"). A
        // module that fails to import reports just its file: "ERROR tests/test_x.py - ...".
        Rule {
            runner: "pytest",
            re: re(&format!(
                r"^(?:\[gw\d+\]\s+\[[\s\d/%]+\]\s+)?(?P<st>PASSED|FAILED|ERROR|XPASS|XFAIL|SKIPPED) (?P<id>{PYTEST_ID}|[^\s\[:]+\.py)(?:\s.*)?$"
            )),
            hit: |c| {
                let (status, id) = (group(c, "st"), group(c, "id"));
                if !id.contains("::") && status != "ERROR" {
                    return None;
                }
                Hit::new(id, pytest_outcome(status)?)
            },
        },
        // unittest -v: "test_add (test_calc.TestCalc.test_add) ... ok" (Python 3.11+; 3.10 and
        // before print only the class in parentheses), "... FAIL", "... ERROR", "... skipped
        // 'why'"; and the failure headers "FAIL: test_add (test_calc.TestCalc.test_add)".
        Rule {
            runner: "unittest",
            re: re(
                r"^(?:(?P<head>FAIL|ERROR): )?(?P<m>\w+) \((?P<cls>[\w.]+)\)(?: \.\.\. (?P<st>ok|FAIL|ERROR|expected failure|unexpected success|skipped.*))?$",
            ),
            hit: |c| {
                let (m, cls) = (group(c, "m"), group(c, "cls"));
                let name = if cls.ends_with(&format!(".{m}")) {
                    cls.to_string()
                } else {
                    format!("{cls}.{m}")
                };
                let outcome = match (c.name("head"), c.name("st").map(|s| s.as_str())) {
                    (Some(_), _) => Outcome::Failed,
                    (None, Some("ok" | "expected failure")) => Outcome::Passed,
                    (None, Some("FAIL" | "ERROR" | "unexpected success")) => Outcome::Failed,
                    _ => return None,
                };
                Hit::new(&name, outcome)
            },
        },
        // TAP (bats, prove, node --test's TAP reporter): "ok 1 - name", "not ok 2 name",
        // indented for subtests. The number is required, so a bare "ok" in a log is no test,
        // and a line without a description has no name to record.
        Rule {
            runner: "tap",
            re: re(r"^\s*(?P<not>not )?ok \d+(?:\s+-)?(?:\s+(?P<rest>.*))?$"),
            hit: |c| {
                let rest = group(c, "rest");
                if SKIP_DIRECTIVE.is_match(rest) {
                    return None;
                }
                let outcome = match c.name("not") {
                    Some(_) => Outcome::Failed,
                    None => Outcome::Passed,
                };
                Hit::new(&TAP_TIME.replace(rest, ""), outcome)
            },
        },
        // jest --verbose and vitest: "  ✓ adds numbers (3 ms)", "  ✕ subtracts (2 ms)", "√"/"×"
        // on Windows (and vitest's failure mark), "✓ src/a.test.ts > suite > name 2ms". jest
        // names a test here without its describe blocks, and as "Suite › name" in the `●`
        // header below; both are kept, and lookup finds either.
        Rule {
            runner: "jest",
            re: re(r"^\s*(?P<mark>[✓✕√×])\s+(?P<name>.+)$"),
            hit: |c| {
                let name = DURATION.replace(group(c, "name"), "");
                if VITEST_FILE.is_match(&name) {
                    return None;
                }
                let outcome = match group(c, "mark") {
                    "✓" | "√" => Outcome::Passed,
                    _ => Outcome::Failed,
                };
                Hit::new(&name, outcome)
            },
        },
        // jest's failure header: "  ● Suite name › test name".
        Rule {
            runner: "jest",
            re: re(r"^\s*● (?P<name>.+)$"),
            hit: |c| {
                let name = group(c, "name").trim();
                if is_jest_notice(name) {
                    return None;
                }
                Hit::new(name, Outcome::Failed)
            },
        },
        // vitest's failed-test list: " FAIL  src/a.test.ts > suite > name". jest's per-file
        // " FAIL  src/a.test.js" has no " > " and is not a test.
        Rule {
            runner: "jest",
            re: re(r"^\s*FAIL\s+(?P<name>\S.*? > .+)$"),
            hit: |c| Hit::new(group(c, "name"), Outcome::Failed),
        },
        // node --test's spec reporter: "✔ name (0.5ms)", "✖ name (1.2ms)", "✔ name (0.1ms) # TODO".
        // Its closing "✖ failing tests:" heading introduces a repeat of the failures.
        Rule {
            runner: "node-test",
            re: re(r"^\s*(?P<mark>[✔✖])\s+(?P<name>.+)$"),
            hit: |c| {
                let name = group(c, "name");
                if SKIP_DIRECTIVE.is_match(name) || name == "failing tests:" {
                    return None;
                }
                let outcome = match group(c, "mark") {
                    "✔" => Outcome::Passed,
                    _ => Outcome::Failed,
                };
                Hit::new(&DURATION.replace(name, ""), outcome)
            },
        },
    ]
});

/// The text a terminal would show for `line`: without trailing whitespace, without colour
/// codes, and only what follows the last carriage return (progress bars redraw a line that way).
fn visible(line: &str) -> Cow<'_, str> {
    let line = line.trim_end();
    let line = line.rsplit('\r').next().unwrap_or(line);
    if line.contains('\x1b') {
        Cow::Owned(ANSI.replace_all(line, "").trim_end().to_string())
    } else {
        Cow::Borrowed(line)
    }
}

/// Whether `prefix`, the part of a name before a suffix, ends where a name part ends.
fn at_boundary(prefix: &str) -> bool {
    ["::", "/", ".", " ", ">", "›"]
        .iter()
        .any(|b| prefix.ends_with(b))
}

/// Whether `name` is `expectation`, or ends with it at a name-part boundary.
fn names(name: &str, expectation: &str) -> bool {
    name == expectation || name.strip_suffix(expectation).is_some_and(at_boundary)
}

/// `name` without a trailing pytest parameter id: "t.py::test_p[a b]" → "t.py::test_p".
fn without_params(name: &str) -> Option<&str> {
    let open = name.strip_suffix(']')?.find('[')?;
    Some(&name[..open])
}

impl Names {
    /// Records the test outcome `line` reports, if any.
    pub fn feed(&mut self, line: &str) {
        self.feed_capped(line, MAX_NAMES);
    }

    fn feed_capped(&mut self, line: &str, cap: usize) {
        let line = visible(line);
        if line.is_empty() {
            return;
        }
        for rule in RULES.iter() {
            let Some(c) = rule.re.captures(&line) else {
                continue;
            };
            // A line matching a rule is that rule's, even when it reports no outcome (a
            // skip): later rules are looser and could misread it.
            if let Some(hit) = (rule.hit)(&c) {
                self.runner.get_or_insert(rule.runner);
                self.record(hit, cap);
            }
            return;
        }
        self.feed_mocha(&line, cap);
    }

    /// mocha's failure lines look like any numbered list, so they count only once mocha's own
    /// "N failing" line follows them.
    fn feed_mocha(&mut self, line: &str, cap: usize) {
        if self.mocha_closed {
            return;
        }
        if MOCHA_FAILING.is_match(line) {
            self.mocha_closed = true;
            if !self.mocha_pending.is_empty() {
                self.runner.get_or_insert("mocha");
            }
            for name in std::mem::take(&mut self.mocha_pending) {
                if let Some(hit) = Hit::new(&name, Outcome::Failed) {
                    self.record(hit, cap);
                }
            }
        } else if let Some(c) = MOCHA_FAILED.captures(line) {
            if self.mocha_pending.len() < cap {
                self.mocha_pending.push(group(&c, "name").to_string());
            } else {
                self.truncated = true;
            }
        }
    }

    fn record(&mut self, hit: Hit, cap: usize) {
        if let Some(outcome) = self.tests.get_mut(&hit.name) {
            // Failed wins, so a test reported twice (a teardown error after a pass, a summary
            // repeating a failure) ends failed; only a retry that passed overrides.
            if hit.supersedes || hit.outcome == Outcome::Failed {
                *outcome = hit.outcome;
            }
        } else if self.tests.len() < cap {
            self.tests.insert(hit.name, hit.outcome);
        } else {
            self.truncated = true;
        }
    }

    fn with(&self, outcome: Outcome) -> Vec<String> {
        self.tests
            .iter()
            .filter(|(_, o)| **o == outcome)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The failed tests, sorted.
    pub fn failed(&self) -> Vec<String> {
        self.with(Outcome::Failed)
    }

    /// The passed tests, sorted.
    #[cfg(test)]
    pub fn passed(&self) -> Vec<String> {
        self.with(Outcome::Passed)
    }

    /// True when no test was recognised.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The test an expectation names: an exact name, or a name that ends with the expectation
    /// at a boundary ("::", "/", ".", " ", ">", "›" before it), e.g. "test_login" finds
    /// "tests/test_auth.py::test_login", "auth::tests::login" finds "auth::tests::login",
    /// "TestLogin" finds go's "TestLogin". A parametrised pytest name also answers for its
    /// function: "test_p" finds "t.py::test_p[a]". If several match, a failed one wins (then an
    /// exact one, then the first in order).
    pub fn lookup(&self, expectation: &str) -> Option<(&str, Outcome)> {
        let expectation = expectation.trim();
        if expectation.is_empty() {
            return None;
        }
        // Failed before passed, then exact before suffix; ties keep the first in order.
        let rank = |outcome: Outcome, exact: bool| (outcome == Outcome::Failed, exact);
        let mut best: Option<(&str, Outcome, bool)> = None;
        for (name, &outcome) in &self.tests {
            let matches = names(name, expectation)
                || without_params(name).is_some_and(|n| names(n, expectation));
            if !matches {
                continue;
            }
            let exact = name == expectation;
            if best.is_none_or(|(_, o, e)| rank(outcome, exact) > rank(o, e)) {
                best = Some((name, outcome, exact));
            }
        }
        best.map(|(name, outcome, _)| (name, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(output: &str) -> Names {
        let mut names = Names::default();
        for line in output.lines() {
            names.feed(line);
        }
        names
    }

    #[test]
    fn tap_bats_and_prove() {
        let out = "\
1..6
ok 1 - addition using bc
not ok 2 - subtraction fails
# (in test file test/math.bats, line 9)
#   `[ \"$result\" -eq 3 ]' failed
ok 3 multiplication
ok 4 division # skip not ready
not ok 5 - power # TODO later
ok 6 - modulo # time=1.2ms
ok 7
ok
okay then
";
        let n = parse(out);
        assert_eq!(n.runner, Some("tap"));
        assert_eq!(
            n.passed(),
            ["addition using bc", "modulo", "multiplication"]
        );
        assert_eq!(n.failed(), ["subtraction fails"]);
        assert!(!n.truncated);
    }

    #[test]
    fn tap_node_subtests() {
        let out = "\
TAP version 13
# Subtest: math
    # Subtest: adds
    ok 1 - adds
      ---
      duration_ms: 0.41
      ...
    # Subtest: divides
    not ok 2 - divides
      ---
      duration_ms: 0.9
      failureType: 'testCodeFailure'
      ...
    1..2
not ok 1 - math
  ---
  duration_ms: 2.1
  ...
1..1
# tests 2
# pass 1
# fail 1
";
        let n = parse(out);
        assert_eq!(n.runner, Some("tap"));
        assert_eq!(n.passed(), ["adds"]);
        assert_eq!(n.failed(), ["divides", "math"]);
    }

    #[test]
    fn cargo_test() {
        let out = "\
   Compiling demo v0.1.0 (/src)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 1.02s
     Running unittests src/lib.rs (target/debug/deps/demo-1a2b3c)

running 4 tests
test auth::tests::login ... ok
test auth::tests::logout ... FAILED
test slow::big ... ignored
test slow::bigger ... ignored, takes an hour
test db::tests::connects ... ok

failures:

---- auth::tests::logout stdout ----
thread 'auth::tests::logout' panicked at src/auth.rs:40:9:
assertion failed: ok

failures:
    auth::tests::logout

test result: FAILED. 2 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests demo

running 1 test
test src/lib.rs - parse (line 12) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.30s
";
        let n = parse(out);
        assert_eq!(n.runner, Some("cargo-test"));
        assert_eq!(
            n.passed(),
            [
                "auth::tests::login",
                "db::tests::connects",
                "src/lib.rs - parse (line 12)"
            ]
        );
        assert_eq!(n.failed(), ["auth::tests::logout"]);
    }

    #[test]
    fn cargo_nextest() {
        let out = "\
    Starting 7 tests across 2 binaries (1 test skipped)
        PASS [   0.004s] mycrate::tests some::test_name
        FAIL [   0.010s] mycrate some_test
        SKIP [         ] mycrate skipped_test
     SIGSEGV [   0.020s] mycrate crashes
        SLOW [>  60.000s] mycrate slow_one
     TIMEOUT [  90.001s] mycrate slow_one
        LEAK [   0.100s] (  5/7) mycrate leaky
   LEAK-FAIL [   0.100s] (  6/7) mycrate leaky_fail
       ABORT [   0.003s] mycrate windows_abort
------------
     Summary [  90.200s] 7 tests run: 2 passed, 5 failed, 1 skipped
        FAIL [   0.010s] mycrate some_test
error: test run failed
";
        let n = parse(out);
        assert_eq!(n.runner, Some("cargo-nextest"));
        assert_eq!(
            n.passed(),
            ["mycrate leaky", "mycrate::tests some::test_name"]
        );
        assert_eq!(
            n.failed(),
            [
                "mycrate crashes",
                "mycrate leaky_fail",
                "mycrate slow_one",
                "mycrate some_test",
                "mycrate windows_abort"
            ]
        );
    }

    #[test]
    fn nextest_retry_pass_supersedes_failed_attempts() {
        let out = "\
   TRY 1 FAIL [   0.010s] (1/3) mycrate tests::flaky
  RETRY 2/3 [         ] (1/3) mycrate tests::flaky
   TRY 2 FAIL [   0.011s] (1/3) mycrate tests::flaky
  RETRY 3/3 [         ] (1/3) mycrate tests::flaky
   TRY 3 PASS [   0.004s] (1/3) mycrate tests::flaky
   TRY 1 FAIL [   0.010s] (2/3) mycrate tests::broken
   TRY 2 FAIL [   0.010s] (2/3) mycrate tests::broken
        PASS [   0.002s] (3/3) mycrate tests::fine
     Summary [   0.030s] 3 tests run: 2 passed (1 flaky), 1 failed, 0 skipped
   FLAKY 3/3 [   0.004s] mycrate tests::flaky
   TRY 2 FAIL [   0.010s] mycrate tests::broken
";
        let n = parse(out);
        assert_eq!(n.passed(), ["mycrate tests::fine", "mycrate tests::flaky"]);
        assert_eq!(n.failed(), ["mycrate tests::broken"]);

        // A flaky test configured to fail stays failed.
        let n = parse(
            "  TRY 1 FAIL [   0.010s] m t\n  TRY 2 PASS [   0.004s] m t\n FLKY-FL 2/2 [   0.004s] m t",
        );
        assert_eq!(n.tests.get("m t"), Some(&Outcome::Failed));
    }

    #[test]
    fn pytest_verbose_and_summary() {
        let out = "\
============================= test session starts ==============================
platform linux -- Python 3.12.1, pytest-8.0.0, pluggy-1.4.0 -- /usr/bin/python3
collected 9 items

tests/test_x.py::test_a PASSED                                           [ 11%]
tests/test_x.py::TestK::test_b FAILED                                    [ 22%]
tests/test_x.py::test_p[a b] PASSED                                      [ 33%]
tests/test_x.py::test_p[c-d] FAILED                                      [ 44%]
tests/test_x.py::test_skip SKIPPED (no network)                          [ 55%]
tests/test_x.py::test_xf XFAIL (known bug)                               [ 66%]
tests/test_x.py::test_xp XPASS (fixed?)                                  [ 77%]
tests/test_x.py::test_e ERROR                                            [ 88%]
tests/test_y.py::test_teardown PASSED                                    [100%]
tests/test_y.py::test_teardown ERROR                                     [100%]

=================================== FAILURES ===================================
________________________________ TestK.test_b _________________________________
E       AssertionError: assert 1 == 2
=========================== short test summary info ============================
PASSED tests/test_x.py::test_a
FAILED tests/test_x.py::TestK::test_b - AssertionError: assert 1 == 2
FAILED tests/test_x.py::test_p[c-d] - assert [1] == [2]
SKIPPED [1] tests/test_x.py:30: no network
XFAIL tests/test_x.py::test_xf - known bug
ERROR tests/test_x.py::test_e - RuntimeError: fixture broke
ERROR tests/test_z.py - ModuleNotFoundError: No module named 'zz'
ERROR mycrate::db: connection refused
===== 4 failed, 3 passed, 1 skipped, 1 xfailed, 1 xpassed, 2 errors in 0.12s =====
";
        let n = parse(out);
        assert_eq!(n.runner, Some("pytest"));
        assert_eq!(
            n.passed(),
            [
                "tests/test_x.py::test_a",
                "tests/test_x.py::test_p[a b]",
                "tests/test_x.py::test_xp"
            ]
        );
        assert_eq!(
            n.failed(),
            [
                "tests/test_x.py::TestK::test_b",
                "tests/test_x.py::test_e",
                "tests/test_x.py::test_p[c-d]",
                "tests/test_y.py::test_teardown",
                "tests/test_z.py"
            ]
        );
    }

    #[test]
    fn pytest_xdist() {
        let out = "\
[gw0] [ 50%] PASSED tests/test_x.py::test_a
[gw1] [100%] FAILED tests/test_x.py::test_b
";
        let n = parse(out);
        assert_eq!(n.passed(), ["tests/test_x.py::test_a"]);
        assert_eq!(n.failed(), ["tests/test_x.py::test_b"]);
    }

    #[test]
    fn unittest_verbose() {
        let out = "\
test_add (test_calc.TestCalc.test_add) ... ok
test_sub (test_calc.TestCalc) ... FAIL
test_skip (test_calc.TestCalc.test_skip) ... skipped 'later'

======================================================================
FAIL: test_sub (test_calc.TestCalc)
----------------------------------------------------------------------
Ran 3 tests in 0.001s

FAILED (failures=1, skipped=1)
";
        let n = parse(out);
        assert_eq!(n.runner, Some("unittest"));
        assert_eq!(
            n.lookup("test_add"),
            Some(("test_calc.TestCalc.test_add", Outcome::Passed))
        );
        assert_eq!(
            n.lookup("test_sub"),
            Some(("test_calc.TestCalc.test_sub", Outcome::Failed))
        );
        assert_eq!(n.lookup("test_skip"), None);
    }

    #[test]
    fn go_test() {
        let out = "\
=== RUN   TestFoo
--- PASS: TestFoo (0.00s)
=== RUN   TestBar
=== RUN   TestBar/sub_case
    bar_test.go:12: got 1, want 2
=== RUN   TestBar/other
    --- FAIL: TestBar/sub_case (0.00s)
    --- PASS: TestBar/other (0.00s)
--- FAIL: TestBar (0.01s)
=== RUN   TestSkipped
    skip_test.go:5: needs docker
--- SKIP: TestSkipped (0.00s)
FAIL
FAIL	example.com/demo	0.015s
ok  	example.com/demo/other	0.004s
";
        let n = parse(out);
        assert_eq!(n.runner, Some("go-test"));
        assert_eq!(n.passed(), ["TestBar/other", "TestFoo"]);
        assert_eq!(n.failed(), ["TestBar", "TestBar/sub_case"]);
    }

    #[test]
    fn jest_verbose() {
        let out = "\
 FAIL  src/math.test.js
  math
    ✓ adds numbers (3 ms)
    ✕ subtracts (2 ms)
    ○ skipped divides
    ✎ todo multiplies
    √ windows pass (1ms)
    × windows fail

  ● math › subtracts

    expect(received).toBe(expected) // Object.is equality

  ● Test suite failed to run

  ● Console

Tests:       2 failed, 2 passed, 1 skipped, 1 todo, 6 total
";
        let n = parse(out);
        assert_eq!(n.runner, Some("jest"));
        assert_eq!(n.passed(), ["adds numbers", "windows pass"]);
        assert_eq!(
            n.failed(),
            ["math › subtracts", "subtracts", "windows fail"]
        );
        // Both spellings fail; the exact one is preferred.
        assert_eq!(n.lookup("subtracts"), Some(("subtracts", Outcome::Failed)));
        assert_eq!(
            n.lookup("math › subtracts"),
            Some(("math › subtracts", Outcome::Failed))
        );
    }

    #[test]
    fn vitest() {
        let out = "\
 ✓ src/a.test.ts (3 tests) 5ms
 ❯ src/b.test.ts (2 tests | 1 failed) 7ms
   ✓ src/a.test.ts > suite > adds 2ms
   ✓ src/a.test.ts > suite > slow one 1003ms
   × src/b.test.ts > suite > breaks 3ms
   ↓ src/b.test.ts > suite > skipped
 ✓ src/old.test.ts (3)

⎯⎯⎯⎯⎯⎯⎯ Failed Tests 1 ⎯⎯⎯⎯⎯⎯⎯

 FAIL  src/b.test.ts > suite > breaks
AssertionError: expected 1 to be 2
";
        let n = parse(out);
        assert_eq!(n.runner, Some("jest"));
        assert_eq!(
            n.passed(),
            [
                "src/a.test.ts > suite > adds",
                "src/a.test.ts > suite > slow one"
            ]
        );
        assert_eq!(n.failed(), ["src/b.test.ts > suite > breaks"]);
        assert_eq!(
            n.lookup("breaks"),
            Some(("src/b.test.ts > suite > breaks", Outcome::Failed))
        );
    }

    #[test]
    fn node_test_spec() {
        let out = "\
▶ math
  ✔ adds (0.512875ms)
  ✖ divides (1.2ms)
  ﹣ skipped one (0.1ms) # SKIP
  ✔ later (0.05ms) # TODO
✖ math (3.1ms)
ℹ tests 4
ℹ pass 1
ℹ fail 1

✖ failing tests:

test at test/math.test.js:8:3
✖ divides (1.2ms)
  AssertionError [ERR_ASSERTION]: Expected values to be strictly equal
";
        let n = parse(out);
        assert_eq!(n.runner, Some("node-test"));
        assert_eq!(n.passed(), ["adds"]);
        // A suite's closing line reads like a test; it is kept as one.
        assert_eq!(n.failed(), ["divides", "math"]);
    }

    #[test]
    fn mocha_spec() {
        // mocha 10's spec reporter, as `npm test` prints it without a terminal.
        let out = "\
> calc@1.0.0 test
> mocha


  calc
    ✔ adds
    1) divides
    - skipped one
    nested
      ✔ multiplies
      2) subtracts


  2 passing (6ms)
  1 pending
  2 failing

  1) calc
       divides:

      AssertionError [ERR_ASSERTION]: Expected values to be strictly equal:

2 !== 3

      at Context.<anonymous> (test/calc.test.js:9:12)

  2) calc
       nested
         subtracts:
     Error: boom
";
        let n = parse(out);
        assert_eq!(n.runner, Some("node-test"), "the first named line is a ✔");
        assert_eq!(n.passed(), ["adds", "multiplies"]);
        assert_eq!(n.failed(), ["divides", "subtracts"]);

        // All failing: mocha's own count names the runner.
        let n = parse("  calc\n    1) divides\n\n  0 passing (2ms)\n  1 failing\n\n  1) calc\n       divides:\n");
        assert_eq!(n.runner, Some("mocha"));
        assert_eq!(n.failed(), ["divides"]);

        // A numbered list in some other output is no test.
        let n = parse("Steps:\n  1) install\n  2) build it\nok\n");
        assert!(n.is_empty(), "{:?}", n.tests);
    }

    #[test]
    fn ordinary_lines_are_no_tests() {
        let out = "\
ok
okay
OK: all good
test result: ok. 3 passed; 0 failed; 0 ignored
PASS
 PASS  src/a.test.js
FAIL
running 3 tests
test foo has been running for over 60 seconds
ERROR mycrate::db: connection refused
ok  	example.com/pkg	0.01s
--- PASS
Summary [   0.2s] 10 tests run: 10 passed, 0 skipped
";
        let n = parse(out);
        assert!(n.is_empty(), "{:?}", n.tests);
        assert_eq!(n.runner, None);
    }

    #[test]
    fn runner_is_the_first_recognised() {
        let n = parse("--- PASS: TestA (0.00s)\ntest a::b ... ok\nok 1 - c");
        assert_eq!(n.runner, Some("go-test"));
        assert_eq!(n.tests.len(), 3);
        // Skips recognise no test, so they choose no runner.
        let n = parse("test a ... ignored\n--- PASS: TestA (0.00s)");
        assert_eq!(n.runner, Some("go-test"));
    }

    #[test]
    fn failed_wins() {
        let n = parse("ok 1 - a\nnot ok 2 - a\nok 3 - a\n--- FAIL: B (0.00s)\n--- PASS: B (0.00s)");
        assert_eq!(n.tests.get("a"), Some(&Outcome::Failed));
        assert_eq!(n.tests.get("B"), Some(&Outcome::Failed));
        assert!(n.passed().is_empty());
    }

    #[test]
    fn colour_crlf_and_carriage_returns() {
        let mut n = Names::default();
        n.feed("\x1b[32;1m        PASS\x1b[0m [   0.004s] \x1b[35mmycrate\x1b[0m \x1b[36mt::a\x1b[0m\r");
        n.feed("tests/t.py::test_b \x1b[31mFAILED\x1b[0m   [100%]  \r\n");
        n.feed("[====>    ] 40%\rtest c::d ... ok");
        assert_eq!(n.tests.get("mycrate t::a"), Some(&Outcome::Passed));
        assert_eq!(n.tests.get("tests/t.py::test_b"), Some(&Outcome::Failed));
        assert_eq!(n.tests.get("c::d"), Some(&Outcome::Passed));
    }

    #[test]
    fn lookup_boundaries() {
        let n = parse(
            "\
tests/test_auth.py::test_login PASSED [ 25%]
tests/test_auth.py::test_logout FAILED [ 50%]
tests/t.py::test_p[1] PASSED [ 75%]
tests/t.py::test_p[2] FAILED [100%]
test auth::tests::login ... ok
--- PASS: TestLogin (0.00s)
--- FAIL: TestLogin/bad_password (0.00s)
",
        );
        assert_eq!(
            n.lookup("test_login"),
            Some(("tests/test_auth.py::test_login", Outcome::Passed))
        );
        // "_" is no boundary: "login" names "auth::tests::login", not "test_login".
        assert_eq!(
            n.lookup("login"),
            Some(("auth::tests::login", Outcome::Passed))
        );
        assert_eq!(n.lookup("ogin"), None);
        assert_eq!(
            n.lookup("auth::tests::login"),
            Some(("auth::tests::login", Outcome::Passed))
        );
        assert_eq!(n.lookup("TestLogin"), Some(("TestLogin", Outcome::Passed)));
        assert_eq!(
            n.lookup("bad_password"),
            Some(("TestLogin/bad_password", Outcome::Failed))
        );
        assert_eq!(
            n.lookup("test_auth.py::test_logout"),
            Some(("tests/test_auth.py::test_logout", Outcome::Failed))
        );
        // A parametrised test answers for its function; the failing parameter wins.
        assert_eq!(
            n.lookup("test_p"),
            Some(("tests/t.py::test_p[2]", Outcome::Failed))
        );
        assert_eq!(
            n.lookup("test_p[1]"),
            Some(("tests/t.py::test_p[1]", Outcome::Passed))
        );
        assert_eq!(n.lookup(""), None);
        assert_eq!(n.lookup("missing"), None);

        let n = parse("ok 1 - x\nnot ok 2 - a x\n ✓ s > x");
        // Several match: the failed one wins over the exact one.
        assert_eq!(n.lookup("x"), Some(("a x", Outcome::Failed)));
        let n = parse("ok 1 - x\nok 2 - a x");
        assert_eq!(n.lookup("x"), Some(("x", Outcome::Passed)));
    }

    #[test]
    fn truncation() {
        let mut n = Names::default();
        for i in 0..5 {
            n.feed_capped(&format!("ok {i} - t{i}"), 3);
        }
        assert_eq!(n.tests.len(), 3);
        assert!(n.truncated);
        // Names already kept still take their outcome.
        n.feed_capped("not ok 9 - t0", 3);
        assert_eq!(n.tests.get("t0"), Some(&Outcome::Failed));

        let mut n = Names::default();
        for i in 0..=MAX_NAMES {
            n.feed(&format!("ok {i} - t{i}"));
        }
        assert_eq!(n.tests.len(), MAX_NAMES);
        assert!(n.truncated);
    }

    #[test]
    fn outcome_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&Outcome::Failed).unwrap(),
            "\"failed\""
        );
    }
}
