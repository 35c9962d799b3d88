//! Command line and the typed settings parsed from it.
//!
//! `meshlite-certd` runs against the Kubernetes API by default;
//! `meshlite-certd embedded` (or `--embedded`) runs the same API with an
//! in-process CA and a static token file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshlite_contract::{
    CA_SECRET, CERTD_PORT, SIGNER_NAME, SYSTEM_NAMESPACE, TOKEN_AUDIENCE, TrustDomain,
    WEBHOOK_CONFIGURATION,
};

use crate::approval::{Lifetime, LifetimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Against the Kubernetes API (the default).
    Cluster,
    /// In-process signer and static tokens; no Kubernetes API.
    Embedded,
}

/// meshlite's certificate authority front end.
#[derive(Debug, Clone, Parser)]
#[command(name = "meshlite-certd", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Same as the `embedded` subcommand.
    #[arg(long, global = true)]
    pub embedded: bool,
    /// Address of the HTTPS API.
    #[arg(long, global = true, env = "CERTD_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], CERTD_PORT)))]
    pub listen: SocketAddr,
    #[arg(long, global = true, env = "CERTD_TRUST_DOMAIN", default_value = meshlite_contract::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: TrustDomain,
    /// Leaf lifetime, seconds (600..=86400).
    #[arg(
        long,
        global = true,
        env = "CERTD_LIFETIME_SECONDS",
        default_value_t = 3600
    )]
    pub lifetime_seconds: u64,
    /// Audience the proxies' tokens must be bound to.
    #[arg(long, global = true, env = "CERTD_AUDIENCE", default_value = TOKEN_AUDIENCE)]
    pub audience: String,
    /// signerName of the CSR objects.
    #[arg(long, global = true, env = "CERTD_SIGNER_NAME", default_value = SIGNER_NAME)]
    pub signer_name: String,
    /// Let an external signer (e.g. cert-manager) sign; certd only approves and waits.
    #[arg(long, global = true)]
    pub no_builtin_signer: bool,
    /// How long to wait for an external signer, seconds.
    #[arg(long, global = true, default_value_t = 30)]
    pub signer_wait_seconds: u64,
    /// Time budget for the Kubernetes API calls of one request, seconds (the
    /// client retries 429/503 with backoff; this bounds how long a proxy waits).
    #[arg(long, global = true, default_value_t = 10)]
    pub api_timeout_seconds: u64,
    /// Keep CSR objects instead of deleting them once answered.
    #[arg(long, global = true)]
    pub keep_csrs: bool,
    /// Namespace of the CA Secret.
    #[arg(long, global = true, env = "CERTD_CA_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub ca_namespace: String,
    #[arg(long, global = true, env = "CERTD_CA_SECRET", default_value = CA_SECRET)]
    pub ca_secret: String,
    /// Service name and namespace certd is reached under (serving certificate DNS names).
    #[arg(long, global = true, default_value = "meshlite-certd")]
    pub service_name: String,
    #[arg(long, global = true, env = "POD_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub service_namespace: String,
    /// Extra DNS names for the serving certificate.
    #[arg(long = "extra-dns", global = true)]
    pub extra_dns: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle certd keeps current.
    #[arg(long, global = true, default_value = WEBHOOK_CONFIGURATION)]
    pub webhook_configuration: String,
    /// Secret (in the CA namespace, type kubernetes.io/tls) where certd keeps
    /// the injector's serving certificate; the injector Deployment mounts it.
    #[arg(long, global = true, default_value = crate::kube::webhook_cert::INJECTOR_SECRET)]
    pub injector_secret: String,
    /// The injector's Service (in the CA namespace): its certificate's DNS names.
    #[arg(long, global = true, default_value = crate::kube::webhook_cert::INJECTOR_SERVICE)]
    pub injector_service: String,
    /// Seconds between trust-bundle reconcile passes.
    #[arg(long, global = true, default_value_t = 30)]
    pub reconcile_interval_seconds: u64,
    /// Embedded: CA certificate (PEM chain) file.
    #[arg(long, global = true, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Embedded: CA key (PEM) file.
    #[arg(long, global = true, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Embedded: directory holding (or receiving) `ca.pem` and `ca-key.pem`.
    #[arg(long, global = true, conflicts_with = "ca_cert")]
    pub ca_dir: Option<PathBuf>,
    /// Embedded: token file, lines `<token> <namespace> <serviceaccount> [<pod>]`.
    #[arg(long, global = true)]
    pub tokens_file: Option<PathBuf>,
    /// Seconds a client has for its TLS handshake and each request header;
    /// also how long an idle keep-alive connection is kept.
    #[arg(long, global = true, default_value_t = 5)]
    pub header_read_timeout_seconds: u64,
    /// Seconds from a request's header to its answer, past which it gets a
    /// 503. Default 30, or 45 with --no-builtin-signer; never at or below the
    /// request's own budget (--api-timeout-seconds plus the signer wait).
    #[arg(long, global = true)]
    pub request_timeout_seconds: Option<u64>,
    /// Connections served at once; more are reset and counted.
    #[arg(long, global = true, default_value_t = 256)]
    pub max_connections: usize,
}

