//! Command-line types only (clap). Acting on them happens in `commands`.
//!
//! May not: act: reading files, the engine or the repository is `commands`'.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "boxdelegate",
    version,
    about = "Delegate work units to coding agents in throwaway containers; land only verified trees",
    long_about = None,
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Run as if started in DIR (the repository).
    #[arg(short = 'C', long = "repo", global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Print only results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show container output (-v) and debug logs (-vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Format of diagnostic logs on stderr (RUST_LOG filters them).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Colour statuses: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented boxdelegate.toml and an example unit (never overwrites).
    Init {
        /// Profile to use instead of detecting one from the repository.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Print the snapshot tree id of the repository (and optionally write its tar).
    Snapshot {
        #[command(flatten)]
        snap: SnapshotArgs,
        /// Write the deterministic tar stream to FILE ("-" for stdout).
        #[arg(long, value_name = "FILE")]
        tar: Option<PathBuf>,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Build, list, prune, save and load images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Delegate units: agent container → extraction → scope check → commit on a branch.
    Run {
        /// A unit id (repeatable).
        #[arg(long = "unit", value_name = "ID")]
        units: Vec<String>,
        /// Every unit in the units directory.
        #[arg(long, conflicts_with = "units")]
        all: bool,
        /// Target branch (default: boxdelegate/<unit-id>).
        #[arg(long)]
        branch: Option<String>,
        /// Delegate again even if the unit already landed.
        #[arg(long)]
        rerun: bool,
        /// Units worked on at once (default: [run] jobs, else from the engine's CPUs and memory).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// When another boxdelegate works on this repository, wait for it instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Return at once with the run's id; the run goes on in the background, beyond this
        /// command (its output in .git/boxdelegate/detached/ID.log). `boxdelegate wait UNIT
        /// --run ID` follows it.
        #[arg(long)]
        detach: bool,
        /// The id a detached run was given (set by --detach).
        #[arg(long, hide = true, value_name = "ID")]
        run_id: Option<String>,
        #[command(flatten)]
        snap: SnapshotArgs,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Block until a unit's delegation ends, then print its result (exit code as `run`'s).
    #[command(
        after_help = "Follows the unit in run ID (as `run --detach` printed it), else in the newest run that delegates it. Ends when the unit's result is written; exit 130 when that run stopped before (interrupted, or its process died: `boxdelegate resume` continues it), 12 when --timeout ran out, 2 when no run delegates the unit."
    )]
    Wait {
        /// The unit id.
        unit: String,
        /// The run to follow; default: the newest run that delegates the unit.
        #[arg(long = "run", value_name = "ID")]
        run: Option<String>,
        /// Give up after this long (e.g. 30m, 2h); exit 12.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Print the unit's result as JSON (as `show --json`), or an error object.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted run (the newest unfinished one, or RUN).
    Resume {
        /// The run id (`boxdelegate status --all` lists them); default: the newest unfinished.
        run: Option<String>,
        /// Units worked on at once (default: [run] jobs, else from the engine's CPUs and memory).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// When another boxdelegate works on this repository, wait for it instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Show runs: units, phases, attempts, containers (the newest run, or RUN, or --all).
    Status {
        /// The run id; default: the newest run.
        run: Option<String>,
        /// Every run, not only the newest.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove the containers, unit images and directories of finished runs (or of RUN).
    Clean {
        /// Only this run (also one whose journal is unreadable).
        #[arg(long = "run", value_name = "ID")]
        run: Option<String>,
        /// Also remove a run that is not finished, even with agent containers still running.
        #[arg(long)]
        force: bool,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only finished runs that started longer ago than this (e.g. 7d, 12h).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Keep the newest N finished runs.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Re-check a commit or a patch in a clean container against its base; write a record.
    #[command(
        after_help = "Verdicts (docs/verdicts.md): pass; fail (a regression, an expected test not passing); inconclusive (no evidence the checks passed: a runner that names no tests failing on the base too, or exiting 0 with no count or name); config-error (a check's command cannot start in the image).\n\nExit codes: 0 pass (--replay: the verdict matches the record), 15 fail or inconclusive, 3 config-error, 12 a check timed out, 16 infrastructure failure, 17 (--replay) the verdict differs, 2 bad input."
    )]
    Verify(VerifyArgs),
    /// Create, list and check unit files.
    #[command(subcommand)]
    Unit(UnitCommand),
    /// Print the patch of a unit's last result.
    Diff {
        /// The unit id.
        unit: String,
    },
    /// Show a unit's last result.
    Show {
        /// The unit id.
        unit: String,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Land a unit's kept result (after the same checks).
    Apply {
        /// The unit id.
        unit: String,
        /// Target branch (default: the one its run targeted, boxdelegate/<unit-id>).
        #[arg(long)]
        branch: Option<String>,
        /// When another boxdelegate works on this repository, wait for it instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Check that everything boxdelegate needs is in place.
    Doctor {
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Print a unit's agent log, then its verify log (the latest attempt of its latest run).
    #[command(
        after_help = "The logs are printed as stored under .git/boxdelegate/runs/: the agent log is redacted as it is written (the values of the variables passed to the agent are replaced by [redacted]); the verify container never gets those variables. Before printing, both logs are redacted again with the values those variables have in your environment.\n\nExit codes: 0 printed, 2 no such unit, run or attempt (nothing on the host is changed)."
    )]
    Logs {
        /// The unit id.
        unit: String,
        /// A run id (`boxdelegate status --all` lists them) instead of the latest run with
        /// the unit.
        #[arg(long = "run", value_name = "ID")]
        run: Option<String>,
        /// Attempt N (1-based) instead of the latest.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        attempt: Option<u32>,
        /// Keep printing while the attempt runs, and the unit's later attempts, until the unit
        /// is done (or its run stops).
        #[arg(short, long)]
        follow: bool,
    },
    /// Print shell completions for SHELL to stdout.
    #[command(
        after_help = "Install them, e.g.:\n  boxdelegate completions bash > ~/.local/share/bash-completion/completions/boxdelegate\n  boxdelegate completions zsh > \"${fpath[1]}/_boxdelegate\"\n  boxdelegate completions fish > ~/.config/fish/completions/boxdelegate.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per command into DIR.
    Man {
        /// Write boxdelegate.1 and a page per subcommand (boxdelegate-run.1, …) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Turn an implementation plan into unit files.
    #[command(subcommand)]
    Plan(PlanCommand),
}

#[derive(Debug, Subcommand)]
pub enum UnitCommand {
    /// Scaffold units/<ID>.md (never overwrites).
    New {
        /// The unit id (the file's name, letters, digits, `-`, `_`).
        id: String,
        /// Globs of the files the unit may change (repeatable).
        #[arg(long, required = true, num_args = 1..)]
        scope: Vec<String>,
    },
    /// List the units.
    Ls {
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Validate one unit (or all) and warn about oversized ones.
    Check {
        /// One unit; default: every unit.
        id: Option<String>,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct SnapshotArgs {
    /// Include tracked changes and untracked, non-ignored files (the index is not touched).
    #[arg(long)]
    pub include_dirty: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Without NAME: make the dependency and unit images for the current snapshot.
    /// With NAME (base, python, rust, node, go): build that shipped Containerfile.
    /// With `codex`: the image holding the pinned Codex CLI binary.
    Build {
        /// A shipped Containerfile to build instead.
        name: Option<String>,
        #[command(flatten)]
        snap: SnapshotArgs,
        /// Upload the whole snapshot even when an incremental build is possible.
        #[arg(long)]
        full: bool,
        /// For `codex`: the Codex CLI version (default: [agent] codex_version, else 0.163.0).
        #[arg(long, value_name = "VERSION")]
        codex_version: Option<String>,
        /// For `codex`: a local codex binary instead of the PyPI wheel (air-gapped sites).
        #[arg(long, value_name = "PATH")]
        codex_binary: Option<PathBuf>,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Create an image from a root filesystem tar (e.g. the base image made by
    /// images/base/build-from-debian.sh).
    Import {
        /// Which image: only `base` for now.
        name: String,
        /// The root filesystem tar.
        rootfs: PathBuf,
    },
    /// List this repository's images and the shared ones (base, toolchains, codex, proxy).
    Ls {
        /// Every boxdelegate image on the engine, of every repository.
        #[arg(long)]
        all_repositories: bool,
        /// Print JSON instead of text; the last line on stdout is the result object, or on
        /// failure {"type": "error", …} (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove this repository's dependency and unit images other than the current ones; an
    /// image another repository on the engine also uses stays (only this repository's claim
    /// on it goes).
    Prune {
        /// This repository's current images too (still only its claims: an image another
        /// repository uses stays).
        #[arg(long)]
        all: bool,
        /// Every boxdelegate dependency and unit image on the engine, of every repository, the
        /// current ones too, and leftover build containers.
        #[arg(long)]
        all_repositories: bool,
        /// Show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write every image the project needs to one file, for `image load` elsewhere.
    Save {
        /// The file to write (mode 0600).
        output: PathBuf,
        #[command(flatten)]
        snap: SnapshotArgs,
    },
    /// Load images written by `image save`.
    Load {
        /// A file `image save` wrote.
        input: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The commit to verify (its tree against --base, default its first parent).
    #[arg(long, value_name = "REV", conflicts_with_all = ["patch", "replay"], required_unless_present_any = ["patch", "replay"])]
    pub commit: Option<String>,
    /// The commit the change is judged against.
    #[arg(long, value_name = "REV", conflicts_with = "replay")]
    pub base: Option<String>,
    /// A patch (git diff format) to apply to --base and verify.
    #[arg(
        long,
        value_name = "FILE",
        requires = "base",
        conflicts_with = "replay"
    )]
    pub patch: Option<PathBuf>,
    /// Re-run a verification record and report whether the verdict matches: a record file,
    /// or a commit boxdelegate landed (the record its Boxdelegate-Record trailer names).
    #[arg(long, value_name = "RECORD|COMMIT")]
    pub replay: Option<PathBuf>,
    /// The unit whose protected paths and expected tests apply (default: the commit's
    /// Boxdelegate-Unit trailer, when its unit file exists).
    #[arg(long, value_name = "ID", conflicts_with = "replay")]
    pub unit: Option<String>,
    /// Where to write the verification record (default: under .git/boxdelegate/verify/).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Also write the verdict as JUnit XML.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Write a unit file for every section of a Markdown plan marked
    /// `Execution target: external-delegate` (never overwrites).
    #[command(
        after_help = "A section is a heading (any level) or a checklist item `- [ ] **Title**`. From a marked section: the title (without numbering such as \"Unit 3:\"), the id (an `ID:` line, else a slug of the title), the scope (the paths in its `Files:` field or subsection; an existing directory becomes DIR/**), `Verification:` items and the text of the `Requirements:` ids as `done`, `Tests:` test names as `tests`, existing files under `Patterns to follow:` as `context`, and the rest of the section as the task (test scenarios stay there).\n\nExit codes: 0 written, 3 the plan cannot be imported (a marked section without files, an invalid unit), 8 a unit file exists already (nothing is written)."
    )]
    Import {
        /// The plan (Markdown).
        plan: PathBuf,
        /// Where to write the unit files, relative to the repository root (default:
        /// [project] units_dir).
        #[arg(long, value_name = "DIR")]
        units_dir: Option<PathBuf>,
        /// Show what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the units (id, title, file, scope, done, tests, context, dependencies) as JSON.
        #[arg(long)]
        json: bool,
    },
}
