//! certd's CA bootstrap and trust distribution against the fake API server:
//! one CA however many replicas race, user-provided intermediates, and the
//! trust bundle kept current in labelled namespaces and the webhook's caBundle,
//! including a rotation with overlapping roots.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use meshlite_certd::ca::{Ca, verify_workload_chain};
use meshlite_certd::client::request_certificate;
use meshlite_contract::{
    INJECT_ENABLED, INJECT_LABEL, SpiffeId, TOKEN_AUDIENCE, TRUST_BUNDLE_CONFIGMAP,
    TRUST_BUNDLE_KEY, WEBHOOK_CONFIGURATION,
};
use meshlite_tests::fake_apiserver::certd::{ca_secret_key, csr_for, start_cluster_certd, target};
use meshlite_tests::fake_apiserver::{FakeApiServer, Key};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

fn provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn secret_data(fake: &FakeApiServer, field: &str) -> String {
    let secret = fake.get(&ca_secret_key()).expect("the CA Secret exists");
    String::from_utf8(
        STANDARD
            .decode(secret["data"][field].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn webhook_key() -> Key {
    Key {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        resource: "mutatingwebhookconfigurations".into(),
        namespace: None,
        name: WEBHOOK_CONFIGURATION.into(),
    }
}

fn bundle_in(fake: &FakeApiServer, ns: &str) -> Option<String> {
    let cm = fake.get(&FakeApiServer::core_key(
        "configmaps",
        Some(ns),
        TRUST_BUNDLE_CONFIGMAP,
    ))?;
    cm["data"][TRUST_BUNDLE_KEY].as_str().map(str::to_string)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn replicas_bootstrapping_at_once_end_up_with_one_ca() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let (a, b, c) = tokio::join!(
        start_cluster_certd(&fake, &[]),
        start_cluster_certd(&fake, &[]),
        start_cluster_certd(&fake, &[]),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let stored = secret_data(&fake, "ca.crt");
    assert_eq!(fake.list("secrets").len(), 1);
    for replica in [&a, &b, &c] {
        assert_eq!(
            replica.bundle_pem(),
            stored,
            "every replica uses the stored root"
        );
    }
    // The three started together (one thread, so all three read "absent"
    // before any create): all three created, the API server let one win.
    let creates = fake
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && r.verb == "create")
        .count();
    assert_eq!(creates, 3, "all replicas raced to create the Secret");

    // And certificates from different replicas chain to that one root.
    fake.add_service_account_token("t", "shop", "cart", TOKEN_AUDIENCE);
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    for replica in [&a, &c] {
        let (_k, pem) = csr_for(&id);
        let answer = request_certificate(&target(replica), "t", &pem)
            .await
            .unwrap();
        verify_workload_chain(
            &answer.certificate_chain,
            &stored,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_restarted_certd_reuses_the_existing_ca() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let first = start_cluster_certd(&fake, &[]).await.unwrap();
    let bundle = first.bundle_pem();
    drop(first);
    let second = start_cluster_certd(&fake, &[]).await.unwrap();
    assert_eq!(second.bundle_pem(), bundle);
}

#[tokio::test]
async fn a_user_provided_intermediate_signs_and_the_root_is_the_bundle() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let root = Ca::generate_root("cluster.local").unwrap();
    let root_key = KeyPair::from_pem(root.key_pem()).unwrap();
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(root.cert_pem(), root_key).unwrap();
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "team intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(90);
    let int_cert = params.signed_by(&int_key, &root_issuer).unwrap();
    let b64 = |s: &str| STANDARD.encode(s);
    fake.insert(
        ca_secret_key(),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": "meshlite-ca", "namespace": "meshlite-system" },
            "data": {
                "tls.crt": b64(&int_cert.pem()),
                "tls.key": b64(&int_key.serialize_pem()),
                "ca.crt": b64(root.bundle_pem()),
            },
        }),
    );
    let certd = start_cluster_certd(&fake, &[]).await.unwrap();
    assert_eq!(certd.bundle_pem(), root.bundle_pem());
    fake.add_service_account_token("t", "shop", "cart", TOKEN_AUDIENCE);
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let (_k, pem) = csr_for(&id);
    let answer = request_certificate(&target(&certd), "t", &pem)
        .await
        .unwrap();
    assert_eq!(
        answer
            .certificate_chain
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert_eq!(answer.trust_bundle, root.bundle_pem());
    let uris = verify_workload_chain(
        &answer.certificate_chain,
        root.bundle_pem(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(uris, vec![id.to_uri()]);
    // Nothing was created: the user's Secret is used as is.
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.resource == "secrets" && r.verb == "create")
    );
}

#[tokio::test]
async fn a_broken_ca_secret_stops_certd_from_starting() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.insert(
        ca_secret_key(),
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "meshlite-ca" },
                "data": { "tls.crt": STANDARD.encode("not a certificate") } }),
    );
    let err = start_cluster_certd(&fake, &[]).await.unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
}

