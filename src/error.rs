//! The error type of the binary and the mapping from causes to exit codes.
//!
//! Every variant carries what failed, on which input, and (through [`Error::hint`]) what to do
//! next. Exit codes are part of the interface and documented in the README; change them only
//! together with it.
//!
//! May not: change an exit code without the README's table; act (it only describes what failed).

use std::path::PathBuf;

/// Documented process exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    /// An unexpected internal failure (a bug or an I/O error we did not foresee).
    pub const INTERNAL: i32 = 1;
    /// Command-line usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// `boxdelegate.toml`, a profile or a unit file is invalid.
    pub const CONFIG: i32 = 3;
    /// The repository cannot be used: not a git repository, no commits, git failed.
    pub const REPO: i32 = 4;
    /// The container engine is unreachable or returned an error.
    pub const ENGINE: i32 = 5;
    /// A required image is missing (e.g. the base image has not been built).
    pub const IMAGE_MISSING: i32 = 6;
    /// The profile's dependency install step failed.
    pub const INSTALL: i32 = 7;
    /// A file boxdelegate would write already exists (e.g. `init`).
    pub const EXISTS: i32 = 8;
    /// A unit's change broke the scope policy; nothing landed.
    pub const REJECTED: i32 = 10;
    /// The target branch moved and the change conflicts with it; nothing was written.
    pub const CONFLICT: i32 = 11;
    /// The agent, or a check in the verify container, outlived its timeout.
    pub const TIMEOUT: i32 = 12;
    /// The agent exited with a non-zero code.
    pub const AGENT_FAILED: i32 = 13;
    /// The agent changed nothing.
    pub const NO_CHANGE: i32 = 14;
    /// A check failed in the clean verify container (or the verdict is `fail`); nothing landed.
    pub const VERIFY_FAILED: i32 = 15;
    /// `doctor` found problems.
    pub const NOT_READY: i32 = 9;
    /// Verification was stopped by the infrastructure (an OOM kill, an engine error): this says
    /// nothing about the change.
    pub const INFRA: i32 = 16;
    /// `verify --replay`: the verdict differs from the record's.
    pub const REPLAY_MISMATCH: i32 = 17;
    /// A unit failed every attempt: its retries and the fallback agent; each attempt's patch
    /// is kept.
    pub const FAILED: i32 = 18;
    /// The circuit breaker opened after consecutive infrastructure failures; the units not
    /// started are `skipped`.
    pub const BREAKER: i32 = 19;
    /// Another boxdelegate process is working on the repository.
    pub const BUSY: i32 = 20;
    /// A run journal is unreadable (corrupt, truncated, another format).
    pub const STATE: i32 = 21;
    /// Interrupted (Ctrl-C, SIGTERM); the containers the command started are removed.
    pub const INTERRUPTED: i32 = 130;

    /// Every code above, for the test that holds the README's table to them.
    #[cfg(test)]
    pub const ALL: &[i32] = &[
        OK,
        INTERNAL,
        USAGE,
        CONFIG,
        REPO,
        ENGINE,
        IMAGE_MISSING,
        INSTALL,
        EXISTS,
        NOT_READY,
        REJECTED,
        CONFLICT,
        TIMEOUT,
        AGENT_FAILED,
        NO_CHANGE,
        VERIFY_FAILED,
        INFRA,
        REPLAY_MISMATCH,
        FAILED,
        BREAKER,
        BUSY,
        STATE,
        INTERRUPTED,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {message}")]
    Config {
        file: PathBuf,
        message: String,
        hint: Option<String>,
    },
    #[error("repository {path}: {message}")]
    Repo {
        path: PathBuf,
        message: String,
        hint: Option<String>,
    },
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("container engine at {endpoint}: {message}")]
    EngineUnreachable {
        endpoint: String,
        message: String,
        hint: String,
    },
    #[error("container engine: {context}: {source}")]
    Engine {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("image {image} is missing")]
    ImageMissing { image: String, hint: String },
    #[error("infra-error: {} for profile {} (deps key {}) failed with exit code {}; this says nothing about any unit's change and no image was kept; its whole log: {}; last lines:\n{}", .0.step, .0.profile, &.0.key[..12], .0.code, .0.log.display(), .0.tail)]
    Install(Box<InstallFailure>),
    #[error("fetching {what} failed: {message}")]
    Fetch { what: String, message: String },
    #[error("{path} already exists")]
    Exists { path: PathBuf, hint: String },
    #[error("{message}")]
    Usage { message: String, hint: String },
    #[error("{message}")]
    Busy { message: String, hint: String },
    #[error("{}: {message}", path.display())]
    State {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// `wait`: the delegation it waits for stopped before it ended (interrupted, or its
    /// process died), or the wait's own time ran out.
    #[error("{message}")]
    WaitEnded {
        message: String,
        hint: String,
        timed_out: bool,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed dependency install (boxed: it is large and rare).
#[derive(Debug)]
pub struct InstallFailure {
    /// Which install: the snapshot's dependencies, or those of a unit's change.
    pub step: String,
    pub profile: String,
    pub key: String,
    pub code: i64,
    /// The install's whole output, on the host.
    pub log: PathBuf,
    pub tail: String,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => exit::CONFIG,
            Error::Repo { .. } | Error::Git { .. } => exit::REPO,
            Error::EngineUnreachable { .. } | Error::Engine { .. } => exit::ENGINE,
            Error::ImageMissing { .. } => exit::IMAGE_MISSING,
            Error::Install(_) | Error::Fetch { .. } => exit::INSTALL,
            Error::Exists { .. } => exit::EXISTS,
            Error::Usage { .. } => exit::USAGE,
            Error::Busy { .. } => exit::BUSY,
            Error::State { .. } => exit::STATE,
            Error::Io { .. } | Error::Internal(_) => exit::INTERNAL,
            Error::WaitEnded {
                timed_out: true, ..
            } => exit::TIMEOUT,
            Error::WaitEnded { .. } => exit::INTERRUPTED,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Config { hint, .. } | Error::Repo { hint, .. } => hint.as_deref(),
            Error::ImageMissing { hint, .. }
            | Error::EngineUnreachable { hint, .. }
            | Error::Exists { hint, .. }
            | Error::Usage { hint, .. }
            | Error::Busy { hint, .. }
            | Error::State { hint, .. }
            | Error::WaitEnded { hint, .. } => Some(hint),
            Error::Install(_) => Some(
                "fix the dependency manifests (lockfile) or the profile's install step, then run again",
            ),
            Error::Fetch { .. } => Some(
                "check that PyPI is reachable (BOXDELEGATE_CA_BUNDLE for an intercepting proxy), or pass a local binary: boxdelegate image build codex --codex-binary PATH",
            ),
            _ => None,
        }
    }

    pub fn config(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn config_hint(
        file: impl Into<PathBuf>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn engine(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        Error::Engine {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod exit_code_docs {
    use super::exit;

    #[test]
    fn the_readme_documents_every_exit_code_and_no_other() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Exit codes")
            .nth(1)
            .expect("an exit code section");
        let documented: Vec<i32> = table
            .lines()
            .skip_while(|l| !l.starts_with("| code"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut code = exit::ALL.to_vec();
        code.sort();
        assert_eq!(documented, code);
    }
}
