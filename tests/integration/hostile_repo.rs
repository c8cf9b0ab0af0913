//! A hostile repository: `.gitattributes` selecting filter, diff and merge drivers, hooks and
//! an fsmonitor in its configuration or in a file that configuration includes, and embedded
//! git directories in its tree. Each hostile setting runs a canary script outside the
//! repository; plain git is shown to run it, boxdelegate never does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// Every hook name git knows.
const HOOKS: &[&str] = &[
    "applypatch-msg",
    "pre-applypatch",
    "post-applypatch",
    "pre-commit",
    "pre-merge-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-rebase",
    "post-checkout",
    "post-merge",
    "pre-push",
    "pre-receive",
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "pre-auto-gc",
    "post-rewrite",
    "sendemail-validate",
    "fsmonitor-watchman",
    "p4-changelist",
    "p4-prepare-changelist",
    "p4-post-changelist",
    "p4-pre-submit",
    "post-index-change",
];

/// A script outside the repository that leaves a file behind when anything runs it, then
/// behaves as a pass-through filter.
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::Builder::new()
            .prefix("bd-canary-")
            .tempdir()
            .unwrap();
        let canary = Canary { dir };
        std::fs::write(
            canary.script(),
            format!(
                "#!/bin/sh\ntouch '{}'\nexec cat \"$@\" 2>/dev/null\n",
                canary.path().display()
            ),
        )
        .unwrap();
        make_executable(&canary.script());
        canary
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("canary.sh")
    }

    fn s(&self) -> String {
        self.script().display().to_string()
    }

    /// Asserts that `action` (plain git) runs the canary, then removes it: the test can fail.
    fn proven_by(&self, what: &str, action: impl FnOnce()) {
        assert!(!self.path().exists());
        action();
        assert!(self.path().exists(), "{what} runs the canary");
        std::fs::remove_file(self.path()).unwrap();
    }

    fn assert_untouched(&self, after: &str) {
        assert!(
            !self.path().exists(),
            "a command the repository configured ran on the host during {after}"
        );
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// git as a user runs it in that repository: its own configuration applies.
fn plain_git(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("git");
    git_env(&mut cmd);
    cmd.arg("-C").arg(dir).args(args).output().unwrap()
}

/// Makes the file's stat information disagree with the index, so that git must read (and
/// filter) its contents to tell whether it changed.
fn make_stale(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
}

fn no_container_left(run_id: &str) {
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=boxdelegate.run={run_id}"),
        "--format",
        "{{.ID}}",
    ]);
    assert_eq!(left.trim(), "", "no container left");
}

