//! `boxdelegate image build|import|ls|prune|save|load`: the toolchain, dependency and unit
//! images, resolved from the repository before the engine is touched.
//!
//! May not: touch the engine before the repository, the configuration and the profile are
//! validated.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::reporter;
use crate::cli::{GlobalArgs, ImageCommand, SnapshotArgs};
use crate::engine::{labels, short, Engine};
use crate::error::{exit, Error, Result};
use crate::images::{self, DepsPlan};
use crate::output::{print_json, Reporter};
use crate::project::Project;
use crate::snapshot::{self, Snapshot, TreeEntry};

/// The current snapshot's images, resolved and made to exist.
#[derive(serde::Serialize)]
struct Prepared {
    snapshot: Snapshot,
    files: usize,
    deps: DepsPlan,
    deps_image: images::Ensured,
    unit_image: images::Ensured,
}

/// Snapshot → dependency image → unit image, each a cache hit when its inputs are unchanged.
async fn prepare(
    project: &Project,
    snap: &SnapshotArgs,
    incremental: bool,
    reporter: &dyn Reporter,
) -> Result<Prepared> {
    let snapshot = Snapshot::take(&project.repo, snap.include_dirty)?;
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let engine = Engine::connect().await?;
    let (deps, deps_image, unit_image) =
        images::ensure_images(&engine, project, &snapshot, &entries, incremental, reporter).await?;
    Ok(Prepared {
        files: entries.len(),
        snapshot,
        deps,
        deps_image,
        unit_image,
    })
}

