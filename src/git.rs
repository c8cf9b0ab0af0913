//! Host-side git, isolated from configuration the repository or the user's environment controls.
//!
//! Every call runs with no system or global config, no pager and no prompts, with the inherited
//! `GIT_*` variables removed so that nothing redirects it to another repository or index. The
//! repository's own configuration (and anything it includes, which may be a file in the work
//! tree) cannot make it run a command: hooks and fsmonitor are off, signatures are never
//! checked, submodules are not recursed into, and every filter, diff and merge driver it
//! defines is overridden with an empty command, so that attributes selecting them run nothing.
//! Embedded bare repositories are never discovered. This module never runs git inside a
//! directory a container wrote.
//!
//! May not: run a command the repository's configuration names; run inside a directory a container
//! wrote.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
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
    "GIT_ATTR_SOURCE",
    "GIT_EXTERNAL_DIFF",
    "GIT_DIFF_OPTS",
    "GIT_EXEC_PATH",
    "GIT_SSH_COMMAND",
    "GIT_PAGER",
    "GIT_EDITOR",
];

/// Settings given on the command line of every call, where they take precedence over every
/// configuration file, including files the repository's configuration includes.
const FIXED_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.pager=cat",
    "protocol.allow=never",
    // `git log` would otherwise run `gpg.program` on signed commits.
    "log.showSignature=false",
    // Recursing runs git in each submodule, under the submodule's own configuration.
    "submodule.recurse=false",
    // A bare repository committed inside the work tree is never taken for the repository.
    "safe.bareRepository=explicit",
];

/// The kinds of driver a repository's configuration can define and its attributes select,
/// with the settings that hold a command and the value each is overridden with.
const DRIVERS: &[(&str, &[(&str, &str)])] = &[
    (
        "filter",
        &[
            ("clean", ""),
            ("smudge", ""),
            ("process", ""),
            // A required filter that does not run is an error; an overridden one is not.
            ("required", "false"),
        ],
    ),
    ("diff", &[("textconv", ""), ("command", "")]),
    // git reports a path whose merge driver cannot be started as a conflict.
    ("merge", &[("driver", "")]),
];

/// A filter, diff or merge driver defined in the configuration: `section.NAME.*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Driver {
    pub section: &'static str,
    pub name: Vec<u8>,
}

