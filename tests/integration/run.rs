//! `boxdelegate run` with the command agent, against the real engine and real git.

use crate::common::*;

fn project(salt: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write("src/math.py", "def one():\n    return 1\n");
    repo.write("tests/spec.txt", "protected spec\n");
    repo.write("bin/tool.sh", "#!/bin/sh\necho tool\n");
    repo
}

#[test]
fn a_change_inside_the_scope_lands_as_exactly_one_commit() {
    require_base_image();
    let repo = project("run-lands");
    repo.agent("cat > /tmp/prompt-seen; printf 'def add(a, b):\\n    return a + b\\n' >> src/math.py; mkdir -p tests; printf 'assert add(1, 2) == 3\\n' > tests/test_add.py; mkdir -p target; echo junk > target/build.o; echo \"unit=$BOXDELEGATE_UNIT_ID title=$BOXDELEGATE_UNIT_TITLE\"; head -1 /tmp/prompt-seen");
    repo.unit(
        "add",
        "scope = [\"src/**\", \"tests/test_*.py\"]",
        "Add add(a, b) to src/math.py with a test.",
    );
    let snapshot = repo.commit("project");
    repo.write("untracked-note.txt", "mine\n");
    let index = std::fs::read(repo.path().join(".git/index")).unwrap();
    let status = repo.git(&["status", "--porcelain"]);
    let refs = repo.refs();

    let (code, units, err) = repo.run(&["--unit", "add"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let u = &units[0];
    assert_eq!(u["status"], "landed", "{u}");
    assert_eq!(
        u["files_changed"], 2,
        "the ignored build output is dropped: {u}"
    );

    let branch = "refs/heads/boxdelegate/add";
    let commit = repo.git(&["rev-parse", branch]);
    assert_eq!(
        repo.git(&["rev-list", "--count", &format!("{snapshot}..{commit}")]),
        "1"
    );
    assert_eq!(repo.git(&["rev-parse", &format!("{commit}^")]), snapshot);
    assert_eq!(
        repo.git(&["diff", "--name-status", &snapshot, &commit]),
        "M\tsrc/math.py\nA\ttests/test_add.py"
    );
    assert_eq!(
        repo.git(&["show", &format!("{commit}:src/math.py")]),
        "def one():\n    return 1\ndef add(a, b):\n    return a + b"
    );
    let msg = repo.git(&["log", "-1", "--format=%B", &commit]);
    assert!(msg.starts_with("Unit add\n\nAdd add(a, b)"), "{msg}");
    for trailer in [
        "Boxdelegate-Unit: add",
        "Boxdelegate-Agent: command",
        "Boxdelegate-Snapshot: ",
        "Boxdelegate-Patch-Sha256: ",
        "Boxdelegate-Verified: ",
        "Co-authored-by: ",
    ] {
        assert!(msg.contains(trailer), "{trailer} in {msg}");
    }
    // The user's side is untouched: work tree, index, other refs.
    assert_eq!(
        std::fs::read(repo.path().join(".git/index")).unwrap(),
        index
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), status);
    let mut expected: std::collections::BTreeSet<String> = refs.lines().map(String::from).collect();
    expected.insert(format!("{branch} {commit}"));
    let after: std::collections::BTreeSet<String> = repo.refs().lines().map(String::from).collect();
    assert_eq!(after, expected, "exactly one new ref, no other ref moved");
    // The agent saw its prompt on stdin and its environment.
    let log = std::fs::read_to_string(u["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("unit=add title=Unit add"), "{log}");
    assert!(log.contains("# Unit add"), "{log}");
    // No container is left.
    let left = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=boxdelegate.run={}", u["run_id"].as_str().unwrap()),
    ]);
    assert_eq!(left.trim(), "");

    // Running it again does not land a duplicate.
    let (code, units, err) = repo.run(&["--unit", "add"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(units[0]["status"], "already-landed");
    assert_eq!(repo.git(&["rev-parse", branch]), commit);
}

/// The lines a unit's kept patch adds to `file`, a file the agent created: how an agent
/// rejected for its scope hands back what it saw.
fn added_lines(unit: &serde_json::Value, file: &str) -> String {
    let patch = std::fs::read_to_string(unit["patch"].as_str().unwrap()).unwrap();
    let mut lines = patch.lines().skip_while(|l| *l != format!("+++ b/{file}"));
    lines.next();
    lines
        .skip_while(|l| l.starts_with("@@"))
        .take_while(|l| l.starts_with('+'))
        .map(|l| &l[1..])
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_prompt_quotes_the_snapshots_coding_standards_and_gotchas_and_only_those_it_holds() {
    require_base_image();
    let repo = project("run-prompt-files");
    repo.write("AGENTS.md", "Use four spaces, never tabs.\n");
    repo.write(
        ".boxdelegate/gotchas.md",
        "- The clock in tests is frozen.\n",
    );
    // The agent hands the prompt it was given back as its change.
    repo.agent("cat > src/prompt.txt");
    repo.unit("quoted", "scope = [\"nothing/**\"]", "Read the prompt.");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "quoted"]);
    assert_eq!(code, 10, "{err}\n{units:?}");
    let prompt = added_lines(&units[0], "src/prompt.txt");
    for expected in [
        "## Coding standards",
        "Use four spaces, never tabs.",
        "## Known gotchas",
        "The clock in tests is frozen.",
    ] {
        assert!(prompt.contains(expected), "{expected:?} in:\n{prompt}");
    }
    // Gone from the snapshot, gone from the prompt.
    repo.git(&["rm", "-q", "AGENTS.md", ".boxdelegate/gotchas.md"]);
    repo.commit("no standards");
    let (code, units, err) = repo.run(&["--unit", "quoted"]);
    assert_eq!(code, 10, "{err}\n{units:?}");
    let prompt = added_lines(&units[0], "src/prompt.txt");
    assert!(
        !prompt.contains("## Coding standards") && !prompt.contains("## Known gotchas"),
        "{prompt}"
    );
}

#[test]
fn the_agent_reads_its_whole_prompt_whether_it_rides_in_the_environment_or_is_uploaded() {
    require_base_image();
    let repo = project("run-prompt-ways");
    // What the agent got on stdin, whether the prompt is still in its environment, and the
    // prompt file's mode, handed back as its change.
    repo.agent(
        "sha256sum | cut -d' ' -f1 > src/prompt.sha; \
         (env | grep -c '^BOXDELEGATE_PROMPT=' || true) > src/env.txt; \
         stat -c %a /tmp/.boxdelegate-prompt.md > src/mode.txt",
    );
    repo.unit("short", "scope = [\"nothing/**\"]", "Read the prompt.");
    // Over the environment's limit for one string (128 KiB): uploaded instead.
    let long: String = (0..3000)
        .map(|i| format!("Line {i:04} of a long description, to be read whole.\n"))
        .collect();
    assert!(long.len() > 140 * 1024);
    repo.unit("long", "scope = [\"nothing/**\"]", &long);
    repo.commit("project");
    for id in ["short", "long"] {
        let (code, units, err) = repo.run(&["--unit", id]);
        assert_eq!(code, 10, "{err}\n{units:?}");
        let u = &units[0];
        let host = std::path::Path::new(u["attempt_dir"].as_str().unwrap()).join("prompt.md");
        let prompt = std::fs::read_to_string(&host).unwrap();
        if id == "long" {
            assert!(prompt.contains("Line 2999 of a long description"), "{id}");
        }
        let sha = std::process::Command::new("sha256sum")
            .arg(&host)
            .output()
            .unwrap();
        let sha = String::from_utf8_lossy(&sha.stdout);
        let sha = sha.split_whitespace().next().unwrap();
        assert_eq!(added_lines(u, "src/prompt.sha"), sha, "{id}: {u}");
        assert_eq!(added_lines(u, "src/env.txt"), "0", "{id}: {u}");
        assert_eq!(added_lines(u, "src/mode.txt"), "600", "{id}: {u}");
    }
}

#[test]
fn an_edit_outside_the_scope_is_rejected_and_its_patch_kept() {
    require_base_image();
    let repo = project("run-out-of-scope");
    repo.agent("echo changed >> README.md; echo 'def two(): return 2' >> src/math.py");
    let toml = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &format!("{toml}\n[verify]\ntest = \"echo '1 passed, 0 failed'\"\n"),
    );
    repo.unit("narrow", "scope = [\"src/**\"]", "Add two().");
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "narrow"]);
    assert_eq!(code, 10, "{err}");
    let u = &units[0];
    assert_eq!(u["status"], "rejected");
    let rej = u["rejections"].as_array().unwrap();
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0]["path"], "README.md");
    assert_eq!(rej[0]["rule"], "out-of-scope");
    assert!(
        rej[0]["message"]
            .as_str()
            .unwrap()
            .contains("allows only src/**"),
        "{rej:?}"
    );
    assert!(
        rej[0]["hint"].as_str().unwrap().contains("units/narrow.md"),
        "{rej:?}"
    );
    assert_eq!(repo.refs(), refs, "nothing landed");
    // The patch is kept and shown by `diff`.
    let out = repo.cmd().args(["diff", "narrow"]).output().unwrap();
    let patch = stdout(&out);
    assert!(
        patch.contains("+changed") && patch.contains("def two()"),
        "{patch}"
    );
    let show = repo.cmd().args(["show", "narrow"]).output().unwrap();
    let shown = stdout(&show);
    assert!(shown.contains("rejected"), "{shown}");
    assert_eq!(
        shown.matches("  patch: ").count(),
        1,
        "the patch once: {shown}"
    );
    assert_eq!(shown.matches("  log: ").count(), 1, "the log once: {shown}");
    // Widening the scope does not make the kept result landable: it was never verified, and
    // `apply` lands only a tree whose verification passed.
    repo.unit(
        "narrow",
        "scope = [\"src/**\", \"README.md\"]",
        "Add two().",
    );
    let out = repo
        .cmd()
        .args(["apply", "narrow", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["status"], "rejected", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.starts_with("not applied: its change was never verified")
            && message.contains("boxdelegate run --unit narrow --rerun"),
        "{v}"
    );
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn hostile_agent_writes_are_rejected_and_reach_nothing_outside() {
    require_base_image();
    let repo = project("run-hostile");
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    let attack = format!(
        r#"set -x
mkdir -p {o}; ln -s {o} src/escape-abs; echo pwned > src/escape-abs/canary
ln -s ../../../../etc src/escape-rel; echo pwned > src/escape-rel/hostile || true
mkdir -p src/linked; ln -s /etc/passwd src/linked/passwd
mkdir -p .git/hooks; printf '#!/bin/sh\necho owned\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit
mkdir -p src/nested/.git; echo '[core]' > src/nested/.git/config
echo x > "src/new
line"
echo x > "$(printf 'src/bad\377name')"
cp /bin/true src/suid; chmod 4755 src/suid
mkfifo src/fifo
chmod +x bin/tool-not-there 2>/dev/null; echo '#!/bin/sh' > src/run.sh; chmod +x src/run.sh
"#,
        o = outside.path().display()
    );
    repo.agent(&attack);
    repo.unit(
        "hostile",
        "scope = [\"src/**\", \"bin/**\", \".git/**\"]",
        "Be hostile.",
    );
    repo.commit("project");
    let refs = repo.refs();
    let hooks: Vec<_> = std::fs::read_dir(repo.path().join(".git/hooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let (code, units, err) = repo.run(&["--unit", "hostile"]);
    assert_eq!(code, 10, "{err}\n{units:?}");
    let rules: Vec<(String, String)> = units[0]["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (path, rule) in [
        ("src/escape-abs", "symlink-escape"),
        ("src/escape-rel", "symlink-escape"),
        ("src/linked/passwd", "symlink-escape"),
        (".git/hooks/pre-commit", "git-path"),
        ("src/nested/.git/config", "git-path"),
        ("src/new\\nline", "path-name"),
        ("src/bad\\xffname", "path-name"),
        ("src/suid", "setuid"),
        ("src/fifo", "special-file"),
        ("src/run.sh", "exec-bit"),
    ] {
        assert!(
            rules.contains(&(path.to_string(), rule.to_string())),
            "{path} {rule} missing from {rules:#?}"
        );
    }
    assert!(
        !canary.exists(),
        "nothing was written outside the repository"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert_eq!(repo.refs(), refs, "no ref moved");
    let hooks_after: Vec<_> = std::fs::read_dir(repo.path().join(".git/hooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(hooks, hooks_after, "the host's hooks are untouched");
}

#[test]
fn oversized_changes_are_stopped_by_the_limits() {
    require_base_image();
    let repo = project("run-limits");
    repo.unit(
        "sparse",
        "scope = [\"src/**\"]",
        "Write a huge sparse file.",
    );
    repo.unit("many", "scope = [\"src/**\"]", "Write 5000 files.");
    repo.unit("wipe", "scope = [\"src/**\"]", "Delete everything.");
    repo.unit("exec", "scope = [\"bin/**\"]", "Make a script executable.");
    repo.commit("project");
    let refs = repo.refs();
    let cases = [
        ("sparse", "truncate -s 2G src/big", "limit-bytes"),
        ("many", "mkdir -p src/many && cd src/many && seq 1 5000 | xargs touch", "limit-files"),
        ("wipe", "find . -mindepth 1 -maxdepth 1 -exec rm -rf {} +", "out-of-scope"),
        ("exec", "chmod +x bin/tool.sh && echo 'echo more' >> bin/tool.sh && chmod -x bin/tool.sh && chmod u+x bin/tool.sh", "exec-bit"),
    ];
    for (unit, command, rule) in cases {
        repo.agent(command);
        let (code, units, err) = repo.run(&["--unit", unit]);
        assert_eq!(code, 10, "{unit}: {err}\n{units:?}");
        let rules = rejection_rules(&units[0]);
        assert!(
            rules.iter().any(|r| r == rule),
            "{unit}: {rule} not in {rules:?}"
        );
        assert_eq!(repo.refs(), refs, "{unit}: no ref moved");
    }
}

#[test]
fn an_agent_that_outlives_its_timeout_is_killed() {
    require_base_image();
    let repo = project("run-timeout");
    repo.agent("echo started; exec sleep 600");
    repo.unit(
        "slow",
        "scope = [\"src/**\"]\ntimeout = \"2s\"",
        "Take forever.",
    );
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "slow"]);
    assert_eq!(code, 12, "{err}");
    assert_eq!(units[0]["status"], "timeout");
    assert!(units[0]["seconds"].as_f64().unwrap() < 60.0);
    let left = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!(
            "label=boxdelegate.run={}",
            units[0]["run_id"].as_str().unwrap()
        ),
    ]);
    assert_eq!(left.trim(), "", "no container left");
    assert_eq!(repo.refs(), refs);
}

#[test]
fn a_moved_branch_takes_non_overlapping_changes_and_refuses_overlapping_ones() {
    require_base_image();
    let repo = project("run-moved");
    repo.write("src/other.py", "x = 1\n");
    repo.agent("echo 'def two(): return 2' >> src/math.py");
    repo.unit("two", "scope = [\"src/**\"]", "Add two().");
    let base = repo.commit("project");
    // `target` moves past the snapshot with a change elsewhere…
    repo.git(&["branch", "target"]);
    repo.git(&["checkout", "-q", "target"]);
    repo.write("src/other.py", "x = 2\n");
    let moved = repo.commit("move target");
    repo.git(&["checkout", "-q", "main"]);
    let (code, units, err) = repo.run(&["--unit", "two", "--branch", "target"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let landed = repo.git(&["rev-parse", "target"]);
    assert_eq!(
        repo.git(&["rev-parse", &format!("{landed}^")]),
        moved,
        "on top of the moved head"
    );
    assert_eq!(
        repo.git(&["show", &format!("{landed}:src/other.py")]),
        "x = 2"
    );
    assert!(repo
        .git(&["show", &format!("{landed}:src/math.py")])
        .contains("def two()"));
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), base);

    // …and `clash` moves with an overlapping change.
    repo.git(&["branch", "clash", &base]);
    repo.git(&["checkout", "-q", "clash"]);
    repo.write(
        "src/math.py",
        "def one():\n    return 1\ndef three(): return 3\n",
    );
    let clash = repo.commit("clash");
    repo.git(&["checkout", "-q", "main"]);
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "two", "--branch", "clash", "--rerun"]);
    assert_eq!(code, 11, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "conflict");
    assert!(
        units[0]["message"]
            .as_str()
            .unwrap()
            .contains("src/math.py"),
        "{}",
        units[0]
    );
    assert_eq!(repo.git(&["rev-parse", "clash"]), clash, "nothing written");
    assert_eq!(repo.refs(), refs);
}

