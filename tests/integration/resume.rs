//! Many units, retries and crashes: parallel units landing in order, retries and the fallback
//! agent, infrastructure retries and the circuit breaker, `kill -9` at every phase boundary
//! followed by the same command, the repository lock, `status` and `clean`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A project whose test check fails while `src/math.py` holds a wrong `add`.
fn project(salt: &str, agent: &str, extra: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write("src/math.py", "def one():\n    return 1\n");
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[verify]\ntest = '''if grep -q 'a - b' src/math.py; then echo 'FAILED test_add: add(1, 2) == -1'; exit 1; fi; echo '1 passed, 0 failed' '''\n\n[agent]\nkind = \"command\"\ncommand = {}\n{extra}",
            toml_string(agent)
        ),
    );
    repo.unit(
        "add",
        "scope = [\"src/**\"]",
        "Add add(a, b) to src/math.py.",
    );
    repo
}

/// Writes the correct `add` from attempt `good` on, a wrong one before.
fn agent_good_from(good: u32) -> String {
    format!(
        "cat > /tmp/prompt; if [ \"$BOXDELEGATE_ATTEMPT\" -ge {good} ]; then printf 'def add(a, b):\\n    return a + b\\n' >> src/math.py; else printf 'def add(a, b):\\n    return a - b\\n' >> src/math.py; fi"
    )
}

fn containers_of_run(run_id: &str) -> String {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=boxdelegate.run={run_id}"),
        "--format",
        "{{.ID}} {{.Status}}",
    ])
}

