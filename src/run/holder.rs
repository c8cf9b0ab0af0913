//! The agent's network behind the egress proxy, joined while the proxy starts. Joining an engine
//! network is the dearest part of starting a container (a veth pair, the network's rules, its
//! name server: 100–250 ms on a small host, where a container with no network starts in
//! ~150 ms). Behind the proxy the agent therefore joins the network namespace of a *holder*: a
//! container of its own on the attempt's network that only sleeps, made and started while the
//! proxy starts (which takes longer). The agent then starts as fast as one with no network, and
//! reaches exactly what the holder reaches: the holder is on that one network only, hardened
//! like the agent, and removed when the agent exits.
//!
//! An agent on a network of the engine's (`network = "<name>"`) joins it itself: with nothing
//! to wait for before it, a holder would add a container start, not hide one (measured).
//!
//! May not: decide which network an agent gets (that is the plan's); outlive its attempt.

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;

use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, Engine};
use crate::error::Result;

/// The kind label of a holder.
const KIND: &str = "network";

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
