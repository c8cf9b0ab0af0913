//! Content-addressed images: toolchain images (from Containerfiles), dependency images
//! (`boxdelegate/deps:<key>`) and unit images (`boxdelegate/snap:<tree>-<key prefix>`).
//!
//! A dependency image is made by running the profile's install step in a container that holds
//! only the manifests (in `/deps`) and committing it. A unit image is the dependency image plus
//! the snapshot in `/work`, made once per tree as one layer written on the host and loaded
//! ([`crate::images::layer`]), or, where the engine refuses that, streamed into a container that is
//! committed. When a unit image exists for another tree with the same deps key, only the
//! difference goes in (with the deletions), up to [`MAX_DEPTH`] incremental layers before a full
//! layer again.
//!
//! Keys are sha256 over a canonical, length-prefixed encoding of the inputs, so equal inputs
//! give equal keys and a cache hit that starts no container.
//!
//! Files: `unit` (unit images, full or incremental, loaded or committed), `layer` (the layer
//! and the load archive); this file holds the keys, the dependency images and the tar streams.
//!
//! May not: tag an image whose install failed; put in a unit image a file the snapshot's tree does
//! not hold.

pub mod layer;
mod unit;
pub mod uses;

pub use unit::{build_method, ensure_unit};

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use bollard::models::{ContainerConfig, ContainerCreateBody};
use sha2::{Digest, Sha256};

use crate::config::profile::Profile;
use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, short, ByteStream, Engine};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::output::Reporter;
use crate::project::Project;
use crate::snapshot::{self, ExtraLink, Snapshot, TarStats, TreeEntry};

/// The default base image tag; `BOXDELEGATE_BASE_IMAGE` names another (see [`base_image`]).
pub const BASE_IMAGE: &str = "boxdelegate/base:bookworm";
pub const DEPS_REPO: &str = "boxdelegate/deps";
pub const SNAP_REPO: &str = "boxdelegate/snap";
/// Incremental unit images stack at most this many layers on a full one.
pub const MAX_DEPTH: u32 = 16;
/// How many existing unit images are considered as the parent of an incremental build.
const MAX_CANDIDATES: usize = 8;

/// The Containerfiles shipped with boxdelegate, by image name.
pub const CONTAINERFILES: &[(&str, &str, &str)] = &[
    (
        "base",
        "boxdelegate/base:bookworm",
        include_str!("../../images/base/Containerfile"),
    ),
    (
        "python",
        "boxdelegate/python:bookworm",
        include_str!("../../images/python/Containerfile"),
    ),
    (
        "rust",
        "boxdelegate/rust:bookworm",
        include_str!("../../images/rust/Containerfile"),
    ),
    (
        "node",
        "boxdelegate/node:bookworm",
        include_str!("../../images/node/Containerfile"),
    ),
    (
        "go",
        "boxdelegate/go:bookworm",
        include_str!("../../images/go/Containerfile"),
    ),
    (
        "proxy",
        crate::proxy::IMAGE,
        include_str!("../../images/proxy/Containerfile"),
    ),
];

/// Builds one of the shipped images (see [`CONTAINERFILES`]) from its Containerfile.
pub async fn build_shipped(engine: &Engine, name: &str, reporter: &dyn Reporter) -> Result<()> {
    let (_, tag, containerfile) = CONTAINERFILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| Error::Internal(format!("no shipped Containerfile named {name:?}")))?;
    if name != "base" {
        require_image(engine, BASE_IMAGE, None).await?;
    }
    reporter.phase(&format!("building {tag} from images/{name}/Containerfile"));
    let sink = reporter.line_sink();
    let kind = if name == "base" { "base" } else { "toolchain" };
    engine
        .build(
            tag,
            containerfile,
            [
                (labels::KIND.to_string(), kind.to_string()),
                (RECIPE.to_string(), recipe(containerfile)),
            ]
            .into(),
            |line| sink(line),
        )
        .await
}

/// The label a shipped image carries: the sha256 of the Containerfile it was built from.
const RECIPE: &str = "boxdelegate.recipe";

fn recipe(containerfile: &str) -> String {
    hex::encode(Sha256::digest(containerfile.as_bytes()))
}

