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
use meshlite_certd::kube::webhook_cert::{INJECTOR_SECRET, INJECTOR_SERVICE};
use meshlite_contract::{
    CA_SECRET, INJECT_ENABLED, INJECT_LABEL, SYSTEM_NAMESPACE, SpiffeId, TOKEN_AUDIENCE,
    TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, WEBHOOK_CONFIGURATION,
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
    assert!(
        fake.list("secrets").iter().all(
            |s| [CA_SECRET, INJECTOR_SECRET].contains(&s["metadata"]["name"].as_str().unwrap())
        ),
        "one CA Secret (and the injector's)"
    );
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
        .filter(|r| {
            r.resource == "secrets" && r.verb == "create" && r.name.as_deref() == Some(CA_SECRET)
        })
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
    // The gauge operators alert on is the intermediate's: it expires first.
    assert_eq!(
        certd.metrics.ca_not_after(),
        params.not_after.unix_timestamp()
    );
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
    // The CA Secret was not created: the user's Secret is used as is.
    assert!(!fake.requests().iter().any(|r| r.resource == "secrets"
        && r.verb == "create"
        && r.name.as_deref() == Some(CA_SECRET)));
}

#[tokio::test]
async fn the_ca_not_after_gauge_follows_a_replaced_signing_ca() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let certd = start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"])
        .await
        .unwrap();
    let bootstrapped = certd.ca.get().not_after().unix_timestamp();
    assert_eq!(certd.metrics.ca_not_after(), bootstrapped);

    // The operator replaces the root with one that expires in 40 days.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "short-lived root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(40);
    let root = params.self_signed(&key).unwrap();
    let mut secret = fake.get(&ca_secret_key()).unwrap();
    secret["data"] = json!({
        "tls.crt": STANDARD.encode(root.pem()),
        "tls.key": STANDARD.encode(key.serialize_pem()),
        "ca.crt": STANDARD.encode(root.pem()),
    });
    fake.insert(ca_secret_key(), secret);
    let expected = params.not_after.unix_timestamp();
    assert!(expected < bootstrapped);
    eventually("the gauge to follow the new CA", || {
        certd.metrics.ca_not_after() == expected
    })
    .await;
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

// ---------------------------------------------------------------------------
// The injector's serving certificate (certd/src/kube/webhook_cert.rs)

fn injector_secret_key() -> Key {
    FakeApiServer::core_key("secrets", Some(SYSTEM_NAMESPACE), INJECTOR_SECRET)
}

fn injector_dns() -> [String; 2] {
    [
        format!("{INJECTOR_SERVICE}.{SYSTEM_NAMESPACE}.svc"),
        format!("{INJECTOR_SERVICE}.{SYSTEM_NAMESPACE}.svc.cluster.local"),
    ]
}

/// The injector Secret's `field`, decoded; `None` while it does not exist.
fn injector_data(fake: &FakeApiServer, field: &str) -> Option<String> {
    let secret = fake.get(&injector_secret_key())?;
    let b64 = secret["data"][field].as_str()?;
    Some(String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap())
}