#[tokio::test]
async fn the_trust_bundle_reaches_labelled_namespaces_and_the_webhook_and_follows_rotation() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_namespace("shop", &[(INJECT_LABEL, INJECT_ENABLED)]);
    fake.add_namespace("web", &[(INJECT_LABEL, INJECT_ENABLED)]);
    fake.add_namespace("plain", &[]);
    // A stale ConfigMap someone left behind gets corrected, not duplicated.
    fake.insert(
        FakeApiServer::core_key("configmaps", Some("web"), TRUST_BUNDLE_CONFIGMAP),
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": TRUST_BUNDLE_CONFIGMAP, "namespace": "web" },
                "data": { TRUST_BUNDLE_KEY: "stale" } }),
    );
    fake.insert(
        webhook_key(),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": { "name": WEBHOOK_CONFIGURATION },
            "webhooks": [
                { "name": "pods.meshlite.io", "clientConfig": { "service": { "name": "meshlite-injector", "namespace": "meshlite-system" } } },
                { "name": "other.meshlite.io", "clientConfig": { "caBundle": STANDARD.encode("old") } },
            ],
        }),
    );
    // Another writer gets in first once: certd re-reads and retries.
    fake.inject_conflicts("update", "configmaps", None, 1);
    fake.inject_conflicts("patch", "mutatingwebhookconfigurations", None, 1);
    let certd = start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"])
        .await
        .unwrap();
    let bundle = certd.bundle_pem();
    eventually("ConfigMaps in labelled namespaces", || {
        bundle_in(&fake, "shop").as_deref() == Some(bundle.as_str())
            && bundle_in(&fake, "web").as_deref() == Some(bundle.as_str())
    })
    .await;
    assert_eq!(
        bundle_in(&fake, "plain"),
        None,
        "unlabelled namespaces are left alone"
    );
    let web_updates = fake
        .requests()
        .iter()
        .filter(|r| {
            r.resource == "configmaps"
                && r.verb == "update"
                && r.namespace.as_deref() == Some("web")
        })
        .count();
    assert_eq!(web_updates, 2, "the conflicting update was retried");
    let ca_bundles = || -> Vec<String> {
        let hooks = fake.get(&webhook_key()).unwrap()["webhooks"].clone();
        hooks
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let b = h["clientConfig"]["caBundle"].as_str().unwrap_or_default();
                String::from_utf8(STANDARD.decode(b).unwrap()).unwrap()
            })
            .collect()
    };
    eventually("the webhook caBundle", || {
        ca_bundles().iter().all(|b| *b == bundle)
    })
    .await;
    // The webhook's other fields are untouched.
    let hooks = fake.get(&webhook_key()).unwrap();
    assert_eq!(
        hooks["webhooks"][0]["clientConfig"]["service"]["name"],
        "meshlite-injector"
    );

    // Rotation, step 1: the operator adds a new root to ca.crt. certd picks it
    // up and distributes both, so workloads trust old and new during the overlap.
    let next = Ca::generate_root("cluster.local").unwrap();
    let both = format!("{bundle}{}", next.bundle_pem());
    let mut secret = fake.get(&ca_secret_key()).unwrap();
    secret["data"]["ca.crt"] = Value::String(STANDARD.encode(&both));
    fake.insert(ca_secret_key(), secret);
    eventually("the overlapped bundle everywhere", || {
        bundle_in(&fake, "shop").as_deref() == Some(both.as_str())
            && ca_bundles().iter().all(|b| *b == both)
            && certd.bundle_pem() == both
    })
    .await;

    // A namespace labelled later gets its ConfigMap on the next pass.
    fake.add_namespace("late", &[(INJECT_LABEL, INJECT_ENABLED)]);
    eventually("the late namespace", || {
        bundle_in(&fake, "late").as_deref() == Some(both.as_str())
    })
    .await;
    let metrics = certd.metrics.encode().unwrap();
    assert!(
        metrics.contains("meshlite_certd_ca_not_after_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_skipped_and_the_rest_still_runs() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_namespace("shop", &[(INJECT_LABEL, INJECT_ENABLED)]);
    let certd = start_cluster_certd(&fake, &[]).await.unwrap();
    let bundle = certd.bundle_pem();
    eventually("the ConfigMap", || {
        bundle_in(&fake, "shop").as_deref() == Some(bundle.as_str())
    })
    .await;
    let patched: BTreeSet<String> = fake
        .requests()
        .iter()
        .filter(|r| r.resource == "mutatingwebhookconfigurations")
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(
        patched,
        BTreeSet::from(["get".to_string()]),
        "looked, found nothing, patched nothing"
    );
}