/// Ensures the egress proxy's image is there and built from this version's Containerfile: an
/// image from another recipe is built again (the model gateway needs squid's OpenSSL build,
/// which older images lack).
pub async fn ensure_proxy(engine: &Engine, reporter: &dyn Reporter) -> Result<()> {
    let (_, tag, containerfile) = CONTAINERFILES
        .iter()
        .find(|(n, _, _)| *n == "proxy")
        .expect("the proxy's Containerfile is shipped");
    // None: no image; Some(None): an image without the label.
    let current = match engine.image_id(tag).await? {
        None => None,
        Some(_) => Some(
            engine
                .inspect_image(tag)
                .await?
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(RECIPE).cloned()),
        ),
    };
    let why = match current {
        None => "once",
        Some(Some(r)) if r == recipe(containerfile) => return Ok(()),
        Some(_) => "its recipe changed",
    };
    reporter.phase(&format!("building the egress proxy image {tag} ({why})"));
    build_shipped(engine, "proxy", reporter).await
}

/// How to make the base image without a registry.
pub const BASE_HINT: &str = "build it from Debian packages: `sudo images/base/build-from-debian.sh base.tar && boxdelegate image import base base.tar` (with a registry: `boxdelegate image build base`)";

/// The inputs of a dependency image and its key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DepsPlan {
    pub key: String,
    pub toolchain_image: String,
    pub toolchain_id: String,
    pub profile: String,
    /// Manifest paths (lossy UTF-8 for display) and their blob entries.
    #[serde(skip)]
    pub manifests: Vec<TreeEntry>,
    pub manifest_paths: Vec<String>,
}

impl DepsPlan {
    pub fn tag(&self) -> String {
        format!("{DEPS_REPO}:{}", self.key)
    }
}

/// Outcome of ensuring an image exists.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ensured {
    pub image: String,
    pub id: String,
    /// `cached`, `built`, `full` or `incremental`.
    pub how: String,
    /// For an incremental unit image: the tree it was built on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_tree: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<TarStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<usize>,
    /// How a built unit image was written: `layer` (a layer made on the host, loaded) or
    /// `commit` (a container filled and committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl Ensured {
    fn cached(image: String, id: String) -> Ensured {
        Ensured {
            image,
            id,
            how: "cached".into(),
            parent_tree: None,
            uploaded: None,
            deleted: None,
            method: None,
        }
    }
}

