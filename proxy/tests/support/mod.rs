//! Shared set-up for the proxy's integration tests: a meshed pair on loopback.

#![allow(dead_code)] // each test file uses a different subset

use meshlite_contract::TrustDomain;
use meshlite_proxy::config::Config;
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::tls::Credentials;
use meshlite_proxy::{Bound, Proxy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

/// A running proxy and the handles a test needs.
pub struct Running {
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub creds: meshlite_proxy::tls::CredStore,
    pub metrics: Arc<meshlite_proxy::metrics::Metrics>,
    pub policy: meshlite_proxy::policy::PolicyStore,
    pub stop: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}

pub fn td() -> TrustDomain {
    TrustDomain::default()
}

/// Starts a proxy with `config`, publishing `creds` if given.
pub async fn start(config: Config, creds: Option<Credentials>) -> Running {
    meshlite_proxy::tls::install_provider();
    let proxy = Proxy::new(config);
    if let Some(c) = creds {
        proxy
            .creds()
            .publish(c)
            .expect("test credentials are valid");
    }
    let bound: Bound = proxy.bind().await.expect("bind loopback");
    let stop = CancellationToken::new();
    Running {
        outbound: bound.outbound_addrs().first().copied(),
        inbound: bound.inbound_addrs().first().copied(),
        admin: bound.admin_addr().expect("admin is enabled"),
        creds: bound.creds().clone(),
        metrics: bound.metrics().clone(),
        policy: bound.policy().clone(),
        stop: stop.clone(),
        done: tokio::spawn(bound.run(async move { stop.cancelled().await })),
    }
}

/// A server-side proxy (inbound only) in front of `backend`.
pub async fn server_proxy(
    ca: &TestCa,
    backend: SocketAddr,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let mut cfg = Config::explicit(td(), None, Some(backend));
    tweak(&mut cfg);
    start(cfg, Some(ca.credentials(SERVER_ID))).await
}

/// A client-side proxy (outbound only) towards `upstream`.
pub async fn client_proxy(
    ca: &TestCa,
    upstream: SocketAddr,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let mut cfg = Config::explicit(td(), Some(upstream), None);
    tweak(&mut cfg);
    start(cfg, Some(ca.credentials(CLIENT_ID))).await
}

/// Sends `msg`, half-closes, and reads the whole answer.
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timed out reading the answer"))??;
    Ok(out)
}

/// Reads a counter or gauge value from Prometheus text: the sum over every
/// series of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A bare HTTP/1.1 GET: the status and the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}
