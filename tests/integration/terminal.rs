//! A person's terminal at 80 columns: the binary in a pseudo-terminal of 24 rows and 80
//! columns, its output drawn by a terminal emulator (vt100) and the screen read back. No row
//! may wrap (nothing wider than the terminal), a finished run shows its table and results, and
//! a Ctrl-C leaves a readable screen saying what stopped and how to go on, no container, and a
//! `status` that tells the removed containers from running ones.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, CommandBuilder, PtySize};

use crate::common::*;

const ROWS: u16 = 24;
const COLS: u16 = 80;

/// The binary running in a pseudo-terminal, and the screen it draws.
struct Screen {
    parser: vt100::Parser,
    chunks: mpsc::Receiver<Vec<u8>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    /// Lines written wider than the terminal.
    wrapped: Vec<String>,
    /// Every row ever drawn, in order (the screen scrolls).
    seen: Vec<String>,
}

impl Screen {
    fn start(repo: &TestRepo, args: &[&str], env: &[(&str, &str)]) -> Screen {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_boxdelegate"));
        cmd.args(args);
        cmd.cwd(repo.path());
        for (k, v) in [
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_AUTHOR_NAME", "Test"),
            ("GIT_AUTHOR_EMAIL", "test@example.com"),
            ("GIT_COMMITTER_NAME", "Test"),
            ("GIT_COMMITTER_EMAIL", "test@example.com"),
            ("TERM", "xterm-256color"),
        ] {
            cmd.env(k, v);
        }
        for k in ["COLUMNS", "LINES", "RUST_LOG", "NO_COLOR"] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        let writer = pty.master.take_writer().unwrap();
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let _master = pty.master;
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen {
            parser: vt100::Parser::new(ROWS, COLS, 0),
            chunks,
            writer,
            child,
            wrapped: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn rows(&self) -> Vec<String> {
        self.parser.screen().rows(0, COLS).collect()
    }

    fn text(&self) -> String {
        self.rows().join("\n")
    }

    /// Draws one chunk, noting lines wider than the terminal and every row drawn.
    fn feed(&mut self, chunk: &[u8]) {
        self.parser.process(chunk);
        // Text that ran past the right margin onto the next row: a row the terminal wrapped
        // whose last column and the next row's first both hold text (the live display pads
        // its rows to the width and relies on the margin, which is no overflow).
        let screen = self.parser.screen();
        for r in 0..ROWS - 1 {
            let filled = |row: u16, col: u16| {
                screen
                    .cell(row, col)
                    .is_some_and(|c| !c.contents().trim().is_empty())
            };
            if screen.row_wrapped(r) && filled(r, COLS - 1) && filled(r + 1, 0) {
                let rows = self.rows();
                self.wrapped
                    .push(format!("{}\n{}", rows[r as usize], rows[r as usize + 1]));
            }
        }
        for row in self.rows() {
            let row = row.trim_end().to_string();
            if !row.is_empty() && self.seen.last() != Some(&row) && !self.seen.contains(&row) {
                self.seen.push(row);
            }
        }
    }

    /// Reads until the screen shows `what` (or the program ends, or two minutes pass).
    fn wait_for(&mut self, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.text().contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.feed(&chunk),
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads until the program's output ends; its exit code.
    fn finish(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.feed(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("the program did not end:\n{}", self.text());
                }
            }
        }
        self.child.wait().unwrap().exit_code() as i32
    }
}

fn project(salt: &str, agent: &str) -> TestRepo {
    require_base_image();
    let repo = TestRepo::with_project(salt);
    repo.agent(agent);
    repo.unit(
        "a-unit-with-a-longish-name",
        "scope = [\"src/**\"]",
        "Say hello.",
    );
    repo.unit("second", "scope = [\"src/**\"]", "Say hello too.");
    repo.commit("project");
    repo
}

#[test]
fn a_run_at_80_columns_never_wraps_and_ends_with_its_table() {
    // The agent's last line of output is its activity; a long one must not wrap the screen.
    let repo = project(
        "terminal-80",
        "echo \"working on $BOXDELEGATE_UNIT_ID: $(printf 'word %.0s' $(seq 40))\"; echo hi > src/$BOXDELEGATE_UNIT_ID.txt",
    );
    let mut screen = Screen::start(
        &repo,
        &[
            "run",
            "--unit",
            "a-unit-with-a-longish-name",
            "--unit",
            "second",
        ],
        &[],
    );
    let code = screen.finish();
    let seen = screen.seen.join("\n");
    assert_eq!(code, 0, "{seen}");
    for id in ["a-unit-with-a-longish-name", "second"] {
        let last = repo.path().join(format!(".git/boxdelegate/last/{id}.json"));
        let last: serde_json::Value =
            serde_json::from_slice(&std::fs::read(last).unwrap()).unwrap();
        repo.remember_image(last["unit_image"].as_str().unwrap());
    }
    assert!(
        screen.wrapped.is_empty(),
        "a line wider than 80 columns: {:?}",
        screen.wrapped
    );
    assert!(
        seen.contains("unit                 verdict"),
        "the summary table: {seen}"
    );
    assert!(
        seen.lines()
            .any(|l| l.starts_with("second") && l.contains("landed")),
        "{seen}"
    );
    // The report's long line wraps at a word, by design.
    assert!(
        seen.lines()
            .any(|l| l.starts_with("run ") && l.contains("unit(s):")),
        "{seen}"
    );
    assert!(seen.lines().any(|l| l.starts_with("  ")), "{seen}");
    // Colours on a terminal: the landed status is green (SGR 32).
    let contents = screen.parser.screen().contents_formatted();
    assert!(
        String::from_utf8_lossy(&contents).contains("\u{1b}[32m"),
        "no green status on a terminal"
    );
}

#[test]
fn no_color_turns_the_colours_off() {
    let repo = project("terminal-nocolor", "echo hi > src/$BOXDELEGATE_UNIT_ID.txt");
    let mut screen = Screen::start(&repo, &["run", "--unit", "second"], &[("NO_COLOR", "1")]);
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match screen.chunks.recv_timeout(left) {
            Ok(chunk) => {
                raw.extend_from_slice(&chunk);
                screen.feed(&chunk);
            }
            Err(_) => break,
        }
    }
    let code = screen.child.wait().unwrap().exit_code();
    assert_eq!(code, 0, "{}", screen.seen.join("\n"));
    let last: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.path().join(".git/boxdelegate/last/second.json")).unwrap(),
    )
    .unwrap();
    repo.remember_image(last["unit_image"].as_str().unwrap());
    let raw = String::from_utf8_lossy(&raw);
    for sgr in ["\u{1b}[32m", "\u{1b}[31m", "\u{1b}[33m", "\u{1b}[1m"] {
        assert!(!raw.contains(sgr), "a colour ({sgr:?}) with NO_COLOR set");
    }
}

