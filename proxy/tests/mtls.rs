//! Mesh mTLS through an outbound/inbound pair on loopback.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_proxy::testing::{TestCa, echo_server};
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn mtls_pair_carries_a_large_transfer_intact_and_both_sides_see_identities() {
    let ca = TestCa::new("mesh root");
    let backend = echo_server().await;
    let server = server_proxy(&ca, backend, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;

    // 32 MiB of non-repeating data, written and read concurrently.
    let data: Vec<u8> = (0..32u32 * 1024 * 1024 / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let want = Sha256::digest(&data);
    let s = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), 32 * 1024 * 1024);
    assert_eq!(Sha256::digest(&got), want, "echoed bytes differ");

    let out = client.metrics_text();
    let inb = server.metrics_text();
    assert_eq!(
        metric(
            &out,
            "meshlite_mtls_connections_total",
            &[
                &format!("peer_identity=\"{SERVER_ID}\""),
                "direction=\"outbound\""
            ]
        ),
        1.0,
        "outbound side records the server identity:\n{out}"
    );
    assert_eq!(
        metric(
            &inb,
            "meshlite_mtls_connections_total",
            &[
                &format!("peer_identity=\"{CLIENT_ID}\""),
                "direction=\"inbound\""
            ]
        ),
        1.0,
        "inbound side records the client identity:\n{inb}"
    );
    assert!(
        metric(&inb, "meshlite_tcp_bytes_total", &["sender=\"client\""]) >= 32.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        metric(&out, "meshlite_plaintext_connections_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn repeat_connections_resume_the_tls_session() {
    let ca = TestCa::new("mesh root");
    let backend = echo_server().await;
    let server = server_proxy(&ca, backend, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    for i in 0..3 {
        let msg = format!("hello {i}");
        assert_eq!(
            round_trip(client.outbound.unwrap(), msg.as_bytes())
                .await
                .unwrap(),
            msg.as_bytes()
        );
    }
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            &["resumed=\"false\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            &["resumed=\"true\""]
        ),
        2.0,
        "{text}"
    );
    // The resumed side still knows who the client is.
    let inb = server.metrics_text();
    assert_eq!(
        metric(
            &inb,
            "meshlite_mtls_connections_total",
            &[
                &format!("peer_identity=\"{CLIENT_ID}\""),
                "resumed=\"true\""
            ]
        ),
        2.0,
        "{inb}"
    );
}

#[tokio::test]
async fn admin_reports_readiness_only_with_credentials_and_serves_metrics() {
    let ca = TestCa::new("mesh root");
    let backend = echo_server().await;
    let cfg = meshlite_proxy::Config::explicit(td(), None, Some(backend));
    let proxy = start(cfg, None).await;
    assert_eq!(http_get(proxy.admin, "/live").await.0, 200);
    let (status, body) = http_get(proxy.admin, "/ready").await;
    assert_eq!(status, 503, "not ready without a certificate: {body}");

    // Handshakes fail closed while there are no credentials.
    let mut s = TcpStream::connect(proxy.inbound.unwrap()).await.unwrap();
    let leaf = ca.leaf(&meshlite_proxy::testing::LeafSpec::spiffe(
        CLIENT_ID,
        std::time::Duration::from_secs(600),
    ));
    let connector = tokio_rustls::TlsConnector::from(meshlite_proxy::testing::raw_client(&leaf));
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let _ = &mut s;
    assert!(
        connector.connect(name, s).await.is_err(),
        "handshake must fail without credentials"
    );

    proxy.creds.publish(ca.credentials(SERVER_ID)).unwrap();
    assert_eq!(http_get(proxy.admin, "/ready").await.0, 200);
    let (status, body) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "meshlite_refused_connections_total{direction=\"inbound\",reason=\"no_credentials\"} 1"
        ),
        "{body}"
    );
    assert_eq!(http_get(proxy.admin, "/nope").await.0, 404);
}

#[tokio::test]
async fn admin_identity_shows_the_presented_certificate_and_the_trusted_roots() {
    let ca = TestCa::new("mesh root");
    let backend = echo_server().await;
    let cfg = meshlite_proxy::Config::explicit(td(), None, Some(backend));
    let proxy = start(cfg, None).await;
    let (status, body) = http_get(proxy.admin, "/identity").await;
    assert_eq!(status, 503, "nothing to show before a certificate: {body}");

    let creds = ca.credentials(SERVER_ID);
    let leaf = creds.chain[0].clone();
    proxy.creds.publish(creds).unwrap();
    let (status, body) = http_get(proxy.admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let id: meshlite_contract::api::ProxyIdentity = serde_json::from_str(json).unwrap();
    assert_eq!(id.spiffe_id, SERVER_ID);
    assert!(id.issuer.contains("mesh root"), "{}", id.issuer);
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial: String = x509
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id.serial, serial);
    assert_eq!(
        time::OffsetDateTime::parse(
            &id.not_after,
            &time::format_description::well_known::Rfc3339
        )
        .unwrap()
        .unix_timestamp(),
        x509.validity().not_after.timestamp()
    );
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(id.certificate_chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain, vec![leaf]);
    let roots: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(id.trust_bundle.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(roots, vec![ca.cert()]);
}
