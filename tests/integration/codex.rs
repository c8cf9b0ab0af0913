//! The real Codex CLI in a real agent container, against the scripted model server.
//!
//! The test creates an internal engine network (no route out); the server listens on the
//! network's host side, and the agent container joins that network only.

use std::process::Command;

use crate::common::*;
use crate::model_server::*;

const KEY: &str = "sk-test-boxdelegate-0123456789abcdef";
const OTHER_SECRET: &str = "other-secret-value-42424242";

/// An internal network, removed when dropped.
struct Network {
    name: String,
    gateway: std::net::IpAddr,
}

impl Network {
    fn create(salt: &str) -> Network {
        let name = format!("bd-test-{salt}-{}", std::process::id());
        let _ = Command::new("docker")
            .args(["network", "rm", &name])
            .output();
        docker(&["network", "create", "--internal", &name]);
        let gw = docker(&[
            "network",
            "inspect",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]);
        Network {
            name,
            gateway: gw.trim().parse().expect("a gateway address"),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

fn codex_project(salt: &str, net: &Network, server: &ModelServer) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write(
        "boxdelegate.toml",
        &format!(
            r#"[run]
infra_retries = 0

[project]
profile = "test"

[agent]
retries = 0
kind = "codex"
model = "gpt-5.5"
env = ["BD_MODEL_KEY", "BD_OTHER_SECRET"]
network = "{}"
timeout = "5m"

[agent.provider]
name = "scripted"
base_url = "{}"
env_key = "BD_MODEL_KEY"
max_retries = 0

[prices."gpt-5.5"]
input = 1.25
cached_input = 0.125
output = 10.0
"#,
            net.name,
            server.base_url()
        ),
    );
    repo.unit(
        "greet",
        "scope = [\"src/**\"]\ndone = [\"src/hello.txt says hello\"]",
        "Add src/hello.txt and mark src/lib.txt as edited.",
    );
    repo.commit("codex project");
    repo
}

fn run_codex(repo: &TestRepo, unit: &str) -> (i32, serde_json::Value, String) {
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", unit, "--rerun"])
        .env("BD_MODEL_KEY", KEY)
        .env("BD_OTHER_SECRET", OTHER_SECRET)
        .output()
        .unwrap();
    let v: serde_json::Value = crate::common::final_json_result(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}\n{}", stdout(&out), stderr(&out)));
    let u = v["units"][0].clone();
    if let Some(i) = u["unit_image"].as_str() {
        repo.remember_image(i);
    }
    (out.status.code().unwrap_or(-1), u, stderr(&out))
}

/// Every file under `dir`, read as text.
fn all_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(data) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
    out
}

#[test]
fn codex_lands_a_scripted_session_and_keeps_credentials_out_of_everything() {
    require_base_image();
    let net = Network::create("codex-ok");
    let server = ModelServer::start(net.gateway);
    let repo = codex_project("codex-ok", &net, &server);
    server.script(vec![
        (
            0,
            Step::Events(vec![
                apply_patch(
                    "c1",
                    "*** Begin Patch\n*** Add File: src/hello.txt\n+hello\n*** End Patch\n",
                ),
                exec_command("c2", "echo edited >> src/lib.txt"),
                completed("r1", 1000, 200, 40),
            ]),
        ),
        (
            2,
            Step::Events(vec![message("Done."), completed("r2", 1200, 1000, 10)]),
        ),
    ]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_eq!(code, 0, "{u}\n{err}");
    assert_eq!(u["status"], "landed", "{u}");
    let branch = "boxdelegate/greet";
    assert_eq!(
        repo.git(&["show", &format!("{branch}:src/hello.txt")]),
        "hello"
    );
    assert!(repo
        .git(&["show", &format!("{branch}:src/lib.txt")])
        .ends_with("edited"));
    // The scripted usage, summed over the turn, and its cost at the configured prices.
    let usage = &u["usage"];
    assert_eq!(usage["input_tokens"], 2200, "{u}");
    assert_eq!(usage["cached_input_tokens"], 1200, "{u}");
    assert_eq!(usage["output_tokens"], 50, "{u}");
    let cost = u["cost_usd"].as_f64().unwrap();
    let expected = (1000.0 * 1.25 + 1200.0 * 0.125 + 50.0 * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");

    // What reached the server: the task, the scope and the definition of done; a credential
    // only as the bearer token of the provider's key.
    let reqs = server.requests();
    let posts: Vec<&Request> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 2, "{reqs:?}");
    let first = &posts[0].body;
    for want in [
        "Add src/hello.txt and mark src/lib.txt as edited.",
        "src/**",
        "src/hello.txt says hello",
    ] {
        assert!(first.contains(want), "prompt lacks {want:?}");
    }
    for r in &reqs {
        assert!(
            !r.body.contains(KEY) && !r.body.contains(OTHER_SECRET),
            "a credential in a request body"
        );
        for (k, v) in &r.headers {
            assert!(!v.contains(OTHER_SECRET), "{k}");
            if k == "authorization" {
                assert_eq!(v, &format!("Bearer {KEY}"));
            } else {
                assert!(!v.contains(KEY), "{k}: {v}");
            }
        }
    }
    // Nothing stored or printed holds a credential.
    let state = all_text(&repo.path().join(".git/boxdelegate"));
    assert!(
        state.contains("Done.") || state.contains("hello"),
        "the state was read"
    );
    assert!(
        !state.contains(KEY) && !state.contains(OTHER_SECRET),
        "a credential in the run state"
    );
    assert!(!err.contains(KEY) && !u.to_string().contains(KEY));

    // No image boxdelegate built holds the credential, in any layer.
    let unit_image = u["unit_image"].as_str().unwrap();
    let deps_key = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"boxdelegate.deps-key\"}}",
        unit_image,
    ]);
    for image in [
        unit_image.to_string(),
        format!("boxdelegate/deps:{}", deps_key.trim()),
        "boxdelegate/codex:0.163.0".to_string(),
    ] {
        let scan = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save {image} | grep -a -c -e \"$1\" -e \"$2\""
            ))
            .arg("sh")
            .arg(KEY)
            .arg(OTHER_SECRET)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&scan.stdout).trim(),
            "0",
            "{image} holds a credential"
        );
    }
}

