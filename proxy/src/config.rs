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
    /// Connect to the app from the client's address (`--preserve-client-address`,
    /// see [`crate::client_addr`]). Needs `CAP_NET_RAW` and the rules of
    /// `meshlite-proxy init --preserve-client-address`.
    pub preserve_client_address: bool,
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
    /// On SIGTERM, how long the proxy keeps accepting new connections while it
    /// reports not ready, for those kube-proxy still routes to the pod until
    /// the endpoint's removal reaches every node. Part of `drain`, not added.
    pub drain_accept: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            detect: Duration::from_millis(500),
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            drain_accept: Duration::ZERO,
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
                preserve_client_address: false,
            }),
            outbound: outbound_upstream.map(|u| OutboundConfig {
                listen: vec![lo],
                target: Target::Fixed(u),
                mode: OutboundMode::Permissive,
            }),
            admin: Some(lo),
            admin_limits: ADMIN_LIMITS,
            timeouts: Timeouts::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
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

/// Memory the proxy needs whatever its connection count: runtime, TLS
/// configurations, caches and allocator slack (idle RSS is about 7 MiB).
pub const BASE_MEMORY: u64 = 24 << 20;
/// Memory budgeted per open connection: both legs, TLS state and idle relay
/// buffers. Measured at about 32 KB per held idle mTLS connection per proxy
/// (4,090 connections, 137 MB RSS); benches/README.md has the figure.
pub const MEMORY_PER_CONNECTION: u64 = 32 << 10;
/// File descriptors per connection (the accepted one and the one it opens).
pub const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for listeners, certd, files and the admin port.
pub const RESERVED_FDS: u64 = 128;
/// `--max-connections` when neither it nor a memory limit is known.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The fewest connections a derived limit allows, however small the memory.
pub const MIN_MAX_CONNECTIONS: usize = 16;

/// Where the connection limit came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// `--max-connections`.
    Flag,
    /// Derived from the memory limit (bytes).
    Memory(u64),
    /// [`DEFAULT_MAX_CONNECTIONS`], no memory limit being known.
    Default,
}

/// The connection limit: `--max-connections` if given; else as many
/// connections as fit in the memory limit beside [`BASE_MEMORY`], so that the
/// limit refuses connections before the OOM killer stops the pod; else
/// [`DEFAULT_MAX_CONNECTIONS`]. A derived limit is also kept within the
/// descriptor limit (`nofile`), so accepting never fails with EMFILE first.
pub fn connection_limit(
    flag: Option<usize>,
    memory: Option<u64>,
    nofile: Option<u64>,
) -> (usize, LimitSource) {
    if let Some(n) = flag {
        return (n, LimitSource::Flag);
    }
    let (n, source) = match memory {
        Some(bytes) => {
            let fit = bytes.saturating_sub(BASE_MEMORY) / MEMORY_PER_CONNECTION;
            (
                usize::try_from(fit).unwrap_or(usize::MAX),
                LimitSource::Memory(bytes),
            )
        }
        None => (DEFAULT_MAX_CONNECTIONS, LimitSource::Default),
    };
    let by_fds = nofile.map_or(usize::MAX, |fds| {
        usize::try_from(fds.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION).unwrap_or(usize::MAX)
    });
    (n.min(by_fds).max(MIN_MAX_CONNECTIONS), source)
}

/// The memory a limit of `n` connections needs by the figures above.
pub fn memory_for_connections(n: usize) -> u64 {
    BASE_MEMORY.saturating_add((n as u64).saturating_mul(MEMORY_PER_CONNECTION))
}

/// Parses a memory size: bytes, or a Kubernetes binary quantity (`128Mi`,
/// `1Gi`, `512Ki`) or decimal one (`128M`, `1G`).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a memory size like 134217728 or 128Mi"))?;
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use Ki, Mi, Gi, or bytes)"
            ));
        }
    };
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable memory size"))
}

/// The memory limit of the cgroup the process runs in (cgroup v2's
/// `memory.max`), if there is one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (a proxy needs two
/// descriptors per connection, and runtimes often start it at 1,024), then
/// returns the soft limit in force, if it is finite.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass; raising the soft
        // limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn the_derived_limit_fits_the_injected_memory_limit() {
        // The injector's default proxy limit is 128Mi. At 4,096 connections the
        // proxy measured 137 MB: above it, so the OOM killer acted first.
        let limit = parse_memory("128Mi").unwrap();
        let (n, source) = connection_limit(None, Some(limit), Some(1 << 20));
        assert_eq!(source, LimitSource::Memory(limit));
        assert!(
            memory_for_connections(n) <= limit,
            "{n} connections need more than 128Mi"
        );
        assert!(n < DEFAULT_MAX_CONNECTIONS);
        assert_eq!(n, 3328);
        // Twice the memory, at least twice the connections.
        let (m, _) = connection_limit(None, Some(2 * limit), Some(1 << 20));
        assert!(m >= 2 * n);
    }

    #[test]
    fn the_flag_wins_and_the_descriptor_limit_bounds_a_derived_one() {
        assert_eq!(
            connection_limit(Some(10_000), Some(64 << 20), Some(1024)),
            (10_000, LimitSource::Flag)
        );
        // 1,024 descriptors hold (1024 - 128) / 2 connections, whatever the memory.
        assert_eq!(connection_limit(None, Some(1 << 34), Some(1024)).0, 448);
        assert_eq!(
            connection_limit(None, None, None),
            (DEFAULT_MAX_CONNECTIONS, LimitSource::Default)
        );
        // Tiny memory still admits a few connections rather than none.
        assert_eq!(
            connection_limit(None, Some(1 << 20), None).0,
            MIN_MAX_CONNECTIONS
        );
    }

    #[test]
    fn memory_sizes_parse_like_kubernetes_quantities() {
        assert_eq!(parse_memory("134217728"), Ok(128 << 20));
        assert_eq!(parse_memory("128Mi"), Ok(128 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        for bad in [
            "",
            "Mi",
            "12.5Mi",
            "128MB",
            "-1",
            "0",
            "99999999999999999999",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
