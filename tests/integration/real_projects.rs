//! The pipeline on code nobody here wrote: a source distribution from PyPI (python-dateutil,
//! src layout, its own pytest suite of ~2,000 tests) and a crate from the Rust crate registry
//! (either, its unit tests and doctests), fetched at test time, made into git repositories, and
//! taken through `init`, the real dependency install, a command agent applying a real change,
//! the project's own test command in the clean container, and landing; and a change that
//! breaks a test, rejected naming it.
//!
//! Downloads are cached by content (their sha256 is pinned here) under `target/real-projects`;
//! the dependency and unit images are removed when each test ends (the real install takes
//! seconds, not minutes, for these two).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use crate::common::*;

/// Where fetched archives are kept between runs.
fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-projects");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `file` in the cache, fetched by `fetch` (which writes into the directory it is given) when
/// absent; its sha256 must be `sha256`.
fn cached(file: &str, sha256: &str, fetch: impl FnOnce(&Path)) -> PathBuf {
    let path = cache_dir().join(file);
    if !path.exists() || sha256_of(&path) != sha256 {
        let tmp = tempfile::tempdir_in(cache_dir()).unwrap();
        fetch(tmp.path());
        let got = tmp.path().join(file);
        assert!(got.exists(), "fetching {file} wrote nothing");
        assert_eq!(sha256_of(&got), sha256, "{file}: not the pinned release");
        std::fs::rename(got, &path).unwrap();
    }
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An sdist from PyPI, through pip (the index this machine reaches).
fn sdist(name: &str, version: &str, file: &str, sha256: &str) -> PathBuf {
    cached(file, sha256, |dir| {
        run_ok(
            Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps"])
                .args(["--no-binary", ":all:", "--dest"])
                .arg(dir)
                .arg(format!("{name}=={version}")),
        );
    })
}

/// A `.crate` from the Rust crate registry.
fn crate_file(name: &str, version: &str, sha256: &str) -> PathBuf {
    let file = format!("{name}-{version}.crate");
    cached(&file, sha256, |dir| {
        run_ok(
            Command::new("curl")
                .args(["-sSfL", "--retry", "3", "-o"])
                .arg(dir.join(&file))
                .arg(format!(
                    "https://static.crates.io/crates/{name}/{name}-{version}.crate"
                )),
        );
    })
}

/// Unpacks a release archive (one top directory) into `into`.
fn unpack(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(archive)
            .args(["--strip-components=1", "--no-same-owner", "-C"])
            .arg(into),
    );
}

/// The unified diff from `old` to `new` (files or directories), with `a/` `b/` paths relative
/// to them, as a person would paste it into a task.
fn diff(old: &Path, new: &Path, rel: &str) -> String {
    let out = Command::new("git")
        .args(["diff", "--no-index", "--no-color", "--"])
        .arg(old.join(rel))
        .arg(new.join(rel))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the files differ");
    let text = String::from_utf8(out.stdout).unwrap();
    let strip = |p: &Path| p.display().to_string().trim_start_matches('/').to_string();
    text.replace(&format!("a/{}/", strip(old)), "a/")
        .replace(&format!("b/{}/", strip(new)), "b/")
}

/// The command agent for these projects: applies the unified diff in the task's ```diff block
/// (the prompt arrives on stdin) with git, in /work (which is not a repository).
const APPLY_DIFF: &str = "sed -n '/^```diff$/,/^```$/p' | sed '1d;$d' > /tmp/change.diff; git apply --verbose /tmp/change.diff";

/// `boxdelegate init` detects `profile`; then boxdelegate.toml is written with the command
/// agent, keeping the detected profile.
fn init_detects(repo: &TestRepo, profile: &str) {
    let out = repo.cmd().arg("init").output().unwrap();
    assert!(out.status.success(), "init: {}", stderr(&out));
    let toml = std::fs::read_to_string(repo.path().join("boxdelegate.toml")).unwrap();
    assert!(
        toml.contains(&format!("profile = \"{profile}\"")),
        "init detects {profile}: {toml}"
    );
    std::fs::remove_file(repo.path().join("units/example.md")).unwrap();
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"{profile}\"\n\n[agent]\nkind = \"command\"\ncommand = {}\nretries = 0\ntimeout = \"5m\"\n\n[run]\ninfra_retries = 0\n\n[verify]\ntimeout = \"15m\"\n",
            toml_string(APPLY_DIFF)
        ),
    );
}

