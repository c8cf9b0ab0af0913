//! Repositories as users have them: submodules, Git LFS pointer files, files over 50 MB,
//! `.gitattributes` with `text=auto`/`eol`, and a long history. Each works, or is refused
//! with a rule that names the path — see README "Repositories as they are".

use std::process::{Command, Stdio};

use crate::common::*;

fn shaped(salt: &str, agent: &str, scope: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.agent(agent);
    repo.unit("u", &format!("scope = [{scope}]"), "Make the change.");
    repo
}

#[test]
fn a_submodule_is_kept_and_a_write_inside_it_is_rejected_naming_it() {
    require_base_image();
    let repo = shaped(
        "shape-submodule",
        "echo more >> src/lib.txt; [ -z \"$(ls -A vendor/lib)\" ] || exit 9; echo x > vendor/lib/new.txt",
        "\"src/**\", \"vendor/**\"",
    );
    repo.write(
        ".gitmodules",
        "[submodule \"vendor/lib\"]\n\tpath = vendor/lib\n\turl = https://example.invalid/lib.git\n",
    );
    repo.git(&["add", "-A"]);
    let sub = "1111111111111111111111111111111111111111";
    repo.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{sub},vendor/lib"),
    ]);
    repo.git(&["commit", "-q", "-m", "with a submodule"]);
    let (code, units, err) = repo.run(&["--unit", "u"]);
    let u = &units[0];
    assert_eq!(code, 10, "{err}\n{u}");
    assert_eq!(rejection_rules(u), ["submodule"], "{u}");
    assert_eq!(u["rejections"][0]["path"], "vendor/lib/new.txt", "{u}");

    // Without the write inside, the change lands and the submodule stays as it was.
    repo.agent("echo more >> src/lib.txt");
    // (`git add -A` would drop the gitlink, whose directory is empty here.)
    repo.git(&["add", "boxdelegate.toml"]);
    repo.git(&["commit", "-q", "-m", "agent: leave the submodule alone"]);
    let (code, units, err) = repo.run(&["--unit", "u"]);
    assert_eq!(code, 0, "{err}\n{:?}", units);
    let tree = repo.git(&["ls-tree", "boxdelegate/u", "vendor/lib"]);
    assert_eq!(tree, format!("160000 commit {sub}\tvendor/lib"));
}

#[test]
fn lfs_pointers_large_files_and_eol_attributes_land_byte_for_byte() {
    require_base_image();
    let repo = shaped(
        "shape-attributes",
        "cat assets/model.bin | head -1; printf 'line two\\n' >> docs/notes.txt",
        "\"docs/**\"",
    );
    // What git-lfs commits: a pointer, under a filter the snapshot never runs.
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
    repo.write(
        ".gitattributes",
        "* text=auto eol=crlf\n*.bin filter=lfs diff=lfs merge=lfs -text\n*.dat -text\n",
    );
    repo.write("assets/model.bin", pointer);
    repo.write("docs/notes.txt", "line one\n");
    // A file over 50 MB, as some repositories carry (not compressible).
    let big = repo.path().join("data/big.dat");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&big).unwrap();
    let st = Command::new("head")
        .args(["-c", "55000000", "/dev/urandom"])
        .stdout(Stdio::from(f))
        .status()
        .unwrap();
    assert!(st.success());
    let base = repo.commit("attributes, a pointer, a large file");
    let blob = |rev: &str, path: &str| repo.git(&["rev-parse", &format!("{rev}:{path}")]);
    let (code, units, err) = repo.run(&["--unit", "u"]);
    let u = &units[0];
    assert_eq!(code, 0, "{err}\n{u}");
    assert_eq!(u["status"], "landed", "{u}");
    // The agent saw the pointer as it is stored, not the LFS content.
    let log = std::fs::read_to_string(u["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("version https://git-lfs.github.com/spec/v1"),
        "{log}"
    );
    // Only the edited file changed; the pointer and the large file are the same blobs.
    assert_eq!(
        repo.git(&["diff", "--name-only", &base, "boxdelegate/u"]),
        "docs/notes.txt"
    );
    for p in ["assets/model.bin", "data/big.dat", ".gitattributes"] {
        assert_eq!(blob(&base, p), blob("boxdelegate/u", p), "{p}");
    }
    // eol=crlf is a checkout matter: the stored blob stays LF, as git itself would store it.
    let notes = repo.git(&["cat-file", "-p", "boxdelegate/u:docs/notes.txt"]);
    assert_eq!(notes, "line one\nline two");
}

#[test]
fn a_repository_with_ten_thousand_commits_lands_like_a_small_one() {
    require_base_image();
    let repo = shaped("shape-history", "echo more >> src/lib.txt", "\"src/**\"");
    repo.commit("project");
    // 10,000 commits on top, through fast-import (seconds, not minutes).
    let head = repo.git(&["rev-parse", "HEAD"]);
    let mut stream = String::new();
    for i in 0..10_000 {
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter T <t@example.com> {} +0000\ndata <<END\nhistory {i}\nEND\n{}M 100644 inline history/log.txt\ndata <<END\nentry {i}\nEND\n\n",
            1_700_000_000 + i,
            if i == 0 { format!("from {head}\n") } else { String::new() }
        ));
    }
    let mut cmd = Command::new("git");
    git_env(&mut cmd);
    let mut child = cmd
        .arg("-C")
        .arg(repo.path())
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    repo.git(&["reset", "-q", "--hard", "main"]);
    assert_eq!(repo.git(&["rev-list", "--count", "HEAD"]), "10002");
    let (code, units, err) = repo.run(&["--unit", "u"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "landed");
    assert_eq!(
        repo.git(&["rev-list", "--count", "main..boxdelegate/u"]),
        "1"
    );
}
