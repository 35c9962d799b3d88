//! The proxy's certificate client against certd in cluster mode, which talks to
//! the fake Kubernetes API server: proxy → certd → TokenReview + CSR API →
//! certificate, then a real mTLS connection made with it. And what happens
//! when the API server goes away and comes back.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::{SpiffeId, TOKEN_AUDIENCE, TrustDomain};
use meshlite_proxy::config::CredSource;
use meshlite_proxy::identity_client::ClientConfig;
use meshlite_proxy::testing::echo_server;
use meshlite_proxy::{Config, Proxy};
use meshlite_tests::fake_apiserver::FakeApiServer;
use meshlite_tests::fake_apiserver::certd::start_cluster_certd;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn source(dir: &Path, port: u16, sa: &str) -> CredSource {
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, format!("{sa}-token")).unwrap();
    CredSource::Certd(ClientConfig {
        // certd's serving certificate names `localhost` (--extra-dns below).
        url: format!("https://localhost:{port}").parse().unwrap(),
        token_file,
        bundle_file: dir.join("bundle.pem"),
        identity: SpiffeId::new(TrustDomain::default(), "shop", sa).unwrap(),
        timeout: Duration::from_secs(5),
    })
}

async fn round_trip(addr: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_get_certificates_through_the_csr_api_and_survive_an_api_server_outage() {
    meshlite_proxy::tls::install_provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_service_account_token("client-token", "shop", "client", TOKEN_AUDIENCE);
    fake.add_service_account_token("server-token", "shop", "server", TOKEN_AUDIENCE);
    let certd = start_cluster_certd(&fake, &["--extra-dns", "localhost"])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The trust bundle, as the ConfigMap mount would hold it.
    std::fs::write(dir.path().join("bundle.pem"), certd.bundle_pem()).unwrap();
    let port = certd.addr.port();

    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.creds = source(dir.path(), port, "server");
    let server = Proxy::new(cfg).bind().await.unwrap();
    let mut cfg = Config::explicit(
        TrustDomain::default(),
        Some(server.inbound_addrs()[0]),
        None,
    );
    cfg.creds = source(dir.path(), port, "client");
    cfg.outbound.as_mut().unwrap().mode = meshlite_proxy::config::OutboundMode::Strict;
    let client = Proxy::new(cfg).bind().await.unwrap();
    let entry = client.outbound_addrs()[0];
    let (ccreds, screds) = (client.creds().clone(), server.creds().clone());
    let cmetrics = client.metrics().clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let (s1, s2) = (stop.clone(), stop.clone());
    tokio::spawn(server.run(async move { s1.cancelled().await }));
    tokio::spawn(client.run(async move { s2.cancelled().await }));

    until("both proxies hold a certificate", 20, || {
        ccreds.current().is_some() && screds.current().is_some()
    })
    .await;
    assert_eq!(
        ccreds.current().unwrap().identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    // The certificate came through the CSR API, which certd cleaned up after.
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.resource == "certificatesigningrequests" && r.verb == "create"),
        "no CSR object was created"
    );
    assert_eq!(round_trip(entry, b"over mTLS").await, b"over mTLS");

    // The API server goes away: certd can no longer issue, but the proxies
    // keep their valid certificates and keep serving.
    fake.set_down(true);
    assert_eq!(
        round_trip(entry, b"during the outage").await,
        b"during the outage"
    );

    // A proxy that starts during the outage cannot get a certificate, is not
    // ready, retries with backoff, and gets one once the API server is back.
    let mut cfg = Config::explicit(TrustDomain::default(), Some(entry), None);
    cfg.creds = source(dir.path(), port, "client");
    let late = Proxy::new(cfg).bind().await.unwrap();
    let (lcreds, lmetrics) = (late.creds().clone(), late.metrics().clone());
    let s3 = stop.clone();
    tokio::spawn(late.run(async move { s3.cancelled().await }));
    until("a failed attempt is recorded", 20, || {
        // Every renewal attempt that did not succeed: certd answers 503, or,
        // while kube-client retries the API server, not within the timeout.
        let text = lmetrics.encode();
        let all = metric(&text, "meshlite_certificate_renewals_total", "result=");
        all - metric(
            &text,
            "meshlite_certificate_renewals_total",
            "result=\"ok\"",
        ) >= 1.0
    })
    .await;
    assert!(
        lcreds.current().is_none(),
        "no certificate while the API server is down"
    );
    fake.set_down(false);
    until(
        "the late proxy gets a certificate after the outage",
        30,
        || lcreds.current().is_some(),
    )
    .await;
    assert_eq!(
        metric(
            &cmetrics.encode(),
            "meshlite_certificate_renewals_total",
            "result=\"ok\""
        ),
        1.0
    );
    stop.cancel();
}
