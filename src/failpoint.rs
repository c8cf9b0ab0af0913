//! Failpoints: named places where a debug build kills itself with SIGKILL when
//! `BOXDELEGATE_FAILPOINT` names them, so the tests can crash boxdelegate at an exact phase
//! boundary and check that re-running the command resumes. Release builds compile them out.
//!
//! May not: exist in a release build; act on anything but its own process.

/// The variable naming the failpoint to die at.
#[cfg(debug_assertions)]
pub const VAR: &str = "BOXDELEGATE_FAILPOINT";

/// Dies here, as `kill -9` would kill the process, when the failpoint is armed.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    if std::env::var(VAR).ok().as_deref() == Some(name) {
        eprintln!("failpoint {name}: killing boxdelegate with SIGKILL");
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        // The signal is on its way; never run past the failpoint.
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_: &str) {}

/// Whether the failpoint `name` is armed, for a failure other than a crash (a debug build
/// only; always false in a release build).
#[cfg(debug_assertions)]
pub fn armed(name: &str) -> bool {
    std::env::var(VAR).ok().as_deref() == Some(name)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn armed(_: &str) -> bool {
    false
}