pub async fn image(global: &GlobalArgs, cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Build {
            name: Some(name),
            codex_version,
            codex_binary,
            json,
            ..
        } if name == "codex" => {
            let version = match codex_version {
                Some(v) => v,
                None => Project::open(global)
                    .ok()
                    .and_then(|p| p.config.agent.codex_version)
                    .unwrap_or_else(|| crate::agent::codex::DEFAULT_VERSION.to_string()),
            };
            crate::agent::codex::check_version(&version)?;
            if let Some(b) = &codex_binary {
                crate::agent::codex::check_binary(b)?;
            }
            let reporter = reporter(global, json);
            let engine = Engine::connect().await?;
            // The version pins the content: an existing image is reused; a local binary
            // always replaces it.
            let built = crate::agent::codex::ensure_image(
                &engine,
                &version,
                codex_binary.as_deref(),
                reporter.as_ref(),
            )
            .await;
            reporter.finish();
            let tag = built?;
            let id = engine.image_id(&tag).await?.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({"image": tag, "id": id, "version": version}))?;
            } else {
                println!("built {tag} ({})", short(&id));
            }
            Ok(exit::OK)
        }
        ImageCommand::Build {
            name: None,
            snap,
            full,
            json,
            ..
        } => {
            let project = Project::open(global)?;
            let reporter = reporter(global, json);
            let prepared = prepare(&project, &snap, !full, reporter.as_ref()).await;
            reporter.finish();
            let prepared = prepared?;
            if json {
                print_json(&prepared)?;
            } else {
                println!(
                    "snapshot    {}{}",
                    prepared.snapshot.tree,
                    if prepared.snapshot.dirty {
                        " (dirty)"
                    } else {
                        ""
                    }
                );
                println!(
                    "deps image  {} ({})",
                    prepared.deps_image.image, prepared.deps_image.how
                );
                let how = match &prepared.unit_image.parent_tree {
                    Some(p) => format!("incremental on {}", short(p)),
                    None => prepared.unit_image.how.clone(),
                };
                println!("unit image  {} ({how})", prepared.unit_image.image);
            }
            Ok(exit::OK)
        }
        ImageCommand::Build {
            name: Some(name),
            json,
            ..
        } => {
            let Some((_, tag, _)) = images::CONTAINERFILES.iter().find(|(n, _, _)| *n == name)
            else {
                return Err(Error::Usage {
                    message: format!("no shipped Containerfile named {name:?}"),
                    hint: format!(
                        "use one of {}",
                        images::CONTAINERFILES
                            .iter()
                            .map(|(n, _, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            let engine = Engine::connect().await?;
            let reporter = reporter(global, json);
            let result = images::build_shipped(&engine, &name, reporter.as_ref()).await;
            reporter.finish();
            result?;
            let id = engine.image_id(tag).await?.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({"image": tag, "id": id}))?;
            } else {
                println!("built {tag} ({})", short(&id));
            }
            Ok(exit::OK)
        }
        ImageCommand::Import { name, rootfs } => {
            if name != "base" {
                return Err(Error::Usage {
                    message: format!("cannot import {name:?}: only the base image is made from a root filesystem"),
                    hint: "boxdelegate image import base ROOTFS.tar".into(),
                });
            }
            let file = tokio::fs::File::open(&rootfs)
                .await
                .map_err(|e| Error::io(format!("opening {}", rootfs.display()), e))?;
            let engine = Engine::connect().await?;
            let stream = tokio_util::io::ReaderStream::new(file);
            let base = images::base_image();
            let (repo, tag) = base.rsplit_once(':').unwrap_or((base.as_str(), "latest"));
            engine
                .import_rootfs(
                    repo,
                    tag,
                    vec![
                        "USER box".into(),
                        "WORKDIR /work".into(),
                        "ENV HOME=/home/box".into(),
                        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                            .into(),
                        "CMD [\"/bin/sh\"]".into(),
                        format!("LABEL {}=base", labels::KIND),
                    ],
                    stream,
                )
                .await?;
            let id = engine.image_id(&base).await?.unwrap_or_default();
            println!("imported {base} ({})", short(&id));
            Ok(exit::OK)
        }
        ImageCommand::Ls {
            all_repositories,
            json,
        } => {
            // In a repository: its own dependency and unit images (those it claims) and the
            // shared ones; another repository's are not its business.
            let mine = if all_repositories {
                None
            } else {
                // A repository without an id has claimed no image yet (nothing is written).
                let project = Project::open(global)?;
                Some(
                    crate::state::existing_repo_id(&project.repo)
                        .map(|id| format!("boxdelegate/r-{id}:")),
                )
            };
            let engine = Engine::connect().await?;
            let mut list = engine.list_images(&[labels::KIND]).await?;
            list.retain(|i| {
                let per_repository = matches!(
                    i.labels.get(labels::KIND).map(String::as_str),
                    Some("snap" | "deps")
                );
                match &mine {
                    Some(claims) if per_repository => claims
                        .as_ref()
                        .is_some_and(|p| i.repo_tags.iter().any(|t| t.starts_with(p.as_str()))),
                    _ => true,
                }
            });
            list.sort_by_key(|i| std::cmp::Reverse(i.created));
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|i| {
                    let (uses, tags): (Vec<&String>, Vec<&String>) = i
                        .repo_tags
                        .iter()
                        .partition(|t| images::uses::is_use_tag(t));
                    serde_json::json!({
                        "tags": tags,
                        // How many repositories on this engine use the image.
                        "repositories": uses.len(),
                        "id": i.id,
                        "kind": i.labels.get(labels::KIND),
                        "tree": i.labels.get(labels::TREE),
                        "deps_key": i.labels.get(labels::DEPS_KEY),
                        "size": i.size,
                        "created": i.created,
                    })
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                println!("{:<10} {:<12} {:>9}  TAG", "KIND", "ID", "SIZE");
                for i in &list {
                    let names: Vec<&str> = i
                        .repo_tags
                        .iter()
                        .filter(|t| !images::uses::is_use_tag(t))
                        .map(String::as_str)
                        .collect();
                    let tags = if names.is_empty() {
                        "<none>".to_string()
                    } else {
                        names.join(", ")
                    };
                    println!(
                        "{:<10} {:<12} {:>8}M  {tags}",
                        i.labels
                            .get(labels::KIND)
                            .map(String::as_str)
                            .unwrap_or("?"),
                        short(&i.id),
                        i.size / 1_000_000,
                    );
                }
            }
            Ok(exit::OK)
        }
        ImageCommand::Prune {
            all,
            all_repositories,
            dry_run,
        } => prune(global, all, all_repositories, dry_run).await,
        ImageCommand::Save { output, snap } => save(global, &output, &snap).await,
        ImageCommand::Load { input } => {
            let file = tokio::fs::File::open(&input)
                .await
                .map_err(|e| Error::io(format!("opening {}", input.display()), e))?;
            let engine = Engine::connect().await?;
            let loaded = engine
                .load_images(tokio_util::io::ReaderStream::new(file))
                .await?;
            for line in loaded {
                println!("{line}");
            }
            Ok(exit::OK)
        }
    }
}

/// The tags the current snapshot uses, computed without building anything.
async fn current_tags(
    engine: &Engine,
    project: &Project,
    snap: &SnapshotArgs,
) -> Result<(DepsPlan, Snapshot, Vec<TreeEntry>)> {
    let snapshot = Snapshot::take(&project.repo, snap.include_dirty)?;
    let entries = snapshot::list_tree(&project.repo, &snapshot.tree)?;
    let plan = images::plan_deps(
        engine,
        &project.repo,
        &project.profile,
        project.base_image(),
        &entries,
    )
    .await?;
    Ok((plan, snapshot, entries))
}

async fn prune(
    global: &GlobalArgs,
    all: bool,
    all_repositories: bool,
    dry_run: bool,
) -> Result<i32> {
    let project = if all_repositories {
        None
    } else {
        Some(Project::open(global)?)
    };
    let engine = Engine::connect().await?;
    let keep: Vec<String> = match &project {
        // --all: the current images go too (this repository's claims on them).
        Some(_) if all => vec![],
        Some(p) => match current_tags(&engine, p, &SnapshotArgs::default()).await {
            Ok((plan, snapshot, _)) => {
                vec![plan.tag(), images::snap_tag(&snapshot.tree, &plan.key)]
            }
            Err(Error::ImageMissing { .. }) => vec![],
            Err(e) => return Err(e),
        },
        None => vec![],
    };
    // Leftover helper containers first: they pin the images. They carry no repository (and
    // another repository's build may be using one right now): only with --all-repositories.
    for kind in ["deps-build", "snap-build"]
        .into_iter()
        .filter(|_| project.is_none())
    {
        let filter = format!("{}={kind}", labels::KIND);
        for c in engine.list_containers(&[&filter]).await? {
            if c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            let id = c.id.unwrap_or_default();
            println!(
                "{}container {}",
                if dry_run { "would remove " } else { "removed " },
                short(&id)
            );
            if !dry_run {
                engine.remove_container(&id).await?;
            }
        }
    }
    let mut removed = 0;
    // In a repository: only the images this repository uses (its use tags), and of those only
    // its tag when another repository still uses one.
    if let Some(p) = &project {
        let repo_id = crate::state::repo_id(&p.repo)?;
        for kind in ["snap", "deps"] {
            let filter = format!("{}={kind}", labels::KIND);
            let mut list = engine.list_images(&[&filter]).await?;
            list.sort_by_key(|i| std::cmp::Reverse(i.created));
            for image in list {
                let Some(canonical) = image
                    .repo_tags
                    .iter()
                    .find(|t| t.starts_with("boxdelegate/") && !images::uses::is_use_tag(t))
                    .cloned()
                else {
                    continue;
                };
                if keep.contains(&canonical) {
                    continue;
                }
                let ours =
                    images::uses::use_tag(&repo_id, &canonical).map(|(r, t)| format!("{r}:{t}"));
                if !ours.is_some_and(|o| image.repo_tags.contains(&o)) {
                    continue;
                }
                let shared = image
                    .repo_tags
                    .iter()
                    .filter(|t| images::uses::is_use_tag(t))
                    .count()
                    > 1;
                if dry_run {
                    println!(
                        "would {} {canonical}",
                        if shared {
                            "release (another repository uses it)"
                        } else {
                            "remove"
                        }
                    );
                    continue;
                }
                match images::uses::release(&engine, &repo_id, &canonical).await {
                    Ok(images::uses::Released::Removed) => {
                        println!("removed {canonical}");
                        removed += 1;
                    }
                    Ok(images::uses::Released::StillUsed) => {
                        println!("released {canonical} (another repository still uses it)")
                    }
                    Ok(images::uses::Released::NotOurs) => {}
                    // In use by a container, or a parent of another image: kept.
                    Err(e) => eprintln!("kept {canonical}: {e}"),
                }
            }
        }
        if !dry_run && !global.quiet {
            eprintln!("{removed} image(s) removed");
        }
        return Ok(exit::OK);
    }
    // --all-repositories: every boxdelegate image on the engine, newest first, so
    // incremental children go before the images they are built on.
    for kind in ["snap", "deps"] {
        let filter = format!("{}={kind}", labels::KIND);
        let mut list = engine.list_images(&[&filter]).await?;
        list.sort_by_key(|i| std::cmp::Reverse(i.created));
        for image in list {
            if image.repo_tags.iter().any(|t| keep.contains(t)) {
                continue;
            }
            let name = image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone());
            println!(
                "{}{name}",
                if dry_run { "would remove " } else { "removed " }
            );
            if !dry_run {
                engine.remove_image(&name).await?;
                removed += 1;
            }
        }
    }
    if !dry_run && !global.quiet {
        eprintln!("{removed} image(s) removed");
    }
    Ok(exit::OK)
}

async fn save(global: &GlobalArgs, output: &PathBuf, snap: &SnapshotArgs) -> Result<i32> {
    let project = Project::open(global)?;
    let engine = Engine::connect().await?;
    let (plan, snapshot, _) = current_tags(&engine, &project, snap).await?;
    let mut names = vec![images::base_image()];
    if !names.contains(&plan.toolchain_image) {
        names.push(plan.toolchain_image.clone());
    }
    names.push(plan.tag());
    let unit = images::snap_tag(&snapshot.tree, &plan.key);
    for name in [&plan.tag(), &unit] {
        if engine.image_id(name).await?.is_none() {
            return Err(Error::ImageMissing {
                image: name.clone(),
                hint: "run `boxdelegate image build` first, then save".into(),
            });
        }
    }
    names.push(unit);
    // The egress proxy's image goes along when the project's agents use it, or a change's
    // dependency install would (the profile lists registries).
    let agents = [
        Some(&project.config.agent),
        project.config.agent.fallback.as_deref(),
    ];
    let proxied = agents
        .iter()
        .flatten()
        .any(|a| a.network.as_deref() == Some("proxy"));
    let proxied = proxied || !project.profile.registries.is_empty();
    if proxied && engine.image_id(crate::proxy::IMAGE).await?.is_some() {
        names.push(crate::proxy::IMAGE.to_string());
    }
    // The codex agent's image goes along when an agent is codex: a site loading this archive
    // has no other way to get it.
    for a in agents.iter().flatten() {
        if a.kind != crate::config::AgentKind::Codex {
            continue;
        }
        let version = a
            .codex_version
            .as_deref()
            .unwrap_or(crate::agent::codex::DEFAULT_VERSION);
        let tag = crate::agent::codex::image_tag(version);
        if engine.image_id(&tag).await?.is_none() {
            return Err(Error::ImageMissing {
                image: tag,
                hint: format!(
                    "the project's agent is codex: build its image first (boxdelegate image build codex --codex-version {version}), then save"
                ),
            });
        }
        if !names.contains(&tag) {
            names.push(tag);
        }
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".boxdelegate-save-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    let mut bytes = 0u64;
    {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut stream = Box::pin(engine.export_images(&refs));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            tmp.write_all(&chunk)
                .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
        }
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
    tmp.persist(output)
        .map_err(|e| Error::io(format!("writing {}", output.display()), e.error))?;
    if !global.quiet {
        eprintln!(
            "saved {} image(s), {} MB, to {}",
            names.len(),
            bytes / 1_000_000,
            output.display()
        );
    }
    for n in names {
        println!("{n}");
    }
    Ok(exit::OK)
}
