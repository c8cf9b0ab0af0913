//! Every bad input: one clear message, a documented exit code, and the host unchanged.
//!
//! Where the error must come before any engine call, the engine is made unreachable
//! (`DOCKER_HOST` pointing at a missing socket): getting the configuration error rather than the
//! engine error proves nothing was created in the engine.

use crate::common::*;

const NO_ENGINE: &str = "unix:///nonexistent/boxdelegate-test.sock";

struct Case {
    repo: TestRepo,
    before: String,
}

impl Case {
    fn new(repo: TestRepo) -> Case {
        let before = repo.host_state();
        Case { repo, before }
    }

    /// Runs `args`, expects `code` and every `needle` in stderr, and an unchanged host.
    fn fails(&self, args: &[&str], engine: bool, code: i32, needles: &[&str]) -> String {
        self.fails_with(args, &[], engine, code, needles)
    }

    /// [`Case::fails`] with environment variables set for the command.
    fn fails_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        engine: bool,
        code: i32,
        needles: &[&str],
    ) -> String {
        let mut cmd = self.repo.cmd();
        cmd.envs(env.iter().copied());
        if !engine {
            cmd.env("DOCKER_HOST", NO_ENGINE);
        }
        let out = cmd.args(args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        for needle in needles {
            assert!(
                err.contains(needle),
                "{args:?}: expected {needle:?} in:\n{err}"
            );
        }
        assert!(
            err.contains("\nhint: "),
            "every error says what to do: {err}"
        );
        assert_eq!(stdout(&out), "", "nothing on stdout");
        assert_eq!(
            self.before,
            self.repo.host_state(),
            "host unchanged after {args:?}"
        );
        err
    }
}

#[test]
fn not_a_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    let binary = assert_cmd::cargo::cargo_bin("boxdelegate");
    for args in [
        &["snapshot"][..],
        &["image", "build"][..],
        &["init"][..],
        &["run", "--all"][..],
    ] {
        let out = std::process::Command::new(&binary)
            .args(args)
            .current_dir(dir.path())
            .env("GIT_CEILING_DIRECTORIES", dir.path().parent().unwrap())
            .env("DOCKER_HOST", NO_ENGINE)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains("not a git repository"), "{err}");
        assert!(
            err.contains("hint: run boxdelegate inside a git repository"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
}

#[test]
fn a_repository_with_no_commits() {
    let repo = TestRepo::empty();
    repo.write("boxdelegate.toml", "[project]\nprofile = \"generic\"\n");
    let case = Case::new(repo);
    case.fails(
        &["snapshot"],
        false,
        4,
        &["has no commits", "hint: commit something first"],
    );
    case.fails(&["image", "build"], false, 4, &["has no commits"]);
}

#[test]
fn malformed_toml() {
    let repo = TestRepo::with_project("malformed");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n[limits\nmemory = \"4g\"\n",
    );
    repo.commit("bad toml");
    let case = Case::new(repo);
    case.fails(
        &["image", "build"],
        false,
        3,
        &["boxdelegate.toml:3:", "hint: fix boxdelegate.toml"],
    );
}

#[test]
fn unknown_key_names_file_key_and_line() {
    let repo = TestRepo::with_project("unknown-key");
    repo.write("boxdelegate.toml", "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"command\"\ntimeout = \"5m\"\nmodle = \"x\"\n");
    repo.commit("typo");
    let case = Case::new(repo);
    case.fails(
        &["image", "build"],
        false,
        3,
        &[
            "boxdelegate.toml:7:1",
            "key `agent.modle`",
            "unknown field `modle`",
        ],
    );
}

#[test]
fn wrong_type_names_the_key() {
    let repo = TestRepo::with_project("wrong-type");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n[limits]\npids = \"lots\"\n",
    );
    repo.commit("wrong type");
    let case = Case::new(repo);
    case.fails(
        &["image", "build"],
        false,
        3,
        &["boxdelegate.toml:4:", "limits.pids"],
    );
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let repo = TestRepo::with_project("unknown-profile");
    repo.write("boxdelegate.toml", "[project]\nprofile = \"cobol\"\n");
    repo.commit("cobol");
    let case = Case::new(repo);
    case.fails(
        &["image", "build"],
        false,
        3,
        &[
            "unknown profile \"cobol\"",
            "rust, node, python, go, generic",
            "test",
        ],
    );
}