fn diff_unit(repo: &TestRepo, id: &str, scope: &[&str], why: &str, diff: &str) {
    let scope = scope
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    repo.unit(
        id,
        &format!("scope = [{scope}]"),
        &format!("{why}\n\nApply this change:\n\n```diff\n{diff}```\n"),
    );
}

fn check<'a>(u: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    u["verdict"]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no verdict: {u}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {u}"))
}

fn failed_names(c: &serde_json::Value) -> Vec<String> {
    c["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_pypi_sdist_with_its_own_test_suite_lands_a_fix_and_rejects_a_break_naming_the_test() {
    require_base_image();
    let sdist = sdist(
        "python-dateutil",
        "2.9.0.post0",
        "python-dateutil-2.9.0.post0.tar.gz",
        "37dd54208da7e1cd875388217d5e00ebd4179249f90fb72437e91a35459a0ad3",
    );
    let repo = TestRepo::empty();
    unpack(&sdist, repo.path());
    // As the project's users keep it: the development requirements pinned (the sdist's are
    // open ranges, and today's newest pytest refuses this release's test parametrisation).
    repo.write(
        "requirements-dev.txt",
        "six==1.16.0\npytest==8.3.3\npytest-cov==5.0.0\ncoverage==7.6.1\nhypothesis==6.112.1\nfreezegun==1.5.1\n",
    );
    init_detects(&repo, "python");
    let upstream = repo.commit("python-dateutil 2.9.0.post0");

    // A regression in the Orthodox Easter computation, committed; the unit fixes it.
    let easter = "src/dateutil/easter.py";
    let good = std::fs::read_to_string(repo.path().join(easter)).unwrap();
    assert!(good.contains("            e = 10\n"));
    let fixed_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fixed_dir.path().join("src/dateutil")).unwrap();
    std::fs::write(fixed_dir.path().join(easter), &good).unwrap();
    repo.write(
        easter,
        &good.replace("            e = 10\n", "            e = 11\n"),
    );
    repo.commit("easter: off by one day for the Orthodox method");
    let fix = diff(repo.path(), fixed_dir.path(), easter);
    diff_unit(
        &repo,
        "fix-easter",
        &[easter],
        "The Orthodox Easter dates are off by one day: fix the Julian-to-Gregorian offset.",
        &fix,
    );
    // A change that breaks the Western computation (a test names it).
    let broken_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(broken_dir.path().join("src/dateutil")).unwrap();
    let current = std::fs::read_to_string(repo.path().join(easter)).unwrap();
    let broken = current.replace(
        "j = (y + y//4 + i + 2 - c + c//4) % 7",
        "j = (y + y//4 + i + 3 - c + c//4) % 7",
    );
    assert_ne!(broken, current);
    std::fs::write(broken_dir.path().join(easter), broken).unwrap();
    diff_unit(
        &repo,
        "tweak-easter",
        &[easter],
        "Simplify the Western computation.",
        &diff(repo.path(), broken_dir.path(), easter),
    );
    let base = repo.commit("units");
    assert_ne!(base, upstream);

    let (code, units, err) = repo.run(&["--unit", "fix-easter"]);
    let u = &units[0];
    assert_eq!(code, 0, "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    let test = check(u, "test");
    assert_eq!(
        test["outcome"], "fixed",
        "failing on the base, passing with the fix: {test}"
    );
    assert!(
        test["tests"]["total"].as_u64().unwrap() > 2000,
        "the project's own suite ran: {test}"
    );
    assert!(test["fixed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t.as_str().unwrap().starts_with("tests/test_easter.py::")));
    for name in ["lint", "typecheck"] {
        assert_eq!(check(u, name)["outcome"], "skipped", "{u}");
    }
    let landed = repo.git(&["show", &format!("boxdelegate/fix-easter:{easter}")]);
    assert_eq!(format!("{landed}\n"), good);

    let (code, units, err) = repo.run(&["--unit", "tweak-easter"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let names = failed_names(check(u, "test"));
    // The Western Easter tests, and the rrule tests that count from Easter, and nothing else.
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("tests/test_easter.py::test_easter_western["))
            && names.iter().all(|n| n.to_lowercase().contains("easter")),
        "the broken tests are named: {names:?}"
    );
    assert!(
        u["message"]
            .as_str()
            .unwrap()
            .contains("test_easter_western"),
        "{u}"
    );
    assert!(repo
        .git(&["branch", "--list", "boxdelegate/tweak-easter"])
        .is_empty());
}

#[test]
fn a_crate_from_the_registry_lands_its_next_release_and_rejects_a_break_naming_the_test() {
    require_rust_image();
    let old = crate_file(
        "either",
        "1.12.0",
        "3dca9240753cf90908d7e4aac30f630662b02aebaa1b58a3cadabdb23385b58b",
    );
    let new = crate_file(
        "either",
        "1.13.0",
        "60b1af1c220855b6ceac025d3f6ecdd2b7c4894bfe9cd9bda4fbb4bc7c0d4cf0",
    );
    let repo = TestRepo::empty();
    unpack(&old, repo.path());
    let next = tempfile::tempdir().unwrap();
    unpack(&new, next.path());
    // A library's repository keeps a lockfile for its tests' dependencies (serde_json).
    run_ok(
        Command::new("cargo")
            .args(["generate-lockfile", "--manifest-path"])
            .arg(repo.path().join("Cargo.toml")),
    );
    init_detects(&repo, "rust");
    repo.commit("either 1.12.0");

    // The source half of the 1.13.0 release (Either::cloned/copied and their docs).
    let release = diff(repo.path(), next.path(), "src/lib.rs");
    diff_unit(
        &repo,
        "either-1-13",
        &["src/**"],
        "Add Either<&L, &R>::cloned/copied, as released in 1.13.0.",
        &release,
    );
    let lib = std::fs::read_to_string(repo.path().join("src/lib.rs")).unwrap();
    let broken_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(broken_dir.path().join("src")).unwrap();
    let broken = lib.replacen(
        "            Left(_) => None,\n            Right(r) => Some(r),\n",
        "            Left(_) => None,\n            Right(_) => None,\n",
        1,
    );
    assert_ne!(broken, lib);
    std::fs::write(broken_dir.path().join("src/lib.rs"), broken).unwrap();
    diff_unit(
        &repo,
        "simplify-right",
        &["src/**"],
        "Simplify Either::right.",
        &diff(repo.path(), broken_dir.path(), "src/lib.rs"),
    );
    repo.commit("units");

    let (code, units, err) = repo.run(&["--unit", "either-1-13"]);
    let u = &units[0];
    assert_eq!(code, 0, "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    let test = check(u, "test");
    assert_eq!(test["outcome"], "pass", "{test}");
    assert_eq!(test["tests"]["runner"], "cargo-test", "{test}");
    let landed = repo.git(&["show", "boxdelegate/either-1-13:src/lib.rs"]);
    assert_eq!(
        format!("{landed}\n"),
        std::fs::read_to_string(next.path().join("src/lib.rs")).unwrap()
    );

    let (code, units, err) = repo.run(&["--unit", "simplify-right"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let names = failed_names(check(u, "test"));
    assert!(
        names.iter().any(|n| n == "basic"),
        "the broken unit test is named: {names:?}"
    );
    assert!(repo
        .git(&["branch", "--list", "boxdelegate/simplify-right"])
        .is_empty());
}

#[test]
fn a_real_install_that_fails_is_an_infra_error_naming_its_log_and_leaves_no_image() {
    require_base_image();
    for (what, requirements, in_log) in [
        (
            "a package that does not exist",
            "boxdelegate-no-such-package-7f3a9c==0.0.1\n",
            "No matching distribution found for boxdelegate-no-such-package-7f3a9c",
        ),
        (
            "a network that is cut",
            "--index-url http://127.0.0.1:9/simple\nsix==1.16.0\n",
            "Connection refused",
        ),
    ] {
        let repo = TestRepo::empty();
        repo.write("requirements.txt", requirements);
        repo.write("app.py", "print('hi')\n");
        repo.write("boxdelegate.toml", "[project]\nprofile = \"python\"\n");
        repo.commit(what);
        let out = repo.cmd().args(["image", "build"]).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(7), "{what}: {err}");
        assert!(
            err.contains("infra-error: the dependency install for profile python")
                && err.contains("says nothing about any unit's change"),
            "{what}: {err}"
        );
        let (log, key16) = named_install_log(&err);
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains(in_log), "{what}: {text}");
        let tags = docker(&["images", "--format", "{{.Tag}}", "boxdelegate/deps"]);
        assert!(
            !tags.lines().any(|t| t.starts_with(key16)),
            "{what}: no image left: {tags}"
        );
        let left = docker(&[
            "ps",
            "-a",
            "--format",
            "{{.Label \"boxdelegate.deps-key\"}}",
        ]);
        assert!(
            !left.lines().any(|k| k.starts_with(key16)),
            "{what}: no container left: {left}"
        );
    }
}