/// Why the command line cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--lifetime-seconds: {0}")]
    Lifetime(#[from] LifetimeError),
    #[error("--signer-wait-seconds {0}: must be 1..=300")]
    SignerWait(u64),
    #[error("--api-timeout-seconds {0}: must be 1..=120")]
    ApiTimeout(u64),
    #[error("--reconcile-interval-seconds {0}: must be at least 1")]
    Interval(u64),
    #[error("embedded mode needs --tokens-file")]
    NoTokens,
    #[error("--header-read-timeout-seconds {0}: must be 1..=300")]
    HeaderTimeout(u64),
    #[error(
        "--request-timeout-seconds {given}: must be above {budget} s, the budget of one \
         request (--api-timeout-seconds plus the signer wait), so a slow signer gets its \
         own answer rather than a bare timeout"
    )]
    RequestTimeout { given: u64, budget: u64 },
    #[error("--max-connections 0: must be at least 1")]
    MaxConnections,
}

/// Where the embedded CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedCa {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Load from the directory, or generate and write there.
    Dir(PathBuf),
    /// Generate, in memory only.
    Generate,
}

/// Typed, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The HTTP server's limits.
    pub limits: meshlite_https::Limits,
    pub trust_domain: TrustDomain,
    pub lifetime: Lifetime,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub enum Mode {
    Cluster(ClusterSettings),
    Embedded(EmbeddedSettings),
}

#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub audience: String,
    pub signer_name: String,
    /// `None`: the built-in signer; `Some(wait)`: an external signer.
    pub external_wait: Option<Duration>,
    pub keep_csrs: bool,
    /// Budget for one request: the API time plus any external-signer wait.
    pub request_deadline: Duration,
    pub ca_namespace: String,
    pub ca_secret: String,
    pub dns_names: Vec<String>,
    pub webhook_configuration: String,
    /// The injector's serving-certificate Secret, in `ca_namespace`.
    pub injector_secret: String,
    /// DNS names of the injector's Service, for its certificate.
    pub injector_dns_names: Vec<String>,
    pub reconcile_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub ca: EmbeddedCa,
    pub tokens_file: PathBuf,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Args {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let lifetime = Lifetime::from_secs(self.lifetime_seconds)?;
        let embedded = self.embedded || self.command == Some(Command::Embedded);
        let mut dns_names =
            crate::server::cluster_dns_names(&self.service_name, &self.service_namespace);
        dns_names.extend(self.extra_dns.iter().cloned());
        let mode = if embedded {
            dns_names.push("localhost".into());
            let ca = match (&self.ca_cert, &self.ca_key, &self.ca_dir) {
                (Some(cert), Some(key), _) => EmbeddedCa::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                (_, _, Some(dir)) => EmbeddedCa::Dir(dir.clone()),
                _ => EmbeddedCa::Generate,
            };
            Mode::Embedded(EmbeddedSettings {
                ca,
                tokens_file: self.tokens_file.clone().ok_or(ConfigError::NoTokens)?,
                dns_names,
                ips: vec![
                    IpAddr::from([127, 0, 0, 1]),
                    IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ],
            })
        } else {
            if !(1..=300).contains(&self.signer_wait_seconds) {
                return Err(ConfigError::SignerWait(self.signer_wait_seconds));
            }
            if !(1..=120).contains(&self.api_timeout_seconds) {
                return Err(ConfigError::ApiTimeout(self.api_timeout_seconds));
            }
            if self.reconcile_interval_seconds == 0 {
                return Err(ConfigError::Interval(0));
            }
            Mode::Cluster(ClusterSettings {
                audience: self.audience.clone(),
                signer_name: self.signer_name.clone(),
                external_wait: self
                    .no_builtin_signer
                    .then(|| Duration::from_secs(self.signer_wait_seconds)),
                keep_csrs: self.keep_csrs,
                request_deadline: Duration::from_secs(
                    self.api_timeout_seconds
                        + if self.no_builtin_signer {
                            self.signer_wait_seconds
                        } else {
                            0
                        },
                ),
                ca_namespace: self.ca_namespace.clone(),
                ca_secret: self.ca_secret.clone(),
                dns_names,
                webhook_configuration: self.webhook_configuration.clone(),
                injector_secret: self.injector_secret.clone(),
                injector_dns_names: crate::server::cluster_dns_names(
                    &self.injector_service,
                    &self.ca_namespace,
                ),
                reconcile_interval: Duration::from_secs(self.reconcile_interval_seconds),
            })
        };
        Ok(Settings {
            listen: self.listen,
            limits: self.limits(&mode)?,
            trust_domain: self.trust_domain.clone(),
            lifetime,
            mode,
        })
    }
}

