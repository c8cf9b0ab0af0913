use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Container `create` events the engine recorded in [since, until] for objects with `label`.
fn container_creates(since: u64, until: u64, label: &str) -> String {
    docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.ID}}",
    ])
}

#[test]
fn same_inputs_give_same_keys_and_a_cache_hit_that_creates_no_container() {
    require_base_image();
    let repo = TestRepo::with_project("cache-hit");
    let first = repo.build(&[]);
    assert_eq!(first["deps_image"]["how"], "built");
    assert_eq!(first["unit_image"]["how"], "full");
    let key = first["deps"]["key"].as_str().unwrap().to_string();
    let tree = first["snapshot"]["tree"].as_str().unwrap().to_string();

    let t0 = now();
    let second = repo.build(&[]);
    let t1 = now() + 1;
    assert_eq!(second["deps"]["key"], first["deps"]["key"]);
    assert_eq!(second["deps_image"]["how"], "cached");
    assert_eq!(second["unit_image"]["how"], "cached");
    assert_eq!(second["deps_image"]["id"], first["deps_image"]["id"]);
    assert_eq!(second["unit_image"]["id"], first["unit_image"]["id"]);
    // The first build did create containers, so the event query sees them when they exist…
    assert!(
        !container_creates(t0 - 600, t0, &format!("boxdelegate.deps-key={key}"))
            .trim()
            .is_empty()
    );
    // …and the cached run created none.
    assert_eq!(
        container_creates(t0, t1, &format!("boxdelegate.deps-key={key}")).trim(),
        ""
    );
    assert_eq!(
        container_creates(t0, t1, &format!("boxdelegate.tree={tree}")).trim(),
        ""
    );
    let installed = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        second["unit_image"]["image"].as_str().unwrap(),
        "cat",
        "/deps/lib/installed",
    ]);
    assert!(
        installed.contains("left-pad==1.0"),
        "the install step's output is in the image: {installed}"
    );
}

#[test]
fn source_edits_change_the_snapshot_only_and_lockfile_edits_change_the_deps_key() {
    require_base_image();
    let repo = TestRepo::with_project("keys");
    let a = repo.build(&[]);

    repo.write("src/lib.txt", "edited source\n");
    repo.commit("edit source");
    let b = repo.build(&[]);
    assert_ne!(b["snapshot"]["tree"], a["snapshot"]["tree"]);
    assert_eq!(b["deps"]["key"], a["deps"]["key"]);
    assert_eq!(b["deps_image"]["how"], "cached");

    repo.write("deps.lock", "left-pad==1.1 # keys\n");
    repo.commit("bump lock");
    let c = repo.build(&[]);
    assert_ne!(c["deps"]["key"], a["deps"]["key"]);
    assert_eq!(c["deps_image"]["how"], "built");
}

#[test]
fn ignored_env_files_and_git_never_reach_an_image() {
    require_base_image();
    let repo = TestRepo::with_project("no-secrets");
    repo.write(".env", "API_KEY=hunter2\n");
    repo.write("sub/.env", "API_KEY=hunter2\n");
    repo.write("sub/keep.txt", "kept\n");
    repo.git(&["add", "sub/keep.txt"]);
    repo.git(&["commit", "-q", "-m", "sub"]);
    for args in [&[][..], &["--include-dirty"][..]] {
        let v = repo.build(args);
        for key in ["unit_image", "deps_image"] {
            let image = v[key]["image"].as_str().unwrap();
            let found = sh_in(
                image,
                "find / -xdev \\( -name .env -o -name .git -o -name '.boxdelegate-*' \\) -print 2>/dev/null; grep -rl hunter2 /work /deps 2>/dev/null; true",
            );
            assert_eq!(found.trim(), "", "{image} holds {found}");
        }
        let listing = repo.work_listing(v["unit_image"]["image"].as_str().unwrap());
        assert!(listing.contains("./sub/keep.txt"), "{listing}");
    }
}

