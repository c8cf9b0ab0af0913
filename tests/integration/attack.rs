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
    assert_hardened_on(c, "none");
}

/// [`assert_hardened`] for a container on network `network`.
fn assert_hardened_on(c: &serde_json::Value, network: &str) {
    let h = &c["HostConfig"];
    let name = c["Name"].as_str().unwrap_or_default();
    let id = c["Id"].as_str().unwrap();
    // Podman's Docker API lists the default capabilities it dropped, not `ALL`: what counts is
    // that none is left, read from the container's first process on every engine.
    if !on_podman() {
        assert_eq!(h["CapDrop"], serde_json::json!(["ALL"]), "{name}: {h}");
    }
    let status = docker(&["exec", id, "cat", "/proc/1/status"]);
    for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{name}: {line}");
    }
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
    // Podman's Docker API reports neither the log size limit nor the runtime it applied.
    if on_podman() {
        assert_eq!(
            podman_inspect(id, "{{.HostConfig.LogConfig.Size}}"),
            "10MB",
            "{name}"
        );
    } else {
        assert_eq!(h["LogConfig"]["Config"]["max-size"], "10m", "{name}");
    }
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
    if on_podman() && network != "none" {
        // Podman's Docker API says `bridge` for any bridge network; the attachments tell.
        assert!(
            c["NetworkSettings"]["Networks"].get(network).is_some(),
            "{name}: on {network}: {}",
            c["NetworkSettings"]["Networks"]
        );
    } else {
        assert_eq!(h["NetworkMode"], network, "{name}");
    }
    let runtime = if on_podman() {
        podman_inspect(id, "{{.OCIRuntime}}")
    } else {
        h["Runtime"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(runtime, "runc", "{name}: the configured runtime");
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
    wait_for("hardened", run_kind)
}

/// Waits for a running container of unit `unit` and kind `kind`.
fn wait_for(unit: &str, run_kind: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=boxdelegate.unit={unit}"),
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
            "[project]\nprofile = \"test\"\nruntime = \"runc\"\n[verify]\nbaseline = false\ntest = {}\n[agent]\nretries = 0\nkind = \"command\"\ntimeout = \"3m\"\ncommand = {}\n",
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
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    repo.remember_image(v["units"][0]["unit_image"].as_str().unwrap());
    assert_eq!(v["units"][0]["status"], "landed");
    assert_eq!(seen, ["agent", "verify"]);
}

/// Runs a hostile agent with `limits`; expects it stopped (`code`, `status`), nothing landed,
/// no container left and the host as it was.
fn contained(salt: &str, limits: &str, agent: &str, outcomes: &[(i32, &str)]) -> serde_json::Value {
    contained_for(salt, limits, "3s", agent, outcomes)
}

/// [`contained`] with the agent's timeout.
fn contained_for(
    salt: &str,
    limits: &str,
    timeout: &str,
    agent: &str,
    outcomes: &[(i32, &str)],
) -> serde_json::Value {
    require_base_image();
    let repo = TestRepo::with_project(salt);
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n[run]\ninfra_retries = 0\n[limits]\n{limits}\n[agent]\nretries = 0\nkind = \"command\"\ntimeout = \"{timeout}\"\ncommand = {}\n",
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

#[test]
fn empty_directories_count_as_the_disk_they_take() {
    // 40k empty directories: ~160 MiB of the host's disk, a few KB to the engine's count.
    // Where the writable layer is on this host its real usage is measured.
    // Measured where boxdelegate lists the writable layer on this host (a local Docker engine);
    // a remote engine's layer, or Podman's, is not read here, and there the engine's count of
    // bytes alone holds (docs/security.md says so).
    if on_podman() || std::env::var("DOCKER_HOST").is_ok_and(|h| h.starts_with("tcp://")) {
        return;
    }
    let u = contained_for(
        "attack-inodes",
        "disk = \"50m\"",
        "3m",
        "mkdir -p /tmp/d && cd /tmp/d && i=0; while :; do mkdir $i 2>/dev/null || true; i=$((i+1)); done",
        &[(16, "infra-error")],
    );
    assert_eq!(u["attempts"][0]["infra"], "disk", "{u}");
}

#[test]
fn a_disk_filler_is_stopped_at_the_disk_limit() {
    // 8 MiB files, a little at a time, for ever: only the disk limit (64 MiB) stops it, long
    // before the timeout.
    let u = contained_for(
        "attack-disk",
        "disk = \"64m\"",
        "3m",
        "i=0; while :; do head -c 8388608 /dev/zero > /tmp/fill$i; i=$((i+1)); sleep 0.05; done",
        &[(16, "infra-error")],
    );
    assert_eq!(u["attempts"][0]["infra"], "disk", "{u}");
    let message = u["message"].as_str().unwrap();
    assert!(
        message.contains("over the disk limit of 64 MiB"),
        "{message}"
    );
}

#[test]
fn with_network_none_the_agent_has_only_loopback() {
    require_base_image();
    let repo = TestRepo::with_project("attack-netnone");
    repo.agent("ls /sys/class/net > src/interfaces.txt");
    // A loosened limit is said on stderr and kept in the result.
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &format!("{config}[limits]\npids = 1024\n"),
    );
    repo.unit("netnone", "scope = [\"src/**\"]", "List the interfaces.");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "netnone"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        repo.git(&["show", "boxdelegate/netnone:src/interfaces.txt"]),
        "lo"
    );
    let warning = "limits.pids = 1024 loosens the default 512";
    assert!(err.contains(&format!("warning: {warning}")), "{err}");
    assert!(
        units[0]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == warning),
        "{}",
        units[0]
    );
}

