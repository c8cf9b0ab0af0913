//! `bench`: where boxdelegate's time goes, against the baselines users would otherwise pick.
//!
//! Generates repositories of 1k, 10k and 100k files, drives the real `boxdelegate` binary
//! against the real engine and real git, and measures each phase (medians over several runs
//! after a warm-up, min–max shown) beside three baselines measured in the same run: the
//! worktree way, the naive container way, and the engine floor. Prints a table, or JSON with
//! `--json`. Everything it creates (directories, containers, images) is removed at the end.
//!
//! May not: measure anything but the real binary against the real engine and real git; assert a
//! timing.

mod baselines;
mod codex;
mod proc;
mod repo;
mod stats;
mod units;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use crate::stats::{Metric, Metrics};

/// The label on every container the benchmark itself starts.
pub const LABEL: &str = "boxdelegate-bench";
pub const BASE_IMAGE: &str = "boxdelegate/base:bookworm";

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measure boxdelegate's phases and overhead against the worktree way, the naive container way and the engine floor"
)]
struct Args {
    /// Smoke test: 1k files, one run after the warm-up, scaling to 2 units (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Repository sizes in files (default 1000,10000,100000; --quick: 1000).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Measured runs per metric, after one warm-up (default 3; --quick: 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Units at once for the parallel scaling (default 1,2,4,8; --quick: 1,2).
    #[arg(long, value_delimiter = ',')]
    scaling: Option<Vec<usize>>,
    /// The repository size the scaling runs on (default 10000; --quick: 1000).
    #[arg(long)]
    scaling_size: Option<usize>,
    /// The boxdelegate binary to measure (default: the one built beside this binary).
    #[arg(long)]
    boxdelegate: Option<PathBuf>,
    /// Run the naive container baseline on repositories up to this many files (its `docker
    /// build` copies the whole tree: minutes at 100k files on some storage drivers).
    #[arg(long, default_value_t = 10_000)]
    naive_max_files: usize,
    /// Print the table of a saved `--json` result instead of measuring.
    #[arg(long, value_name = "FILE")]
    render: Option<PathBuf>,
    /// Work here (kept, and the wheelhouse reused) instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// What the run needs everywhere: the binary, the work directory, the settings, and what to
/// remove at the end.
pub struct Bench {
    pub bd: PathBuf,
    pub work: PathBuf,
    pub wheelhouse: PathBuf,
    pub runs: usize,
    pub quick: bool,
    /// The naive container baseline runs on repositories up to this many files.
    pub naive_max_files: usize,
    /// Dependency keys of the generated repositories: their images are removed at the end.
    deps_keys: std::cell::RefCell<BTreeSet<String>>,
    /// Images the baselines built.
    pub naive_images: std::cell::RefCell<BTreeSet<String>>,
}

impl Bench {
    /// `boxdelegate -C repo ARGS`, with a hermetic git environment.
    pub fn bd(&self, repo: &Path) -> Command {
        let mut cmd = Command::new(&self.bd);
        proc::hermetic(&mut cmd);
        cmd.arg("-C")
            .arg(repo)
            .arg("-q")
            .env_remove("RUST_LOG")
            .env_remove("CODEX_THREAD_ID");
        cmd
    }

    /// Warm-up and measured runs of the costly measurements (cold images, many-file changes,
    /// references, baselines) at a repository size: fewer on the largest repositories, so the
    /// default benchmark stays well under 15 minutes on two cores.
    pub fn heavy(&self, files: usize) -> (usize, usize) {
        if self.quick || files >= 50_000 {
            (0, 1)
        } else {
            (1, self.runs.min(2))
        }
    }

    pub fn remember_deps_key(&self, key: &str) {
        self.deps_keys.borrow_mut().insert(key.to_string());
    }

    /// Removes the unit images of `key` (all of them, or all but `keep`).
    pub fn remove_unit_images(&self, key: &str) -> Result<()> {
        let ids = proc::ok(proc::docker().args([
            "images",
            "-q",
            "--no-trunc",
            "--filter",
            "label=boxdelegate.kind=snap",
            "--filter",
            &format!("label=boxdelegate.deps-key={key}"),
        ]))?
        .stdout_str();
        let mut ids: Vec<String> = ids
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        ids.sort();
        ids.dedup();
        // Incremental unit images stack on each other and a parent cannot go before its
        // children: remove what can go, then again, while that makes progress.
        while !ids.is_empty() {
            let before = ids.len();
            ids.retain(|id| {
                proc::run(proc::docker().args(["rmi", "-f", id]))
                    .map(|r| r.code != 0)
                    .unwrap_or(true)
            });
            if ids.len() == before {
                bail!("cannot remove the unit images {}", ids.join(" "));
            }
        }
        Ok(())
    }

