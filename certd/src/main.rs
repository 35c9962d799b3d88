//! `meshlite-certd`: parse the command line, install the crypto provider, and
//! run certd in cluster or embedded mode until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use meshlite_certd::app;
use meshlite_certd::config::{Args, Mode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Exactly one provider in the process (DESIGN §5); installing twice is harmless.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = Args::parse();
    let settings = args.settings()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let running = match &settings.mode {
        Mode::Embedded(embedded) => app::start_embedded(&settings, embedded, listener).await?,
        Mode::Cluster(cluster) => {
            let client = kube::Client::try_default()
                .await
                .context("building the Kubernetes client (in-cluster config or kubeconfig)")?;
            app::start_cluster(&settings, cluster, client, listener).await?
        }
    };
    tracing::info!(addr = %running.addr, "meshlite-certd serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    drop(running);
    Ok(())
}
