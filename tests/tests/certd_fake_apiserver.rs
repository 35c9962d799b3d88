//! The fake API server behaves like kube-apiserver where certd depends on it:
//! these tests drive it through a real `kube::Client`, so a fake that drifts
//! from the documented semantics fails here rather than hiding a certd bug.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use meshlite_tests::fake_apiserver::certd::csr;
use meshlite_tests::fake_apiserver::{FakeApiServer, TokenEntry};

fn status_of(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API Status, got {other}"),
    }
}

fn new_csr() -> CertificateSigningRequest {
    let (_k, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256, vec![]);
    CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("t-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.into_bytes()),
            signer_name: "example.com/s".into(),
            expiration_seconds: Some(600),
            ..Default::default()
        },
        status: None,
    }
}

fn condition(kind: &str) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some("Test".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_conflicts_and_not_found_answer_with_status_objects() {
    let fake = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(fake.client(), "a");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("a"));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(
        status_of(cms.create(&PostParams::default(), &cm).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        status_of(cms.get("y").await.unwrap_err()),
        (404, "NotFound".into())
    );
    assert!(cms.get_opt("y").await.unwrap().is_none());

    // Optimistic concurrency: a write based on an old resourceVersion is refused.
    let mut first = created.clone();
    first.data = Some([("k".to_string(), "1".to_string())].into());
    cms.replace("x", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created;
    stale.data = Some([("k".to_string(), "2".to_string())].into());
    assert_eq!(
        status_of(
            cms.replace("x", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    assert_eq!(cms.get("x").await.unwrap().data.unwrap()["k"], "1");
}

#[tokio::test]
async fn csr_subresources_change_only_their_own_fields() {
    let fake = FakeApiServer::start().await.unwrap();
    let api: Api<CertificateSigningRequest> = Api::all(fake.client());
    let created = api
        .create(&PostParams::default(), &new_csr())
        .await
        .unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("t-") && name.len() == 7, "{name}");

    // /status cannot approve, and a certificate needs an approved request.
    let mut via_status = created.clone();
    via_status.status = Some(Default::default());
    via_status.status.as_mut().unwrap().conditions = Some(vec![condition("Approved")]);
    let after = api
        .replace_status(&name, &PostParams::default(), &via_status)
        .await
        .unwrap();
    assert!(
        after
            .status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .is_empty()
    );
    let mut cert = api.get(&name).await.unwrap();
    cert.status.get_or_insert_with(Default::default).certificate = Some(ByteString(
        b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".to_vec(),
    ));
    assert_eq!(
        status_of(
            api.replace_status(&name, &PostParams::default(), &cert)
                .await
                .unwrap_err()
        )
        .0,
        422
    );

    // /approval sets the condition but not the spec.
    let mut approve = api.get(&name).await.unwrap();
    approve
        .status
        .get_or_insert_with(Default::default)
        .conditions = Some(vec![condition("Approved")]);
    approve.spec.signer_name = "example.com/other".into();
    let approved = api
        .replace_subresource("approval", &name, &PostParams::default(), &approve)
        .await
        .unwrap();
    assert_eq!(approved.spec.signer_name, "example.com/s");
    assert_eq!(
        approved.status.unwrap().conditions.unwrap()[0].type_,
        "Approved"
    );

    // Approved and Denied together are invalid.
    let mut both = api.get(&name).await.unwrap();
    both.status.as_mut().unwrap().conditions =
        Some(vec![condition("Approved"), condition("Denied")]);
    assert_eq!(
        status_of(
            api.replace_subresource("approval", &name, &PostParams::default(), &both)
                .await
                .unwrap_err()
        )
        .0,
        422
    );

    // Too short a lifetime is refused at create, as the real validation does.
    let mut short = new_csr();
    short.spec.expiration_seconds = Some(60);
    assert_eq!(
        status_of(
            api.create(&PostParams::default(), &short)
                .await
                .unwrap_err()
        )
        .0,
        422
    );
}

#[tokio::test]
async fn watch_streams_changes_after_a_resource_version_for_one_name() {
    let fake = FakeApiServer::start().await.unwrap();
    let api: Api<CertificateSigningRequest> = Api::all(fake.client());
    let a = api
        .create(&PostParams::default(), &new_csr())
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &new_csr())
        .await
        .unwrap();
    let name = a.metadata.name.clone().unwrap();
    let rv = b.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(5);
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    // Changes to another object are not reported; a change to ours is.
    let mut other = b.clone();
    other.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    api.replace(
        b.metadata.name.as_deref().unwrap(),
        &PostParams::default(),
        &other,
    )
    .await
    .unwrap();
    let mut mine = api.get(&name).await.unwrap();
    mine.status.get_or_insert_with(Default::default).conditions = Some(vec![condition("Approved")]);
    api.replace_subresource("approval", &name, &PostParams::default(), &mine)
        .await
        .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some(name.as_str()));
            assert_eq!(o.status.unwrap().conditions.unwrap()[0].type_, "Approved");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
}

#[tokio::test]
async fn token_reviews_follow_the_audience_rules() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_token(
        "t",
        TokenEntry {
            username: "system:serviceaccount:a:b".into(),
            audiences: vec!["aud-1".into()],
            expired: false,
            pod: Some("p".into()),
        },
    );
    let api: Api<TokenReview> = Api::all(fake.client());
    let review = |aud: Option<&str>| TokenReview {
        spec: TokenReviewSpec {
            token: Some("t".into()),
            audiences: aud.map(|a| vec![a.to_string(), "unrelated".to_string()]),
        },
        ..Default::default()
    };
    let ok = api
        .create(&PostParams::default(), &review(Some("aud-1")))
        .await
        .unwrap();
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.audiences,
        Some(vec!["aud-1".to_string()]),
        "the intersection"
    );
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:a:b"));
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        vec!["p"]
    );
    let wrong = api
        .create(&PostParams::default(), &review(Some("aud-2")))
        .await
        .unwrap();
    assert_eq!(wrong.status.unwrap().authenticated, Some(false));
    // No audiences requested: checked against the API server's own audience.
    let none = api
        .create(&PostParams::default(), &review(None))
        .await
        .unwrap();
    assert_eq!(none.status.unwrap().authenticated, Some(false));
}

#[tokio::test]
async fn namespaces_list_by_label_selector_and_down_means_503() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.add_namespace("in", &[("meshlite.io/inject", "enabled")]);
    fake.add_namespace("out", &[("meshlite.io/inject", "disabled")]);
    fake.add_namespace("bare", &[]);
    let api: Api<Namespace> = Api::all(fake.client());
    let names = |list: kube::core::ObjectList<Namespace>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|n| n.metadata.name.unwrap())
            .collect()
    };
    let lp = ListParams::default().labels("meshlite.io/inject=enabled");
    assert_eq!(names(api.list(&lp).await.unwrap()), vec!["in"]);
    assert_eq!(
        names(api.list(&ListParams::default()).await.unwrap()).len(),
        3
    );
    fake.set_down(true);
    // The client retries 503s; bound the wait and check it is still failing.
    let result = tokio::time::timeout(std::time::Duration::from_millis(300), api.list(&lp)).await;
    assert!(
        !matches!(result, Ok(Ok(_))),
        "a down server answers nothing useful"
    );
}
