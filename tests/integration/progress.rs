//! What callers see: `--json` as JSON Lines matching docs/json.md, and a person's terminal
//! (through a pseudo-terminal) with the unit lines and the summary.

use std::collections::BTreeSet;

use crate::common::*;

/// The documented fields of each `<!-- schema: NAME -->` table in docs/json.md.
fn documented() -> std::collections::HashMap<String, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md")).unwrap();
    let mut out = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line
            .strip_prefix("<!-- schema: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            current = Some(name.to_string());
            out.insert(name.to_string(), BTreeSet::new());
        } else if let Some(name) = &current {
            if let Some(rest) = line.strip_prefix("| `") {
                let field = rest.split('`').next().unwrap().to_string();
                out.get_mut(name).unwrap().insert(field);
            } else if !line.starts_with('|') && !line.trim().is_empty() {
                current = None;
            }
        }
    }
    out
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn project(salt: &str) -> TestRepo {
    require_base_image();
    let repo = TestRepo::with_project(salt);
    repo.agent("echo 'hello from the agent'; echo hi > src/hello.txt");
    repo.unit("greet", "scope = [\"src/**\"]", "Say hello.");
    repo.commit("project");
    repo
}

#[test]
fn run_json_is_json_lines_whose_final_object_matches_the_documented_schema() {
    let repo = project("progress-json");
    let out = repo
        .cmd()
        .args(["run", "--json", "--unit", "greet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
        .collect();
    let (last, events) = lines.split_last().unwrap();
    let docs = documented();
    for e in events {
        assert_eq!(e["type"], "event", "{e}");
        assert!(
            keys(e).is_subset(&docs["event"]),
            "undocumented event fields: {e}"
        );
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in ["units", "unit-phase", "unit-done"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    assert_eq!(last["type"], "result");
    assert_eq!(keys(last), docs["result"]);
    assert_eq!(keys(&last["run"]), docs["run"]);
    assert_eq!(keys(&last["run"]["usage"]), docs["usage"]);
    let unit = &last["units"][0];
    repo.remember_image(unit["unit_image"].as_str().unwrap());
    assert_eq!(keys(unit), docs["unit"]);
    assert_eq!(keys(&unit["attempts"][0]), docs["attempt"]);
    assert_eq!(keys(&unit["timings"]), docs["timings"]);
    assert_eq!(
        keys(&last["run"]["timings"]),
        BTreeSet::from(["images_ms".to_string(), "snapshot_ms".to_string()])
    );
    assert_eq!(unit["status"], "landed");
    // A unit's time is part of the run's, never more.
    let (seconds, wall) = (
        unit["seconds"].as_f64().unwrap(),
        last["run"]["wall_seconds"].as_f64().unwrap(),
    );
    assert!(seconds <= wall, "unit {seconds} s > run {wall} s");
}

#[test]
fn a_run_on_a_terminal_shows_the_unit_lines_and_the_summary() {
    let repo = project("progress-tty");
    // `script` gives the command a pseudo-terminal and copies what it draws to stdout.
    let bin = env!("CARGO_BIN_EXE_boxdelegate");
    let command = format!("{bin} --repo {} run --unit greet", repo.path().display());
    let mut script = std::process::Command::new("script");
    git_env(&mut script);
    let out = script
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "120")
        // Plain text to match (the colours have their own test, terminal::).
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{screen}");
    let last = repo.path().join(".git/boxdelegate/last/greet.json");
    let last: serde_json::Value = serde_json::from_slice(&std::fs::read(last).unwrap()).unwrap();
    repo.remember_image(last["unit_image"].as_str().unwrap());
    // The unit's own line, drawn by the progress display while it worked.
    assert!(
        screen.contains("greet") && screen.contains("agent (command) running"),
        "no unit line with the agent phase: {screen}"
    );
    assert!(screen.contains("unit(s) done"), "no overall bar: {screen}");
    // The summary table and the unit's details.
    assert!(
        screen.contains("verdict") && screen.contains("tries") && screen.contains("tokens"),
        "no summary table: {screen}"
    );
    // The table fits 80 columns (its lines, read out of the drawn screen).
    for pattern in [
        r"unit +verdict +tries +files +time +tokens +cost",
        r"greet +landed +\d+ +\d+ +[\d.]+s +\S+ +\S+",
    ] {
        let line = regex::Regex::new(pattern)
            .unwrap()
            .find(&screen)
            .unwrap_or_else(|| panic!("no {pattern:?} in {screen}"))
            .as_str();
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    assert!(screen.contains("greet: landed: landed as"), "{screen}");
    assert!(screen.contains("patch: "), "{screen}");
}
