//! Test support, for this crate's tests and other crates' (feature `test-util`):
//! a CA that mints SPIFFE identities, echo servers, and an `assert_eventually`.

use crate::tls::Credentials;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A throwaway certificate authority.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

/// How to shape a leaf certificate, for refusal tests.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// URI SANs to include (none, one, or several).
    pub uris: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Extended key usages; empty leaves the extension out.
    pub usages: Vec<ExtendedKeyUsagePurpose>,
}

impl LeafSpec {
    /// One SPIFFE ID, valid from an hour ago for `lifetime`.
    pub fn spiffe(id: &str, lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![id.to_string()],
            not_before: now - time::Duration::hours(1),
            not_after: now + lifetime,
            usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }

    /// The same leaf with only these extended key usages.
    pub fn with_usages(mut self, usages: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.usages = usages;
        self
    }

    /// Already expired.
    pub fn expired(id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![id.to_string()],
            not_before: now - time::Duration::hours(2),
            not_after: now - time::Duration::hours(1),
            usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// A minted leaf: chain and key, in DER and PEM.
#[derive(Debug)]
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("P-256 key generation works");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing a CA works");
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Mints a leaf to `spec`.
    pub fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate().expect("P-256 key generation works");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("test URIs are ASCII")))
            .collect();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = spec.usages.clone();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a leaf works");
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// Credentials for `id`, valid for an hour, trusting this CA.
    pub fn credentials(&self, id: &str) -> Credentials {
        self.credentials_for(&LeafSpec::spiffe(id, Duration::from_secs(3600)))
    }

    pub fn credentials_for(&self, spec: &LeafSpec) -> Credentials {
        let leaf = self.leaf(spec);
        Credentials {
            chain: vec![leaf.cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der)),
            roots: vec![self.cert()],
        }
    }

    /// Writes `cert.pem`, `key.pem` and `bundle.pem` for `id` into `dir`.
    pub fn write_files(&self, dir: &Path, id: &str) -> std::io::Result<()> {
        let leaf = self.leaf(&LeafSpec::spiffe(id, Duration::from_secs(3600)));
        // Write to temporary names and rename, as a real rotation would, so a
        // reader never sees a half-written file.
        for (name, body) in [
            ("bundle.pem", self.pem.as_str()),
            ("key.pem", leaf.key_pem.as_str()),
            ("cert.pem", leaf.cert_pem.as_str()),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }
}

/// An echo server on loopback; returns its address.
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("bound address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A server that sends `banner` on accept, then echoes.
pub async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("bound address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(banner).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that a condition becomes true within a few seconds.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {
        assert!(
            $crate::testing::eventually(std::time::Duration::from_secs(10), || $cond).await,
            $($msg)+
        )
    };
}

/// Accepts any server certificate. Test-only: it lets a test play a client that
/// does not care who the server is, to probe what the *server* refuses.
#[derive(Debug)]
struct AcceptAnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A mesh-speaking client that presents `leaf` as-is (even if expired or
/// malformed) and trusts any server: a misbehaving peer for refusal tests.
pub fn raw_client(leaf: &Leaf) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = crate::tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(crate::tls::VERSIONS)
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(
            vec![leaf.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .expect("test leaf and key match");
    cfg.alpn_protocols = vec![meshlite_contract::ALPN.to_vec()];
    std::sync::Arc::new(cfg)
}

/// A mesh-speaking TLS server that presents `leaf` as-is and echoes; for
/// testing what the outbound side refuses.
pub async fn raw_tls_echo_server(leaf: &Leaf) -> SocketAddr {
    let provider = crate::tls::provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(crate::tls::VERSIONS)
        .expect("TLS 1.3 is supported")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .expect("test leaf and key match");
    cfg.alpn_protocols = vec![meshlite_contract::ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("bound address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

pub mod netns;