#[test]
fn ctrl_c_leaves_a_readable_screen_no_container_and_a_status_that_says_so() {
    // Agents that work until stopped.
    let repo = project(
        "terminal-ctrlc",
        "echo \"started $BOXDELEGATE_UNIT_ID\"; while [ ! -e /tmp/never ]; do sleep 1; done",
    );
    let mut screen = Screen::start(
        &repo,
        &[
            "run",
            "--jobs",
            "2",
            "--unit",
            "a-unit-with-a-longish-name",
            "--unit",
            "second",
        ],
        &[],
    );
    assert!(
        screen.wait_for("agent: started second") && screen.wait_for("agent: started a-unit"),
        "the agents never showed their activity:\n{}",
        screen.text()
    );
    // This repository's containers (other tests run units named alike at the same time).
    let repo_id = std::fs::read_to_string(repo.path().join(".git/boxdelegate/repo-id")).unwrap();
    let units = |kind: &str| {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=boxdelegate.kind={kind}"),
            "--filter",
            &format!("label=boxdelegate.repository={}", repo_id.trim()),
        ])
    };
    assert!(!units("agent").trim().is_empty(), "an agent container runs");
    screen.writer.write_all(b"\x03").unwrap();
    screen.writer.flush().unwrap();
    let code = screen.finish();
    let text = screen.text();
    assert_eq!(code, 130, "{text}");
    assert!(
        screen.wrapped.is_empty(),
        "a line wider than 80 columns: {:?}",
        screen.wrapped
    );
    assert!(
        text.contains("interrupted: the containers this command started were removed"),
        "{text}"
    );
    assert!(text.contains("0 of 2 unit(s) had ended"), "{text}");
    assert!(text.contains("  second: working"), "{text}");
    let run_id = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("continue it with `boxdelegate resume ")
        })
        .and_then(|rest| rest.strip_suffix('`'))
        .unwrap_or_else(|| panic!("no resume line: {text}"))
        .to_string();
    // The spinner's frozen lines are gone: nothing of the live display is left under the
    // message.
    let at = text.find("interrupted:").unwrap();
    assert!(
        !text[at..].contains("unit(s) done"),
        "the live display is left on the screen:\n{text}"
    );
    assert_eq!(units("agent").trim(), "", "no agent container left");
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boxdelegate.run={run_id}"),
    ]);
    assert_eq!(left.trim(), "", "no container of the run left");
    let status = repo.cmd().args(["status"]).output().unwrap();
    let status = stdout(&status);
    assert!(
        status.contains(&format!("run {run_id}  interrupted")),
        "{status}"
    );
    assert!(status.contains("(removed)"), "{status}");
    assert!(!status.contains(" running ("), "{status}");
    let image: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            repo.path()
                .join(format!(".git/boxdelegate/runs/{run_id}/journal.json")),
        )
        .unwrap(),
    )
    .unwrap();
    if let Some(i) = image["unit_image"].as_str() {
        repo.remember_image(i);
    }
}
