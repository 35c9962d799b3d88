//! Secure naming on the outbound side, in process on loopback, with the
//! identities pinned as `--outbound-expect-identity` pins them: a destination
//! known to be meshed gets mTLS with the named identity or nothing, in every
//! mode. An attacker who resets our handshake, answers with non-TLS bytes or
//! presents another CA's certificate never receives an application byte.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_contract::SpiffeId;
use meshlite_proxy::config::{Config, OutboundMode};
use meshlite_proxy::naming::NamingSource;
use meshlite_proxy::testing::{LeafSpec, TestCa, echo_server, raw_tls_echo_server};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOUR: Duration = Duration::from_secs(3600);
/// What the application sends; it must never reach an attacker in the clear.
const SECRET: &[u8] = b"GET /account HTTP/1.1\r\nAuthorization: hunter2\r\n\r\n";

fn pin(ids: &[&str]) -> impl FnOnce(&mut Config) {
    let ids: Vec<SpiffeId> = ids.iter().map(|s| s.parse().unwrap()).collect();
    move |c: &mut Config| c.naming.source = NamingSource::Pinned(ids)
}

fn permissive(c: &mut Config) {
    c.outbound.as_mut().unwrap().mode = OutboundMode::Permissive;
}

/// How the attacker on the path answers.
#[derive(Clone, Copy)]
enum Attack {
    /// Reset the connection as soon as the ClientHello arrives.
    Reset,
    /// Answer with an HTTP error, as a plaintext server would.
    NotTls,
}

/// A host that accepts on the meshed destination's address and records every
/// byte it receives, on every connection.
async fn attacker(attack: Attack) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await {
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                match attack {
                    Attack::Reset => {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                    Attack::NotTls => {
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends SECRET through the client proxy and answers what came back (an
/// error, or the bytes read before the proxy closed).
async fn send_secret(outbound: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(outbound).await.unwrap();
    let _ = s.write_all(SECRET).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

async fn meshed_destination_is_refused(attack: Attack, reason: &str) {
    let ca = TestCa::new("mesh root");
    let (addr, seen) = attacker(attack).await;
    let client = client_proxy(&ca, addr, |c| {
        permissive(c);
        pin(&[SERVER_ID])(c);
    })
    .await;
    for _ in 0..3 {
        assert!(send_secret(client.outbound.unwrap()).await.is_empty());
    }
    let text = client.metrics_text();
    let refused = |r: &str| {
        metric(
            &text,
            "meshlite_refused_connections_total",
            &[&format!("reason=\"{r}\"")],
        )
    };
    assert_eq!(refused("mesh_handshake_failed"), 3.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "meshlite_tls_handshake_failures_total",
            &[&format!("reason=\"{reason}\"")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_plaintext_connections_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_outbound_fallback_destinations", &[]),
        0.0
    );
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the attacker saw our ClientHellos");
    assert!(
        !contains(&seen, SECRET),
        "no application byte reached the attacker"
    );
    assert!(!contains(&seen, b"hunter2"));
}

#[tokio::test]
async fn a_reset_handshake_to_a_meshed_destination_is_refused_not_downgraded() {
    meshed_destination_is_refused(Attack::Reset, "reset").await;
}

#[tokio::test]
async fn non_tls_bytes_from_a_meshed_destination_are_refused_not_downgraded() {
    meshed_destination_is_refused(Attack::NotTls, "not_tls").await;
}

#[tokio::test]
async fn another_cas_certificate_at_a_meshed_destination_is_refused() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("attacker root");
    let fake = raw_tls_echo_server(&other.leaf(&LeafSpec::spiffe(SERVER_ID, HOUR))).await;
    let client = client_proxy(&ca, fake, |c| {
        permissive(c);
        pin(&[SERVER_ID])(c);
    })
    .await;
    assert!(send_secret(client.outbound.unwrap()).await.is_empty());
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
            "meshlite_refused_connections_total",
            &["reason=\"mesh_handshake_failed\""]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "meshlite_plaintext_connections_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_mesh_peer_with_a_valid_certificate_for_the_wrong_identity_is_refused() {
    let ca = TestCa::new("mesh root");
    // A real meshed server, but for ns/shop/sa/server, where naming says
    // ns/bank/sa/ledger must answer.
    let server = server_proxy(&ca, echo_server().await, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |c| {
        permissive(c);
        pin(&["spiffe://cluster.local/ns/bank/sa/ledger"])(c);
    })
    .await;
    assert!(send_secret(client.outbound.unwrap()).await.is_empty());
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            &["reason=\"identity_mismatch\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_plaintext_connections_total", &[]),
        0.0
    );
    // The server never relayed a byte to its application.
    let server_text = server.metrics_text();
    assert_eq!(
        metric(
            &server_text,
            "meshlite_tcp_bytes_total",
            &["sender=\"client\""]
        ),
        0.0,
        "{server_text}"
    );
}

#[tokio::test]
async fn the_pinned_identity_gets_mtls_and_any_of_several_is_accepted() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |c| {
        c.outbound.as_mut().unwrap().mode = OutboundMode::Strict;
        pin(&["spiffe://cluster.local/ns/bank/sa/ledger", SERVER_ID])(c);
    })
    .await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"ping").await.unwrap(),
        b"ping"
    );
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            &[&format!("peer_identity=\"{SERVER_ID}\"")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_naming_lookups_total",
            &["result=\"pinned\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn without_naming_detection_still_falls_back_and_is_counted() {
    let ca = TestCa::new("mesh root");
    let client = client_proxy(&ca, echo_server().await, permissive).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"hi").await.unwrap(),
        b"hi"
    );
    let text = client.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_naming_fallback_total",
            &["reason=\"not_configured\""]
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
        1.0
    );
}