#[test]
fn include_dirty_files_reach_the_unit_image() {
    require_base_image();
    let repo = TestRepo::with_project("dirty-image");
    repo.write("README.md", "dirty readme\n");
    repo.write("untracked.txt", "untracked\n");
    let index_before = std::fs::read(repo.path().join(".git/index")).unwrap();
    let v = repo.build(&["--include-dirty"]);
    assert_eq!(v["snapshot"]["dirty"], true);
    let image = v["unit_image"]["image"].as_str().unwrap();
    let out = sh_in(image, "cat /work/README.md /work/untracked.txt");
    assert_eq!(out, "dirty readme\nuntracked\n");
    assert_eq!(
        std::fs::read(repo.path().join(".git/index")).unwrap(),
        index_before
    );
}

/// A tree with the entry kinds an incremental build must carry over.
fn base_tree(repo: &TestRepo) {
    repo.write("dir/a.txt", "a\n");
    repo.write("dir/b.txt", "b\n");
    repo.write("old/name.txt", "renamed content\n");
    repo.write("gone/deep/x.txt", "x\n");
    repo.write("becomes-dir", "a file now\n");
    repo.write("dir-becomes-file/inside.txt", "a directory now\n");
    repo.write("tools/run.sh", "#!/bin/sh\n");
    repo.write("link-target.txt", "target\n");
    std::os::unix::fs::symlink("link-target.txt", repo.path().join("link")).unwrap();
    for i in 0..20 {
        repo.write(&format!("many/f{i}.txt"), &format!("{i}\n"));
    }
    repo.commit("base tree");
}

/// Modify, delete, rename, add, a file turned into a directory and back, a directory removed
/// whole, a mode change and a symlink retargeted.
fn change_tree(repo: &TestRepo) {
    repo.write("dir/a.txt", "a changed\n");
    std::fs::remove_file(repo.path().join("dir/b.txt")).unwrap();
    std::fs::create_dir_all(repo.path().join("new")).unwrap();
    std::fs::rename(
        repo.path().join("old/name.txt"),
        repo.path().join("new/name.txt"),
    )
    .unwrap();
    std::fs::remove_dir_all(repo.path().join("gone")).unwrap();
    std::fs::remove_file(repo.path().join("becomes-dir")).unwrap();
    repo.write("becomes-dir/inside.txt", "now a directory\n");
    std::fs::remove_dir_all(repo.path().join("dir-becomes-file")).unwrap();
    repo.write("dir-becomes-file", "now a file\n");
    repo.write("added.txt", "added\n");
    std::fs::set_permissions(
        repo.path().join("tools/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::remove_file(repo.path().join("link")).unwrap();
    std::os::unix::fs::symlink("README.md", repo.path().join("link")).unwrap();
    repo.commit("changes");
}

#[test]
fn incremental_unit_image_equals_a_full_one() {
    require_base_image();
    let repo = TestRepo::with_project("incremental");
    base_tree(&repo);
    let a = repo.build(&[]);
    assert_eq!(a["unit_image"]["how"], "full");
    change_tree(&repo);

    let b = repo.build(&[]);
    assert_eq!(b["unit_image"]["how"], "incremental", "{b}");
    // A loaded layer on a loaded layer.
    assert_eq!(a["unit_image"]["method"], "layer", "{a}");
    assert_eq!(b["unit_image"]["method"], "layer", "{b}");
    assert_eq!(b["unit_image"]["parent_tree"], a["snapshot"]["tree"]);
    let tag = b["unit_image"]["image"].as_str().unwrap().to_string();
    let incremental = repo.work_listing(&tag);

    docker(&["rmi", &tag]);
    let full = repo.build(&["--full"]);
    assert_eq!(full["unit_image"]["how"], "full");
    assert_eq!(full["unit_image"]["image"], b["unit_image"]["image"]);
    let from_scratch = repo.work_listing(&tag);
    assert_eq!(incremental, from_scratch);
    // The listing really reflects the change (so the comparison could fail).
    for line in [
        "./new/name.txt f 644",
        "./becomes-dir d 755",
        "./becomes-dir/inside.txt f 644",
        "./dir-becomes-file f 644",
        "./tools/run.sh f 755",
        "./link l 777 1000:1000 9 README.md",
    ] {
        assert!(from_scratch.contains(line), "{line}\n{from_scratch}");
    }
    for gone in ["./gone", "./old/", "./dir/b.txt", "./dir-becomes-file/"] {
        assert!(!from_scratch.contains(gone), "{gone}\n{from_scratch}");
    }
}

/// What a container started from `image` sees of its settings and of `/work` itself.
fn image_settings(image: &str) -> String {
    let config = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.User}} {{json .Config.Env}} {{json .Config.Cmd}} {{json .Config.Entrypoint}} {{json .Config.WorkingDir}} {{json .Config.Labels}}",
        image,
    ]);
    let root = sh_in(image, "stat -c '%n %F %a %u:%g' /work && id");
    format!("{config}{root}")
}