impl Args {
    fn limits(&self, mode: &Mode) -> Result<meshlite_https::Limits, ConfigError> {
        if !(1..=300).contains(&self.header_read_timeout_seconds) {
            return Err(ConfigError::HeaderTimeout(self.header_read_timeout_seconds));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        // The handler's own budget; the request timeout sits above it.
        let budget = match mode {
            Mode::Cluster(c) => c.request_deadline.as_secs(),
            Mode::Embedded(_) => 0,
        };
        let request_timeout = match self.request_timeout_seconds {
            Some(given) if given <= budget => {
                return Err(ConfigError::RequestTimeout { given, budget });
            }
            Some(given) => given,
            None if self.no_builtin_signer => DEFAULT_REQUEST_TIMEOUT_EXTERNAL.max(budget + 5),
            None => DEFAULT_REQUEST_TIMEOUT.max(budget + 5),
        };
        Ok(meshlite_https::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            request_timeout: Duration::from_secs(request_timeout),
            max_connections: self.max_connections,
        })
    }
}

/// The limits under the default flags with the built-in signer (embedded
/// mode and tests that build [`Settings`] by hand).
pub fn default_limits() -> meshlite_https::Limits {
    meshlite_https::Limits {
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT),
        max_connections: 256,
    }
}

/// `--request-timeout-seconds` with the built-in signer: well above the
/// default 10 s API budget.
pub const DEFAULT_REQUEST_TIMEOUT: u64 = 30;
/// `--request-timeout-seconds` with an external signer: above the default
/// budget of 10 s of API time plus a 30 s signer wait.
pub const DEFAULT_REQUEST_TIMEOUT_EXTERNAL: u64 = 45;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut all = vec!["meshlite-certd"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).unwrap().settings()
    }

    #[test]
    fn defaults_are_the_cluster_mode_with_the_builtin_signer() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen.port(), CERTD_PORT);
        let Mode::Cluster(c) = s.mode else {
            panic!("cluster mode")
        };
        assert_eq!(c.signer_name, SIGNER_NAME);
        assert_eq!(c.audience, TOKEN_AUDIENCE);
        assert_eq!(c.external_wait, None);
        assert!(
            c.dns_names
                .contains(&"meshlite-certd.meshlite-system.svc".to_string())
        );
        assert_eq!(c.injector_secret, "meshlite-injector-tls");
        assert_eq!(
            c.injector_dns_names,
            vec![
                "meshlite-injector.meshlite-system.svc".to_string(),
                "meshlite-injector.meshlite-system.svc.cluster.local".to_string(),
            ]
        );
    }

    #[test]
    fn a_lifetime_outside_the_csr_api_range_is_refused() {
        assert!(matches!(
            parse(&["--lifetime-seconds", "60"]),
            Err(ConfigError::Lifetime(_))
        ));
        assert!(matches!(
            parse(&["--lifetime-seconds", "90000"]),
            Err(ConfigError::Lifetime(_))
        ));
    }

    #[test]
    fn embedded_mode_needs_tokens_and_serves_localhost() {
        assert!(matches!(parse(&["embedded"]), Err(ConfigError::NoTokens)));
        let s = parse(&["--embedded", "--tokens-file", "t", "--ca-dir", "d"]).unwrap();
        let Mode::Embedded(e) = s.mode else {
            panic!("embedded")
        };
        assert_eq!(e.ca, EmbeddedCa::Dir("d".into()));
        assert!(e.dns_names.contains(&"localhost".to_string()));
    }

    #[test]
    fn the_http_limits_default_to_the_documented_values() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.limits, default_limits());
        assert_eq!(s.limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(s.limits.request_timeout, Duration::from_secs(30));
        assert_eq!(s.limits.max_connections, 256);
        let s = parse(&["--no-builtin-signer"]).unwrap();
        assert_eq!(s.limits.request_timeout, Duration::from_secs(45));
    }

    #[test]
    fn the_request_timeout_stays_above_the_signer_wait() {
        let s = parse(&["--no-builtin-signer", "--signer-wait-seconds", "60"]).unwrap();
        assert_eq!(s.limits.request_timeout, Duration::from_secs(75));
        assert!(matches!(
            parse(&["--no-builtin-signer", "--request-timeout-seconds", "40"]),
            Err(ConfigError::RequestTimeout {
                given: 40,
                budget: 40
            })
        ));
        assert!(parse(&["--request-timeout-seconds", "11"]).is_ok());
    }

    #[test]
    fn no_builtin_signer_waits_for_an_external_one() {
        let s = parse(&["--no-builtin-signer", "--signer-name", "example.com/x"]).unwrap();
        let Mode::Cluster(c) = s.mode else {
            panic!("cluster")
        };
        assert_eq!(c.external_wait, Some(Duration::from_secs(30)));
    }
}
