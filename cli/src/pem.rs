//! Certificates as the checks compare them: sets of DER, not PEM text (the
//! same roots may be written with other line breaks or in another order).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Every certificate in `pem`; an error when there is none or one is broken.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let list = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if list.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(list)
}

/// The SHA-256 of each certificate, lowercase hex.
pub fn fingerprints(pem: &str) -> Result<BTreeSet<String>, String> {
    Ok(certs(pem)?.iter().map(|c| fingerprint(c)).collect())
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether two PEM lists hold the same certificates.
pub fn same_certs(a: &str, b: &str) -> bool {
    matches!((fingerprints(a), fingerprints(b)), (Ok(x), Ok(y)) if x == y)
}

/// Whether `pem` holds every certificate of `wanted`.
pub fn contains_all(pem: &str, wanted: &str) -> bool {
    matches!((fingerprints(pem), fingerprints(wanted)), (Ok(x), Ok(y)) if y.is_subset(&x))
}

/// PEM of one DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    meshlite_certd::ca::pem_block("CERTIFICATE", der)
}

/// A certificate's subject, serial and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

pub fn info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, x) = X509Certificate::from_der(der).map_err(|e| format!("unparseable: {e}"))?;
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| e.to_string());
    Ok(CertInfo {
        subject: x.subject().to_string(),
        serial: x.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        not_before: at(x.validity().not_before.timestamp())?,
        not_after: at(x.validity().not_after.timestamp())?,
    })
}

/// `in 3d 4h`, `in 12m`, `2h ago`: how far `t` is from `now`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let a = secs.unsigned_abs();
    let text = if a >= 86_400 {
        format!("{}d {}h", a / 86_400, a % 86_400 / 3600)
    } else if a >= 3600 {
        format!("{}h {}m", a / 3600, a % 3600 / 60)
    } else if a >= 60 {
        format!("{}m", a / 60)
    } else {
        format!("{a}s")
    };
    if secs >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlite_certd::ca::Ca;

    #[test]
    fn bundles_compare_as_sets_of_certificates() {
        let a = Ca::generate_root("cluster.local").unwrap();
        let b = Ca::generate_root("cluster.local").unwrap();
        let ab = format!("{}{}", a.bundle_pem(), b.bundle_pem());
        let ba = format!("{}\n{}", b.bundle_pem(), a.bundle_pem());
        assert!(same_certs(&ab, &ba));
        assert!(!same_certs(&ab, a.bundle_pem()));
        assert!(contains_all(&ab, b.bundle_pem()));
        assert!(!contains_all(a.bundle_pem(), &ab));
        assert!(
            !same_certs("junk", "junk"),
            "nothing parseable is never equal"
        );
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let d = |s| now + time::Duration::seconds(s);
        assert_eq!(relative(d(90_000), now), "in 1d 1h");
        assert_eq!(relative(d(3_700), now), "in 1h 1m");
        assert_eq!(relative(d(-720), now), "12m ago");
        assert_eq!(relative(d(5), now), "in 5s");
    }
}
