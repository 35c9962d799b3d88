//! `meshlite-proxy`: `run` the sidecar, or `init` the pod's iptables rules.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshlite_contract::{Mode, SpiffeId, TrustDomain, env};
use meshlite_proxy::config::{
    Config, CredSource, InboundConfig, OutboundConfig, OutboundMode, PolicySource, Target,
    Timeouts, parse_duration,
};
use meshlite_proxy::identity_client::ClientConfig;
use meshlite_proxy::naming::{NamingConfig, NamingSource};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "meshlite-proxy",
    version,
    about = "meshlite's per-pod mTLS sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Install the pod's iptables redirect rules.
    Init(meshlite_proxy::init::InitArgs),
    /// Wait until the proxy's /ready answers 200 (legacy mode's postStart hook).
    WaitReady(meshlite_proxy::init::wait::WaitReadyArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// SPIFFE trust domain.
    #[arg(long, env = env::TRUST_DOMAIN, default_value = meshlite_contract::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
    /// Inbound mode for connections that are not mesh mTLS: permissive or strict.
    #[arg(long, env = env::MODE, default_value = "permissive")]
    mode: Mode,
    /// Outbound mode: permissive (plaintext to unmeshed destinations), strict,
    /// or disabled. Destinations secure naming calls meshed always need mTLS.
    #[arg(long, env = env::OUTBOUND_MODE, default_value = "permissive")]
    outbound_mode: OutboundMode,
    /// Outbound listen addresses (repeatable). Default: 127.0.0.1:15001 and [::1]:15001 if IPv6 is up.
    #[arg(long)]
    outbound_listen: Vec<SocketAddr>,
    /// Inbound listen addresses (repeatable). Default: 0.0.0.0:15006 and [::]:15006 if IPv6 is up.
    #[arg(long)]
    inbound_listen: Vec<SocketAddr>,
    /// Explicit mode: send every outbound connection to this address, not SO_ORIGINAL_DST.
    #[arg(long)]
    outbound_upstream: Option<SocketAddr>,
    /// Explicit mode: the SPIFFE ID the upstream must present (repeatable: any
    /// of them). Pins secure naming without a cluster: every outbound
    /// connection then requires mTLS with one of these, in any mode.
    #[arg(long = "outbound-expect-identity", requires = "outbound_upstream")]
    outbound_expect_identity: Vec<SpiffeId>,
    /// Most outbound destinations whose secure-naming answers are held
    /// (about 270 bytes each with one identity, 2.5 KiB at most).
    #[arg(long, default_value_t = meshlite_proxy::naming::DEFAULT_CACHE_MAX)]
    naming_cache_size: usize,
    /// Explicit mode: send every inbound connection to this address, not SO_ORIGINAL_DST.
    #[arg(long)]
    inbound_backend: Option<SocketAddr>,
    /// Do not run the outbound listener.
    #[arg(long)]
    no_outbound: bool,
    /// Do not run the inbound listener.
    #[arg(long)]
    no_inbound: bool,
    /// Admin listen address (/live, /ready, /metrics; /shutdown from loopback only).
    #[arg(long, default_value = "0.0.0.0:15020")]
    admin_listen: SocketAddr,
    /// Time an admin client has for each request header; also how long an
    /// idle admin connection is kept.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    admin_header_read_timeout: Duration,
    /// Time from an admin request's header to its answer (503 past it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    admin_request_timeout: Duration,
    /// Admin connections served at once; more are reset and counted. Apart
    /// from --max-connections, so the admin port cannot starve the data plane.
    #[arg(long, default_value_t = 64)]
    admin_max_connections: usize,
    /// certd's URL: get and renew the certificate from certd (cluster mode).
    #[arg(long, env = env::CERTD_URL, conflicts_with_all = ["cert", "key"], requires = "trust_bundle")]
    certd_url: Option<http::Uri>,
    /// The projected ServiceAccount token presented to certd.
    #[arg(long, env = env::TOKEN_FILE, default_value = "/var/run/secrets/meshlite/token")]
    token_file: PathBuf,
    /// This workload's namespace (its identity is derived from it).
    #[arg(long, env = env::POD_NAMESPACE)]
    namespace: Option<String>,
    /// This workload's service account.
    #[arg(long, env = env::SERVICE_ACCOUNT, default_value = "default")]
    service_account: String,
    /// Workload certificate chain (PEM), reloaded when it changes.
    #[arg(long, requires_all = ["key", "trust_bundle"])]
    cert: Option<PathBuf>,
    /// Workload private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Trust bundle (PEM list of roots).
    #[arg(long, env = env::TRUST_BUNDLE_FILE)]
    trust_bundle: Option<PathBuf>,
    /// Allow list value (the meshlite.io/allow syntax), fixed.
    #[arg(long, conflicts_with_all = ["allow_file", "annotations_file"])]
    allow: Option<String>,
    /// File holding the allow list value, reloaded when it changes.
    #[arg(long, conflicts_with = "annotations_file")]
    allow_file: Option<PathBuf>,
    /// Downward-API annotations file; meshlite.io/allow is read from it live.
    #[arg(long, env = env::ANNOTATIONS_FILE)]
    annotations_file: Option<PathBuf>,
    /// How long to wait for a client's first bytes before treating it as
    /// plaintext. Unmeshed clients of server-first protocols wait this long.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    detect_timeout: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Close connections idle this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// On SIGTERM, how long established connections may continue.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// On SIGTERM, how long new connections are still accepted (while /ready
    /// reports 503) before the listeners close: the time the endpoint's
    /// removal takes to reach every node. Counts toward --drain-timeout. The
    /// injector sets 5s in legacy mode, where the proxy is stopped together
    /// with the app; a native sidecar is stopped only after the app has exited.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    drain_accept: Duration,
    /// Most connections open at once, both directions; more are refused and
    /// counted. Default: as many as fit in the memory limit (24 MiB plus 32 KiB
    /// per connection), so the limit is met before the OOM killer acts; 4096
    /// when no memory limit is known. Always within the descriptor limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// The memory limit the connection limit is derived from (bytes, or 128Mi).
    /// The injector sets it from the container's `limits.memory`; without it,
    /// the cgroup's memory.max is read.
    #[arg(long, env = env::MEMORY_LIMIT, value_parser = meshlite_proxy::config::parse_memory)]
    memory_limit: Option<u64>,
    /// How long a destination that failed mTLS is remembered as unmeshed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    fallback_ttl: Duration,
    /// How often credential and policy files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// The application's original probes (JSON, written by the injector).
    #[arg(long, env = env::APP_PROBES)]
    app_probes: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "plain")]
    log_format: String,
    /// Do not resume TLS sessions (every connection does a full handshake).
    #[arg(long)]
    no_tls_resumption: bool,
    /// Key exchange: `hybrid` (X25519MLKEM768 first, then X25519) or `classic`
    /// (X25519 and P-256 only).
    #[arg(long, default_value = "hybrid", value_parser = ["hybrid", "classic"])]
    key_exchange: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Connect to the app from each client's own address, so the app sees who
    /// called it (off by default). Needs CAP_NET_RAW (start as root with
    /// NET_RAW, SETUID and SETGID: the proxy switches to UID 2102 keeping only
    /// NET_RAW) and `meshlite-proxy init --preserve-client-address`. Without
    /// the capability the proxy refuses to start (fail closed).
    #[arg(long, env = env::PRESERVE_CLIENT_ADDRESS, default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    preserve_client_address: bool,
}

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

