//! Verification: the clean verify container in `run`, and `boxdelegate verify` for CI, against
//! the real engine and real git.
//!
//! The sample project's tests are shell scripts run by a small TAP harness (`tests/run.sh`),
//! so the runner reports test names the way bats or prove would.

use std::process::{Command, Stdio};

use crate::common::*;

const HARNESS: &str = r#"#!/bin/sh
# TAP harness: every tests/t_*.sh is one test.
n=0; status=0
for t in tests/t_*.sh; do
  n=$((n+1)); name=$(basename "$t" .sh)
  if out=$(sh "$t" 2>&1); then echo "ok $n - $name"
  else echo "not ok $n - $name"; echo "$out" | sed 's/^/# /'; status=1; fi
done
echo "1..$n"
exit $status
"#;

/// A project whose `add` works and whose `mul` is broken (its test fails on the snapshot).
fn calc_project(salt: &str, verify: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write(
        "src/calc.sh",
        "add() { echo $(($1 + $2)); }\nmul() { echo $(($1 + $2)); }\n",
    );
    repo.write("tests/run.sh", HARNESS);
    repo.write(
        "tests/t_add.sh",
        ". src/calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\n",
    );
    repo.write(
        "tests/t_mul.sh",
        ". src/calc.sh\n[ \"$(mul 2 3)\" = 6 ] || { echo \"mul 2 3 gave $(mul 2 3)\"; exit 1; }\n",
    );
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n\n[verify]\ntest = \"sh tests/run.sh\"\n{verify}\n"
        ),
    );
    repo
}

