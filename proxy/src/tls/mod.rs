//! meshlite's TLS policy, in one place.
//!
//! - TLS 1.3 only, with the aws-lc-rs provider (installed once per process by
//!   [`install_provider`]).
//! - ALPN `meshlite/1` marks mesh traffic.
//! - Mutual authentication with SPIFFE identities ([`verify`]).
//! - Credentials are swapped live ([`creds`]): each new handshake uses the newest
//!   validated credentials; established connections keep theirs.
//! - Mesh connections run on rustls's unbuffered API ([`stream`]), so an idle
//!   connection holds no TLS buffer; the identity client, which is not on the
//!   data path, uses tokio-rustls.

pub mod creds;
pub mod stream;
pub mod verify;

pub use creds::{CredError, CredStore, Credentials, Roles, TlsConfigs};

pub use verify::{LeafInfo, PeerIdError, leaf_info};

use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent.
pub fn install_provider() {
    // An error only means a provider is already installed; meshlite never installs
    // another one, so it is ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Tunables of the mesh TLS configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsOptions {
    /// Resume sessions from tickets on repeat connections.
    pub resumption: bool,
    /// Offer the X25519MLKEM768 post-quantum hybrid key exchange first.
    pub post_quantum: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            resumption: true,
            post_quantum: true,
        }
    }
}

/// The provider meshlite builds every config with: aws-lc-rs, TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    provider_with(TlsOptions::default())
}

/// [`provider`], with the key-exchange groups chosen by `opts`.
pub fn provider_with(opts: TlsOptions) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // TLS 1.3 suites only. AES-128-GCM first: both ends are meshlite, so the
    // first choice is what gets used, and with AES-NI it is the fastest for
    // bulk data, while SHA-256 keeps the handshake's key schedule cheaper than
    // the SHA-384 of AES-256 (measured in benches/README.md).
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    if !opts.post_quantum {
        use rustls::crypto::aws_lc_rs::kx_group;
        p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    }
    Arc::new(p)
}

/// The only protocol version meshlite negotiates.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A short metric label for a failed handshake.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io_error",
        };
    };
    match tls {
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "certificate_not_yet_valid",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<PeerIdError>()
            .map_or("bad_certificate", PeerIdError::label),
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::AlertReceived(_) => "alert_received",
        Error::NoApplicationProtocol => "no_alpn",
        Error::PeerIncompatible(_) => "incompatible",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "not_tls",
        _ => "tls_error",
    }
}