/// The key of a dependency image: sha256 over the toolchain image id, the profile's install
/// recipe and environment, and the manifests' paths and contents (as blob ids, which are
/// content hashes themselves).
pub fn deps_key(toolchain_id: &str, profile: &Profile, manifests: &[TreeEntry]) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: &str, value: &[u8]| {
        h.update(tag.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("boxdelegate-deps-v1", b"");
    field("toolchain", toolchain_id.as_bytes());
    field("profile", profile.name.as_bytes());
    field("install", profile.install.as_bytes());
    for (k, v) in &profile.env {
        field("env.key", k.as_bytes());
        field("env.value", v.as_bytes());
    }
    for link in &profile.links {
        field("link", link.as_bytes());
    }
    for m in manifests {
        field("manifest.path", &m.path);
        field("manifest.mode", format!("{:?}", m.kind).as_bytes());
        field("manifest.blob", m.oid.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The unit image tag for a tree on a dependency image.
pub fn snap_tag(tree: &str, deps_key: &str) -> String {
    format!("{SNAP_REPO}:{tree}-{}", &deps_key[..16])
}

/// The base image tag: `BOXDELEGATE_BASE_IMAGE` if set (a site's own base), else [`BASE_IMAGE`].
pub fn base_image() -> String {
    std::env::var("BOXDELEGATE_BASE_IMAGE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| BASE_IMAGE.to_string())
}

/// The toolchain image a profile uses, honouring `[project] base_image`; a profile that names
/// the default base image gets the site's base image.
pub fn toolchain_image(profile: &Profile, base_image_override: Option<&str>) -> String {
    match base_image_override {
        Some(image) => image.to_string(),
        None if profile.image == BASE_IMAGE => base_image(),
        None => profile.image.clone(),
    }
}

/// Fails with a hint on how to build `image` when the engine does not have it.
pub async fn require_image(
    engine: &Engine,
    image: &str,
    profile: Option<&Profile>,
) -> Result<String> {
    if let Some(id) = engine.image_id(image).await? {
        return Ok(id);
    }
    let hint = if image == base_image() {
        BASE_HINT.to_string()
    } else if let Some((name, _, _)) = CONTAINERFILES.iter().find(|(_, tag, _)| *tag == image) {
        let base = if engine.image_id(BASE_IMAGE).await?.is_none() {
            format!("first the base image ({BASE_HINT}), then ")
        } else {
            String::new()
        };
        format!("build {base}`boxdelegate image build {name}`")
    } else if let Some(p) = profile {
        format!(
            "build or load {image} (profile {} uses it), or set [project] base_image",
            p.name
        )
    } else {
        format!("build or load {image}")
    };
    Err(Error::ImageMissing {
        image: image.to_string(),
        hint,
    })
}

/// Resolves the dependency image's inputs for `snapshot`.
pub async fn plan_deps(
    engine: &Engine,
    repo: &Repo,
    profile: &Profile,
    base_image: Option<&str>,
    tree_entries: &[TreeEntry],
) -> Result<DepsPlan> {
    let toolchain_image = toolchain_image(profile, base_image);
    let toolchain_id = require_image(engine, &toolchain_image, Some(profile)).await?;
    let _ = repo;
    let matcher = profile.manifest_matcher();
    let manifests: Vec<TreeEntry> = tree_entries
        .iter()
        .filter(|e| matches!(e.kind, snapshot::EntryKind::File { .. }))
        .filter(|e| matcher.is_match(e.path()))
        .cloned()
        .collect();
    let key = deps_key(&toolchain_id, profile, &manifests);
    Ok(DepsPlan {
        key,
        toolchain_image,
        toolchain_id,
        profile: profile.name.clone(),
        manifest_paths: manifests
            .iter()
            .map(|m| String::from_utf8_lossy(&m.path).into_owned())
            .collect(),
        manifests,
    })
}

fn env_list(profile: &Profile) -> Vec<String> {
    profile
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// What building images needs: the engine, the repository and its profile, limits, progress.
pub struct Context<'a> {
    pub engine: &'a Engine,
    pub repo: &'a Repo,
    pub profile: &'a Profile,
    pub limits: &'a Limits,
    pub reporter: &'a dyn Reporter,
}

/// Ensures the dependency image of `plan` exists: a hit does nothing; a miss runs the install
/// step and commits the container. A failed install tags nothing and leaves no container.
pub async fn ensure_deps(cx: &Context<'_>, plan: &DepsPlan) -> Result<Ensured> {
    ensure_deps_as(cx, plan, "the dependency install", false).await
}

/// The network of one dependency install confined to the profile's registries: an internal
/// network whose only way out is an egress proxy allowing them alone (see [`crate::proxy`]).
struct Confined {
    name: String,
}

impl Confined {
    /// Starts the proxy for `profile`'s registries; `None` when it lists none (the install
    /// then runs with no network at all).
    async fn start(
        engine: &Engine,
        profile: &Profile,
        key: &str,
        reporter: &dyn Reporter,
    ) -> Result<Option<Confined>> {
        let allow = profile.registries();
        if allow.is_empty() {
            return Ok(None);
        }
        ensure_proxy(engine, reporter).await?;
        // Unique to this process and moment: two runs may install the same key at once.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "boxdelegate-deps-{}-{:x}-{nanos:x}",
            &key[..12],
            std::process::id()
        );
        let labels = HashMap::from([
            (labels::KIND.to_string(), "deps-build".to_string()),
            (labels::DEPS_KEY.to_string(), key.to_string()),
        ]);
        // The proxy reaches out through the engine's default network, where the snapshot's
        // own installs run: Docker's `bridge`, Podman's `podman`.
        let egress = if engine.is_podman().await? {
            "podman"
        } else {
            crate::proxy::DEFAULT_EGRESS
        };
        match crate::proxy::start(engine, &name, labels, egress, &allow, None).await {
            Ok(()) => Ok(Some(Confined { name })),
            Err(e) => {
                let _ = crate::proxy::stop(engine, &name).await;
                Err(e)
            }
        }
    }
}

/// [`ensure_deps`], naming the install `step` in its error (which install failed: the
/// snapshot's, or the one a unit's changed manifests asked for). `confine`: the manifests
/// come from a change, so the install reaches only the profile's registries, through the
/// egress proxy (and no network when the profile lists none); what the proxy refused is
/// named when the install fails.
pub async fn ensure_deps_as(
    cx: &Context<'_>,
    plan: &DepsPlan,
    step: &str,
    confine: bool,
) -> Result<Ensured> {
    let tag = plan.tag();
    if let Some(id) = cx.engine.image_id(&tag).await? {
        return Ok(Ensured::cached(tag, id));
    }
    if !confine {
        return install_deps(cx, plan, step, None).await;
    }
    let net = Confined::start(cx.engine, cx.profile, &plan.key, cx.reporter).await?;
    let result = install_deps(cx, plan, step, Some(net.as_ref().map(|n| n.name.as_str()))).await;
    let refused = match &net {
        Some(n) => crate::proxy::stop(cx.engine, &n.name).await,
        None => Ok(vec![]),
    };
    match (result, refused) {
        (Err(Error::Install(mut f)), Ok(refused)) => {
            let allowed = if cx.profile.registries.is_empty() {
                "no network at all (the profile lists no registries)".to_string()
            } else {
                format!(
                    "the network only through the egress proxy, to the profile's registries ({})",
                    cx.profile.registries.join(", ")
                )
            };
            f.tail
                .push_str(&format!("\n  (the change's install had {allowed}"));
            if refused.is_empty() {
                f.tail.push(')');
            } else {
                f.tail
                    .push_str(&format!("; the proxy refused: {})", refused.join(", ")));
            }
            Err(Error::Install(f))
        }
        (result, Ok(_)) => result,
        (Ok(_), Err(e)) | (Err(_), Err(e)) => Err(e),
    }
}

/// Runs the install step of `plan` and commits the container. `network`: `None` for the
/// engine's bridge, `Some(None)` for no network, `Some(Some(name))` for the internal network
/// `name` behind an egress proxy.
async fn install_deps(
    cx: &Context<'_>,
    plan: &DepsPlan,
    step: &str,
    network: Option<Option<&str>>,
) -> Result<Ensured> {
    let Context {
        engine,
        repo,
        profile,
        limits,
        reporter,
    } = *cx;
    let tag = plan.tag();
    reporter.phase(&format!(
        "installing dependencies ({} profile, {} manifest file(s))",
        profile.name,
        plan.manifests.len()
    ));
    let mut container_labels = HashMap::from([
        (labels::KIND.to_string(), "deps-build".to_string()),
        (labels::DEPS_KEY.to_string(), plan.key.clone()),
    ]);
    let has_install = !profile.install.trim().is_empty();
    let ca_bundle = ca_bundle()?;
    let cmd = if has_install {
        let script = match &ca_bundle {
            Some(_) => format!("{CA_PREAMBLE}\n{}", profile.install),
            None => profile.install.clone(),
        };
        vec!["sh".into(), "-eu".into(), "-c".into(), script]
    } else {
        vec!["true".into()]
    };
    let mut host = hardened_host_config(limits);
    let mut env = env_list(profile);
    host.network_mode = Some(match network {
        None => "bridge".into(),
        Some(None) => "none".into(),
        Some(Some(name)) => {
            env.extend(crate::proxy::agent_env());
            name.into()
        }
    });
    let id = engine
        .create_container(ContainerCreateBody {
            image: Some(plan.toolchain_id.clone()),
            cmd: Some(cmd),
            working_dir: Some("/deps".into()),
            env: Some(env),
            labels: Some(container_labels.clone()),
            host_config: Some(host),
            ..Default::default()
        })
        .await?;
    let result = async {
        if has_install {
            if let Some(bundle) = &ca_bundle {
                engine
                    .upload(&id, "/tmp", single_file_tar(CA_FILE, bundle, 0o644)?)
                    .await?;
            }
            if !plan.manifests.is_empty() {
                let (body, done) = tar_body(repo.clone(), plan.manifests.clone(), vec![]);
                engine.upload(&id, "/deps", body).await?;
                join_tar(done).await?;
            }
            engine.start(&id).await?;
            let follow = {
                let engine = engine.clone();
                let id = id.clone();
                let reporter = reporter.line_sink();
                tokio::spawn(async move {
                    use futures_util::StreamExt;
                    let mut logs = Box::pin(engine.logs(&id, None, true));
                    while let Some(Ok(chunk)) = logs.next().await {
                        for line in chunk.lines() {
                            reporter(line);
                        }
                    }
                })
            };
            let code = engine.wait(&id).await?;
            follow.abort();
            let log = write_install_log(engine, repo, &id, &plan.key).await?;
            if code != 0 {
                let tail = engine.logs_tail(&id, 40).await;
                return Err(Error::Install(Box::new(crate::error::InstallFailure {
                    step: step.to_string(),
                    profile: profile.name.clone(),
                    key: plan.key.clone(),
                    code,
                    log,
                    tail: indent(tail.trim_end()),
                })));
            }
        }
        container_labels.insert(labels::KIND.into(), "deps".into());
        container_labels.insert(labels::PROFILE.into(), profile.name.clone());
        container_labels.insert(
            labels::TOOLCHAIN.into(),
            format!("{}@{}", plan.toolchain_image, plan.toolchain_id),
        );
        container_labels.insert(labels::MANIFESTS.into(), plan.manifest_paths.join(","));
        container_labels.insert(labels::VERSION.into(), env!("CARGO_PKG_VERSION").into());
        engine
            .commit(
                &id,
                DEPS_REPO,
                &plan.key,
                ContainerConfig {
                    labels: Some(container_labels),
                    env: Some(env_list(profile)),
                    working_dir: Some("/work".into()),
                    cmd: Some(vec!["/bin/sh".into()]),
                    ..Default::default()
                },
            )
            .await
    }
    .await;
    engine.remove_container(&id).await?;
    let image_id = result?;
    Ok(Ensured {
        image: tag,
        id: image_id,
        how: "built".into(),
        parent_tree: None,
        uploaded: None,
        deleted: None,
        method: None,
    })
}

/// The whole output of install container `id`, kept on the host (private) as
/// `<state dir>/logs/deps-<key16>.log`; a later install of the same key replaces it.
async fn write_install_log(engine: &Engine, repo: &Repo, id: &str, key: &str) -> Result<PathBuf> {
    use futures_util::StreamExt;
    let chunks: Vec<String> = engine
        .logs(id, None, false)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let dir = crate::state::dir(repo).join("logs");
    crate::state::create_private_dir(&dir)?;
    let path = dir.join(format!("deps-{}.log", &key[..16]));
    crate::state::write_private(&path, chunks.concat().as_bytes())?;
    Ok(path)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes the paths listed by [`deletion_list`] (run inside the container being updated).
pub const DELETE_SCRIPT: &str =
    "xargs -0 rm -rf -- < /tmp/.boxdelegate-delete && rm -f /tmp/.boxdelegate-delete";

/// A tar holding `/tmp/.boxdelegate-delete`: NUL-separated absolute paths under `/work`.
pub fn deletion_list(paths: &[Vec<u8>]) -> Result<impl ByteStream> {
    let mut list = Vec::new();
    for p in paths {
        list.extend_from_slice(b"/work/");
        list.extend_from_slice(p);
        list.push(0);
    }
    single_file_tar(".boxdelegate-delete", &list, 0o644)
}

/// Where the install step finds the site's CA bundle, and how it is told to trust it. The file
/// is removed before the container is committed: it is transport, not an input of the image.
pub const CA_FILE: &str = ".boxdelegate-ca.crt";
pub const CA_PREAMBLE: &str = "boxdelegate_ca=/tmp/.boxdelegate-ca.crt
trap 'rm -f \"$boxdelegate_ca\"' EXIT
export SSL_CERT_FILE=\"$boxdelegate_ca\" PIP_CERT=\"$boxdelegate_ca\" REQUESTS_CA_BUNDLE=\"$boxdelegate_ca\" \\
  CARGO_HTTP_CAINFO=\"$boxdelegate_ca\" NODE_EXTRA_CA_CERTS=\"$boxdelegate_ca\" GIT_SSL_CAINFO=\"$boxdelegate_ca\" \\
  CURL_CA_BUNDLE=\"$boxdelegate_ca\"";

/// The CA bundle dependency installs trust: `BOXDELEGATE_CA_BUNDLE`, else `SSL_CERT_FILE`
/// (sites behind a TLS-intercepting proxy), else none (the image's own).
pub fn ca_bundle() -> Result<Option<Vec<u8>>> {
    let path = std::env::var_os("BOXDELEGATE_CA_BUNDLE")
        .or_else(|| std::env::var_os("SSL_CERT_FILE"))
        .filter(|p| !p.is_empty());
    match path {
        None => Ok(None),
        Some(p) => std::fs::read(&p).map(Some).map_err(|e| {
            Error::io(
                format!(
                    "reading the CA bundle {} (BOXDELEGATE_CA_BUNDLE / SSL_CERT_FILE)",
                    std::path::Path::new(&p).display()
                ),
                e,
            )
        }),
    }
}

/// A tar holding one file owned by the `box` user.
pub fn single_file_tar(name: &str, data: &[u8], mode: u32) -> Result<impl ByteStream> {
    let mut ar = tar::Builder::new(Vec::new());
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(snapshot::OWNER_UID);
        h.set_gid(snapshot::OWNER_UID);
        h.set_mtime(snapshot::FIXED_MTIME);
        h
    };
    // Parent directories of a nested name are created private to the container's user.
    let parts: Vec<&str> = name.split('/').collect();
    for i in 1..parts.len() {
        let mut h = header(0, 0o700);
        h.set_entry_type(tar::EntryType::Directory);
        ar.append_data(
            &mut h,
            format!("{}/", parts[..i].join("/")),
            std::io::empty(),
        )
        .map_err(|e| Error::io(format!("packing {name}"), e))?;
    }
    ar.append_data(&mut header(data.len() as u64, mode), name, data)
        .map_err(|e| Error::io(format!("packing {name}"), e))?;
    let data = ar
        .into_inner()
        .map_err(|e| Error::io(format!("packing {name}"), e))?;
    Ok(futures_util::stream::once(async move {
        Ok(bytes::Bytes::from(data))
    }))
}

/// A `Write` that hands 256 KiB chunks to an async channel: the tar is produced on a blocking
/// thread while the engine consumes it, so memory stays bounded.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk =
                bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading")
            })?;
        }
        Ok(())
    }
}

