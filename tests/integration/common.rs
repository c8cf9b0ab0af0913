//! Test environment: hermetic git repositories in temp dirs, the real binary, the real engine.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

pub const BASE_IMAGE: &str = "boxdelegate/base:bookworm";

/// A repository in a temporary directory with a fixed identity and clock.
pub struct TestRepo {
    dir: tempfile::TempDir,
    images: std::cell::RefCell<Vec<String>>,
}

pub fn git_env(cmd: &mut Command) {
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE");
}

/// The test profile: depends on `deps.lock`, "installs" it by copying, no network; a lockfile
/// containing `broken` makes the install fail.
pub const TEST_PROFILE: &str = r#"
description = "test profile: copies deps.lock into /deps, needs no network"
image = "boxdelegate/base:bookworm"
manifests = ["deps.lock", "**/deps.lock"]
install = '''
mkdir -p /deps/lib
if [ -f deps.lock ]; then cp deps.lock /deps/lib/installed; fi
echo "installing $(wc -l < deps.lock 2>/dev/null || echo 0) packages"
if grep -q broken deps.lock 2>/dev/null; then
  echo "resolver: no version of 'broken' satisfies the lockfile" >&2
  exit 3
fi
'''
"#;

impl TestRepo {
    /// An empty repository (no commits).
    pub fn empty() -> TestRepo {
        let dir = tempfile::Builder::new()
            .prefix("bd-test-")
            .tempdir()
            .unwrap();
        let repo = TestRepo {
            dir,
            images: Default::default(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// A repository with a boxdelegate.toml using the test profile and a first commit. `salt`
    /// makes its trees and deps keys unique to the calling test.
    pub fn with_project(salt: &str) -> TestRepo {
        let repo = TestRepo::empty();
        repo.write(".boxdelegate/profiles/test.toml", TEST_PROFILE);
        repo.write(
            "boxdelegate.toml",
            "[project]\nprofile = \"test\"\n\n[run]\ninfra_retries = 0\n",
        );
        repo.write("deps.lock", &format!("left-pad==1.0 # {salt}\n"));
        repo.write("src/lib.txt", &format!("library code for {salt}\n"));
        repo.write("README.md", "# sample\n");
        repo.write(".gitignore", ".env\ntarget/\n");
        repo.commit("initial");
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        git_env(&mut cmd);
        let out = cmd.arg("-C").arg(self.path()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// The binary, run in this repository.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("boxdelegate").unwrap();
        git_env(&mut cmd);
        cmd.current_dir(self.path())
            .env_remove("CODEX_THREAD_ID")
            .env_remove("RUST_LOG")
            .env_remove("BOXDELEGATE_IMAGE_BUILD")
            .env_remove("BOXDELEGATE_EXTRACT");
        cmd
    }

    /// Runs `image build --json` (plus `extra` args), expecting success; remembers the images
    /// for removal when the test ends.
    pub fn build(&self, extra: &[&str]) -> serde_json::Value {
        self.build_with(extra, &[])
    }

    /// [`TestRepo::build`] with environment variables set for the command.
    pub fn build_with(&self, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
        let out = self
            .cmd()
            .args(["image", "build", "--json"])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "image build failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = crate::common::final_json(&out.stdout);
        let mut images = self.images.borrow_mut();
        for key in ["unit_image", "deps_image"] {
            let tag = v[key]["image"].as_str().unwrap().to_string();
            if !images.contains(&tag) {
                images.push(tag);
            }
        }
        v
    }

    /// A listing of every file, directory and symlink under `/work` in `image`: path, type,
    /// mode, owner, size, link target and content hash.
    pub fn work_listing(&self, image: &str) -> String {
        sh_in(
            image,
            "cd /work && find . -mindepth 1 -printf '%p %y %m %U:%G %s %l\\n' | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum",
        )
    }

    /// A snapshot of the host side: every file under the repository (including `.git`) with a
    /// hash of its content, and every ref.
    pub fn host_state(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![self.path().to_path_buf()];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    stack.push(e.path());
                }
                files.push(e.path());
            }
        }
        files.sort();
        for f in files {
            let rel = f.strip_prefix(self.path()).unwrap().display().to_string();
            let content = if f.is_file() {
                std::fs::read(&f).unwrap()
            } else {
                vec![]
            };
            out.push_str(&format!("{rel} {:x}\n", md5ish(&content)));
        }
        out
    }
}

fn md5ish(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart in a test.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Drop for TestRepo {
    fn drop(&mut self) {
        // Whatever landed, the host repository passes git's own strictest object checks.
        if !std::thread::panicking() && self.path().join(".git").is_dir() {
            let landed = self.git(&[
                "for-each-ref",
                "--format=%(refname)",
                "refs/heads/boxdelegate/",
            ]);
            if !landed.is_empty() {
                let mut cmd = Command::new("git");
                git_env(&mut cmd);
                let out = cmd
                    .arg("-C")
                    .arg(self.path())
                    .args(["fsck", "--strict", "--no-dangling", "--no-progress"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(
                    out.status.success() && !text.contains("warning") && !text.contains("error"),
                    "git fsck --strict of {} after landing {landed}: {text}",
                    self.path().display()
                );
            }
        }
        // This repository's claims on images (its use tags) go first: an image then goes
        // with its last tag below, unless another repository still claims it.
        release_claims(self.path());
        // Unit images first, then the dependency images they were built on.
        let mut deps = Vec::new();
        for image in self.images.borrow().iter().rev() {
            if let Ok(out) = Command::new("docker")
                .args([
                    "image",
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"boxdelegate.deps-key\"}}",
                    image,
                ])
                .output()
            {
                let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !key.is_empty() && image.starts_with("boxdelegate/snap:") {
                    deps.push(format!("boxdelegate/deps:{key}"));
                }
            }
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
        for image in deps {
            let _ = Command::new("docker").args(["rmi", &image]).output();
        }
    }
}

/// Removes the claims (use tags, `boxdelegate/r-<id>:…`) the repository at `dir` put on
/// images, as a repository that is gone no longer uses them.
pub fn release_claims(dir: &Path) {
    let Ok(id) = std::fs::read_to_string(dir.join(".git/boxdelegate/repo-id")) else {
        return;
    };
    if let Ok(out) = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .arg(format!("boxdelegate/r-{}", id.trim()))
        .output()
    {
        for tag in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("docker").args(["rmi", tag]).output();
        }
    }
}

/// Releases the image claims of a repository that is not a [`TestRepo`] (a clone) when
/// dropped.
pub struct ReleaseClaims(pub std::path::PathBuf);

impl Drop for ReleaseClaims {
    fn drop(&mut self) {
        release_claims(&self.0);
    }
}

/// The binary, with a hermetic git environment.
pub fn boxdelegate() -> Command {
    let mut cmd = Command::cargo_bin("boxdelegate").unwrap();
    git_env(&mut cmd);
    cmd.env_remove("CODEX_THREAD_ID")
        .env_remove("RUST_LOG")
        .env_remove("BOXDELEGATE_IMAGE_BUILD")
        .env_remove("BOXDELEGATE_EXTRACT");
    cmd
}

/// The output of `sh -c script` in a throwaway container of `image`, without network.
pub fn sh_in(image: &str, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        script,
    ])
}

/// The rules of a unit's rejections, in order.
pub fn rejection_rules(unit: &serde_json::Value) -> Vec<String> {
    unit["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect()
}

/// Runs the docker CLI (for inspection only; the binary itself talks to the engine API).
pub fn docker(args: &[&str]) -> String {
    cli("docker", args)
}

/// Runs `program` with `args`; its standard output, failing the test when it fails.
fn cli(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} CLI: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the engine the suite runs against is Podman (its Docker API answers inspect with
/// some fields its own way; the tests then read those from Podman itself).
pub fn on_podman() -> bool {
    static PODMAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PODMAN.get_or_init(|| {
        docker(&[
            "version",
            "--format",
            "{{range .Server.Components}}{{.Name}};{{end}}",
        ])
        .contains("Podman")
    })
}

/// Podman's own inspect of container `id`, formatted by `format`.
pub fn podman_inspect(id: &str, format: &str) -> String {
    cli("podman", &["inspect", "--format", format, id])
        .trim()
        .to_string()
}

/// Fails early, with the fix, when the engine lacks the base image the tests build on.
pub fn require_base_image() {
    let out = Command::new("docker")
        .args(["image", "inspect", BASE_IMAGE])
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "the engine has no {BASE_IMAGE}; build it first: sudo images/base/build-from-debian.sh /tmp/base.tar && cargo run -- image import base /tmp/base.tar (.ci/run does this)"
    );
}

/// The base image and the rust toolchain image, built from Debian packages when the engine
/// lacks it (a shared image, like the base: kept).
pub fn require_rust_image() {
    require_toolchain_image("rust");
}

/// The base image and toolchain `name`'s image (`boxdelegate/NAME:bookworm`), built from
/// Debian packages when the engine lacks it (shared, kept).
pub fn require_toolchain_image(name: &str) {
    require_base_image();
    if docker(&["images", "-q", &format!("boxdelegate/{name}:bookworm")])
        .trim()
        .is_empty()
    {
        let out = boxdelegate()
            .args(["-q", "image", "build", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl TestRepo {
    /// Writes `units/<id>.md`.
    pub fn unit(&self, id: &str, front: &str, task: &str) {
        self.write(
            &format!("units/{id}.md"),
            &format!("+++\nid = \"{id}\"\ntitle = \"Unit {id}\"\n{front}\n+++\n{task}\n"),
        );
    }

    /// Sets the command agent in boxdelegate.toml (test profile).
    pub fn agent(&self, command: &str) {
        let cmd = toml_string(command);
        self.write(
            "boxdelegate.toml",
            &format!(
                "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {cmd}\n\n[run]\ninfra_retries = 0\n"
            ),
        );
    }

    /// Runs `run --json` with `args`; returns the exit code and the unit results.
    pub fn run(&self, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
        let (code, v, err) = self.run_value(args);
        (code, v["units"].as_array().unwrap().clone(), err)
    }

    /// Runs `run --json` with `args`; returns the exit code, the whole JSON (`run` report and
    /// `units`) and stderr.
    pub fn run_value(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        self.run_value_with(args, &[])
    }

    /// [`TestRepo::run`] with environment variables set for the command.
    pub fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, Vec<serde_json::Value>, String) {
        let (code, v, err) = self.run_value_with(args, env);
        (code, v["units"].as_array().unwrap().clone(), err)
    }

    fn run_value_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, serde_json::Value, String) {
        let out = self
            .cmd()
            .args(["run", "--json"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = stderr(&out);
        let v: serde_json::Value = crate::common::final_json_result(&out.stdout)
            .unwrap_or_else(|e| panic!("run printed no JSON ({e}): {}\n{err}", stdout(&out)));
        // Unit images built for this repository are removed with it.
        for u in v["units"].as_array().unwrap() {
            if let Some(i) = u["unit_image"].as_str() {
                self.remember_image(i);
            }
        }
        (out.status.code().unwrap_or(-1), v, err)
    }

    /// Remembers an image for removal when the test ends.
    pub fn remember_image(&self, image: &str) {
        let mut images = self.images.borrow_mut();
        if !images.iter().any(|i| i == image) {
            images.push(image.to_string());
        }
    }

    /// Every ref with its target.
    pub fn refs(&self) -> String {
        self.git(&["for-each-ref", "--format=%(refname) %(objectname)"])
    }
}

/// The final object of a `--json` command: its last line. Every line before it must be a
/// JSON event (`"type": "event"`).
pub fn final_json_result(stdout: &[u8]) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some((last, events)) = lines.split_last() else {
        return Err("no output".into());
    };
    for e in events {
        let v: serde_json::Value =
            serde_json::from_str(e).map_err(|err| format!("{err} in line {e:?}"))?;
        if v["type"] != "event" {
            return Err(format!("a line before the last is not an event: {e}"));
        }
    }
    serde_json::from_str(last).map_err(|err| format!("{err} in the last line {last:?}"))
}

/// [`final_json_result`], which must succeed.
pub fn final_json(stdout: &[u8]) -> serde_json::Value {
    final_json_result(stdout).unwrap_or_else(|e| panic!("{e}"))
}

pub fn toml_string(s: &str) -> String {
    format!("'''{s}'''")
}

/// The install log a failed dependency install's message names ("its whole log: PATH; …"),
/// and the deps key prefix its file name carries (`deps-<key16>.log`).
pub fn named_install_log(message: &str) -> (&str, &str) {
    let log = message
        .split("its whole log: ")
        .nth(1)
        .and_then(|t| t.split("; last lines").next())
        .unwrap_or_else(|| panic!("no install log named: {message}"));
    let key16 = log
        .rsplit("deps-")
        .next()
        .and_then(|k| k.strip_suffix(".log"))
        .unwrap_or_else(|| panic!("not an install log's name: {log}"));
    (log, key16)
}
