//! A served router on loopback with a self-signed `localhost` certificate.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;

use meshlite_https::{Gate, Limits, Refusals};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

pub struct Served {
    pub addr: SocketAddr,
    pub roots: rustls::RootCertStore,
    pub refusals: Refusals,
}

/// Serves `router` over TLS within `limits`.
pub async fn serve(router: axum::Router, limits: Limits) -> Served {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let key = rcgen::KeyPair::generate().expect("key generation");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("a valid name")
        .self_signed(&key)
        .expect("self-signing");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("a valid root");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .expect("a P-256 key");
    let certified = CertifiedKey::new(vec![cert.der().clone()], signing);
    let tls = meshlite_https::server_config(Arc::new(OneCert(Arc::new(certified))))
        .expect("the shared TLS policy builds");
    let refusals = Refusals::default();
    let gate = Gate::new(limits, refusals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(meshlite_https::serve(
        listener,
        tls,
        router,
        gate,
        std::future::pending(),
    ));
    Served {
        addr,
        roots,
        refusals,
    }
}
