//! The agent network policy `proxy`: the agent container sits alone on an internal engine
//! network whose only other member is an egress proxy (squid, `images/proxy/`). The proxy
//! allows the configured `host:port` list, refuses everything else, and its log of refused
//! requests goes into the attempt's result.
//!
//! One proxy and one internal network per attempt: what the proxy logged belongs to that
//! attempt alone, and both are removed with the agent container.
//!
//! May not: give the agent a route out other than the proxy; share a proxy or a network between
//! attempts.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkingConfig};
use futures_util::StreamExt;

use crate::config::allow::Allow;
use crate::config::Limits;
use crate::engine::{hardened_host_config, labels, Engine};
use crate::error::{Error, Result};

pub const IMAGE: &str = "boxdelegate/proxy:bookworm";
/// The proxy's name on the internal network, as the agent sees it.
pub const HOST: &str = "boxdelegate-proxy";
pub const PORT: u16 = 3128;
/// The engine network the proxy reaches the allowed hosts through, unless configured.
pub const DEFAULT_EGRESS: &str = "bridge";
/// How long squid may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused requests kept per attempt; an agent hammering the proxy cannot grow the report.
const MAX_REFUSED: usize = 100;

/// The model gateway's port on the proxy container.
pub const GATEWAY_PORT: u16 = 8080;

/// The model gateway: squid, in the same proxy container, as a reverse proxy on
/// [`GATEWAY_PORT`] in front of the model provider. It forwards only `POST <path>/responses`
/// (the Responses API codex speaks) and sets the `Authorization` header itself, so the agent
/// holds a dummy key and the real one never enters its container.
#[derive(Clone, PartialEq)]
pub struct Gateway {
    /// The provider, as `[agent.provider] base_url` names it (default the OpenAI API).
    pub upstream: Allow,
    pub tls: bool,
    /// The base URL's path, e.g. `/v1`, without a trailing slash.
    pub path: String,
    /// The credential. It reaches the proxy only at its start, through the engine's exec
    /// input (never its environment, an image or a log).
    pub key: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.upstream)
            .field("tls", &self.tls)
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Gateway {
    /// The gateway in front of `base_url` (`http(s)://host[:port][/path]`), with `key`.
    /// `None` for a URL it cannot serve: another scheme, or a path with characters that
    /// would need quoting in the proxy's configuration.
    pub fn new(base_url: &str, key: String) -> Option<Gateway> {
        let tls = base_url.starts_with("https://");
        let upstream = Allow::from_url(base_url)?;
        let rest = base_url.split_once("://")?.1;
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        let path = path
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        let plain = path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
        plain.then(|| Gateway {
            upstream,
            tls,
            path: path.to_string(),
            key,
        })
    }

    /// The base URL the agent is given.
    pub fn agent_base_url(&self) -> String {
        format!("http://{HOST}:{GATEWAY_PORT}{}", self.path)
    }

    /// Whether `key` can go into a squid header line as it is: no quote, backslash, control
    /// character or space.
    pub fn key_is_plain(key: &str) -> bool {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    }

    /// The gateway's part of the squid configuration (without the credential, which is added
    /// at start). Its rules come before the forward proxy's: a request on the gateway's port
    /// is the model API's call, or refused.
    fn conf(&self) -> String {
        let Allow { host, port } = &self.upstream;
        let tls = if self.tls { " tls" } else { "" };
        let path = regex_escape(&self.path);
        format!(
            "http_port {GATEWAY_PORT} accel defaultsite={host}:{port} no-vhost name=gateway\n\
             cache_peer {host} parent {port} 0 no-query no-digest originserver name=model forceddomain={host}{tls}\n\
             acl gateway myportname gateway\n\
             acl gateway_post method POST\n\
             acl gateway_path urlpath_regex ^{path}/responses$\n\
             http_access allow gateway gateway_post gateway_path\n\
             http_access deny gateway\n\
             cache_peer_access model allow gateway\n\
             cache_peer_access model deny all\n\
             never_direct allow gateway\n\
             request_header_access Authorization deny gateway\n"
        )
    }
}

