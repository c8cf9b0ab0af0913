//! Host-side git, isolated from configuration the repository or the user's environment controls.
//!
//! Every call runs with hooks off, no system or global config, no fsmonitor, no pager and no
//! prompts, with the inherited `GIT_*` variables removed so that nothing redirects it to another
//! repository or index. This module never runs git inside a directory a container wrote.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// A repository on the host: its top-level work tree and its git directory.
#[derive(Debug, Clone)]
pub struct Repo {
    pub root: PathBuf,
    pub git_dir: PathBuf,
    /// The directory shared by all worktrees (objects, refs): where boxdelegate keeps run state.
    pub common_dir: PathBuf,
}

/// Environment variables git honours that would let the caller's environment redirect or
/// reconfigure our calls.
const SCRUBBED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_EXTERNAL_DIFF",
    "GIT_EXEC_PATH",
    "GIT_SSH_COMMAND",
    "GIT_PAGER",
    "GIT_EDITOR",
];

/// A `git` command with the isolation described in the module docs.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.pager=cat",
            "-c",
            "protocol.allow=never",
        ])
        .stdin(Stdio::null());
    cmd
}

fn describe(args: &[&OsStr]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_output(mut cmd: Command, args: &[&OsStr], input: Option<&[u8]>) -> Result<Output> {
    cmd.args(args);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Git {
        args: describe(args),
        message: format!("cannot start git: {e} (is git installed and on PATH?)"),
    })?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        // Write from a thread so a large input cannot deadlock against a full stdout pipe.
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output();
        let _ = writer.join();
        out
    } else {
        child.wait_with_output()
    }
    .map_err(|e| Error::Git {
        args: describe(args),
        message: e.to_string(),
    })
}

impl Repo {
    /// Finds the repository containing `dir`.
    pub fn discover(dir: &Path) -> Result<Repo> {
        let args: Vec<&OsStr> = [
            "rev-parse",
            "--path-format=absolute",
            "--show-toplevel",
            "--absolute-git-dir",
            "--git-common-dir",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        let out = run_output(command(dir), &args, None)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = if stderr.contains("not a git repository") {
                "not a git repository".to_string()
            } else {
                format!("git cannot open it: {}", stderr.trim())
            };
            return Err(Error::Repo {
                path: dir.to_path_buf(),
                message,
                hint: Some(
                    "run boxdelegate inside a git repository (or pass --repo DIR); `git init` creates one".into(),
                ),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let root = PathBuf::from(lines.next().unwrap_or_default());
        let git_dir = PathBuf::from(lines.next().unwrap_or_default());
        let common_dir = lines
            .next()
            .map(PathBuf::from)
            .unwrap_or_else(|| git_dir.clone());
        Ok(Repo {
            root,
            git_dir,
            common_dir,
        })
    }

    pub fn cmd(&self) -> Command {
        command(&self.root)
    }

    /// A git command whose new objects go to the private store `store`, reading the
    /// repository's own objects as alternates: nothing reaches the user's object database until
    /// a change has passed the scope check and goes on to be verified and landed.
    pub fn store_cmd(&self, store: &Path) -> Command {
        let mut cmd = self.cmd();
        cmd.env("GIT_OBJECT_DIRECTORY", store).env(
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            self.common_dir.join("objects"),
        );
        cmd
    }

    /// Runs git with `args`, failing with git's stderr on a non-zero exit.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Vec<u8>> {
        self.run_with(self.cmd(), args, None)
    }

    pub fn run_with<S: AsRef<OsStr>>(
        &self,
        cmd: Command,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = run_output(cmd, &args, input)?;
        if !out.status.success() {
            return Err(Error::Git {
                args: describe(&args),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Runs git and returns its stdout as a trimmed string.
    pub fn text<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(args)?).trim().to_string())
    }

    /// Resolves `rev` to an object id, or `None` if it does not exist.
    pub fn resolve(&self, rev: &str) -> Result<Option<String>> {
        let out = run_output(
            self.cmd(),
            &[
                OsStr::new("rev-parse"),
                OsStr::new("--verify"),
                OsStr::new("--quiet"),
                OsStr::new(rev),
            ],
            None,
        )?;
        if out.status.success() {
            Ok(Some(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ))
        } else {
            Ok(None)
        }
    }

    /// The version string of the host git, e.g. `2.47.3`.
    pub fn version() -> Result<String> {
        let out = run_output(command(Path::new(".")), &[OsStr::new("--version")], None)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.trim().trim_start_matches("git version ").to_string())
    }
}
