//! boxdelegate's own numbers: images, units, extraction references, parallel units.
//!
//! May not: call the engine seam or the library directly (the binary is driven as a subprocess, as
//! a user runs it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::proc::{self, Ran};
use crate::repo::{Repo, SCALING_MAX, SWARM_MAX};
use crate::stats::{Metric, Metrics};
use crate::{size_label, Bench, LABEL};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The final object of a `--json` command: its last line (event lines come before it).
pub(crate) fn json_of(ran: &Ran, what: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(&ran.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| {
        format!(
            "{what} printed no JSON: {}",
            String::from_utf8_lossy(&ran.stderr)
        )
    })
}

/// `boxdelegate image build --json`, expecting the unit image to be made `how`.
fn image_build(bench: &Bench, repo: &Repo, how: Option<&str>) -> Result<(Ran, Value)> {
    image_build_with(bench, repo, how, &[])
}

fn image_build_with(
    bench: &Bench,
    repo: &Repo,
    how: Option<&str>,
    env: &[(&str, &str)],
) -> Result<(Ran, Value)> {
    let ran = proc::ok(
        bench
            .bd(&repo.dir)
            .args(["image", "build", "--json"])
            .envs(env.iter().copied()),
    )?;
    let v = json_of(&ran, "image build")?;
    let got = v["unit_image"]["how"].as_str().unwrap_or("");
    if let Some(want) = how {
        if got != want {
            bail!("image build made the unit image {got:?}, the benchmark expected {want:?} (a leftover image of an earlier run? remove boxdelegate/snap images of this repository)");
        }
    }
    Ok((ran, v))
}

/// Cold, warm and incremental snapshot + unit image.
pub fn images(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    let label = size_label(repo.files);
    eprintln!("bench: {label}: snapshot + unit image (cold, warm, incremental)");
    // The first build also installs the dependencies: the project's own work, not measured.
    // Where the dependency image was already there (the sizes share one manifest), the first
    // build is a cold unit image like the others, and counts as one.
    let (ran, first) = image_build(bench, repo, None)?;
    let key = first["deps"]["key"]
        .as_str()
        .context("image build --json has no deps.key")?
        .to_string();
    bench.remember_deps_key(&key);
    let (mut cold, mut rss, mut rss_git) = (vec![], vec![], vec![]);
    if first["deps_image"]["how"] == "cached" && first["unit_image"]["how"] == "full" {
        cold.push(ms(ran.wall));
        rss.push(mib(ran.self_rss_kib));
        rss_git.push(mib(ran.max_rss_kib));
    }
    while cold.len() < bench.heavy(repo.files).1 {
        bench.remove_unit_images(&key)?;
        let (ran, _) = image_build(bench, repo, Some("full"))?;
        cold.push(ms(ran.wall));
        rss.push(mib(ran.self_rss_kib));
        rss_git.push(mib(ran.max_rss_kib));
    }
    m.put("image_cold", Metric::ms(cold));
    m.put("rss_image_cold", Metric::new("MiB", rss));
    m.put("rss_image_cold_git", Metric::new("MiB", rss_git));
    let mut warm = vec![];
    for i in 0..=bench.runs {
        let (ran, _) = image_build(bench, repo, Some("cached"))?;
        if i > 0 {
            warm.push(ms(ran.wall));
        }
    }
    m.put("image_warm", Metric::ms(warm));
    // An incremental build writes one small layer on the parent image: cheap at every size.
    let (warmup, runs) = (1, bench.runs);
    let mut incremental = vec![];
    for i in 0..warmup + runs {
        repo.commit_one_file(i)?;
        let (ran, _) = image_build(bench, repo, Some("incremental"))?;
        if i >= warmup {
            incremental.push(ms(ran.wall));
        }
    }
    m.put("image_incremental", Metric::ms(incremental));
    // The same after a one-file commit, by committing a container (the way unit images were
    // made before, and the fallback): its baseline, in the same run. The commit makes some
    // storage drivers diff the whole filesystem, so the largest repositories get the costly
    // measurements' count.
    let (warmup, runs) = if repo.files >= 50_000 {
        bench.heavy(repo.files)
    } else {
        (1, bench.runs)
    };
    let mut committed = vec![];
    for i in 0..warmup + runs {
        repo.commit_one_file(1000 + i)?;
        let (ran, v) = image_build_with(
            bench,
            repo,
            Some("incremental"),
            &[("BOXDELEGATE_IMAGE_BUILD", "commit")],
        )?;
        if v["unit_image"]["method"] != "commit" {
            bail!(
                "BOXDELEGATE_IMAGE_BUILD=commit made a unit image by {}",
                v["unit_image"]["method"]
            );
        }
        if i >= warmup {
            committed.push(ms(ran.wall));
        }
    }
    m.put("ref_image_commit", Metric::ms(committed));
    Ok(())
}