/// Sets the agent command, keeping the rest of boxdelegate.toml.
fn set_agent(repo: &TestRepo, command: &str) {
    let path = repo.path().join("boxdelegate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = match text.find("\n[agent]") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    std::fs::write(
        &path,
        format!(
            "{text}\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n",
            toml_string(command)
        ),
    )
    .unwrap();
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn verdicts_tell_regressions_from_pre_existing_failures_and_fixes() {
    require_base_image();
    let repo = calc_project("verify-verdicts", "");
    repo.unit(
        "break-add",
        "scope = [\"src/**\"]",
        "Make add subtract (a bad change).",
    );
    repo.unit(
        "sub",
        "scope = [\"src/**\"]\ntests = [\"t_add\"]",
        "Add sub().",
    );
    repo.unit("fix-mul", "scope = [\"src/**\"]", "Fix mul().");
    repo.unit(
        "expects-more",
        "scope = [\"src/**\"]\ntests = [\"t_add\", \"t_sub\"]",
        "Add sub() and its test.",
    );
    repo.commit("project");

    // A change that breaks a test: verdict fail naming it, with the log tail; nothing lands.
    set_agent(
        &repo,
        "sed -i 's/add() { echo $(($1 + $2))/add() { echo $(($1 - $2))/' src/calc.sh",
    );
    repo.commit("agent: break add");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "break-add"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "verify-failed", "{u}");
    assert_eq!(u["verdict"]["verdict"], "fail");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "fail");
    assert_eq!(strings(&test["regressions"]), ["t_add"], "{test}");
    assert_eq!(strings(&test["pre_existing"]), ["t_mul"], "{test}");
    let message = u["message"].as_str().unwrap();
    assert!(message.contains("t_add"), "names the test: {message}");
    assert!(message.contains("add 2 3 gave -1"), "log tail: {message}");
    assert_eq!(repo.refs(), refs, "nothing landed");
    assert!(
        std::path::Path::new(u["patch"].as_str().unwrap()).is_file(),
        "the patch is kept"
    );
    assert_eq!(u["verdict"]["baseline"]["cached"], false);

    // A test that already failed on the snapshot is pre-existing and does not fail the unit; the
    // expected test is checked by name.
    set_agent(
        &repo,
        "printf 'sub() { echo $(($1 - $2)); }\\n' >> src/calc.sh",
    );
    repo.commit("agent: sub");
    let (code, units, err) = repo.run(&["--unit", "sub"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "landed", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "pre-existing", "{test}");
    assert_eq!(strings(&test["pre_existing"]), ["t_mul"]);
    assert_eq!(u["verdict"]["expectations"][0]["status"], "passed", "{u}");

    // A change that fixes it is reported fixed.
    set_agent(
        &repo,
        "sed -i 's/mul() { echo $(($1 + $2))/mul() { echo $(($1 * $2))/' src/calc.sh",
    );
    repo.commit("agent: fix mul");
    let (code, units, err) = repo.run(&["--unit", "fix-mul"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let test = &units[0]["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "fixed", "{test}");
    assert_eq!(strings(&test["fixed"]), ["t_mul"]);

    // An expected test that never ran fails the unit.
    set_agent(&repo, "printf 'sub() { echo 0; }\\n' >> src/calc.sh");
    repo.commit("agent: sub without its test");
    let (code, units, err) = repo.run(&["--unit", "expects-more"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    let v = &units[0]["verdict"];
    assert_eq!(v["expectations"][1]["test"], "t_sub");
    assert_eq!(v["expectations"][1]["status"], "not-run", "{v}");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("expected test t_sub was not run"),
        "{v}"
    );
}

#[test]
fn flaky_checks_are_rerun_and_the_baseline_is_cached() {
    require_base_image();
    let repo = calc_project("verify-flaky", "reruns = 2\n");
    // t_mul is fixed here so that the suite passes on the snapshot.
    repo.write(
        "src/calc.sh",
        "add() { echo $(($1 + $2)); }\nmul() { echo $(($1 * $2)); }\n",
    );
    // With the change, the first run of the suite fails once (state kept in the container).
    repo.write(
        "tests/t_flaky.sh",
        "if grep -q flaky src/calc.sh && [ ! -e /tmp/flaky-ran ]; then touch /tmp/flaky-ran; exit 1; fi\n",
    );
    repo.unit("flaky", "scope = [\"src/**\"]", "Add a comment.");
    repo.unit("again", "scope = [\"src/**\"]", "Add another comment.");
    set_agent(&repo, "echo '# flaky' >> src/calc.sh");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "flaky"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let test = &units[0]["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "flaky", "{test}");
    assert_eq!(strings(&test["flaky"]), ["t_flaky"]);
    assert_eq!(test["reruns"], 1);
    assert_eq!(units[0]["status"], "landed");
    assert_eq!(units[0]["verdict"]["baseline"]["cached"], false);

    // The same snapshot and checks: the baseline comes from the cache.
    let (code, units, err) = repo.run(&["--unit", "again"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(
        units[0]["verdict"]["baseline"]["cached"], true,
        "{}",
        units[0]
    );
}

#[test]
fn an_agent_that_edits_a_protected_test_is_checked_against_the_original() {
    require_base_image();
    let repo = calc_project("verify-protected", "");
    repo.unit(
        "cheat",
        "scope = [\"src/**\", \"tests/**\"]\nprotected = [\"tests/t_add.sh\"]",
        "Change add.",
    );
    // Breaks add, and "fixes" the test that would catch it.
    set_agent(
        &repo,
        "sed -i 's/+ $2))/- $2))/' src/calc.sh && echo 'exit 0' > tests/t_add.sh",
    );
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "cheat"]);
    assert_eq!(code, 10, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "rejected", "{u}");
    let rej = &u["rejections"][0];
    assert_eq!(rej["rule"], "protected", "{u}");
    assert_eq!(rej["path"], "tests/t_add.sh", "{u}");
    // The verify container ran the original test, which catches the broken add.
    let v = &u["verdict"];
    assert_eq!(strings(&v["restored"]), ["tests/t_add.sh"], "{v}");
    assert_eq!(strings(&v["checks"][0]["regressions"]), ["t_add"], "{v}");
    assert!(
        v["checks"][0]["tail"]
            .as_str()
            .unwrap()
            .contains("add 2 3 gave -1"),
        "{v}"
    );
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn the_verify_container_has_no_network_and_no_agent_secrets() {
    require_base_image();
    let repo = calc_project("verify-isolation", "");
    // The check proves its isolation from inside, then waits for the test to look at the
    // container from outside (the test releases it).
    let check = "test -z \"${BD_TEST_SECRET:-}\" && ! env | grep -q BD_TEST_SECRET && [ \"$(grep -c : /proc/net/dev)\" = 1 ] && grep -q 'lo:' /proc/net/dev && ! getent hosts deb.debian.org && while [ ! -e /tmp/released ]; do sleep 0.1; done && sh tests/run.sh";
    let text = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    std::fs::write(
        repo.path().join("boxdelegate.toml"),
        text.replace("test = \"sh tests/run.sh\"", &format!("test = {}", toml_string(check)))
            + "\n[agent]\nretries = 0\nkind = \"command\"\nenv = [\"BD_TEST_SECRET\"]\ncommand = '''test -n \"$BD_TEST_SECRET\" && echo '# touched' >> src/calc.sh'''\n",
    )
    .unwrap();
    repo.unit("iso", "scope = [\"src/**\"]", "Touch calc.");
    repo.commit("project");

    let mut child = KillOnDrop(Some(
        repo.cmd()
            .args(["run", "--json", "--unit", "iso"])
            .env("BD_TEST_SECRET", "s3cr3t-value")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Each verify-phase container (baseline, then the change) is inspected while its check
    // waits, then released.
    let mut inspected = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while child.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "run did not finish");
        let ids = docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            "label=boxdelegate.unit=iso",
            "--filter",
            "status=running",
        ]);
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if inspected.iter().any(|(i, _): &(String, String)| i == id) {
                continue;
            }
            let kind = docker(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"boxdelegate.kind\"}}",
                id,
            ])
            .trim()
            .to_string();
            if kind == "agent" {
                continue;
            }
            // Wait for the check to be running (an exec), not just the container.
            let top = Command::new("docker")
                .args(["top", id, "-eo", "pid,args"])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&top.stdout).contains("released") {
                continue;
            }
            let net = docker(&["inspect", "--format", "{{.HostConfig.NetworkMode}} {{len .NetworkSettings.Networks}} {{.Config.NetworkDisabled}}", id]);
            // Podman's Docker API does not report NetworkDisabled; the interfaces tell on every
            // engine.
            let expected = if on_podman() {
                "none 0 false"
            } else {
                "none 0 true"
            };
            assert_eq!(net.trim(), expected, "{kind} container {id}");
            let interfaces: Vec<String> = docker(&["exec", id, "cat", "/proc/net/dev"])
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(|i| i.trim().to_string())
                .collect();
            assert_eq!(interfaces, ["lo"], "{kind} container {id}");
            let env = docker(&["inspect", "--format", "{{json .Config.Env}}", id]);
            assert!(
                !env.contains("BD_TEST_SECRET") && !env.contains("s3cr3t"),
                "{kind}: {env}"
            );
            docker(&["exec", id, "touch", "/tmp/released"]);
            inspected.push((id.to_string(), kind));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (out, v) = finished(&repo, child.0.take().unwrap());
    let u = &v["units"][0];
    assert_eq!(out.status.code(), Some(0), "{u}\n{}", stderr(&out));
    assert_eq!(u["status"], "landed");
    let kinds: Vec<&str> = inspected.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["baseline", "verify"],
        "both containers were looked at"
    );
}

/// Stops the binary (which then removes its containers) when a test fails while it runs.
#[test]
fn the_verify_container_is_ready_while_the_agent_works_and_goes_when_unused() {
    require_base_image();
    let repo = calc_project("verify-standby", "");
    // The agent waits for the test: while it does, the verify container is already there.
    set_agent(
        &repo,
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo '# touched' >> src/calc.sh; case $BOXDELEGATE_UNIT_ID in wide) echo x > outside.txt ;; esac",
    );
    repo.unit("ready", "scope = [\"src/**\"]", "Touch calc.");
    repo.unit("wide", "scope = [\"src/**\"]", "Touch calc, and more.");
    repo.commit("project");
    for (unit, lands) in [("ready", true), ("wide", false)] {
        let mut child = KillOnDrop(Some(
            repo.cmd()
                .args(["run", "--json", "--unit", unit])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        let running = |kind: &str| {
            docker(&[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=boxdelegate.unit={unit}"),
                "--filter",
                &format!("label=boxdelegate.kind={kind}"),
                "--filter",
                "status=running",
            ])
            .trim()
            .to_string()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let (agent, verify) = loop {
            let (a, v) = (running("agent"), running("verify"));
            if !a.is_empty() && !v.is_empty() {
                break (a, v);
            }
            assert!(
                child.0.as_mut().unwrap().try_wait().unwrap().is_none(),
                "{unit}: the run ended before an agent and a verify container ran side by side"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{unit}: no verify container while the agent waits (agent: {a:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        // The one verify would make: the unit's image, no network, the change not in it yet.
        let image = |id: &str| docker(&["inspect", "--format", "{{.Config.Image}}", id]);
        assert_eq!(image(&verify), image(&agent), "{unit}");
        let net = docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &verify,
        ]);
        assert_eq!(net.trim(), "none", "{unit}");
        let calc = docker(&["exec", &verify, "cat", "/work/src/calc.sh"]);
        assert!(!calc.contains("touched"), "{unit}: {calc}");
        docker(&["exec", &agent, "touch", "/tmp/go"]);
        let (out, v) = finished(&repo, child.0.take().unwrap());
        let u = &v["units"][0];
        if lands {
            assert_eq!(out.status.code(), Some(0), "{u}\n{}", stderr(&out));
            assert_eq!(u["status"], "landed", "{u}");
            assert_eq!(u["verdict"]["verdict"], "pass", "{u}");
        } else {
            assert_eq!(u["status"], "rejected", "{u}");
            assert!(u["verdict"].is_null(), "never verified: {u}");
        }
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=boxdelegate.run={}", u["run_id"].as_str().unwrap()),
        ]);
        assert_eq!(
            left.trim(),
            "",
            "{unit}: every container removed, used or not"
        );
    }
}

/// Removes an image when dropped (declared before the repository built on it, so that it goes
/// after the repository's own images).
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn an_image_without_tar_gets_the_change_through_the_engine_instead() {
    require_base_image();
    // The change rides on the first check's exec, unpacked by the image's own tar; an image
    // with none falls back on the archive API, and the check still sees the change.
    let guard = ImageGuard(format!("boxdelegate-test/notar:{}", std::process::id()));
    // Built from a Dockerfile rather than committed from a container: Podman's Docker API
    // refuses the Docker CLI's commit request.
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM boxdelegate/base:bookworm\nUSER root\nRUN rm -f /bin/tar /usr/bin/tar && ! command -v tar\nUSER box\n",
    )
    .unwrap();
    let out = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &guard.0])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "docker build: {}", stderr(&out));
    let repo = TestRepo::with_project("verify-notar");
    repo.write(
        ".boxdelegate/profiles/test.toml",
        &TEST_PROFILE.replace("boxdelegate/base:bookworm", &guard.0),
    );
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n[run]\ninfra_retries = 0\n[verify]\nbaseline = false\ntest = \"grep -q 'changed by the agent' src/lib.txt && echo '1 passed, 0 failed'\"\n[agent]\nretries = 0\nkind = \"command\"\ncommand = \"echo 'changed by the agent' >> src/lib.txt\"\n",
    );
    repo.unit("notar", "scope = [\"src/**\"]", "Change lib.");
    repo.commit("project");
    let (code, v, err) = repo.run_value(&["--unit", "notar"]);
    assert_eq!(code, 0, "{err}\n{v}");
    let u = &v["units"][0];
    assert_eq!(u["status"], "landed", "{u}");
    assert_eq!(u["verdict"]["checks"][0]["outcome"], "pass", "{u}");
    let dir = std::path::Path::new(u["attempt_dir"].as_str().unwrap());
    let log = std::fs::read_to_string(dir.join("verify.log")).unwrap();
    // The marker is ours, never part of what the check is judged by.
    assert!(
        !u["verdict"]
            .to_string()
            .contains("boxdelegate-unpack-failed"),
        "{u}"
    );
    // Podman gets the change through the archive API from the start.
    assert_eq!(
        log.contains("could not unpack the change"),
        !on_podman(),
        "{log}"
    );
    drop(repo);
    drop(guard);
}