    /// Removes every container, image and directory the benchmark made.
    fn cleanup(&self, keep_work: bool) {
        if let Ok(ran) =
            proc::run(proc::docker().args(["ps", "-aq", "--filter", &format!("label={LABEL}")]))
        {
            for id in ran.stdout_str().lines().filter(|l| !l.is_empty()) {
                let _ = proc::run(proc::docker().args(["rm", "-f", id]));
            }
        }
        for key in self.deps_keys.borrow().iter() {
            let _ = self.remove_unit_images(key);
            let _ = proc::run(proc::docker().args(["rmi", &format!("boxdelegate/deps:{key}")]));
        }
        for image in self.naive_images.borrow().iter() {
            let _ = proc::run(proc::docker().args(["rmi", "-f", image]));
        }
        if !keep_work {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

fn main() {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main(args: Args) -> Result<()> {
    if let Some(file) = &args.render {
        let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let results: Value = serde_json::from_slice(&data)
            .with_context(|| format!("{}: not the JSON of bench --json", file.display()))?;
        print!("{}", render(&results));
        return Ok(());
    }
    let started = Instant::now();
    let quick = args.quick;
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if quick {
            vec![1000]
        } else {
            vec![1000, 10_000, 100_000]
        }
    });
    let runs = args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let scaling =
        args.scaling
            .clone()
            .unwrap_or_else(|| if quick { vec![1, 2] } else { vec![1, 2, 4, 8] });
    // Every option is checked before anything is created (directories, images, containers).
    if let Some(s) = sizes.iter().find(|s| **s < 100) {
        bail!("--sizes: {s} files is too few (at least 100)");
    }
    if let Some(k) = scaling.iter().find(|k| **k == 0 || **k > repo::SCALING_MAX) {
        bail!(
            "--scaling: {k} units at once; the generated repositories have units for 1 to {}",
            repo::SCALING_MAX
        );
    }
    let scaling_size = args.scaling_size.unwrap_or(if quick {
        sizes[0]
    } else if sizes.contains(&10_000) {
        10_000
    } else {
        sizes[0]
    });
    if !scaling.is_empty() && !sizes.contains(&scaling_size) {
        bail!(
            "--scaling-size: {scaling_size} is not one of the sizes measured ({}); pick one of them, or add it to --sizes",
            sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let bd = locate_boxdelegate(args.boxdelegate.as_deref())?;
    preflight()?;
    let (work, keep_work) = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), true)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("boxdelegate-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.keep(), false)
        }
    };
    let bench = Bench {
        bd,
        wheelhouse: work.join("wheelhouse"),
        work,
        runs,
        quick,
        naive_max_files: args.naive_max_files,
        deps_keys: Default::default(),
        naive_images: Default::default(),
    };
    let outcome = measure(&bench, &sizes, &scaling, scaling_size);
    bench.cleanup(keep_work);
    let mut results = outcome?;
    results["wall_seconds"] = json!(started.elapsed().as_secs_f64());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).context("printing JSON")?
        );
    } else {
        print!("{}", render(&results));
    }
    Ok(())
}

