//! The agent's network, joined ahead of time. Joining an engine network is the dearest part of
//! starting a container (a veth pair, the network's rules, its name server: 100–250 ms on a
//! small host, where a container with no network starts in ~120 ms). An agent that needs a
//! network therefore joins the network namespace of a *holder*: a container of its own on that
//! network that only sleeps, made while the run takes its snapshot and checks its images (or,
//! behind the egress proxy, while the proxy starts). The agent then starts as fast as one with
//! no network, and reaches exactly what the holder reaches: the holder is on that one network
//! only, hardened like the agent, and removed when the agent exits.
//!
//! May not: decide which network an agent gets (that is the plan's); outlive its attempt.

use std::collections::HashMap;
use std::sync::Mutex;

use bollard::models::ContainerCreateBody;

use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, Engine};
use crate::error::Result;

/// The kind label of a holder.
pub const KIND: &str = "network";

/// The holder of attempt `attempt` of `unit`: named, so a resumed run finds it.
pub fn name(run_id: &str, unit: &str, attempt: u32) -> String {
    format!("{}-net", crate::proxy::name(run_id, unit, attempt))
}

/// The network mode that puts a container in holder `name`'s network namespace.
pub fn mode(name: &str) -> String {
    format!("container:{name}")
}

/// What a holder may use: it only sleeps.
fn limits() -> Limits {
    Limits {
        memory: 16 << 20,
        cpus: 0.1,
        pids: 8,
        ..Limits::default()
    }
}

/// Creates and starts the holder of an attempt on `network` from `image` (any image with
/// `sleep`). A holder that does not start is removed.
pub async fn create(
    engine: &Engine,
    image: &str,
    network: &str,
    run_id: &str,
    unit: &str,
    attempt: u32,
) -> Result<String> {
    let name = name(run_id, unit, attempt);
    let mut host = hardened_host_config(&limits());
    host.network_mode = Some(network.to_string());
    host.readonly_rootfs = Some(true);
    engine.remove_container(&name).await?;
    engine
        .create_named_container(
            Some(&name),
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(vec!["sleep".into(), "infinity".into()]),
                user: Some("65534:65534".into()),
                labels: Some(HashMap::from([
                    (labels::RUN.to_string(), run_id.to_string()),
                    (labels::UNIT.to_string(), unit.to_string()),
                    (labels::ATTEMPT.to_string(), attempt.to_string()),
                    (labels::KIND.to_string(), KIND.to_string()),
                ])),
                host_config: Some(host),
                ..Default::default()
            },
        )
        .await?;
    if let Err(e) = engine.start(&name).await {
        let _ = engine.remove_container(&name).await;
        return Err(e);
    }
    Ok(name)
}

/// Removes the holder of an attempt, if there is one.
pub async fn remove(engine: &Engine, run_id: &str, unit: &str, attempt: u32) -> Result<()> {
    engine.remove_container(&name(run_id, unit, attempt)).await
}

/// A holder being made: its network, and the task making it.
type Making = (String, tokio::task::JoinHandle<Result<String>>);

/// Holders being made ahead for the first attempts of a run's units, by unit.
#[derive(Default)]
pub struct Ahead {
    pending: Mutex<HashMap<String, Making>>,
}

impl Ahead {
    /// Starts making the holder of attempt 1 of `unit` on `network` in the background.
    pub fn start(&self, engine: &Engine, image: &str, network: &str, run_id: &str, unit: &str) {
        let engine = engine.clone();
        let (image, net, run_id, u) = (
            image.to_string(),
            network.to_string(),
            run_id.to_string(),
            unit.to_string(),
        );
        let task = tokio::spawn(async move { create(&engine, &image, &net, &run_id, &u, 1).await });
        self.pending
            .lock()
            .expect("poisoned")
            .insert(unit.to_string(), (network.to_string(), task));
    }

    /// The holder of `unit`'s attempt `attempt` on `network`: the one made ahead when there is
    /// one (and it started), else one made now from `image`.
    pub async fn take(
        &self,
        engine: &Engine,
        image: &str,
        network: &str,
        run_id: &str,
        unit: &str,
        attempt: u32,
    ) -> Result<String> {
        let made = self.pending.lock().expect("poisoned").remove(unit);
        if let Some((net, task)) = made {
            match task.await {
                Ok(Ok(name)) if attempt == 1 && net == network => return Ok(name),
                Ok(Ok(name)) => engine.remove_container(&name).await?,
                // Made ahead and failed (an image without `sleep`, say): made now, from the
                // unit's image, and a failure then is the attempt's.
                _ => {}
            }
        }
        create(engine, image, network, run_id, unit, attempt).await
    }

    /// Removes the holders made ahead that no attempt took (units that did not run).
    pub async fn discard(&self, engine: &Engine) {
        let left: Vec<_> = self
            .pending
            .lock()
            .expect("poisoned")
            .drain()
            .map(|(_, (_, task))| task)
            .collect();
        for task in left {
            if let Ok(Ok(name)) = task.await {
                let _ = engine.remove_container(&name).await;
            }
        }
    }
}
