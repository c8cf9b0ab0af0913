//! One destination the agent's egress proxy lets through (`[agent] allow`), parsed and
//! checked here because it becomes part of the proxy's configuration.
//!
//! May not: accept anything but a DNS name or an IPv4 address and a port (1–65535): the host
//! becomes part of the proxy's configuration.

use std::fmt;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Allow {
    /// Parses `host:port`. The host becomes part of the proxy's configuration, so only DNS
    /// names and IPv4 addresses are accepted.
    pub fn parse(s: &str) -> std::result::Result<Allow, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port number (1-65535)"))?;
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.len() > 253 || !host.split('.').all(valid_label) {
            return Err(format!(
                "{s:?}: {host:?} is not a host name or IPv4 address"
            ));
        }
        Ok(Allow {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host and port of an `http(s)://` URL.
    pub fn from_url(url: &str) -> Option<Allow> {
        let (default_port, rest) = if let Some(r) = url.strip_prefix("https://") {
            (443, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (80, r)
        } else {
            return None;
        };
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit('@').next()?;
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
        Allow::parse(&with_port).ok()
    }

    pub fn is_ipv4(&self) -> bool {
        self.host.parse::<std::net::Ipv4Addr>().is_ok()
    }
}