fn resource_version(fake: &FakeApiServer) -> String {
    fake.get(&injector_secret_key()).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Verifies `chain_pem` as the API server does when it calls the webhook:
/// a TLS server certificate for `name`, chaining to the roots in `bundle_pem`.
fn verify_as_server(chain_pem: &str, bundle_pem: &str, name: &str) -> Result<(), rustls::Error> {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(root.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn assert_valid_injector_cert(fake: &FakeApiServer, bundle: &str) {
    let secret = fake.get(&injector_secret_key()).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let chain = injector_data(fake, "tls.crt").unwrap();
    for name in injector_dns() {
        verify_as_server(&chain, bundle, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        verify_as_server(&chain, bundle, "meshlite-certd.meshlite-system.svc").is_err(),
        "only the injector's names"
    );
    let key = KeyPair::from_pem(&injector_data(fake, "tls.key").unwrap()).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let leaf = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .unwrap()
        .1;
    let leaf = leaf.parse_x509().unwrap();
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(),
        "tls.key is the certificate's key"
    );
}

fn secret_updates(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| {
            r.resource == "secrets"
                && r.verb == "update"
                && r.name.as_deref() == Some(INJECTOR_SECRET)
        })
        .count()
}

#[tokio::test]
async fn certd_creates_the_injector_certificate_and_later_passes_leave_it_alone() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let certd = start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"])
        .await
        .unwrap();
    eventually("the injector Secret", || {
        injector_data(&fake, "tls.crt").is_some()
    })
    .await;
    assert_valid_injector_cert(&fake, &certd.bundle_pem());
    let rv = resource_version(&fake);
    let chain = injector_data(&fake, "tls.crt");
    eventually("two more passes", || {
        certd.metrics.injector_cert_passes("current", "") >= 2
    })
    .await;
    assert_eq!(resource_version(&fake), rv, "not rewritten");
    assert_eq!(injector_data(&fake, "tls.crt"), chain);
    assert_eq!(secret_updates(&fake), 0);
    assert_eq!(certd.metrics.injector_cert_passes("created", "absent"), 1);
    let metrics = certd.metrics.encode().unwrap();
    assert!(
        metrics.contains(
            "meshlite_certd_injector_certificate_passes_total{result=\"created\",reason=\"absent\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_injector_certificate_from_another_ca_or_past_half_its_life_is_replaced() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    // Left over from the manual script, issued by some other CA.
    let other = Ca::generate_root("cluster.local").unwrap();
    let foreign_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign = other
        .issue_serving(&foreign_key, &injector_dns(), &[])
        .unwrap()
        .chain_pem;
    let secret = |chain: &str, key: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": INJECTOR_SECRET, "namespace": SYSTEM_NAMESPACE,
                          "labels": { "keep": "me" } },
            "data": { "tls.crt": STANDARD.encode(chain), "tls.key": STANDARD.encode(key) },
        })
    };
    fake.insert(
        injector_secret_key(),
        secret(&foreign, &foreign_key.serialize_pem()),
    );
    // Another writer gets in first once: certd leaves it to the next pass.
    fake.inject_conflicts("update", "secrets", None, 1);
    let certd = start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"])
        .await
        .unwrap();
    let bundle = certd.bundle_pem();
    eventually("the foreign certificate replaced", || {
        injector_data(&fake, "tls.crt").is_some_and(|c| c != foreign)
    })
    .await;
    assert_valid_injector_cert(&fake, &bundle);
    assert_eq!(
        fake.get(&injector_secret_key()).unwrap()["metadata"]["labels"]["keep"],
        "me",
        "an update keeps the rest of the Secret"
    );
    assert_eq!(
        secret_updates(&fake),
        2,
        "the conflicting update was retried"
    );
    assert_eq!(certd.metrics.injector_cert_passes("conflict", ""), 1);
    // The pass counts itself once the API server has answered its update,
    // which can be just after the Secret is seen replaced.
    eventually("the replacing pass counted", || {
        certd
            .metrics
            .injector_cert_passes("updated", "not_from_current_ca")
            == 1
    })
    .await;

    // A certificate from the current CA, but with 2 of its 22 days left.
    let ca_key = KeyPair::from_pem(&secret_data(&fake, "tls.key")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&secret_data(&fake, "tls.crt"), ca_key).unwrap();
    let old_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(injector_dns().to_vec()).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(20);
    params.not_after = now + time::Duration::days(2);
    let expiring = params.signed_by(&old_key, &issuer).unwrap().pem();
    verify_as_server(&expiring, &bundle, &injector_dns()[0]).unwrap();
    fake.insert(
        injector_secret_key(),
        secret(&expiring, &old_key.serialize_pem()),
    );
    eventually("the expiring certificate renewed", || {
        injector_data(&fake, "tls.crt").is_some_and(|c| c != expiring)
    })
    .await;
    assert_valid_injector_cert(&fake, &bundle);
    eventually("the renewing pass counted", || {
        certd.metrics.injector_cert_passes("updated", "renew") == 1
    })
    .await;
}

#[tokio::test]
async fn two_replicas_keep_one_stable_injector_secret() {
    provider();
    let fake = FakeApiServer::start().await.unwrap();
    let (a, b) = tokio::join!(
        start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"]),
        start_cluster_certd(&fake, &["--reconcile-interval-seconds", "1"]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    eventually("the injector Secret", || {
        injector_data(&fake, "tls.crt").is_some()
    })
    .await;
    assert_valid_injector_cert(&fake, &a.bundle_pem());
    let rv = resource_version(&fake);
    let chain = injector_data(&fake, "tls.crt");
    eventually("both replicas checked it twice since", || {
        a.metrics.injector_cert_passes("current", "") >= 2
            && b.metrics.injector_cert_passes("current", "") >= 2
    })
    .await;
    assert_eq!(resource_version(&fake), rv, "neither replica rewrote it");
    assert_eq!(injector_data(&fake, "tls.crt"), chain);
    assert_eq!(secret_updates(&fake), 0);
    let created =
        |r: &meshlite_certd::app::Running| r.metrics.injector_cert_passes("created", "absent");
    assert_eq!(
        created(&a) + created(&b),
        1,
        "exactly one replica created it"
    );
    let injector_secrets = fake
        .list("secrets")
        .iter()
        .filter(|s| s["metadata"]["name"] == INJECTOR_SECRET)
        .count();
    assert_eq!(injector_secrets, 1);
}
