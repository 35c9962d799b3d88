//! The outbound proxy with secure naming from certd, which watches the fake
//! API server: proxy → POST /v1/naming → certd's index of Pods → the decision.
//! Each "pod" is a loopback address (127.0.0.2, 127.0.0.3) that the test
//! registers as the pod's IP.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use meshlite_certd::client::request_naming;
use meshlite_contract::naming::Meshed;
use meshlite_contract::{SpiffeId, TOKEN_AUDIENCE, TrustDomain};
use meshlite_proxy::config::{CredSource, OutboundMode};
use meshlite_proxy::identity_client::ClientConfig;
use meshlite_proxy::naming::NamingSource;
use meshlite_proxy::testing::echo_server;
use meshlite_proxy::{Bound, Config, Proxy};
use meshlite_tests::fake_apiserver::certd::{start_cluster_certd, target};
use meshlite_tests::fake_apiserver::{FakeApiServer, workloads};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_config(dir: &Path, port: u16, sa: &str) -> ClientConfig {
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, format!("{sa}-token")).unwrap();
    ClientConfig {
        url: format!("https://localhost:{port}").parse().unwrap(),
        token_file,
        bundle_file: dir.join("bundle.pem"),
        identity: SpiffeId::new(TrustDomain::default(), "shop", sa).unwrap(),
        timeout: Duration::from_secs(5),
    }
}

async fn create_pod(fake: &FakeApiServer, name: &str, sa: &str, ip: &str, injected: bool) {
    workloads::create_pod(fake, "shop", name, sa, ip, injected)
        .await
        .unwrap();
}

struct Mesh {
    fake: FakeApiServer,
    certd: meshlite_certd::app::Running,
    dir: tempfile::TempDir,
}

async fn mesh(accounts: &[&str]) -> Mesh {
    meshlite_proxy::tls::install_provider();
    let fake = FakeApiServer::start().await.unwrap();
    for sa in accounts {
        fake.add_service_account_token(&format!("{sa}-token"), "shop", sa, TOKEN_AUDIENCE);
    }
    let certd = start_cluster_certd(&fake, &["--extra-dns", "localhost"])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bundle.pem"), certd.bundle_pem()).unwrap();
    Mesh { fake, certd, dir }
}

