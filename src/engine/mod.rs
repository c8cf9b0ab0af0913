//! The container engine seam: every call boxdelegate makes to Docker (or Podman's Docker API)
//! goes through [`Engine`], on top of bollard. No code elsewhere shells out to an engine CLI.
//!
//! The engine tracks the containers it created and not yet removed, so an interrupted command
//! can remove them before it exits ([`Engine::cleanup`]); labels let `boxdelegate` find any that
//! survive a crash.
//!
//! Files: `images` (look-ups, removal, commit, save/load, import, build), `networks` (the
//! attempt's internal network), `unreachable` (why the engine could not be reached); this file
//! holds the connection, containers, archives and exec.
//!
//! May not: import configuration or snapshots; shell out to an engine CLI.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as qp;
use bollard::Docker;
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};

mod images;
mod networks;
mod unreachable;
pub mod volumes;

pub mod labels {
    /// What the object is: base, toolchain, deps, snap, or a *-build helper container.
    pub const KIND: &str = "boxdelegate.kind";
    pub const DEPS_KEY: &str = "boxdelegate.deps-key";
    pub const TREE: &str = "boxdelegate.tree";
    pub const COMMIT: &str = "boxdelegate.commit";
    pub const DEPTH: &str = "boxdelegate.depth";
    pub const PARENT_TREE: &str = "boxdelegate.parent-tree";
    pub const PROFILE: &str = "boxdelegate.profile";
    pub const TOOLCHAIN: &str = "boxdelegate.toolchain-image";
    pub const MANIFESTS: &str = "boxdelegate.manifests";
    pub const VERSION: &str = "boxdelegate.version";
    pub const RUN: &str = "boxdelegate.run";
    pub const UNIT: &str = "boxdelegate.unit";
    pub const ATTEMPT: &str = "boxdelegate.attempt";
    /// The repository a container works for: its stable id (`.git/boxdelegate/repo-id`), not
    /// its path.
    pub const REPOSITORY: &str = "boxdelegate.repository";
}

/// A request body: a stream of byte chunks (a tar archive).
pub trait ByteStream: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {}
impl<T: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> ByteStream for T {}

/// Generous HTTP timeout: waiting for an install step or a large upload is one request.
const REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;

/// The runtime every container runs under, when not the engine's default, and the file that
/// asked for it (named when the engine lacks it).
static RUNTIME: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();

/// Sets the runtime of every container this process creates; the first setting wins.
/// `declared_in` is the file that asked for it, for the error when the engine lacks it.
pub fn set_runtime(runtime: Option<String>, declared_in: PathBuf) {
    if let Some(r) = runtime {
        let _ = RUNTIME.set((r, declared_in));
    }
}

/// Where the id of the repository this process works on comes from (read, never made here:
/// the repository's first image claim makes it, so a command that fails before leaves the host
/// as it was), and the id once read.
type RepositoryId = Box<dyn Fn() -> Option<String> + Send + Sync>;
static REPOSITORY: std::sync::OnceLock<RepositoryId> = std::sync::OnceLock::new();
static REPOSITORY_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets where the repository's id comes from: every container this process creates is labelled
/// [`labels::REPOSITORY`] with it, and [`repository`] filters by it. The first setting wins.
pub fn set_repository(id: RepositoryId) {
    let _ = REPOSITORY.set(id);
}

/// The repository this process works on, as `boxdelegate.repository=<id>` for a filter.
pub fn repository() -> Option<String> {
    let id = match REPOSITORY_ID.get() {
        Some(id) => id.clone(),
        None => {
            let id = REPOSITORY.get().and_then(|f| f())?;
            REPOSITORY_ID.get_or_init(|| id).clone()
        }
    };
    Some(format!("{}={id}", labels::REPOSITORY))
}

/// The mtime of files boxdelegate packs for the engine (a build context): fixed, so the same
/// bytes make the same archive.
pub const FIXED_MTIME: u64 = 315_532_800;

/// What a container may use: the plain values [`hardened_host_config`] turns into limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    /// Bytes of memory (and of memory plus swap: no swap).
    pub memory: u64,
    pub cpus: f64,
    pub pids: i64,
}

/// A container being removed in the background: its id and the task.
type Removal = (String, tokio::task::JoinHandle<Result<()>>);

