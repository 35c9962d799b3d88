//! `meshlite-injector`: parse flags, install the crypto provider, serve the webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use meshlite_contract::duration::parse as parse_duration;
use meshlite_injector::metrics::Metrics;
use meshlite_injector::tls::ReloadingCert;
use meshlite_injector::webhook::KubeNamespaces;
use meshlite_injector::{InjectorConfig, Webhook};

#[derive(Debug, Parser)]
#[command(
    name = "meshlite-injector",
    version,
    about = "meshlite's mutating admission webhook"
)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "MESHLITE_INJECTOR_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], meshlite_contract::INJECTOR_PORT)))]
    listen: SocketAddr,
    /// PEM certificate chain of the webhook's serving certificate.
    #[arg(long, env = "MESHLITE_INJECTOR_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "MESHLITE_INJECTOR_TLS_KEY")]
    tls_key: PathBuf,
    /// Injector config file (YAML or JSON); defaults apply without one.
    #[arg(long, env = "MESHLITE_INJECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// How often to check the certificate files for changes.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    cert_reload_interval: u64,
    /// Time a client has for its TLS handshake and each request header; also
    /// how long an idle keep-alive connection is kept.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Time from a request's header to its answer; past it the client gets a
    /// JSON 503. Below the webhook's `timeoutSeconds` (10 in deploy/webhook.yaml),
    /// so the API server hears a reason rather than its own timeout.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Bound on each Kubernetes API call made while answering a review (the
    /// namespace read); must be below --request-timeout. A read that takes
    /// longer denies the pod with a reason, and its controller retries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    api_timeout: Duration,
    /// Connections served at once; more are reset and counted.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One provider for the whole process (kube's client included); a second
    // install can only fail if something already installed aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();

    let mut config = match &args.config {
        Some(path) => InjectorConfig::load(path)?,
        None => InjectorConfig::default(),
    };
    let cert = ReloadingCert::new(args.tls_cert.clone(), args.tls_key.clone())?;
    let tls = cert.server_config()?;
    tokio::spawn(
        cert.clone()
            .watch(Duration::from_secs(args.cert_reload_interval.max(1))),
    );

    anyhow::ensure!(
        !args.api_timeout.is_zero() && args.api_timeout < args.request_timeout,
        "--api-timeout {:?} must be above zero and below --request-timeout {:?}",
        args.api_timeout,
        args.request_timeout
    );
    // Every call this client makes is bounded too (connect, and each read and
    // write), below the answer's own bound, so none can hang a review.
    let mut kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or kubeconfig)")?;
    kube_config.connect_timeout = Some(args.api_timeout);
    kube_config.read_timeout = Some(args.api_timeout);
    kube_config.write_timeout = Some(args.api_timeout);
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let refusal = resolve_legacy_mode(&client, &mut config).await?;
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections 0: must be at least 1"
    );
    let metrics = Arc::new(Metrics::default());
    let gate = metrics.gate(meshlite_https::Limits {
        header_read_timeout: args.header_read_timeout,
        request_timeout: args.request_timeout,
        max_connections: args.max_connections,
    });
    let hook = Webhook {
        config: Arc::new(config),
        namespaces: Arc::new(KubeNamespaces(kube::Api::<Namespace>::all(client.clone()))),
        metrics,
        refusal: refusal.map(Into::into),
        installed: Arc::new(AtomicBool::new(false)),
        api_timeout: args.api_timeout,
    };
    tokio::spawn(meshlite_injector::webhook::watch_installed(
        client.clone(),
        hook.installed.clone(),
        Duration::from_secs(10),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving the admission webhook");
    meshlite_https::serve(listener, tls, hook.router(), gate, shutdown()).await;
    Ok(())
}

/// Reads the API server's version (retrying for a minute: the injector cannot
/// choose the sidecar mode without it) and settles `legacyMode`.
async fn resolve_legacy_mode(
    client: &kube::Client,
    config: &mut InjectorConfig,
) -> anyhow::Result<Option<String>> {
    let mut attempt = 0;
    let info = loop {
        match client.apiserver_version().await {
            Ok(info) => break info,
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, "reading the API server's version; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                return Err(e)
                    .context("reading the API server's version (/version) to choose legacyMode");
            }
        }
    };
    let version = meshlite_injector::config::parse_server_version(&info.major, &info.minor)
        .with_context(|| {
            format!(
                "the API server's version {:?}.{:?} is not a number; set legacyMode to true or false",
                info.major, info.minor
            )
        })?;
    let setting = config.legacy_mode;
    let refusal = config.resolve_legacy_mode(version);
    match &refusal {
        None => tracing::info!(
            server = %info.git_version,
            ?setting,
            sidecar = if config.legacy() { "legacy (regular container)" } else { "native" },
            "sidecar mode chosen"
        ),
        Some(r) => tracing::error!(server = %info.git_version, "{r}"),
    }
    Ok(refusal)
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_answer_before_the_api_server_gives_up() {
        let args = Args::try_parse_from(["meshlite-injector", "--tls-cert", "c", "--tls-key", "k"])
            .expect("the required flags are given");
        let webhook = include_str!("../../deploy/webhook.yaml");
        let timeout_seconds = webhook
            .lines()
            .find_map(|l| l.trim().strip_prefix("timeoutSeconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("deploy/webhook.yaml sets timeoutSeconds");
        assert!(
            args.request_timeout < Duration::from_secs(timeout_seconds),
            "--request-timeout {:?} must be below the webhook's timeoutSeconds {timeout_seconds}",
            args.request_timeout
        );
        assert!(args.api_timeout < args.request_timeout);
        assert_eq!(args.api_timeout, Duration::from_secs(5));
        assert_eq!(args.request_timeout, Duration::from_secs(8));
        assert_eq!(args.header_read_timeout, Duration::from_secs(5));
        assert_eq!(args.max_connections, 256);
    }
}
