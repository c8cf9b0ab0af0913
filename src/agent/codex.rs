//! The Codex CLI as an agent: its image (the static `codex` binary, pinned by version), how it
//! gets into a unit's agent container, and how it is invoked.
//!
//! The codex image holds only `/opt/boxdelegate/codex/bin/`: the binary is static, so it runs in
//! any unit image, which keeps the repository's toolchain and dependencies. It is copied into
//! each agent container before the container starts; it is never layered onto a unit image, so
//! disk use does not grow with every snapshot.
//!
//! Credentials reach the container only at start: variables named in `[agent] env`, or an
//! `auth.json` uploaded into the container's fresh `CODEX_HOME`. Never in an image.
//!
//! May not: put a credential in an image, a build argument, the prompt or a stored text; run codex
//! anywhere but inside the agent container.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use bollard::models::ContainerCreateBody;
use futures_util::StreamExt;

use super::{Agent, AgentFile, AgentSpec, Events, PROMPT_DIR, PROMPT_FILE};
use crate::config::unit::Unit;
use crate::config::{AgentConfig, CodexProvider};
use crate::engine::{hardened_host_config, labels, short, Engine};
use crate::error::{Error, Result};
use crate::output::Reporter;

/// The Codex CLI version used unless `[agent] codex_version` names another.
pub const DEFAULT_VERSION: &str = "0.163.0";
/// Where the binaries live, in the codex image and in agent containers.
pub const DIR: &str = "/opt/boxdelegate/codex";
pub const BIN: &str = "/opt/boxdelegate/codex/bin/codex";
/// The fresh, writable `CODEX_HOME` of each agent container.
pub const HOME: &str = "/home/box/.codex";
/// The PyPI package that carries the static binary.
const WHEEL: &str = "openai-codex-cli-bin";

pub fn image_tag(version: &str) -> String {
    format!("boxdelegate/codex:{version}")
}

/// Validates a version string before it reaches a shell or a tag.
pub fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            crate::config::CONFIG_FILE,
            format!("agent.codex_version: {version:?} is not a version (e.g. {DEFAULT_VERSION})"),
        ))
    }
}

/// The provider codex talks to when none is configured.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The value of the key variable an agent behind the model gateway is given.
pub const GATEWAY_DUMMY_KEY: &str = "boxdelegate-gateway";

/// Whether this agent reaches its model through the gateway of the egress proxy, which holds
/// the credential: codex, `network = "proxy"`, an API key (not a sign-in file), and not
/// `gateway = false`.
pub fn uses_gateway(config: &AgentConfig) -> bool {
    config.kind == crate::config::AgentKind::Codex
        && config.network.as_deref() == Some("proxy")
        && config.gateway != Some(false)
        && config.auth_file.is_none()
}

/// The provider's base URL: `[agent.provider] base_url`, else the OpenAI API.
pub fn upstream_url(config: &AgentConfig) -> &str {
    config
        .provider
        .as_ref()
        .map(|p| p.base_url.as_str())
        .unwrap_or(DEFAULT_BASE_URL)
}

/// The variable codex reads the key from: `[agent.provider] env_key`, else `CODEX_API_KEY`.
pub fn key_var(config: &AgentConfig) -> &str {
    config
        .provider
        .as_ref()
        .map(|p| p.env_key.as_str())
        .unwrap_or("CODEX_API_KEY")
}

pub struct CodexAgent {
    pub version: String,
    pub model: Option<String>,
    pub reasoning_effort: Option<String>,
    pub overrides: Vec<String>,
    pub provider: Option<CodexProvider>,
    /// The content of `[agent] auth_file`, read at plan time.
    pub auth: Option<Vec<u8>>,
    /// Behind the model gateway: the base URL codex is given instead of the provider's.
    pub gateway: Option<String>,
}