/// The engine this process connected to, so an interrupt can remove its containers.
static CURRENT: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();

/// The connected engine, if any.
pub fn current() -> Option<&'static Engine> {
    CURRENT.get()
}

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    pub endpoint: String,
    live: Arc<Mutex<HashSet<String>>>,
    /// Networks this process created and has not removed yet.
    networks: Arc<Mutex<HashSet<String>>>,
    /// `docker` or `podman`, read from the engine's version the first time it is asked.
    kind: Arc<tokio::sync::OnceCell<&'static str>>,
    /// The engine's system info, read once: only what does not change while it runs (storage
    /// driver, data root, CPUs, memory) is taken from it.
    system: Arc<tokio::sync::OnceCell<bollard::models::SystemInfo>>,
    /// Removals handed to [`Engine::remove_soon`] and not yet awaited by [`Engine::settle`].
    removing: Arc<Mutex<Vec<Removal>>>,
}

/// Facts `doctor` reports.
#[derive(Debug, serde::Serialize)]
pub struct EngineInfo {
    /// `docker` or `podman`: which engine answers behind the Docker API.
    pub kind: String,
    pub endpoint: String,
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub storage_driver: String,
    pub root_dir: String,
}

/// Podman's Docker API (4.x) answers an inspect of a container whose process has ended but
/// which its cleanup has not yet reached with the state `stopped`, which the Docker API does not
/// have and bollard's models refuse to read. Podman's own cleanup moves it on to `exited`.
fn is_podman_stopped(e: &BollardError) -> bool {
    matches!(e, BollardError::JsonDataError { message, .. } if message.contains("unknown variant `stopped`"))
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A client for `DOCKER_HOST`. A tcp:// address speaks TLS when `DOCKER_TLS_VERIFY` is set to
/// anything but the empty string (as the docker CLI reads it), with the client certificate in
/// `DOCKER_CERT_PATH` (else `~/.docker`): `ca.pem`, `cert.pem`, `key.pem`.
fn connect_host(host: &str) -> std::result::Result<Docker, BollardError> {
    let tls = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
    if host.starts_with("tcp://") || host.starts_with("https://") {
        if tls || host.starts_with("https://") {
            let dir = match std::env::var_os("DOCKER_CERT_PATH").filter(|p| !p.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => std::env::home_dir().unwrap_or_default().join(".docker"),
            };
            return Docker::connect_with_ssl(
                host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            );
        }
        return Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION);
    }
    Docker::connect_with_host(host)
}

/// `podman` when the version's components name Podman's engine, else `docker`.
pub fn engine_kind(components: &[String]) -> &'static str {
    if components
        .iter()
        .any(|c| c.to_lowercase().contains("podman"))
    {
        "podman"
    } else {
        "docker"
    }
}

