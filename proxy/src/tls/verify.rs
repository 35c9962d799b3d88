//! Peer certificate verification: the WebPki chain check, extended (never replaced)
//! with meshlite's SPIFFE rules.
//!
//! Both sides first delegate to rustls's WebPki verification against the trust
//! bundle (chain, validity period, key usage). Then they require that the leaf
//! carries exactly one URI SAN, that it is a meshlite SPIFFE ID, and that it is in
//! our trust domain.
//!
//! The client side does not check the server *name* here: the outbound proxy
//! connects to an original destination (a pod IP or a ClusterIP), and which
//! identities may answer there is secure naming's answer, which can change per
//! destination while one client config serves them all. The verifier enforces
//! the chain and the trust domain; `outbound.rs` then requires the verified
//! identity to be one of the answered ones, after the handshake and before a
//! single application byte is sent (DESIGN.md section 2, "Secure naming").

use meshlite_contract::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a peer's leaf certificate does not carry an acceptable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    #[error("certificate could not be parsed")]
    Unparseable,
    #[error("certificate has no URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; exactly one is required")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a meshlite SPIFFE ID: {0}")]
    NotSpiffe(String),
    #[error("identity {id} is outside the trust domain {expected}")]
    WrongTrustDomain { id: SpiffeId, expected: TrustDomain },
}

impl PeerIdError {
    /// A short metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PeerIdError::Unparseable => "bad_certificate",
            PeerIdError::NoUriSan | PeerIdError::MultipleUriSans(_) | PeerIdError::NotSpiffe(_) => {
                "bad_identity"
            }
            PeerIdError::WrongTrustDomain { .. } => "wrong_trust_domain",
        }
    }
}

/// What meshlite reads from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Reads the single SPIFFE URI SAN and the expiry of a leaf certificate.
pub fn leaf_info(cert: &CertificateDer<'_>) -> Result<LeafInfo, PeerIdError> {
    use x509_parser::prelude::*;
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| PeerIdError::Unparseable)?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push(*uri);
            }
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(PeerIdError::NoUriSan),
        [one] => *one,
        many => return Err(PeerIdError::MultipleUriSans(many.len())),
    };
    let id = uri
        .parse::<SpiffeId>()
        .map_err(|_| PeerIdError::NotSpiffe(uri.to_string()))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(LeafInfo {
        id,
        not_before: at(x509.validity().not_before.timestamp()),
        not_after: at(x509.validity().not_after.timestamp()),
    })
}

/// Checks the identity of a verified leaf against our trust domain.
pub fn check_identity(
    cert: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
) -> Result<LeafInfo, PeerIdError> {
    let info = leaf_info(cert)?;
    if info.id.trust_domain() != trust_domain {
        return Err(PeerIdError::WrongTrustDomain {
            id: info.id,
            expected: trust_domain.clone(),
        });
    }
    Ok(info)
}

/// Most chains a verifier remembers. Past it the cache starts over.
const VERIFIED_CACHE_MAX: usize = 1024;

/// Chains that already passed WebPki verification against this verifier's
/// roots, with the identity read from them.
///
/// A fleet reuses one leaf for every connection until it rotates, so a full
/// handshake from a known peer can skip re-checking the CA's signature on the
/// leaf (an ECDSA verification) while still verifying the handshake signature
/// that proves possession of the key. Entries are exact chain bytes, never
/// outlive the earliest notAfter in the chain, and the cache belongs to one
/// verifier, which is replaced with every credential or trust-bundle change.
#[derive(Debug, Default)]
struct VerifiedCache {
    map: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (LeafInfo, SystemTime)>>,
}

fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut key = Vec::with_capacity(
        end_entity.len() + intermediates.iter().map(|c| c.len() + 4).sum::<usize>(),
    );
    for cert in std::iter::once(end_entity).chain(intermediates) {
        key.extend_from_slice(&(cert.len() as u32).to_be_bytes());
        key.extend_from_slice(cert);
    }
    key
}