/// Test servers of our own on a network of the test's: each serves `ok.txt` on 8000 and 8001.
pub(crate) struct Servers {
    pub(crate) network: String,
    pub(crate) names: Vec<String>,
}

impl Servers {
    pub(crate) fn start(salt: &str, names: &[&str]) -> Servers {
        let network = format!("bdtest-{salt}-{}", std::process::id());
        docker(&["network", "create", &network]);
        let servers = Servers {
            network: network.clone(),
            names: names
                .iter()
                .map(|n| format!("{n}-{}", std::process::id()))
                .collect(),
        };
        for name in &servers.names {
            docker(&[
                "run", "-d", "--rm", "--name", name, "--network", &network,
                "--label", "boxdelegate-test=server",
                "boxdelegate/python:bookworm", "sh", "-c",
                "cd /tmp && echo \"served by $(hostname)\" > ok.txt && (python3 -m http.server 8001 &) && exec python3 -m http.server 8000",
            ]);
        }
        servers
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", name])
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

#[test]
fn with_network_proxy_only_the_allowed_host_and_port_answer_and_refusals_are_reported() {
    require_base_image();
    let servers = Servers::start("proxy", &["allowed", "other"]);
    // The allowed host by the name the engine's DNS gives its address in reverse (PTR), so a
    // proxy that looked an IP literal up in reverse would take the IP for the allowed name.
    // (Docker's DNS names an address `container.network`; Podman's answers differently, and
    // there the plain name is allowed: an IP literal must be refused either way.)
    let (allowed, other) = (
        &if on_podman() {
            servers.names[0].clone()
        } else {
            format!("{}.{}", servers.names[0], servers.network)
        },
        &servers.names[1],
    );
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &servers.names[0],
    ])
    .trim()
    .to_string();
    assert!(!ip.is_empty(), "the allowed server's address");
    let repo = TestRepo::with_project("attack-proxy");
    // The agent waits for the test to inspect its container and the proxy's, then asks the
    // proxy (from HTTP_PROXY) for three URLs and tries one host directly, with bash's
    // /dev/tcp (the test image has no HTTP client), and writes down the status codes.
    let fetch = format!(
        r#"while [ ! -e /tmp/go ]; do sleep 0.1; done
p=${{HTTP_PROXY#http://}}; p=${{p%/}}
for url in http://{allowed}:8000/ok.txt http://{allowed}:8001/ok.txt http://{other}:8000/ok.txt http://{ip}:8000/ok.txt; do
  exec 3<>/dev/tcp/${{p%:*}}/${{p##*:}}
  printf 'GET %s HTTP/1.0\r\n\r\n' "$url" >&3
  echo "$url $(head -n1 <&3 | cut -d' ' -f2)" >> src/fetched.txt
  exec 3<&-
done
exec 3<>/dev/tcp/${{p%:*}}/${{p##*:}}
printf 'CONNECT {ip}:8000 HTTP/1.0\r\n\r\n' >&3
echo "CONNECT {ip}:8000 $(head -n1 <&3 | cut -d' ' -f2)" >> src/fetched.txt
exec 3<&-
if (exec 3<>/dev/tcp/{allowed}/8000) 2>/dev/null; then echo direct reached; else echo direct unreachable; fi >> src/fetched.txt"#
    );
    repo.write("fetch.sh", &fetch);
    repo.agent("bash fetch.sh");
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    let config = config.replace(
        "[agent]\n",
        &format!(
            "[agent]\nnetwork = \"proxy\"\nallow = [\"{allowed}:8000\"]\negress_network = \"{}\"\ntimeout = \"3m\"\n",
            servers.network
        ),
    );
    repo.write("boxdelegate.toml", &config);
    repo.unit("proxied", "scope = [\"src/**\"]", "Fetch.");
    repo.commit("project");
    let child = repo
        .cmd()
        .args(["run", "--json", "--unit", "proxied"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let agent = wait_for("proxied", "agent");
    let proxy = wait_for("proxied", "proxy");
    let a = inspect(&agent);
    let network = if on_podman() {
        let attached = a["NetworkSettings"]["Networks"].as_object().unwrap();
        assert_eq!(
            attached.len(),
            1,
            "the agent sits on one network: {attached:?}"
        );
        attached.keys().next().unwrap().clone()
    } else {
        a["HostConfig"]["NetworkMode"].as_str().unwrap().to_string()
    };
    assert_hardened_on(&a, &network);
    let p = inspect(&proxy);
    assert_hardened_on(&p, &network);
    assert_eq!(
        p["HostConfig"]["ReadonlyRootfs"], true,
        "the proxy's root is read-only"
    );
    let internal = docker(&["network", "inspect", &network, "--format", "{{.Internal}}"]);
    assert_eq!(
        internal.trim(),
        "true",
        "the agent's network has no way out"
    );
    docker(&["exec", &agent, "touch", "/tmp/go"]);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", stdout(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    let u = &v["units"][0];
    repo.remember_image(u["unit_image"].as_str().unwrap());
    assert_eq!(u["status"], "landed", "{u}");
    let fetched = repo.git(&["show", "boxdelegate/proxied:src/fetched.txt"]);
    assert_eq!(
        fetched,
        format!(
            "http://{allowed}:8000/ok.txt 200\nhttp://{allowed}:8001/ok.txt 403\nhttp://{other}:8000/ok.txt 403\nhttp://{ip}:8000/ok.txt 403\nCONNECT {ip}:8000 403\ndirect unreachable"
        ),
        "an allowed host's IP literal is not that host"
    );
    assert_eq!(
        u["network_refused"],
        serde_json::json!([
            format!("GET http://{allowed}:8001/ok.txt"),
            format!("GET http://{other}:8000/ok.txt"),
            format!("GET http://{ip}:8000/ok.txt"),
            format!("CONNECT {ip}:8000"),
        ]),
        "{u}"
    );
    let run = u["run_id"].as_str().unwrap();
    let label = format!("label=boxdelegate.run={run}");
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &label]),
        "",
        "no container left"
    );
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", &label]),
        "",
        "no network left"
    );
}

#[test]
fn an_unknown_runtime_is_refused_before_anything_runs() {
    require_base_image();
    let repo = TestRepo::with_project("attack-runtime");
    repo.agent("echo x > src/x.txt");
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &config.replace("[project]\n", "[project]\nruntime = \"no-such-runtime\"\n"),
    );
    repo.unit("rt", "scope = [\"src/**\"]", "Write.");
    repo.commit("project");
    let before = repo.host_state();
    let out = repo.cmd().args(["run", "--unit", "rt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("project.runtime: the engine has no runtime \"no-such-runtime\"")
            && err.contains("runc"),
        "{err}"
    );
    assert_eq!(repo.host_state(), before);
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
            for unit in ["hardened", "proxied"] {
                let ids = docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=boxdelegate.unit={unit}"),
                ]);
                for id in ids.lines() {
                    let _ = docker(&["rm", "-f", id]);
                }
            }
        }
    }
}

