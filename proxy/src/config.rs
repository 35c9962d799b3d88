//! Typed configuration for `meshlite-proxy run`.
//!
//! Flags (with `MESHLITE_*` environment defaults, which is how the injector
//! configures a pod) are parsed once into [`Config`]; the rest of the proxy only
//! sees typed values. Tests build a `Config` directly.

use meshlite_contract::{Mode, TrustDomain};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// What the outbound side does when a destination does not speak mesh mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundMode {
    /// Try mTLS; fall back to plaintext for destinations that are not meshed.
    #[default]
    Permissive,
    /// mTLS or nothing.
    Strict,
    /// Never originate TLS (benchmarks, debugging).
    Disabled,
}

impl FromStr for OutboundMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(OutboundMode::Permissive),
            "strict" => Ok(OutboundMode::Strict),
            "disabled" => Ok(OutboundMode::Disabled),
            other => Err(format!(
                "invalid outbound mode {other:?}: expected permissive, strict or disabled"
            )),
        }
    }
}

/// Where a listener sends the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Transparent mode: the address iptables redirected away from.
    OriginalDst,
    /// Explicit mode: always this address (meshing a VM or a local process).
    Fixed(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub listen: Vec<SocketAddr>,
    pub target: Target,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub listen: Vec<SocketAddr>,
    pub target: Target,
    pub mode: OutboundMode,
}

/// Connection timing. Every wait on a peer is bounded by one of these.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long the inbound side waits for a client's first bytes before it
    /// treats the connection as plaintext. Only unmeshed clients of
    /// server-first protocols (which wait for a banner) ever hit this: a meshed
    /// client sends its ClientHello immediately.
    pub detect: Duration,
    pub connect: Duration,
    pub handshake: Duration,
    /// Close a connection on which neither side sent anything for this long.
    pub idle: Duration,
    /// On SIGTERM, how long established connections may keep running.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            detect: Duration::from_millis(500),
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            drain: Duration::from_secs(25),
        }
    }
}

/// Where the allow list comes from.
#[derive(Debug, Clone, Default)]
pub enum PolicySource {
    /// No allow list: any identity in the trust domain.
    #[default]
    None,
    /// A fixed allow-list value.
    Static(String),
    /// A file holding just the allow-list value; reloaded when it changes.
    File(PathBuf),
    /// The downward-API annotations file; `meshlite.io/allow` is read from it.
    Annotations(PathBuf),
}

/// Where the workload credentials come from.
#[derive(Debug, Clone)]
pub enum CredSource {
    /// PEM files, reloaded when they change.
    Files {
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    },
    /// certd: a key generated in memory, a certificate requested with the
    /// ServiceAccount token and renewed before it expires.
    Certd(crate::identity_client::ClientConfig),
    /// Nothing: credentials are published by the embedding code (tests).
    External,
}

/// The whole proxy configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub inbound: Option<InboundConfig>,
    pub outbound: Option<OutboundConfig>,
    pub admin: Option<SocketAddr>,
    /// The admin server's own limits, apart from the data plane's.
    pub admin_limits: meshlite_https::Limits,
    pub timeouts: Timeouts,
    /// Connections open at once, both directions together. Past this, new
    /// connections are closed immediately and counted.
    pub max_connections: usize,
    /// How long a destination that failed mesh mTLS is remembered as unmeshed.
    pub fallback_ttl: Duration,
    pub creds: CredSource,
    pub policy: PolicySource,
    /// How often files (credentials, allow list) are checked for changes.
    pub reload_interval: Duration,
    /// Application probes served on the admin port (`MESHLITE_APP_PROBES`).
    pub app_probes: Option<String>,
    /// Session resumption and key exchange.
    pub tls: crate::tls::TlsOptions,
    /// Secure naming for outbound destinations.
    pub naming: crate::naming::NamingConfig,
}

impl Config {
    /// A config for tests and embedding: explicit mode on loopback, ephemeral
    /// ports, external credentials.
    pub fn explicit(
        trust_domain: TrustDomain,
        outbound_upstream: Option<SocketAddr>,
        inbound_backend: Option<SocketAddr>,
    ) -> Self {
        let lo: SocketAddr = ([127, 0, 0, 1], 0).into();
        Config {
            trust_domain,
            inbound: inbound_backend.map(|b| InboundConfig {
                listen: vec![lo],
                target: Target::Fixed(b),
                mode: Mode::Permissive,
            }),
            outbound: outbound_upstream.map(|u| OutboundConfig {
                listen: vec![lo],
                target: Target::Fixed(u),
                mode: OutboundMode::Permissive,
            }),
            admin: Some(lo),
            admin_limits: ADMIN_LIMITS,
            timeouts: Timeouts::default(),
            max_connections: 4096,
            fallback_ttl: Duration::from_secs(60),
            creds: CredSource::External,
            policy: PolicySource::None,
            reload_interval: Duration::from_secs(2),
            app_probes: None,
            tls: crate::tls::TlsOptions::default(),
            naming: crate::naming::NamingConfig::default(),
        }
    }
}

/// The admin server's default limits (`--admin-header-read-timeout`,
/// `--admin-request-timeout`, `--admin-max-connections`). The request timeout
/// covers the slowest handler, an application probe. 64 connections are ample
/// for the kubelet's probes and a scraper; past them the admin port sheds load
/// alone and the data plane's `--max-connections` is untouched.
pub const ADMIN_LIMITS: meshlite_https::Limits = meshlite_https::Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(30),
    max_connections: 64,
};

/// Durations on the command line (`500ms`, `5s`, `10m`, `1h`): the same
/// syntax in every meshlite binary.
pub use meshlite_contract::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_mode_parses_known_values_only() {
        assert_eq!("strict".parse(), Ok(OutboundMode::Strict));
        assert_eq!("disabled".parse(), Ok(OutboundMode::Disabled));
        assert!("off".parse::<OutboundMode>().unwrap_err().contains("off"));
    }
}
