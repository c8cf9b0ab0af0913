//! The engine's networks: the internal network an attempt's agent and its egress proxy share,
//! created, joined, listed and removed (with the containers Podman keeps attached detached
//! first). Part of the [`Engine`] seam: plain values in; which networks a run needs is
//! `proxy`'s.
//!
//! May not: create a network with a way out unless asked; import configuration or snapshots.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::query_parameters as qp;

use super::{is_not_found, short, Engine};
use crate::error::{Error, Result};

impl Engine {
    /// Whether the engine has a network called `name`.
    pub async fn network_exists(&self, name: &str) -> Result<bool> {
        match self
            .docker
            .inspect_network(name, None::<qp::InspectNetworkOptions>)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(format!("inspecting network {name}"), e)),
        }
    }

    /// Creates a bridge network (with no way out when `internal`) and tracks it until
    /// [`Engine::remove_network`].
    pub async fn create_network(
        &self,
        name: &str,
        internal: bool,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::engine(format!("creating network {name}"), e))?;
        self.networks
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
        Ok(())
    }

    /// Attaches a created container to a further network.
    pub async fn connect_network(&self, network: &str, id: &str) -> Result<()> {
        self.docker
            .connect_network(
                network,
                bollard::models::NetworkConnectRequest {
                    container: id.to_string(),
                    endpoint_config: None,
                },
            )
            .await
            .map_err(|e| {
                Error::engine(
                    format!("attaching container {} to network {network}", short(id)),
                    e,
                )
            })
    }

    /// Removes a network; one already gone is fine.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        let mut res = self.docker.remove_network(name).await;
        // Podman refuses while any container is attached, even an exited one (Docker only while
        // one runs), and an exited agent is kept until its change is read: those are detached,
        // then the network goes.
        if matches!(&res, Err(BollardError::DockerResponseServerError { message, .. })
            if message.contains("associated containers") || message.contains("is being used"))
        {
            let attached = self
                .docker
                .list_containers(Some(qp::ListContainersOptions {
                    all: true,
                    filters: Some(HashMap::from([(
                        "network".to_string(),
                        vec![name.to_string()],
                    )])),
                    ..Default::default()
                }))
                .await
                .map_err(|e| {
                    Error::engine(format!("listing the containers on network {name}"), e)
                })?;
            for id in attached.into_iter().filter_map(|c| c.id) {
                let detached = self
                    .docker
                    .disconnect_network(
                        name,
                        bollard::models::NetworkDisconnectRequest {
                            container: id.clone(),
                            force: Some(true),
                        },
                    )
                    .await;
                match detached {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(Error::engine(
                            format!("detaching container {} from network {name}", short(&id)),
                            e,
                        ))
                    }
                }
            }
            res = self.docker.remove_network(name).await;
        }
        self.networks.lock().expect("poisoned").remove(name);
        match res {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::engine(format!("removing network {name}"), e)),
        }
    }

    /// Names of the networks carrying the `label=value` filters.
    pub async fn list_networks(&self, filters: &[&str]) -> Result<Vec<String>> {
        let f = HashMap::from([(
            "label".to_string(),
            filters.iter().map(|s| s.to_string()).collect(),
        )]);
        let nets = self
            .docker
            .list_networks(Some(qp::ListNetworksOptions { filters: Some(f) }))
            .await
            .map_err(|e| Error::engine("listing networks", e))?;
        Ok(nets.into_iter().filter_map(|n| n.name).collect())
    }
}
