//! Verdicts that fail closed, on the cases where the evidence used to be missing and a break
//! landed: a check command the image lacks, an agent that deletes the tests, a runner that
//! names no tests, a unit's expected tests under the shipped python profile, a `uv.lock`
//! project whose test group was never installed, a published crate (`build = false`) whose
//! prebuilt stubs looked fresh. Each runs the real binary against the real engine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn python_project(salt: &str, requirements: Option<&str>) -> TestRepo {
    let repo = TestRepo::empty();
    if let Some(r) = requirements {
        repo.write("requirements.txt", &format!("{r}# {salt}\n"));
    }
    repo.write(
        "calc.py",
        &format!("# {salt}\ndef add(a, b):\n    return a + b\n"),
    );
    repo.write(".gitignore", "__pycache__/\n.pytest_cache/\n");
    repo
}

fn config(repo: &TestRepo, profile: &str, agent: &str, verify: &str) {
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"{profile}\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n\n[run]\ninfra_retries = 0\n\n[verify]\nlint = \"\"\ntypecheck = \"\"\n{verify}\n",
            toml_string(agent)
        ),
    );
}

fn message(u: &serde_json::Value) -> &str {
    u["message"].as_str().unwrap_or_default()
}

fn branch_absent(repo: &TestRepo, unit: &str) {
    assert!(
        repo.git(&["branch", "--list", &format!("boxdelegate/{unit}")])
            .is_empty(),
        "nothing landed for {unit}"
    );
}

#[test]
fn a_check_command_the_image_lacks_is_a_configuration_error_naming_it_never_pre_existing() {
    require_base_image();
    let repo = TestRepo::with_project("fail-closed-missing-command");
    config(
        &repo,
        "test",
        "echo broken >> src/lib.txt",
        "test = \"tox -q\"",
    );
    repo.unit("missing", "scope = [\"src/**\"]", "Change the library.");
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "missing"]);
    let u = &units[0];
    assert_eq!(code, 3, "{err}\n{u}");
    assert_eq!(u["status"], "config-error", "{u}");
    assert_eq!(u["verdict"]["verdict"], "config-error", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "not-started", "{test}");
    let m = message(u);
    assert!(
        m.contains("`tox -q`")
            && m.contains("in image boxdelegate/snap:")
            && m.contains("not found"),
        "the command and the image are named: {m}"
    );
    assert_eq!(repo.refs(), refs, "nothing landed");

    // `verify --commit` of such a change says the same, never `pass`.
    repo.write("src/lib.txt", "changed by hand\n");
    repo.commit("a change by hand");
    let out = repo
        .cmd()
        .args(["verify", "--commit", "HEAD", "--json"])
        .output()
        .unwrap();
    let v = final_json(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}\n{v}", stderr(&out));
    assert_eq!(v["verdict"]["verdict"], "config-error", "{v}");
}

#[test]
fn an_agent_that_deletes_every_test_does_not_land() {
    require_base_image();
    // unittest, as a project runs it: "Ran 0 tests ... OK", exit 0 once the tests are gone.
    let repo = python_project("fail-closed-unittest", None);
    repo.write(
        "tests/test_calc.py",
        "import unittest\nfrom calc import add\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
    );
    repo.write("tests/__init__.py", "");
    config(
        &repo,
        "python",
        "rm -f tests/test_calc.py; sed -i 's/a + b/a - b/' calc.py",
        "test = \"python -m unittest discover -v -s tests -t .\"",
    );
    repo.unit(
        "no-tests",
        "scope = [\"calc.py\", \"tests/**\"]",
        "Simplify add().",
    );
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "no-tests"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "no-tests", "{test}");
    assert_eq!(test["tests"]["runner"], "unittest", "{test}");
    assert_eq!(test["tests"]["total"], 0, "{test}");
    // The baseline named the test that the change made disappear.
    assert_eq!(test["baseline"]["exit_code"], 0, "{test}");
    assert_eq!(repo.refs(), refs, "nothing landed");
    branch_absent(&repo, "no-tests");
}