#[test]
fn the_codex_binaries_are_mounted_not_copied_and_count_against_no_disk_limit() {
    require_base_image();
    let net = Network::create("codex-mount");
    let server = ModelServer::start(net.gateway);
    let repo = codex_project("codex-mount", &net, &server);
    // The binaries are ~370 MB: copied into the writable layer, they alone would pass a 20 MB
    // disk limit at the watch's first look (the agent runs for over a second).
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &format!("{config}\n[limits]\ndisk = \"20m\"\n"),
    );
    repo.commit("a small disk limit");
    server.script(vec![
        (
            0,
            Step::Events(vec![
                exec_command("c1", "sleep 2.5; echo mounted > src/hello.txt; mount | grep -c ' /opt/boxdelegate ' > src/mounts.txt"),
                completed("r1", 100, 0, 10),
            ]),
        ),
        (
            1,
            Step::Events(vec![message("Done."), completed("r2", 100, 0, 5)]),
        ),
    ]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_eq!(code, 0, "{u}\n{err}");
    assert_eq!(u["status"], "landed", "{u}");
    assert_eq!(
        repo.git(&["show", "boxdelegate/greet:src/mounts.txt"]),
        "1",
        "/opt/boxdelegate is a mount in the agent container"
    );
    let image = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "boxdelegate/codex:0.163.0",
    ]);
    let from = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"boxdelegate.from-image\"}}",
        "boxdelegate-tools-boxdelegate-codex-0.163.0",
    ]);
    assert_eq!(
        from.trim(),
        image.trim(),
        "the volume was filled from the codex image"
    );
}