/// The boxdelegate binary: the one named, or the one beside this binary (built first when
/// this runs under cargo, so it is never stale).
fn locate_boxdelegate(named: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = named {
        if !p.is_file() {
            bail!("--boxdelegate {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bin", "boxdelegate", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        proc::ok(&mut cmd).context("building boxdelegate")?;
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let beside = exe
        .parent()
        .map(|d| d.join("boxdelegate"))
        .context("locating the bench binary's directory")?;
    if !beside.is_file() {
        bail!(
            "no boxdelegate binary at {}; build it (cargo build --release) or pass --boxdelegate PATH",
            beside.display()
        );
    }
    Ok(beside)
}

/// The engine, the base image, git and Python must be there before anything is generated.
fn preflight() -> Result<()> {
    proc::ok(proc::docker().args(["version", "--format", "{{.Server.Version}}"]))
        .context("the container engine is not reachable (docker version failed)")?;
    if proc::run(proc::docker().args(["image", "inspect", BASE_IMAGE]))?.code != 0 {
        bail!("the engine has no {BASE_IMAGE}; build it first: scripts/setup-images.sh");
    }
    proc::ok(Command::new("git").arg("--version")).context("git is needed")?;
    proc::ok(Command::new("python3").args(["-m", "venv", "--help"]))
        .context("python3 with venv is needed for the worktree baseline")?;
    Ok(())
}

fn measure(
    bench: &Bench,
    sizes: &[usize],
    scaling: &[usize],
    scaling_size: usize,
) -> Result<Value> {
    let machine = machine()?;
    eprintln!("bench: wheelhouse for the worktree baseline");
    baselines::wheelhouse(bench)?;
    eprintln!("bench: engine floor");
    let floor = baselines::engine_floor(bench)?;
    let floor_ms = floor.median;
    let mut per_size = Vec::new();
    let mut scaling_out = Value::Null;
    let mut swarm_out = Value::Null;
    for &n in sizes {
        let dir = bench.work.join(format!("repo-{n}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        eprintln!("bench: {n} files: generating");
        let t = Instant::now();
        let repo = repo::generate(&dir, n)?;
        let generated = t.elapsed().as_secs_f64();
        let mut m = Metrics::default();
        // How long each part of the benchmark took, to keep its own run time in view.
        let mut sections = serde_json::Map::new();
        let mut timed = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let t = Instant::now();
            f()?;
            sections.insert(name.into(), json!(t.elapsed().as_secs_f64()));
            Ok(())
        };
        timed("images", &mut || units::images(bench, &repo, &mut m))?;
        timed("units", &mut || units::runs(bench, &repo, &mut m))?;
        timed("references", &mut || {
            units::references(bench, &repo, &mut m)
        })?;
        timed("worktree", &mut || {
            baselines::worktree(bench, &repo, &mut m)
        })?;
        timed("naive", &mut || baselines::naive(bench, &repo, &mut m))?;
        if n == scaling_size && !scaling.is_empty() {
            timed("scaling", &mut || {
                scaling_out = units::scaling(bench, &repo, scaling)?;
                Ok(())
            })?;
        }
        // Many `run` processes at once (a planner's sub-agents), beside one run: not in the
        // quick smoke test.
        if n == scaling_size && !bench.quick {
            timed("swarm", &mut || {
                swarm_out = units::swarm(bench, &repo)?;
                Ok(())
            })?;
        }
        // The codex agent beside the command agent, on one size: its start does not depend on
        // the repository's size, and the model answers at once.
        if n == scaling_size {
            timed("codex", &mut || codex::rows(bench, &repo, &mut m))?;
        }
        ratios(&mut m, floor_ms);
        per_size.push(json!({
            "files": repo.files,
            "bytes": repo.bytes,
            "generate_seconds": generated,
            "sections_seconds": sections,
            "metrics": m,
        }));
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        for key in bench.deps_keys.borrow().iter() {
            bench.remove_unit_images(key)?;
        }
    }
    let mut out = json!({
        "schema": 1,
        "machine": machine,
        "settings": {
            "quick": bench.quick,
            "runs": bench.runs,
            "warmup": 1,
            "heavy_runs": sizes.iter().map(|n| json!({"files": n, "warmup": bench.heavy(*n).0, "runs": bench.heavy(*n).1})).collect::<Vec<_>>(),
            "scaling_runs": 1,
            "naive_max_files": bench.naive_max_files,
            "sizes": sizes,
            "scaling": scaling,
            "scaling_size": scaling_size,
        },
        "engine_floor": floor,
        "sizes": per_size,
        "scaling": scaling_out,
        "swarm": swarm_out,
    });
    out["targets"] = targets(&out);
    Ok(out)
}

/// Ratios of each baseline to boxdelegate's warm overhead of a unit, and of that overhead to
/// the engine floor.
fn ratios(m: &mut Metrics, floor_ms: f64) {
    if let (Some(c), Some(l)) = (m.median("ref_image_commit"), m.median("image_incremental")) {
        m.put("ratio_commit_to_layer", Metric::new("x", vec![c / l]));
    }
    let Some(bd) = m.median("unit_overhead") else {
        return;
    };
    let worktree = m.median("worktree_total");
    let naive = m.median("naive_total");
    let mut put = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            m.put(name, Metric::new("x", vec![v]));
        }
    };
    put("ratio_worktree_to_boxdelegate", worktree.map(|w| w / bd));
    put("ratio_naive_to_boxdelegate", naive.map(|n| n / bd));
    put("ratio_boxdelegate_to_floor", Some(bd / floor_ms));
    let codex_start = m.median("codex_agent_start");
    let command_start = m.median("command_network_start");
    let codex_overhead = m.median("codex_unit_overhead");
    let (codex_one, codex_four) = (m.median("codex_unit_wall"), m.median("codex_per_unit_4"));
    let mut put = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            m.put(name, Metric::new("x", vec![v]));
        }
    };
    put(
        "ratio_codex_start_to_command",
        codex_start.zip(command_start).map(|(c, s)| c / s),
    );
    put("ratio_codex_to_floor", codex_overhead.map(|c| c / floor_ms));
    put(
        "ratio_codex_4_to_1",
        codex_four.zip(codex_one).map(|(f, o)| f / o),
    );
}

