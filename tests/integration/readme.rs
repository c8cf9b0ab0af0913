//! The README's quick start, run as written: its shell block extracted from the README, with the
//! binary under test first on `PATH` (the Install section's `cargo install`), in a shell that
//! stops at the first failing line.

use std::process::Command;

use crate::common::*;

/// The lines of the first shell block under `## Quick start`.
fn quick_start() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("the README has a Quick start section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("a shell block in the quick start")
        .split("\n```")
        .next()
        .unwrap();
    block.lines().map(str::to_string).collect()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    require_toolchain_image("python");
    let lines = quick_start();
    assert!(
        lines.len() <= 10,
        "a ten-line quick start, not {}: {lines:?}",
        lines.len()
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_boxdelegate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The README's lines, then the test's own: where the repository is, for the checks below.
    let script = format!("{}\necho \"QUICKSTART_REPO=$repo\"\n", lines.join("\n"));
    let mut cmd = Command::new("bash");
    git_env(&mut cmd);
    let out = cmd
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .env_remove("BOXDELEGATE_IMAGE_BUILD")
        .env_remove("BOXDELEGATE_EXTRACT")
        .output()
        .unwrap();
    let (text, err) = (stdout(&out), stderr(&out));
    let repo = text
        .lines()
        .find_map(|l| l.strip_prefix("QUICKSTART_REPO="))
        .map(std::path::PathBuf::from);
    let cleanup = |repo: &Option<std::path::PathBuf>| {
        if let Some(r) = repo
            .as_ref()
            .filter(|r| r.starts_with(std::env::temp_dir()))
        {
            // This repository's claims on its images and its runs go with it.
            let _ = boxdelegate().arg("-C").arg(r).args(["clean"]).output();
            let _ = std::fs::remove_dir_all(r);
        }
    };
    if !out.status.success() {
        cleanup(&repo);
        panic!("the quick start failed:\n{text}\n{err}");
    }
    assert!(
        text.contains("add-goodbye") && text.contains("landed"),
        "the run says it landed: {text}"
    );
    let r = repo.clone().expect("the quick start made its repository");
    let mut git = Command::new("git");
    git_env(&mut git);
    let log = git
        .arg("-C")
        .arg(&r)
        .args(["log", "-1", "--format=%B", "boxdelegate/add-goodbye"])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(body.contains("Boxdelegate-Verified:"), "{body}");
    assert!(text.contains("pass"), "verify --commit passed: {text}");
    cleanup(&repo);
}
