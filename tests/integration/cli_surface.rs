//! `logs`, `completions`, `man` and `plan import`, through the real binary.

use crate::common::*;

const PLAN: &str = include_str!("../fixtures/plan.md");
const PLAN_PATH: &str = "docs/plans/2026-03-02-password-login-plan.md";

fn plan_repo(salt: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write("src/app.py", "routes = {}\n");
    repo.write("src/health.py", "def health():\n    return 200\n");
    repo.write("src/auth/__init__.py", "");
    repo.write("docs/operations.md", "# Operations\n");
    repo.write(PLAN_PATH, PLAN);
    repo.commit("project with a plan");
    repo
}

fn unit_files(repo: &TestRepo) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.path().join("units"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn plan_import_writes_exactly_the_delegated_units_and_never_overwrites() {
    let repo = plan_repo("plan-import");

    // A dry run says what would be written and writes nothing.
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["plan", "import", PLAN_PATH, "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["plan"], PLAN_PATH);
    assert_eq!(v["units"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["units"][0]["file"], "units/password-hashing-helpers.md");
    assert_eq!(
        v["not_delegated"],
        serde_json::json!(["Operator documentation"])
    );
    assert_eq!(repo.host_state(), before, "a dry run writes nothing");

    let out = repo
        .cmd()
        .args(["plan", "import", PLAN_PATH])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("wrote units/password-hashing-helpers.md  scope: src/auth/hashing.py, tests/test_hashing.py"),
        "{text}"
    );
    assert!(
        text.contains("not marked external-delegate: Operator documentation"),
        "{text}"
    );
    assert_eq!(
        unit_files(&repo),
        ["login-endpoint.md", "password-hashing-helpers.md"],
        "exactly the two delegated units; the third is absent"
    );

    // The project's own unit parser reads them back: ids, titles and scopes.
    let out = repo.cmd().args(["unit", "ls", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let units: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        units,
        serde_json::json!([
            {"id": "login-endpoint", "title": "Login endpoint", "valid": true,
             "scope": ["src/app.py", "src/auth/**", "tests/test_login.py"]},
            {"id": "password-hashing-helpers", "title": "Password hashing helpers", "valid": true,
             "scope": ["src/auth/hashing.py", "tests/test_hashing.py"]},
        ])
    );
    let login = std::fs::read_to_string(repo.path().join("units/login-endpoint.md")).unwrap();
    assert!(
        login.contains("context = [\"src/health.py\"]"),
        "existing files under Patterns to follow become context: {login}"
    );
    assert!(
        login.contains("    \"R2. `POST /login` answers 200 with a session for a valid password, 401 otherwise.\",\n    \"`pytest tests/test_login.py` passes.\",\n]"),
        "requirements and verification become the definition of done: {login}"
    );
    assert!(
        login.contains("**Test scenarios:**\n- Happy path: a valid e-mail"),
        "test scenarios stay in the task: {login}"
    );
    assert!(!login.contains("external-delegate\n"), "{login}");
    assert!(!login.contains("**Files:**"), "{login}");
    let check = repo.cmd().args(["unit", "check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );

    // A second import refuses, names the file, and changes nothing.
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["plan", "import", PLAN_PATH])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: units/password-hashing-helpers.md already exists"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(repo.host_state(), before);

    // All or nothing: with one of the two files gone, the other still blocks the import.
    std::fs::remove_file(repo.path().join("units/login-endpoint.md")).unwrap();
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["plan", "import", PLAN_PATH])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert_eq!(
        repo.host_state(),
        before,
        "the missing file is not written either"
    );
}

#[test]
fn plan_import_names_the_section_without_files_and_writes_nothing() {
    let repo = plan_repo("plan-import-bad");
    repo.write(
        "plan.md",
        "# Plan\n\n## Unit 1: Tidy\n\n**Goal:** Tidy up.\n\n**Execution note:** Execution target: external-delegate\n",
    );
    let before = repo.host_state();
    let out = repo
        .cmd()
        .args(["plan", "import", "plan.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "error: plan.md: section \"Unit 1: Tidy\" (line 3) is marked external-delegate but names no files"
        ),
        "{err}"
    );
    assert!(err.contains("hint: add a `**Files:**` list"), "{err}");
    assert_eq!(repo.host_state(), before);

    let out = repo
        .cmd()
        .args(["plan", "import", "no-such-plan.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read the plan no-such-plan.md"));
    assert_eq!(repo.host_state(), before);
}

#[test]
fn logs_show_the_agent_and_verify_output_of_a_real_run() {
    require_base_image();
    let repo = TestRepo::with_project("logs");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[verify]\nbaseline = false\ntest = '''echo checking in the verify container; echo '1 passed, 0 failed' '''\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = '''echo agent says hello; echo more >> src/lib.txt'''\n\n[run]\ninfra_retries = 0\n",
    );
    repo.unit(
        "greet",
        "scope = [\"src/**\"]",
        "Append a line to src/lib.txt.",
    );
    repo.commit("project");

    // Before any run: a known unit without runs, and an unknown one.
    let before = repo.host_state();
    let out = repo.cmd().args(["logs", "greet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: unit greet has no recorded run in this repository"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.host_state(), before);

    let (code, units, err) = repo.run(&["--unit", "greet"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "landed", "{:?}", units[0]);
    let run_id = units[0]["run_id"].as_str().unwrap().to_string();

    let before = repo.host_state();
    for args in [
        vec!["logs", "greet"],
        vec!["logs", "greet", "--follow"],
        vec!["logs", "greet", "--run", &run_id, "--attempt", "1"],
    ] {
        let out = repo.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        let agent = text
            .find(&format!(
                "==> agent log: unit greet, run {run_id}, attempt 1 (command) <=="
            ))
            .unwrap_or_else(|| panic!("{args:?}: {text}"));
        let hello = text.find("agent says hello\n").expect(&text);
        let verify = text.find("==> verify log: unit greet, run").expect(&text);
        let checking = text
            .find("checking in the verify container\n")
            .expect(&text);
        assert!(
            agent < hello && hello < verify && verify < checking,
            "{text}"
        );
    }

    // Bad inputs: a clear message, exit 2, nothing changed.
    for (args, message) in [
        (
            vec!["logs", "nosuch"],
            "error: unknown unit \"nosuch\": no units/nosuch.md and no run with it",
        ),
        (
            vec!["logs", "greet", "--attempt", "2"],
            &*format!("error: run {run_id} has no attempt 2 of unit greet"),
        ),
        (
            vec!["logs", "greet", "--run", "1-0000"],
            "error: there is no run \"1-0000\" in this repository",
        ),
    ] {
        let out = repo.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    let out = repo.cmd().args(["logs", "nosuch"]).output().unwrap();
    assert!(
        stderr(&out).contains("hint: known units: greet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.host_state(), before);
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definitions() {
    // Neither needs a repository.
    let dir = tempfile::tempdir().unwrap();
    let out = boxdelegate()
        .current_dir(dir.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let bash = stdout(&out);
    assert!(bash.contains("complete -F _boxdelegate"), "{bash}");
    for sub in [
        "run",
        "verify",
        "status",
        "logs",
        "plan",
        "import",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "{sub} in the bash completions");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = boxdelegate()
            .current_dir(dir.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("logs"), "{shell}");
    }
    let out = boxdelegate()
        .current_dir(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = boxdelegate()
        .current_dir(dir.path())
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH boxdelegate 1"), "{page}");
    assert!(page.contains("plan"), "{page}");

    let pages = dir.path().join("man");
    let out = boxdelegate()
        .current_dir(dir.path())
        .args(["man", "--dir", "man"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "boxdelegate.1",
        "boxdelegate-logs.1",
        "boxdelegate-plan-import.1",
    ] {
        assert!(pages.join(name).is_file(), "{name}: {}", stdout(&out));
    }
}

#[test]
fn every_json_command_ends_with_an_error_object_when_it_fails() {
    // Outside a repository every one of them fails (doctor reports instead).
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.md");
    std::fs::write(&plan, "# Plan\n").unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["run", "--json", "--unit", "x"],
        vec!["resume", "--json"],
        vec!["status", "--json"],
        vec!["clean", "--json"],
        vec!["verify", "--json", "--commit", "HEAD"],
        vec!["show", "x", "--json"],
        vec!["apply", "x", "--json"],
        vec!["unit", "ls", "--json"],
        vec!["snapshot", "--json"],
        vec!["image", "build", "--json"],
        vec!["plan", "import", plan.to_str().unwrap(), "--json"],
        // An engine that does not answer.
        vec!["image", "ls", "--json", "--all-repositories"],
    ];
    for args in commands {
        let mut cmd = boxdelegate();
        if args[..2] == ["image", "ls"] {
            cmd.env("DOCKER_HOST", "unix:///nonexistent/boxdelegate-test.sock");
        }
        let out = cmd.current_dir(dir.path()).args(&args).output().unwrap();
        let code = out.status.code().unwrap();
        assert_ne!(code, 0, "{args:?} fails outside a repository");
        let v = crate::common::final_json_result(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: no final object ({e}): {}", stdout(&out)));
        assert_eq!(v["type"], "error", "{args:?}: {v}");
        assert_eq!(v["exit_code"], code, "{args:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {v}"
        );
        assert!(v.get("hint").is_some(), "{args:?}: {v}");
    }
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // The pipe's reading end is closed before the command starts (as `head -1`'s is once it has
    // its line): the command ends by SIGPIPE, as command-line tools do, never a panic (101).
    use std::os::unix::process::ExitStatusExt;
    for args in [&["doctor"][..], &["completions", "bash"][..], &["man"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = boxdelegate()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
    }
}
