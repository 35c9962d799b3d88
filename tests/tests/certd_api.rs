//! certd in cluster mode against the fake API server: the whole request flow
//! (TokenReview → CSR create → /approval → /status → delete) and every refusal.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::{Duration, Instant};

use base64::Engine as _;
use meshlite_certd::ca::{Ca, verify_workload_chain};
use meshlite_certd::client::{Target, post_raw, request_certificate};
use meshlite_certd::metrics::{Issuance, Metrics};
use meshlite_contract::{
    CSR_NAMESPACE_LABEL, CSR_POD_LABEL, CSR_SERVICE_ACCOUNT_LABEL, SIGNER_NAME, SpiffeId,
    TOKEN_AUDIENCE,
};
use meshlite_tests::fake_apiserver::certd::{
    ca_secret_key, csr, csr_for, start_cluster_certd, target,
};
use meshlite_tests::fake_apiserver::{ExternalSigner, FakeApiServer, Recorded, TokenEntry};
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

fn cart() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

async fn setup(flags: &[&str]) -> (FakeApiServer, meshlite_certd::app::Running, Target) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_service_account_token("cart-token", "shop", "cart", TOKEN_AUDIENCE);
    let certd = start_cluster_certd(&fake, flags).await.unwrap();
    let t = target(&certd);
    (fake, certd, t)
}

fn csr_creates(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.resource == "certificatesigningrequests" && r.verb == "create")
        .count()
}

/// certd deletes CSR objects in the background once it has answered.
async fn eventually_no_csrs(fake: &FakeApiServer) {
    for _ in 0..100 {
        if fake.list("certificatesigningrequests").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "CSR objects left behind: {:?}",
        fake.list("certificatesigningrequests")
    );
}

fn called(fake: &FakeApiServer, verb: &str, resource: &str, sub: Option<&str>) -> bool {
    fake.requests().iter().any(|r: &Recorded| {
        r.verb == verb && r.resource == resource && r.subresource.as_deref() == sub
    })
}

#[tokio::test]
async fn issues_a_chain_for_the_tokens_identity_that_verifies_against_the_bundle() {
    let (fake, certd, t) = setup(&[]).await;
    let (_key, pem) = csr_for(&cart());
    let before = time::OffsetDateTime::now_utc();
    let answer = request_certificate(&t, "cart-token", &pem).await.unwrap();

    assert_eq!(answer.spiffe_id, cart().to_uri());
    let secret = fake
        .get(&ca_secret_key())
        .expect("certd bootstrapped the CA Secret");
    let ca_crt = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["ca.crt"].as_str().unwrap())
        .unwrap();
    assert_eq!(answer.trust_bundle.as_bytes(), ca_crt.as_slice());
    let uris =
        verify_workload_chain(&answer.certificate_chain, &answer.trust_bundle, before).unwrap();
    assert_eq!(uris, vec![cart().to_uri()]);
    let not_after = time::OffsetDateTime::parse(
        &answer.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = (not_after - before).whole_seconds();
    assert!((3595..=3605).contains(&lifetime), "lifetime {lifetime}s");

    // The documented flow, through the subresources, and nothing left behind.
    assert!(called(&fake, "create", "tokenreviews", None));
    assert!(called(&fake, "create", "certificatesigningrequests", None));
    assert!(called(
        &fake,
        "update",
        "certificatesigningrequests",
        Some("approval")
    ));
    assert!(called(
        &fake,
        "update",
        "certificatesigningrequests",
        Some("status")
    ));
    eventually_no_csrs(&fake).await;
    assert!(called(&fake, "delete", "certificatesigningrequests", None));
    assert_eq!(certd.metrics.requests("issued"), 1);
    assert_eq!(issuances(&certd.metrics), [1, 0, 0, 0]);
    assert_eq!(review_failures(&certd.metrics), 0);
}

/// Issued, rejected, denied and failed requests so far.
fn issuances(m: &Metrics) -> [u64; 4] {
    [
        Issuance::Issued,
        Issuance::Rejected,
        Issuance::Denied,
        Issuance::Failed,
    ]
    .map(|r| m.issuances(r))
}

/// Failed token reviews so far, over every reason certd distinguishes.
fn review_failures(m: &Metrics) -> u64 {
    [
        "unauthenticated",
        "wrong_audience",
        "not_service_account",
        "unavailable",
        "internal",
        "timeout",
    ]
    .iter()
    .map(|r| m.tokenreview_failures(r))
    .sum()
}