/// Builds the unit image of HEAD as a loaded layer, then again (after removing it) by a
/// committed container; expects `how` both times and the same files and settings. Returns the
/// listing and the settings.
fn built_both_ways(repo: &TestRepo, how: &str) -> (String, String) {
    let layer = repo.build(&[]);
    assert_eq!(layer["unit_image"]["how"], how, "{layer}");
    assert_eq!(layer["unit_image"]["method"], "layer", "{layer}");
    let tag = layer["unit_image"]["image"].as_str().unwrap().to_string();
    let (listing, settings) = (repo.work_listing(&tag), image_settings(&tag));
    docker(&["rmi", &tag]);
    let committed = repo.build_with(&[], &[("BOXDELEGATE_IMAGE_BUILD", "commit")]);
    assert_eq!(committed["unit_image"]["how"], how, "{committed}");
    assert_eq!(committed["unit_image"]["method"], "commit", "{committed}");
    assert_eq!(repo.work_listing(&tag), listing);
    assert_eq!(image_settings(&tag), settings);
    (listing, settings)
}

#[test]
fn layer_built_unit_images_equal_committed_ones() {
    require_base_image();
    let repo = TestRepo::with_project("layer-vs-commit");
    base_tree(&repo);

    // The same full image, written as a loaded layer and through a committed container.
    let (listing, settings) = built_both_ways(&repo, "full");
    assert!(
        settings.contains("/work directory 755 1000:1000"),
        "{settings}"
    );
    assert!(listing.contains("./link l 777 1000:1000"), "{listing}");

    // The same incremental image both ways, on the same (committed) parent.
    change_tree(&repo);
    let (listing, _) = built_both_ways(&repo, "incremental");
    assert!(listing.contains("./dir-becomes-file f 644"), "{listing}");
    assert!(!listing.contains("./gone"), "{listing}");
}

#[test]
fn a_layer_the_engine_refuses_falls_back_to_a_committed_container() {
    require_base_image();
    let repo = TestRepo::with_project("layer-refused");
    base_tree(&repo);
    let out = repo
        .cmd()
        .args(["image", "build", "--json"])
        .env("BOXDELEGATE_FAILPOINT", "layer-refused")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let v = final_json(&out.stdout);
    let tag = v["unit_image"]["image"].as_str().unwrap().to_string();
    repo.remember_image(&tag);
    repo.remember_image(v["deps_image"]["image"].as_str().unwrap());
    assert_eq!(v["unit_image"]["how"], "full", "{v}");
    assert_eq!(v["unit_image"]["method"], "commit", "{v}");
    assert!(
        err.contains("warning: unit image") && err.contains("committing a container instead"),
        "{err}"
    );
    // The image is whole, and the refused load left no image or container behind.
    assert!(repo.work_listing(&tag).contains("./link l 777 1000:1000"));
    let tree = format!(
        "label=boxdelegate.tree={}",
        v["snapshot"]["tree"].as_str().unwrap()
    );
    // (One image may carry several tags: its name and this repository's claim on it.)
    let images: std::collections::BTreeSet<String> =
        docker(&["images", "-q", "--no-trunc", "--filter", &tree])
            .lines()
            .map(String::from)
            .collect();
    assert_eq!(
        images.into_iter().collect::<Vec<_>>().join("\n"),
        v["unit_image"]["id"].as_str().unwrap(),
        "one image of this tree: no other left from the refused load"
    );
    let helpers = docker(&["ps", "-a", "-q", "--filter", &tree]);
    assert_eq!(helpers.trim(), "", "no helper container left");
}

