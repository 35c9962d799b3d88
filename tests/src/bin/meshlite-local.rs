//! `meshlite-local`: meshlite on one machine, no cluster.
//!
//! Starts an "app" (an echo server), a server-side proxy in front of it and a
//! client-side proxy, all on loopback in explicit mode, with certificates from
//! a development CA made on the spot. It sends a few messages through the pair
//! over TLS 1.3 mTLS, prints who saw whom, and then keeps running so you can
//! try it yourself (`--once` exits after the demo).

use anyhow::Context;
use clap::Parser;
use meshlite_proxy::testing::{TestCa, echo_server};
use meshlite_proxy::{Config, Proxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(about = "Run a meshlite proxy pair locally, with no cluster")]
struct Args {
    /// Exit after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/demo/sa/server";

fn metric_lines(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
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

    let ca = TestCa::new("meshlite local dev CA");
    let app = echo_server().await;

    let server = Proxy::new(Config::explicit(Default::default(), None, Some(app)));
    server
        .creds()
        .publish(ca.credentials(SERVER))
        .context("server credentials")?;
    let server = server.bind().await.context("binding the server proxy")?;
    let inbound = server.inbound_addrs()[0];

    let client = Proxy::new(Config::explicit(Default::default(), Some(inbound), None));
    client
        .creds()
        .publish(ca.credentials(CLIENT))
        .context("client credentials")?;
    let client = client.bind().await.context("binding the client proxy")?;
    let outbound = client.outbound_addrs()[0];
    let (server_metrics, client_metrics) = (server.metrics().clone(), client.metrics().clone());
    let (server_admin, client_admin) = (server.admin_addr(), client.admin_addr());

    let stop = tokio_util::sync::CancellationToken::new();
    let s1 = stop.clone();
    let s2 = stop.clone();
    let t1 = tokio::spawn(server.run(async move { s1.cancelled().await }));
    let t2 = tokio::spawn(client.run(async move { s2.cancelled().await }));

    println!(
        "meshlite local: app {app} <- server proxy {inbound} <= mTLS <= client proxy {outbound}"
    );
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
    for line in metric_lines(&client_metrics.encode(), "meshlite_mtls_connections_total") {
        println!("  client proxy saw: {line}");
    }
    for line in metric_lines(&server_metrics.encode(), "meshlite_mtls_connections_total") {
        println!("  server proxy saw: {line}");
    }

    if args.once {
        stop.cancel();
    } else {
        println!(
            "\nTry it: `nc {} {}` (type, and the app echoes over mTLS).\nMetrics: http://{}/metrics (client), http://{}/metrics (server). Ctrl-C to stop.",
            outbound.ip(),
            outbound.port(),
            client_admin.map(|a| a.to_string()).unwrap_or_default(),
            server_admin.map(|a| a.to_string()).unwrap_or_default(),
        );
        tokio::signal::ctrl_c().await?;
        stop.cancel();
    }
    let _ = tokio::join!(t1, t2);
    Ok(())
}