fn commits_on(repo: &TestRepo, branch: &str, since: &str) -> Vec<String> {
    let out = repo.git(&[
        "log",
        "--reverse",
        "--format=%(trailers:key=Boxdelegate-Unit,valueonly)",
        &format!("{since}..refs/heads/{branch}"),
    ]);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn run_json(repo: &TestRepo, args: &[&str]) -> (i32, serde_json::Value, String) {
    repo.run_value(args)
}

#[test]
fn a_change_that_fails_verification_twice_is_retried_and_lands_after_2_retries() {
    require_base_image();
    let repo = project("resume-retries", &agent_good_from(3), "");
    let snapshot = repo.commit("project");
    let (code, v, err) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 0, "{err}\n{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "landed", "{u}");
    assert_eq!(u["retries"], 2, "{u}");
    assert!(
        u["message"].as_str().unwrap().ends_with("after 2 retries"),
        "{u}"
    );
    let attempts = u["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{u}");
    assert_eq!(attempts[0]["status"], "verify-failed");
    assert_eq!(attempts[1]["status"], "verify-failed");
    // The retry prompt carries the failing output and what the rejected change did.
    let dir = PathBuf::from(attempts[2]["dir"].as_str().unwrap());
    let prompt = std::fs::read_to_string(dir.join("prompt.md")).unwrap();
    assert!(prompt.contains("Previous attempt (2) failed"), "{prompt}");
    assert!(prompt.contains("FAILED test_add"), "{prompt}");
    assert_eq!(
        prompt
            .lines()
            .filter(|l| l.trim() == "FAILED test_add: add(1, 2) == -1")
            .count(),
        1,
        "the failure once, not once per report of it: {prompt}"
    );
    assert!(prompt.contains("src/math.py"), "{prompt}");
    let first = std::fs::read_to_string(
        PathBuf::from(attempts[0]["dir"].as_str().unwrap()).join("prompt.md"),
    )
    .unwrap();
    assert!(!first.contains("Previous attempt"), "{first}");
    // One commit, with the good change.
    assert_eq!(commits_on(&repo, "boxdelegate/add", &snapshot), ["add"]);
    assert!(repo
        .git(&["show", "boxdelegate/add:src/math.py"])
        .contains("return a + b"));
    let report = &v["run"];
    assert_eq!(report["landed_after_retries"], 1, "{report}");
    assert_eq!(report["landed_first_attempt"], 0, "{report}");
    assert_eq!(report["units"], 1, "{report}");
    assert!(report["agent_seconds"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn a_unit_that_always_fails_ends_failed_after_retries_and_the_fallback_with_every_patch_kept() {
    require_base_image();
    let repo = project(
        "resume-fallback",
        &agent_good_from(99),
        "\n[agent.fallback]\nkind = \"command\"\ncommand = '''echo fallback > /tmp/x; printf 'def add(a, b):\\n    return a - b  # fallback\\n' >> src/math.py'''\n",
    );
    let snapshot = repo.commit("project");
    let refs = repo.refs();
    let (code, v, err) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 18, "{err}\n{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "failed", "{u}");
    let attempts = u["attempts"].as_array().unwrap();
    // The default budget: 2 retries, then the fallback agent.
    assert_eq!(attempts.len(), 4, "{u}");
    let roles: Vec<&str> = attempts
        .iter()
        .map(|a| a["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["primary", "primary", "primary", "fallback"]);
    let mut patches = std::collections::BTreeSet::new();
    for a in attempts {
        assert_eq!(a["status"], "verify-failed", "{a}");
        let patch = std::fs::read_to_string(a["patch"].as_str().unwrap()).unwrap();
        assert!(patch.contains("return a - b"), "{patch}");
        patches.insert(patch);
    }
    assert!(
        patches.iter().any(|p| p.contains("# fallback")),
        "the fallback's own patch is kept"
    );
    assert!(
        u["message"]
            .as_str()
            .unwrap()
            .contains("failed after 4 attempts (2 retries, then the fallback agent)"),
        "{u}"
    );
    assert_eq!(v["run"]["failed"], 1);
    assert_eq!(repo.refs(), refs, "nothing landed");
    assert!(commits_on(&repo, "main", &snapshot).is_empty());
}

#[test]
fn an_agent_killed_by_the_oom_killer_is_an_infrastructure_failure_and_retried() {
    require_base_image();
    let repo = TestRepo::with_project("resume-oom");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n[limits]\nmemory = \"96m\"\n[run]\ninfra_retries = 1\nbackoff = \"0s\"\n[agent]\nkind = \"command\"\ncommand = '''if [ \"$BOXDELEGATE_ATTEMPT\" = 1 ]; then tail /dev/zero; fi; echo five >> src/five.txt'''\n",
    );
    repo.unit("five", "scope = [\"src/**\"]", "Write five.");
    repo.commit("project");
    let (code, v, err) = run_json(&repo, &["--unit", "five"]);
    assert_eq!(code, 0, "{err}\n{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "landed", "{u}");
    let attempts = u["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{u}");
    assert_eq!(attempts[0]["infra"], "oom", "{u}");
    assert_eq!(attempts[0]["status"], "infra-error", "{u}");
    assert!(
        attempts[0]["message"]
            .as_str()
            .unwrap()
            .contains("out-of-memory"),
        "{u}"
    );
    assert_eq!(
        u["retries"], 0,
        "an infrastructure retry is not a retry of the change"
    );
    assert_eq!(v["run"]["landed_first_attempt"], 1);
}

#[test]
fn three_infrastructure_failures_in_a_row_open_the_breaker_and_skip_the_rest() {
    require_base_image();
    let repo = TestRepo::with_project("resume-breaker");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n[run]\ninfra_retries = 5\nbackoff = \"0s\"\njobs = 1\n[agent]\nkind = \"command\"\ntimeout = \"1s\"\ncommand = '''exec sleep 60'''\n",
    );
    for id in ["a1", "a2", "a3"] {
        repo.unit(id, "scope = [\"src/**\"]", "Hang.");
    }
    repo.commit("project");
    let refs = repo.refs();
    let (code, v, err) = run_json(&repo, &["--unit", "a1", "--unit", "a2", "--unit", "a3"]);
    assert_eq!(
        code, 19,
        "the exit code says the breaker opened: {err}\n{v}"
    );
    let units = v["units"].as_array().unwrap();
    assert_eq!(units[0]["status"], "timeout", "{}", units[0]);
    assert_eq!(units[0]["attempts"].as_array().unwrap().len(), 3);
    for u in &units[1..] {
        assert_eq!(u["status"], "skipped", "{u}");
        assert!(
            u["message"]
                .as_str()
                .unwrap()
                .contains("3 infrastructure failures in a row"),
            "{u}"
        );
        assert!(u["attempts"].as_array().unwrap().is_empty(), "{u}");
    }
    assert_eq!(v["run"]["skipped"], 2);
    assert!(v["run"]["breaker"].as_str().unwrap().contains("a1"));
    assert_eq!(repo.refs(), refs);
    let run_id = v["run"]["run_id"].as_str().unwrap();
    assert_eq!(containers_of_run(run_id), "", "no container is left");
}

#[test]
fn four_units_with_two_jobs_land_in_unit_order_on_one_branch() {
    require_base_image();
    let repo = TestRepo::with_project("resume-parallel");
    // The first unit is the slowest, so later units are ready first and must wait their turn.
    repo.agent("if [ \"$BOXDELEGATE_UNIT_ID\" = u1 ]; then sleep 3; fi; echo \"$BOXDELEGATE_UNIT_ID\" > \"src/$BOXDELEGATE_UNIT_ID.txt\"");
    for id in ["u1", "u2", "u3", "u4"] {
        repo.unit(id, "scope = [\"src/**\"]", &format!("Write src/{id}.txt."));
    }
    let snapshot = repo.commit("project");
    // Without --json: the plain progress lines say what a ready unit waits for.
    let out = repo
        .cmd()
        .args([
            "run", "--unit", "u1", "--unit", "u2", "--unit", "u3", "--unit", "u4",
        ])
        .args(["--jobs", "2", "--branch", "integration"])
        .output()
        .unwrap();
    let (code, err) = (out.status.code().unwrap(), stderr(&out));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("» u2: passed; waiting to land after u1"),
        "u2 was ready first and says what it waits for: {err}"
    );
    let runs = repo.path().join(".git/boxdelegate");
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let run_dir = std::fs::read_dir(runs.join("runs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let units: Vec<serde_json::Value> = ["u1", "u2", "u3", "u4"]
        .iter()
        .map(|id| read(runs.join(format!("last/{id}.json"))))
        .collect();
    let v = serde_json::json!({"run": read(run_dir.join("report.json")), "units": units});
    assert_eq!(v["run"]["jobs"], 2);
    assert_eq!(v["run"]["landed_first_attempt"], 4);
    assert_eq!(
        commits_on(&repo, "integration", &snapshot),
        ["u1", "u2", "u3", "u4"],
        "one commit per unit, in unit order"
    );
    let files = repo.git(&["ls-tree", "--name-only", "integration", "src/"]);
    assert_eq!(
        files
            .lines()
            .filter(|l| l.starts_with("src/u"))
            .collect::<Vec<_>>(),
        ["src/u1.txt", "src/u2.txt", "src/u3.txt", "src/u4.txt"],
        "the final tree holds the four changes together"
    );
    // Units ran two at a time: u2 was ready before the slow u1 and still landed after it.
    let log = |id: &str| {
        v["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == id)
            .unwrap()
            .clone()
    };
    assert!(
        log("u2")["message"]
            .as_str()
            .unwrap()
            .contains("the branch had moved"),
        "{}",
        log("u2")
    );
}

/// Runs `run --unit add` with a failpoint armed; expects the process to die by SIGKILL.
fn crash_at(repo: &TestRepo, failpoint: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", "add"])
        .env("BOXDELEGATE_FAILPOINT", failpoint)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed at {failpoint}: {}",
        stderr(&out)
    );
}

fn run_ids(repo: &TestRepo) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo.path().join(".git/boxdelegate/runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// kill -9 at `failpoint`, then the same command: the unit ends as an uninterrupted run would.
fn killed_then_resumed(failpoint: &str) {
    require_base_image();
    let salt = format!("resume-kill-{failpoint}");
    // The agent takes a moment, so a crash right after its start leaves it running.
    let repo = project(
        &salt,
        "sleep 3; printf 'def add(a, b):\\n    return a + b\\n' >> src/math.py",
        "",
    );
    let snapshot = repo.commit("project");
    crash_at(&repo, failpoint);
    let runs = run_ids(&repo);
    assert_eq!(runs.len(), 1, "{runs:?}");
    if failpoint == "agent-started" {
        // The agent outlives boxdelegate: the resumed run must re-attach to it.
        let left = containers_of_run(&runs[0]);
        assert!(left.contains("Up"), "the agent still runs: {left}");
    }

    let (code, v, err) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 0, "after a crash at {failpoint}: {err}\n{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "landed", "{u}");
    if let Some(crashed) = runs.first() {
        assert_eq!(
            v["run"]["run_id"],
            crashed.as_str(),
            "the same run continued"
        );
        assert_eq!(v["run"]["resumed"], true);
    }
    assert_eq!(run_ids(&repo).len(), 1, "no second run");
    // Exactly one commit, with the change; the patch is kept; no container is left.
    assert_eq!(commits_on(&repo, "boxdelegate/add", &snapshot), ["add"]);
    assert_eq!(
        repo.git(&["show", "boxdelegate/add:src/math.py"]),
        "def one():\n    return 1\ndef add(a, b):\n    return a + b"
    );
    let patch = std::fs::read_to_string(u["patch"].as_str().unwrap()).unwrap();
    assert!(patch.contains("+    return a + b"), "{patch}");
    assert_eq!(u["attempts"].as_array().unwrap().len(), 1, "{u}");
    let run_id = v["run"]["run_id"].as_str().unwrap();
    assert_eq!(containers_of_run(run_id), "", "no orphan container");
    // Running it again does nothing more.
    let (code, v, _) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 0);
    assert_eq!(v["units"][0]["status"], "already-landed");
    assert_eq!(commits_on(&repo, "boxdelegate/add", &snapshot), ["add"]);
}

#[test]
fn a_unit_that_landed_since_its_run_was_interrupted_is_not_delegated_again() {
    require_base_image();
    let repo = project(
        "resume-landed-since",
        "cat > /tmp/prompt; sleep 2; printf 'def add(a, b):\\n    return a + b\\n' >> src/math.py",
        "",
    );
    let snapshot = repo.commit("project");
    crash_at(&repo, "agent-started");
    let interrupted = run_ids(&repo);
    assert_eq!(interrupted.len(), 1);
    // Meanwhile the unit is delegated anew and lands.
    let (code, v, err) = run_json(&repo, &["--unit", "add", "--rerun"]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(v["units"][0]["status"], "landed", "{v}");
    assert_eq!(commits_on(&repo, "boxdelegate/add", &snapshot), ["add"]);
    // Resuming the interrupted run does not run its agent again, nor land a second commit.
    let (code, v, err) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(v["run"]["run_id"], interrupted[0].as_str(), "{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "already-landed", "{u}");
    assert!(
        u["message"]
            .as_str()
            .unwrap()
            .starts_with("already landed as")
            && u["attempts"].as_array().unwrap().is_empty(),
        "found landed, not delegated again: {u}"
    );
    assert_eq!(commits_on(&repo, "boxdelegate/add", &snapshot), ["add"]);
    assert_eq!(
        containers_of_run(&interrupted[0]),
        "",
        "the interrupted agent is gone"
    );
}

#[test]
fn killed_after_the_run_is_recorded() {
    killed_then_resumed("run-created");
}

#[test]
fn killed_between_creating_the_agent_container_and_recording_it() {
    killed_then_resumed("agent-created");
}

#[test]
fn killed_while_the_agent_runs() {
    killed_then_resumed("agent-started");
}

#[test]
fn killed_after_the_agent_exited() {
    killed_then_resumed("agent-exited");
}

#[test]
fn killed_after_extraction() {
    killed_then_resumed("extracted");
}

#[test]
fn killed_after_verification() {
    killed_then_resumed("attempt-judged");
}

#[test]
fn killed_in_the_middle_of_landing() {
    killed_then_resumed("landing");
}

#[test]
fn killed_after_the_branch_moved() {
    killed_then_resumed("landed");
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command agent `agent` and one check (a test command that counts one test), so a tree
/// merged onto a moved branch is verified before it lands.
fn with_check(repo: &TestRepo, agent: &str) {
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n\n[verify]\ntest = 'echo 1 passed, 0 failed'\n\n[run]\ninfra_retries = 0\n",
            toml_string(agent)
        ),
    );
}

/// The containers of `repo`'s runs on the engine (their ids), by its repository label.
fn containers_of(repo: &TestRepo) -> String {
    let id = std::fs::read_to_string(repo.path().join(".git/boxdelegate/repo-id")).unwrap();
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boxdelegate.repository={}", id.trim()),
    ])
    .trim()
    .to_string()
}

/// The run (its id) that delegates `unit`, once its journal is written.
fn run_of(repo: &TestRepo, unit: &str) -> Option<String> {
    run_ids(repo).into_iter().find(|id| {
        std::fs::read(
            repo.path()
                .join(format!(".git/boxdelegate/runs/{id}/journal.json")),
        )
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .is_some_and(|j| {
            j["request"]["units"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == unit))
        })
    })
}

fn journal(repo: &TestRepo) -> Option<serde_json::Value> {
    let id = run_ids(repo).pop()?;
    let data = std::fs::read(
        repo.path()
            .join(format!(".git/boxdelegate/runs/{id}/journal.json")),
    )
    .ok()?;
    serde_json::from_slice(&data).ok()
}

#[test]
fn a_second_boxdelegate_on_the_same_unit_refuses_or_waits_while_other_units_go_on() {
    require_base_image();
    let repo = TestRepo::with_project("resume-lock");
    // The slow unit's agent works until the test lets it finish (a file the test creates in
    // the agent container), so the first run holds its unit as long as the test needs.
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n[verify]\ntest = 'echo 1 passed, 0 failed'\n[agent]\nkind = \"command\"\ntimeout = \"3m\"\ncommand = {}\n",
            toml_string("if [ \"$BOXDELEGATE_UNIT_ID\" = slow ]; then while [ ! -e /tmp/go ]; do sleep 0.1; done; fi; echo \"$BOXDELEGATE_UNIT_ID\" > \"src/$BOXDELEGATE_UNIT_ID.txt\"")
        ),
    );
    repo.unit("slow", "scope = [\"src/**\"]", "Slow.");
    repo.unit("other", "scope = [\"src/**\"]", "Other.");
    let snapshot = repo.commit("project");
    let first = repo
        .cmd()
        .args(["run", "--json", "--unit", "slow", "--branch", "shared"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillChild(first.id());
    wait_for("the first run's agent to start", || {
        journal(&repo).is_some_and(|j| j["units"][0]["attempts"][0]["phase"] == "running")
    });
    let before = repo.refs();
    // The same unit: refused, naming the holder, touching nothing.
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", "slow", "--branch", "shared"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(20), "{err}");
    assert!(err.contains("is working on unit slow"), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains("--wait"), "{err}");
    assert_eq!(repo.refs(), before, "the refused run touched nothing");
    assert_eq!(run_ids(&repo).len(), 1, "the refused run wrote no run");
    // `status` says the first run is running.
    let out = repo.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(s["runs"][0]["state"], "running", "{s}");
    // Another unit goes on at the same time, landing on the same branch first.
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", "other", "--branch", "shared"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    repo.remember_image(v["units"][0]["unit_image"].as_str().unwrap());
    // With --wait a second run of the slow unit queues behind the first.
    let second_err = repo.path().join(".git/second.err");
    let second = repo
        .cmd()
        .args([
            "run", "--json", "--wait", "--unit", "slow", "--branch", "shared",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&second_err).unwrap())
        .spawn()
        .unwrap();
    let _guard2 = KillChild(second.id());
    wait_for("the second run to queue", || {
        std::fs::read_to_string(&second_err)
            .is_ok_and(|e| e.contains("waiting: another boxdelegate") && e.contains("unit slow"))
    });
    let run_id = run_of(&repo, "slow").unwrap();
    let agent = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=boxdelegate.run={run_id}"),
        "--filter",
        "label=boxdelegate.kind=agent",
    ]);
    docker(&["exec", agent.trim(), "touch", "/tmp/go"]);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        second.status.success(),
        "{}",
        std::fs::read_to_string(&second_err).unwrap_or_default()
    );
    // The slow unit landed on top of the other (its merged tree verified), once: the queued
    // run found it landed.
    assert_eq!(commits_on(&repo, "shared", &snapshot), ["other", "slow"]);
    let v: serde_json::Value = crate::common::final_json(&first.stdout);
    assert!(!v["units"][0]["merged_record"].is_null(), "{v}");
    let v2: serde_json::Value = crate::common::final_json(&second.stdout);
    assert_eq!(v2["units"][0]["status"], "already-landed", "{v2}");
    for v in [&v, &v2] {
        if let Some(i) = v["units"][0]["unit_image"].as_str() {
            repo.remember_image(i);
        }
    }
}

#[test]
fn four_runs_at_once_on_one_repository_each_land_their_unit_once() {
    require_base_image();
    let repo = TestRepo::with_project("swarm-four");
    with_check(
        &repo,
        "echo \"$BOXDELEGATE_UNIT_ID\" > \"src/$BOXDELEGATE_UNIT_ID.txt\"",
    );
    for u in ["a", "b", "c", "d"] {
        repo.unit(u, "scope = [\"src/**\"]", "Write your file.");
    }
    let snapshot = repo.commit("project");
    // a and b on one branch, c and d on their own; four processes started together.
    let children: Vec<_> = [
        ("a", Some("shared")),
        ("b", Some("shared")),
        ("c", None),
        ("d", None),
    ]
    .iter()
    .map(|(u, branch)| {
        let mut cmd = repo.cmd();
        cmd.args(["run", "--json", "--unit", u]);
        if let Some(b) = branch {
            cmd.args(["--branch", b]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    let mut results = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: serde_json::Value = crate::common::final_json(&out.stdout);
        let u = v["units"][0].clone();
        assert_eq!(u["status"], "landed", "{u}");
        repo.remember_image(u["unit_image"].as_str().unwrap());
        results.push(u);
    }
    let mut shared = commits_on(&repo, "shared", &snapshot);
    shared.sort();
    assert_eq!(shared, ["a", "b"], "both on the shared branch, once each");
    for u in ["c", "d"] {
        assert_eq!(
            commits_on(&repo, &format!("boxdelegate/{u}"), &snapshot),
            [u]
        );
    }
    // The one that landed second on the shared branch had its merged tree verified.
    let merged: Vec<_> = results[..2]
        .iter()
        .filter(|u| !u["merged_record"].is_null())
        .collect();
    assert_eq!(merged.len(), 1, "{results:?}");
    let fsck = repo.git(&["fsck", "--strict"]);
    assert!(!fsck.contains("error"), "{fsck}");
    assert_eq!(containers_of(&repo), "", "no container left");
}

#[test]
fn a_run_killed_among_others_leaves_them_landing_and_resumes_its_own() {
    require_base_image();
    let repo = TestRepo::with_project("swarm-kill");
    with_check(&repo, "if [ \"$BOXDELEGATE_UNIT_ID\" = x ]; then while [ ! -e /tmp/go ]; do sleep 0.1; done; fi; echo \"$BOXDELEGATE_UNIT_ID\" > \"src/$BOXDELEGATE_UNIT_ID.txt\"");
    for u in ["x", "y", "z"] {
        repo.unit(u, "scope = [\"src/**\"]", "Write your file.");
    }
    let snapshot = repo.commit("project");
    let spawn = |u: &str| {
        repo.cmd()
            .args(["run", "--json", "--unit", u, "--branch", "shared"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let x = spawn("x");
    let _guard = KillChild(x.id());
    let (y, z) = (spawn("y"), spawn("z"));
    wait_for("x's agent to start", || {
        run_of(&repo, "x").is_some_and(|id| {
            !docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=boxdelegate.run={id}"),
                "--filter",
                "label=boxdelegate.kind=agent",
            ])
            .trim()
            .is_empty()
        })
    });
    let killed = Command::new("kill")
        .args(["-9", &x.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = x.wait_with_output();
    for child in [y, z] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: serde_json::Value = crate::common::final_json(&out.stdout);
        repo.remember_image(v["units"][0]["unit_image"].as_str().unwrap());
    }
    // x's run is interrupted; resumed, its agent (still at work) finishes and it lands.
    let x_run = run_of(&repo, "x").expect("x's run");
    let agent = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=boxdelegate.run={x_run}"),
        "--filter",
        "label=boxdelegate.kind=agent",
    ]);
    docker(&["exec", agent.trim(), "touch", "/tmp/go"]);
    let out = repo
        .cmd()
        .args(["resume", &x_run, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["units"][0]["status"], "landed", "{v}");
    let mut shared = commits_on(&repo, "shared", &snapshot);
    shared.sort();
    assert_eq!(shared, ["x", "y", "z"]);
    assert_eq!(containers_of(&repo), "", "no container left");
}

/// Kills a spawned boxdelegate when the test fails before waiting for it.
struct KillChild(u32);

impl Drop for KillChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn a_corrupt_journal_gets_a_clear_message_and_clean_is_the_way_out() {
    require_base_image();
    // The agent works long enough to be still running when the test cleans up after it.
    let repo = project(
        "resume-corrupt",
        "sleep 60; echo 'def add(a, b): return a + b' >> src/math.py",
        "",
    );
    repo.commit("project");
    crash_at(&repo, "agent-started");
    let id = run_ids(&repo).pop().unwrap();
    let path = repo
        .path()
        .join(format!(".git/boxdelegate/runs/{id}/journal.json"));
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() / 2]).unwrap();
    // The agent container of the crashed run still runs.
    let containers = containers_of_run(&id);
    assert!(containers.contains("Up"), "{containers}");

    let before = repo.host_state();
    for args in [
        vec!["run", "--unit", "add"],
        vec!["status"],
        vec!["resume", id.as_str()],
    ] {
        let out = repo.cmd().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(21), "{args:?}: {err}");
        assert!(err.contains("corrupt or truncated"), "{args:?}: {err}");
        assert!(
            err.contains(&format!("boxdelegate clean --run {id}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(repo.host_state(), before, "{args:?} changed nothing");
    }
    // A running agent is never removed without --force.
    let out = repo.cmd().args(["clean", "--run", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(containers_of_run(&id).contains("Up"));
    let out = repo
        .cmd()
        .args(["clean", "--run", &id, "--force"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(containers_of_run(&id), "");
    assert!(run_ids(&repo).is_empty());
    // And the unit runs anew (with a quick agent this time).
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write("boxdelegate.toml", &config.replace("sleep 60; ", ""));
    let (code, v, err) = run_json(&repo, &["--unit", "add"]);
    assert_eq!(code, 0, "{err}\n{v}");
}

#[test]
fn status_shows_an_interrupted_run_and_clean_keeps_it_until_asked() {
    require_base_image();
    let repo = project("resume-status", &agent_good_from(1), "");
    repo.commit("project");
    crash_at(&repo, "extracted");
    let id = run_ids(&repo).pop().unwrap();
    let out = repo.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s: serde_json::Value = crate::common::final_json(&out.stdout);
    let run = &s["runs"][0];
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["state"], "interrupted", "{run}");
    assert_eq!(run["units"][0]["phase"], "working", "{run}");
    assert_eq!(
        run["units"][0]["attempts"][0]["phase"], "extracted",
        "{run}"
    );
    let text = stdout(&repo.cmd().args(["status"]).output().unwrap());
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("boxdelegate resume"), "{text}");
    // clean without --run keeps unfinished runs.
    let out = repo.cmd().args(["clean"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("not finished"), "{}", stdout(&out));
    assert_eq!(run_ids(&repo), std::slice::from_ref(&id));
    // resume finishes it; then clean removes the finished run.
    let out = repo.cmd().args(["resume", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["units"][0]["status"], "landed");
    let image = v["units"][0]["unit_image"].as_str().unwrap().to_string();
    repo.remember_image(&image);
    let out = repo.cmd().args(["clean", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(c["removed"][0]["run_id"], id.as_str(), "{c}");
    assert!(run_ids(&repo).is_empty());
    assert_eq!(
        docker(&["images", "-q", &image]),
        "",
        "the run's unit image is removed"
    );
    let out = repo.cmd().args(["status"]).output().unwrap();
    assert_eq!(stdout(&out).trim(), "no runs in this repository");
}

/// The running agent container of run `run_id`, once there is one.
fn agent_of(run_id: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=boxdelegate.run={run_id}"),
            "--filter",
            "label=boxdelegate.kind=agent",
        ]);
        if let Some(id) = id.lines().next() {
            return id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {run_id} started no agent"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_detached_run_is_followed_by_wait_to_its_result_or_its_end() {
    require_base_image();
    let repo = TestRepo::with_project("detach-wait");
    repo.agent(
        "while [ ! -e /tmp/go ]; do sleep 0.2; done; echo hi > src/$BOXDELEGATE_UNIT_ID.txt",
    );
    repo.unit("u", "scope = [\"src/**\"]", "Say hi.");
    repo.unit("v", "scope = [\"src/**\"]", "Say hi too.");
    repo.commit("project");
    let detach = |unit: &str| {
        let out = repo
            .cmd()
            .args(["run", "--unit", unit, "--detach", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v = crate::common::final_json(&out.stdout);
        assert_eq!(v["type"], "detached", "{v}");
        v["run_id"].as_str().unwrap().to_string()
    };
    let run_id = detach("u");
    let agent = agent_of(&run_id);
    // Still at work: a wait that runs out of time says so (exit 12), as an error object.
    let out = repo
        .cmd()
        .args(["wait", "u", "--run", &run_id, "--timeout", "1s", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert_eq!(crate::common::final_json(&out.stdout)["type"], "error");
    // A waiting planner, then the agent finishes: the wait ends with the unit's result.
    let waiter = repo
        .cmd()
        .args(["wait", "u", "--run", &run_id, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    docker(&["exec", &agent, "touch", "/tmp/go"]);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = crate::common::final_json(&out.stdout);
    assert_eq!(result["status"], "landed", "{result}");
    assert_eq!(result["run_id"], run_id.as_str());
    repo.remember_image(result["unit_image"].as_str().unwrap());
    assert!(repo.git(&["rev-parse", "--verify", "boxdelegate/u"]).len() == 40);
    // Without --run: the unit's newest run, ended: at once.
    let out = repo.cmd().args(["wait", "u"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("u: landed"), "{}", stdout(&out));
    // A unit no run delegates: exit 2.
    let out = repo
        .cmd()
        .args(["wait", "nobody", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A detached run whose process dies mid-way: the wait ends (exit 130) and says how to go on.
    let run_v = detach("v");
    agent_of(&run_v);
    let pid = std::fs::read_to_string(
        repo.path()
            .join(format!(".git/boxdelegate/detached/{run_v}.pid")),
    )
    .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = repo
        .cmd()
        .args(["wait", "v", "--run", &run_v, "--timeout", "60s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("`boxdelegate resume {run_v}` continues it")),
        "{}",
        stderr(&out)
    );
    // What the killed run left goes with it.
    let out = repo
        .cmd()
        .args(["clean", "--run", &run_v, "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boxdelegate.run={run_v}"),
    ]);
    assert_eq!(left.trim(), "", "no container of the killed run left");
}