impl CodexAgent {
    pub fn from_config(config: &AgentConfig, root: &Path) -> Result<CodexAgent> {
        let version = config
            .codex_version
            .clone()
            .unwrap_or_else(|| DEFAULT_VERSION.to_string());
        check_version(&version)?;
        let file = crate::config::CONFIG_FILE;
        for o in &config.codex_config {
            if !o.contains('=') || o.starts_with('=') {
                return Err(Error::config(
                    file,
                    format!("agent.codex_config: {o:?} is not key=value"),
                ));
            }
        }
        if let Some(p) = &config.provider {
            if !config.env.iter().any(|e| e == &p.env_key) {
                return Err(Error::config_hint(
                    file,
                    format!(
                        "agent.provider.env_key: {} is not among the variables passed to the agent",
                        p.env_key
                    ),
                    format!("add it to [agent] env: env = [\"{}\"]", p.env_key),
                ));
            }
        }
        let auth = match &config.auth_file {
            Some(path) => {
                let full = if path.is_absolute() {
                    path.clone()
                } else {
                    root.join(path)
                };
                Some(std::fs::read(&full).map_err(|e| {
                    Error::config_hint(
                        file,
                        format!("agent.auth_file: cannot read {}: {e}", full.display()),
                        "point auth_file at a Codex auth.json (`codex login` writes one), or pass CODEX_API_KEY through [agent] env",
                    )
                })?)
            }
            None => None,
        };
        let has_key = config.env.iter().any(|e| {
            e == "CODEX_API_KEY" || config.provider.as_ref().is_some_and(|p| &p.env_key == e)
        });
        if auth.is_none() && !has_key {
            return Err(Error::config_hint(
                file,
                "agent: kind = \"codex\" needs a credential",
                "set [agent] env = [\"CODEX_API_KEY\"] (the variable must be set when you run), or [agent] auth_file = \"path/to/auth.json\"",
            ));
        }
        Ok(CodexAgent {
            version,
            model: config.model.clone(),
            reasoning_effort: config.reasoning_effort.clone(),
            overrides: config.codex_config.clone(),
            provider: config.provider.clone(),
            auth,
            gateway: uses_gateway(config).then(|| {
                crate::proxy::Gateway::new(upstream_url(config), String::new())
                    .map(|g| g.agent_base_url())
                    .unwrap_or_default()
            }),
        })
    }

    /// The arguments after `codex`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--ephemeral",
            // The container is the sandbox: codex's own needs user namespaces, which the
            // engine's seccomp profile blocks, and then every edit fails while codex exits 0.
            "--dangerously-bypass-approvals-and-sandbox",
            // Without this an unreachable endpoint makes codex retry forever.
            "--disable",
            "unbounded_connection_retries",
            "--disable",
            "plugins",
            "--disable",
            "remote_plugin",
            "--disable",
            "apps",
            "-c",
            "analytics.enabled=false",
            "-C",
            "/work",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(m) = &self.model {
            a.extend(["-m".into(), m.clone()]);
        }
        if let Some(e) = &self.reasoning_effort {
            a.extend([
                "-c".into(),
                format!("model_reasoning_effort={}", toml_str(e)),
            ]);
        }
        // The provider codex talks to: the configured one, or behind the gateway the gateway
        // itself, speaking for it (the key variable then holds a dummy value).
        let provider = match (&self.gateway, &self.provider) {
            (Some(url), Some(p)) => Some((
                p.name.as_str(),
                url.as_str(),
                p.env_key.as_str(),
                p.max_retries,
            )),
            (Some(url), None) => Some(("boxdelegate-gateway", url.as_str(), "CODEX_API_KEY", None)),
            (None, Some(p)) => Some((
                p.name.as_str(),
                p.base_url.as_str(),
                p.env_key.as_str(),
                p.max_retries,
            )),
            (None, None) => None,
        };
        if let Some((n, base_url, env_key, retries)) = provider {
            let mut c = |kv: String| a.extend(["-c".into(), kv]);
            c(format!("model_provider={}", toml_str(n)));
            c(format!("model_providers.{n}.name={}", toml_str(n)));
            c(format!(
                "model_providers.{n}.base_url={}",
                toml_str(base_url)
            ));
            c(format!("model_providers.{n}.env_key={}", toml_str(env_key)));
            c(format!("model_providers.{n}.wire_api=\"responses\""));
            if let Some(r) = retries {
                c(format!("model_providers.{n}.request_max_retries={r}"));
                c(format!("model_providers.{n}.stream_max_retries={r}"));
            }
        }
        for o in &self.overrides {
            a.extend(["-c".into(), o.clone()]);
        }
        a.push("-".into()); // the prompt comes on stdin
        a
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Agent for CodexAgent {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn codex_version(&self) -> Option<&str> {
        Some(&self.version)
    }

    fn spec(&self, unit: &Unit) -> AgentSpec {
        let mut cmd = vec![
            "sh".into(),
            "-c".into(),
            format!("mkdir -p \"$CODEX_HOME\" && exec {BIN} \"$@\" < {PROMPT_DIR}/{PROMPT_FILE}"),
            "codex".into(),
        ];
        cmd.extend(self.args());
        let mut files = Vec::new();
        if let Some(auth) = &self.auth {
            files.push(AgentFile {
                dir: "/home/box".into(),
                path: ".codex/auth.json".into(),
                data: auth.clone(),
                mode: 0o600,
            });
        }
        AgentSpec {
            cmd,
            env: vec![
                format!("CODEX_HOME={HOME}"),
                format!("BOXDELEGATE_UNIT_ID={}", unit.meta.id),
            ],
            co_author: "Codex <codex@openai.com>".into(),
            files,
            tool_image: Some(image_tag(&self.version)),
            events: Events::Codex,
            secrets: self.auth.iter().flat_map(|a| secret_strings(a)).collect(),
        }
    }
}

/// The string values of a JSON credential file worth redacting (tokens and keys).
fn secret_strings(data: &[u8]) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() >= 12 => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) => walk(&v, &mut out),
        Err(_) => {
            let text = String::from_utf8_lossy(data).trim().to_string();
            if text.len() >= 8 {
                out.push(text);
            }
        }
    }
    out
}

