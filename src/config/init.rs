//! `boxdelegate init`: detect the profile, write a commented `boxdelegate.toml` and an example
//! unit. It refuses to overwrite anything: either every file is new, or nothing is written.
//!
//! May not: overwrite a file; write some of its files and not the others.

use std::path::{Path, PathBuf};

use super::profile::{Profile, EMBEDDED};
use crate::error::{Error, Result};

pub const EXAMPLE_UNIT: &str = "example.md";

#[derive(Debug, serde::Serialize)]
pub struct Initialized {
    pub profile: String,
    /// Which root file selected the profile, if it was detected.
    pub detected_from: Option<String>,
    pub written: Vec<PathBuf>,
}

/// Picks the profile whose `detect` globs match a file at the repository root.
pub fn detect(root: &Path) -> Result<(String, Option<String>)> {
    let mut files: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::io(format!("reading {}", root.display()), e))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    files.sort();
    for (name, _) in EMBEDDED {
        let profile = Profile::load(Path::new("/nonexistent"), name)?;
        for pattern in &profile.detect {
            let Ok(glob) = globset::Glob::new(pattern) else {
                continue;
            };
            let m = glob.compile_matcher();
            if let Some(file) = files.iter().find(|f| m.is_match(f)) {
                return Ok((name.to_string(), Some(file.clone())));
            }
        }
    }
    Ok(("generic".into(), None))
}

pub fn run(root: &Path, profile: Option<&str>, codex_key: Option<&str>) -> Result<Initialized> {
    let (profile, detected_from) = match profile {
        Some(p) => {
            Profile::load(root, p)?;
            (p.to_string(), None)
        }
        None => detect(root)?,
    };
    let config_path = root.join(super::CONFIG_FILE);
    let unit_path = root.join("units").join(EXAMPLE_UNIT);
    for path in [&config_path, &unit_path] {
        if path.exists() || path.is_symlink() {
            return Err(Error::Exists {
                path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
                hint: "boxdelegate init never overwrites; edit the existing file, or move it away and run init again".into(),
            });
        }
    }
    std::fs::write(&config_path, config_template(&profile, codex_key))
        .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
    let mut written = vec![PathBuf::from(super::CONFIG_FILE)];
    let units = root.join("units");
    let result =
        std::fs::create_dir_all(&units).and_then(|_| std::fs::write(&unit_path, EXAMPLE_UNIT_TEXT));
    if let Err(e) = result {
        // Leave the host as it was.
        let _ = std::fs::remove_file(&config_path);
        return Err(Error::io(format!("writing {}", unit_path.display()), e));
    }
    written.push(PathBuf::from("units").join(EXAMPLE_UNIT));
    Ok(Initialized {
        profile,
        detected_from,
        written,
    })
}

/// The agent `init` writes: Codex behind the model gateway when its key variable is set (the
/// name, never the value), else the command agent with a placeholder that says what to do.
pub fn agent_section(codex_key: Option<&str>) -> String {
    match codex_key {
        Some(var) => format!(
            r#"# Codex CLI ({var} was set where init ran). Its key goes to the model gateway at the
# start of each attempt, never into the box; the agent reaches the model API and nothing else
# (docs/codex.md). Or "command", running `command` with sh -c in /work, the prompt on stdin.
kind = "codex"
network = "proxy"
env = ["{var}"]
# model = "gpt-5.5"                     # example: unset means codex's default"#
        ),
        None => r#"# "command" runs `command` with sh -c in /work, the unit's prompt on stdin; "codex" runs
# Codex CLI (kind = "codex", env = ["CODEX_API_KEY"], network = "proxy": docs/codex.md).
kind = "command"
# Your agent goes here: it reads the task on stdin and edits the files under /work. Until then
# a run says so (the agent fails, nothing lands).
command = "echo 'no agent yet: set [agent] in boxdelegate.toml (docs/codex.md)' >&2; exit 2"
# Host environment variables passed to the agent container at start (names only).
env = []"#
            .to_string(),
    }
}

pub fn config_template(profile: &str, codex_key: Option<&str>) -> String {
    let agent = agent_section(codex_key);
    format!(
        r#"# boxdelegate configuration. Every key is optional; the values shown are the defaults
# unless marked "example". Every key, with its default: docs/configuration.md.

[project]
# Ecosystem profile: rust, node, python, go, generic, or your own in .boxdelegate/profiles/NAME.toml.
profile = "{profile}"
# Overrides the profile's toolchain image (the image dependencies are installed into).
# base_image = "boxdelegate/{profile}:bookworm"
# Where unit files live.
units_dir = "units"

[agent]
{agent}
# Wall-clock limit of one agent attempt.
timeout = "30m"

[verify]
# Checks re-run in a clean container without network. Unset keys use the profile's defaults;
# "" disables a check.
# test = "..."
# lint = "..."
# typecheck = "..."
timeout = "10m"
# reruns = 0          # re-runs of a failing check; a pass on a re-run is "flaky"
# baseline = true     # also run the checks on the unmodified snapshot (cached)
# merged = "reverify" # verify the merged tree when the branch moved ("trust" skips it)

[limits]
memory = "4g"        # per container
cpus = 2.0           # per container
pids = 512           # processes per container
max_files = 1000     # files one change may touch
max_bytes = "50m"    # bytes one change may write
"#
    )
}

const EXAMPLE_UNIT_TEXT: &str = r#"+++
id = "example"
title = "Describe the change in one line"
# Globs of the files this unit may change.
scope = ["src/example/**"]
+++
Say what to build, as you would to a colleague: the behaviour, the files, and how to know it is
done. Keep units small: a few files and one clear outcome.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_names_the_profile() {
        let c: super::super::Config =
            super::super::parse_toml(&config_template("python", None), Path::new("t")).unwrap();
        assert_eq!(c.project.profile, "python");
        assert_eq!(c.limits.resolve(), super::super::Limits::default());
        // A command agent that runs (a placeholder saying what to do), or codex behind the
        // gateway, naming the variable, never a value.
        assert!(c
            .agent
            .command
            .as_deref()
            .is_some_and(|c| c.contains("no agent yet")));
        let codex = config_template("python", Some("CODEX_API_KEY"));
        let c: super::super::Config = super::super::parse_toml(&codex, Path::new("t")).unwrap();
        assert_eq!(c.agent.env, ["CODEX_API_KEY"]);
        assert!(
            codex.contains("kind = \"codex\"\nnetwork = \"proxy\""),
            "{codex}"
        );
    }

    #[test]
    fn detects_from_root_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path()).unwrap().0, "generic");
        std::fs::write(dir.path().join("requirements-dev.txt"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap().0, "python");
        std::fs::write(dir.path().join("Cargo.lock"), "").unwrap();
        assert_eq!(
            detect(dir.path()).unwrap(),
            ("rust".into(), Some("Cargo.lock".into()))
        );
    }
}
