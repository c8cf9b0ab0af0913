//! Containment: the hardening every container gets (read from the engine's inspect data), and
//! hostile agents stopped by their limits with the host left as it was.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn inspect(id: &str) -> serde_json::Value {
    let out = docker(&["inspect", id]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// Asserts the default hardening on a running container's inspect data.
fn assert_hardened(c: &serde_json::Value) {
    let h = &c["HostConfig"];
    let name = c["Name"].as_str().unwrap_or_default();
    assert_eq!(h["CapDrop"], serde_json::json!(["ALL"]), "{name}: {h}");
    assert!(
        h["CapAdd"].is_null() || h["CapAdd"] == serde_json::json!([]),
        "{name}"
    );
    let opts: Vec<&str> = h["SecurityOpt"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(opts.contains(&"no-new-privileges"), "{name}: {opts:?}");
    assert!(
        !opts.iter().any(|o| o.contains("unconfined")),
        "the engine's default seccomp and AppArmor profiles stay on: {opts:?}"
    );
    assert_eq!(h["Privileged"], false, "{name}");
    assert_eq!(h["Init"], true, "{name}");
    let memory = h["Memory"].as_i64().unwrap();
    assert!(memory > 0, "{name}: a memory limit");
    assert_eq!(h["MemorySwap"].as_i64(), Some(memory), "{name}: no swap");
    assert!(h["PidsLimit"].as_i64().unwrap() > 0, "{name}: a pids limit");
    assert!(h["NanoCpus"].as_i64().unwrap() > 0, "{name}: a CPU limit");
    assert_eq!(h["LogConfig"]["Config"]["max-size"], "10m", "{name}");
    assert!(
        h["Binds"].is_null() || h["Binds"] == serde_json::json!([]),
        "{name}: no host path"
    );
    assert_eq!(c["Mounts"], serde_json::json!([]), "{name}: no mounts");
    for mode in [
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "CgroupnsMode",
    ] {
        assert_ne!(h[mode], "host", "{name}: {mode}");
    }
    assert_eq!(h["NetworkMode"], "none", "{name}");
    let user = c["Config"]["User"].as_str().unwrap_or_default();
    assert!(
        !user.is_empty() && user != "root" && !user.starts_with("0"),
        "{name}: a non-root user, got {user:?}"
    );
    assert!(
        !serde_json::to_string(c).unwrap().contains("docker.sock"),
        "{name}: never the engine socket"
    );
}

fn wait_for_container(run_kind: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            "label=boxdelegate.unit=hardened",
            "--filter",
            &format!("label=boxdelegate.kind={run_kind}"),
        ]);
        if !id.trim().is_empty() {
            return id.trim().lines().next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no running {run_kind} container appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_container_a_run_starts_has_the_default_hardening() {
    require_base_image();
    let repo = TestRepo::with_project("attack-hardening");
    // Agent and check each wait for a file the test puts in their container once it has
    // inspected it.
    let wait = "while [ ! -e /tmp/go ]; do sleep 0.1; done";
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n[verify]\nbaseline = false\ntest = {}\n[agent]\nretries = 0\nkind = \"command\"\ntimeout = \"3m\"\ncommand = {}\n",
            toml_string(&format!("{wait}; echo '1 passed, 0 failed'")),
            toml_string(&format!("{wait}; echo hardened > src/hardened.txt"))
        ),
    );
    repo.unit("hardened", "scope = [\"src/**\"]", "Write a file.");
    repo.commit("project");
    let child = repo
        .cmd()
        .args(["run", "--json", "--unit", "hardened"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let mut seen = Vec::new();
    for kind in ["agent", "verify"] {
        let id = wait_for_container(kind);
        let c = inspect(&id);
        assert_hardened(&c);
        seen.push(kind);
        docker(&["exec", &id, "touch", "/tmp/go"]);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    repo.remember_image(v["units"][0]["unit_image"].as_str().unwrap());
    assert_eq!(v["units"][0]["status"], "landed");
    assert_eq!(seen, ["agent", "verify"]);
}

/// Runs a hostile agent with `limits`; expects it stopped (`code`, `status`), nothing landed,
/// no container left and the host as it was.
fn contained(salt: &str, limits: &str, agent: &str, outcomes: &[(i32, &str)]) -> serde_json::Value {
    require_base_image();
    let repo = TestRepo::with_project(salt);
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n[run]\ninfra_retries = 0\n[limits]\n{limits}\n[agent]\nretries = 0\nkind = \"command\"\ntimeout = \"3s\"\ncommand = {}\n",
            toml_string(agent)
        ),
    );
    repo.unit("hostile", "scope = [\"src/**\"]", "Misbehave.");
    repo.commit("project");
    let before = repo.host_state();
    let (code, units, err) = repo.run(&["--unit", "hostile"]);
    let u = units[0].clone();
    assert!(
        outcomes
            .iter()
            .any(|(c, s)| *c == code && u["status"] == *s),
        "expected one of {outcomes:?}: {err}\n{u}"
    );
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=boxdelegate.run={}", u["run_id"].as_str().unwrap()),
        "--format",
        "{{.ID}}",
    ]);
    assert_eq!(left, "", "no container left");
    // The work tree, the index and the refs are as they were (run state lives in .git/boxdelegate).
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with(".git/boxdelegate") && !l.starts_with(".git/objects"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&repo.host_state()), strip(&before));
    u
}

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit_and_stopped() {
    // The bomb fills the pids limit. Either the agent's own shell then cannot fork and fails,
    // or the bomb runs on until the timeout kills the container; either way every process in
    // it ends and the host is untouched.
    contained(
        "attack-forkbomb",
        "pids = 64",
        "b() { b | b & }; b; sleep 60",
        &[(13, "agent-failed"), (12, "timeout")],
    );
}

#[test]
fn a_process_that_ignores_sigterm_is_killed_at_the_timeout() {
    let u = contained(
        "attack-sigterm",
        "",
        "trap '' TERM INT HUP; while :; do sleep 1; done",
        &[(12, "timeout")],
    );
    assert_eq!(u["attempts"][0]["infra"], "timeout", "{u}");
}

/// Kills the spawned boxdelegate and the containers of this test's unit when the test fails.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
            let ids = docker(&["ps", "-aq", "--filter", "label=boxdelegate.unit=hardened"]);
            for id in ids.lines() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}