type TarTask = tokio::task::JoinHandle<Result<TarStats>>;

/// Streams the tar of `entries` as a request body; the task's result says whether it was whole.
pub fn tar_body(
    repo: Repo,
    entries: Vec<TreeEntry>,
    links: Vec<ExtraLink>,
) -> (impl ByteStream, TarTask) {
    blocking_body(move |out| snapshot::write_tar(&repo, &entries, &links, out))
}

/// A request body written by `write` on a blocking thread, in bounded chunks; the task's result
/// says whether it was whole.
fn blocking_body(
    write: impl FnOnce(&mut dyn Write) -> Result<TarStats> + Send + 'static,
) -> (impl ByteStream, TarTask) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let task = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let res = write(&mut writer).and_then(|stats| {
            writer
                .flush()
                .map_err(|e| Error::io("streaming a request body", e))?;
            Ok(stats)
        });
        if let Err(e) = &res {
            // Make the request fail rather than deliver a truncated archive.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        res
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (stream, task)
}

pub async fn join_tar(task: TarTask) -> Result<TarStats> {
    task.await
        .map_err(|e| Error::Internal(format!("snapshot stream task failed: {e}")))?
}

/// The images a changed tree is verified on when the change touched the dependency manifests:
/// the dependency image of the new manifests (installed with the network, like any dependency
/// build; never in the agent or verify container) and the unit image of the changed tree on it.
/// `None` when no manifest changed: the snapshot's unit image serves.
pub async fn ensure_for_change(
    cx: &Context<'_>,
    base: &DepsPlan,
    base_image: Option<&str>,
    base_tree: &str,
    commit: &str,
    tree: &str,
) -> Result<Option<(DepsPlan, Ensured)>> {
    let changed = manifests_changed(cx.repo, cx.profile, base, base_tree, tree)?;
    if changed.is_empty() {
        return Ok(None);
    }
    let entries = snapshot::list_tree(cx.repo, tree)?;
    let plan = plan_deps(cx.engine, cx.repo, cx.profile, base_image, &entries).await?;
    if plan.key == base.key {
        return Ok(None);
    }
    cx.reporter.phase(&format!(
        "the change edits the dependency manifests ({}): building its dependency image",
        changed.join(", ")
    ));
    ensure_deps_as(
        cx,
        &plan,
        "the dependency install of the change's manifests",
        true,
    )
    .await?;
    let snap = Snapshot {
        commit: commit.to_string(),
        tree: tree.to_string(),
        dirty: false,
    };
    let unit = ensure_unit(cx, &plan, &snap, &entries, true).await?;
    let repo_id = crate::state::repo_id(cx.repo)?;
    uses::claim(cx.engine, &repo_id, &[&plan.tag(), &unit.image]).await?;
    Ok(Some((plan, unit)))
}