/// What one unit of a run says about where its time went.
struct UnitSample {
    agent_start: f64,
    agent_container_start: f64,
    agent_work: f64,
    extract: f64,
    verify_start: f64,
    verify: f64,
    land: f64,
    files_changed: u64,
}

/// The nanosecond timestamps a log holds on lines starting with `prefix` (or consisting only
/// of digits when `prefix` is empty).
fn stamps(log: &str, prefix: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
        .filter(|s| s.len() >= 18 && s.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|s| s.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .collect()
}

fn unit_sample(u: &Value) -> Result<UnitSample> {
    let id = u["unit"].as_str().unwrap_or("?");
    if u["status"] != "landed" {
        bail!("unit {id} did not land: {} ({})", u["status"], u["message"]);
    }
    let t = &u["timings"];
    let num = |k: &str| -> Result<f64> {
        t[k].as_f64().with_context(|| {
            format!("unit {id}: run --json has no timings.{k} (an older boxdelegate?)")
        })
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let log = read(Path::new(u["log"].as_str().context("no agent log")?))?;
    let agent_start = stamps(&log, "bench-agent-start ");
    let agent_end = stamps(&log, "bench-agent-end ");
    let (Some(start), Some(end)) = (agent_start.first(), agent_end.last()) else {
        bail!("unit {id}: the agent log has no timestamps:\n{log}");
    };
    let dir = Path::new(u["attempt_dir"].as_str().context("no attempt dir")?);
    let vlog = read(&dir.join("verify.log"))?;
    let Some(check) = stamps(&vlog, "").last().copied() else {
        bail!("unit {id}: the verify log has no timestamp:\n{vlog}");
    };
    Ok(UnitSample {
        agent_start: start - num("agent_create_at_ms")?,
        agent_container_start: num("agent_start_ms")?,
        agent_work: end - start,
        extract: num("extract_ms")?,
        verify_start: check - num("verify_at_ms")?,
        verify: num("verify_ms")?,
        land: num("land_ms")?,
        files_changed: u["files_changed"].as_u64().unwrap_or(0),
    })
}

/// `boxdelegate run --json` of `ids`, `jobs` at a time, each on its default branch (deleted
/// first, so every run lands anew).
fn run_units(bench: &Bench, repo: &Repo, ids: &[String]) -> Result<(Ran, Value)> {
    run_units_env(bench, repo, ids, &[])
}

/// [`run_units`] with environment variables set for boxdelegate.
fn run_units_env(
    bench: &Bench,
    repo: &Repo,
    ids: &[String],
    env: &[(&str, &str)],
) -> Result<(Ran, Value)> {
    for id in ids {
        let r = format!("refs/heads/boxdelegate/{id}");
        proc::ok(proc::git(&repo.dir).args(["update-ref", "-d", &r]))?;
    }
    let mut cmd = bench.bd(&repo.dir);
    cmd.args(["run", "--json", "--jobs", &ids.len().to_string()]);
    cmd.envs(env.iter().copied());
    for id in ids {
        cmd.args(["--unit", id]);
    }
    let ran = proc::run(&mut cmd)?;
    let v = json_of(&ran, "run")?;
    if ran.code != 0 {
        bail!(
            "run {} exited {}: {}",
            ids.join(" "),
            ran.code,
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    Ok((ran, v))
}

/// Units that change 1 file (with every per-phase number and the whole overhead), 100 files
/// and 10k files (extraction).
pub fn runs(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    let label = size_label(repo.files);
    eprintln!("bench: {label}: units (1-file change, warm)");
    let mut s: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for i in 0..=bench.runs {
        let (ran, v) = run_units(bench, repo, &["c1".to_string()])?;
        let u = unit_sample(&v["units"][0])?;
        if i == 0 {
            continue;
        }
        let wall = ms(ran.wall);
        for (k, x) in [
            ("agent_start", u.agent_start),
            ("agent_container_start", u.agent_container_start),
            ("agent_work", u.agent_work),
            ("extract_1", u.extract),
            ("verify_start", u.verify_start),
            ("verify_total", u.verify),
            ("land", u.land),
            ("unit_wall", wall),
            // The agent's own work is taken out; the check's own work is one `date`.
            ("unit_overhead", wall - u.agent_work),
            ("rss_run", mib(ran.self_rss_kib)),
            ("rss_run_git", mib(ran.max_rss_kib)),
            (
                "run_snapshot",
                v["run"]["timings"]["snapshot_ms"].as_f64().unwrap_or(0.0),
            ),
            (
                "run_images",
                v["run"]["timings"]["images_ms"].as_f64().unwrap_or(0.0),
            ),
        ] {
            s.entry(k).or_default().push(x);
        }
    }
    for (k, v) in s {
        m.put(
            k,
            Metric::new(if k.starts_with("rss") { "MiB" } else { "ms" }, v),
        );
    }
    // The same unit listed through the agent container's change log (the watcher, with its
    // per-directory setup before the agent starts) rather than the upper layer.
    eprintln!("bench: {label}: units (1-file change, warm, change log)");
    let (mut start, mut extract, mut listing) = (vec![], vec![], String::new());
    for i in 0..=bench.runs {
        let (_, v) = run_units_env(
            bench,
            repo,
            &["c1".to_string()],
            &[("BOXDELEGATE_EXTRACT", "log")],
        )?;
        let u = unit_sample(&v["units"][0])?;
        let dir = Path::new(v["units"][0]["attempt_dir"].as_str().unwrap_or(""));
        if let Ok(c) = std::fs::read_to_string(dir.join("changes.json")) {
            listing = serde_json::from_str::<Value>(&c).unwrap_or_default()["listing"]
                .as_str()
                .unwrap_or("")
                .to_string();
        }
        if i > 0 {
            start.push(u.agent_start);
            extract.push(u.extract);
        }
    }
    if listing != "log" {
        bail!("BOXDELEGATE_EXTRACT=log listed the change by {listing:?}, not the change log");
    }
    m.put("agent_start_log", Metric::ms(start));
    m.put("extract_1_log", Metric::ms(extract));
    for count in [100usize, 10_000] {
        let id = format!("c{count}");
        // Only the largest repositories get the 10k-file change: it is slow to make.
        if repo.sources.len() < count || (count >= 10_000 && bench.quick) {
            continue;
        }
        eprintln!(
            "bench: {label}: units ({count}-file change{})",
            if count >= 10_000 { ", new files" } else { "" }
        );
        let mut extract = vec![];
        for _ in 0..bench.heavy(repo.files).1 {
            let (_, v) = run_units(bench, repo, std::slice::from_ref(&id))?;
            let u = unit_sample(&v["units"][0])?;
            if u.files_changed != count as u64 {
                bail!("unit {id} changed {} files, not {count}", u.files_changed);
            }
            extract.push(u.extract);
        }
        m.put(&format!("extract_{count}"), Metric::ms(extract));
    }
    Ok(())
}

/// The two mechanisms extraction is compared with, on a container with a one-file change:
/// the engine's filesystem diff, and reading the whole tree back as one archive.
pub fn references(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    let label = size_label(repo.files);
    eprintln!("bench: {label}: extraction references (engine diff, whole-tree archive)");
    let (_, v) = image_build(bench, repo, Some("cached"))?;
    let image = v["unit_image"]["image"]
        .as_str()
        .context("image build --json has no unit_image.image")?
        .to_string();
    let file = &repo.sources[0];
    let (mut diff, mut archive) = (vec![], vec![]);
    let (warmup, runs) = bench.heavy(repo.files);
    for i in 0..warmup + runs {
        let c = proc::ok(proc::docker().args([
            "create",
            "--label",
            LABEL,
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            &format!("echo edit >> '/work/{file}'"),
        ]))?
        .stdout_str()
        .trim()
        .to_string();
        let measured = (|| -> Result<(f64, f64)> {
            proc::ok(proc::docker().args(["start", "-a", &c]))?;
            let d = proc::ok(proc::docker().args(["diff", &c]))?;
            if !d.stdout_str().contains(file.as_str()) {
                bail!("docker diff does not show the changed file {file}");
            }
            // The archive is read to the end and thrown away, as a reader that parses it would.
            let a = proc::ok(
                std::process::Command::new("sh")
                    .args(["-c", &format!("docker cp '{c}:/work' - > /dev/null")]),
            )?;
            Ok((ms(d.wall), ms(a.wall)))
        })();
        let _ = proc::run(proc::docker().args(["rm", "-f", &c]));
        let (d, a) = measured?;
        if i >= warmup {
            diff.push(d);
            archive.push(a);
        }
    }
    m.put("ref_engine_diff", Metric::ms(diff));
    m.put("ref_archive_read", Metric::ms(archive));
    Ok(())
}

/// 1, 2, 4, 8 units of the same repository at once (`--jobs` = units): total wall time and
/// wall time per unit, one run each (the path is warm from the single units before).
pub fn scaling(bench: &Bench, repo: &Repo, ks: &[usize]) -> Result<Value> {
    let label = size_label(repo.files);
    let mut out = vec![];
    for &k in ks {
        eprintln!("bench: {label}: {k} unit(s) at once");
        let ids: Vec<String> = (1..=k).map(|i| format!("p{i}")).collect();
        let (mut wall, mut per_unit) = (vec![], vec![]);
        {
            let (ran, v) = run_units(bench, repo, &ids)?;
            for u in v["units"].as_array().cloned().unwrap_or_default() {
                unit_sample(&u)?;
            }
            wall.push(ms(ran.wall));
            per_unit.push(ms(ran.wall) / k as f64);
        }
        out.push(json!({
            "units": k,
            "wall": Metric::ms(wall),
            "per_unit": Metric::ms(per_unit),
        }));
    }
    Ok(Value::Array(out))
}

/// A planner's swarm: `units` units from `procs` separate `run` processes started at once on
/// the repository (each its share of the units), beside the same units in one `run --jobs
/// procs`; wall time and wall time per unit of each, in the same bench run.
pub fn swarm(bench: &Bench, repo: &Repo) -> Result<Value> {
    let label = size_label(repo.files);
    let procs = SCALING_MAX;
    let mut out = vec![];
    for units in [SCALING_MAX, SWARM_MAX] {
        eprintln!("bench: {label}: a swarm: {units} units from {procs} processes, and in one run");
        let ids: Vec<String> = (1..=units).map(|i| format!("p{i}")).collect();
        let reset = || -> Result<()> {
            for id in &ids {
                let r = format!("refs/heads/boxdelegate/{id}");
                proc::ok(proc::git(&repo.dir).args(["update-ref", "-d", &r]))?;
            }
            Ok(())
        };
        reset()?;
        let started = std::time::Instant::now();
        let children: Vec<_> = (0..procs)
            .map(|i| {
                let mine: Vec<&String> = ids.iter().skip(i).step_by(procs).collect();
                let mut cmd = bench.bd(&repo.dir);
                cmd.args(["run", "--json", "--jobs", &mine.len().to_string()]);
                for id in mine {
                    cmd.args(["--unit", id]);
                }
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting a swarm's run")
            })
            .collect::<Result<_>>()?;
        for child in children {
            let done = child.wait_with_output()?;
            if !done.status.success() {
                bail!(
                    "a swarm's run exited {:?}: {}",
                    done.status.code(),
                    String::from_utf8_lossy(&done.stderr)
                );
            }
        }
        let swarm_wall = ms(started.elapsed());
        reset()?;
        let mut cmd = bench.bd(&repo.dir);
        cmd.args(["run", "--json", "--jobs", &procs.to_string()]);
        for id in &ids {
            cmd.args(["--unit", id]);
        }
        let ran = proc::run(&mut cmd)?;
        if ran.code != 0 {
            bail!(
                "run --jobs {procs} of {units} units exited {}: {}",
                ran.code,
                String::from_utf8_lossy(&ran.stderr)
            );
        }
        let one = ms(ran.wall);
        out.push(json!({
            "units": units,
            "processes": procs,
            "swarm_wall": Metric::ms(vec![swarm_wall]),
            "swarm_per_unit": Metric::ms(vec![swarm_wall / units as f64]),
            "one_run_wall": Metric::ms(vec![one]),
            "one_run_per_unit": Metric::ms(vec![one / units as f64]),
        }));
    }
    Ok(Value::Array(out))
}
