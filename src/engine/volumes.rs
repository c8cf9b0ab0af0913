//! Named volumes filled once from an image's directory and mounted read-only into containers
//! (the codex binaries): the engine copies an image's content into an empty named volume the
//! first time a container mounts it there, so no container of ours reads or writes the files.
//! Part of the [`Engine`] seam: plain values in.
//!
//! May not: mount a host path; mount a volume writable into an agent or verify container;
//! import configuration or snapshots.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};

use super::{hardened_host_config, is_not_found, labels, Engine, Resources};
use crate::error::{Error, Result};

/// The label holding the id of the image a volume was filled from.
pub const FROM_IMAGE: &str = "boxdelegate.from-image";

impl Engine {
    /// The id of the image volume `name` was filled from, if the volume exists.
    pub async fn volume_source(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(v.labels.get(FROM_IMAGE).cloned().unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(format!("inspecting volume {name}"), e)),
        }
    }

    /// Makes named volume `name` hold `image`'s `dir` (the image's id recorded in a label),
    /// filling it when it is missing or was filled from another image: a container of `image`
    /// is created with the empty volume mounted at `dir` (the engine copies the image's
    /// content in) and runs `cmd` (a command of the image that exits at once) before it is
    /// removed.
    pub async fn fill_volume_from_image(
        &self,
        name: &str,
        image: &str,
        dir: &str,
        cmd: Vec<String>,
    ) -> Result<()> {
        let image_id = self
            .image_id(image)
            .await?
            .ok_or_else(|| Error::ImageMissing {
                image: image.to_string(),
                hint: "build it first (boxdelegate image build …)".into(),
            })?;
        match self.volume_source(name).await? {
            Some(from) if from == image_id => return Ok(()),
            Some(_) => {
                // Filled from an older image of the same tag: refilled.
                let _ = self
                    .docker
                    .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await;
            }
            None => {}
        }
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(HashMap::from([
                    (FROM_IMAGE.to_string(), image_id.clone()),
                    (labels::KIND.to_string(), "tool-volume".to_string()),
                ])),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::engine(format!("creating volume {name}"), e))?;
        let filler = self
            .create_container(ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(cmd),
                labels: Some(HashMap::from([(
                    labels::KIND.to_string(),
                    "volume-filler".to_string(),
                )])),
                network_disabled: Some(true),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    mounts: Some(vec![Mount {
                        target: Some(dir.to_string()),
                        source: Some(name.to_string()),
                        typ: Some(MountType::VOLUME),
                        read_only: Some(false),
                        ..Default::default()
                    }]),
                    ..hardened_host_config(Resources {
                        memory: 512 << 20,
                        cpus: 1.0,
                        pids: 64,
                    })
                }),
                ..Default::default()
            })
            .await?;
        let ran = async {
            self.start(&filler).await?;
            self.wait(&filler).await
        }
        .await;
        self.remove_container(&filler).await?;
        match ran {
            Ok(0) => Ok(()),
            Ok(code) => Err(Error::Internal(format!(
                "filling volume {name} from {image}: its command exited {code}"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// The read-only mount of volume `name` at `target`.
pub fn read_only(name: &str, target: &str) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(name.to_string()),
        typ: Some(MountType::VOLUME),
        read_only: Some(true),
        ..Default::default()
    }
}