#[test]
fn a_failing_install_is_an_infra_error_naming_its_log_and_leaves_no_image() {
    require_base_image();
    let repo = TestRepo::with_project("broken-install");
    repo.write("deps.lock", "broken==9.9 # broken-install\n");
    repo.commit("break the lockfile");
    let before = repo.host_state();
    let out = repo.cmd().args(["image", "build"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("infra-error: the dependency install for profile test"),
        "{err}"
    );
    assert!(
        err.contains("says nothing about any unit's change"),
        "{err}"
    );
    assert!(err.contains("exit code 3"), "{err}");
    // The whole log is kept on the host, private, and named.
    let (log, _) = named_install_log(&err);
    let log = std::path::Path::new(log);
    assert!(
        log.starts_with(repo.path().join(".git/boxdelegate/logs")),
        "{err}"
    );
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("installing 1 packages") && text.contains("resolver: no version"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        err.contains("resolver: no version of 'broken' satisfies the lockfile"),
        "log tail: {err}"
    );
    assert!(err.contains("hint: fix the dependency manifests"), "{err}");
    let key_prefix = err.split("deps key ").nth(1).unwrap()[..12].to_string();
    let tags = docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "boxdelegate/deps",
    ]);
    assert!(!tags.contains(&key_prefix), "no image tagged: {tags}");
    let containers = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=boxdelegate.kind=deps-build",
        "--format",
        "{{.Label \"boxdelegate.deps-key\"}}",
    ]);
    assert!(
        !containers.contains(&key_prefix),
        "no container left: {containers}"
    );
    // Nothing else on the host changed: the log (and the private directories holding it) is
    // the one new thing.
    let after: String = repo
        .host_state()
        .lines()
        .filter(|l| !l.starts_with(".git/boxdelegate/logs") && !l.starts_with(".git/boxdelegate "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn save_and_load_round_trip() {
    require_base_image();
    let repo = TestRepo::with_project("save-load");
    let v = repo.build(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("images.tar");
    let out = repo
        .cmd()
        .args(["image", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(
        listed.contains(BASE_IMAGE) && listed.contains(v["unit_image"]["image"].as_str().unwrap()),
        "{listed}"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // Remove the unit image, load the file, and it is back with the same id.
    let unit = v["unit_image"]["image"].as_str().unwrap();
    docker(&["rmi", unit]);
    let out = repo
        .cmd()
        .args(["image", "load"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", unit]);
    assert_eq!(id.trim(), v["unit_image"]["id"].as_str().unwrap());
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn save_takes_the_codex_image_along_when_the_agent_is_codex() {
    require_base_image();
    let codex = "boxdelegate/codex:0.163.0";
    let repo = TestRepo::with_project("save-codex");
    // A codex version whose image the engine lacks: save refuses, naming it and the command
    // that builds it, and writes nothing.
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"codex\"\ncodex_version = \"0.0.1\"\n",
    );
    repo.commit("codex 0.0.1");
    repo.build(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("images.tar");
    let out = repo
        .cmd()
        .args(["image", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("boxdelegate/codex:0.0.1")
            && err.contains("image build codex --codex-version 0.0.1"),
        "{err}"
    );
    assert!(!file.exists(), "nothing written");
    if docker(&["images", "-q", codex]).trim().is_empty() {
        return; // the codex image is built by the CI's setup step; without it the rest says nothing
    }
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"codex\"\n",
    );
    repo.commit("codex default");
    repo.build(&[]);
    let out = repo
        .cmd()
        .args(["image", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(codex), "{}", stdout(&out));
    let manifest = std::process::Command::new("tar")
        .args(["-xOf"])
        .arg(&file)
        .arg("manifest.json")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&manifest.stdout).contains(codex),
        "the archive holds the codex image"
    );
}

#[test]
fn prune_in_one_repository_never_removes_an_image_another_uses() {
    require_base_image();
    // Two repositories with the same content share their dependency and unit images.
    let make = || {
        let repo = TestRepo::with_project("prune-shared");
        repo.write("src/extra.txt", "shared\n");
        repo.commit("same content");
        repo
    };
    let (a, b) = (make(), make());
    let va = a.build(&[]);
    let vb = b.build(&[]);
    let shared = va["unit_image"]["image"].as_str().unwrap().to_string();
    assert_eq!(
        vb["unit_image"]["image"].as_str().unwrap(),
        shared,
        "one image for both"
    );
    let exists = |i: &str| !docker(&["images", "-q", i]).trim().is_empty();
    // A moves on: the shared unit image is no longer A's current one.
    a.write("src/extra.txt", "only in a\n");
    a.commit("a moves on");
    a.build(&[]);
    let out = a
        .cmd()
        .args(["image", "prune", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "would release (another repository uses it) {shared}"
        )),
        "{}",
        stdout(&out)
    );
    let out = a.cmd().args(["image", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "released {shared} (another repository still uses it)"
        )),
        "{}",
        stdout(&out)
    );
    assert!(exists(&shared), "B still has its unit image");
    // B's prune keeps it too: it is B's current image.
    let out = b.cmd().args(["image", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(exists(&shared), "B's current image stays");
    // B moves on as well: now nobody uses it, and B's prune removes it.
    b.write("src/extra.txt", "only in b\n");
    b.commit("b moves on");
    b.build(&[]);
    let out = b.cmd().args(["image", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("removed {shared}")),
        "{}",
        stdout(&out)
    );
    assert!(!exists(&shared), "gone with its last user");
}

#[test]
fn clean_and_prune_in_one_repository_leave_what_another_uses_running_or_not() {
    require_base_image();
    // Two repositories with the same content on one engine: one image set, two claims.
    // B's agent works until the test lets it go (BD_WAIT=1, from outside the tree).
    let make = || {
        let repo = TestRepo::with_project("clean-shared");
        repo.write(
            "boxdelegate.toml",
            &format!(
                "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\nenv = [\"BD_WAIT\"]\ncommand = {}\n\n[run]\ninfra_retries = 0\n",
                toml_string("if [ \"$BD_WAIT\" = 1 ]; then while [ ! -e /tmp/go ]; do sleep 0.2; done; fi; echo x > src/x.txt")
            ),
        );
        repo.unit("u", "scope = [\"src/**\"]", "Work.");
        repo.commit("same content");
        repo
    };
    let (a, b) = (make(), make());
    let out = a
        .cmd()
        .args(["run", "--json", "--unit", "u"])
        .env("BD_WAIT", "0")
        .output()
        .unwrap();
    let v = crate::common::final_json(&out.stdout);
    assert_eq!(v["units"][0]["status"], "landed", "{}", stderr(&out));
    let image = v["units"][0]["unit_image"].as_str().unwrap().to_string();
    a.remember_image(&image);
    let child = b
        .cmd()
        .args(["run", "--json", "--unit", "u"])
        .env("BD_WAIT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // B's agent container, running (the run's own label says whose it is).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let b_agent = loop {
        let found = docker(&[
            "ps",
            "-q",
            "--filter",
            "label=boxdelegate.kind=agent",
            "--filter",
            "label=boxdelegate.unit=u",
        ]);
        let mine = found.lines().find(|id| {
            let tree = docker(&["inspect", "--format", "{{.Config.Image}}", id]);
            tree.trim() == image
        });
        if let Some(id) = mine {
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's agent never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // The container says whose it is: B's repository id, not its path.
    let b_id = std::fs::read_to_string(b.path().join(".git/boxdelegate/repo-id")).unwrap();
    let label = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"boxdelegate.repository\"}}",
        &b_agent,
    ]);
    assert_eq!(label.trim(), b_id.trim());
    let exists = |i: &str| !docker(&["images", "-q", i]).trim().is_empty();
    // A cleans its finished run, then prunes everything of its own, current images too.
    for args in [
        &["clean", "--dry-run"][..],
        &["clean"][..],
        &["image", "prune", "--all", "--dry-run"][..],
        &["image", "prune", "--all"][..],
    ] {
        let out = a.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(exists(&image), "{args:?} removed the image B runs on");
        let running = docker(&["inspect", "--format", "{{.State.Running}}", &b_agent]);
        assert_eq!(running.trim(), "true", "{args:?} touched B's agent");
    }
    assert!(
        a.path()
            .join(".git/boxdelegate/runs")
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "A's finished run is gone"
    );
    // `image ls` shows a repository its own: B's lists the image, A's no longer does.
    let listed = |repo: &TestRepo| {
        let out = repo.cmd().args(["image", "ls", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        crate::common::final_json(&out.stdout)
            .as_array()
            .unwrap()
            .iter()
            .any(|i| {
                i["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == image.as_str())
            })
    };
    assert!(listed(&b), "B lists the image it runs on");
    assert!(!listed(&a), "A lists no image it let go of");
    // B goes on and lands, on the image A let go of.
    docker(&["exec", &b_agent, "touch", "/tmp/go"]);
    let out = child.wait_with_output().unwrap();
    let v = crate::common::final_json(&out.stdout);
    assert_eq!(v["units"][0]["status"], "landed", "{}", stderr(&out));
    b.remember_image(&image);
    // Now B prunes all of its own: nobody uses the image any more, and it goes.
    let out = b.cmd().args(["image", "prune", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!exists(&image), "gone with its last user: {}", stdout(&out));
}

#[test]
fn clean_keeps_the_newest_runs_and_the_recent_ones_and_a_dry_run_removes_nothing() {
    require_base_image();
    let repo = TestRepo::with_project("clean-retention");
    repo.agent("echo \"$BOXDELEGATE_ATTEMPT $(date +%s%N)\" > src/x.txt");
    repo.unit("u", "scope = [\"src/**\"]", "Work.");
    repo.commit("project");
    let mut runs = Vec::new();
    for branch in ["one", "two"] {
        let (code, units, err) = repo.run(&["--unit", "u", "--rerun", "--branch", branch]);
        assert_eq!(code, 0, "{err}");
        repo.remember_image(units[0]["unit_image"].as_str().unwrap());
        runs.push(units[0]["run_id"].as_str().unwrap().to_string());
    }
    let dirs = || {
        let mut d: Vec<String> = std::fs::read_dir(repo.path().join(".git/boxdelegate/runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        d.sort();
        d
    };
    let clean = |args: &[&str]| {
        let out = repo.cmd().arg("clean").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    // The directories, by name (two runs within a second may sort either way).
    let mut both = runs.clone();
    both.sort();
    let said = clean(&["--keep", "1", "--dry-run"]);
    assert!(
        said.contains(&format!("would remove run {}", runs[0]))
            && !said.contains(&format!("would remove run {}", runs[1]))
            && said.contains(&format!("kept run {} (one of the newest 1", runs[1])),
        "{said}"
    );
    assert_eq!(dirs(), both, "a dry run removes nothing");
    let said = clean(&["--older-than", "1h"]);
    assert!(said.contains("newer than 1h"), "{said}");
    assert_eq!(dirs(), both, "both runs are recent");
    let said = clean(&["--keep", "1"]);
    assert!(said.contains(&format!("removed run {}", runs[0])), "{said}");
    assert_eq!(dirs(), vec![runs[1].clone()], "the newest stays");
}