/// `s` with the characters a POSIX regex gives meaning to escaped (`s` holds only
/// alphanumerics and `/-_.`, see [`Gateway::new`]).
fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// The squid configuration: allow each `host:port` (a name only as that name, an IP only when
/// listed; CONNECT likewise, to the listed port only), deny the rest, log one line per request.
/// A one-label host is looked up with the search domains of the container's resolv.conf
/// (`dns_defnames`): Podman's network DNS answers `NAME.dns.podman`, and a bare `NAME` went
/// to the upstream servers, which an engine's network may not reach, until squid gave up.
/// With a gateway, its port and rules come first.
pub fn squid_conf(allow: &[Allow], gateway: Option<&Gateway>) -> String {
    let mut c = String::from(
        "http_port 3128\n\
         pid_filename none\n\
         pinger_enable off\n\
         cache deny all\n\
         cache_mem 0 MB\n\
         logformat boxdelegate %ts %Ss/%03>Hs %rm %ru\n\
         access_log stdio:/dev/stdout boxdelegate\n\
         cache_log /dev/stderr\n\
         cache_store_log none\n\
         coredump_dir /tmp\n\
         visible_hostname boxdelegate-proxy\n\
         forwarded_for delete\n\
         via off\n\
         shutdown_lifetime 0 seconds\n\
         dns_defnames on\n",
    );
    if let Some(g) = gateway {
        c.push_str(&g.conf());
    }
    // Names match only as names: `-n` keeps squid from looking up the reverse name of a
    // request made to an IP literal (whoever controls an address's PTR record could name it
    // after an allowed host). An IP literal passes only where that IP is listed (`dst`).
    for (i, a) in allow.iter().enumerate() {
        let kind = if a.is_ipv4() { "dst" } else { "dstdomain -n" };
        c.push_str(&format!(
            "acl allow{i}_host {kind} {}\nacl allow{i}_port port {}\nhttp_access allow allow{i}_host allow{i}_port\n",
            a.host, a.port
        ));
    }
    c.push_str("http_access deny all\n");
    c
}

/// The refused requests in the proxy's access log (`METHOD URL`, first seen first, each once).
pub fn refused(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_time), Some(status), Some(method), Some(url)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !status.starts_with("TCP_DENIED/") {
            continue;
        }
        let entry = format!("{method} {url}");
        if !out.contains(&entry) {
            out.push(entry);
            if out.len() == MAX_REFUSED {
                break;
            }
        }
    }
    out
}

/// The environment that sends an agent's traffic through the proxy.
pub fn agent_env() -> Vec<String> {
    let url = format!("http://{HOST}:{PORT}");
    let mut env = Vec::new();
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push(format!("{var}={url}"));
    }
    // The gateway is reached directly, not through the forward proxy.
    env.push(format!("NO_PROXY=localhost,127.0.0.1,{HOST}"));
    env.push(format!("no_proxy=localhost,127.0.0.1,{HOST}"));
    env
}

/// The internal network and proxy container of one attempt. Both carry the same name, derived
/// from the run, unit and attempt, so a resumed run finds them again.
pub fn name(run_id: &str, unit: &str, attempt: u32) -> String {
    format!("boxdelegate-{run_id}-{unit}-{attempt}")
}

/// Limits of the proxy container: it only relays.
fn proxy_limits() -> Limits {
    Limits {
        memory: 256 << 20,
        cpus: 0.5,
        pids: 64,
        ..Limits::default()
    }
}

/// The proxy container's command: the configuration from the environment into the tmpfs; with
/// a gateway, squid waits until the credential has been added to it (see [`start`]).
const PROXY_CMD: &str = "printf '%s' \"$BOXDELEGATE_PROXY_CONF\" > /tmp/squid.conf && \
     if [ -n \"${BOXDELEGATE_GATEWAY:-}\" ]; then while [ ! -e /tmp/gateway-ready ]; do sleep 0.05; done; fi && \
     exec squid -N -f /tmp/squid.conf";

/// Adds the gateway's credential line to the configuration, reading the key from stdin (it is
/// never an argument or a variable of the container), then lets squid start.
const KEY_CMD: &str = "umask 077 && IFS= read -r k && \
     printf 'request_header_add Authorization \"Bearer %s\" gateway\\n' \"$k\" >> /tmp/squid.conf && \
     touch /tmp/gateway-ready";