/// The dependency manifests the change from `base_tree` to `tree` adds, edits or removes
/// (cheap: only the changed paths are looked at). Both trees' objects must be in `repo`.
pub fn manifests_changed(
    repo: &Repo,
    profile: &Profile,
    base: &DepsPlan,
    base_tree: &str,
    tree: &str,
) -> Result<Vec<String>> {
    if base_tree == tree {
        return Ok(vec![]);
    }
    let diff = snapshot::diff_trees(repo, base_tree, tree)?;
    let paths = diff
        .upserted
        .iter()
        .map(|e| e.path.as_slice())
        .chain(diff.deleted.iter().map(Vec::as_slice));
    Ok(manifests_touched(profile, base, paths))
}

/// Which of `paths` (changed: added, edited or deleted) are dependency manifests of `profile`;
/// a deleted directory counts with the snapshot's manifests under it.
pub fn manifests_touched<'p>(
    profile: &Profile,
    base: &DepsPlan,
    paths: impl Iterator<Item = &'p [u8]>,
) -> Vec<String> {
    let matcher = profile.manifest_matcher();
    let mut hits = std::collections::BTreeSet::new();
    for p in paths {
        if matcher.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(p))) {
            hits.insert(p.to_vec());
        }
        for m in &base.manifests {
            if m.path.len() > p.len() && m.path.starts_with(p) && m.path[p.len()] == b'/' {
                hits.insert(m.path.clone());
            }
        }
    }
    hits.into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

