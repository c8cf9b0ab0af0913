//! The codex agent's numbers: the real Codex CLI in a unit, driven by a scripted Responses-API
//! server of the benchmark's own that answers at once, so what is measured is boxdelegate and
//! codex starting, not a model thinking.
//!
//! The server listens on the host side of an internal engine network the benchmark creates;
//! the agent joins that network only. Each request is answered by how many tool outputs the
//! (re-sent) conversation holds: none yet, an `apply_patch` adding one file; after it, a final
//! message.
//!
//! May not: call the engine seam or the library directly (the binary is driven as a
//! subprocess); reach any address but that network's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::proc;
use crate::repo::{Repo, CHECK};
use crate::stats::{Metric, Metrics};
use crate::{Bench, LABEL};

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// When each model request arrived and when its answer was sent (ms since the epoch).
#[derive(Default)]
struct Served {
    calls: Vec<(f64, f64)>,
}

/// The scripted model server, alive while this value is.
struct Server {
    base_url: String,
    served: Arc<Mutex<Served>>,
}

impl Server {
    fn start(ip: IpAddr) -> Result<Server> {
        let listener = TcpListener::bind((ip, 0)).context("binding the scripted model server")?;
        let addr = listener.local_addr()?;
        let served: Arc<Mutex<Served>> = Arc::default();
        let s = served.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Ok(Server {
            base_url: format!("http://{addr}/v1"),
            served,
        })
    }

    fn take(&self) -> Vec<(f64, f64)> {
        std::mem::take(&mut self.served.lock().expect("poisoned").calls)
    }
}