/// The host state without run state and objects (landing writes objects, never refs, when it
/// refuses).
fn state_without_run_state(repo: &TestRepo) -> String {
    repo.host_state()
        .lines()
        .filter(|l| !l.starts_with(".git/boxdelegate") && !l.starts_with(".git/objects"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn filter_diff_and_merge_drivers_the_repository_selects_never_run_on_the_host() {
    require_base_image();
    let canary = Canary::new();
    let s = canary.s();
    let repo = TestRepo::with_project("hostile-drivers");
    repo.write(".gitattributes", "*.txt filter=evil diff=evil merge=evil\n");
    // Committed with the repository; its configuration includes it.
    repo.write(
        "evil.gitconfig",
        &format!("[diff \"evil\"]\n\ttextconv = {s}\n\tcommand = {s}\n[merge \"evil\"]\n\tdriver = {s}\n"),
    );
    repo.agent("printf 'changed by the agent\\n' >> src/lib.txt");
    repo.unit("drivers", "scope = [\"src/**\"]", "Change the library.");
    let base = repo.commit("project");
    // `moved` changes the same file, so that landing there needs a merge of it.
    repo.git(&["checkout", "-q", "-b", "moved"]);
    repo.write(
        "src/lib.txt",
        "moved on\nlibrary code for hostile-drivers\n",
    );
    let moved = repo.commit("move");
    repo.git(&["checkout", "-q", "main"]);
    for (key, value) in [
        ("filter.evil.clean", s.as_str()),
        ("filter.evil.smudge", s.as_str()),
        ("filter.evil.required", "true"),
        ("include.path", "../evil.gitconfig"),
    ] {
        repo.git(&["config", key, value]);
    }
    let lib = repo.path().join("src/lib.txt");
    canary.proven_by("git status on a file with stale stat information", || {
        make_stale(&lib);
        plain_git(repo.path(), &["status", "--porcelain"]);
    });
    canary.proven_by("git diff through the included configuration", || {
        plain_git(repo.path(), &["diff", &base, &moved]);
    });
    make_stale(&lib);

    // The target branch is checked out and clean: the work tree follows.
    let (code, v, err) = repo.run_value(&["--unit", "drivers", "--branch", "main"]);
    let u = &v["units"][0];
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(u["status"], "landed", "{u}");
    canary.assert_untouched("run, landing on the checked-out branch");
    assert_eq!(
        std::fs::read_to_string(&lib).unwrap(),
        "library code for hostile-drivers\nchanged by the agent\n",
        "the work tree followed the branch"
    );
    // The index too (compared without reading the work tree, which would run the filter).
    assert_eq!(
        repo.git(&["diff-index", "--cached", "--name-only", "HEAD"]),
        ""
    );
    no_container_left(u["run_id"].as_str().unwrap());

    // CI re-checks the landed commit.
    let out = repo
        .cmd()
        .args(["verify", "--commit", "main", "--json"])
        .output()
        .unwrap();
    if let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        if let Some(image) = rec["unit_image"].as_str() {
            repo.remember_image(image);
        }
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    canary.assert_untouched("verify --commit");

    // `moved` went on without the snapshot: the merge would need the repository's merge
    // driver, which is never run, so the path is reported as a conflict and nothing is written.
    make_stale(&lib);
    let before = state_without_run_state(&repo);
    let refs = repo.refs();
    let (code, v, err) = repo.run_value(&["--unit", "drivers", "--branch", "moved", "--rerun"]);
    let u = &v["units"][0];
    assert_eq!(code, 11, "{err}\n{v}");
    assert_eq!(u["status"], "conflict", "{u}");
    assert!(
        u["message"].as_str().unwrap().contains("src/lib.txt"),
        "{u}"
    );
    canary.assert_untouched("run, landing on a moved branch");
    assert_eq!(repo.refs(), refs);
    assert_eq!(state_without_run_state(&repo), before);
    no_container_left(u["run_id"].as_str().unwrap());

    for args in [&["status"][..], &["diff", "drivers"], &["clean"]] {
        let out = repo.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        canary.assert_untouched(&args.join(" "));
    }
}

#[test]
fn hooks_fsmonitor_and_embedded_git_directories_never_run_on_the_host() {
    require_base_image();
    let canary = Canary::new();
    let s = canary.s();
    let repo = TestRepo::with_project("hostile-hooks");
    for hook in HOOKS {
        let path = repo.path().join("hooks").join(hook);
        repo.write(
            &format!("hooks/{hook}"),
            &format!("#!/bin/sh\nexec {s} \"$@\"\n"),
        );
        make_executable(&path);
    }
    repo.write(
        "evil.gitconfig",
        &format!("[core]\n\thooksPath = hooks\n[filter \"evil\"]\n\tclean = {s}\n\tsmudge = {s}\n"),
    );
    // A git directory committed in the tree, with a work tree around it: plain git run inside
    // it takes it for a repository.
    let embedded = |dir: &str| {
        vec![
            (format!("{dir}/HEAD"), "ref: refs/heads/main\n".to_string()),
            (
                format!("{dir}/config"),
                format!("[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = ..\n\tfsmonitor = {s}\n"),
            ),
            (format!("{dir}/refs/heads/.keep"), String::new()),
            (format!("{dir}/objects/info/.keep"), String::new()),
        ]
    };
    for (path, content) in embedded("vendor/evil.git") {
        repo.write(&path, &content);
    }
    // The agent plants one more, and attributes that select the repository's filter.
    let mut agent =
        String::from("set -e; mkdir -p src/sneaky.git/refs/heads src/sneaky.git/objects/info");
    for (path, content) in embedded("src/sneaky.git") {
        agent.push_str(&format!("; printf '%s' '{content}' > {path}"));
    }
    agent.push_str("; printf '* filter=evil diff=evil merge=evil\\n' > src/.gitattributes");
    agent.push_str("; printf 'changed by the agent\\n' >> src/lib.txt");
    repo.agent(&agent);
    repo.unit("sneaky", "scope = [\"src/**\"]", "Change the library.");
    repo.commit("project");
    repo.git(&["config", "core.fsmonitor", &s]);
    repo.git(&["config", "include.path", "../evil.gitconfig"]);

    canary.proven_by("git status (fsmonitor)", || {
        plain_git(repo.path(), &["status", "--porcelain"]);
    });
    canary.proven_by("git update-ref (hooks from the included file)", || {
        plain_git(repo.path(), &["update-ref", "refs/heads/x", "HEAD"]);
    });
    plain_git(
        repo.path(),
        &[
            "-c",
            "core.hooksPath=/dev/null",
            "update-ref",
            "-d",
            "refs/heads/x",
        ],
    );
    canary.proven_by("git status inside the embedded git directory", || {
        plain_git(&repo.path().join("vendor/evil.git"), &["status"]);
    });

    let (code, v, err) = repo.run_value(&["--unit", "sneaky", "--branch", "main"]);
    let u = &v["units"][0];
    // The scope check accepts these paths (none is a `.git` component); the landing is
    // contained: boxdelegate's git runs nothing they configure.
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(u["status"], "landed", "{u}");
    canary.assert_untouched("run, landing on the checked-out branch");
    assert!(repo.path().join("src/sneaky.git/config").is_file());
    assert!(repo
        .git(&["show", "HEAD:src/lib.txt"])
        .ends_with("changed by the agent"));
    no_container_left(u["run_id"].as_str().unwrap());

    // Started inside an embedded git directory, boxdelegate does not take it for the
    // repository, and runs nothing it configures.
    let before = state_without_run_state(&repo);
    for dir in ["vendor/evil.git", "src/sneaky.git"] {
        for args in [&["status"][..], &["snapshot"]] {
            let out = repo
                .cmd()
                .current_dir(repo.path().join(dir))
                .args(args)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(4),
                "{dir} {args:?}: {}",
                stderr(&out)
            );
            assert!(stderr(&out).contains("bare repository"), "{}", stderr(&out));
            canary.assert_untouched(&format!("boxdelegate {args:?} in {dir}"));
        }
    }
    assert_eq!(state_without_run_state(&repo), before);
}

#[test]
fn an_include_dirty_snapshot_refuses_a_file_a_configured_filter_would_store() {
    let canary = Canary::new();
    let s = canary.s();
    let repo = TestRepo::with_project("hostile-dirty");
    repo.write(".gitattributes", "*.bin filter=evil\n");
    repo.write("data.bin", "stored\n");
    repo.commit("project");
    repo.git(&["config", "filter.evil.clean", &s]);
    repo.git(&["config", "filter.evil.required", "true"]);
    let snapshot = || {
        repo.cmd()
            .args(["snapshot", "--include-dirty"])
            .output()
            .unwrap()
    };
    // A dirty file the filter does not select is snapshotted.
    repo.write("src/lib.txt", "dirty\n");
    let out = snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    canary.assert_untouched("snapshot --include-dirty");

    repo.write("data.bin", "dirty\n");
    // A dirty snapshot writes blobs to the object database, nothing else.
    let before = state_without_run_state(&repo);
    let out = snapshot();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("data.bin") && stderr(&out).contains("\"evil\""),
        "{}",
        stderr(&out)
    );
    canary.assert_untouched("snapshot --include-dirty");
    assert_eq!(state_without_run_state(&repo), before);
    canary.proven_by("git add", || {
        plain_git(repo.path(), &["add", "data.bin"]);
    });
}