#[test]
fn landing_on_the_checked_out_branch_updates_a_clean_work_tree() {
    require_base_image();
    let repo = project("run-checked-out");
    repo.agent("echo 'def two(): return 2' >> src/math.py");
    repo.unit("two", "scope = [\"src/**\"]", "Add two().");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "two", "--branch", "main"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(
        repo.git(&["status", "--porcelain"]),
        "",
        "work tree and index follow the branch"
    );
    assert!(std::fs::read_to_string(repo.path().join("src/math.py"))
        .unwrap()
        .contains("def two()"));
}

#[test]
fn verification_in_a_clean_container_decides_what_lands() {
    require_base_image();
    let repo = project("run-verify");
    // The check needs the agent's function, and runs without network.
    repo.write(
        "boxdelegate.toml",
        "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\ncommand = '''echo 'def two(): return 2' >> src/math.py; echo polluted > /tmp/agent-was-here'''\n[verify]\ntest = '''grep -q 'def two' src/math.py && test ! -e /tmp/agent-was-here && ! getent hosts deb.debian.org && echo '1 passed, 0 failed' '''\n",
    );
    repo.unit("two", "scope = [\"src/**\"]", "Add two().");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "two"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "landed");
    assert_eq!(
        units[0]["verdict"]["checks"][0]["exit_code"], 0,
        "{}",
        units[0]
    );
    let landed = repo.git(&["rev-parse", "refs/heads/boxdelegate/two"]);
    let msg = repo.git(&["log", "-1", "--format=%B", &landed]);
    let tree = repo.git(&["rev-parse", &format!("{landed}^{{tree}}")]);
    assert!(
        msg.contains(&format!(
            "Boxdelegate-Verified: {tree} pass: test fixed (1 tests)"
        )),
        "the commit names the verification of its own tree: {msg}"
    );
    // Run again from the same snapshot: the agent makes the same change, which the branch
    // already holds. No second (empty) commit.
    let (code, units, err) = repo.run(&["--unit", "two", "--rerun"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "already-landed", "{}", units[0]);
    assert!(
        units[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("already-landed: boxdelegate/two already holds this change"),
        "{}",
        units[0]
    );
    assert_eq!(
        repo.git(&["rev-parse", "refs/heads/boxdelegate/two"]),
        landed,
        "no commit made"
    );

    // A failing check: nothing lands, the patch is kept, the tail is reported.
    repo.write("boxdelegate.toml", "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\ncommand = \"echo 'def three(): return 3' >> src/math.py\"\n[verify]\ntest = \"if grep -q three src/math.py; then echo 'FAILED test_three'; exit 4; fi; echo '1 passed, 0 failed'\"\n");
    repo.unit("three", "scope = [\"src/**\"]", "Add three().");
    repo.commit("three");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "three"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "verify-failed");
    assert_eq!(units[0]["verdict"]["checks"][0]["exit_code"], 4);
    assert!(
        units[0]["message"]
            .as_str()
            .unwrap()
            .contains("FAILED test_three"),
        "{}",
        units[0]
    );
    assert_eq!(repo.refs(), refs, "nothing landed");
    assert!(std::path::Path::new(units[0]["patch"].as_str().unwrap()).is_file());
    // `apply` of the failed result does not land it either.
    let out = repo
        .cmd()
        .args(["apply", "three", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(15), "{}", stderr(&out));
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["status"], "verify-failed", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("not applied: its verification says fail"),
        "{v}"
    );
    assert_eq!(repo.refs(), refs, "apply landed nothing");

    // A test command that exits 0 but ran zero tests is not a pass.
    repo.write("boxdelegate.toml", "[run]\ninfra_retries = 0\n[project]\nprofile = \"test\"\n[agent]\nretries = 0\ncommand = \"echo 'def four(): return 4' >> src/math.py\"\n[verify]\ntest = \"echo 'no tests ran in 0.01s'\"\n");
    repo.unit("four", "scope = [\"src/**\"]", "Add four().");
    repo.commit("four");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "four"]);
    assert_eq!(code, 15, "{err}\n{units:?}");
    assert!(
        units[0]["message"]
            .as_str()
            .unwrap()
            .contains("pytest ran zero tests"),
        "{}",
        units[0]
    );
    assert_eq!(units[0]["verdict"]["checks"][0]["tests"]["total"], 0);
    assert_eq!(units[0]["verdict"]["checks"][0]["outcome"], "no-tests");
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn a_unit_edited_but_not_committed_is_said_before_the_run() {
    require_base_image();
    let repo = TestRepo::with_project("uncommitted-unit");
    repo.agent("echo hi > src/hi.txt");
    repo.unit("u", "scope = [\"src/**\"]", "Say hi.");
    repo.commit("project");
    // Committed: nothing to say.
    let (code, units, err) = repo.run(&["--unit", "u", "--branch", "first"]);
    assert_eq!(code, 0, "{err}");
    repo.remember_image(units[0]["unit_image"].as_str().unwrap());
    assert!(!err.contains("from HEAD"), "{err}");
    // The task edited in the working tree only: said, naming the file.
    repo.unit("u", "scope = [\"src/**\"]", "Say hi, loudly.");
    let (code, _, err) = repo.run(&["--unit", "u", "--branch", "second"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: units/u.md differs from HEAD: run reads it from the working tree"),
        "{err}"
    );
}