/// The earliest notAfter of `certs` (unparseable ones count as already expired).
fn earliest_not_after(certs: &[CertificateDer<'_>]) -> SystemTime {
    use x509_parser::prelude::*;
    certs
        .iter()
        .map(|c| match X509Certificate::from_der(c.as_ref()) {
            Ok((_, x)) => {
                let t = x.validity().not_after.timestamp();
                SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
            }
            Err(_) => SystemTime::UNIX_EPOCH,
        })
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH + Duration::MAX / 2)
}

impl VerifiedCache {
    fn get(&self, key: &[u8], now: UnixTime) -> Option<LeafInfo> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (info, until) = map.get(key)?;
        (info.not_before <= now && now < *until).then(|| info.clone())
    }

    fn put(&self, key: Vec<u8>, info: LeafInfo, intermediates: &[CertificateDer<'_>]) {
        let until = info.not_after.min(earliest_not_after(intermediates));
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERIFIED_CACHE_MAX {
            map.clear();
        }
        map.insert(key, (info, until));
    }
}

fn identity_error(e: PeerIdError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Verifies servers for the outbound side: WebPki chain verification, then SPIFFE.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: TrustDomain,
    algs: WebPkiSupportedAlgorithms,
    verified: VerifiedCache,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: TrustDomain,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        SpiffeServerVerifier {
            roots,
            trust_domain,
            algs,
            verified: VerifiedCache::default(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let key = chain_key(end_entity, intermediates);
        if self.verified.get(&key, now).is_some() {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        // The server name is not checked on purpose: see the module docs.
        let info = check_identity(end_entity, &self.trust_domain).map_err(identity_error)?;
        self.verified.put(key, info, intermediates);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Only TLS 1.3 is ever negotiated (see `tls::versions`); refuse regardless.
        Err(Error::General("meshlite speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies clients for the inbound side: WebPki client verification, then SPIFFE.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
    verified: VerifiedCache,
}

impl SpiffeClientVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: TrustDomain) -> Self {
        SpiffeClientVerifier {
            inner,
            trust_domain,
            verified: VerifiedCache::default(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let key = chain_key(end_entity, intermediates);
        if self.verified.get(&key, now).is_some() {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = check_identity(end_entity, &self.trust_domain).map_err(identity_error)?;
        self.verified.put(key, info, intermediates);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{LeafSpec, TestCa};

    fn at(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
    }

    #[test]
    fn a_cached_chain_is_served_only_within_its_validity() {
        let ca = TestCa::new("root");
        let leaf = ca.leaf(&LeafSpec::spiffe(
            "spiffe://cluster.local/ns/a/sa/b",
            Duration::from_secs(600),
        ));
        let info = leaf_info(&leaf.cert).unwrap();
        let cache = VerifiedCache::default();
        let key = chain_key(&leaf.cert, &[]);
        assert!(cache.get(&key, at(SystemTime::now())).is_none());
        cache.put(key.clone(), info.clone(), &[]);
        assert_eq!(cache.get(&key, at(SystemTime::now())), Some(info.clone()));
        assert!(cache.get(&key, at(info.not_after)).is_none(), "expired");
        assert!(
            cache
                .get(&key, at(info.not_before - Duration::from_secs(1)))
                .is_none(),
            "not yet valid"
        );
        let other = ca.leaf(&LeafSpec::spiffe(
            "spiffe://cluster.local/ns/a/sa/b",
            Duration::from_secs(600),
        ));
        assert!(
            cache
                .get(&chain_key(&other.cert, &[]), at(SystemTime::now()))
                .is_none()
        );
    }

    #[test]
    fn an_unparseable_intermediate_keeps_a_chain_out_of_the_cache() {
        let ca = TestCa::new("root");
        let leaf = ca.leaf(&LeafSpec::spiffe(
            "spiffe://cluster.local/ns/a/sa/b",
            Duration::from_secs(600),
        ));
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        let cache = VerifiedCache::default();
        let key = chain_key(&leaf.cert, std::slice::from_ref(&junk));
        cache.put(key.clone(), leaf_info(&leaf.cert).unwrap(), &[junk]);
        assert!(cache.get(&key, at(SystemTime::now())).is_none());
    }
}