/// The machine and software the numbers come from.
fn machine() -> Result<Value> {
    let text = |cmd: &mut Command| -> String {
        proc::run(cmd)
            .map(|r| r.stdout_str().trim().to_string())
            .unwrap_or_default()
    };
    let engine = text(proc::docker().args([
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}})",
    ]));
    let driver = text(proc::docker().args(["info", "--format", "{{.Driver}}"]));
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "engine": engine,
        "storage_driver": driver,
        "git": text(Command::new("git").arg("--version")),
        "kernel": text(Command::new("uname").arg("-r")),
    }))
}

/// A statistic (`median`, `max`) of a metric at a size, from the results.
fn stat_at(results: &Value, files: usize, name: &str, stat: &str) -> Option<f64> {
    results["sizes"]
        .as_array()?
        .iter()
        .find(|s| size_label(s["files"].as_u64().unwrap_or(0) as usize) == size_label(files))?
        ["metrics"][name][stat]
        .as_f64()
}

/// `stat` of metric `name` at the first size that has it.
fn stat_any(results: &Value, name: &str, stat: &str) -> Option<f64> {
    results["sizes"]
        .as_array()?
        .iter()
        .find_map(|s| s["metrics"][name][stat].as_f64())
}

/// The performance targets of the foundation and run issues, each met, not met, or not
/// measured (the size was not run).
fn targets(results: &Value) -> Value {
    let check = |name: &str, value: Option<f64>, limit: f64, unit: &str, how: &str| {
        json!({
            "target": name,
            "limit": limit,
            "unit": unit,
            "value": value,
            "how": how,
            "met": value.map(|v| v < limit),
        })
    };
    json!([
        check(
            "peak RSS streaming a 100k-file, ~400 MB snapshot < 100 MiB",
            stat_at(results, 100_000, "rss_image_cold", "max"),
            100.0,
            "MiB",
            "boxdelegate's own VmHWM, largest over the cold image builds (full upload) of the 100k repository; git's memory maps of the pack are reported apart",
        ),
        check(
            "everything cached: command start to unit image ready, 10k files < 1 s",
            stat_at(results, 10_000, "image_warm", "median"),
            1000.0,
            "ms",
            "median wall time of `boxdelegate image build` with both images cached",
        ),
        check(
            "one-file commit on a cached 100k-file tree: new unit image < 2 s",
            stat_at(results, 100_000, "image_incremental", "median"),
            2000.0,
            "ms",
            "median wall time of `boxdelegate image build` after a one-file commit",
        ),
        check(
            "extraction of a one-file change, 100k files < 0.5 s",
            stat_at(results, 100_000, "extract_1", "median"),
            500.0,
            "ms",
            "median of the run's extract phase (change log, archive reads, store, tree, patch, scope)",
        ),
        check(
            "codex agent start ≤ 1.5× the command agent's",
            stat_any(results, "ratio_codex_start_to_command", "median"),
            1.5,
            "x",
            "container create → started (the agent's process), codex over the command agent on the same engine network, medians, same repository",
        ),
        check(
            "warm overhead of a codex unit (model answering at once) ≤ 3× the engine floor",
            stat_any(results, "ratio_codex_to_floor", "median"),
            3.0,
            "x",
            "a codex unit's wall time less the agent's own (codex's start-up, model exchange and exit), over `docker run --rm true`",
        ),
        check(
            "four codex units at once cost no more per unit than one",
            stat_any(results, "ratio_codex_4_to_1", "median"),
            1.0,
            "x",
            "wall time of four units at once ÷ 4, over one unit's wall time",
        ),
    ])
}

