//! Wiring: builds the reviewer, the signing backend and the API for a mode,
//! and starts the server (and, in a cluster, the trust reconcile loop).
//! `main.rs` and the tests both start certd through here.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{AppState, router};
use crate::ca::{Ca, CaError};
use crate::config::{ClusterSettings, EmbeddedCa, EmbeddedSettings, Settings};
use crate::kube::bootstrap::{self, BootstrapError, CaSecretRef};
use crate::kube::signer::Signing;
use crate::kube::trust::TrustDistributor;
use crate::kube::webhook_cert::WebhookCert;
use crate::kube::{KubeSigner, KubeTokenReviewer};
use crate::metrics::Metrics;
use crate::naming::{ClusterNaming, NoNaming};
use crate::review::{StaticTokens, TokenFileError};
use crate::server::{ServerError, ServingCert, tls_config};
use crate::signer::{EmbeddedSigner, SharedCa};
use meshlite_https::serve;

/// File names in an embedded CA directory.
pub const CA_DIR_CERT: &str = "ca.pem";
pub const CA_DIR_KEY: &str = "ca-key.pem";

/// Why certd could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("CA: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AppError + '_ {
    move |source| AppError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A running certd; dropping it stops it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub ca: SharedCa,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Tasks that run until the server stops (the naming watches).
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// PEM of the roots to trust (certd's own certificate chains to them).
    pub fn bundle_pem(&self) -> String {
        self.ca.get().bundle_pem().to_string()
    }

    /// Waits until the server stops (it only stops on shutdown).
    pub async fn wait(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        for t in self.background.drain(..) {
            t.abort();
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        for t in self.tasks.iter().chain(&self.background) {
            t.abort();
        }
    }
}

