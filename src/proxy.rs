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

/// The squid configuration: allow each `host:port` (a name only as that name, an IP only when
/// listed; CONNECT likewise, to the listed port only), deny the rest, log one line per request.
/// A one-label host is looked up with the search domains of the container's resolv.conf
/// (`dns_defnames`): Podman's network DNS answers `NAME.dns.podman`, and a bare `NAME` went
/// to the upstream servers, which an engine's network may not reach, until squid gave up.
pub fn squid_conf(allow: &[Allow]) -> String {
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
    env.push("NO_PROXY=localhost,127.0.0.1".into());
    env.push("no_proxy=localhost,127.0.0.1".into());
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

/// Creates the attempt's internal network and starts its proxy, attached to that network and
/// to `egress`; returns once squid accepts connections.
pub async fn start(
    engine: &Engine,
    name: &str,
    labels_of: HashMap<String, String>,
    egress: &str,
    allow: &[Allow],
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
        .create_named_container(Some(name), ContainerCreateBody {
            image: Some(IMAGE.into()),
            // The configuration comes in through the environment: the root filesystem is
            // read-only and an upload cannot reach a tmpfs before start.
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "printf '%s' \"$BOXDELEGATE_PROXY_CONF\" > /tmp/squid.conf && exec squid -N -f /tmp/squid.conf".into(),
            ]),
            env: Some(vec![format!("BOXDELEGATE_PROXY_CONF={}", squid_conf(allow))]),
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
        })
        .await?;
    engine.connect_network(egress, &id).await?;
    engine.start(&id).await?;
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
        let conf = squid_conf(&[
            Allow::parse("allowed:8000").unwrap(),
            Allow::parse("10.1.2.3:443").unwrap(),
        ]);
        assert!(conf.contains("acl allow0_host dstdomain -n allowed\nacl allow0_port port 8000\nhttp_access allow allow0_host allow0_port\n"), "{conf}");
        assert!(conf.contains("acl allow1_host dst 10.1.2.3\n"), "{conf}");
        assert!(conf.ends_with("http_access deny all\n"), "{conf}");
        let none = squid_conf(&[]);
        assert!(!none.contains("http_access allow"), "{none}");
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