impl Mesh {
    /// Waits until certd answers `want` for `addr`.
    async fn answers(&self, addr: SocketAddr, want: Meshed, sa: &str) {
        let t = target(&self.certd);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = request_naming(&t, &format!("{sa}-token"), addr)
                .await
                .unwrap();
            if a.meshed == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "certd never answered {want:?} for {addr}: {a:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A proxy with its certificate from certd (and, for the client side,
    /// naming from certd), run until the test ends.
    async fn proxy(&self, cfg: Config, sa: &str, naming: bool) -> Running {
        let mut cfg = cfg;
        let client = client_config(self.dir.path(), self.certd.addr.port(), sa);
        if naming {
            cfg.naming.source = NamingSource::Certd(client.clone());
        }
        cfg.creds = CredSource::Certd(client);
        let bound = Proxy::new(cfg).bind().await.unwrap();
        let creds = bound.creds().clone();
        let running = run(bound);
        let deadline = Instant::now() + Duration::from_secs(20);
        while creds.current().is_none() {
            assert!(
                Instant::now() < deadline,
                "no certificate from certd for {sa}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
    }
}

/// A running proxy's metrics, outbound and inbound addresses.
type Running = (
    Arc<meshlite_proxy::metrics::Metrics>,
    Vec<SocketAddr>,
    Vec<SocketAddr>,
);

fn run(bound: Bound) -> Running {
    let out = (
        bound.metrics().clone(),
        bound.outbound_addrs(),
        bound.inbound_addrs(),
    );
    tokio::spawn(bound.run(std::future::pending()));
    out
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(msg).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// An echo server on `ip` that records the first byte of every connection.
async fn recording_echo(ip: &str) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let first = Arc::new(Mutex::new(Vec::new()));
    let rec = first.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen_first = false;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !seen_first {
                        rec.lock().unwrap().push(buf[0]);
                        seen_first = true;
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmeshed_destination_gets_plaintext_at_once_without_a_handshake() {
    let m = mesh(&["client"]).await;
    let (legacy, first_bytes) = recording_echo("127.0.0.3").await;
    create_pod(&m.fake, "legacy", "legacy", "127.0.0.3", false).await;
    m.answers(legacy, Meshed::Unmeshed, "client").await;

    let cfg = Config::explicit(TrustDomain::default(), Some(legacy), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    let started = Instant::now();
    assert_eq!(round_trip(out[0], b"plain hello").await, b"plain hello");
    println!(
        "first connection to an unmeshed destination: {:?}",
        started.elapsed()
    );

    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            "reason=\"unmeshed\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_tls_handshake_failures_total", ""),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_naming_lookups_total", "result=\"asked\""),
        1.0,
        "{text}"
    );
    // One connection reached the destination, and it began with the
    // application's bytes, not a TLS ClientHello (0x16).
    assert_eq!(*first_bytes.lock().unwrap(), vec![b'p']);

    // Strict outbound refuses it without connecting at all.
    let mut cfg = Config::explicit(TrustDomain::default(), Some(legacy), None);
    cfg.outbound.as_mut().unwrap().mode = OutboundMode::Strict;
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert!(round_trip(out[0], b"plain hello").await.is_empty());
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            "reason=\"strict_unmeshed_destination\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        first_bytes.lock().unwrap().len(),
        1,
        "strict mode never connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pod_ip_requires_the_new_identity_and_refuses_the_old() {
    let m = mesh(&["client", "server", "payments"]).await;
    let ip = "127.0.0.2";
    // The old workload: ns/shop/sa/server at 127.0.0.2.
    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.inbound.as_mut().unwrap().listen =
        vec![(ip.parse::<std::net::IpAddr>().unwrap(), 0).into()];
    let (_, _, old_inbound) = m.proxy(cfg, "server", false).await;
    create_pod(&m.fake, "cart-0", "server", ip, true).await;
    m.answers(old_inbound[0], Meshed::Meshed, "client").await;

    let cfg = Config::explicit(TrustDomain::default(), Some(old_inbound[0]), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert_eq!(
        round_trip(out[0], b"to the old pod").await,
        b"to the old pod"
    );

    // The pod goes; a pod of another ServiceAccount gets its IP. The old
    // workload still answers at the address (a stale process, or an attacker
    // holding the old identity's certificate).
    Api::<Pod>::namespaced(m.fake.client(), "shop")
        .delete("cart-0", &DeleteParams::default())
        .await
        .unwrap();
    create_pod(&m.fake, "pay-0", "payments", ip, true).await;
    let t = target(&m.certd);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = request_naming(&t, "client-token", old_inbound[0])
            .await
            .unwrap();
        if a.identities == vec![SpiffeId::new(TrustDomain::default(), "shop", "payments").unwrap()]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certd never named the new pod: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Within one TTL the client re-asks, and the old identity is refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if round_trip(out[0], b"to whoever is there").await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old identity was still accepted after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = metrics.encode();
    assert!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            "reason=\"identity_mismatch\""
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_plaintext_connections_total", ""),
        0.0,
        "{text}"
    );

    // The new workload, with the new identity, at the same IP is accepted.
    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.inbound.as_mut().unwrap().listen =
        vec![(ip.parse::<std::net::IpAddr>().unwrap(), 0).into()];
    let (_, _, new_inbound) = m.proxy(cfg, "payments", false).await;
    let cfg = Config::explicit(TrustDomain::default(), Some(new_inbound[0]), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert_eq!(
        round_trip(out[0], b"to the new pod").await,
        b"to the new pod"
    );
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            "peer_identity=\"spiffe://cluster.local/ns/shop/sa/payments\""
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_service_is_detected_in_permissive_mode_but_a_tls_answer_must_be_named() {
    let m = mesh(&["client", "server"]).await;
    // Service "mixed" at 127.0.0.4:80: one meshed backend (ns/shop/sa/web),
    // one unmeshed. What answers at the ClusterIP stands in for the backend
    // kube-proxy picked: here the unmeshed one, a plaintext echo.
    workloads::create_pod(&m.fake, "shop", "web-a", "web", "127.0.0.5", true)
        .await
        .unwrap();
    workloads::create_pod(&m.fake, "shop", "legacy", "legacy", "127.0.0.6", false)
        .await
        .unwrap();
    workloads::create_service(
        &m.fake,
        "shop",
        "mixed",
        "127.0.0.4",
        &["127.0.0.5", "127.0.0.6"],
    )
    .await
    .unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.4:80").await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let cluster_ip: SocketAddr = "127.0.0.4:80".parse().unwrap();
    m.answers(cluster_ip, Meshed::Mixed, "client").await;

    let cfg = Config::explicit(TrustDomain::default(), Some(cluster_ip), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert_eq!(round_trip(out[0], b"mixed").await, b"mixed");
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_plaintext_connections_total",
            "reason=\"not_meshed\""
        ),
        1.0,
        "permissive mode detects (and is downgradable: SECURITY.md)\n{text}"
    );
    let mut cfg = Config::explicit(TrustDomain::default(), Some(cluster_ip), None);
    cfg.outbound.as_mut().unwrap().mode = OutboundMode::Strict;
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert!(round_trip(out[0], b"mixed").await.is_empty());
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            "reason=\"strict_mode_handshake_failed\""
        ),
        1.0,
        "{text}"
    );

    // The same Service shape, but what answers is a mesh peer that is not one
    // of the named identities: refused even in permissive mode.
    workloads::create_service(
        &m.fake,
        "shop",
        "mixed2",
        "127.0.0.7",
        &["127.0.0.5", "127.0.0.6"],
    )
    .await
    .unwrap();
    let mut cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
    cfg.inbound.as_mut().unwrap().listen = vec!["127.0.0.7:80".parse().unwrap()];
    let _impostor = m.proxy(cfg, "server", false).await;
    let cluster_ip: SocketAddr = "127.0.0.7:80".parse().unwrap();
    m.answers(cluster_ip, Meshed::Mixed, "client").await;
    let cfg = Config::explicit(TrustDomain::default(), Some(cluster_ip), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    assert!(round_trip(out[0], b"to the impostor").await.is_empty());
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            "reason=\"identity_mismatch\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshlite_plaintext_connections_total", ""),
        0.0,
        "{text}"
    );
}

/// A TCP forwarder on `ip` whose destination the test can switch: the same
/// address answered first by one workload's proxy, then by another's.
async fn switchable_forwarder(ip: &str, to: SocketAddr) -> (SocketAddr, Arc<Mutex<SocketAddr>>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let target = Arc::new(Mutex::new(to));
    let current = target.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let to = *current.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    (addr, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_at_a_held_address_is_asked_again_not_refused_until_the_ttl() {
    let m = mesh(&["client", "server", "payments"]).await;
    let ip = "127.0.0.5";
    let serve = |sa: &'static str| {
        let m = &m;
        async move {
            let cfg = Config::explicit(TrustDomain::default(), None, Some(echo_server().await));
            m.proxy(cfg, sa, false).await.2[0]
        }
    };
    let payments = serve("payments").await;
    let (addr, route) = switchable_forwarder(ip, payments).await;
    create_pod(&m.fake, "pay-0", "payments", ip, true).await;
    m.answers(addr, Meshed::Meshed, "client").await;
    let cfg = Config::explicit(TrustDomain::default(), Some(addr), None);
    let (metrics, out, _) = m.proxy(cfg, "client", true).await;
    // The client's proxy now holds "payments" for the address, for the TTL.
    assert_eq!(round_trip(out[0], b"to payments").await, b"to payments");

    // The pod is replaced by one of another ServiceAccount at the same IP,
    // which kube-proxy routes to at once; certd learns it from its watch.
    Api::<Pod>::namespaced(m.fake.client(), "shop")
        .delete("pay-0", &DeleteParams::default())
        .await
        .unwrap();
    create_pod(&m.fake, "web-0", "server", ip, true).await;
    let server = serve("server").await;
    let t = target(&m.certd);
    let want = SpiffeId::new(TrustDomain::default(), "shop", "server").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while request_naming(&t, "client-token", addr)
        .await
        .unwrap()
        .identities
        != vec![want.clone()]
    {
        assert!(Instant::now() < deadline, "certd never named the new pod");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *route.lock().unwrap() = server;

    // Still within the held answer's TTL: the mismatch makes the proxy ask
    // certd again, and the fresh answer names the new identity.
    assert_eq!(round_trip(out[0], b"to server").await, b"to server");
    let text = metrics.encode();
    assert_eq!(
        metric(
            &text,
            "meshlite_naming_lookups_total",
            "result=\"refreshed\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_refused_connections_total",
            "reason=\"identity_mismatch\""
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "meshlite_mtls_connections_total",
            "peer_identity=\"spiffe://cluster.local/ns/shop/sa/server\""
        ),
        1.0,
        "{text}"
    );
}