fn event(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn completed(id: &str) -> String {
    event(
        json!({"type": "response.completed", "response": {"id": id, "usage": {
        "input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1020}}}),
    )
}

/// One HTTP/1.1 connection: requests until the client closes it.
fn serve(conn: TcpStream, served: &Mutex<Served>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let arrived = now_ms();
        let method = line.split_whitespace().next().unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if method != "POST" {
            out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let body = String::from_utf8_lossy(&body);
        let answer = if body.contains("custom_tool_call_output") {
            event(
                json!({"type": "response.output_item.done", "item": {"type": "message",
                "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]}}),
            ) + &completed("r2")
        } else {
            event(
                json!({"type": "response.output_item.done", "item": {"type": "custom_tool_call",
                "call_id": "c1", "name": "apply_patch",
                "input": "*** Begin Patch\n*** Add File: src/bench-codex.txt\n+written by the scripted model\n*** End Patch\n"}}),
            ) + &completed("r1")
        };
        out.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )?;
        out.flush()?;
        served
            .lock()
            .expect("poisoned")
            .calls
            .push((arrived, now_ms()));
    }
}

/// An internal engine network for the agent and the server, removed when dropped.
struct Network {
    name: String,
    gateway: IpAddr,
}

impl Network {
    fn create() -> Result<Network> {
        let name = format!("boxdelegate-bench-codex-{}", std::process::id());
        let _ = proc::run(proc::docker().args(["network", "rm", &name]));
        proc::ok(proc::docker().args([
            "network",
            "create",
            "--internal",
            "--label",
            LABEL,
            &name,
        ]))?;
        let gw = proc::ok(proc::docker().args([
            "network",
            "inspect",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]))?;
        let gateway = gw
            .stdout_str()
            .trim()
            .parse()
            .with_context(|| format!("the network {name} has no gateway address"))?;
        Ok(Network { name, gateway })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = proc::run(proc::docker().args(["network", "rm", &self.name]));
    }
}

/// The project's configuration with the codex agent talking to `server` over `network`.
fn config(network: &str, server: &Server) -> String {
    format!(
        "[project]\nprofile = \"bench\"\n\n[agent]\nkind = \"codex\"\nmodel = \"gpt-5.5\"\nretries = 0\nenv = [\"BENCH_MODEL_KEY\"]\nnetwork = \"{network}\"\n\n[agent.provider]\nname = \"bench\"\nbase_url = \"{}\"\nenv_key = \"BENCH_MODEL_KEY\"\nmax_retries = 0\n\n[verify]\nlint = \"{CHECK}\"\n\n[run]\ninfra_retries = 0\n\n[limits]\nmax_files = 20000\nmax_bytes = \"1g\"\n",
        server.base_url
    )
}

/// `run --json` of `ids` at once with the codex agent; the run's wall time and its units.
fn run(bench: &Bench, repo: &Repo, ids: &[&str]) -> Result<(f64, Vec<Value>)> {
    for id in ids {
        let r = format!("refs/heads/boxdelegate/{id}");
        proc::ok(proc::git(&repo.dir).args(["update-ref", "-d", &r]))?;
    }
    let mut cmd = bench.bd(&repo.dir);
    cmd.args(["run", "--json", "--jobs", &ids.len().to_string()])
        .env("BENCH_MODEL_KEY", "bench-key");
    for id in ids {
        cmd.args(["--unit", id]);
    }
    let ran = proc::run(&mut cmd)?;
    let v = crate::units::json_of(&ran, "run")?;
    let units = v["units"].as_array().cloned().unwrap_or_default();
    for u in &units {
        if u["status"] != "landed" {
            bail!(
                "codex unit {} did not land: {} ({})",
                u["unit"],
                u["status"],
                u["message"]
            );
        }
    }
    Ok((ran.wall.as_secs_f64() * 1000.0, units))
}

/// Codex units, one (several runs) and four at once: agent start (container create → codex's
/// process started, and → its first model request) beside the command agent's on the same
/// network, the warm overhead of a unit (its wall time less the agent's), and the wall time
/// per unit at four.
pub fn rows(bench: &Bench, repo: &Repo, m: &mut Metrics) -> Result<()> {
    eprintln!("bench: codex agent (scripted model answering at once)");
    let image = "boxdelegate/codex:0.163.0";
    if proc::run(proc::docker().args(["image", "inspect", image]))?.code != 0 {
        bail!("the engine has no {image}, which the codex rows need: build it with `boxdelegate image build codex` (scripts/setup-images.sh codex)");
    }
    let net = Network::create()?;
    let server = Server::start(net.gateway)?;
    let path = repo.dir.join("boxdelegate.toml");
    let original = std::fs::read(&path).context("reading the bench repository's config")?;
    let measured = (|| -> Result<()> {
        // The baseline: the command agent on the same network, so the comparison is of the
        // agents (the network's join is the same for any agent that talks to a model).
        let on_network = String::from_utf8_lossy(&original).replacen(
            "[agent]\n",
            &format!("[agent]\nnetwork = \"{}\"\n", net.name),
            1,
        );
        std::fs::write(&path, on_network)?;
        let mut command_start = vec![];
        for i in 0..=bench.runs {
            let (_, units) = run(bench, repo, &["p1"])?;
            let started = units[0]["timings"]["agent_start_ms"]
                .as_f64()
                .context("run --json has no timings.agent_start_ms")?;
            if i > 0 {
                command_start.push(started);
            }
        }
        m.put("command_network_start", Metric::ms(command_start));
        // The working tree's configuration (the snapshot stays the committed tree, so the unit
        // image is the one the command agent's units used).
        std::fs::write(&path, config(&net.name, &server))?;
        let (mut start, mut first_request, mut overhead, mut wall) =
            (vec![], vec![], vec![], vec![]);
        for i in 0..=bench.runs {
            server.take();
            let (w, units) = run(bench, repo, &["p1"])?;
            let calls = server.take();
            let t = &units[0]["timings"];
            let num = |k: &str| {
                t[k].as_f64()
                    .with_context(|| format!("run --json has no timings.{k}"))
            };
            let (created, started) = (num("agent_create_at_ms")?, num("agent_start_ms")?);
            let agent = units[0]["agent_seconds"]
                .as_f64()
                .context("run --json has no agent_seconds")?
                * 1000.0;
            let Some(first) = calls.first() else {
                bail!("the codex unit made no model request");
            };
            if i == 0 {
                continue;
            }
            // Container create → the agent's process started (the container's command is
            // codex's), as the command agent's `agent_container_start`.
            start.push(started);
            // Codex's own start-up on top: create → its first model request.
            first_request.push(first.0 - created);
            // What boxdelegate adds: the unit's wall time less the agent's (codex's start-up,
            // model exchange and exit are the agent's), as the command agent's overhead less
            // its work.
            overhead.push(w - agent);
            wall.push(w);
        }
        m.put("codex_agent_start", Metric::ms(start));
        m.put("codex_first_request", Metric::ms(first_request));
        m.put("codex_unit_overhead", Metric::ms(overhead));
        m.put("codex_unit_wall", Metric::ms(wall));
        let ids = ["p1", "p2", "p3", "p4"];
        eprintln!("bench: codex agent, {} units at once", ids.len());
        let (w, _) = run(bench, repo, &ids)?;
        m.put("codex_per_unit_4", Metric::ms(vec![w / ids.len() as f64]));
        Ok(())
    })();
    std::fs::write(&path, &original)?;
    measured
}