/// Creates the attempt's internal network and starts its proxy, attached to that network and
/// to `egress`; returns once squid accepts connections. With `gateway`, the proxy also serves
/// the model gateway, its credential handed over through the engine's exec input after start.
pub async fn start(
    engine: &Engine,
    name: &str,
    labels_of: HashMap<String, String>,
    egress: &str,
    allow: &[Allow],
    gateway: Option<&Gateway>,
) -> Result<()> {
    let mut net_labels = labels_of.clone();
    net_labels.insert(labels::KIND.into(), "agent-network".into());
    engine.create_network(name, true, net_labels).await?;
    let mut host = hardened_host_config(&proxy_limits());
    host.network_mode = Some(name.to_string());
    host.readonly_rootfs = Some(true);
    host.tmpfs = Some(HashMap::from([(
        "/tmp".to_string(),
        "rw,noexec,nosuid,size=16m".to_string(),
    )]));
    let mut container_labels = labels_of;
    container_labels.insert(labels::KIND.into(), "proxy".into());
    let id = engine
        .create_named_container(
            Some(name),
            ContainerCreateBody {
                image: Some(IMAGE.into()),
                // The configuration comes in through the environment: the root filesystem is
                // read-only and an upload cannot reach a tmpfs before start.
                cmd: Some(vec!["sh".into(), "-c".into(), PROXY_CMD.into()]),
                env: Some({
                    let mut env = vec![format!(
                        "BOXDELEGATE_PROXY_CONF={}",
                        squid_conf(allow, gateway)
                    )];
                    if gateway.is_some() {
                        env.push("BOXDELEGATE_GATEWAY=1".into());
                    }
                    env
                }),
                labels: Some(container_labels),
                host_config: Some(host),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        name.to_string(),
                        EndpointSettings {
                            aliases: Some(vec![HOST.into()]),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            },
        )
        .await?;
    engine.connect_network(egress, &id).await?;
    engine.start(&id).await?;
    if let Some(g) = gateway {
        let key = bytes::Bytes::from(format!("{}\n", g.key));
        let input: std::pin::Pin<Box<dyn crate::engine::ByteStream>> =
            Box::pin(futures_util::stream::once(async move { Ok(key) }));
        let code = engine
            .exec_fed(
                &id,
                vec!["sh".into(), "-c".into(), KEY_CMD.into()],
                "/tmp",
                Some(input),
                |_| {},
            )
            .await?;
        if code != 0 {
            return Err(Error::Internal(format!(
                "the model gateway {name} did not take its credential (exit {code})"
            )));
        }
    }
    let ready = async {
        let mut logs = Box::pin(engine.logs(&id, None, true));
        while let Some(Ok(chunk)) = logs.next().await {
            if chunk.contains("Accepting HTTP Socket connections") {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(true) => Ok(()),
        _ => {
            let tail = engine.logs_tail(&id, 20).await;
            Err(Error::Internal(format!(
                "the egress proxy {name} did not start within {}s:\n{tail}",
                READY_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Reads what the attempt's proxy refused, then removes the proxy and the network.
pub async fn stop(engine: &Engine, name: &str) -> Result<Vec<String>> {
    let mut log = String::new();
    if engine.container_running(name).await?.is_some() {
        let mut logs = Box::pin(engine.logs(name, None, false));
        while let Some(Ok(chunk)) = logs.next().await {
            log.push_str(&chunk);
        }
    }
    engine.remove_container(name).await?;
    engine.remove_network(name).await?;
    Ok(refused(&log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_parses_names_and_addresses_and_refuses_the_rest() {
        assert_eq!(
            Allow::parse("API.openai.com:443").unwrap().to_string(),
            "api.openai.com:443"
        );
        assert_eq!(Allow::parse("10.0.0.1:8080").unwrap().port, 8080);
        for bad in [
            "api.openai.com",
            "host:0",
            "host:99999",
            "ho st:80",
            "host\nhttp_access allow all:80",
            ":80",
            "-x.com:80",
            "[::1]:80",
        ] {
            assert!(Allow::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allow_from_url_takes_the_authority_and_the_scheme_port() {
        let a = |u| Allow::from_url(u).map(|a| a.to_string());
        assert_eq!(
            a("https://api.openai.com/v1").as_deref(),
            Some("api.openai.com:443")
        );
        assert_eq!(
            a("http://gateway:8080/v1?x=1").as_deref(),
            Some("gateway:8080")
        );
        assert_eq!(a("http://user@models").as_deref(), Some("models:80"));
        assert_eq!(a("ftp://x"), None);
    }

    #[test]
    fn squid_conf_allows_each_pair_and_denies_the_rest_last() {
        let conf = squid_conf(
            &[
                Allow::parse("allowed:8000").unwrap(),
                Allow::parse("10.1.2.3:443").unwrap(),
            ],
            None,
        );
        assert!(conf.contains("acl allow0_host dstdomain -n allowed\nacl allow0_port port 8000\nhttp_access allow allow0_host allow0_port\n"), "{conf}");
        assert!(conf.contains("acl allow1_host dst 10.1.2.3\n"), "{conf}");
        assert!(conf.ends_with("http_access deny all\n"), "{conf}");
        let none = squid_conf(&[], None);
        assert!(!none.contains("http_access allow"), "{none}");
    }

    #[test]
    fn the_gateway_forwards_only_the_responses_call_and_never_writes_its_key_down() {
        let g = Gateway::new("https://API.example.com/v1/", "sk-secret".into()).unwrap();
        assert_eq!(g.upstream.to_string(), "api.example.com:443");
        assert!(g.tls);
        assert_eq!(g.path, "/v1");
        assert_eq!(g.agent_base_url(), "http://boxdelegate-proxy:8080/v1");
        assert!(!format!("{g:?}").contains("sk-secret"), "{g:?}");
        let conf = squid_conf(&[], Some(&g));
        assert!(!conf.contains("sk-secret"), "{conf}");
        for line in [
            "http_port 8080 accel defaultsite=api.example.com:443 no-vhost name=gateway\n",
            "cache_peer api.example.com parent 443 0 no-query no-digest originserver name=model forceddomain=api.example.com tls\n",
            "acl gateway_path urlpath_regex ^/v1/responses$\n",
            "http_access allow gateway gateway_post gateway_path\nhttp_access deny gateway\n",
            "request_header_access Authorization deny gateway\n",
        ] {
            assert!(conf.contains(line), "{line}\n{conf}");
        }
        // The gateway's rules come before the forward proxy's last deny.
        assert!(
            conf.find("http_access deny gateway").unwrap()
                < conf.find("http_access deny all").unwrap()
        );
        let plain = Gateway::new("http://10.0.0.1:8080/openai.v2", "k".into()).unwrap();
        assert!(!plain.tls);
        assert!(squid_conf(&[], Some(&plain)).contains("^/openai\\.v2/responses$"));
        assert!(Gateway::new("http://host/v1", "k".into()).unwrap().path == "/v1");
        assert!(Gateway::new("http://host", "k".into())
            .unwrap()
            .path
            .is_empty());
        for bad in [
            "ftp://h/v1",
            "http://h/v1 x",
            "http://h/v$1",
            "http://h/\"x",
        ] {
            assert!(Gateway::new(bad, "k".into()).is_none(), "{bad}");
        }
        assert!(Gateway::key_is_plain("sk-proj_ABC.123"));
        for bad in ["", "a b", "a\"b", "a\\b", "a\nb"] {
            assert!(!Gateway::key_is_plain(bad), "{bad:?}");
        }
    }

    #[test]
    fn refused_lists_denied_requests_once_in_order() {
        let log = "1795333843 TCP_MISS/200 GET http://allowed:8000/ok.txt\n\
                   1795333843 TCP_DENIED/403 GET http://allowed:8001/ok.txt\n\
                   2026/11/22 07:50:29| a cache.log line\n\
                   1795333843 TCP_DENIED/403 CONNECT other:443\n\
                   1795333844 TCP_DENIED/403 GET http://allowed:8001/ok.txt\n\
                   1795333843 TCP_TUNNEL/200 CONNECT allowed:8000\n";
        assert_eq!(
            refused(log),
            vec!["GET http://allowed:8001/ok.txt", "CONNECT other:443"]
        );
    }
}
