//! A unit whose change edits the dependency manifests (the test profile's `deps.lock`): verified
//! on an image with the new dependencies, refused when the project says so, and an
//! infrastructure error — never "the change is wrong" — when the new dependencies cannot be
//! installed.

use crate::common::*;

/// A project whose test check passes only when `newpkg` is installed in /deps.
fn project(salt: &str, verify_extra: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    let agent = toml_string("echo 'newpkg==2.0' >> deps.lock; echo 'print(2)' >> src/lib.txt");
    let test = toml_string(
        "if grep -q newpkg /deps/lib/installed; then echo '1 passed, 0 failed'; else echo 'newpkg is not installed'; echo '0 passed, 1 failed'; exit 1; fi",
    );
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {agent}\n\n[run]\ninfra_retries = 0\n\n[verify]\ntest = {test}\n{verify_extra}\n"
        ),
    );
    repo.unit(
        "add-dep",
        "scope = [\"deps.lock\", \"src/**\"]",
        "Add the newpkg dependency.",
    );
    repo.commit("project");
    repo
}

/// Images (unit images, and through them their dependency images) labelled with `tree`.
fn remember_images_of(repo: &TestRepo, tree: &str) -> Vec<String> {
    let tags = docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("label=boxdelegate.tree={tree}"),
    ]);
    // An image's names, not the repositories' claims on it (`boxdelegate/r-…`, which go with
    // the repository when the test ends).
    let tags: Vec<String> = tags
        .lines()
        .filter(|t| !t.starts_with("boxdelegate/r-"))
        .map(String::from)
        .collect();
    for t in &tags {
        repo.remember_image(t);
    }
    tags
}

fn deps_images() -> String {
    docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "boxdelegate/deps",
    ])
}

#[test]
fn a_unit_that_edits_the_lockfile_is_verified_on_its_new_dependencies() {
    require_base_image();
    let repo = project("deps-change-rebuild", "");
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", "add-dep"])
        .output()
        .unwrap();
    let (events, err) = (stdout(&out), stderr(&out));
    let v = final_json(&out.stdout);
    let u = &v["units"][0];
    let tree = u["tree"].as_str().unwrap_or_default().to_string();
    let made = remember_images_of(&repo, &tree);
    repo.remember_image(u["unit_image"].as_str().unwrap());
    assert_eq!(out.status.code(), Some(0), "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    assert!(
        events.contains(
            "the change edits the dependency manifests (deps.lock): building its dependency image"
        ),
        "the rebuild is said: {events}"
    );
    // The baseline ran on the snapshot's dependencies (without newpkg), the change on its own.
    let test = &u["verdict"]["checks"][0];
    assert_eq!(
        test["outcome"], "fixed",
        "failed on the snapshot's dependencies, passes on the change's: {u}"
    );
    let base = &u["verdict"]["baseline"];
    assert!(!base.is_null(), "a baseline ran: {u}");
    let log = std::fs::read_to_string(
        std::path::Path::new(u["attempt_dir"].as_str().unwrap()).join("verify.log"),
    )
    .unwrap();
    assert!(
        log.contains("newpkg is not installed"),
        "baseline on the old image: {log}"
    );
    assert_eq!(
        made.len(),
        1,
        "one unit image of the changed tree: {made:?}"
    );
    let landed = repo.git(&["show", "boxdelegate/add-dep:deps.lock"]);
    assert!(landed.contains("newpkg==2.0"), "{landed}");

    // CI's re-check of the landed commit does the same, and its record says so.
    let out = repo
        .cmd()
        .args(["verify", "--commit", "boxdelegate/add-dep", "--json"])
        .output()
        .unwrap();
    let record = final_json(&out.stdout);
    repo.remember_image(record["unit_image"].as_str().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}\n{record}", stderr(&out));
    assert_eq!(
        record["verdict"]["checks"][0]["outcome"], "fixed",
        "{record}"
    );
    let change_key = record["change_deps_key"]
        .as_str()
        .expect("the change's deps key");
    assert_ne!(change_key, record["deps_key"].as_str().unwrap());
    repo.remember_image(record["change_image"].as_str().unwrap());
}

#[test]
fn a_project_that_refuses_dependency_changes_rejects_the_unit_naming_the_rule() {
    require_base_image();
    let repo = project("deps-change-refuse", "dependency_changes = \"refuse\"");
    let (code, units, err) = repo.run(&["--unit", "add-dep"]);
    let u = &units[0];
    assert_eq!(code, 10, "{err}\n{u}");
    assert_eq!(u["status"], "rejected", "{u}");
    assert_eq!(rejection_rules(u), ["dependency-change"], "{u}");
    let r = &u["rejections"][0];
    assert_eq!(r["path"], "deps.lock", "{u}");
    assert!(
        r["hint"]
            .as_str()
            .unwrap()
            .contains("dependency_changes = \"rebuild\""),
        "{u}"
    );
    let tree = u["tree"]
        .as_str()
        .expect("the refused change's tree is kept");
    assert_eq!(
        remember_images_of(&repo, tree),
        Vec::<String>::new(),
        "no image was built for the refused change"
    );
    assert!(repo
        .git(&["branch", "--list", "boxdelegate/add-dep"])
        .is_empty());
}

#[test]
fn new_dependencies_that_cannot_be_installed_fail_the_change_and_the_next_unit_still_runs() {
    require_base_image();
    let repo = TestRepo::with_project("deps-change-uninstallable");
    // The first unit adds a package the resolver does not know; the second changes code. A
    // breaker that opens at the first infrastructure failure would skip the second.
    let agent = toml_string(
        "if [ \"$BOXDELEGATE_UNIT_ID\" = add-dep ]; then echo 'broken==1.0' >> deps.lock; else echo more >> src/lib.txt; fi",
    );
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {agent}\n\n[run]\ninfra_retries = 0\nbreaker = 1\n\n[verify]\ntest = 'echo 1 passed, 0 failed'\n"
        ),
    );
    repo.unit("add-dep", "scope = [\"deps.lock\"]", "Add a dependency.");
    repo.unit("more-code", "scope = [\"src/**\"]", "Write more code.");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "add-dep", "--unit", "more-code"]);
    let u = units.iter().find(|u| u["unit"] == "add-dep").unwrap();
    assert_eq!(u["status"], "verify-failed", "{err}\n{u}");
    let message = u["message"].as_str().unwrap();
    assert!(
        message.contains("the change's dependency manifests could not be installed")
            && message
                .contains("the dependency install of the change's manifests for profile test"),
        "the step is named: {message}"
    );
    assert!(!message.contains("says nothing about"), "{message}");
    let (log, key16) = named_install_log(message);
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("resolver: no version of 'broken'"), "{text}");
    assert!(
        !deps_images().contains(&format!("boxdelegate/deps:{key16}")),
        "no dependency image left behind for key {key16}"
    );
    let tree = u["tree"].as_str().unwrap();
    assert_eq!(remember_images_of(&repo, tree), Vec::<String>::new());
    // (Other tests may be installing at the same time: only this key's containers count.)
    let left = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Label \"boxdelegate.deps-key\"}}",
    ]);
    assert!(
        !left.lines().any(|k| k.starts_with(key16)),
        "no install container left: {left}"
    );
    assert!(u["patch"].as_str().is_some(), "the patch is kept: {u}");
    // Not the infrastructure's: the breaker stayed shut and the next unit landed.
    let next = units.iter().find(|u| u["unit"] == "more-code").unwrap();
    assert_eq!(next["status"], "landed", "{err}\n{next}");
    assert_eq!(code, 15, "{err}");
}
