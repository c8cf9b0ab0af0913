use crate::common::*;

#[test]
fn init_detects_the_profile_and_writes_config_and_unit() {
    let repo = TestRepo::empty();
    repo.write("Cargo.lock", "# lock\n");
    repo.write("requirements.txt", "six==1.16.0\n");
    let out = repo.cmd().arg("init").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("profile: rust (detected from Cargo.lock)"),
        "{}",
        stdout(&out)
    );
    let config = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    assert!(config.contains("profile = \"rust\""));
    assert!(config.contains("# "), "the config is commented");
    assert!(repo.path().join("units/example.md").is_file());
}

#[test]
fn init_detects_python_from_requirements() {
    let repo = TestRepo::empty();
    repo.write("requirements-dev.txt", "pytest\n");
    let out = repo.cmd().arg("init").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("profile: python"), "{}", stdout(&out));
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let repo = TestRepo::empty();
    repo.write("units/example.md", "mine\n");
    let before = repo.host_state();
    let out = repo.cmd().arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("units/example.md already exists"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("never overwrites"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, repo.host_state(), "no file written");
    assert!(!repo.path().join("boxdelegate.toml").exists());
}

#[test]
fn init_output_is_a_valid_config_for_the_other_commands() {
    let repo = TestRepo::empty();
    let out = repo
        .cmd()
        .args(["init", "--profile", "python"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // `doctor --json` parses the config and names the profile.
    let out = repo.cmd().args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["profile"], "python", "{v}");
}

#[test]
fn unit_new_ls_and_check() {
    let repo = TestRepo::with_project("unit-cmds");
    for i in 0..8 {
        repo.write(&format!("src/f{i}.txt"), "x\n");
    }
    repo.commit("files");
    let out = repo
        .cmd()
        .args(["unit", "new", "wide", "--scope", "src/**"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = repo
        .cmd()
        .args(["unit", "new", "narrow", "--scope", "src/f1.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = repo.cmd().args(["unit", "ls", "--json"]).output().unwrap();
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["narrow", "wide"]);
    let out = repo.cmd().args(["unit", "check"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("narrow: ok (1 file(s) in scope"), "{text}");
    assert!(
        text.contains("wide: warning: 9 files in scope (more than 6)"),
        "{text}"
    );
    // A scope glob that matches nothing is said, not passed as ok.
    repo.write(
        "units/typo.md",
        "+++\nid = \"typo\"\ntitle = \"t\"\nscope = [\"scr/**\"]\n+++\nx\n",
    );
    let out = repo.cmd().args(["unit", "check", "typo"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "typo: warning: scope \"scr/**\" matches no file at HEAD: right if the unit creates files there, else check it for a typo"
    );
    // A broken unit fails the check with its reason, said once.
    repo.write("units/bad.md", "+++\nid = \"bad\"\n+++\nx\n");
    let out = repo.cmd().args(["unit", "check", "bad"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("bad: error: units/bad.md"),
        "{}",
        stdout(&out)
    );
    assert!(!stderr(&out).contains("units/bad.md"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 unit file(s) invalid (listed above)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn doctor_checks_what_the_agent_needs_without_printing_a_credential() {
    require_base_image();
    let repo = TestRepo::with_project("doctor-agent");
    // A codex agent without its key, a missing codex image, and a network the engine lacks.
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"codex\"\ncodex_version = \"0.0.2\"\nenv = [\"CODEX_API_KEY\"]\nnetwork = \"bd-no-such-network\"\n",
    );
    repo.commit("codex");
    let out = repo
        .cmd()
        .args(["doctor", "--json"])
        .env_remove("CODEX_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let v = final_json(&out.stdout);
    let problems = v["problems"].to_string();
    for want in [
        "no credentials: CODEX_API_KEY is not set",
        "image boxdelegate/codex:0.0.2 is missing",
        "network \\\"bd-no-such-network\\\" does not exist",
    ] {
        assert!(problems.contains(want), "{want}: {problems}");
    }
    // With the key set: that problem is gone, and its value is printed nowhere.
    let key = "sk-doctor-value-canary";
    let out = repo
        .cmd()
        .args(["doctor", "--json"])
        .env("CODEX_API_KEY", key)
        .output()
        .unwrap();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("no credentials"), "{all}");
    assert!(!all.contains(key), "{all}");
}

#[test]
fn what_init_writes_runs_and_says_the_next_step() {
    require_base_image();
    // The test profile (base image, no network), so the run needs no toolchain image.
    let repo = TestRepo::empty();
    repo.write(".boxdelegate/profiles/test.toml", TEST_PROFILE);
    repo.write(
        "src/example/keep.txt",
        "a file the example's scope matches\n",
    );
    let out = repo
        .cmd()
        .args(["init", "--profile", "test"])
        .env_remove("CODEX_API_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("agent: none yet"), "{said}");
    assert!(
        said.contains("next:") && said.contains("boxdelegate run --unit example"),
        "{said}"
    );
    repo.commit("boxdelegate: units");
    // It runs: past planning, into a container, where the placeholder says what to do.
    let (code, units, err) = repo.run(&["--unit", "example"]);
    // (Its retries fail alike: exit 18, every attempt failed.)
    assert_eq!(
        code, 18,
        "the placeholder agent fails, nothing lands: {err}"
    );
    assert_eq!(units[0]["status"], "failed", "{units:?}");
    repo.remember_image(units[0]["unit_image"].as_str().unwrap());
    let log = std::fs::read_to_string(units[0]["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("no agent yet: set [agent] in boxdelegate.toml (docs/codex.md)"),
        "{log}"
    );
    // With a Codex key in the environment: codex behind the gateway, the variable's name only.
    let other = TestRepo::empty();
    let out = other
        .cmd()
        .args(["init", "--profile", "python"])
        .env("CODEX_API_KEY", "sk-init-test-secret-value")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(other.path().join("boxdelegate.toml")).unwrap();
    assert!(
        config.contains("kind = \"codex\"\nnetwork = \"proxy\"\nenv = [\"CODEX_API_KEY\"]"),
        "{config}"
    );
    assert!(!config.contains("sk-init-test"), "never the key's value");
    assert!(!stdout(&out).contains("sk-init-test"), "{}", stdout(&out));
}