/// Every file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_secret_passed_to_the_agent_is_found_nowhere_it_could_leak() {
    use std::os::unix::fs::PermissionsExt;
    require_base_image();
    let secret = format!("s3cr3t-{}-canary", std::process::id());
    let repo = TestRepo::with_project("attack-secret");
    // One unit prints the secret and writes an ordinary file; the other writes the secret
    // into the repository. The check prints its whole environment.
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n[verify]\nbaseline = false\ntest = {}\n[agent]\nretries = 0\nkind = \"command\"\nenv = [\"BD_TEST_SECRET\"]\ncommand = {}\n[run]\ninfra_retries = 0\n",
            toml_string("env; echo '1 passed, 0 failed'"),
            toml_string(
                "echo \"token $BD_TEST_SECRET\"; echo \"token $BD_TEST_SECRET\" >&2; \
                 if [ \"$UNIT\" = leak ]; then echo \"$BD_TEST_SECRET\" > src/leak.txt; else echo fine > src/fine.txt; fi"
            ),
        ),
    );
    repo.write("units/.keep", "");
    for (id, unit) in [("printer", "print"), ("leaker", "leak")] {
        repo.write(
            &format!("units/{id}.md"),
            &format!("+++\nid = \"{id}\"\ntitle = \"Unit {id}\"\nscope = [\"src/**\"]\n+++\nUNIT={unit}\n"),
        );
    }
    // The unit's task reaches the agent as its prompt, on stdin; the command reads the mode
    // from it.
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &config.replace(
            "command = '''",
            "command = '''UNIT=$(grep -o 'UNIT=[a-z]*' | head -n1 | cut -d= -f2); ",
        ),
    );
    repo.commit("project");
    let out = repo
        .cmd()
        .env("BD_TEST_SECRET", &secret)
        .args(["run", "--json", "--unit", "printer", "--unit", "leaker"])
        .output()
        .unwrap();
    let (stdout_text, stderr_text) = (stdout(&out), stderr(&out));
    let v: serde_json::Value = crate::common::final_json(stdout_text.as_bytes());
    for u in v["units"].as_array().unwrap() {
        if let Some(i) = u["unit_image"].as_str() {
            repo.remember_image(i);
        }
    }
    let (printer, leaker) = (&v["units"][0], &v["units"][1]);
    assert_eq!(printer["status"], "landed", "{printer}\n{stderr_text}");
    assert_eq!(leaker["status"], "rejected", "{leaker}");
    assert_eq!(leaker["rejections"][0]["rule"], "secret", "{leaker}");
    assert!(leaker["patch"].is_null(), "no patch kept: {leaker}");
    // The secret did reach the agent: its log shows where it was, redacted.
    let log = std::fs::read_to_string(printer["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("token [redacted]"), "{log}");
    // The check printed its environment, without the secret's variable.
    let run_dir = repo.path().join(".git/boxdelegate");
    let mut files = Vec::new();
    files_under(&run_dir, &mut files);
    let verify_log = files
        .iter()
        .find(|f| f.ends_with("verify.log") && f.to_string_lossy().contains("printer"))
        .expect("a verify log");
    let verify_log = std::fs::read_to_string(verify_log).unwrap();
    assert!(
        verify_log.contains("PATH="),
        "the check printed its env: {verify_log}"
    );
    assert!(!verify_log.contains("BD_TEST_SECRET"), "{verify_log}");
    // Nowhere: run state (journal, logs, prompts, reports, patches, change lists), output,
    // the repository's history, the unit image.
    let mut leaks = Vec::new();
    for f in &files {
        if contains(&std::fs::read(f).unwrap(), &secret) {
            leaks.push(f.display().to_string());
        }
        if f.starts_with(run_dir.join("runs")) {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode & 0o077,
                0,
                "{} is private to the user ({mode:o})",
                f.display()
            );
        }
    }
    assert!(leaks.is_empty(), "the secret is in {leaks:?}");
    assert!(!stdout_text.contains(&secret) && !stderr_text.contains(&secret));
    let history = repo.git(&["log", "-p", "--all", "--format=%H %B"]);
    assert!(history.contains("fine"), "{history}");
    assert!(!history.contains(&secret), "{history}");
    let image = printer["unit_image"].as_str().unwrap();
    let saved = std::process::Command::new("docker")
        .args(["image", "save", image])
        .output()
        .unwrap();
    assert!(saved.status.success() && saved.stdout.len() > 1 << 20);
    assert!(
        !contains(&saved.stdout, &secret),
        "the secret is in an image layer"
    );
    let runs_mode = std::fs::metadata(
        run_dir
            .join("runs")
            .join(printer["run_id"].as_str().unwrap()),
    )
    .unwrap()
    .permissions()
    .mode();
    assert_eq!(runs_mode & 0o777, 0o700);
}