/// The named volume holding the binaries of codex image `tool_image`, mounted read-only at
/// `/opt/boxdelegate` in every codex agent container: filled once per image
/// ([`ensure_volume`]), shared, never copied into a container's writable layer (which
/// `[limits] disk` counts).
pub fn volume_name(tool_image: &str) -> String {
    format!("boxdelegate-tools-{}", tool_image.replace(['/', ':'], "-"))
}

/// Makes the volume of codex `version`'s image hold its binaries (filled from the image the
/// first time, or again when the image changed, e.g. after `image load`).
pub async fn ensure_volume(engine: &Engine, version: &str) -> Result<()> {
    let tag = image_tag(version);
    engine
        .fill_volume_from_image(
            &volume_name(&tag),
            &tag,
            "/opt/boxdelegate",
            vec![BIN.into(), "--version".into()],
        )
        .await
}

/// Refuses a `--codex-binary` that is not a readable ELF executable (before the engine is used).
pub fn check_binary(path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| Error::Usage {
            message: format!("--codex-binary: cannot read {}: {e}", path.display()),
            hint: "pass the path of a Linux codex executable".into(),
        })?;
    if magic != *b"\x7fELF" {
        return Err(Error::Usage {
            message: format!("--codex-binary: {} is not a Linux executable", path.display()),
            hint: format!("pass the static codex binary (it is in the PyPI wheel {WHEEL}, at codex_cli_bin/bin/codex)"),
        });
    }
    Ok(())
}

