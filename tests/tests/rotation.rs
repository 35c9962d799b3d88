//! Rotation under traffic: a proxy pair whose certificates (from embedded
//! certd, through the proxies' own certificate client) live four seconds, so
//! they renew every two seconds or so, while a long-lived connection and a
//! stream of new connections run. Nothing may fail.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::{SpiffeId, TrustDomain};
use meshlite_proxy::config::CredSource;
use meshlite_proxy::identity_client::ClientConfig;
use meshlite_proxy::testing::echo_server;
use meshlite_proxy::{Config, Proxy};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIFETIME: Duration = Duration::from_secs(4);
const RUN: Duration = Duration::from_secs(12);

fn certd_source(dir: &Path, url: &http::Uri, sa: &str) -> CredSource {
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, format!("token-{sa}")).unwrap();
    CredSource::Certd(ClientConfig {
        url: url.clone(),
        token_file,
        bundle_file: dir.join("ca").join(meshlite_certd::app::CA_DIR_CERT),
        identity: SpiffeId::new(TrustDomain::default(), "shop", sa).unwrap(),
        timeout: Duration::from_secs(5),
    })
}

fn renewals_ok(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("meshlite_certificate_renewals_total") && l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Embedded certd issuing [`LIFETIME`] certificates, with tokens for the
/// `client` and `server` service accounts, its CA in `dir/ca`.
async fn start_certd(dir: &Path) -> (meshlite_certd::app::Running, http::Uri) {
    meshlite_proxy::tls::install_provider();
    std::fs::write(
        dir.join("tokens"),
        "token-client shop client\ntoken-server shop server\n",
    )
    .unwrap();
    let certd = meshlite_certd::app::start_loopback(&dir.join("ca"), &dir.join("tokens"), LIFETIME)
        .await
        .unwrap();
    let url: http::Uri = format!("https://{}", certd.addr).parse().unwrap();
    (certd, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_under_traffic_with_zero_failed_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (_certd, url) = start_certd(dir.path()).await;

    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.creds = certd_source(dir.path(), &url, "server");
    cfg.reload_interval = Duration::from_millis(100);
    let server = Proxy::new(cfg).bind().await.unwrap();
    let mut cfg = Config::explicit(
        TrustDomain::default(),
        Some(server.inbound_addrs()[0]),
        None,
    );
    cfg.creds = certd_source(dir.path(), &url, "client");
    cfg.reload_interval = Duration::from_millis(100);
    // Strict: a failed handshake must show up as a failed connection, not as a
    // silent fallback to plaintext.
    cfg.outbound.as_mut().unwrap().mode = meshlite_proxy::config::OutboundMode::Strict;
    let client = Proxy::new(cfg).bind().await.unwrap();
    let entry = client.outbound_addrs()[0];
    let (ccreds, screds) = (client.creds().clone(), server.creds().clone());
    let (cmetrics, smetrics) = (client.metrics().clone(), server.metrics().clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let (s1, s2) = (stop.clone(), stop.clone());
    tokio::spawn(server.run(async move { s1.cancelled().await }));
    tokio::spawn(client.run(async move { s2.cancelled().await }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ccreds.current().is_none() || screds.current().is_none() {
        assert!(Instant::now() < deadline, "no certificates from certd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let end = Instant::now() + RUN;
    // One long-lived connection, a message every 100 ms.
    let long = tokio::spawn(async move {
        let mut s = TcpStream::connect(entry).await.unwrap();
        let mut n = 0u32;
        while Instant::now() < end {
            let msg = format!("long-{n:06}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n
    });
    // A stream of new connections, each a full or resumed handshake.
    let churn = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while Instant::now() < end {
            let r = async {
                let mut s = TcpStream::connect(entry).await?;
                s.write_all(b"new connection").await?;
                s.shutdown().await?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            }
            .await;
            match r {
                Ok(out) if out == b"new connection" => ok += 1,
                other => failed.push(format!(
                    "{:?}",
                    other.map(|o| String::from_utf8_lossy(&o).into_owned())
                )),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, failed)
    });
    // Watch the certificates change.
    let mut seen = BTreeSet::new();
    while Instant::now() < end {
        if let (Some(c), Some(s)) = (ccreds.current(), screds.current()) {
            seen.insert((c.not_after, s.not_after));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = long.await.unwrap();
    let (ok, failed) = churn.await.unwrap();
    stop.cancel();

    assert!(
        failed.is_empty(),
        "{} of {} new connections failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 50, "only {ok} new connections ran");
    assert!(
        messages > 50,
        "the long-lived connection carried only {messages} messages"
    );
    let (cr, sr) = (
        renewals_ok(&cmetrics.encode()),
        renewals_ok(&smetrics.encode()),
    );
    assert!(cr >= 4.0 && sr >= 4.0, "renewals: client {cr}, server {sr}");
    assert!(
        seen.len() >= 4,
        "only {} certificate generations seen",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_trust_bundle_file_does_not_stop_renewal_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_certd, url) = start_certd(dir.path()).await;
    // The proxy's own copy of the bundle, as a mounted ConfigMap would be.
    let bundle = dir.path().join("mounted-bundle.pem");
    std::fs::copy(
        dir.path().join("ca").join(meshlite_certd::app::CA_DIR_CERT),
        &bundle,
    )
    .unwrap();
    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.creds = match certd_source(dir.path(), &url, "server") {
        CredSource::Certd(c) => CredSource::Certd(ClientConfig {
            bundle_file: bundle.clone(),
            ..c
        }),
        other => other,
    };
    cfg.reload_interval = Duration::from_millis(100);
    let proxy = Proxy::new(cfg).bind().await.unwrap();
    let (creds, metrics) = (proxy.creds().clone(), proxy.metrics().clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(proxy.run(async move { s.cancelled().await }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while creds.current().is_none() {
        assert!(Instant::now() < deadline, "no certificate from certd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A CERTIFICATE block whose contents are not a certificate.
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let before = renewals_ok(&metrics.encode());
    // Four-second certificates renew every two seconds or so: two more
    // renewals show renewal goes on with the last good bundle.
    let deadline = Instant::now() + Duration::from_secs(30);
    while renewals_ok(&metrics.encode()) < before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "renewal stopped after the bundle file went bad: {}",
            metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics.encode();
    stop.cancel();
    let series = format!(
        "meshlite_trust_bundle_file_rejections_total{{file=\"{}\",reason=\"invalid_certificate\"}}",
        bundle.display()
    );
    assert!(
        text.lines().any(|l| l.starts_with(&series)),
        "no rejection naming {}: {text}",
        bundle.display()
    );
}