pub fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else if n >= 1000 {
        format!("{:.1}k", n as f64 / 1000.0)
    } else {
        n.to_string()
    }
}

/// Rows of the table: metric name, description.
const ROWS: &[(&str, &str)] = &[
    ("image_cold", "snapshot + unit image, cold (full upload)"),
    ("image_warm", "snapshot + unit image, warm (cached)"),
    (
        "image_incremental",
        "snapshot + unit image after a 1-file commit",
    ),
    (
        "ref_image_commit",
        "  reference: the same by committing a container",
    ),
    (
        "ratio_commit_to_layer",
        "  committed container ÷ loaded layer",
    ),
    (
        "agent_start",
        "agent container create → agent process start",
    ),
    (
        "agent_start_log",
        "  the same with the change log's watcher",
    ),
    (
        "extract_1",
        "extraction, 1-file change (upper layer, local engine)",
    ),
    ("extract_1_log", "  the same listed by the change log"),
    ("extract_100", "extraction, 100-file change"),
    ("extract_10000", "extraction, 10k-file change"),
    (
        "ref_engine_diff",
        "  reference: engine filesystem diff alone",
    ),
    ("ref_archive_read", "  reference: whole-tree archive read"),
    ("verify_start", "verify start → check process start"),
    ("land", "landing"),
    ("unit_overhead", "warm overhead of a unit (1-file change)"),
    ("rss_run", "peak RSS, run (boxdelegate)"),
    (
        "rss_run_git",
        "peak RSS, run (largest of boxdelegate and the git it ran)",
    ),
    ("rss_image_cold", "peak RSS, cold image build (boxdelegate)"),
    (
        "rss_image_cold_git",
        "peak RSS, cold image build (largest of boxdelegate and the git it ran)",
    ),
    ("worktree_total", "baseline: worktree + venv install + diff"),
    ("naive_total", "baseline: docker build + run + cp + diff"),
    ("ratio_worktree_to_boxdelegate", "worktree ÷ boxdelegate"),
    (
        "ratio_naive_to_boxdelegate",
        "naive container ÷ boxdelegate",
    ),
    ("ratio_boxdelegate_to_floor", "boxdelegate ÷ engine floor"),
    (
        "agent_container_start",
        "agent container create → started (command agent)",
    ),
    (
        "command_network_start",
        "  the same, on an engine network (what joining it costs)",
    ),
    (
        "codex_agent_start",
        "codex: agent container create → started (codex's process)",
    ),
    (
        "ratio_codex_start_to_command",
        "  codex start ÷ command agent start on that network",
    ),
    (
        "codex_first_request",
        "  codex: create → its first model request (codex's own start-up)",
    ),
    (
        "codex_unit_overhead",
        "codex: warm overhead of a unit (wall less the agent's time)",
    ),
    ("ratio_codex_to_floor", "  codex overhead ÷ engine floor"),
    ("codex_unit_wall", "codex: one unit, wall time"),
    ("codex_per_unit_4", "codex: four units at once, wall ÷ 4"),
    ("ratio_codex_4_to_1", "  per unit at four ÷ one unit"),
];

