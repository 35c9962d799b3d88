//! What each side refuses: foreign CAs, expiry, trust domains, bad SANs.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_proxy::config::OutboundMode;
use meshlite_proxy::testing::{LeafSpec, TestCa, echo_server, raw_client, raw_tls_echo_server};
use rustls::pki_types::ServerName;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOUR: Duration = Duration::from_secs(3600);

/// Connects a misbehaving client presenting `spec` to a server proxy that
/// trusts `ca`, and returns the inbound refusal reason recorded.
async fn inbound_refuses(ca: &TestCa, issuer: &TestCa, spec: LeafSpec, reason: &str) {
    let backend = echo_server().await;
    let server = server_proxy(ca, backend, |_| {}).await;
    let leaf = issuer.leaf(&spec);
    let connector = tokio_rustls::TlsConnector::from(raw_client(&leaf));
    let tcp = TcpStream::connect(server.inbound.unwrap()).await.unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    // TLS 1.3 clients finish their handshake before the server has checked the
    // client certificate, so the refusal shows up as a failed read.
    let outcome = async {
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"secret").await?;
        let mut buf = [0u8; 16];
        let n = tls.read(&mut buf).await?;
        Ok::<usize, std::io::Error>(n)
    }
    .await;
    assert!(
        !matches!(outcome, Ok(n) if n > 0),
        "the server must not relay for a refused client"
    );
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_tls_handshake_failures_total",
            &["direction=\"inbound\"", &format!("reason=\"{reason}\"")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_tcp_connections_opened_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn inbound_refuses_a_client_certificate_from_another_ca() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    inbound_refuses(&ca, &other, LeafSpec::spiffe(CLIENT_ID, HOUR), "unknown_ca").await;
}

#[tokio::test]
async fn inbound_refuses_an_expired_client_certificate() {
    let ca = TestCa::new("mesh root");
    inbound_refuses(
        &ca,
        &ca,
        LeafSpec::expired(CLIENT_ID),
        "expired_certificate",
    )
    .await;
}

#[tokio::test]
async fn inbound_refuses_another_trust_domain() {
    let ca = TestCa::new("mesh root");
    let spec = LeafSpec::spiffe("spiffe://evil.example/ns/shop/sa/client", HOUR);
    inbound_refuses(&ca, &ca, spec, "wrong_trust_domain").await;
}

#[tokio::test]
async fn inbound_refuses_a_certificate_without_a_spiffe_san() {
    let ca = TestCa::new("mesh root");
    let mut spec = LeafSpec::spiffe(CLIENT_ID, HOUR);
    spec.uris.clear();
    inbound_refuses(&ca, &ca, spec, "bad_identity").await;
}

#[tokio::test]
async fn inbound_refuses_a_certificate_with_two_spiffe_sans() {
    let ca = TestCa::new("mesh root");
    let mut spec = LeafSpec::spiffe(CLIENT_ID, HOUR);
    spec.uris.push(SERVER_ID.to_string());
    inbound_refuses(&ca, &ca, spec, "bad_identity").await;
}

