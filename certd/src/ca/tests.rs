use super::*;
use crate::csr::{KeyType, ValidCsr};

fn workload_key() -> (KeyPair, ValidCsr) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = ValidCsr {
        pem: String::new(),
        key_type: KeyType::EcdsaP256,
        public_key: key.public_key_raw().to_vec(),
    };
    (key, csr)
}

fn id() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

#[test]
fn a_generated_root_issues_a_leaf_that_verifies_with_only_the_spiffe_san() {
    let ca = Ca::generate_root("cluster.local").unwrap();
    let (_, csr) = workload_key();
    let now = OffsetDateTime::now_utc();
    let issued = ca
        .issue_workload(&csr, &id(), Duration::from_secs(3600), now)
        .unwrap();
    let uris = verify_workload_chain(&issued.chain_pem, ca.bundle_pem(), now).unwrap();
    assert_eq!(uris, vec![id().to_uri()]);
    let lifetime = issued.not_after - now;
    assert!((lifetime.whole_seconds() - 3600).abs() <= 1, "{lifetime}");
    assert!(ca.not_after() - now > time::Duration::days(3640));
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let ca = Ca::generate_root("td").unwrap();
    let (_, csr) = workload_key();
    let near_end = ca.not_after() - time::Duration::minutes(10);
    let issued = ca
        .issue_workload(&csr, &id(), Duration::from_secs(3600), near_end)
        .unwrap();
    assert_eq!(issued.not_after, ca.not_after());
    assert!(matches!(
        ca.issue_workload(&csr, &id(), Duration::from_secs(600), ca.not_after()),
        Err(CaError::Expired)
    ));
}

#[test]
fn an_intermediate_ca_sends_its_certificate_in_the_chain_and_trusts_the_root() {
    let root = Ca::generate_root("td").unwrap();
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    let int_cert = params.signed_by(&int_key, &root.issuer).unwrap();
    let tls_crt = format!("{}{}", int_cert.pem(), root.bundle_pem());
    let ca = Ca::from_pem(&tls_crt, &int_key.serialize_pem(), Some(root.bundle_pem())).unwrap();
    assert_eq!(ca.bundle_pem(), root.bundle_pem());
    let (_, csr) = workload_key();
    let now = OffsetDateTime::now_utc();
    let issued = ca
        .issue_workload(&csr, &id(), Duration::from_secs(86_400 * 60), now)
        .unwrap();
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        issued.not_after <= ca.not_after(),
        "clamped to the intermediate"
    );
    verify_workload_chain(&issued.chain_pem, root.bundle_pem(), now).unwrap();
}

#[test]
fn mismatched_keys_and_non_ca_certificates_are_refused() {
    let a = Ca::generate_root("td").unwrap();
    let b = Ca::generate_root("td").unwrap();
    assert!(matches!(
        Ca::from_pem(a.cert_pem(), b.key_pem(), None),
        Err(CaError::KeyMismatch)
    ));
    let (key, _) = workload_key();
    let serving = a.issue_serving(&key, &["x.svc".into()], &[]).unwrap();
    let leaf_only = serving.chain_pem.clone();
    assert!(matches!(
        Ca::from_pem(&leaf_only, &key.serialize_pem(), None),
        Err(CaError::NotCa)
    ));
    assert!(matches!(
        Ca::from_pem("nope", a.key_pem(), None),
        Err(CaError::NoCertificate { .. })
    ));
}

#[test]
fn a_bundle_with_two_roots_is_kept_for_overlapped_rotation() {
    let old = Ca::generate_root("td").unwrap();
    let new = Ca::generate_root("td").unwrap();
    let both = format!("{}{}", old.bundle_pem(), new.bundle_pem());
    let ca = Ca::from_pem(new.cert_pem(), new.key_pem(), Some(&both)).unwrap();
    assert_eq!(ca.bundle_pem().matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn pem_blocks_round_trip() {
    let der: Vec<u8> = (0u8..=200).collect();
    let pem = pem_block("CERTIFICATE", &der);
    let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(back.as_ref(), der.as_slice());
}