/// Waits for a `run --json` started in `repo`: its output and final JSON, the unit image
/// remembered so that it is removed with the repository.
fn finished(
    repo: &TestRepo,
    child: std::process::Child,
) -> (std::process::Output, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = crate::common::final_json_result(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    if let Some(i) = v["units"][0]["unit_image"].as_str() {
        repo.remember_image(i);
    }
    (out, v)
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // SIGINT: the binary removes the containers it started, then exits.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_check_that_outlives_its_timeout_is_killed() {
    require_base_image();
    let repo = calc_project("verify-timeout", "timeout = \"2s\"\n");
    repo.write(
        "src/calc.sh",
        "add() { echo $(($1 + $2)); }\nmul() { echo $(($1 * $2)); }\n",
    );
    repo.write(
        "tests/t_slow.sh",
        "if grep -q slow src/calc.sh; then sleep 600; fi\n",
    );
    repo.unit("slow", "scope = [\"src/**\"]", "Make it slow.");
    set_agent(&repo, "echo '# slow' >> src/calc.sh");
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "slow"]);
    assert_eq!(code, 12, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "timeout", "{u}");
    assert_eq!(u["verdict"]["verdict"], "timeout");
    assert_eq!(u["verdict"]["checks"][0]["outcome"], "timeout");
    assert_eq!(repo.refs(), refs);
    let run_id = u["run_id"].as_str().unwrap();
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boxdelegate.run={run_id}"),
    ]);
    assert_eq!(left.trim(), "", "the container was killed and removed");
}