/// A strict client proxy towards a misbehaving server presenting `spec`.
async fn outbound_refuses(ca: &TestCa, issuer: &TestCa, spec: LeafSpec, reason: &str) {
    let upstream = raw_tls_echo_server(&issuer.leaf(&spec)).await;
    let client = client_proxy(ca, upstream, |c| {
        c.outbound.as_mut().unwrap().mode = OutboundMode::Strict;
    })
    .await;
    let answer = round_trip(client.outbound.unwrap(), b"secret")
        .await
        .unwrap_or_default();
    assert!(
        answer.is_empty(),
        "strict outbound must not relay to a refused server"
    );
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_tls_handshake_failures_total",
            &["direction=\"outbound\"", &format!("reason=\"{reason}\"")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            &["reason=\"strict_mode_handshake_failed\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn strict_outbound_refuses_a_server_certificate_from_another_ca() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    outbound_refuses(&ca, &other, LeafSpec::spiffe(SERVER_ID, HOUR), "unknown_ca").await;
}

#[tokio::test]
async fn strict_outbound_refuses_an_expired_server_certificate() {
    let ca = TestCa::new("mesh root");
    outbound_refuses(
        &ca,
        &ca,
        LeafSpec::expired(SERVER_ID),
        "expired_certificate",
    )
    .await;
}

#[tokio::test]
async fn strict_outbound_refuses_another_trust_domain() {
    let ca = TestCa::new("mesh root");
    let spec = LeafSpec::spiffe("spiffe://evil.example/ns/shop/sa/server", HOUR);
    outbound_refuses(&ca, &ca, spec, "wrong_trust_domain").await;
}

#[tokio::test]
async fn strict_outbound_refuses_servers_without_exactly_one_spiffe_san() {
    let ca = TestCa::new("mesh root");
    let mut none = LeafSpec::spiffe(SERVER_ID, HOUR);
    none.uris.clear();
    outbound_refuses(&ca, &ca, none, "bad_identity").await;
    let mut two = LeafSpec::spiffe(SERVER_ID, HOUR);
    two.uris.push(CLIENT_ID.to_string());
    outbound_refuses(&ca, &ca, two, "bad_identity").await;
}

#[tokio::test]
async fn permissive_outbound_falls_back_when_the_server_is_from_another_ca() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    // The server proxy trusts both roots, so its own credentials are valid;
    // the client trusts only `ca`, so it refuses the server and falls back.
    let backend = echo_server().await;
    let mut creds = other.credentials(SERVER_ID);
    creds.roots.push(ca.cert());
    let server = start(
        meshlite_proxy::Config::explicit(td(), None, Some(backend)),
        Some(creds),
    )
    .await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"hello")
            .await
            .unwrap(),
        b"hello"
    );
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_tls_handshake_failures_total",
            &["reason=\"unknown_ca\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            &["reason=\"not_meshed\""]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn credentials_that_do_not_verify_are_never_published() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    let store = meshlite_proxy::tls::CredStore::new(td());
    let mut foreign = other.credentials(SERVER_ID);
    foreign.roots = vec![ca.cert()];
    assert_eq!(store.publish(foreign).unwrap_err().label(), "untrusted");
    let expired = ca.credentials_for(&LeafSpec::expired(SERVER_ID));
    assert_eq!(store.publish(expired).unwrap_err().label(), "untrusted");
    let wrong_td = ca.credentials("spiffe://other.org/ns/a/sa/b");
    assert_eq!(
        store.publish(wrong_td).unwrap_err().label(),
        "wrong_trust_domain"
    );
    let mut mismatched = ca.credentials(SERVER_ID);
    mismatched.key = ca.credentials(CLIENT_ID).key;
    assert_eq!(store.publish(mismatched).unwrap_err().label(), "bad_key");
    assert!(store.current().is_none(), "nothing invalid was published");
}

#[tokio::test]
async fn a_direction_only_certificate_serves_that_direction_and_names_what_is_missing() {
    use meshlite_proxy::tls::{CredError, CredStore, Roles};
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca = TestCa::new("mesh root");
    let hour = std::time::Duration::from_secs(3600);
    let client_only =
        || ca.credentials_for(&LeafSpec::spiffe(CLIENT_ID, hour).with_usages(vec![ClientAuth]));
    let server_only =
        || ca.credentials_for(&LeafSpec::spiffe(SERVER_ID, hour).with_usages(vec![ServerAuth]));
    let outbound = Roles {
        inbound: false,
        outbound: true,
    };
    let inbound = Roles {
        inbound: true,
        outbound: false,
    };

    // Each direction-only certificate is good for its own direction...
    assert!(
        CredStore::new(td())
            .for_roles(outbound)
            .publish(client_only())
            .is_ok()
    );
    assert!(
        CredStore::new(td())
            .for_roles(inbound)
            .publish(server_only())
            .is_ok()
    );
    // ...and for the other one it is refused with the usage it lacks, not
    // blamed on the trust bundle.
    let err = CredStore::new(td())
        .for_roles(inbound)
        .publish(client_only())
        .unwrap_err();
    assert!(
        matches!(
            err,
            CredError::WrongUsage {
                usage: "serverAuth",
                direction: "inbound"
            }
        ),
        "{err}"
    );
    assert_eq!(err.label(), "wrong_key_usage");
    assert!(!err.to_string().contains("does not verify"), "{err}");
    let err = CredStore::new(td())
        .for_roles(outbound)
        .publish(server_only())
        .unwrap_err();
    assert!(
        matches!(
            err,
            CredError::WrongUsage {
                usage: "clientAuth",
                direction: "outbound"
            }
        ),
        "{err}"
    );
    // A proxy running both directions needs both usages.
    let err = CredStore::new(td()).publish(client_only()).unwrap_err();
    assert_eq!(err.label(), "wrong_key_usage", "{err}");
}

#[tokio::test]
async fn an_outbound_only_proxy_with_a_client_only_certificate_carries_mtls() {
    use meshlite_proxy::Config;
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca = TestCa::new("mesh root");
    let hour = std::time::Duration::from_secs(3600);
    let server = start(
        Config::explicit(td(), None, Some(echo_server().await)),
        Some(ca.credentials_for(&LeafSpec::spiffe(SERVER_ID, hour).with_usages(vec![ServerAuth]))),
    )
    .await;
    let client = start(
        Config::explicit(td(), Some(server.inbound.unwrap()), None),
        Some(ca.credentials_for(&LeafSpec::spiffe(CLIENT_ID, hour).with_usages(vec![ClientAuth]))),
    )
    .await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"direction-only")
            .await
            .unwrap(),
        b"direction-only"
    );
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            &[r#"direction="inbound""#]
        ),
        1.0,
        "{text}"
    );
}
