//! `boxdelegate doctor`: is everything in place? Each problem comes with its fix.
//!
//! May not: change anything it checks: it reads the host and the engine and reports.

use crate::cli::GlobalArgs;
use crate::config::profile::Profile;
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{exit, Result};
use crate::git::Repo;
use crate::images;

#[derive(Debug, serde::Serialize)]
struct Problem {
    problem: String,
    fix: String,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    status: &'static str,
    version: &'static str,
    engine: Option<crate::engine::EngineInfo>,
    git: Option<String>,
    repository: Option<String>,
    profile: Option<String>,
    images: Vec<ImageState>,
    free_disk_bytes: Option<u64>,
    inside_codex: bool,
    problems: Vec<Problem>,
}

#[derive(Debug, serde::Serialize)]
struct ImageState {
    image: String,
    present: bool,
}

/// Free bytes on the filesystem holding `path`.
fn free_disk(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk", "--"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let avail: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail * 1024)
}

/// What an agent's configuration needs that `doctor` can check without running it: its image
/// (codex; the proxy's for `network = "proxy"`), its credentials present in this environment
/// (never their values), its engine network. Problems are returned with their fixes; images and
/// networks to look up on the engine are added to `images` and `networks`.
fn agent_needs(
    a: &crate::config::AgentConfig,
    root: &std::path::Path,
    images: &mut Vec<String>,
    networks: &mut Vec<String>,
    providers: &mut Vec<(crate::config::allow::Allow, String)>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut want = |i: String| {
        if !images.contains(&i) {
            images.push(i);
        }
    };
    if a.kind == crate::config::AgentKind::Codex {
        want(crate::agent::codex::image_tag(
            a.codex_version
                .as_deref()
                .unwrap_or(crate::agent::codex::DEFAULT_VERSION),
        ));
        let key = crate::agent::codex::key_var(a).to_string();
        let auth = a.auth_file.as_ref().map(|f| root.join(f));
        let has_key = a.env.contains(&key) && std::env::var_os(&key).is_some_and(|v| !v.is_empty());
        let has_auth = auth.as_ref().is_some_and(|f| f.is_file());
        if !has_key && !has_auth {
            out.push((
                match &auth {
                    Some(f) => format!("the codex agent has no credentials: {key} is not set here (or not in [agent] env) and auth_file {} cannot be read", f.display()),
                    None => format!("the codex agent has no credentials: {key} is not set in this environment, or not listed in [agent] env"),
                },
                format!("export {key}=… and list it in [agent] env = [\"{key}\"], or set [agent] auth_file"),
            ));
        }
    }
    for name in &a.env {
        if std::env::var_os(name).is_none() {
            out.push((
                format!("[agent] env names {name}, which is not set in this environment"),
                format!("export {name}=… before running, or remove it from [agent] env"),
            ));
        }
    }
    // The network the model's provider is reached from: the proxy's egress network, the
    // agent's own, or the engine's bridge; none with network = "none".
    let reached_from = match a.network.as_deref().unwrap_or("none") {
        "none" => None,
        "open" => Some("bridge".to_string()),
        "proxy" => {
            want(crate::proxy::IMAGE.to_string());
            let egress = a
                .egress_network
                .clone()
                .unwrap_or_else(|| crate::proxy::DEFAULT_EGRESS.into());
            networks.push(egress.clone());
            Some(egress)
        }
        name => {
            networks.push(name.to_string());
            Some(name.to_string())
        }
    };
    if a.kind == crate::config::AgentKind::Codex {
        if let (Some(net), Some(host)) = (
            reached_from,
            crate::config::allow::Allow::from_url(crate::agent::codex::upstream_url(a)),
        ) {
            providers.push((host, net));
        }
    }
    out
}

/// Whether `host` answers a TCP connection from a container on engine network `net` (a
/// probe of the site's base image, hardened like every container, up to 5 s). `None` when the probe
/// itself could not run (the base image or the network missing: reported apart).
async fn reachable(engine: &Engine, host: &crate::config::allow::Allow, net: &str) -> Option<bool> {
    let mut hc = crate::engine::hardened_host_config(&crate::config::Limits {
        memory: 64 << 20,
        cpus: 0.5,
        pids: 16,
        ..crate::config::Limits::default()
    });
    hc.network_mode = Some(net.to_string());
    let id = engine
        .create_container(bollard::models::ContainerCreateBody {
            image: Some(images::base_image()),
            cmd: Some(vec![
                "timeout".into(),
                "5".into(),
                "bash".into(),
                "-c".into(),
                "exec 3<>\"/dev/tcp/$1/$2\"".into(),
                "probe".into(),
                host.host.clone(),
                host.port.to_string(),
            ]),
            labels: Some(
                [(
                    crate::engine::labels::KIND.to_string(),
                    "doctor-probe".to_string(),
                )]
                .into(),
            ),
            host_config: Some(hc),
            ..Default::default()
        })
        .await
        .ok()?;
    let code = match engine.start(&id).await {
        Ok(()) => engine.wait(&id).await.ok(),
        Err(_) => None,
    };
    let _ = engine.remove_container(&id).await;
    code.map(|c| c == 0)
}

