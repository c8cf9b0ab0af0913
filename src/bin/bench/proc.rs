//! Running commands: wall time, output, the child's own peak RSS (`VmHWM`, sampled while it
//! runs) and the peak RSS of the child or the processes it waited for (`wait4`).
//!
//! May not: leave a child running; judge the numbers it reads.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished command gave.
pub struct Ran {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wall: Duration,
    /// Peak resident set size in KiB: the child's, or that of a process it waited for when
    /// larger (Linux folds reaped children into `ru_maxrss`).
    pub max_rss_kib: u64,
    /// The child's own peak resident set size in KiB (`VmHWM` in `/proc/PID/status`, read
    /// every 10 ms while it runs: growth in its last 10 ms can be missed).
    pub self_rss_kib: u64,
}

/// `VmHWM` of `pid` in KiB, while it lives.
fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Ran {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self, what: &str) -> String {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "{what} exited with code {}\n{}\n{}",
            self.code,
            tail(&self.stderr),
            tail(&self.stdout)
        )
    }
}

/// Runs `cmd` to completion, timing it and reading its peak RSS.
pub fn run(cmd: &mut Command) -> Result<Ran> {
    let what = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().context("child stdout")?;
    let mut err = child.stderr.take().context("child stderr")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match vm_hwm(pid) {
                    Some(kib) => peak = peak.max(kib),
                    None if peak > 0 => break, // exited (a zombie has no memory)
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let mut stdout = Vec::new();
    out.read_to_end(&mut stdout)
        .with_context(|| format!("reading the output of {what}"))?;
    let stderr = reader.join().unwrap_or_default();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in; `pid` is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let self_rss_kib = sampler.join().unwrap_or(0);
    if r != pid {
        bail!("waiting for {what}: {}", std::io::Error::last_os_error());
    }
    // The child is reaped: std must not wait for it again.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Ran {
        code,
        stdout,
        stderr,
        wall,
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
        self_rss_kib,
    })
}

/// Runs `cmd` and fails with its output's tail unless it exits 0.
pub fn ok(cmd: &mut Command) -> Result<Ran> {
    let what = describe(cmd);
    let ran = run(cmd)?;
    if ran.code != 0 {
        bail!("{}", ran.describe(&what));
    }
    Ok(ran)
}

/// `git -C dir`, hermetic (see [`hermetic`]).
pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
    hermetic(&mut cmd);
    cmd
}

/// No user or system git configuration (so no hooks or filters of the host's), a fixed
/// identity and clock, no inherited repository variables.
pub fn hermetic(cmd: &mut Command) {
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE");
}

pub fn docker() -> Command {
    Command::new("docker")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(4) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    format!("`{s}`")
}