impl RunArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let v6 = ipv6_available();
        let defaults = |given: Vec<SocketAddr>, v4: SocketAddr, v6addr: SocketAddr| {
            if !given.is_empty() {
                given
            } else if v6 {
                vec![v4, v6addr]
            } else {
                vec![v4]
            }
        };
        let port = |p| move |ip: std::net::IpAddr| SocketAddr::new(ip, p);
        let out_port = port(meshlite_contract::OUTBOUND_PORT);
        let in_port = port(meshlite_contract::INBOUND_PORT);
        let outbound = (!self.no_outbound).then(|| OutboundConfig {
            listen: defaults(
                self.outbound_listen,
                out_port([127, 0, 0, 1].into()),
                out_port(std::net::Ipv6Addr::LOCALHOST.into()),
            ),
            target: self
                .outbound_upstream
                .map_or(Target::OriginalDst, Target::Fixed),
            mode: self.outbound_mode,
        });
        let inbound = (!self.no_inbound).then(|| InboundConfig {
            listen: defaults(
                self.inbound_listen,
                in_port([0, 0, 0, 0].into()),
                in_port(std::net::Ipv6Addr::UNSPECIFIED.into()),
            ),
            target: self
                .inbound_backend
                .map_or(Target::OriginalDst, Target::Fixed),
            mode: self.mode,
            preserve_client_address: self.preserve_client_address,
        });
        let creds = match (self.certd_url, self.cert, self.key, self.trust_bundle) {
            (Some(url), _, _, Some(bundle_file)) => {
                let namespace = self.namespace.context(
                    "--certd-url needs the workload's namespace: --namespace or MESHLITE_POD_NAMESPACE",
                )?;
                let identity =
                    SpiffeId::new(self.trust_domain.clone(), &namespace, &self.service_account)
                        .context("deriving the workload identity")?;
                CredSource::Certd(ClientConfig {
                    url,
                    token_file: self.token_file,
                    bundle_file,
                    identity,
                    timeout: Duration::from_secs(30),
                })
            }
            (None, Some(cert), Some(key), Some(bundle)) => CredSource::Files { cert, key, bundle },
            _ => anyhow::bail!(
                "no credential source: pass --certd-url (cluster mode) or --cert, --key and --trust-bundle (PEM files)"
            ),
        };
        let naming_source = match (&creds, self.outbound_expect_identity) {
            (_, pinned) if !pinned.is_empty() => NamingSource::Pinned(pinned),
            (CredSource::Certd(client), _) => NamingSource::Certd(client.clone()),
            _ => NamingSource::None,
        };
        let policy = match (self.allow, self.allow_file, self.annotations_file) {
            (Some(v), _, _) => PolicySource::Static(v),
            (_, Some(p), _) => PolicySource::File(p),
            (_, _, Some(p)) => PolicySource::Annotations(p),
            _ => PolicySource::None,
        };
        Ok(Config {
            trust_domain: self.trust_domain,
            inbound,
            outbound,
            admin: Some(self.admin_listen),
            admin_limits: meshlite_https::Limits {
                header_read_timeout: self.admin_header_read_timeout,
                request_timeout: self.admin_request_timeout,
                max_connections: self.admin_max_connections,
            },
            timeouts: Timeouts {
                detect: self.detect_timeout,
                connect: self.connect_timeout,
                handshake: self.handshake_timeout,
                idle: self.idle_timeout,
                drain: self.drain_timeout,
                drain_accept: self.drain_accept,
            },
            max_connections: connection_limit(self.max_connections, self.memory_limit),
            fallback_ttl: self.fallback_ttl,
            creds,
            policy,
            reload_interval: self.reload_interval,
            app_probes: self.app_probes,
            tls: meshlite_proxy::tls::TlsOptions {
                resumption: !self.no_tls_resumption,
                post_quantum: self.key_exchange == "hybrid",
            },
            naming: NamingConfig {
                source: naming_source,
                cache_max: self.naming_cache_size,
            },
        })
    }
}