#[test]
fn a_unit_stops_retrying_once_its_attempts_reach_the_token_budget() {
    require_base_image();
    let net = Network::create("codex-budget");
    let server = ModelServer::start(net.gateway);
    let repo = codex_project("codex-budget", &net, &server);
    // Every attempt fails verification; three retries are allowed, but the first attempt
    // alone uses 1,050 tokens of a 1,000-token budget.
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    let config = config
        .replacen("\nretries = 0\n", "\nretries = 3\nmax_tokens = 1000\n", 1)
        .replace(
            "[project]\n",
            "[verify]\ntest = \"echo 'FAILED t'; echo '0 passed, 1 failed'; exit 1\"\n\n[project]\n",
        );
    repo.write("boxdelegate.toml", &config);
    repo.commit("a budget");
    server.script(vec![
        (
            0,
            Step::Events(vec![
                apply_patch(
                    "c1",
                    "*** Begin Patch\n*** Add File: src/hello.txt\n+hello\n*** End Patch\n",
                ),
                completed("r1", 1000, 0, 50),
            ]),
        ),
        (
            1,
            Step::Events(vec![message("Done."), completed("r2", 0, 0, 0)]),
        ),
    ]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_eq!(code, 18, "{u}\n{err}");
    assert_eq!(u["status"], "over-budget", "{u}");
    assert_eq!(
        u["attempts"].as_array().unwrap().len(),
        1,
        "no second attempt: {u}"
    );
    let m = u["message"].as_str().unwrap();
    assert!(
        m.contains("used 1050 tokens, [agent] max_tokens is 1000"),
        "{m}"
    );
    assert!(u["patch"].as_str().is_some(), "the patch is kept: {u}");
}

#[test]
fn codex_failures_are_classified() {
    require_base_image();
    let net = Network::create("codex-fail");
    let server = ModelServer::start(net.gateway);
    let repo = codex_project("codex-fail", &net, &server);
    let refs = repo.refs();

    server.script(vec![(0, Step::Status(401, "invalid api key"))]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_eq!(code, 13, "{u}\n{err}");
    assert_eq!(u["status"], "agent-failed", "{u}");
    assert_eq!(u["agent_failure"], "authentication", "{u}");
    assert!(
        u["message"].as_str().unwrap().contains("not retryable"),
        "{u}"
    );

    for (status, kind) in [(500, "server-error"), (429, "rate-limit")] {
        server.script(vec![(0, Step::Status(status, "scripted failure"))]);
        let (code, u, err) = run_codex(&repo, "greet");
        assert_eq!(code, 16, "{status}: {}\n{err}", u["message"]);
        assert_eq!(u["status"], "infra-error", "{u}");
        assert_eq!(u["agent_failure"], kind, "{u}");
    }

    // A stream cut before response.completed.
    server.script(vec![(0, Step::Events(vec![message("working on it")]))]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_ne!(code, 0, "{u}\n{err}");
    assert_eq!(u["agent_failure"], "stream", "{u}");
    assert!(!u["message"].as_str().unwrap().is_empty());

    // A session that changes nothing.
    server.script(vec![(
        0,
        Step::Events(vec![message("Nothing to do."), completed("r1", 10, 0, 2)]),
    )]);
    let (code, u, err) = run_codex(&repo, "greet");
    assert_eq!(code, 14, "{u}\n{err}");
    assert_eq!(u["status"], "no-change", "{u}");
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn a_missing_codex_credential_is_reported_before_any_container() {
    let net_name = "bd-test-missing-credential";
    let repo = TestRepo::with_project("codex-missing");
    repo.write(
        "boxdelegate.toml",
        &format!("[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\nkind = \"codex\"\nenv = [\"CODEX_API_KEY\"]\nnetwork = \"{net_name}\"\n"),
    );
    repo.unit("greet", "scope = [\"src/**\"]", "Greet.");
    repo.commit("project");
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["run", "--unit", "greet"])
        .env_remove("CODEX_API_KEY")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CODEX_API_KEY is not set"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.host_state(), before);

    // No credential configured at all.
    repo.write(
        "boxdelegate.toml",
        "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\nkind = \"codex\"\n",
    );
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["run", "--unit", "greet"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a credential"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.host_state(), before);
    // A Codex session variable is never forwarded.
    repo.write("boxdelegate.toml", "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\nkind = \"codex\"\nenv = [\"CODEX_API_KEY\", \"CODEX_THREAD_ID\"]\n");
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["run", "--unit", "greet"])
        .env("CODEX_API_KEY", "x")
        .env("CODEX_THREAD_ID", "t")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("never passed"), "{}", stderr(&out));
    assert_eq!(repo.host_state(), before);
}

#[test]
fn a_local_codex_binary_is_imported_and_its_version_checked() {
    require_base_image();
    let repo = TestRepo::with_project("codex-binary");
    // Not an executable: refused before the engine is used.
    let out = repo
        .cmd()
        .args(["image", "build", "codex", "--codex-binary", "README.md"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a Linux executable"),
        "{}",
        stderr(&out)
    );

    // The real binary, taken out of the codex image (built when missing, reused when present), under a
    // version it does not have: imported, run, refused, and the image removed again.
    let out = repo
        .cmd()
        .args(["image", "build", "codex"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let id = docker(&[
        "create",
        "boxdelegate/codex:0.163.0",
        "/opt/boxdelegate/codex/bin/codex",
    ]);
    let id = id.trim();
    docker(&[
        "cp",
        &format!("{id}:/opt/boxdelegate/codex/bin/codex"),
        dir.path().join("codex").to_str().unwrap(),
    ]);
    docker(&["rm", id]);
    let out = repo
        .cmd()
        .args(["image", "build", "codex", "--codex-version", "9.9.9-test"])
        .arg("--codex-binary")
        .arg(dir.path().join("codex"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not codex-cli 9.9.9-test"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        docker(&["images", "-q", "boxdelegate/codex:9.9.9-test"]).trim(),
        "",
        "the wrong image is removed"
    );
}

/// Removes a run's leftovers when a test fails while the run is going.
struct StopOnPanic(u32, &'static str);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args([&self.0.to_string()]).status();
            let ids = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=boxdelegate.unit={}", self.1),
            ]);
            for id in ids.lines().filter(|l| !l.trim().is_empty()) {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

/// A running container of unit `unit` and kind `kind`.
fn running(unit: &str, kind: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=boxdelegate.unit={unit}"),
            "--filter",
            &format!("label=boxdelegate.kind={kind}"),
        ]);
        if let Some(id) = id.lines().map(str::trim).find(|l| !l.is_empty()) {
            return id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running {kind} container appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With `network = "proxy"`, codex reaches its model through the proxy's gateway, which adds
/// the credential: the key is never in the agent container (its environment, `/proc`, its
/// files) or in `docker inspect` of it or of the proxy, nor in anything boxdelegate writes,
/// while the model server receives it as the bearer token; any other path or method through
/// the gateway is refused and listed in the result.
#[test]
fn the_model_gateway_holds_the_key_and_forwards_only_the_model_call() {
    require_base_image();
    let net = Network::create("codex-gateway");
    let server = ModelServer::start(net.gateway);
    let repo = TestRepo::with_project("codex-gateway");
    repo.write(
        "boxdelegate.toml",
        &format!(
            r#"[run]
infra_retries = 0

[project]
profile = "test"

[agent]
retries = 0
kind = "codex"
model = "gpt-5.5"
env = ["BD_MODEL_KEY"]
network = "proxy"
egress_network = "{}"
timeout = "5m"

[agent.provider]
name = "scripted"
base_url = "{}"
env_key = "BD_MODEL_KEY"
max_retries = 0
"#,
            net.name,
            server.base_url()
        ),
    );
    repo.unit("gated", "scope = [\"src/**\"]", "Probe the gateway.");
    repo.commit("codex project");
    // The agent waits for the test to look at its container, then asks the gateway for
    // another path and another method, writing down the status lines.
    let probe = r#"while [ ! -e /tmp/go ]; do sleep 0.1; done
for req in 'GET /v1/models' 'POST /v1/files' 'GET /v1/responses'; do
  exec 3<>/dev/tcp/boxdelegate-proxy/8080
  printf '%s HTTP/1.0\r\nContent-Length: 0\r\n\r\n' "$req" >&3
  echo "$req $(head -n1 <&3 | cut -d' ' -f2)" >> src/gateway.txt
  exec 3<&-
done
env | sort > src/env.txt"#;
    server.script(vec![
        (
            0,
            Step::Events(vec![exec_command("c1", probe), completed("r1", 100, 0, 10)]),
        ),
        (
            1,
            Step::Events(vec![message("Done."), completed("r2", 100, 0, 5)]),
        ),
    ]);
    let child = repo
        .cmd()
        .args(["run", "--json", "--unit", "gated"])
        .env("BD_MODEL_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = StopOnPanic(child.id(), "gated");
    let agent = running("gated", "agent");
    let proxy = running("gated", "proxy");
    for (what, id) in [("agent", &agent), ("proxy", &proxy)] {
        let inspect = docker(&["inspect", id]);
        assert!(
            !inspect.contains(KEY),
            "docker inspect of the {what} holds the key"
        );
    }
    let env = docker(&[
        "exec",
        &agent,
        "sh",
        "-c",
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
    ]);
    assert!(
        env.contains("BD_MODEL_KEY=boxdelegate-gateway"),
        "the agent's processes hold the dummy key: {env}"
    );
    assert!(
        !env.contains(KEY),
        "an agent process's environment holds the key"
    );
    let files = Command::new("docker")
        .args([
            "exec",
            &agent,
            "grep",
            "-rlsF",
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=dev",
            KEY,
            "/",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&files).trim().is_empty(),
        "files in the agent container hold the key: {}",
        stdout(&files)
    );
    docker(&["exec", &agent, "touch", "/tmp/go"]);
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = crate::common::final_json_result(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}\n{}", stdout(&out), stderr(&out)));
    let u = &v["units"][0];
    if let Some(i) = u["unit_image"].as_str() {
        repo.remember_image(i);
    }
    assert_eq!(u["status"], "landed", "{u}\n{}", stderr(&out));
    let gateway = repo.git(&["show", "boxdelegate/gated:src/gateway.txt"]);
    assert_eq!(
        gateway, "GET /v1/models 403\nPOST /v1/files 403\nGET /v1/responses 403",
        "only POST /v1/responses passes"
    );
    let refused: Vec<&str> = u["network_refused"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for want in ["GET", "POST"] {
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with(want) && r.contains("/v1/")),
            "{want} refused and listed: {refused:?}"
        );
    }
    assert!(
        refused.iter().any(|r| r.contains("/v1/models"))
            && refused.iter().any(|r| r.contains("/v1/files")),
        "{refused:?}"
    );
    let env = repo.git(&["show", "boxdelegate/gated:src/env.txt"]);
    assert!(!env.contains(KEY) && env.contains("BD_MODEL_KEY=boxdelegate-gateway"));
    // The server got the credential, as the bearer token of every model call.
    let reqs = server.requests();
    let posts: Vec<&Request> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 2, "{reqs:?}");
    for r in &posts {
        let auth: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(auth, [format!("Bearer {KEY}").as_str()], "{:?}", r.headers);
        assert_eq!(r.path, "/v1/responses");
    }
    // Nothing boxdelegate wrote or printed holds the key.
    let state = all_text(&repo.path().join(".git/boxdelegate"));
    assert!(!state.contains(KEY), "the run state holds the key");
    assert!(!stdout(&out).contains(KEY) && !stderr(&out).contains(KEY));
}

/// `doctor` tries the model provider from the network the agent reaches it from: a provider
/// that answers is no problem, one that does not is named.
#[test]
fn doctor_tells_whether_the_model_provider_answers_from_the_agents_network() {
    require_base_image();
    let net = Network::create("codex-doctor");
    let server = ModelServer::start(net.gateway);
    let repo = TestRepo::with_project("codex-doctor");
    let config = |base_url: &str| {
        repo.write(
            "boxdelegate.toml",
            &format!(
                "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"codex\"\nenv = [\"BD_MODEL_KEY\"]\nnetwork = \"{}\"\n\n[agent.provider]\nname = \"scripted\"\nbase_url = \"{base_url}\"\nenv_key = \"BD_MODEL_KEY\"\n",
                net.name
            ),
        );
    };
    let doctor = || {
        let out = repo
            .cmd()
            .args(["doctor", "--json"])
            .env("BD_MODEL_KEY", KEY)
            .output()
            .unwrap();
        final_json(&out.stdout)["problems"].to_string()
    };
    config(&server.base_url());
    let problems = doctor();
    assert!(!problems.contains("model provider"), "{problems}");
    // A port on the same address where nothing listens.
    let closed = std::net::TcpListener::bind((net.gateway, 0)).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    config(&format!("http://{}:{port}/v1", net.gateway));
    let problems = doctor();
    assert!(
        problems.contains(&format!(
            "the model provider {}:{port} does not answer from the engine network",
            net.gateway
        )),
        "{problems}"
    );
    // A probe that cannot run is not a provider that answers.
    let out = repo
        .cmd()
        .args(["doctor", "--json"])
        .env("BD_MODEL_KEY", KEY)
        .env("BOXDELEGATE_BASE_IMAGE", "boxdelegate/no-such-base:none")
        .output()
        .unwrap();
    let problems = final_json(&out.stdout)["problems"].to_string();
    assert!(
        problems.contains("could not try the model provider"),
        "{problems}"
    );
    // No probe container is left.
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=boxdelegate.kind=doctor-probe",
    ]);
    assert!(left.trim().is_empty(), "{left}");
}

/// A configuration the model gateway cannot serve is refused before anything runs, naming the
/// key, and never printing the credential; the repository is as it was.
#[test]
fn a_gateway_it_cannot_serve_is_refused_before_anything_runs() {
    let repo = TestRepo::with_project("codex-gateway-bad");
    repo.unit("u", "scope = [\"src/**\"]", "Anything.");
    let key_with_space = "sk-half key-canary";
    let cases: [(&str, &str, &str); 3] = [
        (
            "network = \"none\"\ngateway = true\n",
            KEY,
            "gateway applies only to kind = \"codex\" with network = \"proxy\"",
        ),
        (
            "network = \"proxy\"\n",
            key_with_space,
            "holds a space, a quote, a backslash or a control character",
        ),
        (
            "network = \"proxy\"\n[agent.provider]\nname = \"p\"\nbase_url = \"http://models.internal/v$1\"\nenv_key = \"CODEX_API_KEY\"\n",
            KEY,
            "the model gateway cannot forward to",
        ),
    ];
    for (agent, key, want) in cases {
        repo.write(
            "boxdelegate.toml",
            &format!("[project]\nprofile = \"test\"\n\n[agent]\nkind = \"codex\"\nenv = [\"CODEX_API_KEY\"]\n{agent}"),
        );
        repo.commit("config");
        let before = repo.host_state();
        let out = repo
            .cmd()
            .args(["run", "--unit", "u"])
            .env("CODEX_API_KEY", key)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{agent}: {err}");
        assert!(
            err.contains(want) && err.contains("hint:"),
            "{agent}: {err}"
        );
        assert!(!err.contains(key) && !stdout(&out).contains(key), "{err}");
        assert_eq!(repo.host_state(), before, "{agent}: the repository changed");
    }
}
