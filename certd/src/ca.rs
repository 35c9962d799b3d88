//! CA material and the certificates minted from it.
//!
//! A [`Ca`] is a signing certificate (a root, or an intermediate with its
//! chain), its key, and the trust bundle (every root workloads should trust;
//! several during a rotation). It issues workload leaves carrying only the
//! SPIFFE URI SAN, and certd's own serving certificate.

use std::net::IpAddr;
use std::time::Duration;

use meshlite_contract::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Lifetime of a root certd generates itself.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a serving certificate (certd's own, re-issued at every start and
/// at half-life; the injector's, re-issued by the trust loop at half-life).
pub const SERVING_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Leaves start this far in the past, so a peer whose clock lags still accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why CA material is unusable or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: &'static str },
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the CA certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa,
    #[error("the CA certificate has expired")]
    Expired,
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A signing CA and the trust bundle it belongs to.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// PEM: the signing certificate and any intermediates above it (no roots).
    chain_pem: String,
    /// PEM: the signing certificate followed by its issuers, as given.
    cert_pem: String,
    key_pem: String,
    bundle_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM: leaf first, then intermediates.
    pub chain_pem: String,
    pub not_after: OffsetDateTime,
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate { what });
    }
    Ok(certs)
}

fn to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// Encodes one PEM block (RFC 7468, 64-column base64).
pub fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHA: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHA[((v >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never starting with a zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn to_odt(secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CaError::Parse(e.to_string()))
}

impl Ca {
    /// Loads CA material: `cert_pem` is the signing certificate followed by its
    /// issuers, `bundle_pem` the roots to trust (when absent: the last
    /// certificate of `cert_pem`, i.e. a self-contained root or chain).
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        bundle_pem: Option<&str>,
    ) -> Result<Ca, CaError> {
        let chain = certs(cert_pem, "CA certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Pem {
            what: "CA key",
            reason: e.to_string(),
        })?;
        let (_, x509) = X509Certificate::from_der(chain[0].as_ref())
            .map_err(|e| CaError::Parse(e.to_string()))?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => return Err(CaError::NotCa),
        }
        let mut not_before = to_odt(x509.validity().not_before.timestamp())?;
        let mut not_after = to_odt(x509.validity().not_after.timestamp())?;
        // Intermediates bound what their leaves may claim, too.
        let mut chain_pem = String::new();
        for der in &chain {
            let (_, c) = X509Certificate::from_der(der.as_ref())
                .map_err(|e| CaError::Parse(e.to_string()))?;
            not_before = not_before.max(to_odt(c.validity().not_before.timestamp())?);
            not_after = not_after.min(to_odt(c.validity().not_after.timestamp())?);
            if c.subject().as_raw() != c.issuer().as_raw() {
                chain_pem.push_str(&to_pem(der.as_ref()));
            }
        }
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Expired);
        }
        let bundle = match bundle_pem {
            Some(b) if !b.trim().is_empty() => certs(b, "trust bundle")?,
            _ => vec![chain[chain.len() - 1].clone()],
        };
        let bundle_pem = bundle.iter().map(|c| to_pem(c.as_ref())).collect();
        let issuer = Issuer::from_ca_cert_der(&chain[0], key)?;
        Ok(Ca {
            issuer,
            chain_pem,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            bundle_pem,
            not_before,
            not_after,
        })
    }

    /// Generates a self-signed ECDSA P-256 root valid for [`ROOT_LIFETIME`].
    pub fn generate_root(trust_domain: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshlite");
        let now = OffsetDateTime::now_utc();
        // The creation time tells an old root from its successor during a
        // rotation (in `kubectl meshlite identity`, the issuer of each leaf).
        dn.push(
            DnType::CommonName,
            format!(
                "meshlite root CA ({trust_domain}, {:04}-{:02}-{:02}T{:02}{:02}{:02}Z)",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem(), None)
    }

    /// PEM of every root to trust.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// PEM of the signing certificate and its issuers, as loaded (Secret `tls.crt`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// PEM of the CA key (Secret `tls.key`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The earliest notAfter along the signing chain.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a workload leaf for `id` over `public_key`, valid for `lifetime`
    /// from `now` (clamped to the CA's own validity).
    pub fn issue_workload(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        // An empty subject: the identity is the URI SAN (rcgen then marks the SAN critical).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_uri().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, public_key, lifetime, now)
    }

    /// Issues a serving certificate for `dns` names and `ips` over `key`.
    pub fn issue_serving(
        &self,
        key: &KeyPair,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns.first().cloned().unwrap_or_default());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, key, SERVING_LIFETIME, OffsetDateTime::now_utc())
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        if now >= self.not_after {
            return Err(CaError::Expired);
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).max(self.not_before);
        params.not_after = (now + lifetime).min(self.not_after);
        let cert = params.signed_by(public_key, &self.issuer)?;
        let mut chain_pem = cert.pem();
        chain_pem.push_str(&self.chain_pem);
        Ok(Issued {
            chain_pem,
            not_after: params.not_after,
        })
    }
}

/// Verifies a PEM chain (leaf first) against a PEM bundle of roots for both
/// client and server use at `now`, and returns the leaf's URI SANs.
///
/// This is what a peer does with a workload certificate; tests and
/// diagnostics use it to check what certd hands out.
pub fn verify_workload_chain(
    chain_pem: &str,
    bundle_pem: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, String> {
    let chain = certs(chain_pem, "chain").map_err(|e| e.to_string())?;
    let roots = certs(bundle_pem, "bundle").map_err(|e| e.to_string())?;
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let ee = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| e.to_string())?;
    let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).map_err(|e| e.to_string())?,
    ));
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| e.to_string())?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                other => return Err(format!("unexpected SAN {other:?}")),
            }
        }
    }
    Ok(uris)
}

/// Checks a chain another signer issued for `csr` and `id`: the leaf must
/// certify the CSR's key and carry exactly the SPIFFE ID as its URI SAN.
pub fn check_issued(
    chain_pem: &[u8],
    csr: &crate::csr::ValidCsr,
    id: &SpiffeId,
) -> Result<Issued, String> {
    let text = std::str::from_utf8(chain_pem).map_err(|e| e.to_string())?;
    let chain = certs(text, "issued chain").map_err(|e| e.to_string())?;
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| e.to_string())?;
    if leaf.public_key().subject_public_key.data.as_ref() != csr.public_key.as_slice() {
        return Err("the leaf does not certify the CSR's key".into());
    }
    let mut uris = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uris.push(u.to_string());
            }
        }
    }
    if uris != [id.to_uri()] {
        return Err(format!("the leaf's URI SANs are {uris:?}, expected [{id}]"));
    }
    Ok(Issued {
        chain_pem: text.to_string(),
        not_after: to_odt(leaf.validity().not_after.timestamp()).map_err(|e| e.to_string())?,
    })
}

#[cfg(test)]
mod tests;