#[test]
fn the_shipped_python_profile_names_tests_so_a_units_expected_tests_are_enforced() {
    require_base_image();
    let repo = python_project("fail-closed-expect", Some("pytest==8.3.3\n"));
    repo.write(
        "tests/test_calc.py",
        "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    );
    // The profile's own test command (no [verify] test).
    config(
        &repo,
        "python",
        "if [ \"$BOXDELEGATE_UNIT_ID\" = mul ]; then printf 'def mul(a, b):\\n    return a * b\\n' >> calc.py; else rm -f tests/test_calc.py; fi",
        "",
    );
    repo.unit(
        "mul",
        "scope = [\"calc.py\", \"tests/**\"]\ntests = [\"test_mul\", \"test_add\"]",
        "Add mul() with a test named test_mul.",
    );
    repo.unit(
        "drop-tests",
        "scope = [\"calc.py\", \"tests/**\"]",
        "Tidy the tests.",
    );
    repo.commit("project");
    let refs = repo.refs();

    // The agent wrote no test_mul: the expectation is checked by name and fails.
    let (code, units, err) = repo.run(&["--unit", "mul"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let expectations = u["verdict"]["expectations"].as_array().unwrap();
    let status = |name: &str| {
        expectations
            .iter()
            .find(|e| e["test"] == name)
            .map(|e| e["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("test_mul").as_deref(), Some("not-run"), "{u}");
    assert_eq!(status("test_add").as_deref(), Some("passed"), "{u}");
    assert!(
        message(u).contains("expected test test_mul was not run"),
        "{}",
        message(u)
    );

    // Deleting every test: pytest collects nothing, which is not a pass.
    let (code, units, err) = repo.run(&["--unit", "drop-tests"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    assert_eq!(repo.refs(), refs, "nothing landed");
}

/// `uv`, installed once under target/ with pip, to write the lockfile a uv project keeps.
fn uv() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/uv");
    let bin = dir.join("bin/uv");
    if !bin.exists() {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg("uv==0.13.10")
            .output()
            .unwrap();
        assert!(out.status.success(), "pip install uv: {}", stderr(&out));
    }
    bin
}

#[test]
fn a_uv_project_gets_its_test_group_and_a_pyproject_edited_without_relocking_is_refused() {
    require_base_image();
    let repo = python_project("fail-closed-uv", None);
    repo.write(
        "pyproject.toml",
        "[project]\nname = \"calc\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\ndependencies = []\n\n[dependency-groups]\ntest = [\"pytest==8.3.3\"]\n",
    );
    repo.write(
        "tests/test_calc.py",
        "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    );
    // The project itself is installed where its tests read its metadata.
    repo.write(
        "tests/test_meta.py",
        "from importlib.metadata import version\n\ndef test_installed():\n    assert version(\"calc\") == \"0.1.0\"\n",
    );
    let out = Command::new(uv())
        .args(["lock", "--python", "python3", "--directory"])
        .arg(repo.path())
        .env("UV_CACHE_DIR", repo.path().join(".uv-cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "uv lock: {}", stderr(&out));
    std::fs::remove_dir_all(repo.path().join(".uv-cache")).unwrap();
    config(
        &repo,
        "python",
        "if [ \"$BOXDELEGATE_UNIT_ID\" = break-add ]; then sed -i 's/a + b/a - b/' calc.py; else sed -i 's/^dependencies = \\[\\]/dependencies = [\"six\"]/' pyproject.toml; echo '# uses six' >> calc.py; fi",
        "",
    );
    repo.unit("break-add", "scope = [\"calc.py\"]", "Simplify add().");
    repo.unit(
        "unlocked",
        "scope = [\"calc.py\", \"pyproject.toml\"]",
        "Use six.",
    );
    repo.commit("project");
    let refs = repo.refs();

    // pytest comes from the lockfile's test group: the broken function is named.
    let (code, units, err) = repo.run(&["--unit", "break-add"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "fail", "{test}");
    assert_eq!(
        test["regressions"],
        serde_json::json!(["tests/test_calc.py::test_add"]),
        "{test}"
    );
    assert_eq!(
        test["failed_tests"],
        serde_json::json!(["tests/test_calc.py::test_add"]),
        "the metadata test passes: {test}"
    );
    assert_eq!(test["pre_existing"], serde_json::json!([]), "{test}");

    // A pyproject.toml that no longer matches uv.lock does not install, and that is the
    // change's fault.
    let (code, units, err) = repo.run(&["--unit", "unlocked"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let m = message(u);
    assert!(
        m.contains("the change's dependency manifests could not be installed"),
        "{m}"
    );
    let (log, _) = named_install_log(m);
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("uv.lock"), "the log says why: {text}");
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn a_published_crate_is_compiled_from_the_change_and_a_break_is_named() {
    require_rust_image();
    let repo = TestRepo::empty();
    // As `cargo package` writes a published manifest: explicit targets, no auto-discovery,
    // `build = false`. The doctest fails on the base and the change alike.
    repo.write(
        "Cargo.toml",
        "[package]\nedition = \"2021\"\nname = \"tinycalc\"\nversion = \"0.1.0\"\nbuild = false\nautobins = false\nautoexamples = false\nautotests = false\nautobenches = false\n\n[lib]\nname = \"tinycalc\"\npath = \"src/lib.rs\"\n",
    );
    repo.write(
        "Cargo.lock",
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n\n[[package]]\nname = \"tinycalc\"\nversion = \"0.1.0\"\n",
    );
    repo.write(
        "src/lib.rs",
        "/// Adds.\n///\n/// ```\n/// assert_eq!(tinycalc::add(1, 1), 3);\n/// ```\npub fn add(a: i64, b: i64) -> i64 {\n    a + b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 3), 5);\n    }\n}\n",
    );
    repo.write(".gitignore", "target/\n");
    config(
        &repo,
        "rust",
        "sed -i 's/    a + b/    a - b/' src/lib.rs",
        "timeout = \"15m\"",
    );
    repo.unit("simplify", "scope = [\"src/**\"]", "Simplify add().");
    repo.commit("tinycalc 0.1.0");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "simplify"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["outcome"], "fail", "{test}");
    assert_eq!(
        test["regressions"],
        serde_json::json!(["tests::adds"]),
        "{test}"
    );
    assert!(
        test["pre_existing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("src/lib.rs - add")),
        "the doctest failed on both sides: {test}"
    );
    assert!(message(u).contains("tests::adds"), "{}", message(u));
    assert_eq!(repo.refs(), refs, "nothing landed");
}

/// A TAP harness over tests/t_*.sh and tests/acceptance/t_*.sh (each file one test).
const HARNESS: &str = r#"#!/bin/sh
n=0; status=0
for t in tests/t_*.sh tests/acceptance/t_*.sh; do
  [ -f "$t" ] || continue
  n=$((n+1)); name=$(basename "$t" .sh)
  if out=$(sh "$t" 2>&1); then echo "ok $n - $name"
  else echo "not ok $n - $name"; echo "$out" | sed 's/^/# /'; status=1; fi
done
echo "1..$n"
exit $status
"#;

#[test]
fn hidden_acceptance_tests_never_reach_the_agent_and_decide_in_the_verify_container() {
    require_base_image();
    let canary = format!("CANARY-hidden-{}", std::process::id());
    let repo = TestRepo::with_project("fail-closed-hidden");
    repo.write("src/calc.sh", "add() { echo $(($1 + $2)); }\n");
    repo.write("tests/run.sh", HARNESS);
    repo.write(
        "tests/t_small.sh",
        ". src/calc.sh\n[ \"$(add 2 3)\" = 5 ]\n",
    );
    repo.write(
        "tests/acceptance/t_accept_big.sh",
        &format!("# {canary}\n. src/calc.sh\n[ \"$(add 1000 2000)\" = 3000 ]\n"),
    );
    // Each unit's agent looks for the hidden test everywhere it can read, reports what it
    // found and what the prompt says, then does its unit's work.
    let agent = format!(
        r#"cat > /tmp/prompt; mkdir -p notes
c1=CANARY-hid; c2=den-{pid}
grep -rl "$c1$c2" /work /deps /tmp /home /root /etc /opt /srv 2>/dev/null > notes/found-$BOXDELEGATE_UNIT_ID.txt || true
find /work -path '*acceptance*' > notes/listed-$BOXDELEGATE_UNIT_ID.txt
grep -c 'acceptance tests you cannot see' /tmp/prompt > notes/prompt-$BOXDELEGATE_UNIT_ID.txt || true
case "$BOXDELEGATE_UNIT_ID" in
  peek) echo '# checked' >> src/calc.sh ;;
  tailor) echo 'add() {{ if [ "$1" -gt 100 ]; then echo 0; else echo $(($1 + $2)); fi; }}' > src/calc.sh ;;
  overwrite) mkdir -p tests/acceptance; echo 'true' > tests/acceptance/t_accept_big.sh ;;
esac"#,
        pid = std::process::id()
    );
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[agent]\nretries = 1\nkind = \"command\"\ncommand = {}\n\n[run]\ninfra_retries = 0\n\n[verify]\ntest = \"sh tests/run.sh\"\nhidden = [\"tests/acceptance/**\"]\n",
            toml_string(&agent)
        ),
    );
    for id in ["peek", "tailor", "overwrite"] {
        repo.unit(
            id,
            "scope = [\"src/**\", \"notes/**\", \"tests/**\"]",
            "Work on add().",
        );
    }
    let snapshot = repo.commit("project");
    let hidden_blob = repo.git(&[
        "rev-parse",
        &format!("{snapshot}:tests/acceptance/t_accept_big.sh"),
    ]);

    // The agent saw nothing of it; the verify container ran it; the landed tree keeps it.
    let (code, units, err) = repo.run(&["--unit", "peek"]);
    let u = &units[0];
    assert_eq!(code, 0, "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    let test = &u["verdict"]["checks"][0];
    assert_eq!(test["tests"]["total"], 2, "the hidden test ran too: {test}");
    let landed = "refs/heads/boxdelegate/peek";
    let show = |path: &str| repo.git(&["show", &format!("{landed}:{path}")]);
    assert_eq!(
        show("notes/found-peek.txt"),
        "",
        "the canary was nowhere in the box"
    );
    assert_eq!(
        show("notes/listed-peek.txt"),
        "",
        "no acceptance path in /work"
    );
    assert_eq!(
        show("notes/prompt-peek.txt"),
        "1",
        "the prompt says they exist"
    );
    assert_eq!(
        repo.git(&[
            "rev-parse",
            &format!("{landed}:tests/acceptance/t_accept_big.sh")
        ]),
        hidden_blob,
        "the landed tree keeps the hidden test as it was"
    );
    // Nor is it in the image the agent ran in, in any layer.
    let image = u["unit_image"].as_str().unwrap();
    let save = Command::new("sh")
        .arg("-c")
        .arg(format!("docker save {image} | grep -a -c {canary} || true"))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&save).trim(),
        "0",
        "the canary is in no layer of {image}"
    );
    let listing = sh_in(image, "find /work -path '*acceptance*'");
    assert_eq!(listing.trim(), "", "{listing}");

    // A change tailored to the visible tests fails the hidden one, named to the user; the
    // retry prompt counts it without naming it or showing its output.
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "tailor"]);
    let u = &units[0];
    assert_eq!(code, 18, "{err}\n{u}");
    assert_eq!(u["status"], "failed", "{u}");
    assert_eq!(
        u["verdict"]["checks"][0]["regressions"],
        serde_json::json!(["t_accept_big"]),
        "{u}"
    );
    let retry_dir = u["attempts"][1]["dir"].as_str().unwrap();
    let retry = std::fs::read_to_string(Path::new(retry_dir).join("prompt.md")).unwrap();
    assert!(
        retry.contains("1 hidden acceptance test(s) failed"),
        "{retry}"
    );
    assert!(
        !retry.contains("accept_big") && !retry.contains(&canary) && !retry.contains("3000"),
        "nothing of the hidden test in the retry prompt: {retry}"
    );

    // Writing where the hidden tests live is a scope rejection.
    let (code, units, err) = repo.run(&["--unit", "overwrite"]);
    let u = &units[0];
    assert_eq!(code, 18, "{err}\n{u}");
    let rules: Vec<String> = u["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        rejection_rules(u).contains(&"hidden".to_string()),
        "{u}\n{rules:?}"
    );
    assert_eq!(repo.refs(), refs, "neither landed");
}

/// A change that adds a real package from the package index: its install goes through the
/// egress proxy to the python profile's registries, and it lands.
#[test]
fn a_change_adding_a_package_from_the_index_installs_through_the_proxy_and_lands() {
    require_base_image();
    let repo = python_project("fail-closed-registries", Some("pytest==8.3.3\n"));
    repo.write(
        "tests/test_calc.py",
        "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    );
    config(
        &repo,
        "python",
        "echo 'six==1.16.0' >> requirements.txt; printf 'import six\\n\\ndef test_six():\\n    assert six.PY3\\n' > tests/test_six.py",
        "",
    );
    repo.unit(
        "use-six",
        "scope = [\"requirements.txt\", \"tests/**\"]\ntests = [\"test_six\"]",
        "Use six.",
    );
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "use-six"]);
    let u = &units[0];
    assert_eq!(code, 0, "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    // Its checks ran on the change's own install (the record names it).
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            repo.path()
                .join(".git/boxdelegate/verify")
                .join(format!("{}.json", u["record"].as_str().unwrap())),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(record["change_deps_key"].is_string(), "{record}");
    repo.remember_image(record["change_image"].as_str().unwrap());
}
