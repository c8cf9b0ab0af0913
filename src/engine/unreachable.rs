//! Why the engine could not be reached, said so a user can act on it: a socket with nobody
//! behind it, a remote address that does not answer, a TLS engine spoken to in plain HTTP, a
//! certificate directory that is missing or signed by the wrong authority. Pure: it reads the
//! error's text chain and the TLS environment, and touches nothing.
//!
//! May not: change anything or try again: it explains an error it is given.

use crate::error::Error;

/// The hint when nothing more specific is known.
pub const START_HINT: &str = "start the Docker (or Podman) daemon, or point DOCKER_HOST at it; `boxdelegate doctor` checks the setup";

/// How to start Podman's Docker API, for a socket of Podman's that nobody serves.
const PODMAN_START: &str = "Podman: `systemctl start podman.socket`, or `podman system service --time=0 unix:///run/podman/podman.sock` (rootless: `systemctl --user start podman.socket`)";

/// The engine error for `endpoint`, from bollard's error and its sources.
pub fn diagnose(endpoint: &str, e: &bollard::errors::Error) -> Error {
    let mut chain = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let tls = Tls {
        verify: std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()),
        cert_path: std::env::var("DOCKER_CERT_PATH")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    let (message, hint) = classify(endpoint, &chain, &tls);
    Error::EngineUnreachable {
        endpoint: endpoint.to_string(),
        message,
        hint,
    }
}

/// The TLS settings the client connected with.
pub struct Tls {
    pub verify: bool,
    pub cert_path: Option<String>,
}

/// The message (the error chain, deduplicated) and the hint for what the chain says.
pub fn classify(endpoint: &str, chain: &[String], tls: &Tls) -> (String, String) {
    let mut parts: Vec<&str> = Vec::new();
    for c in chain {
        let c = c.trim();
        if !c.is_empty() && !parts.iter().any(|p| p.contains(c)) {
            parts.push(c);
        }
    }
    let message = parts.join(": ");
    let all = message.to_lowercase();
    let certs = tls.cert_path.as_deref().unwrap_or("~/.docker");
    let podman = endpoint.contains("podman");
    let hint = if all.contains("http request to an https server") {
        format!(
            "the engine at {endpoint} speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to the directory of its client certificate (ca.pem, cert.pem, key.pem)"
        )
    } else if all.contains("cannot open/read certificate") || all.contains("certificate with path")
    {
        format!(
            "DOCKER_CERT_PATH ({certs}) must be a directory holding ca.pem, cert.pem and key.pem for the engine at {endpoint}; set it, or unset DOCKER_TLS_VERIFY for an engine without TLS"
        )
    } else if tls.verify
        && [
            "certificate",
            "tls",
            "handshake",
            "alert",
            "sendrequest",
            "connection reset",
            "unexpected eof",
            // With TLS 1.3 the engine judges the client's certificate after the client has
            // finished its side of the handshake: the refusal then reaches the client as a
            // connection closed under its first request.
            "connection was not ready",
            "connection closed before message completed",
        ]
        .iter()
        .any(|w| all.contains(w))
    {
        format!(
            "the TLS handshake with {endpoint} failed: the certificates in DOCKER_CERT_PATH ({certs}) must be the engine's — ca.pem the authority that signed the engine's certificate (issued for this host name or address), cert.pem and key.pem a client certificate that the engine's authority signed"
        )
    } else if (all.contains("no such file") || all.contains("socket not found"))
        && endpoint.starts_with("unix://")
    {
        let start = if podman { PODMAN_START } else { START_HINT };
        format!("no socket at {endpoint}: {start}")
    } else if all.contains("connection refused") || all.contains("connect") {
        if endpoint.starts_with("unix://") {
            let start = if podman {
                PODMAN_START.to_string()
            } else {
                format!("start the engine whose socket this is ({START_HINT}); {PODMAN_START}")
            };
            format!("the socket {endpoint} exists but no engine answers on it: {start}")
        } else {
            format!(
                "nothing answers at {endpoint}: start the engine there and check that DOCKER_HOST names its host and port (and that a firewall lets the port through)"
            )
        }
    } else {
        START_HINT.to_string()
    };
    (message, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(verify: bool) -> Tls {
        Tls {
            verify,
            cert_path: Some("/certs".into()),
        }
    }

    fn hint(endpoint: &str, chain: &[&str], verify: bool) -> String {
        let chain: Vec<String> = chain.iter().map(|s| s.to_string()).collect();
        classify(endpoint, &chain, &tls(verify)).1
    }

    #[test]
    fn each_cause_gets_its_own_fix() {
        let e = "tcp://10.0.0.5:2376";
        assert!(hint(
            e,
            &["Docker responded with status code 400: Client sent an HTTP request to an HTTPS server."],
            false
        )
        .contains("set DOCKER_TLS_VERIFY=1"));
        assert!(hint(
            e,
            &["Cannot open/read certificate with path: /certs/ca.pem"],
            true
        )
        .contains("DOCKER_CERT_PATH (/certs) must be a directory"));
        assert!(hint(
            e,
            &[
                "Error in the hyper legacy client: client error (SendRequest)",
                "received fatal alert: BadCertificate"
            ],
            true
        )
        .contains("the TLS handshake with tcp://10.0.0.5:2376 failed"));
        let closed = [
            "Error in the hyper legacy client: client error (Canceled)",
            "operation was canceled: connection was not ready",
        ];
        assert!(
            hint(e, &closed, true).contains("the TLS handshake with tcp://10.0.0.5:2376 failed")
        );
        assert!(hint(e, &closed, false).starts_with("nothing answers at"));
        assert!(hint(
            e,
            &[
                "Error in the hyper legacy client: client error (Connect)",
                "Connection refused (os error 111)"
            ],
            false
        )
        .starts_with("nothing answers at tcp://10.0.0.5:2376"));
        let p = "unix:///run/podman/podman.sock";
        assert!(hint(p, &["Connection refused (os error 111)"], false)
            .contains("podman system service --time=0"));
        assert!(hint(p, &["No such file or directory (os error 2)"], false)
            .starts_with("no socket at unix:///run/podman/podman.sock"));
        assert!(
            hint(p, &["Socket not found: /run/podman/podman.sock"], false)
                .starts_with("no socket at")
        );
        assert_eq!(hint(e, &["something else"], false), START_HINT);
    }

    #[test]
    fn the_message_keeps_each_cause_once() {
        let chain = vec!["a: b".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(classify("x", &chain, &tls(false)).0, "a: b: c");
    }
}
