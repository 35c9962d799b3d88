//! The gate's limits on a small router over TLS: the connection cap sheds
//! the excess at once and gives the slot back, the request timeout answers a
//! JSON 503, and an idle keep-alive connection is closed without counting as
//! a refusal.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::time::Duration;

use axum::routing::get;
use meshlite_https::testing::Client;
use meshlite_https::{Limits, Refusal};
use tokio::io::AsyncReadExt as _;

const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(30),
    max_connections: 64,
};

fn router() -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        )
}

#[tokio::test]
async fn past_the_connection_cap_a_connection_is_reset_and_counted() {
    let server = support::serve(
        router(),
        Limits {
            max_connections: 8,
            ..LIMITS
        },
    )
    .await;
    let client = Client::tls(server.addr, server.roots.clone(), "localhost");
    let slow = client.slowloris(8, Duration::from_secs(60)).await;
    assert_eq!(slow.open, 8, "the first eight fit under the cap");
    // The ninth is accepted and closed before its handshake can finish.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed at once, not held");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let again = client.get("/").await;
    assert!(again.is_err(), "still full: {again:?}");
    assert_eq!(server.refusals.get(Refusal::TooManyConnections.label()), 2);
    // Once the header timeout frees the slots, clients are served again.
    assert_eq!(slow.closed_by_server().await, 8);
    assert_eq!(client.get("/").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_handler_past_the_request_timeout_gets_a_json_503_and_is_counted() {
    let server = support::serve(
        router(),
        Limits {
            request_timeout: Duration::from_secs(1),
            ..LIMITS
        },
    )
    .await;
    let client = Client::tls(server.addr, server.roots.clone(), "localhost");
    let answer = client.get("/slow").await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert!(answer.head.contains("content-type: application/json"));
    assert_eq!(answer.json()["error"], "request_timeout");
    assert_eq!(server.refusals.get(Refusal::RequestTimeout.label()), 1);
    assert_eq!(
        client.get("/").await.unwrap().status,
        200,
        "others are served"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_not_counted() {
    let server = support::serve(
        router(),
        Limits {
            header_read_timeout: Duration::from_secs(1),
            ..LIMITS
        },
    )
    .await;
    let client = Client::tls(server.addr, server.roots.clone(), "localhost");
    let mut s = client.connect().await.unwrap();
    use tokio::io::AsyncWriteExt as _;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer, then (idle for the header timeout) the server's close.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(String::from_utf8_lossy(&got).ends_with("hello"));
    assert_eq!(server.refusals.get(Refusal::HeaderTimeout.label()), 0);
}
