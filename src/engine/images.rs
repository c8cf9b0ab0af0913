//! The engine's images: looked up, listed, removed, committed from a container, saved and
//! loaded as `docker save` archives, imported from a root filesystem, built from a
//! Containerfile. Part of the [`Engine`] seam: plain values in, no configuration, no snapshot.
//!
//! May not: import configuration or snapshots; shell out to an engine CLI.

use std::collections::HashMap;

use bollard::models::{ContainerConfig, ImageSummary};
use bollard::query_parameters as qp;
use futures_util::{Stream, StreamExt, TryStreamExt};

use super::{is_not_found, short, ByteStream, Engine, FIXED_MTIME};
use crate::error::{Error, Result};

impl Engine {
    /// The id of image `name`, or `None` when the engine has no such image.
    pub async fn image_id(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(name).await {
            Ok(img) => Ok(img.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(format!("inspecting image {name}"), e)),
        }
    }

    /// Everything the engine says of image `name`.
    pub async fn inspect_image(&self, name: &str) -> Result<bollard::models::ImageInspect> {
        self.docker
            .inspect_image(name)
            .await
            .map_err(|e| Error::engine(format!("inspecting image {name}"), e))
    }

    /// The history of image `name`, newest first: (created, created by, comment, size).
    pub async fn image_history(&self, name: &str) -> Result<Vec<(i64, String, String, i64)>> {
        let list = self
            .docker
            .image_history(name)
            .await
            .map_err(|e| Error::engine(format!("reading the history of image {name}"), e))?;
        Ok(list
            .into_iter()
            .map(|h| (h.created, h.created_by, h.comment, h.size))
            .collect())
    }

    /// Images carrying every `label=value` pair (or bare `label`) in `filters`.
    pub async fn list_images(&self, filters: &[&str]) -> Result<Vec<ImageSummary>> {
        let mut f = HashMap::new();
        f.insert(
            "label".to_string(),
            filters.iter().map(|s| s.to_string()).collect(),
        );
        self.docker
            .list_images(Some(qp::ListImagesOptions {
                filters: Some(f),
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::engine("listing images", e))
    }

    /// Adds tag `repo:tag` to image `name`.
    pub async fn tag_image(&self, name: &str, repo: &str, tag: &str) -> Result<()> {
        self.docker
            .tag_image(
                name,
                Some(
                    qp::TagImageOptionsBuilder::new()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(|e| Error::engine(format!("tagging image {name} as {repo}:{tag}"), e))
    }

    /// The tags of image `name` (empty when it does not exist).
    pub async fn image_tags(&self, name: &str) -> Result<Vec<String>> {
        match self.docker.inspect_image(name).await {
            Ok(img) => Ok(img.repo_tags.unwrap_or_default()),
            Err(e) if is_not_found(&e) => Ok(vec![]),
            Err(e) => Err(Error::engine(format!("inspecting image {name}"), e)),
        }
    }

    pub async fn remove_image(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_image(name, Some(qp::RemoveImageOptions::default()), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::engine(format!("removing image {name}"), e)),
        }
    }

    /// Commits the container as `repo:tag`, with `config` merged over the container's own.
    pub async fn commit(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        config: ContainerConfig,
    ) -> Result<String> {
        let res = self
            .docker
            .commit_container(
                qp::CommitContainerOptions {
                    container: Some(id.to_string()),
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                    pause: false,
                    ..Default::default()
                },
                config,
            )
            .await
            .map_err(|e| {
                Error::engine(
                    format!("committing container {} as {repo}:{tag}", short(id)),
                    e,
                )
            })?;
        Ok(res.id)
    }

    pub fn export_images<'a>(
        &'a self,
        names: &'a [&'a str],
    ) -> impl Stream<Item = Result<bytes::Bytes>> + 'a {
        self.docker
            .export_images(names)
            .map_err(|e| Error::engine("exporting images", e))
    }

    /// Loads images from a `docker save` archive.
    pub async fn load_images(&self, tar: impl ByteStream) -> Result<Vec<String>> {
        let mut stream = self.docker.import_image(
            qp::ImportImageOptions::default(),
            bollard::body_try_stream(tar),
            None,
        );
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::engine("loading images", e))?;
            if let Some(s) = info.stream {
                out.push(s.trim().to_string());
            }
        }
        Ok(out)
    }

    /// Creates an image from a root filesystem tar (`docker import`), applying Dockerfile-style
    /// `changes` such as `USER box`.
    pub async fn import_rootfs(
        &self,
        repo: &str,
        tag: &str,
        changes: Vec<String>,
        tar: impl ByteStream,
    ) -> Result<()> {
        let mut stream = self.docker.create_image(
            Some(qp::CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                changes,
                ..Default::default()
            }),
            Some(bollard::body_try_stream(tar)),
            None,
        );
        while let Some(item) = stream.next().await {
            item.map_err(|e| Error::engine(format!("importing {repo}:{tag}"), e))?;
        }
        Ok(())
    }

    /// Builds an image from a Containerfile, reporting each output line through `on_line`.
    pub async fn build(
        &self,
        tag: &str,
        containerfile: &str,
        labels: HashMap<String, String>,
        mut on_line: impl FnMut(&str),
    ) -> Result<()> {
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(containerfile.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(FIXED_MTIME);
        ar.append_data(&mut h, "Containerfile", containerfile.as_bytes())
            .map_err(|e| Error::io("packing the build context", e))?;
        let context = ar
            .into_inner()
            .map_err(|e| Error::io("packing the build context", e))?;
        let mut stream = self.docker.build_image(
            qp::BuildImageOptions {
                dockerfile: "Containerfile".into(),
                t: Some(tag.into()),
                rm: true,
                forcerm: true,
                labels: Some(labels),
                ..Default::default()
            },
            None,
            Some(bollard::body_full(context.into())),
        );
        let mut last = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        for line in s.lines().filter(|l| !l.trim().is_empty()) {
                            on_line(line);
                            last.push(line.to_string());
                            if last.len() > 30 {
                                last.remove(0);
                            }
                        }
                    }
                }
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "building {tag} failed: {e}\nlast lines of the build:\n{}",
                        last.join("\n")
                    )))
                }
            }
        }
        Ok(())
    }
}
