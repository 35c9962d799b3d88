//! Secure naming against the fake API server: certd's reflectors list and
//! watch Pods, Services and EndpointSlices through a real `kube::Client`, and
//! `POST /v1/naming` answers from them. Objects are written the way the
//! cluster writes them: created, then their status set through `/status`.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use meshlite_certd::client::{Target, request_naming};
use meshlite_contract::naming::{Meshed, NamingResponse};
use meshlite_contract::{SpiffeId, TOKEN_AUDIENCE, TrustDomain};
use meshlite_tests::fake_apiserver::certd::{start_cluster_certd, target};
use meshlite_tests::fake_apiserver::{FakeApiServer, workloads};

const TOKEN: &str = "client-token";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TrustDomain::default(), ns, sa).unwrap()
}

async fn ask(t: &Target, addr: &str) -> NamingResponse {
    request_naming(t, TOKEN, addr.parse::<SocketAddr>().unwrap())
        .await
        .unwrap()
}

/// Asks until `want` holds (the watch delivers changes asynchronously).
async fn eventually(
    t: &Target,
    addr: &str,
    want: impl Fn(&NamingResponse) -> bool,
) -> NamingResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = ask(t, addr).await;
        if want(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: the answer never changed; last {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (FakeApiServer, meshlite_certd::app::Running, Target) {
    meshlite_proxy::tls::install_provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_service_account_token(TOKEN, "shop", "client", TOKEN_AUDIENCE);
    let certd = start_cluster_certd(&fake, &[]).await.unwrap();
    let t = target(&certd);
    (fake, certd, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_pod_ips_answer_the_identities_behind_them() {
    let (fake, certd, t) = setup().await;
    workloads::create_pod(&fake, "shop", "web-a", "web", "10.1.0.10", true)
        .await
        .unwrap();
    workloads::create_pod(&fake, "shop", "web-b", "web-canary", "10.1.0.11", true)
        .await
        .unwrap();
    workloads::create_pod(&fake, "shop", "legacy", "legacy", "10.1.0.12", false)
        .await
        .unwrap();
    workloads::create_service(
        &fake,
        "shop",
        "web",
        "10.96.0.20",
        &["10.1.0.10", "10.1.0.11"],
    )
    .await
    .unwrap();
    workloads::create_service(
        &fake,
        "shop",
        "mixed",
        "10.96.0.21",
        &["10.1.0.10", "10.1.0.12"],
    )
    .await
    .unwrap();

    let a = eventually(&t, "10.96.0.20:80", |a| a.meshed == Meshed::Meshed).await;
    assert_eq!(
        a.identities,
        vec![id("shop", "web"), id("shop", "web-canary")]
    );
    assert!(a.ttl_seconds > 0 && a.ttl_seconds <= 30, "{a:?}");
    let a = eventually(&t, "10.96.0.21:80", |a| a.meshed == Meshed::Mixed).await;
    assert_eq!(a.identities, vec![id("shop", "web")]);
    let a = ask(&t, "10.1.0.11:8080").await;
    assert_eq!(
        (a.meshed, a.identities),
        (Meshed::Meshed, vec![id("shop", "web-canary")])
    );
    assert_eq!(ask(&t, "10.1.0.12:8080").await.meshed, Meshed::Unmeshed);
    assert_eq!(ask(&t, "192.0.2.7:443").await.meshed, Meshed::Unknown);

    // One TokenReview for the caller's token, however often it asks.
    let reviews = fake
        .requests()
        .iter()
        .filter(|r| r.resource == "tokenreviews")
        .count();
    assert_eq!(
        reviews, 1,
        "naming reuses a recent review of the same token"
    );
    // Counted by outcome.
    assert!(certd.metrics.naming_requests("meshed") >= 2);
    assert_eq!(certd.metrics.naming_requests("unmeshed"), 1);
    // certd only listed and watched the three resources.
    for r in fake.requests() {
        if ["pods", "services", "endpointslices"].contains(&r.resource.as_str())
            && r.subresource.is_none()
        {
            assert!(
                ["list", "watch", "create"].contains(&r.verb.as_str()),
                "unexpected {r:?}"
            );
        }
    }
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.resource == "endpointslices"
                && r.group == "discovery.k8s.io"
                && r.verb == "watch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_ip_reused_by_another_service_account_answers_only_the_new_identity() {
    let (fake, _certd, t) = setup().await;
    workloads::create_pod(&fake, "shop", "cart-0", "cart", "10.1.0.9", true)
        .await
        .unwrap();
    let a = eventually(&t, "10.1.0.9:8080", |a| a.meshed == Meshed::Meshed).await;
    assert_eq!(a.identities, vec![id("shop", "cart")]);

    Api::<Pod>::namespaced(fake.client(), "shop")
        .delete("cart-0", &DeleteParams::default())
        .await
        .unwrap();
    let a = eventually(&t, "10.1.0.9:8080", |a| a.meshed == Meshed::Unknown).await;
    assert!(a.identities.is_empty());

    workloads::create_pod(&fake, "billing", "pay-0", "payments", "10.1.0.9", true)
        .await
        .unwrap();
    let a = eventually(&t, "10.1.0.9:8080", |a| a.meshed == Meshed::Meshed).await;
    assert_eq!(
        a.identities,
        vec![id("billing", "payments")],
        "only the new identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_needs_a_valid_token() {
    let (_fake, certd, t) = setup().await;
    let err = request_naming(&t, "not-a-token", "10.1.0.9:80".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.refusal().map(|(s, _)| s), Some(401), "{err}");
    assert_eq!(certd.metrics.naming_requests("meshed"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_is_unavailable_until_the_pods_are_listed_never_unknown() {
    meshlite_proxy::tls::install_provider();
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_service_account_token(TOKEN, "shop", "client", TOKEN_AUDIENCE);
    // Every pod list fails, so certd's pod reflector never finishes its first list.
    fake.inject_conflicts("list", "pods", None, usize::MAX);
    let certd = start_cluster_certd(&fake, &[]).await.unwrap();
    let t = target(&certd);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = request_naming(&t, TOKEN, "10.1.0.9:8080".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal().map(|(s, b)| (s, b.error.as_str())),
        Some((503, "unavailable")),
        "{err}"
    );
    assert_eq!(certd.metrics.naming_requests("unknown"), 0);
}
