use super::*;
use rcgen::{CertificateParams, KeyPair, SanType};

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(Default::default(), ns, sa).unwrap()
}

fn csr_for(alg: &'static rcgen::SignatureAlgorithm, sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn a_p256_csr_with_our_uri_san_is_accepted_with_its_key() {
    let me = id("shop", "cart");
    let pem = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(&me.to_uri())]);
    let ok = validate(&pem, &me).unwrap();
    assert_eq!(ok.key_type, KeyType::EcdsaP256);
    assert_eq!(ok.public_key.len(), 65, "uncompressed P-256 point");
}

#[test]
fn ed25519_and_san_less_csrs_are_accepted() {
    let pem = csr_for(&rcgen::PKCS_ED25519, vec![]);
    assert_eq!(
        validate(&pem, &id("a", "b")).unwrap().key_type,
        KeyType::Ed25519
    );
}

#[test]
fn a_csr_naming_another_identity_is_an_identity_mismatch() {
    let pem = csr_for(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![uri("spiffe://cluster.local/ns/shop/sa/admin")],
    );
    let err = validate(&pem, &id("shop", "cart")).unwrap_err();
    assert!(
        matches!(err, ApiError::IdentityMismatch { ref requested, .. } if requested.ends_with("/sa/admin"))
    );
}

#[test]
fn dns_and_ip_sans_are_refused() {
    let pem = csr_for(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![SanType::DnsName("evil.example".try_into().unwrap())],
    );
    assert!(matches!(
        validate(&pem, &id("a", "b")),
        Err(ApiError::UnexpectedSan(_))
    ));
    let pem = csr_for(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
    );
    assert!(matches!(
        validate(&pem, &id("a", "b")),
        Err(ApiError::UnexpectedSan(_))
    ));
}

#[test]
fn p384_keys_are_unsupported() {
    let pem = csr_for(&rcgen::PKCS_ECDSA_P384_SHA384, vec![]);
    assert!(matches!(
        validate(&pem, &id("a", "b")),
        Err(ApiError::UnsupportedKey(_))
    ));
}

#[test]
fn a_tampered_signature_does_not_verify() {
    let pem = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
    let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // The signature BIT STRING is the last element; changing its last byte keeps
    // the DER well-formed but breaks the signature.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_encode(&der);
    assert_eq!(
        validate(&tampered, &id("a", "b")),
        Err(ApiError::BadCsrSignature)
    );
}

#[test]
fn garbage_gets_an_answer_not_a_panic() {
    for input in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(
            matches!(
                validate(input, &id("a", "b")),
                Err(ApiError::MalformedCsr(_))
            ),
            "{input:?}"
        );
    }
    assert!(validate(&"A".repeat(MAX_CSR_PEM + 1), &id("a", "b")).is_err());
}

fn pem_encode(der: &[u8]) -> String {
    crate::ca::pem_block("CERTIFICATE REQUEST", der)
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn valid_der() -> Vec<u8> {
        let pem = csr_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec![uri(&id("a", "b").to_uri())],
        );
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    proptest! {
        #[test]
        fn arbitrary_text_gets_an_answer(s in ".{0,400}") {
            let _ = validate(&s, &id("a", "b"));
        }

        #[test]
        fn arbitrary_der_in_a_pem_block_gets_an_answer(der in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = validate(&pem_encode(&der), &id("a", "b"));
        }

        /// Flipping any byte of a valid CSR never panics and never yields a
        /// CSR that passes with a different key or identity.
        #[test]
        fn a_mutated_csr_never_panics_and_never_passes_with_another_key(
            pos in 0usize..400, bit in 0u8..8,
        ) {
            let mut der = valid_der();
            let original = validate(&pem_encode(&der), &id("a", "b")).unwrap();
            let pos = pos % der.len();
            der[pos] ^= 1 << bit;
            if let Ok(ok) = validate(&pem_encode(&der), &id("a", "b")) {
                prop_assert_eq!(ok.public_key, original.public_key);
            }
        }
    }
}

fn malformed_reason(pem: &str) -> String {
    match validate(pem, &id("a", "b")) {
        Err(e @ ApiError::MalformedCsr(_)) => {
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
            assert_eq!(e.label(), "malformed_csr");
            e.to_string()
        }
        other => panic!("expected malformed_csr, got {other:?}"),
    }
}

#[test]
fn a_csr_pem_with_trailing_junk_is_malformed() {
    let pem = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
    assert!(
        validate(&pem, &id("a", "b")).is_ok(),
        "the CSR itself is fine"
    );
    let why = malformed_reason(&format!("{pem}trailing junk\n"));
    assert!(why.contains("nothing after it"), "{why}");
    malformed_reason(&format!("junk before\n{pem}"));
}

#[test]
fn two_csrs_in_one_pem_are_malformed() {
    let first = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
    let second = csr_for(&rcgen::PKCS_ED25519, vec![]);
    let why = malformed_reason(&format!("{first}\n{second}"));
    assert!(why.contains("exactly one"), "{why}");
}

#[test]
fn whitespace_around_the_block_is_accepted() {
    let pem = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
    assert!(validate(&format!("\n  {pem}\n\n"), &id("a", "b")).is_ok());
}

#[test]
fn overlapping_markers_are_malformed_not_a_panic() {
    malformed_reason("-----BEGIN CERTIFICATE REQUEST-----END CERTIFICATE REQUEST-----");
}