#[test]
fn a_check_killed_for_memory_is_an_infrastructure_failure() {
    require_base_image();
    let repo = calc_project("verify-oom", "");
    let text = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    std::fs::write(
        repo.path().join("boxdelegate.toml"),
        text.replace(
            "test = \"sh tests/run.sh\"",
            "test = '''if grep -q hungry src/calc.sh; then exec tail /dev/zero; fi; sh tests/run.sh'''",
        ) + "\n[limits]\nmemory = \"96m\"\n",
    )
    .unwrap();
    repo.unit("hungry", "scope = [\"src/**\"]", "Eat memory.");
    set_agent(&repo, "echo '# hungry' >> src/calc.sh");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "hungry"]);
    assert_eq!(code, 16, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "infra-error", "{u}");
    assert_eq!(u["verdict"]["checks"][0]["outcome"], "infra-error", "{u}");
    assert!(
        u["message"]
            .as_str()
            .unwrap()
            .contains("says nothing about the change"),
        "{u}"
    );
}

#[test]
fn a_merged_tree_is_verified_again_before_it_lands() {
    require_base_image();
    let repo = calc_project("verify-merged", "");
    repo.write(
        "src/calc.sh",
        "add() { echo $(($1 + $2)); }\nmul() { echo $(($1 * $2)); }\n",
    );
    repo.unit(
        "square",
        "scope = [\"src/**\", \"tests/**\"]",
        "Add square() using mul.",
    );
    set_agent(
        &repo,
        "printf 'square() { mul $1 $1; }\\n' > src/square.sh && printf '. src/calc.sh; . src/square.sh; [ \"$(square 3)\" = 9 ]\\n' > tests/t_square.sh",
    );
    let base = repo.commit("project");
    // `target` moves on: mul is renamed to times. Each side passes alone; together they fail.
    repo.git(&["checkout", "-q", "-b", "target"]);
    repo.write(
        "src/calc.sh",
        "add() { echo $(($1 + $2)); }\ntimes() { echo $(($1 * $2)); }\n",
    );
    repo.write(
        "tests/t_mul.sh",
        ". src/calc.sh\n[ \"$(times 2 3)\" = 6 ]\n",
    );
    let moved = repo.commit("rename mul to times");
    repo.git(&["checkout", "-q", "main"]);
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), base);
    let (code, units, err) = repo.run(&["--unit", "square", "--branch", "target"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "verify-failed", "{u}");
    assert_eq!(
        u["verdict"]["verdict"], "pass",
        "the unit's own tree passed"
    );
    assert_eq!(
        strings(&u["merged_verdict"]["checks"][0]["regressions"]),
        ["t_square"],
        "{u}"
    );
    assert_eq!(repo.git(&["rev-parse", "target"]), moved, "nothing landed");

    // With merged = "trust" the merged tree lands unverified.
    let path = repo.path().join("boxdelegate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[verify]\n", "[verify]\nmerged = \"trust\"\n"),
    )
    .unwrap();
    let (code, units, err) = repo.run(&["--unit", "square", "--branch", "target"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert!(units[0]["merged_verdict"].is_null());
    assert_eq!(repo.git(&["rev-parse", "target^"]), moved);
}

#[test]
fn verify_commit_on_a_fresh_clone_agrees_with_the_run_and_its_replay() {
    require_base_image();
    let repo = calc_project("verify-commit", "");
    repo.unit(
        "sub",
        "scope = [\"src/**\"]\ntests = [\"t_add\"]",
        "Add sub().",
    );
    set_agent(
        &repo,
        "printf 'sub() { echo $(($1 - $2)); }\\n' >> src/calc.sh",
    );
    let base = repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "sub"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let run_verdict = units[0]["verdict"].clone();
    let unit_image = units[0]["unit_image"].as_str().unwrap().to_string();
    let deps_key = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"boxdelegate.deps-key\"}}",
        &unit_image,
    ])
    .trim()
    .to_string();

    // The landed commit names its record; in the repository that landed it, the commit
    // itself replays.
    let named = repo.git(&[
        "log",
        "-1",
        "--format=%(trailers:key=Boxdelegate-Record,valueonly)",
        "boxdelegate/sub",
    ]);
    let hex = named
        .trim()
        .strip_prefix("sha256:")
        .expect("a record trailer");
    assert_eq!(units[0]["record"], hex, "{named}");
    let verify_in = |dir: &std::path::Path, args: &[&str]| {
        let out = boxdelegate()
            .current_dir(dir)
            .arg("verify")
            .args(args)
            .output()
            .unwrap();
        let v: serde_json::Value = crate::common::final_json_result(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
        (out.status.code().unwrap_or(-1), v)
    };
    let in_repo = |args: &[&str]| verify_in(repo.path(), args);
    let (code, replayed) = in_repo(&["--replay", "boxdelegate/sub", "--json"]);
    assert_eq!(code, 0, "{replayed}");
    assert_eq!(replayed["replay"]["matches"], true, "{replayed}");
    assert_eq!(replayed["replay"]["record_sha256"], hex);
    assert_eq!(replayed["change"]["tree"], units[0]["tree"]);
    assert_eq!(replayed["base"]["commit"], base.as_str());
    // A stored record changed after the landing is refused, not replayed.
    let stored = repo
        .path()
        .join(".git/boxdelegate/verify")
        .join(format!("{hex}.json"));
    let original = std::fs::read(&stored).unwrap();
    let mut edited: serde_json::Value = serde_json::from_slice(&original).unwrap();
    edited["expect"] = serde_json::json!([]);
    std::fs::write(&stored, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let (code, answer) = in_repo(&["--replay", "boxdelegate/sub", "--json"]);
    assert_eq!(code, 2, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no longer hashes to the name commit"),
        "{answer}"
    );
    std::fs::write(&stored, &original).unwrap();
    // A commit boxdelegate did not land names no record.
    let (code, answer) = in_repo(&["--replay", &base, "--json"]);
    assert_eq!(code, 2, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("was not landed by boxdelegate"),
        "{answer}"
    );

    // A clean checkout elsewhere, with only the base image in the engine.
    let clone = tempfile::Builder::new()
        .prefix("bd-clone-")
        .tempdir()
        .unwrap();
    let mut git = Command::new("git");
    git_env(&mut git);
    let st = git
        .args(["clone", "-q", "--no-local"])
        .arg(repo.path())
        .arg(clone.path())
        .status()
        .unwrap();
    assert!(st.success());
    // The clone is a repository of its own: its claims on images go with it.
    let _claims = ReleaseClaims(clone.path().to_path_buf());
    docker(&["rmi", &unit_image, &format!("boxdelegate/deps:{deps_key}")]);

    let verify = |args: &[&str]| verify_in(clone.path(), args);
    let record_path = clone.path().join("record.json");
    let junit_path = clone.path().join("junit.xml");
    let (code, rec) = verify(&[
        "--commit",
        "origin/boxdelegate/sub",
        "--json",
        "--record",
        record_path.to_str().unwrap(),
        "--junit",
        junit_path.to_str().unwrap(),
    ]);
    repo.remember_image(rec["unit_image"].as_str().unwrap());
    assert_eq!(code, 0, "{rec}");
    assert_eq!(rec["base"]["commit"], base.as_str());
    assert_eq!(rec["change"]["tree"], units[0]["tree"]);
    assert_eq!(
        rec["unit"], "sub",
        "the unit comes from the commit's trailer"
    );
    assert_eq!(rec["deps_key"], deps_key.as_str());
    assert!(!rec["engine"]["version"].as_str().unwrap().is_empty());
    let v = &rec["verdict"];
    assert_eq!(v["verdict"], run_verdict["verdict"]);
    assert_eq!(
        v["summary"], run_verdict["summary"],
        "the same verdict as the run"
    );
    for key in [
        "outcome",
        "exit_code",
        "regressions",
        "pre_existing",
        "fixed",
        "failed_tests",
    ] {
        assert_eq!(v["checks"][0][key], run_verdict["checks"][0][key], "{key}");
    }
    assert_eq!(v["expectations"], run_verdict["expectations"]);
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    assert!(
        junit.contains("<testsuites") && junit.contains("t_mul"),
        "{junit}"
    );

    // The record replays to the same verdict.
    let (code, replayed) = verify(&[
        "--replay",
        record_path.to_str().unwrap(),
        "--json",
        "--record",
        clone.path().join("replay.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{replayed}");
    assert_eq!(replayed["replay"]["matches"], true, "{replayed}");

    // A patch of the same change against the same base gives the same verdict.
    let patch = clone.path().join("change.patch");
    let mut git = Command::new("git");
    git_env(&mut git);
    let diff = git
        .current_dir(clone.path())
        .args(["diff", &base, "origin/boxdelegate/sub"])
        .output()
        .unwrap();
    std::fs::write(&patch, &diff.stdout).unwrap();
    let (code, p) = verify(&[
        "--patch",
        patch.to_str().unwrap(),
        "--base",
        &base,
        "--json",
    ]);
    assert_eq!(code, 0, "{p}");
    assert_eq!(p["change"]["tree"], rec["change"]["tree"]);
    assert_eq!(
        p["verdict"]["checks"][0]["outcome"],
        v["checks"][0]["outcome"]
    );

    // The clone lacks the record: said plainly, not a pass.
    let (code, answer) = verify(&["--replay", "origin/boxdelegate/sub", "--json"]);
    assert_eq!(code, 2, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("is not among this repository's records"),
        "{answer}"
    );
    // A record whose verdict no longer holds: the replay says so.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    tampered["verdict"]["verdict"] = "fail".into();
    tampered["verdict"]["checks"][0]["outcome"] = "fail".into();
    let tampered_path = clone.path().join("tampered.json");
    std::fs::write(&tampered_path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let (code, replayed) = verify(&["--replay", tampered_path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 17, "{replayed}");
    assert_eq!(replayed["replay"]["matches"], false);
}

#[test]
fn bad_verify_inputs_fail_before_the_engine_and_change_nothing() {
    let repo = calc_project("verify-bad", "");
    let base = repo.commit("project");
    let other = calc_project("verify-bad-other", "");
    other.write("src/other.sh", "x\n");
    other.commit("other");
    // A record of the other repository.
    let record = serde_json::json!({
        "schema": 1, "boxdelegate_version": "0", "engine": {"version": "", "api_version": "", "os": ""},
        "created": 0,
        "base": {"commit": other.git(&["rev-parse", "HEAD"]), "tree": other.git(&["rev-parse", "HEAD^{tree}"])},
        "change": {"commit": null, "tree": other.git(&["rev-parse", "HEAD^{tree}"])},
        "patch_sha256": null, "unit": null, "protected": [], "expect": [], "profile": "test",
        "deps_key": "", "deps_image": "", "deps_image_id": "", "unit_image": "", "unit_image_id": "",
        "checks": [], "settings": {"timeout_secs": 60, "reruns": 0, "baseline": true},
        "verdict": {"verdict": "pass", "passed": true, "tree": "", "restored": [], "checks": [], "expectations": [], "baseline": null, "summary": ""},
        "replay": null
    });
    let outside = tempfile::tempdir().unwrap();
    let record_path = outside.path().join("other.json");
    std::fs::write(&record_path, record.to_string()).unwrap();
    let bad_patch = outside.path().join("bad.patch");
    std::fs::write(
        &bad_patch,
        "diff --git a/src/calc.sh b/src/calc.sh\n--- a/src/calc.sh\n+++ b/src/calc.sh\n@@ -1,2 +1,2 @@\n-this line is not there\n+nor this one\n mul() { echo $(($1 + $2)); }\n",
    )
    .unwrap();

    // Commits whose trailers name a record this repository lacks, or no sha256 at all.
    let forge = |branch: &str, record: &str| {
        let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
        let commit = repo.git(&[
            "commit-tree",
            &tree,
            "-p",
            "HEAD",
            "-m",
            &format!("forged\n\nBoxdelegate-Unit: u\nBoxdelegate-Record: {record}"),
        ]);
        repo.git(&["update-ref", &format!("refs/heads/{branch}"), &commit]);
    };
    forge("missing-record", &format!("sha256:{}", "a".repeat(64)));
    forge("odd-record", "sha256:../../etc/passwd");
    let before = repo.host_state();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--replay".into(), "HEAD".into()],
            "was not landed by boxdelegate",
        ),
        (
            vec!["--replay".into(), "no-such-branch".into()],
            "is neither a record file nor a commit",
        ),
        (
            vec!["--replay".into(), "missing-record".into()],
            "is not among this repository's records",
        ),
        (
            vec!["--replay".into(), "odd-record".into()],
            "which is not a sha256:<hex> name",
        ),
        (
            vec!["--commit".into(), "no-such-rev".into()],
            "unknown revision \"no-such-rev\"",
        ),
        (
            vec![
                "--commit".into(),
                "HEAD".into(),
                "--base".into(),
                "nope~3".into(),
            ],
            "--base: unknown revision",
        ),
        (
            vec![
                "--patch".into(),
                bad_patch.display().to_string(),
                "--base".into(),
                base.clone(),
            ],
            "does not apply to the base",
        ),
        (
            vec![
                "--patch".into(),
                outside.path().join("missing.patch").display().to_string(),
                "--base".into(),
                "HEAD".into(),
            ],
            "cannot read",
        ),
        (
            vec!["--replay".into(), record_path.display().to_string()],
            "is not a record of this repository",
        ),
        (
            vec!["--replay".into(), bad_patch.display().to_string()],
            "is not a verification record",
        ),
    ];
    for (args, want) in cases {
        let out = repo
            .cmd()
            .arg("verify")
            .args(&args)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.contains("hint:"), "{args:?}: {err}");
        assert_eq!(repo.host_state(), before, "{args:?} changed the repository");
    }
    // --patch without --base is a usage error from the parser itself.
    let out = repo
        .cmd()
        .args(["verify", "--patch", "x.patch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--base"), "{}", stderr(&out));
}

#[test]
fn a_check_that_did_not_run_is_reported_skipped_never_passed() {
    require_base_image();
    // The lint runs only while lint.ok exists; otherwise it says why and exits 77.
    let repo = calc_project(
        "verify-skipped",
        "lint = \"if [ -f lint.ok ]; then true; else echo 'lint skipped: lint.ok is gone' >&2; exit 77; fi\"\ntypecheck = \"echo 'typecheck skipped: no checker here' >&2; exit 77\"\n",
    );
    repo.write("lint.ok", "");
    repo.unit("sub", "scope = [\"src/**\"]", "Add sub().");
    repo.unit(
        "unlint",
        "scope = [\"src/**\", \"lint.ok\"]",
        "Remove the lint.",
    );
    set_agent(
        &repo,
        "printf 'sub() { echo $(($1 - $2)); }\\n' >> src/calc.sh",
    );
    repo.commit("project");

    // A check that does not run (here on the base and with the change) lets the change land,
    // and every record of it says skipped, with why.
    let (code, units, err) = repo.run(&["--unit", "sub"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let v = &units[0]["verdict"];
    let typecheck = &v["checks"][2];
    assert_eq!(typecheck["name"], "typecheck", "{v}");
    assert_eq!(typecheck["outcome"], "skipped", "{typecheck}");
    assert_eq!(typecheck["note"], "typecheck skipped: no checker here");
    let lint = &v["checks"][1];
    assert_eq!(lint["outcome"], "pass", "{lint}");
    assert!(lint["note"].is_null(), "a lint is no test runner: {lint}");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("typecheck skipped (no checker here)"),
        "{summary}"
    );
    assert!(!summary.contains("typecheck pass"), "{summary}");
    assert!(!summary.contains("lint pass ["), "{summary}");

    let junit = repo.path().join(".git/junit.xml");
    let out = boxdelegate()
        .current_dir(repo.path())
        .args(["verify", "--commit", "boxdelegate/sub", "--json", "--junit"])
        .arg(&junit)
        .output()
        .unwrap();
    let rec = crate::common::final_json_result(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    repo.remember_image(rec["unit_image"].as_str().unwrap());
    assert_eq!(out.status.code(), Some(0), "{rec}");
    assert_eq!(rec["verdict"]["checks"][2]["outcome"], "skipped", "{rec}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let case = &xml[xml.find("name=\"typecheck\"").expect("a typecheck case")..];
    let case = &case[..case.find("</testcase>").unwrap()];
    assert!(case.contains("<skipped"), "{case}");
    assert!(!case.contains("<failure"), "{case}");

    // Skipped with the change but run on the base: the change took what the check needs.
    set_agent(&repo, "rm lint.ok");
    repo.commit("agent: remove the lint");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "unlint"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    let lint = &units[0]["verdict"]["checks"][1];
    assert_eq!(lint["outcome"], "fail", "{lint}");
    assert!(
        lint["note"].as_str().unwrap().contains("ran on the base"),
        "{lint}"
    );
    assert_eq!(repo.refs(), refs);
}