#[tokio::test]
async fn keep_csrs_leaves_the_approved_signed_object_with_its_labels() {
    let (fake, _certd, t) = setup(&["--keep-csrs", "--lifetime-seconds", "900"]).await;
    let (_key, pem) = csr_for(&cart());
    let answer = request_certificate(&t, "cart-token", &pem).await.unwrap();

    let csrs = fake.list("certificatesigningrequests");
    assert_eq!(csrs.len(), 1);
    let o = &csrs[0];
    assert!(
        o["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("meshlite-")
    );
    assert_eq!(o["spec"]["signerName"], SIGNER_NAME);
    assert_eq!(o["spec"]["expirationSeconds"], 900);
    assert_eq!(
        o["spec"]["usages"],
        serde_json::json!(["digital signature", "client auth", "server auth"])
    );
    let labels = &o["metadata"]["labels"];
    assert_eq!(labels[CSR_NAMESPACE_LABEL], "shop");
    assert_eq!(labels[CSR_SERVICE_ACCOUNT_LABEL], "cart");
    assert_eq!(labels[CSR_POD_LABEL], "cart-pod");
    let conditions = o["status"]["conditions"].as_array().unwrap();
    let approved = conditions.iter().find(|c| c["type"] == "Approved").unwrap();
    assert_eq!(approved["status"], "True");
    assert!(approved["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        approved["message"]
            .as_str()
            .unwrap()
            .contains("ns/shop/sa/cart")
    );
    let cert = base64::engine::general_purpose::STANDARD
        .decode(o["status"]["certificate"].as_str().unwrap())
        .unwrap();
    assert_eq!(cert, answer.certificate_chain.as_bytes());
}

async fn refused(t: &Target, token: &str, pem: &str) -> (u16, String, Option<String>) {
    match request_certificate(t, token, pem).await {
        Ok(_) => panic!("expected a refusal"),
        Err(meshlite_certd::client::ClientError::Refused {
            status,
            body,
            retry_after,
        }) => (status, body.error, retry_after),
        Err(e) => panic!("transport error: {e}"),
    }
}

#[tokio::test]
async fn a_token_for_another_audience_is_401_and_creates_no_csr() {
    let (fake, certd, t) = setup(&[]).await;
    fake.add_token(
        "api-token",
        TokenEntry {
            username: "system:serviceaccount:shop:cart".into(),
            audiences: vec!["https://kubernetes.default.svc".into()],
            expired: false,
            pod: None,
        },
    );
    let (_k, pem) = csr_for(&cart());
    let (status, error, _) = refused(&t, "api-token", &pem).await;
    assert_eq!((status, error.as_str()), (401, "unauthenticated"));
    assert_eq!(csr_creates(&fake), 0);
    assert_eq!(certd.metrics.requests("unauthenticated"), 1);
    assert_eq!(certd.metrics.tokenreview_failures("unauthenticated"), 1);
    assert_eq!(issuances(&certd.metrics), [0, 1, 0, 0]);
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let (fake, _certd, t) = setup(&[]).await;
    fake.add_token(
        "old",
        TokenEntry {
            username: "system:serviceaccount:shop:cart".into(),
            audiences: vec![TOKEN_AUDIENCE.into()],
            expired: true,
            pod: None,
        },
    );
    let (_k, pem) = csr_for(&cart());
    assert_eq!(refused(&t, "old", &pem).await.0, 401);
    assert_eq!(refused(&t, "never-issued", &pem).await.0, 401);
    assert_eq!(csr_creates(&fake), 0);
}

#[tokio::test]
async fn a_csr_naming_another_service_account_is_403_identity_mismatch() {
    let (fake, _certd, t) = setup(&[]).await;
    let admin: SpiffeId = "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap();
    let (_k, pem) = csr_for(&admin);
    let (status, error, _) = refused(&t, "cart-token", &pem).await;
    assert_eq!((status, error.as_str()), (403, "identity_mismatch"));
    assert_eq!(csr_creates(&fake), 0);
}

#[tokio::test]
async fn a_user_token_is_not_a_workload() {
    let (fake, _certd, t) = setup(&[]).await;
    fake.add_token(
        "alice",
        TokenEntry {
            username: "alice@example.com".into(),
            audiences: vec![TOKEN_AUDIENCE.into()],
            expired: false,
            pod: None,
        },
    );
    let (_k, pem) = csr_for(&cart());
    assert_eq!(
        refused(&t, "alice", &pem).await,
        (403, "not_service_account".into(), None)
    );
}

#[tokio::test]
async fn a_tampered_csr_signature_is_400() {
    let (_fake, _certd, t) = setup(&[]).await;
    let (_k, pem) = csr_for(&cart());
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = meshlite_certd::ca::pem_block("CERTIFICATE REQUEST", &der);
    assert_eq!(
        refused(&t, "cart-token", &tampered).await.1,
        "bad_csr_signature"
    );
}

#[tokio::test]
async fn p384_and_rsa_keys_are_400_unsupported_key() {
    let (_fake, _certd, t) = setup(&[]).await;
    let (_k, pem) = csr(&rcgen::PKCS_ECDSA_P384_SHA384, vec![]);
    assert_eq!(
        refused(&t, "cart-token", &pem).await,
        (400, "unsupported_key".into(), None)
    );
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let pem = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&rsa)
        .unwrap()
        .pem()
        .unwrap();
    assert_eq!(
        refused(&t, "cart-token", &pem).await,
        (400, "unsupported_key".into(), None)
    );
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("every refusal is a JSON ErrorBody");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn oversized_bodies_garbage_json_and_missing_tokens_get_json_errors() {
    let (fake, certd, t) = setup(&[]).await;
    let big = post_raw(&t, Some("cart-token"), vec![b' '; 65 * 1024])
        .await
        .unwrap();
    assert_eq!((big.status, error_of(&big.body)), (413, "too_large".into()));
    let junk = post_raw(&t, Some("cart-token"), b"{\"csr\": 12".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (junk.status, error_of(&junk.body)),
        (400, "malformed_request".into())
    );
    let extra = post_raw(
        &t,
        Some("cart-token"),
        br#"{"csr":"x","admin":true}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        (extra.status, error_of(&extra.body)),
        (400, "malformed_request".into())
    );
    let anon = post_raw(&t, None, b"{}".to_vec()).await.unwrap();
    assert_eq!(
        (anon.status, error_of(&anon.body)),
        (401, "missing_token".into())
    );
    // None of that reached the API server.
    assert!(fake.requests().iter().all(|r| r.resource != "tokenreviews"));
    assert_eq!(review_failures(&certd.metrics), 0);
    assert_eq!(issuances(&certd.metrics), [0, 4, 0, 0], "all four rejected");
}

#[tokio::test]
async fn an_api_server_answering_503_gives_503_with_retry_after() {
    // The Kubernetes client retries 503s with backoff; the deadline cuts that short.
    let (fake, certd, t) = setup(&["--api-timeout-seconds", "1"]).await;
    fake.set_down(true);
    let (_k, pem) = csr_for(&cart());
    let started = Instant::now();
    let (status, error, retry) = refused(&t, "cart-token", &pem).await;
    assert_eq!(
        (status, error.as_str(), retry.as_deref()),
        (503, "unavailable", Some("5"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    fake.set_down(false);
    request_certificate(&t, "cart-token", &pem).await.unwrap();
    assert_eq!(certd.metrics.requests("unavailable"), 1);
    // The client was still retrying the TokenReview when the budget ran out.
    assert_eq!(certd.metrics.tokenreview_failures("timeout"), 1);
    assert_eq!(review_failures(&certd.metrics), 1);
    assert_eq!(issuances(&certd.metrics), [1, 0, 0, 1]);
}

#[tokio::test]
async fn an_unreachable_api_server_gives_503_with_retry_after() {
    let (fake, _certd, t) = setup(&[]).await;
    drop(fake); // closes the listener: connections are refused
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_k, pem) = csr_for(&cart());
    let (status, error, retry) = refused(&t, "cart-token", &pem).await;
    assert_eq!((status, error.as_str()), (503, "unavailable"));
    assert!(retry.is_some());
}

const EXTERNAL: &str = "example.com/external";

#[tokio::test]
async fn an_external_signer_that_fails_the_request_gives_403_and_the_csr_is_deleted() {
    let (fake, certd, t) = setup(&["--no-builtin-signer", "--signer-name", EXTERNAL]).await;
    fake.set_external_signer(EXTERNAL, ExternalSigner::Fail("policy says no".into()));
    let (_k, pem) = csr_for(&cart());
    let started = Instant::now();
    let (status, error, _) = refused(&t, "cart-token", &pem).await;
    assert_eq!((status, error.as_str()), (403, "signer_failed"));
    assert_eq!(issuances(&certd.metrics), [0, 0, 0, 1]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without waiting out the bound"
    );
    assert!(called(&fake, "watch", "certificatesigningrequests", None));
    // certd approved but never signed: that is the external signer's job.
    assert!(!called(
        &fake,
        "update",
        "certificatesigningrequests",
        Some("status")
    ));
    eventually_no_csrs(&fake).await;
}

#[tokio::test]
async fn an_external_signer_that_never_answers_gives_503_after_the_bounded_wait() {
    let (fake, certd, t) = setup(&[
        "--no-builtin-signer",
        "--signer-name",
        EXTERNAL,
        "--signer-wait-seconds",
        "1",
    ])
    .await;
    fake.set_external_signer(EXTERNAL, ExternalSigner::Never);
    let (_k, pem) = csr_for(&cart());
    let started = Instant::now();
    let (status, error, retry) = refused(&t, "cart-token", &pem).await;
    let waited = started.elapsed();
    assert_eq!(
        (status, error.as_str(), retry.is_some()),
        (503, "signer_timeout", true)
    );
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(issuances(&certd.metrics), [0, 0, 0, 1]);
    // The wait shows in the latency: at least the second the signer was given.
    let text = certd.metrics.encode().unwrap();
    let under_a_second = text
        .lines()
        .find(|l| {
            l.starts_with("meshlite_certd_issuance_duration_seconds_bucket")
                && l.contains("result=\"failed\"")
                && l.contains("le=\"1.0\"")
        })
        .unwrap_or_else(|| panic!("no 1s bucket in:\n{text}"));
    assert!(under_a_second.ends_with(" 0"), "{under_a_second}");
    eventually_no_csrs(&fake).await;
}

#[tokio::test]
async fn an_external_signers_certificate_is_returned_once_it_appears() {
    let (fake, _certd, t) = setup(&["--no-builtin-signer", "--signer-name", EXTERNAL]).await;
    let external_ca = std::sync::Arc::new(Ca::generate_root("cluster.local").unwrap());
    let ca = external_ca.clone();
    fake.set_external_signer(
        EXTERNAL,
        ExternalSigner::Sign(std::sync::Arc::new(move |pem: &str| {
            let csr = meshlite_certd::csr::validate(pem, &cart()).map_err(|e| e.to_string())?;
            ca.issue_workload(
                &csr,
                &cart(),
                Duration::from_secs(600),
                time::OffsetDateTime::now_utc(),
            )
            .map(|i| i.chain_pem)
            .map_err(|e| e.to_string())
        })),
    );
    let (_k, pem) = csr_for(&cart());
    let answer = request_certificate(&t, "cart-token", &pem).await.unwrap();
    let uris = verify_workload_chain(
        &answer.certificate_chain,
        external_ca.bundle_pem(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(uris, vec![cart().to_uri()]);
}

#[tokio::test]
async fn an_external_certificate_for_the_wrong_identity_is_not_handed_out() {
    let (fake, _certd, t) = setup(&["--no-builtin-signer", "--signer-name", EXTERNAL]).await;
    let ca = std::sync::Arc::new(Ca::generate_root("cluster.local").unwrap());
    let admin: SpiffeId = "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap();
    fake.set_external_signer(
        EXTERNAL,
        ExternalSigner::Sign(std::sync::Arc::new(move |pem: &str| {
            let csr = meshlite_certd::csr::validate(pem, &cart()).map_err(|e| e.to_string())?;
            ca.issue_workload(
                &csr,
                &admin,
                Duration::from_secs(600),
                time::OffsetDateTime::now_utc(),
            )
            .map(|i| i.chain_pem)
            .map_err(|e| e.to_string())
        })),
    );
    let (_k, pem) = csr_for(&cart());
    let (status, error, _) = refused(&t, "cart-token", &pem).await;
    assert_eq!((status, error.as_str()), (500, "internal"));
}

#[tokio::test]
async fn approval_and_status_conflicts_are_re_read_and_retried() {
    let (fake, _certd, t) = setup(&[]).await;
    fake.inject_conflicts("update", "certificatesigningrequests", Some("approval"), 1);
    fake.inject_conflicts("update", "certificatesigningrequests", Some("status"), 2);
    let (_k, pem) = csr_for(&cart());
    request_certificate(&t, "cart-token", &pem).await.unwrap();
    let count = |verb: &str, sub: Option<&str>| {
        fake.requests()
            .iter()
            .filter(|r| {
                r.verb == verb
                    && r.resource == "certificatesigningrequests"
                    && r.subresource.as_deref() == sub
            })
            .count()
    };
    assert_eq!(count("update", Some("approval")), 2);
    assert_eq!(count("update", Some("status")), 3);
    assert_eq!(count("get", None), 3, "one re-read per conflict");
}

#[tokio::test]
async fn conflicts_that_never_stop_end_in_503_and_no_leftover_csr() {
    let (fake, _certd, t) = setup(&[]).await;
    fake.inject_conflicts(
        "update",
        "certificatesigningrequests",
        Some("approval"),
        100,
    );
    let (_k, pem) = csr_for(&cart());
    let (status, error, retry) = refused(&t, "cart-token", &pem).await;
    assert_eq!(
        (status, error.as_str(), retry.is_some()),
        (503, "unavailable", true)
    );
    eventually_no_csrs(&fake).await;
}
