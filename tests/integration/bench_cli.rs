//! The benchmark's own bad inputs: a clear message, exit 1 (2 for what the argument parser
//! refuses), and nothing created.

use std::process::Command;

use crate::common::*;

/// What a bench run could leave behind: its containers and images, and the temporary
/// directory it works in.
fn traces(tmp: &std::path::Path) -> (String, String, Vec<std::path::PathBuf>) {
    let mut files: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (
        docker(&["ps", "-a", "-q", "--filter", "label=boxdelegate-bench"]),
        docker(&["images", "-q", "--filter", "label=boxdelegate-bench"]),
        files,
    )
}

#[test]
fn bad_benchmark_options_are_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let missing = tmp.path().join("missing.json");
    let before = traces(tmp.path());
    for (args, code, message) in [
        (
            vec!["--sizes", "50"],
            1,
            "--sizes: 50 files is too few (at least 100)",
        ),
        (
            vec!["--sizes", ""],
            2,
            "invalid value '' for '--sizes <SIZES>'",
        ),
        (vec!["--scaling", "0"], 1, "--scaling: 0 units at once"),
        (vec!["--scaling", "9"], 1, "units for 1 to 8"),
        (
            vec!["--sizes", "1000", "--scaling-size", "5000"],
            1,
            "--scaling-size: 5000 is not one of the sizes measured (1000)",
        ),
        (
            vec!["--render", missing.to_str().unwrap()],
            1,
            "missing.json",
        ),
        (
            vec!["--render", garbage.to_str().unwrap()],
            1,
            "garbage.json: not the JSON of bench --json",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(&args)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert_eq!(traces(tmp.path()), before, "{args:?} left something behind");
    }
}
