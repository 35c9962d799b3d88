//! The admin port's own limits: a slowloris neither starves it nor outlives
//! the header timeout, and filling its connection cap leaves the data plane
//! alone (DESIGN §2: the data plane never shares a limit with the admin port).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use meshlite_https::testing::Client;
use meshlite_proxy::testing::{TestCa, echo_server};
use std::time::Duration;
use support::*;

fn admin_client(server: &Running) -> Client {
    Client {
        addr: server.admin,
        tls: None,
    }
}

#[tokio::test]
async fn a_slowloris_on_the_admin_port_neither_starves_it_nor_outlives_the_header_timeout() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.admin_limits.header_read_timeout = Duration::from_secs(2);
        c.admin_limits.max_connections = 1024;
    })
    .await;
    let client = admin_client(&server);
    let slow = client.slowloris(300, Duration::from_secs(60)).await;
    assert_eq!(slow.open, 300, "every slow client got its half header in");
    // While they hold their connections, the kubelet's probe is answered...
    let ready = tokio::time::timeout(Duration::from_secs(20), client.get("/ready"))
        .await
        .expect("the probe is answered during the slowloris")
        .unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    // ...and the data plane relays.
    assert_eq!(
        round_trip(server.inbound.unwrap(), b"still here")
            .await
            .unwrap(),
        b"still here"
    );
    // The header timeout closes every slow connection, and counts it.
    assert_eq!(slow.closed_by_server().await, 300);
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_admin_refusals_total",
            &[r#"reason="header_timeout""#]
        ),
        300.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_full_admin_port_sheds_its_own_clients_and_not_the_data_plane() {
    let ca = TestCa::new("mesh root");
    let server = server_proxy(&ca, echo_server().await, |c| {
        c.admin_limits.max_connections = 4;
        c.max_connections = 16;
    })
    .await;
    let client = admin_client(&server);
    let slow = client.slowloris(4, Duration::from_secs(60)).await;
    assert_eq!(slow.open, 4);
    assert!(client.get("/live").await.is_err(), "the admin port is full");
    let text = server.metrics_text();
    assert_eq!(
        metric(
            &text,
            "meshlite_admin_refusals_total",
            &[r#"reason="too_many_connections""#]
        ),
        1.0,
        "{text}"
    );
    // The data plane's own limit is untouched: more connections than the
    // admin port's cap all relay.
    for i in 0..8u8 {
        assert_eq!(
            round_trip(server.inbound.unwrap(), &[i]).await.unwrap(),
            [i]
        );
    }
    drop(slow);
}
