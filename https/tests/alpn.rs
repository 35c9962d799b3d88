//! Which ALPN offers the shared HTTPS server accepts: `http/1.0`, `http/1.1`
//! and none at all are served; `h2` is not spoken, so a client offering only
//! `h2` is refused at the handshake and one offering `h2` too gets `http/1.1`.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use meshlite_https::Limits;
use meshlite_https::testing::Client;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(30),
    max_connections: 64,
};

async fn served() -> support::Served {
    support::serve(
        axum::Router::new().route("/", get(|| async { "hello" })),
        LIMITS,
    )
    .await
}

/// Handshakes offering `alpn`, then sends one request in the HTTP version
/// the negotiated protocol names; the negotiated protocol and the answer.
async fn request_offering(
    server: &support::Served,
    alpn: &[&[u8]],
) -> Result<(Option<Vec<u8>>, String), String> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(server.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let version = if negotiated.as_deref() == Some(b"http/1.0") {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    tls.write_all(
        format!("GET / {version}\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok((negotiated, String::from_utf8_lossy(&answer).into_owned()))
}

fn served_hello(answer: &str) -> bool {
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("hello")
}

#[tokio::test]
async fn a_client_offering_http_1_0_is_served() {
    let server = served().await;
    let (alpn, answer) = request_offering(&server, &[b"http/1.0"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.0"[..]));
    assert!(served_hello(&answer), "{answer}");
}

#[tokio::test]
async fn a_client_offering_http_1_1_is_served() {
    let server = served().await;
    let (alpn, answer) = request_offering(&server, &[b"http/1.1"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(served_hello(&answer), "{answer}");
}

#[tokio::test]
async fn a_client_offering_no_alpn_is_served() {
    let server = served().await;
    let (alpn, answer) = request_offering(&server, &[]).await.unwrap();
    assert_eq!(alpn, None);
    assert!(served_hello(&answer), "{answer}");
    // The test client helper offers no ALPN either.
    let client = Client::tls(server.addr, server.roots.clone(), "localhost");
    assert_eq!(client.get("/").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_offering_h2_and_http_1_1_gets_http_1_1() {
    let server = served().await;
    let (alpn, answer) = request_offering(&server, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(served_hello(&answer), "{answer}");
}

#[tokio::test]
async fn a_client_offering_only_h2_is_refused_at_the_handshake() {
    let server = served().await;
    let err = request_offering(&server, &[b"h2"]).await.unwrap_err();
    assert!(
        err.contains("NoApplicationProtocol") || err.contains("no_application_protocol"),
        "{err}"
    );
}