fn render(results: &Value) -> String {
    let mut out = String::new();
    let m = &results["machine"];
    out.push_str(&format!(
        "boxdelegate bench: {} CPUs, {} GiB, engine {} ({}), {}; runs {} after 1 warm-up; total {:.0} s\n\n",
        m["cpus"],
        m["memory_gib"],
        m["engine"].as_str().unwrap_or("?"),
        m["storage_driver"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?"),
        results["settings"]["runs"],
        results["wall_seconds"].as_f64().unwrap_or(0.0),
    ));
    let sizes = results["sizes"].as_array().cloned().unwrap_or_default();
    let mut header = vec!["metric (median, min–max)".to_string()];
    for s in &sizes {
        header.push(format!(
            "{} files ({:.0} MB)",
            size_label(s["files"].as_u64().unwrap_or(0) as usize),
            s["bytes"].as_f64().unwrap_or(0.0) / 1e6
        ));
    }
    let mut rows = vec![header];
    for (name, label) in ROWS {
        let cells: Vec<String> = sizes
            .iter()
            .map(|s| {
                let v = &s["metrics"][name];
                match serde_json::from_value::<stats::Metric>(v.clone()) {
                    Ok(x) => x.cell(),
                    Err(_) => "–".to_string(),
                }
            })
            .collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let mut row = vec![label.to_string()];
        row.extend(cells);
        rows.push(row);
    }
    let floor = serde_json::from_value::<stats::Metric>(results["engine_floor"].clone())
        .map(|s| s.cell())
        .unwrap_or_default();
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "\nengine floor (create + start + wait + remove, `true`): {floor}\n"
    ));
    if let Some(sc) = results["scaling"].as_array() {
        out.push_str(&format!(
            "\nparallel units ({} files, --jobs = units):\n",
            size_label(results["settings"]["scaling_size"].as_u64().unwrap_or(0) as usize)
        ));
        let mut rows = vec![vec![
            "units".to_string(),
            "total wall".to_string(),
            "wall per unit".to_string(),
        ]];
        for s in sc {
            let cell = |k: &str| metric_cell(&s[k]);
            rows.push(vec![s["units"].to_string(), cell("wall"), cell("per_unit")]);
        }
        out.push_str(&table(&rows));
    }
    if let Some(sw) = results["swarm"].as_array() {
        out.push_str(&format!(
            "\na swarm ({} files): units from separate `run` processes at once, beside one `run --jobs`:\n",
            size_label(results["settings"]["scaling_size"].as_u64().unwrap_or(0) as usize)
        ));
        let mut rows = vec![vec![
            "units".to_string(),
            "processes".to_string(),
            "swarm wall".to_string(),
            "per unit".to_string(),
            "one run wall".to_string(),
            "per unit".to_string(),
        ]];
        for s in sw {
            let cell = |k: &str| metric_cell(&s[k]);
            rows.push(vec![
                s["units"].to_string(),
                s["processes"].to_string(),
                cell("swarm_wall"),
                cell("swarm_per_unit"),
                cell("one_run_wall"),
                cell("one_run_per_unit"),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push_str("\ntargets:\n");
    for t in results["targets"].as_array().cloned().unwrap_or_default() {
        let verdict = match t["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let value = t["value"]
            .as_f64()
            .map(|v| stats::fmt_value(v, t["unit"].as_str().unwrap_or("")))
            .unwrap_or_else(|| "–".into());
        out.push_str(&format!(
            "  [{verdict}] {} (measured: {value})\n",
            t["target"].as_str().unwrap_or("")
        ));
    }
    out
}

/// A saved metric as a table cell (median and range), empty when absent.
fn metric_cell(v: &Value) -> String {
    serde_json::from_value::<stats::Metric>(v.clone())
        .map(|x| x.cell())
        .unwrap_or_default()
}

/// A Markdown table (readable as plain text too).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &Vec<String>| {
        let mut s = String::from("|");
        for (c, w) in width.iter().enumerate() {
            let cell = r.get(c).map(String::as_str).unwrap_or("");
            let pad = w - cell.chars().count();
            if c == 0 {
                s.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            }
        }
        s.push('\n');
        s
    };
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&line(r));
        if i == 0 {
            let mut s = String::from("|");
            for (c, w) in width.iter().enumerate() {
                if c == 0 {
                    s.push_str(&format!("{}|", "-".repeat(w + 2)));
                } else {
                    s.push_str(&format!("{}:|", "-".repeat(w + 1)));
                }
            }
            s.push('\n');
            out.push_str(&s);
        }
    }
    out
}

#[cfg(test)]
mod page {
    /// docs/benchmark.md shows results as `bench --render` prints them, between
    /// `<!-- bench-render: FILE -->` and `<!-- /bench-render -->` (scripts/bench-page.sh writes
    /// them): each such block is the rendering of the JSON it names, so the page is regenerated
    /// from its JSON, never typed.
    #[test]
    fn the_benchmark_page_is_rendered_from_its_json() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let page = std::fs::read_to_string(root.join("docs/benchmark.md")).unwrap();
        let mut blocks = 0;
        for part in page.split("<!-- bench-render: ").skip(1) {
            let (file, rest) = part.split_once(" -->\n").expect("a marker line");
            let shown = rest
                .split_once("<!-- /bench-render -->")
                .expect("an end marker")
                .0;
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(root.join(file)).unwrap()).unwrap();
            let expected = format!("```text\n{}```\n", super::render(&json));
            assert_eq!(
                shown, expected,
                "docs/benchmark.md's block for {file} is not its rendering: run scripts/bench-page.sh"
            );
            blocks += 1;
        }
        assert!(blocks >= 1, "docs/benchmark.md renders no result");
    }
}