/// Starts certd against the Kubernetes API behind `client`.
pub async fn start_cluster(
    settings: &Settings,
    cluster: &ClusterSettings,
    client: kube::Client,
    listener: TcpListener,
) -> Result<Running, AppError> {
    let ca_ref = CaSecretRef {
        namespace: cluster.ca_namespace.clone(),
        name: cluster.ca_secret.clone(),
    };
    let ca = bootstrap::ensure(&client, &ca_ref, settings.trust_domain.as_str()).await?;
    let shared = SharedCa::new(ca);
    let tls = tls_config(ServingCert::new(
        shared.clone(),
        cluster.dns_names.clone(),
        vec![],
    )?)?;
    let metrics = Arc::new(Metrics::default());
    metrics.set_ca_not_after(shared.get().not_after().unix_timestamp());
    let signing = match cluster.external_wait {
        None => Signing::BuiltIn(shared.clone()),
        Some(wait) => Signing::External { wait },
    };
    let (naming, naming_tasks) =
        ClusterNaming::start(client.clone(), settings.trust_domain.clone());
    let state = Arc::new(AppState {
        naming,
        naming_reviews: Default::default(),
        reviewer: Arc::new(KubeTokenReviewer::new(
            client.clone(),
            cluster.audience.clone(),
            settings.trust_domain.clone(),
        )),
        signer: Arc::new(KubeSigner::new(
            client.clone(),
            cluster.signer_name.clone(),
            settings.lifetime,
            signing,
            cluster.keep_csrs,
            shared.clone(),
        )),
        metrics: metrics.clone(),
        trust_domain: settings.trust_domain.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        deadline: Some(cluster.request_deadline),
    });
    let injector_cert = WebhookCert {
        namespace: ca_ref.namespace.clone(),
        name: cluster.injector_secret.clone(),
        dns: cluster.injector_dns_names.clone(),
    };
    let distributor = TrustDistributor {
        client,
        ca_ref,
        injector_cert,
        ca: shared.clone(),
        metrics: metrics.clone(),
        webhook: cluster.webhook_configuration.clone(),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let (stop_trust_tx, stop_trust_rx) = oneshot::channel::<()>();
    let addr = listener.local_addr().map_err(io(Path::new("listener")))?;
    let interval = cluster.reconcile_interval;
    let trust = tokio::spawn(async move {
        distributor
            .run(interval, async {
                let _ = stop_trust_rx.await;
            })
            .await
    });
    let gate = metrics.gate(settings.limits);
    let server = tokio::spawn(async move {
        serve(listener, tls, router(state), gate, async {
            let _ = rx.await;
        })
        .await;
        let _ = stop_trust_tx.send(());
    });
    Ok(Running {
        addr,
        ca: shared,
        metrics,
        shutdown: Some(tx),
        tasks: vec![server, trust],
        background: naming_tasks,
    })
}

/// Loads or creates the embedded CA.
pub fn embedded_ca(source: &EmbeddedCa, trust_domain: &str) -> Result<Ca, AppError> {
    match source {
        EmbeddedCa::Files { cert, key } => {
            let cert_pem = std::fs::read_to_string(cert).map_err(io(cert))?;
            let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
            Ok(Ca::from_pem(&cert_pem, &key_pem, None)?)
        }
        EmbeddedCa::Dir(dir) => {
            let cert = dir.join(CA_DIR_CERT);
            let key = dir.join(CA_DIR_KEY);
            if cert.exists() && key.exists() {
                return embedded_ca(&EmbeddedCa::Files { cert, key }, trust_domain);
            }
            let ca = Ca::generate_root(trust_domain)?;
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            write_private(&key, ca.key_pem())?;
            std::fs::write(&cert, ca.cert_pem()).map_err(io(&cert))?;
            tracing::info!(dir = %dir.display(), "generated a CA; proxies trust {CA_DIR_CERT}");
            Ok(ca)
        }
        EmbeddedCa::Generate => Ok(Ca::generate_root(trust_domain)?),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), AppError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    // The CA key must not be readable by anyone else on the machine.
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(contents.as_bytes()).map_err(io(path))
}

/// Starts certd with the in-process signer and static tokens.
pub async fn start_embedded(
    settings: &Settings,
    embedded: &EmbeddedSettings,
    listener: TcpListener,
) -> Result<Running, AppError> {
    let ca = embedded_ca(&embedded.ca, settings.trust_domain.as_str())?;
    let tokens = StaticTokens::load(&embedded.tokens_file, &settings.trust_domain)?;
    if tokens.is_empty() {
        tracing::warn!(file = %embedded.tokens_file.display(), "the token file has no tokens; every request will be refused");
    }
    start_embedded_with(
        settings,
        ca,
        tokens,
        &embedded.dns_names,
        &embedded.ips,
        listener,
    )
}

/// Tests and benchmarks: embedded certd on a loopback port of its own, in
/// the default trust domain, its CA in `ca_dir` (generated there if absent),
/// its callers in `tokens_file`, issuing leaves valid for `lifetime` (which
/// may be below the CSR API's minimum). Its URL is `https://<addr>`.
#[cfg(feature = "test-util")]
pub async fn start_loopback(
    ca_dir: &Path,
    tokens_file: &Path,
    lifetime: std::time::Duration,
) -> Result<Running, AppError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io(Path::new("127.0.0.1:0")))?;
    let addr = listener.local_addr().map_err(io(Path::new("listener")))?;
    let embedded = EmbeddedSettings {
        ca: EmbeddedCa::Dir(ca_dir.to_path_buf()),
        tokens_file: tokens_file.to_path_buf(),
        dns_names: vec!["localhost".into()],
        ips: vec![addr.ip()],
    };
    let settings = Settings {
        listen: addr,
        limits: crate::config::default_limits(),
        trust_domain: meshlite_contract::TrustDomain::default(),
        lifetime: crate::approval::Lifetime::for_tests(lifetime),
        mode: crate::config::Mode::Embedded(embedded.clone()),
    };
    start_embedded(&settings, &embedded, listener).await
}

/// Starts embedded mode from already-loaded parts (tests use this directly).
pub fn start_embedded_with(
    settings: &Settings,
    ca: Ca,
    tokens: StaticTokens,
    dns_names: &[String],
    ips: &[std::net::IpAddr],
    listener: TcpListener,
) -> Result<Running, AppError> {
    let shared = SharedCa::new(ca);
    let tls = tls_config(ServingCert::new(
        shared.clone(),
        dns_names.to_vec(),
        ips.to_vec(),
    )?)?;
    let metrics = Arc::new(Metrics::default());
    metrics.set_ca_not_after(shared.get().not_after().unix_timestamp());
    let state = Arc::new(AppState {
        reviewer: Arc::new(tokens),
        naming: Arc::new(NoNaming),
        naming_reviews: Default::default(),
        signer: Arc::new(EmbeddedSigner::new(shared.clone(), settings.lifetime)),
        metrics: metrics.clone(),
        trust_domain: settings.trust_domain.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        deadline: None,
    });
    let addr = listener.local_addr().map_err(io(Path::new("listener")))?;
    let (tx, rx) = oneshot::channel::<()>();
    let gate = metrics.gate(settings.limits);
    let server = tokio::spawn(async move {
        serve(listener, tls, router(state), gate, async {
            let _ = rx.await;
        })
        .await
    });
    Ok(Running {
        addr,
        ca: shared,
        metrics,
        shutdown: Some(tx),
        tasks: vec![server],
        background: Vec::new(),
    })
}
