//! Plaintext on both sides: strict and permissive inbound, outbound fallback,
//! and protocol detection under hostile input.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_contract::Mode;
use meshlite_proxy::testing::{TestCa, banner_server, echo_server};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn strict(c: &mut meshlite_proxy::Config) {
    c.inbound.as_mut().unwrap().mode = Mode::Strict;
    c.timeouts.detect = Duration::from_millis(200);
}

#[tokio::test]
async fn permissive_inbound_passes_plaintext_through() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |_| {}).await;
    assert_eq!(
        round_trip(server.inbound.unwrap(), b"GET / HTTP/1.0\r\n\r\n")
            .await
            .unwrap(),
        b"GET / HTTP/1.0\r\n\r\n"
    );
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            &["direction=\"inbound\"", "reason=\"not_meshed\""]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, strict).await;
    let answer = round_trip(server.inbound.unwrap(), b"hello")
        .await
        .unwrap_or_default();
    assert!(
        answer.is_empty(),
        "strict mode relayed plaintext: {answer:?}"
    );
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            &["reason=\"strict_mode_plaintext\""]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn strict_inbound_still_accepts_mesh_mtls() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, strict).await;
    let client = client_proxy(&ca, server.inbound.unwrap(), |_| {}).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"hello")
            .await
            .unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn permissive_inbound_waits_only_the_detect_window_for_server_first_clients() {
    // An unmeshed client of a server-first protocol sends nothing until it has
    // the banner; it must get the banner after the detect window, not hang.
    let ca = TestCa::new("mesh root");
    let backend = banner_server(b"220 ready\r\n").await;
    let server = server_proxy(&ca, backend, |c| {
        c.timeouts.detect = Duration::from_millis(200)
    })
    .await;
    let mut s = TcpStream::connect(server.inbound.unwrap()).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            &["reason=\"detect_timeout\""]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn outbound_falls_back_to_plaintext_for_an_unmeshed_server() {
    let ca = TestCa::new("mesh root");
    let client = client_proxy(&ca, echo_server().await, |_| {}).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"one").await.unwrap(),
        b"one"
    );
    // The second connection skips the attempt: the destination is remembered.
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"two").await.unwrap(),
        b"two"
    );
    let text = client.metrics_text();
    assert_eq!(
        metric(&text, "meshlite_tls_handshake_failures_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            &["reason=\"not_meshed\""]
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn fallback_to_a_server_first_server_delivers_the_banner_once() {
    let ca = TestCa::new("mesh root");
    let client = client_proxy(&ca, banner_server(b"SSH-2.0-test\r\n").await, |_| {}).await;
    let mut s = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    let mut banner = [0u8; 14];
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-2.0-test\r\n");
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"ping", "exactly one banner, then the echo");
}

#[tokio::test]
async fn strict_outbound_never_falls_back() {
    let ca = TestCa::new("mesh root");
    let client = client_proxy(&ca, echo_server().await, |c| {
        c.outbound.as_mut().unwrap().mode = meshlite_proxy::config::OutboundMode::Strict;
    })
    .await;
    let answer = round_trip(client.outbound.unwrap(), b"secret")
        .await
        .unwrap_or_default();
    assert!(answer.is_empty());
    assert_eq!(
        metric(
            &client.metrics_text(),
            "meshlite_plaintext_connections_total",
            &[]
        ),
        0.0
    );
}

/// Sends `bytes` (then stalls, without closing) and returns how long the proxy
/// took to close the connection.
async fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 1024];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(res.is_ok(), "the proxy stalled on hostile input");
    start.elapsed()
}

#[tokio::test]
async fn hostile_input_on_the_inbound_port_never_stalls_or_crashes_the_proxy() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, strict).await;
    let addr = server.inbound.unwrap();
    // Garbage, a ClientHello cut off mid-record, a record header announcing
    // more than it sends, and 1 MiB of oversized handshake records.
    let truncated = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut oversized = Vec::new();
    while oversized.len() < 1 << 20 {
        oversized.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
        oversized.extend_from_slice(&[0x01; 0x4000]);
    }
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    for input in [
        &garbage[..],
        &truncated[..],
        &[0x16, 0x03, 0x03, 0x3f, 0xff][..],
        &oversized[..],
    ] {
        let took = closed_after(addr, input).await;
        // Detection is bounded by the 200 ms window (plus scheduling slack).
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    // Still serving real mesh traffic afterwards.
    let client = client_proxy(&ca, addr, |_| {}).await;
    assert_eq!(
        round_trip(client.outbound.unwrap(), b"still alive")
            .await
            .unwrap(),
        b"still alive"
    );
}