#[test]
fn engine_unreachable() {
    let repo = TestRepo::with_project("no-engine");
    let case = Case::new(repo);
    case.fails(
        &["image", "build"],
        false,
        5,
        &[
            "container engine at unix:///nonexistent/boxdelegate-test.sock",
            "hint: no socket at unix:///nonexistent/boxdelegate-test.sock: start the Docker (or Podman) daemon",
        ],
    );
}

#[test]
fn base_image_missing_says_how_to_build_it() {
    require_base_image();
    let repo = TestRepo::with_project("no-base");
    let case = Case::new(repo);
    let mut cmd = case.repo.cmd();
    cmd.env("BOXDELEGATE_BASE_IMAGE", "boxdelegate/base:missing-in-test");
    let out = cmd.args(["image", "build"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("image boxdelegate/base:missing-in-test is missing"),
        "{err}"
    );
    assert!(err.contains("images/base/build-from-debian.sh"), "{err}");
    assert!(err.contains("boxdelegate image import base"), "{err}");
    assert_eq!(case.before, case.repo.host_state());
    // The build stopped before any deps key existed: no image names the missing base.
    let mentions = docker(&[
        "images",
        "--filter",
        "label=boxdelegate.toolchain-image=boxdelegate/base:missing-in-test",
        "-q",
    ]);
    assert_eq!(mentions.trim(), "");
}

#[test]
fn a_bad_repo_flag_is_reported() {
    let repo = TestRepo::with_project("bad-flag");
    let case = Case::new(repo);
    case.fails(
        &["-C", "/nonexistent/dir", "snapshot"],
        false,
        4,
        &["/nonexistent/dir", "no such directory"],
    );
}

#[test]
fn unknown_image_name() {
    let repo = TestRepo::with_project("unknown-image");
    let case = Case::new(repo);
    case.fails(
        &["image", "build", "cobol"],
        false,
        2,
        &[
            "no shipped Containerfile named \"cobol\"",
            "base, python, rust",
        ],
    );
}

fn run_project(salt: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.agent("echo hi >> src/lib.txt");
    repo.unit("good", "scope = [\"src/**\"]", "Do it.");
    repo.commit("units");
    repo
}

#[test]
fn run_with_an_unknown_unit_id() {
    let case = Case::new(run_project("bad-unit-id"));
    case.fails(
        &["run", "--unit", "nope"],
        false,
        3,
        &["units/nope.md: unknown unit \"nope\"", "known units: good"],
    );
}

#[test]
fn run_with_bad_front_matter() {
    let repo = run_project("bad-front-matter");
    repo.write(
        "units/broken.md",
        "+++\nid = \"broken\"\ntitle = \"t\"\nscope = [\"src/**\"]\nowner = \"me\"\n+++\nx\n",
    );
    repo.write("units/nofront.md", "just a task\n");
    repo.commit("broken units");
    let case = Case::new(repo);
    case.fails(
        &["run", "--unit", "broken"],
        false,
        3,
        &["units/broken.md:5:1", "unknown field `owner`"],
    );
    case.fails(
        &["run", "--unit", "nofront"],
        false,
        3,
        &["units/nofront.md: no front matter"],
    );
}

#[test]
fn run_with_a_scope_glob_that_does_not_compile() {
    let repo = run_project("bad-glob");
    repo.unit("globby", "scope = [\"src/[a-\"]", "x");
    repo.commit("bad glob");
    let case = Case::new(repo);
    case.fails(
        &["run", "--unit", "globby"],
        false,
        3,
        &["units/globby.md: scope: glob \"src/[a-\" does not compile"],
    );
}

#[test]
fn run_with_a_branch_name_git_rejects() {
    let case = Case::new(run_project("bad-branch"));
    case.fails(
        &["run", "--unit", "good", "--branch", "no..dots"],
        false,
        2,
        &["\"no..dots\" is not a valid branch name"],
    );
    case.fails(
        &["run", "--unit", "good", "--branch=-x"],
        false,
        2,
        &["not a valid branch name"],
    );
    case.fails(
        &["run", "--unit", "good", "--branch", "bad name"],
        false,
        2,
        &["not a valid branch name"],
    );
}

#[test]
fn run_onto_the_checked_out_branch_with_a_dirty_work_tree() {
    let repo = run_project("dirty-target");
    repo.write("src/lib.txt", "uncommitted edit\n");
    let case = Case::new(repo);
    case.fails(
        &["run", "--unit", "good", "--branch", "main"],
        false,
        4,
        &[
            "target branch main is checked out and the working tree has uncommitted changes",
            "hint: commit or stash",
        ],
    );
}

#[test]
fn unit_new_refuses_to_overwrite() {
    let case = Case::new(run_project("unit-new"));
    case.fails(
        &["unit", "new", "good", "--scope", "src/**"],
        false,
        8,
        &["units/good.md already exists"],
    );
    case.fails(
        &["unit", "new", "x", "--scope", "src/[", "--scope", "b"],
        false,
        2,
        &["--scope \"src/[\" does not compile"],
    );
}

#[test]
fn bad_network_settings_are_refused_with_the_host_unchanged() {
    let mut case = Case::new(run_project("bad-network"));
    let config = std::fs::read_to_string(case.repo.path().join("boxdelegate.toml")).unwrap();
    let cases: [(&str, bool, &[&str]); 5] = [
        (
            "network = \"proxy\"\nallow = [\"api.example.com\"]\n",
            false,
            &[
                "agent.allow: \"api.example.com\" is not host:port",
                "\"host:port\"",
            ],
        ),
        (
            "allow = [\"api.example.com:443\"]\n",
            false,
            &["agent.allow and agent.egress_network apply only to network = \"proxy\""],
        ),
        (
            "network = \"host\"\n",
            false,
            &["agent.network: \"host\" is not allowed"],
        ),
        (
            "network = \"proxy\"\negress_network = \"bdtest-no-such-network\"\n",
            true,
            &["agent network: the engine has no network \"bdtest-no-such-network\""],
        ),
        (
            "network = \"bdtest-no-such-network\"\n",
            true,
            &[
                "the engine has no network \"bdtest-no-such-network\"",
                "docker network create",
            ],
        ),
    ];
    for (keys, engine, needles) in cases {
        case.repo.write(
            "boxdelegate.toml",
            &config.replace("[agent]\n", &format!("[agent]\n{keys}")),
        );
        case.repo.commit("network settings");
        case.before = case.repo.host_state();
        case.fails(&["run", "--unit", "good"], engine, 3, needles);
    }
}

#[test]
fn an_unknown_image_build_method_is_refused_before_anything_runs() {
    let case = Case::new(run_project("bad-build-method"));
    for args in [&["image", "build"][..], &["run", "--unit", "good"][..]] {
        case.fails_with(
            args,
            &[("BOXDELEGATE_IMAGE_BUILD", "comit")],
            false,
            3,
            &[
                "BOXDELEGATE_IMAGE_BUILD: unknown unit image build method \"comit\"",
                "hint: set it to `layer` (the default) or `commit`",
            ],
        );
    }
}

#[test]
fn an_unknown_way_to_list_a_change_is_refused_before_anything_runs() {
    let case = Case::new(run_project("bad-extract"));
    for args in [&["image", "build"][..], &["run", "--unit", "good"][..]] {
        case.fails_with(
            args,
            &[("BOXDELEGATE_EXTRACT", "inotify")],
            false,
            3,
            &[
                "BOXDELEGATE_EXTRACT: unknown way to list a change \"inotify\"",
                "hint: set it to `auto`",
            ],
        );
    }
}

#[test]
fn an_agent_image_is_refused_not_silently_ignored() {
    let repo = TestRepo::with_project("bad-agent-image");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[agent]\nkind = \"command\"\ncommand = \"true\"\nimage = \"alpine\"\n",
    );
    repo.unit("u", "scope = [\"src/**\"]", "Do.");
    repo.commit("agent image");
    let before = repo.host_state();
    let out = repo.cmd().args(["run", "--unit", "u"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("agent.image: \"alpine\" is not supported")
            && err.contains("hint: remove the key"),
        "{err}"
    );
    assert_eq!(repo.host_state(), before, "nothing changed");
}

#[test]
fn bad_wait_and_detach_inputs_are_refused_and_change_nothing() {
    let repo = TestRepo::with_project("bad-wait");
    repo.unit("u", "scope = [\"src/**\"]", "Work.");
    repo.commit("unit");
    let case = Case::new(repo);
    case.fails(
        &["wait", "u"],
        false,
        2,
        &[
            "no run delegates unit u",
            "boxdelegate run --unit u --detach",
        ],
    );
    case.fails(
        &["wait", "u", "--run", "../etc"],
        false,
        2,
        &["--run \"../etc\" is not a run id"],
    );
    case.fails(
        &["run", "--unit", "u", "--run-id", "not-an-id"],
        false,
        2,
        &["--run-id \"not-an-id\" is not a run id"],
    );
}