/// `git` with the fixed isolation, but without the driver overrides.
fn base_command(dir: &Path) -> Command {
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
        .arg(dir);
    for setting in FIXED_CONFIG {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Every filter, diff and merge driver the configuration seen from `dir` defines, includes
/// followed. Reading configuration runs nothing.
pub fn drivers(dir: &Path) -> Result<Vec<Driver>> {
    Ok(read_drivers(dir)?.0)
}

/// [`drivers`], and whether the configuration includes other files (`include.*`,
/// `includeIf.*`).
fn read_drivers(dir: &Path) -> Result<(Vec<Driver>, bool)> {
    let args: Vec<&OsStr> = [
        "config",
        "--null",
        "--name-only",
        "--get-regexp",
        r"^(filter|diff|merge|include|includeif)\.",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let out = run_output(base_command(dir), &args, None)?;
    // 1: no such key (also outside any repository).
    if !out.status.success() && out.status.code() != Some(1) {
        return Err(Error::Git {
            args: describe(&args),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let includes = out
        .stdout
        .split(|b| *b == 0)
        .any(|k| k.starts_with(b"include.") || k.starts_with(b"includeif."));
    let mut found: Vec<Driver> = out
        .stdout
        .split(|b| *b == 0)
        .filter_map(parse_driver_key)
        .collect();
    found.sort();
    found.dedup();
    Ok((found, includes))
}

/// The size, modification time and inode of each file a repository's configuration is read
/// from (system and global configuration are never read).
type Fingerprint = Vec<Option<(u64, i64, i64, u64)>>;

fn fingerprint(repo: &Repo) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    [
        repo.common_dir.join("config"),
        repo.common_dir.join("config.worktree"),
        repo.git_dir.join("config.worktree"),
    ]
    .iter()
    .map(|f| {
        std::fs::symlink_metadata(f)
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
    })
    .collect()
}

/// Drivers read per repository, kept while its configuration files are as they were. Only a
/// configuration that includes no other file is kept: an included file may be anywhere (the
/// work tree, which landing writes, among others) and is not watched. A run makes dozens of
/// git calls; reading the configuration again before each doubled their number.
static DRIVERS_SEEN: std::sync::Mutex<Vec<(PathBuf, Fingerprint, Vec<Driver>)>> =
    std::sync::Mutex::new(Vec::new());

fn repo_drivers(repo: &Repo) -> Result<Vec<Driver>> {
    let now = fingerprint(repo);
    {
        let seen = DRIVERS_SEEN.lock().expect("poisoned");
        if let Some((_, _, d)) = seen.iter().find(|(r, f, _)| *r == repo.root && *f == now) {
            return Ok(d.clone());
        }
    }
    let (found, includes) = read_drivers(&repo.root)?;
    let mut seen = DRIVERS_SEEN.lock().expect("poisoned");
    seen.retain(|(r, _, _)| *r != repo.root);
    if !includes {
        seen.push((repo.root.clone(), now, found.clone()));
    }
    Ok(found)
}

/// `section.NAME.variable` (NAME may hold dots) for a driver section; two-level keys such as
/// `merge.renames` define no driver.
fn parse_driver_key(key: &[u8]) -> Option<Driver> {
    let first = key.iter().position(|b| *b == b'.')?;
    let last = key.iter().rposition(|b| *b == b'.')?;
    if last <= first + 1 {
        return None;
    }
    let (section, _) = DRIVERS
        .iter()
        .find(|(s, _)| s.as_bytes() == &key[..first])?;
    Some(Driver {
        section,
        name: key[first + 1..last].to_vec(),
    })
}

/// A `git` command with the isolation described in the module docs. The overrides go through
/// `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, which take a driver name verbatim where `-c` would
/// split it at a `=`.
pub fn command(dir: &Path) -> Result<Command> {
    Ok(with_overrides(base_command(dir), &drivers(dir)?))
}

fn with_overrides(mut cmd: Command, drivers: &[Driver]) -> Command {
    let mut n = 0;
    for driver in drivers {
        let settings = DRIVERS
            .iter()
            .find(|(s, _)| *s == driver.section)
            .map(|(_, settings)| *settings)
            .unwrap_or_default();
        for (variable, value) in settings {
            let mut key = format!("{}.", driver.section).into_bytes();
            key.extend_from_slice(&driver.name);
            key.extend_from_slice(format!(".{variable}").as_bytes());
            cmd.env(format!("GIT_CONFIG_KEY_{n}"), OsStr::from_bytes(&key))
                .env(format!("GIT_CONFIG_VALUE_{n}"), value);
            n += 1;
        }
    }
    if n > 0 {
        cmd.env("GIT_CONFIG_COUNT", n.to_string());
    }
    cmd
}

/// A value of the user's own git configuration (global and system files included), e.g. their
/// identity. Reading configuration runs nothing.
pub fn user_config(dir: &Path, key: &str) -> Option<String> {
    let mut cmd = base_command(dir);
    for var in ["GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL"] {
        match std::env::var_os(var) {
            Some(value) => cmd.env(var, value),
            None => cmd.env_remove(var),
        };
    }
    let out = run_output(
        cmd,
        &[OsStr::new("config"), OsStr::new("--get"), OsStr::new(key)],
        None,
    )
    .ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !value.is_empty()).then_some(value)
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
        let out = run_output(command(dir)?, &args, None)?;
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

    pub fn cmd(&self) -> Result<Command> {
        Ok(with_overrides(
            base_command(&self.root),
            &repo_drivers(self)?,
        ))
    }

    /// A git command whose new objects go to the private store `store`, reading the
    /// repository's own objects as alternates: nothing reaches the user's object database until
    /// a change has passed the scope check and goes on to be verified and landed.
    pub fn store_cmd(&self, store: &Path) -> Result<Command> {
        let mut cmd = self.cmd()?;
        cmd.env("GIT_OBJECT_DIRECTORY", store).env(
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            self.common_dir.join("objects"),
        );
        Ok(cmd)
    }

    /// Runs git with `args`, failing with git's stderr on a non-zero exit.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Vec<u8>> {
        self.run_with(self.cmd()?, args, None)
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

    /// `tree` with each batch of `update-index -z --index-info` records applied in turn,
    /// through a temporary index (the user's index is never touched); the new tree's id.
    pub fn edit_tree(&self, tree: &str, batches: &[&[u8]]) -> Result<String> {
        let dir = tempfile::Builder::new()
            .prefix("boxdelegate-index-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary index", e))?;
        let index = dir.path().join("index");
        let git = |args: &[&str], input: Option<&[u8]>| -> Result<Vec<u8>> {
            let mut cmd = self.cmd()?;
            cmd.env("GIT_INDEX_FILE", &index);
            self.run_with(cmd, args, input)
        };
        git(&["read-tree", tree], None)?;
        for batch in batches.iter().filter(|b| !b.is_empty()) {
            git(&["update-index", "-z", "--index-info"], Some(batch))?;
        }
        Ok(String::from_utf8_lossy(&git(&["write-tree"], None)?)
            .trim()
            .to_string())
    }

    /// The objects `ids` as `cat-file --batch` run by `cmd` gives them: each one's type and
    /// content, in order.
    pub fn cat_batch(&self, cmd: Command, ids: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let input: String = ids.iter().map(|id| format!("{id}\n")).collect();
        let out = self.run_with(cmd, &["cat-file", "--batch"], Some(input.as_bytes()))?;
        let mut rest = out.as_slice();
        let mut objects = Vec::with_capacity(ids.len());
        for _ in ids {
            let eol = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| Error::Internal("git cat-file ended early".into()))?;
            let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let mut fields = header.split(' ').skip(1);
            let (kind, size) = match (
                fields.next(),
                fields.next().and_then(|s| s.parse::<usize>().ok()),
            ) {
                (Some(kind), Some(size)) => (kind.to_string(), size),
                _ => return Err(Error::Internal(format!("git cat-file: {header}"))),
            };
            let end = eol + 1 + size;
            if end > rest.len() {
                return Err(Error::Internal("git cat-file ended early".into()));
            }
            objects.push((kind, rest[eol + 1..end].to_vec()));
            rest = &rest[(end + 1).min(rest.len())..];
        }
        Ok(objects)
    }

    /// The contents of blobs `ids`, in order (one `cat-file --batch`).
    pub fn blobs(&self, ids: &[&str]) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .cat_batch(self.cmd()?, ids)?
            .into_iter()
            .map(|(_, data)| data)
            .collect())
    }

    /// Runs git and returns its stdout as a trimmed string.
    pub fn text<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(args)?).trim().to_string())
    }

    /// Resolves `rev` to an object id, or `None` if it does not exist.
    pub fn resolve(&self, rev: &str) -> Result<Option<String>> {
        let out = run_output(
            self.cmd()?,
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
        let out = run_output(
            base_command(Path::new(".")),
            &[OsStr::new("--version")],
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.trim().trim_start_matches("git version ").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_keys_name_the_driver_and_two_level_keys_none() {
        let d = |key: &str| parse_driver_key(key.as_bytes()).map(|d| (d.section, d.name));
        assert_eq!(d("filter.lfs.clean"), Some(("filter", b"lfs".to_vec())));
        assert_eq!(
            d("merge.a.b=c d.driver"),
            Some(("merge", b"a.b=c d".to_vec()))
        );
        assert_eq!(d("diff.x.textconv"), Some(("diff", b"x".to_vec())));
        assert_eq!(d("merge.renames"), None);
        assert_eq!(d("diff..textconv"), None);
        assert_eq!(d("core.x.y"), None);
    }

    /// Plain git, as a user would run it: no isolation beyond a neutral global config.
    fn plain_git(dir: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("git");
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(out: Output) -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_driver_configured_between_two_calls_is_overridden_in_the_second() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        let touch = format!("touch {}; cat", canary.display());
        for included in [false, true] {
            let root = dir.path().join(format!("repo-{included}"));
            std::fs::create_dir(&root).unwrap();
            ok(plain_git(&root, &["init", "-q", "-b", "main"]));
            std::fs::write(root.join(".gitattributes"), "*.txt filter=late\n").unwrap();
            std::fs::write(root.join("f.txt"), "a\n").unwrap();
            // The second repository's configuration includes a file of its work tree, which a
            // landed change may rewrite without touching .git/config.
            let config = if included {
                std::fs::write(root.join("project.gitconfig"), "").unwrap();
                ok(plain_git(
                    &root,
                    &["config", "include.path", "../project.gitconfig"],
                ));
                root.join("project.gitconfig")
            } else {
                root.join(".git/config")
            };
            let repo = Repo::discover(&root).unwrap();
            repo.run(&["hash-object", "f.txt"]).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&config)
                .unwrap();
            writeln!(f, "[filter \"late\"]\n\tclean = {touch}").unwrap();
            drop(f);
            // The proof that the filter runs where it is not overridden.
            let _ = std::fs::remove_file(&canary);
            plain_git(&root, &["hash-object", "f.txt"]);
            assert!(
                canary.exists(),
                "plain git runs the filter (included: {included})"
            );
            std::fs::remove_file(&canary).unwrap();
            repo.run(&["hash-object", "f.txt"]).unwrap();
            assert!(
                !canary.exists(),
                "the filter configured after the first call ran (included: {included})"
            );
        }
    }

    #[test]
    fn drivers_hooks_and_fsmonitor_the_repository_configures_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let canary = dir.path().join("canary");
        std::fs::create_dir(&root).unwrap();
        ok(plain_git(&root, &["init", "-q", "-b", "main"]));
        // Every hostile setting runs this script, which leaves the canary behind.
        let script = dir.path().join("canary.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch {}\nexec cat \"$@\" 2>/dev/null\n",
                canary.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let touch = script.display().to_string();
        // Some settings come from a file in the work tree that the configuration includes. The
        // name `e=v` would be cut at its `=` by `git -c`.
        std::fs::write(
            root.join("evil.gitconfig"),
            format!(
                "[merge \"e=v\"]\n\tdriver = {touch}\n[diff \"e=v\"]\n\ttextconv = {touch}\n\tcommand = {touch}\n[core]\n\tfsmonitor = {touch}\n\thooksPath = hooks\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join(".gitattributes"),
            "*.txt filter=e=v diff=e=v merge=e=v\n*.bin filter=proc\n",
        )
        .unwrap();
        std::fs::write(root.join("f.txt"), "a\nb\nc\n").unwrap();
        std::fs::write(root.join("g.bin"), "x\n").unwrap();
        ok(plain_git(&root, &["add", "-A"]));
        ok(plain_git(&root, &["commit", "-q", "-m", "base"]));
        // Configured after the commit, which would run them.
        for (key, value) in [
            ("filter.e=v.clean", touch.clone()),
            ("filter.e=v.smudge", touch.clone()),
            ("filter.e=v.required", "true".into()),
            ("filter.proc.process", touch.clone()),
            ("log.showSignature", "true".into()),
            ("gpg.program", touch.clone()),
            ("include.path", "../evil.gitconfig".into()),
            ("user.name", "t".into()),
            ("user.email", "t@t".into()),
        ] {
            ok(plain_git(&root, &["config", key, &value]));
        }
        std::fs::create_dir(root.join("hooks")).unwrap();
        for hook in [
            "reference-transaction",
            "post-index-change",
            "post-checkout",
        ] {
            let path = root.join("hooks").join(hook);
            std::fs::write(&path, format!("#!/bin/sh\nexec {touch}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let _ = std::fs::remove_file(&canary);
        // The proof that the canary works: plain git runs the fsmonitor, hooks and filters.
        plain_git(&root, &["status", "--porcelain"]);
        assert!(
            canary.exists(),
            "plain git status runs the repository's commands"
        );
        std::fs::remove_file(&canary).unwrap();

        let repo = Repo::discover(&root).unwrap();
        let found: Vec<String> = drivers(&root)
            .unwrap()
            .iter()
            .map(|d| format!("{}.{}", d.section, String::from_utf8_lossy(&d.name)))
            .collect();
        assert_eq!(
            found,
            ["diff.e=v", "filter.e=v", "filter.proc", "merge.e=v"]
        );
        let base = repo.text(&["rev-parse", "HEAD"]).unwrap();
        // A signed-looking commit, so that `log` would check a signature.
        let tree = repo.text(&["rev-parse", "HEAD^{tree}"]).unwrap();
        let signed = format!(
            "tree {tree}\nparent {base}\nauthor t <t@t> 1 +0000\ncommitter t <t@t> 1 +0000\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n x\n -----END PGP SIGNATURE-----\n\nsigned\n"
        );
        let signed = String::from_utf8(
            repo.run_with(
                repo.cmd().unwrap(),
                &["hash-object", "-t", "commit", "-w", "--stdin"],
                Some(signed.as_bytes()),
            )
            .unwrap(),
        )
        .unwrap();
        let text = |name: &str, content: &str| {
            let out = repo
                .run_with(
                    repo.cmd().unwrap(),
                    &["hash-object", "-w", "--stdin", "--path", name],
                    Some(content.as_bytes()),
                )
                .unwrap();
            String::from_utf8(out).unwrap().trim().to_string()
        };
        let commit = |parent: &str, f: &str, g: &str| {
            let blob_f = text("f.txt", f);
            let blob_g = text("g.bin", g);
            let listing = format!(
                "100644 blob {}\t.gitattributes\n100644 blob {}\tevil.gitconfig\n100644 blob {blob_f}\tf.txt\n100644 blob {blob_g}\tg.bin\n",
                repo.text(&["rev-parse", "HEAD:.gitattributes"]).unwrap(),
                repo.text(&["rev-parse", "HEAD:evil.gitconfig"]).unwrap(),
            );
            let tree = String::from_utf8(
                repo.run_with(repo.cmd().unwrap(), &["mktree"], Some(listing.as_bytes()))
                    .unwrap(),
            )
            .unwrap();
            repo.text(&["commit-tree", tree.trim(), "-p", parent, "-m", "c"])
                .unwrap()
        };
        let ours = commit(&base, "A\nb\nc\n", "y\n");
        let theirs = commit(&base, "a\nb\nC\n", "x\n");
        // Stat information no longer matches the index: status must look at the contents.
        for name in ["f.txt", "g.bin"] {
            std::fs::File::options()
                .write(true)
                .open(root.join(name))
                .unwrap()
                .set_modified(std::time::SystemTime::UNIX_EPOCH)
                .unwrap();
        }
        let status = repo
            .run(&["status", "--porcelain", "--untracked-files=no"])
            .unwrap();
        assert!(status.is_empty(), "{}", String::from_utf8_lossy(&status));
        repo.run(&["log", "--format=%H", signed.trim()]).unwrap();
        repo.run(&["diff", "--no-ext-diff", "--no-textconv", &base, &ours])
            .unwrap();
        // git fails, rather than runs anything, if a textconv driver is asked for.
        assert!(repo.run(&["diff", &base, &ours]).is_err());
        let merge = repo
            .cmd()
            .unwrap()
            .args(["merge-tree", "--write-tree", "--name-only", "--no-messages"])
            .arg(format!("--merge-base={base}"))
            .args([&ours, &theirs])
            .output()
            .unwrap();
        assert_eq!(
            merge.status.code(),
            Some(1),
            "a driver that cannot start is a conflict"
        );
        assert!(String::from_utf8_lossy(&merge.stdout).contains("f.txt"));
        repo.run(&["update-index", "-q", "--refresh"]).unwrap();
        repo.run(&["read-tree", "-m", "-u", &base, &ours]).unwrap();
        repo.run(&["update-ref", "refs/heads/main", &ours, &base])
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("f.txt")).unwrap(),
            "A\nb\nc\n"
        );
        std::fs::write(root.join("f.txt"), "dirty\n").unwrap();
        std::fs::write(root.join("g.bin"), "dirty\n").unwrap();
        let mut add = repo.cmd().unwrap();
        add.env("GIT_INDEX_FILE", dir.path().join("index"));
        repo.run_with(add, &["add", "--all"], None).unwrap();
        assert!(
            !canary.exists(),
            "boxdelegate's git ran a command the repository configured"
        );
    }
}
