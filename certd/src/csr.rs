//! PKCS#10 CSR checks: parse, verify the self-signature, restrict the key type,
//! and allow no SAN but the caller's own SPIFFE ID.
//!
//! Pure and total: any byte string gets an answer, never a panic. The CSR's
//! subject and requested extensions other than the SAN are ignored because the
//! signer builds the leaf from scratch; only the public key is carried over.

use meshlite_contract::SpiffeId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateSigningRequestDer, SignatureVerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use crate::ApiError;

/// Largest CSR accepted, PEM; a P-256 CSR with one URI SAN is well under 1 KiB.
pub const MAX_CSR_PEM: usize = 16 * 1024;

/// The key types certd signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Ed25519,
}

/// A CSR that passed every check: its public key, ready to be certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCsr {
    /// The PEM as received, for the Kubernetes CSR object.
    pub pem: String,
    pub key_type: KeyType,
    /// The raw subjectPublicKey bits (an EC point or an Ed25519 key).
    pub public_key: Vec<u8>,
}

impl rcgen::PublicKeyData for ValidCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        // Only the key's algorithm identifier is written from this, so the
        // signature hash named here does not matter.
        match self.key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// Checks `pem` as a CSR for `id`.
pub fn validate(pem: &str, id: &SpiffeId) -> Result<ValidCsr, ApiError> {
    if pem.len() > MAX_CSR_PEM {
        return Err(ApiError::MalformedCsr(format!(
            "larger than {MAX_CSR_PEM} bytes"
        )));
    }
    let block = single_csr_block(pem)?;
    let der = CertificateSigningRequestDer::from_pem_slice(block.as_bytes())
        .map_err(|e| ApiError::MalformedCsr(format!("no CERTIFICATE REQUEST PEM block: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| ApiError::MalformedCsr(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(ApiError::MalformedCsr(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let key_type = key_type(spki)?;
    let verifier = verifier(key_type, &csr)?;
    verifier
        .verify_signature(
            &spki.subject_public_key.data,
            info.raw,
            &csr.signature_value.data,
        )
        .map_err(|_| ApiError::BadCsrSignature)?;
    check_sans(&csr, id)?;
    Ok(ValidCsr {
        pem: pem.to_string(),
        key_type,
        public_key: spki.subject_public_key.data.to_vec(),
    })
}

const CSR_BEGIN: &str = "-----BEGIN CERTIFICATE REQUEST-----";
const CSR_END: &str = "-----END CERTIFICATE REQUEST-----";

/// The one `CERTIFICATE REQUEST` block that `pem` must consist of, with
/// nothing around it but whitespace. A PEM reader skips text between blocks
/// and stops after the first, so without this check junk after the request,
/// or a second request, would be signed silently.
fn single_csr_block(pem: &str) -> Result<&str, ApiError> {
    let block = pem.trim();
    let Some(rest) = block.strip_prefix(CSR_BEGIN) else {
        return Err(ApiError::MalformedCsr(format!(
            "the PEM must start with {CSR_BEGIN}"
        )));
    };
    let Some(inner) = rest.strip_suffix(CSR_END) else {
        return Err(ApiError::MalformedCsr(format!(
            "the PEM must end with {CSR_END}, with nothing after it"
        )));
    };
    if inner.contains("-----") {
        return Err(ApiError::MalformedCsr(
            "the PEM must hold exactly one CERTIFICATE REQUEST block".into(),
        ));
    }
    Ok(block)
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyType, ApiError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyType::Ed25519);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyType::EcdsaP256),
            Some(c) => Err(ApiError::UnsupportedKey(format!("EC curve {c}"))),
            None => Err(ApiError::UnsupportedKey(
                "EC key without a named curve".into(),
            )),
        };
    }
    Err(ApiError::UnsupportedKey(format!("key algorithm {alg}")))
}

fn verifier(
    key: KeyType,
    csr: &X509CertificationRequest<'_>,
) -> Result<&'static dyn SignatureVerificationAlgorithm, ApiError> {
    let sig = &csr.signature_algorithm.algorithm;
    match key {
        KeyType::Ed25519 if *sig == OID_SIG_ED25519 => Ok(webpki::aws_lc_rs::ED25519),
        KeyType::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA256 => {
            Ok(webpki::aws_lc_rs::ECDSA_P256_SHA256)
        }
        KeyType::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA384 => {
            Ok(webpki::aws_lc_rs::ECDSA_P256_SHA384)
        }
        _ => Err(ApiError::MalformedCsr(format!(
            "signature algorithm {sig} does not match the {key:?} key"
        ))),
    }
}

fn check_sans(csr: &X509CertificationRequest<'_>, id: &SpiffeId) -> Result<(), ApiError> {
    let Some(extensions) = csr.requested_extensions() else {
        return Ok(());
    };
    let want = id.to_uri();
    for ext in extensions {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) if *uri == want => {}
                GeneralName::URI(uri) => {
                    return Err(ApiError::IdentityMismatch {
                        requested: uri.to_string(),
                        derived: want,
                    });
                }
                other => return Err(ApiError::UnexpectedSan(format!("{other:?}"))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