/// Makes sure the codex image of `version` exists: from `binary` when given, else fetched from
/// PyPI in a helper container. Returns the tag.
pub async fn ensure_image(
    engine: &Engine,
    version: &str,
    binary: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<String> {
    check_version(version)?;
    let tag = image_tag(version);
    if binary.is_none() && engine.image_id(&tag).await?.is_some() {
        return Ok(tag);
    }
    let dir = tempfile::Builder::new()
        .prefix("boxdelegate-codex-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let files: Vec<(String, std::path::PathBuf)> = match binary {
        Some(path) => {
            check_binary(path)?;
            vec![("codex".into(), path.to_path_buf())]
        }
        None => fetch_from_pypi(engine, version, dir.path(), reporter).await?,
    };
    reporter.phase(&format!("importing the codex binary as {tag}"));
    let (body, sha) = image_tar(&files)?;
    engine
        .import_rootfs(
            "boxdelegate/codex",
            version,
            vec![
                format!("LABEL {}=codex", labels::KIND),
                format!("LABEL boxdelegate.codex-version={version}"),
                format!("LABEL boxdelegate.codex-sha256={sha}"),
                format!("ENV PATH={DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ],
            futures_util::stream::once(async move { Ok(bytes::Bytes::from(body)) }),
        )
        .await?;
    // The binary must run and be the version asked for.
    let out = run_version(engine, &tag).await?;
    if !out.contains(&format!("codex-cli {version}")) {
        let _ = engine.remove_image(&tag).await;
        return Err(Error::Usage {
            message: format!(
                "the codex binary reports {:?}, not codex-cli {version}",
                out.trim()
            ),
            hint:
                "pass the binary of the version you name with --codex-version (or name its version)"
                    .into(),
        });
    }
    Ok(tag)
}

async fn run_version(engine: &Engine, tag: &str) -> Result<String> {
    let limits = crate::config::LimitsConfig::default().resolve();
    let mut host = hardened_host_config(&limits);
    host.network_mode = Some("none".into());
    let id = engine
        .create_container(ContainerCreateBody {
            image: Some(tag.to_string()),
            cmd: Some(vec![BIN.into(), "--version".into()]),
            env: Some(vec![format!("CODEX_HOME=/tmp/.codex")]),
            user: Some("1000:1000".into()),
            labels: Some(HashMap::from([(
                labels::KIND.to_string(),
                "codex-check".to_string(),
            )])),
            network_disabled: Some(true),
            host_config: Some(host),
            ..Default::default()
        })
        .await?;
    let result = async {
        engine.start(&id).await?;
        engine.wait(&id).await?;
        Ok::<_, Error>(engine.logs_tail(&id, 20).await)
    }
    .await;
    engine.remove_container(&id).await?;
    result
}

/// The image's only content: the binaries under /opt/boxdelegate/codex/bin. Returns the tar
/// and the sha256 of the codex binary.
fn image_tar(files: &[(String, std::path::PathBuf)]) -> Result<(Vec<u8>, String)> {
    use sha2::Digest;
    let mut ar = tar::Builder::new(Vec::new());
    for d in [
        "opt/",
        "opt/boxdelegate/",
        "opt/boxdelegate/codex/",
        "opt/boxdelegate/codex/bin/",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(crate::snapshot::FIXED_MTIME);
        ar.append_data(&mut h, d, std::io::empty())
            .map_err(|e| Error::io("packing the codex image", e))?;
    }
    let mut sha = String::new();
    for (name, path) in files {
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if name == "codex" {
            sha = hex::encode(sha2::Sha256::digest(&data));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(crate::snapshot::FIXED_MTIME);
        ar.append_data(
            &mut h,
            format!("opt/boxdelegate/codex/bin/{name}"),
            &data[..],
        )
        .map_err(|e| Error::io("packing the codex image", e))?;
    }
    let tar = ar
        .into_inner()
        .map_err(|e| Error::io("packing the codex image", e))?;
    Ok((tar, sha))
}

/// Downloads the wheel with pip in a helper container from the python toolchain image, and
/// reads the binaries back through the archive API.
async fn fetch_from_pypi(
    engine: &Engine,
    version: &str,
    into: &Path,
    reporter: &dyn Reporter,
) -> Result<Vec<(String, std::path::PathBuf)>> {
    let python = "boxdelegate/python:bookworm";
    if engine.image_id(python).await?.is_none() {
        return Err(Error::ImageMissing {
            image: python.into(),
            hint: "the codex binary is fetched from PyPI with the python toolchain image: `boxdelegate image build python` first, or without a network pass a local binary: `boxdelegate image build codex --codex-binary PATH`".into(),
        });
    }
    reporter.phase(&format!("fetching {WHEEL}=={version} from PyPI"));
    let ca = crate::images::ca_bundle()?;
    let script = format!(
        "{}set -e\npip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation py -d /tmp/wheel '{WHEEL}=={version}'\npython3 -m zipfile -e /tmp/wheel/*.whl /tmp/unpacked\ntest -f /tmp/unpacked/codex_cli_bin/bin/codex\n",
        if ca.is_some() {
            format!("{}\n", crate::images::CA_PREAMBLE)
        } else {
            String::new()
        }
    );
    let limits = crate::config::LimitsConfig::default().resolve();
    let id = engine
        .create_container(ContainerCreateBody {
            image: Some(python.into()),
            cmd: Some(vec!["sh".into(), "-c".into(), script]),
            labels: Some(HashMap::from([(
                labels::KIND.to_string(),
                "codex-fetch".to_string(),
            )])),
            host_config: Some(hardened_host_config(&limits)),
            ..Default::default()
        })
        .await?;
    let result = async {
        if let Some(bundle) = &ca {
            engine
                .upload(
                    &id,
                    "/tmp",
                    crate::images::single_file_tar(crate::images::CA_FILE, bundle, 0o644)?,
                )
                .await?;
        }
        engine.start(&id).await?;
        let code = engine.wait(&id).await?;
        if code != 0 {
            let tail = engine.logs_tail(&id, 20).await;
            return Err(Error::Fetch {
                what: format!("{WHEEL}=={version} from PyPI"),
                message: format!("exit code {code}; last lines:\n{}", tail.trim_end()),
            });
        }
        let mut files = Vec::new();
        for name in ["codex", "codex-code-mode-host"] {
            let path = into.join(name);
            let stream = engine.download(&id, &format!("/tmp/unpacked/codex_cli_bin/bin/{name}"));
            // The archive goes to disk, not memory: the binary is hundreds of megabytes.
            let archive = into.join(format!("{name}.tar"));
            let mut tar_file = std::fs::File::create(&archive)
                .map_err(|e| Error::io(format!("writing {}", archive.display()), e))?;
            let mut stream = Box::pin(stream);
            let mut missing = false;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => std::io::Write::write_all(&mut tar_file, &c)
                        .map_err(|e| Error::io(format!("writing {}", archive.display()), e))?,
                    Err(_) if name != "codex" => {
                        missing = true; // the helper binary is optional
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            drop(tar_file);
            if missing {
                continue;
            }
            // The archive holds one regular file; anything else is refused.
            let mut ar = tar::Archive::new(
                std::fs::File::open(&archive)
                    .map_err(|e| Error::io(format!("reading {}", archive.display()), e))?,
            );
            let mut written = false;
            for entry in ar
                .entries()
                .map_err(|e| Error::io("reading the wheel's binary", e))?
            {
                let mut entry = entry.map_err(|e| Error::io("reading the wheel's binary", e))?;
                if entry.header().entry_type().is_file() && !written {
                    let mut out = std::fs::File::create(&path)
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    std::io::copy(&mut entry, &mut out)
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    written = true;
                }
            }
            let _ = std::fs::remove_file(&archive);
            if written {
                files.push((name.to_string(), path));
            }
        }
        Ok(files)
    }
    .await;
    engine.remove_container(&id).await?;
    let files = result?;
    if !files.iter().any(|(n, _)| n == "codex") {
        return Err(Error::Fetch {
            what: format!("{WHEEL}=={version} from PyPI"),
            message: "the wheel holds no codex binary".into(),
        });
    }
    reporter.phase(&format!(
        "fetched codex {version} ({} file(s)) in container {}",
        files.len(),
        short(&id)
    ));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> CodexAgent {
        CodexAgent {
            version: DEFAULT_VERSION.into(),
            model: None,
            reasoning_effort: None,
            overrides: vec![],
            provider: None,
            auth: None,
            gateway: None,
        }
    }

    #[test]
    fn invocation_has_the_non_interactive_flags_and_no_default_model() {
        let a = agent().args();
        for flag in [
            "--json",
            "--skip-git-repo-check",
            "--ephemeral",
            "--dangerously-bypass-approvals-and-sandbox",
            "unbounded_connection_retries",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "-m"), "no hard-coded model: {a:?}");
        assert_eq!(a.last().unwrap(), "-", "the prompt comes on stdin");
    }

    #[test]
    fn model_effort_provider_and_overrides_become_flags() {
        let mut c = agent();
        c.model = Some("gpt-5.5".into());
        c.reasoning_effort = Some("high".into());
        c.overrides = vec!["model_verbosity=\"low\"".into()];
        c.provider = Some(CodexProvider {
            name: "gw".into(),
            base_url: "http://10.0.0.1:8080/v1".into(),
            env_key: "GW_KEY".into(),
            max_retries: Some(0),
        });
        let a = c.args().join(" ");
        assert!(a.contains("-m gpt-5.5"), "{a}");
        assert!(a.contains("-c model_reasoning_effort=\"high\""), "{a}");
        assert!(a.contains("-c model_provider=\"gw\""), "{a}");
        assert!(
            a.contains("-c model_providers.gw.base_url=\"http://10.0.0.1:8080/v1\""),
            "{a}"
        );
        assert!(
            a.contains("-c model_providers.gw.env_key=\"GW_KEY\""),
            "{a}"
        );
        assert!(
            a.contains("-c model_providers.gw.request_max_retries=0"),
            "{a}"
        );
        assert!(a.contains("-c model_verbosity=\"low\""), "{a}");
    }

    #[test]
    fn credential_strings_are_collected_for_redaction() {
        let s = secret_strings(br#"{"OPENAI_API_KEY":"sk-test-0123456789","tokens":{"id_token":"eyJhbGciOiJub25lIn0.abc"},"n":3,"short":"x"}"#);
        assert!(s.contains(&"sk-test-0123456789".to_string()));
        assert!(s.contains(&"eyJhbGciOiJub25lIn0.abc".to_string()));
        assert!(!s.contains(&"x".to_string()));
    }

    #[test]
    fn versions_are_checked() {
        assert!(check_version("0.163.0").is_ok());
        assert!(check_version("0.163.0; rm -rf /").is_err());
        assert!(check_version("").is_err());
    }
}