/// The dependency and unit images of `snapshot`, built when missing.
pub async fn ensure_images(
    engine: &Engine,
    project: &Project,
    snapshot: &Snapshot,
    entries: &[TreeEntry],
    incremental: bool,
    reporter: &dyn Reporter,
) -> Result<(DepsPlan, Ensured, Ensured)> {
    reporter.phase(&format!(
        "snapshot {} ({} files)",
        short(&snapshot.tree),
        entries.len()
    ));
    let deps = plan_deps(
        engine,
        &project.repo,
        &project.profile,
        project.base_image(),
        entries,
    )
    .await?;
    let cx = Context {
        engine,
        repo: &project.repo,
        profile: &project.profile,
        limits: &project.limits,
        reporter,
    };
    let deps_image = ensure_deps(&cx, &deps).await?;
    let unit_image = ensure_unit(&cx, &deps, snapshot, entries, incremental).await?;
    // This repository uses both: prune and clean elsewhere leave them to it.
    let repo_id = crate::state::repo_id(&project.repo)?;
    uses::claim(engine, &repo_id, &[&deps_image.image, &unit_image.image]).await?;
    Ok((deps, deps_image, unit_image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EntryKind;

    fn profile() -> Profile {
        crate::config::parse_toml(
            "description = \"t\"\nimage = \"img\"\ninstall = \"pip install -r requirements.txt\"\n",
            std::path::Path::new("t"),
        )
        .unwrap()
    }

    fn manifest(path: &str, oid: &str) -> TreeEntry {
        TreeEntry {
            kind: EntryKind::File { executable: false },
            oid: oid.into(),
            path: path.into(),
        }
    }

    #[test]
    fn deps_key_depends_on_every_input() {
        let p = profile();
        let m = vec![manifest("requirements.txt", "aaaa")];
        let k = deps_key("sha256:1", &p, &m);
        assert_eq!(k, deps_key("sha256:1", &p, &m), "deterministic");
        assert_eq!(k.len(), 64);
        assert_ne!(k, deps_key("sha256:2", &p, &m), "toolchain id");
        assert_ne!(
            k,
            deps_key("sha256:1", &p, &[manifest("requirements.txt", "bbbb")]),
            "content"
        );
        assert_ne!(
            k,
            deps_key("sha256:1", &p, &[manifest("req.txt", "aaaa")]),
            "path"
        );
        let mut p2 = p.clone();
        p2.install.push_str(" -q");
        assert_ne!(k, deps_key("sha256:1", &p2, &m), "recipe");
        let mut p3 = p.clone();
        p3.env.insert("A".into(), "1".into());
        assert_ne!(k, deps_key("sha256:1", &p3, &m), "env");
    }

    #[test]
    fn length_prefixing_prevents_ambiguity() {
        let p = profile();
        let a = deps_key("x", &p, &[manifest("ab", "c")]);
        let b = deps_key("x", &p, &[manifest("a", "bc")]);
        assert_ne!(a, b);
    }
}
