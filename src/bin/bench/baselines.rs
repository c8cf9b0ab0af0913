//! The baselines, measured in the same run: the engine floor, the worktree way, the naive
//! container way.
//!
//! May not: share a cache or a container with boxdelegate's own measurements; leave a worktree,
//! container or image behind.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as qp;
use futures_util::StreamExt;

use crate::proc;
use crate::repo::{Repo, REQUIREMENTS};
use crate::stats::{Metric, Metrics};
use crate::{size_label, Bench, BASE_IMAGE, LABEL};

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Downloads the pinned wheels once, before anything is measured, so no baseline measures the
/// network.
pub fn wheelhouse(bench: &Bench) -> Result<()> {
    let have = std::fs::read_dir(&bench.wheelhouse)
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);
    if have >= REQUIREMENTS.len() {
        return Ok(());
    }
    proc::ok(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "--no-deps",
                "-d",
            ])
            .arg(&bench.wheelhouse)
            .args(REQUIREMENTS)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    )
    .context("downloading the wheelhouse of the worktree baseline from PyPI")?;
    Ok(())
}

/// Create + start + wait + remove of a container running `true`, through the engine's API.
pub fn engine_floor(bench: &Bench) -> Result<Metric> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime")?;
    let samples = rt.block_on(async {
        let docker = bollard::Docker::connect_with_defaults()
            .context("connecting to the engine")?
            .negotiate_version()
            .await
            .context("negotiating the engine's API version")?;
        let mut samples = vec![];
        for i in 0..=bench.runs.max(5) {
            let t = Instant::now();
            let id = docker
                .create_container(
                    None::<qp::CreateContainerOptions>,
                    ContainerCreateBody {
                        image: Some(BASE_IMAGE.into()),
                        cmd: Some(vec!["true".into()]),
                        labels: Some(HashMap::from([(LABEL.to_string(), String::new())])),
                        network_disabled: Some(true),
                        host_config: Some(HostConfig {
                            network_mode: Some("none".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
                .await
                .context("creating the floor container")?
                .id;
            let run = async {
                docker
                    .start_container(&id, None::<qp::StartContainerOptions>)
                    .await?;
                let mut wait = docker.wait_container(&id, None::<qp::WaitContainerOptions>);
                while let Some(r) = wait.next().await {
                    r?;
                }
                Ok::<(), bollard::errors::Error>(())
            }
            .await;
            let removed = docker
                .remove_container(
                    &id,
                    Some(qp::RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            run.context("running the floor container")?;
            removed.context("removing the floor container")?;
            if i > 0 {
                samples.push(ms_since(t));
            }
        }
        Ok::<_, anyhow::Error>(samples)
    })?;
    Metric::ms(samples).context("no floor samples")
}

/// What an agent does in both baselines: append a line to the first source file.
fn agent_edit(root: &std::path::Path, repo: &Repo) -> Result<()> {
    use std::io::Write;
    let path = root.join(&repo.sources[0]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "# edited by the bench agent")?;
    Ok(())
}

/// The worktree way: `git worktree add`, a virtualenv with the pinned requirements from the
/// local wheelhouse, the agent's edit, `git diff`, `git worktree remove`.
pub fn worktree(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    eprintln!("bench: {}: baseline: worktree", size_label(repo.files));
    let wt = bench.work.join(format!("worktree-{}", repo.files));
    let mut parts: [(&str, Vec<f64>); 4] = [
        ("worktree_add", vec![]),
        ("worktree_install", vec![]),
        ("worktree_diff", vec![]),
        ("worktree_remove", vec![]),
    ];
    let mut total = vec![];
    let (warmup, runs) = bench.heavy(repo.files);
    for i in 0..warmup + runs {
        let mut t = [0f64; 4];
        let s = Instant::now();
        proc::ok(
            proc::git(&repo.dir)
                .args(["worktree", "add", "-q", "--detach"])
                .arg(&wt)
                .arg("HEAD"),
        )?;
        t[0] = ms_since(s);
        let s = Instant::now();
        let venv = wt.join(".venv");
        proc::ok(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        proc::ok(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--no-index", "--find-links"])
                .arg(&bench.wheelhouse)
                .arg("-r")
                .arg(wt.join("requirements.txt"))
                .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
                .env_remove("PIP_FIND_LINKS"),
        )?;
        t[1] = ms_since(s);
        agent_edit(&wt, repo)?;
        let s = Instant::now();
        let diff = proc::ok(proc::git(&wt).args(["diff", "--binary", "HEAD"]))?;
        t[2] = ms_since(s);
        if diff.stdout.is_empty() {
            bail!("the worktree baseline's diff is empty");
        }
        let s = Instant::now();
        proc::ok(
            proc::git(&repo.dir)
                .args(["worktree", "remove", "--force"])
                .arg(&wt),
        )?;
        t[3] = ms_since(s);
        if i >= warmup {
            for (p, x) in parts.iter_mut().zip(t) {
                p.1.push(x);
            }
            total.push(t.iter().sum());
        }
    }
    for (name, v) in parts {
        m.put(name, Metric::ms(v));
    }
    m.put("worktree_total", Metric::ms(total));
    Ok(())
}

/// The naive container way: `docker build` with the repository as context (`COPY .`),
/// `docker run` of the agent's edit, `docker cp` of the whole tree, a host-side `diff -r`, then
/// the container and the copy removed. The build cache is warm after the warm-up, as it would
/// be for a second unit on the same commit.
pub fn naive(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    if repo.files > bench.naive_max_files {
        eprintln!(
            "bench: {}: baseline: naive container skipped (over --naive-max-files {})",
            size_label(repo.files),
            bench.naive_max_files
        );
        return Ok(());
    }
    eprintln!(
        "bench: {}: baseline: naive container",
        size_label(repo.files)
    );
    let dockerfile = bench.work.join("naive.Dockerfile");
    std::fs::write(
        &dockerfile,
        format!("FROM {BASE_IMAGE}\nCOPY --chown=1000:1000 . /work\nWORKDIR /work\n"),
    )
    .with_context(|| format!("writing {}", dockerfile.display()))?;
    let tag = format!("{LABEL}/naive:{}", repo.files);
    bench.naive_images.borrow_mut().insert(tag.clone());
    let name = format!("{LABEL}-naive-{}", repo.files);
    let out = bench.work.join(format!("naive-out-{}", repo.files));
    let mut parts: [(&str, Vec<f64>); 5] = [
        ("naive_build", vec![]),
        ("naive_run", vec![]),
        ("naive_cp", vec![]),
        ("naive_diff", vec![]),
        ("naive_cleanup", vec![]),
    ];
    let mut total = vec![];
    // One more warm-up than the others: the first build fills the build cache.
    let (warmup, runs) = bench.heavy(repo.files);
    let warmup = warmup.max(1);
    for i in 0..warmup + runs {
        let mut t = [0f64; 5];
        let s = Instant::now();
        proc::ok(
            proc::docker()
                .args(["build", "-q", "--label", LABEL, "-t", &tag, "-f"])
                .arg(&dockerfile)
                .arg(&repo.dir),
        )?;
        t[0] = ms_since(s);
        let s = Instant::now();
        proc::ok(proc::docker().args([
            "run",
            "--name",
            &name,
            "--label",
            LABEL,
            "--network",
            "none",
            &tag,
            "sh",
            "-c",
            &format!(
                "echo '# edited by the bench agent' >> '{}'",
                repo.sources[0]
            ),
        ]))?;
        t[1] = ms_since(s);
        let s = Instant::now();
        proc::ok(
            proc::docker()
                .args(["cp", &format!("{name}:/work")])
                .arg(&out),
        )?;
        t[2] = ms_since(s);
        let s = Instant::now();
        let diff = proc::run(
            Command::new("diff")
                .args(["-r", "-q", "-x", ".git"])
                .arg(&repo.dir)
                .arg(&out),
        )?;
        t[3] = ms_since(s);
        if diff.code != 1 {
            bail!(
                "the naive baseline's diff exited {} (1 expected: one file differs): {}",
                diff.code,
                String::from_utf8_lossy(&diff.stderr)
            );
        }
        let s = Instant::now();
        proc::ok(proc::docker().args(["rm", &name]))?;
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        t[4] = ms_since(s);
        if i >= warmup {
            for (p, x) in parts.iter_mut().zip(t) {
                p.1.push(x);
            }
            total.push(t.iter().sum());
        }
    }
    proc::ok(proc::docker().args(["rmi", &tag]))?;
    for (name, v) in parts {
        m.put(name, Metric::ms(v));
    }
    m.put("naive_total", Metric::ms(total));
    Ok(())
}
