use crate::common::*;

fn tar_listing(repo: &TestRepo, extra: &[&str]) -> Vec<(String, String)> {
    let out = repo
        .cmd()
        .args(["snapshot", "--tar", "-"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut ar = tar::Archive::new(out.stdout.as_slice());
    let mut v = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 315_532_800, "fixed mtime");
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap()),
            (1000, 1000),
            "fixed owner"
        );
        let mut content = String::new();
        if h.entry_type().is_file() {
            std::io::Read::read_to_string(&mut e, &mut content).unwrap();
        }
        v.push((path, content));
    }
    v
}

#[test]
fn snapshot_is_the_head_tree_and_deterministic() {
    let repo = TestRepo::with_project("snapshot-head");
    let out = repo.cmd().arg("snapshot").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), repo.git(&["rev-parse", "HEAD^{tree}"]));
    let a = repo
        .cmd()
        .args(["snapshot", "--tar", "-"])
        .output()
        .unwrap()
        .stdout;
    let b = repo
        .cmd()
        .args(["snapshot", "--tar", "-"])
        .output()
        .unwrap()
        .stdout;
    assert!(!a.is_empty());
    assert_eq!(a, b, "byte-identical tar streams");
}

#[test]
fn snapshot_preserves_modes_and_symlinks_and_never_ships_git_or_ignored_files() {
    let repo = TestRepo::with_project("snapshot-modes");
    repo.write("bin/run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(
        repo.path().join("bin/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../README.md", repo.path().join("bin/readme")).unwrap();
    repo.write(".env", "API_KEY=hunter2\n");
    repo.commit("more");
    let out = repo
        .cmd()
        .args(["snapshot", "--tar", "-"])
        .output()
        .unwrap();
    let mut ar = tar::Archive::new(out.stdout.as_slice());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let h = e.header();
        match path.as_str() {
            "bin/run.sh" => assert_eq!(h.mode().unwrap() & 0o777, 0o755),
            "README.md" => assert_eq!(h.mode().unwrap() & 0o777, 0o644),
            "bin/readme" => {
                assert!(h.entry_type().is_symlink());
                assert_eq!(
                    e.link_name().unwrap().unwrap().display().to_string(),
                    "../README.md"
                );
            }
            _ => {}
        }
        seen.push(path);
    }
    assert!(
        seen.contains(&"bin/run.sh".to_string()) && seen.contains(&"bin/readme".to_string()),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|p| p == ".env" || p.starts_with(".git/") || p == ".git"),
        "{seen:?}"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "paths are sorted");
}

#[test]
fn include_dirty_takes_untracked_and_modified_files_without_touching_the_index() {
    let repo = TestRepo::with_project("snapshot-dirty");
    repo.write("README.md", "# changed in the work tree\n");
    repo.write("notes/new.txt", "untracked but not ignored\n");
    repo.write(".env", "SECRET=1\n");
    // A staged change too, so the index differs from HEAD.
    repo.write("src/staged.txt", "staged\n");
    repo.git(&["add", "src/staged.txt"]);
    let index = repo.path().join(".git/index");
    let index_before = std::fs::read(&index).unwrap();
    let status_before = repo.git(&["status", "--porcelain"]);

    let clean = tar_listing(&repo, &[]);
    assert!(clean
        .iter()
        .any(|(p, c)| p == "README.md" && c == "# sample\n"));
    assert!(!clean.iter().any(|(p, _)| p == "notes/new.txt"));

    let dirty = tar_listing(&repo, &["--include-dirty"]);
    assert!(
        dirty
            .iter()
            .any(|(p, c)| p == "README.md" && c == "# changed in the work tree\n"),
        "{dirty:?}"
    );
    assert!(dirty.iter().any(|(p, _)| p == "notes/new.txt"), "{dirty:?}");
    assert!(
        dirty.iter().any(|(p, _)| p == "src/staged.txt"),
        "{dirty:?}"
    );
    assert!(
        !dirty.iter().any(|(p, _)| p == ".env"),
        "ignored files never ship: {dirty:?}"
    );

    let out = repo
        .cmd()
        .args(["snapshot", "--include-dirty", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["dirty"], true);
    assert_ne!(
        v["tree"].as_str().unwrap(),
        repo.git(&["rev-parse", "HEAD^{tree}"])
    );

    assert_eq!(
        std::fs::read(&index).unwrap(),
        index_before,
        ".git/index is byte-identical"
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), status_before);
}

#[test]
fn include_dirty_on_a_clean_tree_is_head() {
    let repo = TestRepo::with_project("snapshot-clean-dirty");
    let out = repo
        .cmd()
        .args(["snapshot", "--include-dirty", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = crate::common::final_json(&out.stdout);
    assert_eq!(v["dirty"], false);
    assert_eq!(
        v["tree"].as_str().unwrap(),
        repo.git(&["rev-parse", "HEAD^{tree}"])
    );
}