/// Candidate sockets when `DOCKER_HOST` is unset: Docker's, then Podman's (rootless, rootful).
fn default_sockets() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/var/run/docker.sock")];
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        v.push(PathBuf::from(dir).join("podman/podman.sock"));
    }
    v.push(PathBuf::from("/run/podman/podman.sock"));
    v
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST`, else the first local socket that exists,
    /// and negotiates the API version.
    pub async fn connect() -> Result<Engine> {
        let (docker, endpoint) = match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => {
                let d = connect_host(&host).map_err(|e| unreachable::diagnose(&host, &e))?;
                (d, host)
            }
            _ => {
                let sockets = default_sockets();
                let socket = sockets
                    .iter()
                    .find(|p| p.exists())
                    .cloned()
                    .ok_or_else(|| Error::EngineUnreachable {
                        endpoint: sockets
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        message: "no engine socket found".into(),
                        hint: unreachable::START_HINT.into(),
                    })?;
                let endpoint = format!("unix://{}", socket.display());
                let d = Docker::connect_with_unix(
                    &socket.to_string_lossy(),
                    REQUEST_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable::diagnose(&endpoint, &e))?;
                (d, endpoint)
            }
        };
        let unreachable = |e: BollardError| unreachable::diagnose(&endpoint, &e);
        let docker = docker.with_timeout(std::time::Duration::from_secs(REQUEST_TIMEOUT_SECS));
        docker.ping().await.map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let engine = Engine {
            docker,
            endpoint,
            live: Arc::default(),
            networks: Arc::default(),
            kind: Arc::default(),
            system: Arc::default(),
            removing: Arc::default(),
        };
        if let Some((runtime, declared_in)) = RUNTIME.get() {
            let info = engine
                .docker
                .info()
                .await
                .map_err(|e| Error::engine("reading engine info", e))?;
            let mut known: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
            known.sort();
            if !known.contains(runtime) {
                return Err(Error::config_hint(
                    declared_in,
                    format!("project.runtime: the engine has no runtime {runtime:?}"),
                    format!(
                        "the engine offers {}; install and register {runtime:?} with the engine (e.g. gVisor's runsc), or remove the key",
                        known.join(", ")
                    ),
                ));
            }
        }
        // Which engine answers is asked before most checks run: learnt in the background now.
        let early = engine.clone();
        tokio::spawn(async move {
            let _ = early.kind().await;
        });
        let _ = CURRENT.set(engine.clone());
        Ok(engine)
    }

    /// Which engine answers behind the Docker API: `docker` or `podman` (see [`engine_kind`]).
    pub async fn kind(&self) -> Result<&'static str> {
        self.kind
            .get_or_try_init(|| async {
                let v = self
                    .docker
                    .version()
                    .await
                    .map_err(|e| Error::engine("reading the engine version", e))?;
                Ok(kind_of(&v))
            })
            .await
            .copied()
    }

    /// The engine's system info, asked once per process (see [`Engine::system`]'s field).
    async fn system(&self) -> Result<&bollard::models::SystemInfo> {
        self.system
            .get_or_try_init(|| async {
                self.docker
                    .info()
                    .await
                    .map_err(|e| Error::engine("reading engine info", e))
            })
            .await
    }

    /// Whether the engine is Podman, whose Docker API differs in what [`Engine::kind`] callers
    /// work around.
    pub async fn is_podman(&self) -> Result<bool> {
        Ok(self.kind().await? == "podman")
    }

    /// The number of processes the kernel's OOM killer has killed in container `id`'s memory
    /// cgroup, read from the cgroup files mounted read-only in the container (v1
    /// `memory.oom_control`, v2 `memory.events`); `None` when neither is readable. An engine
    /// that reports no OOM for a killed exec (Podman) is asked this way. A process in the
    /// container cannot change the kernel's counter; at worst it could hide its own kill or
    /// fake one, which only turns its own failure into another failure.
    pub async fn oom_kills(&self, id: &str) -> Result<Option<u64>> {
        let mut out = Vec::new();
        self.exec(
            id,
            vec![
                "cat".into(),
                "/sys/fs/cgroup/memory/memory.oom_control".into(),
                "/sys/fs/cgroup/memory.events".into(),
            ],
            "/",
            |chunk| {
                if out.len() < 4096 {
                    out.extend_from_slice(chunk)
                }
            },
        )
        .await?;
        Ok(parse_oom_kills(&String::from_utf8_lossy(&out)))
    }

    pub async fn info(&self) -> Result<EngineInfo> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| Error::engine("reading the engine version", e))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| Error::engine("reading engine info", e))?;
        Ok(EngineInfo {
            kind: kind_of(&v).into(),
            endpoint: self.endpoint.clone(),
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            os: format!(
                "{}/{}",
                v.os.unwrap_or_default(),
                v.arch.unwrap_or_default()
            ),
            storage_driver: info.driver.unwrap_or_default(),
            root_dir: info.docker_root_dir.unwrap_or_default(),
        })
    }

    /// The engine's CPUs and memory in bytes (what parallel units share).
    pub async fn capacity(&self) -> Result<(usize, u64)> {
        let info = self.system().await?;
        Ok((
            info.ncpu.unwrap_or(1).max(1) as usize,
            info.mem_total.unwrap_or(0).max(0) as u64,
        ))
    }

    /// Counts a container started by an earlier process (a resumed run) as this process's own,
    /// so an interruption removes it too.
    pub fn adopt(&self, id: &str) {
        self.live.lock().expect("poisoned").insert(id.to_string());
    }

    /// Everything the engine says of container `id` (with its layer sizes when `size`). An
    /// answer in Podman's passing `stopped` state is asked again, with a growing pause, until
    /// Podman's cleanup has moved the container on (about 5 s in all before giving up).
    async fn inspect(
        &self,
        id: &str,
        size: bool,
    ) -> Result<bollard::models::ContainerInspectResponse> {
        let mut pause = std::time::Duration::from_millis(20);
        let mut tries = 0;
        loop {
            match self
                .docker
                .inspect_container(id, Some(qp::InspectContainerOptions { size }))
                .await
            {
                Err(e) if is_podman_stopped(&e) && tries < 8 => {
                    tries += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                r => {
                    return r.map_err(|e| {
                        Error::engine(format!("inspecting container {}", short(id)), e)
                    })
                }
            }
        }
    }

    /// Whether container `id` is running; `None` when it does not exist.
    pub async fn container_running(&self, id: &str) -> Result<Option<bool>> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(Some(c.state.and_then(|s| s.running).unwrap_or(false))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) if is_podman_stopped(&e) => Ok(Some(false)),
            Err(e) => Err(Error::engine(
                format!("inspecting container {}", short(id)),
                e,
            )),
        }
    }

    /// Creates a container and tracks it until [`Engine::remove_container`].
    pub async fn create_container(&self, body: ContainerCreateBody) -> Result<String> {
        self.create_named_container(None, body).await
    }

    /// [`Engine::create_container`] with a name other commands can find it by.
    pub async fn create_named_container(
        &self,
        name: Option<&str>,
        mut body: ContainerCreateBody,
    ) -> Result<String> {
        let image = body.image.clone().unwrap_or_default();
        // A run's containers say whose they are. Never a build container: its labels become
        // the committed image's, and an image is shared by content across repositories.
        let of_a_run = body
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(labels::RUN));
        if let Some((k, v)) = repository()
            .filter(|_| of_a_run)
            .as_deref()
            .and_then(|l| l.split_once('='))
        {
            body.labels
                .get_or_insert_with(Default::default)
                .insert(k.to_string(), v.to_string());
        }
        let options = name.map(|n| qp::CreateContainerOptions {
            name: Some(n.to_string()),
            ..Default::default()
        });
        let id = self
            .docker
            .create_container(options, body)
            .await
            .map_err(|e| Error::engine(format!("creating a container from {image}"), e))?
            .id;
        self.live.lock().expect("poisoned").insert(id.clone());
        Ok(id)
    }

    pub async fn upload(&self, id: &str, path: &str, tar: impl ByteStream) -> Result<()> {
        self.docker
            .upload_to_container(
                id,
                Some(qp::UploadToContainerOptions {
                    path: path.to_string(),
                    ..Default::default()
                }),
                bollard::body_try_stream(tar),
            )
            .await
            .map_err(|e| {
                Error::engine(
                    format!("uploading into {path} of container {}", short(id)),
                    e,
                )
            })
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None::<qp::StartContainerOptions>)
            .await
            .map_err(|e| Error::engine(format!("starting container {}", short(id)), e))
    }

    /// Waits for the container to stop and returns its exit code, as the engine reports it.
    pub async fn wait(&self, id: &str) -> Result<i64> {
        let mut stream = self
            .docker
            .wait_container(id, None::<qp::WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(Error::engine(
                format!("waiting for container {}", short(id)),
                e,
            )),
            None => Err(Error::Internal(format!(
                "the engine ended the wait for container {} without a status",
                short(id)
            ))),
        }
    }

    /// The container's output, stdout and stderr interleaved.
    pub fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> impl Stream<Item = Result<String>> + '_ {
        let id_owned = id.to_string();
        self.docker
            .logs(
                id,
                Some(qp::LogsOptions {
                    follow,
                    stdout: true,
                    stderr: true,
                    tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
                    ..Default::default()
                }),
            )
            .map_ok(|chunk| String::from_utf8_lossy(&chunk.into_bytes()).into_owned())
            .map_err(move |e| {
                Error::engine(format!("reading logs of container {}", short(&id_owned)), e)
            })
    }

    pub async fn logs_tail(&self, id: &str, lines: usize) -> String {
        let chunks: Vec<String> = self
            .logs(id, Some(lines), false)
            .filter_map(|r| async move { r.ok() })
            .collect()
            .await;
        chunks.concat()
    }

    /// The engine's filesystem diff of a container against its image: (path, kind) with kind
    /// 0 = modified, 1 = added, 2 = deleted.
    pub async fn changes(&self, id: &str) -> Result<Vec<(String, u8)>> {
        let list = self
            .docker
            .container_changes(id)
            .await
            .map_err(|e| {
                Error::engine(format!("reading the changes of container {}", short(id)), e)
            })?
            .unwrap_or_default();
        Ok(list
            .into_iter()
            .map(|c| {
                let kind = match c.kind {
                    bollard::models::ChangeType::_0 => 0,
                    bollard::models::ChangeType::_1 => 1,
                    bollard::models::ChangeType::_2 => 2,
                };
                (c.path, kind)
            })
            .collect())
    }

    /// A tar archive of `path` inside the container (the container may be stopped).
    pub fn download(&self, id: &str, path: &str) -> impl Stream<Item = Result<bytes::Bytes>> + '_ {
        let context = format!("reading {path} from container {}", short(id));
        self.docker
            .download_from_container(
                id,
                Some(qp::DownloadFromContainerOptions {
                    path: path.to_string(),
                }),
            )
            .map_err(move |e| Error::engine(context.clone(), e))
    }

    /// Runs `cmd` in running container `id`, feeding each output chunk to `on_output`, and
    /// returns the exit code as the engine reports it.
    pub async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        workdir: &str,
        on_output: impl FnMut(&[u8]),
    ) -> Result<i64> {
        self.exec_fed(id, cmd, workdir, None, on_output).await
    }

    /// [`Engine::exec`] with `input` written to the command's stdin, which is then closed.
    /// Whether all of it was taken is for the command to say (its exit code).
    pub async fn exec_fed(
        &self,
        id: &str,
        cmd: Vec<String>,
        workdir: &str,
        input: Option<std::pin::Pin<Box<dyn ByteStream>>>,
        mut on_output: impl FnMut(&[u8]),
    ) -> Result<i64> {
        let context = || format!("running a command in container {}", short(id));
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::models::ExecConfig {
                    cmd: Some(cmd),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    working_dir: Some(workdir.to_string()),
                    privileged: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::engine(context(), e))?
            .id;
        match self
            .docker
            .start_exec(&exec, None::<bollard::exec::StartExecOptions>)
            .await
            .map_err(|e| Error::engine(context(), e))?
        {
            bollard::exec::StartExecResults::Attached {
                mut output,
                input: mut stdin,
            } => {
                // Written beside the output, which is read meanwhile; a command that stops
                // reading early ends the writing with an error its exit code explains.
                let writer = input.map(|mut body| {
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        while let Some(chunk) = body.next().await {
                            stdin.write_all(&chunk?).await?;
                        }
                        stdin.shutdown().await
                    })
                });
                while let Some(chunk) = output.next().await {
                    let chunk = chunk.map_err(|e| Error::engine(context(), e))?;
                    on_output(&chunk.into_bytes());
                }
                if let Some(w) = writer {
                    if let Ok(Err(e)) = w.await {
                        tracing::debug!(container = %short(id), "writing a command's input stopped: {e}");
                    }
                }
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        let inspect = self
            .docker
            .inspect_exec(&exec)
            .await
            .map_err(|e| Error::engine(context(), e))?;
        inspect.exit_code.ok_or_else(|| {
            Error::Internal(format!(
                "the engine reported no exit code for a command in {}",
                short(id)
            ))
        })
    }

    /// Whether containers' writable layers can be expected on this host (checked for each
    /// container by [`Engine::local_upper_dir`]): a unix socket, a storage driver that keeps
    /// them as plain directories, and the engine's data root visible here.
    pub async fn upper_layers_local(&self) -> Result<bool> {
        if !self.endpoint.starts_with("unix://") {
            return Ok(false);
        }
        let info = self.system().await?;
        let driver_ok = matches!(
            info.driver.as_deref(),
            Some("overlay2" | "overlay" | "fuse-overlayfs")
        );
        let root = info.docker_root_dir.clone().unwrap_or_default();
        Ok(driver_ok && !root.is_empty() && Path::new(&root).join("containers").is_dir())
    }

    /// The host directory holding container `id`'s writable layer, when the engine provably
    /// shares this host's filesystem: it is reached over a unix socket, its storage driver keeps
    /// the layer as a plain directory (overlay2, overlay, fuse-overlayfs), and this host sees
    /// the engine's own record of this very container (`<root>/containers/<id>/config.v2.json`
    /// naming it). `None` otherwise — a remote engine (tcp://, ssh://), another driver, a data
    /// root in another mount namespace — and then only the API is used.
    pub async fn local_upper_dir(&self, id: &str) -> Result<Option<PathBuf>> {
        if !self.endpoint.starts_with("unix://") {
            return Ok(None);
        }
        let inspect = self.inspect(id, false).await?;
        let Some(driver) = inspect.graph_driver else {
            return Ok(None);
        };
        if !matches!(
            driver.name.as_str(),
            "overlay2" | "overlay" | "fuse-overlayfs"
        ) {
            return Ok(None);
        }
        let (Some(full_id), Some(upper)) = (inspect.id, driver.data.get("UpperDir")) else {
            return Ok(None);
        };
        let root = self
            .system()
            .await?
            .docker_root_dir
            .clone()
            .unwrap_or_default();
        let record = Path::new(&root)
            .join("containers")
            .join(&full_id)
            .join("config.v2.json");
        let names_it = std::fs::read(&record)
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
            .is_some_and(|v| v["ID"] == full_id.as_str());
        let upper = PathBuf::from(upper);
        Ok((names_it && upper.is_absolute() && upper.is_dir()).then_some(upper))
    }

    /// Whether the engine recorded an out-of-memory kill in container `id`.
    pub async fn oom_killed(&self, id: &str) -> Result<bool> {
        let inspect = self.inspect(id, false).await?;
        Ok(inspect.state.and_then(|s| s.oom_killed).unwrap_or(false))
    }

    /// Bytes the container has written to its writable layer.
    pub async fn written_bytes(&self, id: &str) -> Result<u64> {
        let inspect = self.inspect(id, true).await?;
        Ok(inspect.size_rw.unwrap_or(0).max(0) as u64)
    }

    /// Whether the engine can cap a container's writable layer (`--storage-opt size`): the
    /// overlay2 driver on xfs (with project quotas), btrfs and zfs.
    pub async fn supports_disk_quota(&self) -> bool {
        let Ok(info) = self.system().await else {
            return false;
        };
        let driver = info.driver.clone().unwrap_or_default();
        let backing = info
            .driver_status
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|kv| kv.first().map(String::as_str) == Some("Backing Filesystem"))
            .and_then(|kv| kv.get(1).cloned())
            .unwrap_or_default();
        matches!(driver.as_str(), "btrfs" | "zfs") || (driver == "overlay2" && backing == "xfs")
    }

    /// Starts counting the engine's out-of-memory events for container `id`. An OOM kill of a
    /// process other than the container's main one (a check run with exec) shows only as such
    /// an event: the container's `OOMKilled` state is set only when the container itself dies.
    pub fn watch_oom(&self, id: &str) -> OomWatch {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .saturating_sub(1);
        let options = qp::EventsOptions {
            // Replaying from just before now closes the gap between subscribing and the
            // daemon registering the subscription.
            since: Some(since.to_string()),
            until: None,
            filters: Some(HashMap::from([
                ("container".to_string(), vec![id.to_string()]),
                ("event".to_string(), vec!["oom".to_string()]),
            ])),
        };
        let docker = self.docker.clone();
        let task = tokio::spawn(async move {
            let mut events = Box::pin(docker.events(Some(options)));
            while let Some(Ok(_)) = events.next().await {
                tx.send_modify(|n| *n += 1);
            }
        });
        OomWatch { rx, task }
    }

    /// Kills a running container (the hard timeout).
    pub async fn kill(&self, id: &str) -> Result<()> {
        match self
            .docker
            .kill_container(id, None::<qp::KillContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(Error::engine(format!("killing container {}", short(id)), e)),
        }
    }

    /// Removes a container (forcefully, with its anonymous volumes).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let res = self
            .docker
            .remove_container(
                id,
                Some(qp::RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        self.live.lock().expect("poisoned").remove(id);
        match res {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // The engine is removing it already (seen right after a container exits): wait for
            // that removal to finish.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => {
                for _ in 0..300 {
                    if self.container_running(id).await?.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(Error::Internal(format!(
                    "the engine did not finish removing container {} within 30s: {message}",
                    short(id)
                )))
            }
            Err(e) => Err(Error::engine(
                format!("removing container {}", short(id)),
                e,
            )),
        }
    }

    /// Removes every container this process created and has not removed yet.
    /// Removes container `id` in the background, while the caller goes on (a running
    /// container's removal is most of a container's cost); [`Engine::settle`] waits for it.
    pub fn remove_soon(&self, id: &str) {
        let engine = self.clone();
        let owned = id.to_string();
        let task = tokio::spawn(async move { engine.remove_container(&owned).await });
        self.removing
            .lock()
            .expect("poisoned")
            .push((id.to_string(), task));
    }

    /// Waits for every removal [`Engine::remove_soon`] started; each one that failed is told
    /// with the command that removes the container by hand.
    pub async fn settle(&self) {
        loop {
            let pending: Vec<_> = std::mem::take(&mut *self.removing.lock().expect("poisoned"));
            if pending.is_empty() {
                return;
            }
            for (id, task) in pending {
                let failed = match task.await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "warning: container {} could not be removed ({failed}); remove it with: docker rm -f {id}",
                    short(&id)
                );
            }
        }
    }

    pub async fn cleanup(&self) {
        let ids: Vec<String> = self
            .live
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.remove_container(&id).await;
        }
        let networks: Vec<String> = self
            .networks
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect();
        for n in networks {
            let _ = self.remove_network(&n).await;
        }
    }

    /// Containers carrying the `label=value` filters, running or not.
    pub async fn list_containers(
        &self,
        filters: &[&str],
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let mut f = HashMap::new();
        f.insert(
            "label".to_string(),
            filters.iter().map(|s| s.to_string()).collect(),
        );
        self.docker
            .list_containers(Some(qp::ListContainersOptions {
                all: true,
                filters: Some(f),
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::engine("listing containers", e))
    }
}

/// The engine kind a version answer names (see [`engine_kind`]).
fn kind_of(v: &bollard::models::SystemVersion) -> &'static str {
    let names: Vec<String> = v
        .components
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    engine_kind(&names)
}

/// The `oom_kill N` count in a cgroup's `memory.oom_control` (v1) or `memory.events` (v2).
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
}

/// Out-of-memory events of one container, counted while the watch lives.
pub struct OomWatch {
    rx: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl OomWatch {
    pub fn count(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Whether the count grows beyond `seen` within `limit` (the event may trail the exit of
    /// the killed process by a moment).
    pub async fn grows_beyond(&self, seen: u64, limit: std::time::Duration) -> bool {
        let mut rx = self.rx.clone();
        let grew = tokio::time::timeout(limit, rx.wait_for(|n| *n > seen))
            .await
            .is_ok_and(|r| r.is_ok());
        grew
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hardening applied to every container boxdelegate starts (docs/security.md).
pub fn hardened_host_config(limits: impl Into<Resources>) -> HostConfig {
    let limits: Resources = limits.into();
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        runtime: RUNTIME.get().map(|(r, _)| r.clone()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        privileged: Some(false),
        // A private cgroup namespace also where the engine's default is the host's (cgroup v1).
        cgroupns_mode: Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE),
        init: Some(true),
        memory: Some(limits.memory as i64),
        memory_swap: Some(limits.memory as i64),
        nano_cpus: Some((limits.cpus * 1e9) as i64),
        pids_limit: Some(limits.pids),
        log_config: Some(bollard::models::HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        ..Default::default()
    }
}

/// The first 12 characters of an id, as engines print them.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_passing_stopped_state_is_told_from_other_read_errors() {
        let read = |status: &str| {
            let body = format!(r#"{{"Id":"c","State":{{"Status":"{status}","Running":false}}}}"#);
            serde_json::from_str::<bollard::models::ContainerInspectResponse>(&body).map_err(|e| {
                BollardError::JsonDataError {
                    message: e.to_string(),
                    column: e.column(),
                }
            })
        };
        assert!(is_podman_stopped(&read("stopped").unwrap_err()));
        assert!(read("exited").is_ok());
        assert!(!is_podman_stopped(&read("sleeping").unwrap_err()));
    }

    #[test]
    fn oom_kills_are_read_from_either_cgroup_version() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 7\noom 3\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills(""), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }
}
