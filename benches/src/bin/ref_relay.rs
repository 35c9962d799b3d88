//! `meshlite-ref-relay`: the benchmarks' reference, a plain tokio-rustls mTLS
//! relay pair with `copy_bidirectional`, the way one would write it without
//! meshlite. Same certificates and worker threads as the meshlite pair in the
//! harness; rustls's default aws-lc-rs provider, TLS 1.3, its default session
//! resumption. It prints `ready` on stdout once it listens.
//!
//! ```text
//! meshlite-ref-relay client LISTEN UPSTREAM CRED_DIR WORKERS [--no-resumption]
//! meshlite-ref-relay server LISTEN BACKEND  CRED_DIR WORKERS
//! ```

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Chain check against the bundle. The certificates carry only a SPIFFE URI
/// SAN, so there is no name to check (meshlite skips it for the same reason).
#[derive(Debug)]
struct ChainOnly(Arc<RootCertStore>, WebPkiSupportedAlgorithms);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(leaf)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.0,
            intermediates,
            now,
            self.1.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.supported_schemes()
    }
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() >= 5,
        "usage: client|server LISTEN TO CRED_DIR WORKERS"
    );
    let (role, listen, to) = (a[0].clone(), a[1].clone(), a[2].clone());
    let dir = Path::new(&a[3]);
    let no_resumption = a.iter().any(|x| x == "--no-resumption");
    let workers: usize = a[4].parse().context("WORKERS")?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let _ = CryptoProvider::install_default((*provider).clone());
    let chain =
        CertificateDer::pem_file_iter(dir.join("cert.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem"))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("bundle.pem"))? {
        roots.add(c?)?;
    }
    let roots = Arc::new(roots);
    let v13 = &[&rustls::version::TLS13];
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers).enable_all().build()?
    };
    rt.block_on(async move {
        let l = TcpListener::bind(&listen).await?;
        println!("ready");
        std::io::stdout().flush()?;
        if role == "server" {
            let verifier = WebPkiClientVerifier::builder(roots).build()?;
            let cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(v13)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            loop {
                let (tcp, _) = l.accept().await?;
                let (acceptor, to) = (acceptor.clone(), to.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut backend) = TcpStream::connect(&to).await else {
                        return;
                    };
                    let _ = backend.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
            }
        } else {
            let algs = provider.signature_verification_algorithms;
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(v13)?
                .dangerous() // chain checked, name skipped: see ChainOnly
                .with_custom_certificate_verifier(Arc::new(ChainOnly(roots, algs)))
                .with_client_auth_cert(chain, key)?;
            if no_resumption {
                cfg.resumption = rustls::client::Resumption::disabled();
            }
            let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            let name = ServerName::try_from("server.bench")?.to_owned();
            loop {
                let (mut tcp, _) = l.accept().await?;
                let (connector, to, name) = (connector.clone(), to.clone(), name.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(up) = TcpStream::connect(&to).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let Ok(mut tls) = connector.connect(name, up).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls).await;
                });
            }
        }
    })
}
