//! Unit images: the dependency image plus the snapshot in `/work`, one per (tree, deps key).
//! Made as one layer written on the host and loaded ([`super::layer`]), or, where the engine
//! refuses that or `BOXDELEGATE_IMAGE_BUILD=commit` asks for it, streamed into a container that
//! is committed; incrementally (the difference and its deletions) on the nearest unit image of
//! another tree with the same deps key, up to [`MAX_DEPTH`] layers deep.
//!
//! May not: tag a unit image whose tree differs from the snapshot's; read anything back from a
//! container but the committed image.

use std::collections::HashMap;

use bollard::models::{ContainerConfig, ContainerCreateBody};

use super::{
    blocking_body, deletion_list, indent, join_tar, layer, snap_tag, tar_body, Context, DepsPlan,
    Ensured, DELETE_SCRIPT, MAX_CANDIDATES, MAX_DEPTH, SNAP_REPO,
};
use crate::engine::{hardened_host_config, labels, short, Engine};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::snapshot::{self, ExtraLink, Snapshot, TarStats, TreeEntry};

/// Ensures the unit image for `snapshot` on the dependency image `plan` exists, incrementally
/// when a unit image for another tree with the same deps key is at hand.
pub async fn ensure_unit(
    cx: &Context<'_>,
    plan: &DepsPlan,
    snapshot: &Snapshot,
    entries: &[TreeEntry],
    incremental: bool,
) -> Result<Ensured> {
    let Context {
        engine,
        repo,
        profile,
        limits,
        reporter,
    } = *cx;
    let tag = snap_tag(&snapshot.tree, &plan.key);
    if let Some(id) = engine.image_id(&tag).await? {
        return Ok(Ensured::cached(tag, id));
    }
    let parent = if incremental {
        find_parent(engine, repo, plan, snapshot, entries.len()).await?
    } else {
        None
    };
    let mut commit_labels = HashMap::from([
        (labels::KIND.to_string(), "snap".to_string()),
        (labels::DEPS_KEY.to_string(), plan.key.clone()),
        (labels::TREE.to_string(), snapshot.tree.clone()),
        (labels::COMMIT.to_string(), snapshot.commit.clone()),
        (labels::PROFILE.to_string(), profile.name.clone()),
        (
            labels::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    match &parent {
        Some((_, parent_tree, depth, diff)) => {
            commit_labels.insert(labels::DEPTH.into(), (depth + 1).to_string());
            commit_labels.insert(labels::PARENT_TREE.into(), parent_tree.clone());
            reporter.phase(&format!(
                "unit image: incremental from {} ({} changed, {} deleted)",
                short(parent_tree),
                diff.upserted.len(),
                diff.deleted.len()
            ));
        }
        None => {
            commit_labels.insert(labels::DEPTH.into(), "0".into());
            reporter.phase(&format!(
                "unit image: uploading snapshot {} ({} entries)",
                short(&snapshot.tree),
                entries.len()
            ));
        }
    }
    let links: Vec<ExtraLink> = profile
        .links
        .iter()
        .filter(|l| !entries.iter().any(|e| e.path == l.as_bytes()))
        .map(|l| ExtraLink {
            path: l.as_bytes().to_vec(),
            target: format!("/deps/{l}").into_bytes(),
        })
        .collect();
    let (how, parent_tree, deleted) = match &parent {
        Some((_, tree, _, diff)) => ("incremental", Some(tree.clone()), Some(diff.deleted.len())),
        None => ("full", None, None),
    };
    let ensured = |id: String, stats: TarStats, method: &str| Ensured {
        image: tag.clone(),
        id,
        how: how.into(),
        parent_tree: parent_tree.clone(),
        uploaded: Some(stats),
        deleted,
        method: Some(method.into()),
    };

    // Podman's image load wants every layer in the archive, not only the new one: there the
    // default is the committed container (said in docs/engines.md).
    let method = match build_method()? {
        Some(m) => m,
        None if engine.is_podman().await? => BuildMethod::Commit,
        None => BuildMethod::Layer,
    };
    if method == BuildMethod::Layer {
        let (parent_image, content) = match &parent {
            Some((image, _, _, diff)) => (
                image.clone(),
                layer::LayerContent {
                    entries: diff.upserted.clone(),
                    links: vec![],
                    whiteouts: layer::whiteouts(diff),
                },
            ),
            None => (
                plan.tag(),
                layer::LayerContent {
                    entries: entries.to_vec(),
                    links: links.clone(),
                    whiteouts: vec![],
                },
            ),
        };
        match load_layer(engine, repo, &parent_image, &tag, content, &commit_labels).await {
            Ok((id, stats)) => return Ok(ensured(id, stats, "layer")),
            // Slower, not wrong: said once on stderr (a warning even with -q), then done the
            // older way.
            Err(e) => eprintln!(
                "warning: unit image {tag}: the engine did not take the image layer ({e}); committing a container instead (BOXDELEGATE_IMAGE_BUILD=commit skips the attempt)"
            ),
        }
    }

    let build_labels = HashMap::from([
        (labels::KIND.to_string(), "snap-build".to_string()),
        (labels::TREE.to_string(), snapshot.tree.clone()),
    ]);
    let create = |image: String, cmd: Vec<String>| ContainerCreateBody {
        image: Some(image),
        cmd: Some(cmd),
        working_dir: Some("/work".into()),
        labels: Some(build_labels.clone()),
        network_disabled: Some(true),
        host_config: Some({
            let mut h = hardened_host_config(limits);
            h.network_mode = Some("none".into());
            h
        }),
        ..Default::default()
    };
    let (id, uploaded) = match &parent {
        Some((parent_image, _, _, diff)) => {
            let id = engine
                .create_container(create(
                    parent_image.clone(),
                    vec!["sh".into(), "-c".into(), DELETE_SCRIPT.into()],
                ))
                .await?;
            let res = async {
                if !diff.deleted.is_empty() {
                    engine
                        .upload(&id, "/tmp", deletion_list(&diff.deleted)?)
                        .await?;
                    engine.start(&id).await?;
                    let code = engine.wait(&id).await?;
                    if code != 0 {
                        let tail = engine.logs_tail(&id, 20).await;
                        return Err(Error::Internal(format!(
                            "applying deletions to the unit image failed (exit {code}):\n{}",
                            indent(tail.trim_end())
                        )));
                    }
                }
                let (body, done) = tar_body(repo.clone(), diff.upserted.clone(), vec![]);
                engine.upload(&id, "/work", body).await?;
                join_tar(done).await
            }
            .await;
            (id, res)
        }
        None => {
            let id = engine
                .create_container(create(plan.tag(), vec!["/bin/sh".into()]))
                .await?;
            let res = async {
                let (body, done) = tar_body(repo.clone(), entries.to_vec(), links.clone());
                engine.upload(&id, "/work", body).await?;
                join_tar(done).await
            }
            .await;
            (id, res)
        }
    };
    let result = match uploaded {
        Ok(stats) => engine
            .commit(
                &id,
                SNAP_REPO,
                tag.split_once(':').map(|(_, t)| t).unwrap_or_default(),
                ContainerConfig {
                    labels: Some(commit_labels),
                    cmd: Some(vec!["/bin/sh".into()]),
                    working_dir: Some("/work".into()),
                    ..Default::default()
                },
            )
            .await
            .map(|image_id| ensured(image_id, stats, "commit")),
        Err(e) => Err(e),
    };
    engine.remove_container(&id).await?;
    result
}

/// How unit images are written: a layer built on the host and loaded (the default but on
/// Podman), or a container filled through the archive API and committed
/// (`BOXDELEGATE_IMAGE_BUILD=commit`, for an engine that refuses such layers; it is also the
/// fallback when a load fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMethod {
    Layer,
    Commit,
}

/// The build method `BOXDELEGATE_IMAGE_BUILD` chooses; `None` when it is unset or empty, and
/// the engine decides: [`BuildMethod::Commit`] on Podman (its image load wants every layer of
/// the image, not one on a parent it has), else [`BuildMethod::Layer`]. Any other value than
/// `layer` or `commit` is a configuration error.
pub fn build_method() -> Result<Option<BuildMethod>> {
    let value = std::env::var_os("BOXDELEGATE_IMAGE_BUILD").unwrap_or_default();
    match value.to_str() {
        Some("") => Ok(None),
        Some("layer") => Ok(Some(BuildMethod::Layer)),
        Some("commit") => Ok(Some(BuildMethod::Commit)),
        _ => Err(Error::config_hint(
            "BOXDELEGATE_IMAGE_BUILD",
            format!(
                "unknown unit image build method {:?}",
                value.to_string_lossy()
            ),
            "set it to `layer` (the default) or `commit`, or unset it",
        )),
    }
}

/// Writes `content` as one layer on `parent_image` and loads it as `tag` (see [`layer`]).
async fn load_layer(
    engine: &Engine,
    repo: &Repo,
    parent_image: &str,
    tag: &str,
    content: layer::LayerContent,
    labels: &HashMap<String, String>,
) -> Result<(String, TarStats)> {
    let parent = layer_parent(engine, parent_image).await?;
    let labels = labels.clone();
    let tag_owned = tag.to_string();
    let repo = repo.clone();
    let created_by = format!("boxdelegate {}: snapshot layer", env!("CARGO_PKG_VERSION"));
    let (body, done) = blocking_body(move |out| {
        layer::write_archive(
            &repo,
            &content,
            &parent,
            &tag_owned,
            |diff_id| {
                // The tests' way to have the engine refuse the archive: a config naming a
                // layer the archive does not hold.
                let refused = format!("sha256:{}", "0".repeat(64));
                let diff_id = if crate::failpoint::armed("layer-refused") {
                    refused.as_str()
                } else {
                    diff_id
                };
                layer::image_config(
                    &parent,
                    &labels,
                    diff_id,
                    std::time::SystemTime::now(),
                    &created_by,
                )
            },
            out,
        )
    });
    let loaded = engine.load_images(body).await;
    let stats = join_tar(done).await?;
    loaded?;
    let id = engine.image_id(tag).await?.ok_or_else(|| {
        Error::Internal(format!(
            "the engine loaded the image layer but has no image {tag}"
        ))
    })?;
    Ok((id, stats))
}

/// The parent image's layers, config and history, as [`layer::image_config`] needs them.
async fn layer_parent(engine: &Engine, image: &str) -> Result<layer::Parent> {
    let inspect = engine.inspect_image(image).await?;
    let diff_ids = inspect
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default();
    if diff_ids.is_empty() {
        return Err(Error::Internal(format!("image {image} lists no layers")));
    }
    let history = engine.image_history(image).await?;
    Ok(layer::Parent {
        history: layer::history_from_listing(&history, diff_ids.len()),
        diff_ids,
        config: serde_json::to_value(&inspect.config).unwrap_or_default(),
        architecture: inspect
            .architecture
            .clone()
            .unwrap_or_else(|| "amd64".into()),
        os: inspect.os.clone().unwrap_or_else(|| "linux".into()),
        variant: inspect.variant.clone(),
    })
}

/// Picks the existing unit image (same deps key, depth below the limit, tree known to the
/// repository) whose tree is closest to the snapshot's, if building on it beats a full upload.
async fn find_parent(
    engine: &Engine,
    repo: &Repo,
    plan: &DepsPlan,
    snapshot: &Snapshot,
    total_entries: usize,
) -> Result<Option<(String, String, u32, snapshot::TreeDiff)>> {
    let kind = format!("{}=snap", labels::KIND);
    let key = format!("{}={}", labels::DEPS_KEY, plan.key);
    let mut images = engine.list_images(&[&kind, &key]).await?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let mut best: Option<(String, String, u32, snapshot::TreeDiff)> = None;
    for image in images.into_iter().take(MAX_CANDIDATES) {
        let (Some(tree), Some(depth)) = (
            image.labels.get(labels::TREE).cloned(),
            image
                .labels
                .get(labels::DEPTH)
                .and_then(|d| d.parse::<u32>().ok()),
        ) else {
            continue;
        };
        if depth >= MAX_DEPTH
            || tree == snapshot.tree
            || repo.resolve(&format!("{tree}^{{tree}}"))?.is_none()
        {
            continue;
        }
        let diff = snapshot::diff_trees(repo, &tree, &snapshot.tree)?;
        if best
            .as_ref()
            .is_none_or(|(_, _, _, d)| diff.len() < d.len())
        {
            best = Some((image.id.clone(), tree, depth, diff));
        }
    }
    // An incremental build pays off while the change is a minority of the tree.
    Ok(best.filter(|(_, _, _, d)| d.len() * 2 < total_entries.max(1)))
}