/// Settles `--max-connections` (see `meshlite_proxy::config::connection_limit`)
/// and says how, warning when an explicit limit does not fit the memory.
fn connection_limit(flag: Option<usize>, memory_flag: Option<u64>) -> usize {
    use meshlite_proxy::config::{self, LimitSource};
    let memory = memory_flag.or_else(config::cgroup_memory_limit);
    let nofile = config::raise_nofile_limit();
    let (n, source) = config::connection_limit(flag, memory, nofile);
    let mib = |b: u64| b >> 20;
    let needs = config::memory_for_connections(n);
    match (source, memory) {
        (LimitSource::Flag, Some(m)) if needs > m => tracing::warn!(
            max_connections = n,
            needs_mib = mib(needs),
            memory_limit_mib = mib(m),
            "--max-connections needs more memory than the limit: the OOM killer may stop the \
             proxy before the limit refuses connections"
        ),
        (LimitSource::Memory(m), _) => tracing::info!(
            max_connections = n,
            memory_limit_mib = mib(m),
            nofile = nofile.unwrap_or(u64::MAX),
            "connection limit derived from the memory limit"
        ),
        _ => tracing::info!(
            max_connections = n,
            ?source,
            nofile = nofile.unwrap_or(u64::MAX),
            "connection limit"
        ),
    }
    n
}

fn init_logging(format: &str) {
    // `Targets` understands RUST_LOG's `target=level,level` form without
    // pulling a regex engine into the sidecar.
    let default = tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("ignoring RUST_LOG={v:?}: {e}; logging at info");
            default
        }),
        Err(_) => default,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json())
            .init();
    } else {
        registry.with(tracing_subscriber::fmt::layer()).init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => meshlite_proxy::init::run(&args),
        Command::WaitReady(args) => Ok(meshlite_proxy::init::wait::run(&args)?),
        Command::Run(args) => {
            init_logging(&args.log_format);
            // First, while the process has one thread: never serve as root.
            let uid = meshlite_contract::PROXY_UID;
            let settled = meshlite_proxy::privs::settle(uid, args.preserve_client_address)?;
            tracing::info!(
                switched_from_root = settled.switched,
                net_raw = settled.net_raw,
                "privileges settled: running as UID {}",
                meshlite_proxy::privs::euid()
            );
            meshlite_proxy::tls::install_provider();
            let workers = args.worker_threads.max(1);
            let config = args.into_config()?;
            // One worker means a current-thread runtime: no work stealing and no
            // cross-thread wake-ups on the relay path.
            let mut builder = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            let rt = builder
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            rt.block_on(async {
                let bound = meshlite_proxy::Proxy::new(config)
                    .bind()
                    .await
                    .context("binding listeners")?;
                tracing::info!(
                    outbound = ?bound.outbound_addrs(),
                    inbound = ?bound.inbound_addrs(),
                    admin = ?bound.admin_addr(),
                    "meshlite-proxy listening"
                );
                bound.run(shutdown_signal()).await;
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_limit_flags_default_to_the_documented_values() {
        let cli =
            Cli::try_parse_from(["meshlite-proxy", "run"]).expect("run takes no required flag");
        let Command::Run(args) = cli.command else {
            panic!("the run subcommand")
        };
        let limits = meshlite_https::Limits {
            header_read_timeout: args.admin_header_read_timeout,
            request_timeout: args.admin_request_timeout,
            max_connections: args.admin_max_connections,
        };
        assert_eq!(limits, meshlite_proxy::config::ADMIN_LIMITS);
    }
}
