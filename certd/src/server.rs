//! The API's TLS: TLS 1.3 only (aws-lc-rs) with a serving certificate from
//! certd's own CA, so proxies verify certd with the same trust bundle they use
//! for peers. The accept loop itself is `meshlite_https::serve`.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use rcgen::KeyPair;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::ca::{Ca, CaError};
use crate::signer::SharedCa;

/// Why the serving TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] CaError),
    #[error("building the TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("serving certificate PEM: {0}")]
    Pem(String),
}

/// The DNS names certd serves under in a cluster.
pub fn cluster_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// certd's own serving certificate, re-issued from the current CA whenever
/// the CA changes (a rotation) or half of its lifetime has passed, so a
/// long-running certd never serves an expired or orphaned certificate.
pub struct ServingCert {
    ca: SharedCa,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    current: RwLock<Current>,
}

struct Current {
    /// The CA certificate PEM it was issued under.
    issued_under: String,
    renew_at: OffsetDateTime,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("dns", &self.dns)
            .field("ips", &self.ips)
            .finish_non_exhaustive()
    }
}

fn issue(ca: &Ca, dns: &[String], ips: &[IpAddr]) -> Result<Current, ServerError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::from)?;
    let now = OffsetDateTime::now_utc();
    let issued = ca.issue_serving(&key, dns, ips)?;
    let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Pem(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)?;
    Ok(Current {
        issued_under: ca.cert_pem().to_string(),
        renew_at: now + (issued.not_after - now) / 2,
        key: Arc::new(CertifiedKey::new(chain, signing)),
    })
}

impl ServingCert {
    /// Issues the first certificate; fails if the CA cannot issue now.
    pub fn new(ca: SharedCa, dns: Vec<String>, ips: Vec<IpAddr>) -> Result<Arc<Self>, ServerError> {
        let first = issue(&ca.get(), &dns, &ips)?;
        Ok(Arc::new(ServingCert {
            ca,
            dns,
            ips,
            current: RwLock::new(first),
        }))
    }

    fn get(&self) -> Arc<CertifiedKey> {
        let ca = self.ca.get();
        {
            // A poisoned lock only means a reader panicked; the data is intact.
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.issued_under == ca.cert_pem() && OffsetDateTime::now_utc() < cur.renew_at {
                return cur.key.clone();
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.issued_under != ca.cert_pem() || OffsetDateTime::now_utc() >= cur.renew_at {
            match issue(&ca, &self.dns, &self.ips) {
                Ok(fresh) => {
                    tracing::info!("re-issued certd's serving certificate");
                    *cur = fresh;
                }
                // Keep serving the old one; the next handshake tries again.
                Err(e) => tracing::warn!(error = %e, "re-issuing the serving certificate failed"),
            }
        }
        cur.key.clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A TLS 1.3-only config serving `cert` (the HTTPS loop's shared policy).
pub fn tls_config(cert: Arc<ServingCert>) -> Result<ServerConfig, ServerError> {
    Ok(meshlite_https::server_config(cert)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_follows_a_ca_rotation() {
        let ca = SharedCa::new(Ca::generate_root("td").unwrap());
        let cert = ServingCert::new(ca.clone(), vec!["localhost".into()], vec![]).unwrap();
        let first = cert.get();
        assert!(
            Arc::ptr_eq(&first, &cert.get()),
            "unchanged CA: same certificate"
        );
        ca.set(Ca::generate_root("td").unwrap());
        let second = cert.get();
        assert!(!Arc::ptr_eq(&first, &second), "new CA: new certificate");
        assert_ne!(first.cert[0], second.cert[0]);
    }

    #[test]
    fn the_serving_certificate_is_renewed_at_half_its_lifetime() {
        let ca = SharedCa::new(Ca::generate_root("td").unwrap());
        let cert = ServingCert::new(ca, vec!["localhost".into()], vec![]).unwrap();
        let first = cert.get();
        let remaining = cert.current.read().unwrap().renew_at - OffsetDateTime::now_utc();
        assert!(remaining > time::Duration::days(14), "{remaining}");
        cert.current.write().unwrap().renew_at = OffsetDateTime::now_utc();
        assert!(!Arc::ptr_eq(&first, &cert.get()));
    }
}
