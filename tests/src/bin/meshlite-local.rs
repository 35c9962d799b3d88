//! `meshlite-local`: meshlite on one machine, no cluster.
//!
//! Starts certd in embedded mode (its signer in-process, a static token file in
//! place of TokenReview), an "app" (an echo server), a server-side proxy in front
//! of it and a client-side proxy, all on loopback in explicit mode. Each proxy
//! gets its certificate from certd over certd's real HTTPS API, with the same
//! client code it uses in a cluster: a key generated in memory, a CSR, and a
//! bearer token. It then sends traffic through the pair over TLS 1.3 mTLS,
//! prints who saw whom, and keeps running so you can try it yourself (`--once`
//! exits after the demo).

use anyhow::Context;
use clap::Parser;
use meshlite_contract::{SpiffeId, TrustDomain};
use meshlite_proxy::config::CredSource;
use meshlite_proxy::identity_client::ClientConfig;
use meshlite_proxy::naming::NamingSource;
use meshlite_proxy::testing::echo_server;
use meshlite_proxy::{Config, Proxy};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(about = "Run certd and a meshlite proxy pair locally, with no cluster")]
struct Args {
    /// Exit after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

fn metric_lines(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// Starts embedded certd with a token per workload; returns it and its URL.
async fn start_certd(
    dir: &Path,
    td: &TrustDomain,
) -> anyhow::Result<(meshlite_certd::app::Running, http::Uri)> {
    use meshlite_certd::config::{EmbeddedCa, EmbeddedSettings, Mode, Settings};
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "local-client-token demo client\nlocal-server-token demo server\n",
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let embedded = EmbeddedSettings {
        ca: EmbeddedCa::Dir(dir.join("ca")),
        tokens_file: tokens,
        dns_names: vec!["localhost".into()],
        ips: vec![addr.ip()],
    };
    let settings = Settings {
        listen: addr,
        limits: meshlite_certd::config::default_limits(),
        trust_domain: td.clone(),
        lifetime: meshlite_certd::approval::Lifetime::from_secs(3600)?,
        mode: Mode::Embedded(embedded.clone()),
    };
    let running = meshlite_certd::app::start_embedded(&settings, &embedded, listener)
        .await
        .context("starting embedded certd")?;
    Ok((running, format!("https://{addr}").parse()?))
}

fn certd_source(
    dir: &Path,
    url: &http::Uri,
    td: &TrustDomain,
    sa: &str,
) -> anyhow::Result<CredSource> {
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, format!("local-{sa}-token"))?;
    Ok(CredSource::Certd(ClientConfig {
        url: url.clone(),
        token_file,
        bundle_file: dir.join("ca").join(meshlite_certd::app::CA_DIR_CERT),
        identity: SpiffeId::new(td.clone(), "demo", sa)?,
        timeout: Duration::from_secs(10),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    meshlite_proxy::tls::install_provider();

    let dir = tempfile::tempdir()?;
    let td = TrustDomain::default();
    let (certd, url) = start_certd(dir.path(), &td).await?;
    println!(
        "certd (embedded) at {url}; CA in {}",
        dir.path().join("ca").display()
    );
    let app = echo_server().await;

    let mut cfg = Config::explicit(td.clone(), None, Some(app));
    cfg.creds = certd_source(dir.path(), &url, &td, "server")?;
    let server = Proxy::new(cfg)
        .bind()
        .await
        .context("binding the server proxy")?;
    let inbound = server.inbound_addrs()[0];

    let mut cfg = Config::explicit(td.clone(), Some(inbound), None);
    cfg.creds = certd_source(dir.path(), &url, &td, "client")?;
    // There is no cluster for certd to name the upstream from, so the client
    // pins it, as `meshlite-proxy run --outbound-expect-identity` does: only
    // the server proxy's identity may answer, and never in plaintext.
    let server_id = SpiffeId::new(td.clone(), "demo", "server")?;
    cfg.naming.source = NamingSource::Pinned(vec![server_id.clone()]);
    let client = Proxy::new(cfg)
        .bind()
        .await
        .context("binding the client proxy")?;
    let outbound = client.outbound_addrs()[0];
    let (server_creds, client_creds) = (server.creds().clone(), client.creds().clone());
    let (server_metrics, client_metrics) = (server.metrics().clone(), client.metrics().clone());
    let (server_admin, client_admin) = (server.admin_addr(), client.admin_addr());

    let stop = tokio_util::sync::CancellationToken::new();
    let (s1, s2) = (stop.clone(), stop.clone());
    let t1 = tokio::spawn(server.run(async move { s1.cancelled().await }));
    let t2 = tokio::spawn(client.run(async move { s2.cancelled().await }));

    // Readiness: both proxies hold a certificate from certd.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server_creds.current().is_none() || client_creds.current().is_none() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the proxies did not get certificates from certd"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (who, c) in [("client", &client_creds), ("server", &server_creds)] {
        let cur = c.current().context("certificate")?;
        let left = cur
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        println!(
            "  {who} proxy: certificate for {} from certd, valid for {}s more",
            cur.identity,
            left.as_secs()
        );
    }

    println!(
        "meshlite local: app {app} <- server proxy {inbound} <= mTLS <= client proxy {outbound}"
    );
    println!("  the client proxy expects {server_id} upstream (--outbound-expect-identity)");
    for msg in [
        "hello over mTLS",
        "a second connection resumes the TLS session",
    ] {
        let mut s = tokio::net::TcpStream::connect(outbound).await?;
        s.write_all(msg.as_bytes()).await?;
        s.shutdown().await?;
        let mut echo = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut echo))
            .await
            .context("no answer through the proxies")??;
        anyhow::ensure!(echo == msg, "echo mismatch: sent {msg:?}, got {echo:?}");
        println!("  sent {msg:?} -> echoed back intact");
    }
    let seen = metric_lines(&client_metrics.encode(), "meshlite_mtls_connections_total");
    anyhow::ensure!(!seen.is_empty(), "no mTLS connection was recorded");
    for line in seen {
        println!("  client proxy saw: {line}");
    }
    for line in metric_lines(&server_metrics.encode(), "meshlite_mtls_connections_total") {
        println!("  server proxy saw: {line}");
    }

    if !args.once {
        println!(
            "\nTry it: `nc {} {}` (type, and the app echoes over mTLS).\nMetrics: http://{}/metrics (client), http://{}/metrics (server). Ctrl-C to stop.",
            outbound.ip(),
            outbound.port(),
            client_admin.map(|a| a.to_string()).unwrap_or_default(),
            server_admin.map(|a| a.to_string()).unwrap_or_default(),
        );
        tokio::signal::ctrl_c().await?;
    }
    stop.cancel();
    let _ = tokio::join!(t1, t2);
    drop(certd);
    Ok(())
}
