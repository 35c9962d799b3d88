//! Connection lifecycle: half-close, rotation, live policy, limits, draining.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_proxy::config::{CredSource, PolicySource};
use meshlite_proxy::testing::{TestCa, echo_server};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn half_close_propagates_from_client_to_server() {
    let ca = TestCa::new("mesh root");
    // The backend reads to EOF, then answers: it only answers if the client's
    // FIN made it through both proxies.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
    });
    let server = server_proxy(&ca, backend, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"12345")
            .await
            .unwrap(),
        b"got 5 bytes"
    );
}

#[tokio::test]
async fn half_close_propagates_from_server_to_client() {
    let ca = TestCa::new("mesh root");
    // The backend speaks first and half-closes; it then still reads the client.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tx.send(got).unwrap();
    });
    let server = server_proxy(&ca, backend, |_| {}).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    let mut s = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    // The client must speak first for mesh detection; send, then read to EOF.
    s.write_all(b"hi").await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye", "server's FIN arrived");
    s.write_all(b" after eof").await.unwrap();
    s.shutdown().await.unwrap();
    let backend_got = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        backend_got, b"hi after eof",
        "client could still send after the server's FIN"
    );
}

async fn echo_once(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn rotating_credentials_on_disk_keeps_open_connections_and_new_ones_use_the_new_cert() {
    let ca = TestCa::new("mesh root");
    let dir = tempfile::tempdir().unwrap();
    ca.write_files(dir.path(), SERVER_ID).unwrap();
    let files = CredSource::Files {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        bundle: dir.path().join("bundle.pem"),
    };
    let mut cfg = meshlite_proxy::Config::explicit(td(), None, Some(echo_server().await));
    cfg.creds = files;
    cfg.reload_interval = Duration::from_millis(50);
    let server = start(cfg, None).await;
    let creds = server.creds.clone();
    meshlite_proxy::assert_eventually!(creds.current().is_some(), "credentials loaded from files");
    let first = creds.current().unwrap().not_after;
    let first_cfg = creds.current().unwrap();

    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    let mut open = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    assert_eq!(echo_once(&mut open, b"before").await, b"before");

    // Rotate: a new leaf (new key) for the same identity.
    ca.write_files(dir.path(), SERVER_ID).unwrap();
    meshlite_proxy::assert_eventually!(
        !std::sync::Arc::ptr_eq(&creds.current().unwrap(), &first_cfg),
        "rotated credentials published"
    );
    assert!(creds.current().unwrap().not_after >= first);
    assert_eq!(
        echo_once(&mut open, b"after rotation").await,
        b"after rotation",
        "open connection survived"
    );

    // A fresh handshake sees the new leaf.
    let leaf_pem = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    let want = rustls::pki_types::pem::PemObject::from_pem_slice(leaf_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .unwrap();
    let probe = meshlite_proxy::testing::raw_client(&ca.leaf(
        &meshlite_proxy::testing::LeafSpec::spiffe(CLIENT_ID, Duration::from_secs(600)),
    ));
    let tcp = TcpStream::connect(server.inbound.unwrap()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(probe)
        .connect(
            rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        want,
        "new connections present the new certificate"
    );
}

#[tokio::test]
async fn an_allow_list_change_takes_effect_without_a_restart() {
    let ca = TestCa::new("mesh root");
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow");
    std::fs::write(&allow, "ns/other/sa/*").unwrap();
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.policy = PolicySource::File(allow.clone());
        c.reload_interval = Duration::from_millis(50);
    })
    .await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    let denied = round_trip(client.outbound.unwrap(), b"let me in")
        .await
        .unwrap_or_default();
    assert!(denied.is_empty(), "a denied identity got through");
    assert_eq!(
        metric(&server.metrics_text(), "meshlite_policy_denials_total", &[]),
        1.0
    );

    std::fs::write(&allow, "ns/other/sa/*, ns/shop/sa/client").unwrap();
    let policy = server.policy.clone();
    let id: meshlite_contract::SpiffeId = CLIENT_ID.parse().unwrap();
    meshlite_proxy::assert_eventually!(policy.allows(&id), "allow list reloaded");
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"let me in")
            .await
            .unwrap(),
        b"let me in"
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_counted() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| c.max_connections = 1).await;
    let addr: SocketAddr = server.inbound.unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut first, b"x").await, b"x");
    let second = round_trip(addr, b"y").await.unwrap_or_default();
    assert!(
        second.is_empty(),
        "the second connection was served past the limit"
    );
    assert_eq!(
        metric(
            &server.metrics_text(),
            "meshlite_refused_connections_total",
            &["reason=\"max_connections\""]
        ),
        1.0
    );
    drop(first);
    meshlite_proxy::assert_eventually!(
        metric(
            &server.metrics_text(),
            "meshlite_tcp_connections_closed_total",
            &[]
        ) == 1.0,
        "first connection closed"
    );
    assert_eq!(
        round_trip(addr, b"z").await.unwrap(),
        b"z",
        "capacity is released"
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_established_connections() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.timeouts.drain = Duration::from_secs(30)
    })
    .await;
    let addr = server.inbound.unwrap();
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut open, b"before").await, b"before");

    server.stop.cancel();
    // New connections are refused once the listener is gone...
    let admin = server.admin;
    meshlite_proxy::assert_eventually!(
        std::net::TcpStream::connect(addr).is_err() && std::net::TcpStream::connect(admin).is_ok(),
        "listener closed"
    );
    // ...while the established one keeps working until it closes.
    assert_eq!(echo_once(&mut open, b"during drain").await, b"during drain");
    assert!(!server.done.is_finished());
    drop(open);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_drain_deadline_closes_lingering_connections() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.timeouts.drain = Duration::from_millis(200)
    })
    .await;
    let mut open = TcpStream::connect(server.inbound.unwrap()).await.unwrap();
    assert_eq!(echo_once(&mut open, b"x").await, b"x");
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), open.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the lingering connection was closed");
}

#[tokio::test]
async fn during_the_drain_accept_window_new_connections_are_served_while_not_ready() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.timeouts.drain = Duration::from_secs(30);
        c.timeouts.drain_accept = Duration::from_secs(5);
    })
    .await;
    let addr = server.inbound.unwrap();
    assert_eq!(http_get(server.admin, "/ready").await.0, 200);
    server.stop.cancel();
    // Not ready at once, so the endpoint is withdrawn...
    let mut ready = 200;
    for _ in 0..100 {
        ready = http_get(server.admin, "/ready").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "not ready once draining");
    // ...but a connection routed here meanwhile is still served.
    assert_eq!(
        round_trip(addr, b"routed late").await.unwrap(),
        b"routed late"
    );
    // After the window the listener closes, and the proxy stops.
    meshlite_proxy::assert_eventually!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed after the window"
    );
    tokio::time::timeout(Duration::from_secs(30), server.done)
        .await
        .unwrap()
        .unwrap();
}
