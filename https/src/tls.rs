//! The HTTPS accept loop: TLS via tokio-rustls (the config from
//! [`server_config`] decides versions, certificates and ALPN), then HTTP/1 under
//! the server's [`Gate`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

use crate::gate::{Gate, Refusal};

/// The ALPN protocols we answer, in our order of preference. The server
/// speaks HTTP/1 only, so `h2` is not offered: a client that offers only `h2`
/// is refused at the handshake, and one offering `h2` and `http/1.1` gets
/// `http/1.1`. A client that offers no ALPN at all is served HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"http/1.1", b"http/1.0"];

/// A TLS 1.3-only config (aws-lc-rs) serving what `certs` resolves, with
/// [`ALPN`]. The API server's Go client and the proxy both speak TLS 1.3.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Serves `router` over TLS on `listener`, within `gate`'s limits, until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    gate: Gate,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE; keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((tcp, slot)) = gate.admit(tcp, peer) else {
            continue;
        };
        let (acceptor, router, gate) = (acceptor.clone(), router.clone(), gate.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = gate.limits().header_read_timeout;
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return gate.refuse(Refusal::HandshakeTimeout, peer),
            };
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut router = router.clone();
                router.call(req.map(axum::body::Body::new))
            });
            gate.serve_http1(tls, peer, service).await;
        });
    }
}
