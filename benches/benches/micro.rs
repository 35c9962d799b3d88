//! Micro-benchmarks of the proxy's per-connection hot spots: ClientHello
//! detection, TLS handshakes (full and resumed), and the relay loop over an
//! in-memory TLS pair.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshlite_contract::TrustDomain;
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::tls::{CredStore, TlsConfigs};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn configs(ca: &TestCa, id: &str) -> Arc<TlsConfigs> {
    let store = CredStore::new(TrustDomain::default());
    store
        .publish(ca.credentials(id))
        .expect("valid bench credentials")
}

/// A real ClientHello as the outbound side sends it.
fn client_hello(client: &Arc<TlsConfigs>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        client.client.clone(),
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .expect("client connection");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write ClientHello");
    out
}

fn detection(c: &mut Criterion) {
    meshlite_proxy::tls::install_provider();
    let ca = TestCa::new("bench");
    let hello = client_hello(&configs(&ca, "spiffe://cluster.local/ns/a/sa/b"));
    c.bench_function("detect ClientHello (meshlite/1)", |b| {
        b.iter(|| meshlite_proxy::detect::detect(std::hint::black_box(&hello)))
    });
    let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec();
    c.bench_function("detect plaintext HTTP", |b| {
        b.iter(|| meshlite_proxy::detect::detect(std::hint::black_box(&http)))
    });
}

async fn handshake(client: &Arc<TlsConfigs>, server: &Arc<TlsConfigs>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(client.client.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
    let (mut c, mut s) = (c.expect("client handshake"), s.expect("server handshake"));
    // One byte each way completes the exchange (and delivers the ticket).
    c.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("read");
    s.write_all(b"y").await.expect("write");
    c.read_exact(&mut one).await.expect("read");
}

fn handshakes(c: &mut Criterion) {
    meshlite_proxy::tls::install_provider();
    let ca = TestCa::new("bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let server = configs(&ca, "spiffe://cluster.local/ns/a/sa/server");
    c.bench_function("mTLS handshake, full", |b| {
        b.iter_batched(
            || configs(&ca, "spiffe://cluster.local/ns/a/sa/client"),
            |client| rt.block_on(handshake(&client, &server)),
            criterion::BatchSize::SmallInput,
        )
    });
    let client = configs(&ca, "spiffe://cluster.local/ns/a/sa/client");
    rt.block_on(handshake(&client, &server));
    c.bench_function("mTLS handshake, resumed", |b| {
        b.iter(|| rt.block_on(handshake(&client, &server)))
    });
}

fn relay(c: &mut Criterion) {
    meshlite_proxy::tls::install_provider();
    let ca = TestCa::new("bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let server = configs(&ca, "spiffe://cluster.local/ns/a/sa/server");
    let client = configs(&ca, "spiffe://cluster.local/ns/a/sa/client");
    const BYTES: usize = 8 << 20;
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Bytes(BYTES as u64));
    g.bench_function("8 MiB over an in-memory TLS pair", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (a, bb) = tokio::io::duplex(256 * 1024);
                let connector = tokio_rustls::TlsConnector::from(client.client.clone());
                let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
                let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
                let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(bb));
                let (mut c, mut s) = (c.expect("client"), s.expect("server"));
                let data = vec![7u8; 256 * 1024];
                let send = async {
                    for _ in 0..BYTES / data.len() {
                        c.write_all(&data).await.expect("write");
                    }
                    c.shutdown().await.expect("shutdown");
                };
                let recv = async {
                    let mut buf = vec![0u8; meshlite_proxy::relay::RELAY_BUFFER];
                    let mut n = 0;
                    while n < BYTES {
                        n += s.read(&mut buf).await.expect("read");
                    }
                };
                tokio::join!(send, recv);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, detection, handshakes, relay);
criterion_main!(benches);
