use super::*;
use k8s_openapi::api::authentication::v1::UserInfo;
use std::collections::BTreeMap;

fn status(username: &str, audiences: &[&str], pod: Option<&str>) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        error: None,
        user: Some(UserInfo {
            username: Some(username.into()),
            extra: pod.map(|p| BTreeMap::from([(POD_NAME_EXTRA.to_string(), vec![p.to_string()])])),
            ..Default::default()
        }),
    }
}

#[test]
fn a_service_account_token_for_our_audience_gives_its_identity_and_pod() {
    let td = TrustDomain::default();
    let s = status(
        "system:serviceaccount:shop:cart",
        &["meshlite-certd"],
        Some("cart-1"),
    );
    let caller = caller_from_review(&td, "meshlite-certd", Some(&s)).unwrap();
    assert_eq!(
        caller.id.to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(caller.pod.as_deref(), Some("cart-1"));
}

#[test]
fn a_token_reviewed_for_another_audience_is_refused() {
    let td = TrustDomain::default();
    let s = status(
        "system:serviceaccount:shop:cart",
        &["https://kubernetes.default.svc"],
        None,
    );
    assert_eq!(
        caller_from_review(&td, "meshlite-certd", Some(&s)),
        Err(ApiError::WrongAudience("meshlite-certd".into()))
    );
    // An audience-unaware reviewer returns no audiences: not proof enough.
    let s = status("system:serviceaccount:shop:cart", &[], None);
    assert!(matches!(
        caller_from_review(&td, "meshlite-certd", Some(&s)),
        Err(ApiError::WrongAudience(_))
    ));
}

#[test]
fn an_unauthenticated_review_carries_the_api_servers_reason() {
    let s = TokenReviewStatus {
        authenticated: Some(false),
        error: Some("token has expired".into()),
        ..Default::default()
    };
    let err = caller_from_review(&TrustDomain::default(), "a", Some(&s)).unwrap_err();
    assert_eq!(err, ApiError::Unauthenticated("token has expired".into()));
    assert!(caller_from_review(&TrustDomain::default(), "a", None).is_err());
}

#[test]
fn users_and_malformed_service_accounts_are_not_workloads() {
    let td = TrustDomain::default();
    for name in [
        "admin",
        "system:node:n1",
        "system:serviceaccount:shop",
        "system:serviceaccount:Shop:cart",
        "system:serviceaccount::cart",
        "system:serviceaccount:shop:cart:extra",
    ] {
        let s = status(name, &["a"], None);
        assert!(
            matches!(
                caller_from_review(&td, "a", Some(&s)),
                Err(ApiError::NotServiceAccount(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn an_invalid_pod_name_is_dropped_not_trusted() {
    let s = status("system:serviceaccount:a:b", &["a"], Some("Bad Pod"));
    let caller = caller_from_review(&TrustDomain::default(), "a", Some(&s)).unwrap();
    assert_eq!(caller.pod, None);
}