pub async fn run(global: &GlobalArgs, json: bool) -> Result<i32> {
    let mut r = Report {
        version: env!("CARGO_PKG_VERSION"),
        ..Default::default()
    };
    let problem =
        |r: &mut Report, problem: String, fix: String| r.problems.push(Problem { problem, fix });

    if std::env::var_os("CODEX_THREAD_ID").is_some() {
        r.inside_codex = true;
        problem(
            &mut r,
            "boxdelegate was started from inside a Codex session (CODEX_THREAD_ID is set); the container engine is usually unreachable from there".into(),
            "run boxdelegate from a normal shell on the host, outside the agent's sandbox".into(),
        );
    }
    match Repo::version() {
        Ok(v) if !v.is_empty() => r.git = Some(v),
        _ => problem(
            &mut r,
            "git is not installed or not on PATH".into(),
            "install git (2.38 or newer)".into(),
        ),
    }
    let dir = global
        .repo
        .clone()
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let mut wanted = vec![images::base_image()];
    // Engine networks the agents need (checked once the engine answers).
    let mut networks: Vec<String> = Vec::new();
    let mut providers: Vec<(crate::config::allow::Allow, String)> = Vec::new();
    match Repo::discover(&dir) {
        Ok(repo) => {
            r.repository = Some(repo.root.display().to_string());
            match Config::load(&repo.root).and_then(|c| {
                let p = Profile::load(&repo.root, &c.project.profile)?;
                Ok((c, p))
            }) {
                Ok((c, p)) => {
                    r.profile = Some(p.name.clone());
                    let image = images::toolchain_image(&p, c.project.base_image.as_deref());
                    if !wanted.contains(&image) {
                        wanted.push(image);
                    }
                    let agents = [Some(&c.agent), c.agent.fallback.as_deref()];
                    for a in agents.into_iter().flatten() {
                        for (problem_text, fix) in
                            agent_needs(a, &repo.root, &mut wanted, &mut networks, &mut providers)
                        {
                            problem(&mut r, problem_text, fix);
                        }
                    }
                }
                Err(e) => problem(
                    &mut r,
                    e.to_string(),
                    e.hint().unwrap_or("fix the configuration").to_string(),
                ),
            }
            r.free_disk_bytes = free_disk(&repo.root);
        }
        Err(_) => {
            r.free_disk_bytes = free_disk(&dir);
        }
    }
    match Engine::connect().await {
        Ok(engine) => {
            match engine.info().await {
                Ok(info) => {
                    if let Some(free) = free_disk(std::path::Path::new(&info.root_dir)) {
                        r.free_disk_bytes = Some(free);
                    }
                    r.engine = Some(info);
                }
                Err(e) => problem(&mut r, e.to_string(), "check the engine's health".into()),
            }
            let mut missing_networks = Vec::new();
            for n in &networks {
                if !engine.network_exists(n).await.unwrap_or(false) {
                    missing_networks.push(n.clone());
                    problem(
                        &mut r,
                        format!("the agent's network {n:?} does not exist on the engine"),
                        format!("create it (e.g. `docker network create --internal {n}`), or change [agent] network / egress_network"),
                    );
                }
            }
            for (host, net) in &providers {
                if missing_networks.contains(net) {
                    continue;
                }
                match reachable(&engine, host, net).await {
                    Some(true) => {}
                    Some(false) => problem(
                        &mut r,
                        format!("the model provider {host} does not answer from the engine network {net:?}"),
                        "check [agent.provider] base_url and that the provider is reachable from that network (egress_network for network = \"proxy\")".into(),
                    ),
                    // Not tried is not reachable: said, never a quiet pass.
                    None => problem(
                        &mut r,
                        format!("could not try the model provider {host} from the engine network {net:?}: the probe container (image {}) did not run", images::base_image()),
                        format!("make the base image available ({})", images::BASE_HINT),
                    ),
                }
            }
            for image in wanted {
                let present = engine.image_id(&image).await.ok().flatten().is_some();
                if !present {
                    let hint = match images::require_image(&engine, &image, None).await {
                        Err(e) => e.hint().unwrap_or_default().to_string(),
                        Ok(_) => String::new(),
                    };
                    problem(&mut r, format!("image {image} is missing"), hint);
                }
                r.images.push(ImageState { image, present });
            }
        }
        Err(e) => {
            let fix = e.hint().unwrap_or_default().to_string();
            problem(&mut r, e.to_string(), fix);
        }
    }
    if let Some(free) = r.free_disk_bytes {
        if free < 5 << 30 {
            problem(
                &mut r,
                format!("only {} MB of disk free", free / 1_000_000),
                "free disk space (images and snapshots need several GB); `boxdelegate image prune` removes unused images".into(),
            );
        }
    }
    r.status = if r.problems.is_empty() {
        "ready"
    } else {
        "problems"
    };
    if json {
        crate::output::print_json(&r)?;
    } else {
        if let Some(e) = &r.engine {
            println!(
                "engine     {} {} (Docker API {}, {}, storage {}) at {}",
                e.kind, e.version, e.api_version, e.os, e.storage_driver, e.endpoint
            );
        }
        if let Some(g) = &r.git {
            println!("git        {g}");
        }
        if let Some(repo) = &r.repository {
            println!(
                "repository {repo} (profile {})",
                r.profile.as_deref().unwrap_or("?")
            );
        }
        for i in &r.images {
            println!(
                "image      {} {}",
                i.image,
                if i.present { "present" } else { "MISSING" }
            );
        }
        if let Some(free) = r.free_disk_bytes {
            println!("free disk  {} GB", free / 1_000_000_000);
        }
        if r.problems.is_empty() {
            println!("status     ready");
        } else {
            println!("status     {} problem(s):", r.problems.len());
            for p in &r.problems {
                println!("  - {}\n    fix: {}", p.problem, p.fix);
            }
        }
    }
    Ok(if r.problems.is_empty() {
        exit::OK
    } else {
        exit::NOT_READY
    })
}
