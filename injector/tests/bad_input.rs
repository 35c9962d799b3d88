//! Requests the webhook cannot use: each gets a clear answer, never a panic.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod support;

use meshlite_injector::InjectorConfig;
use meshlite_injector::webhook::Answer;
use serde_json::json;
use support::*;

async fn answer(body: &[u8]) -> Answer {
    webhook(InjectorConfig::default()).answer(body).await
}

fn denial(answer: Answer) -> (String, u16, String) {
    match answer {
        Answer::Review(r, _) => {
            assert!(!r.response.allowed, "{r:?}");
            assert!(r.response.patch.is_none());
            let status = r.response.status.expect("a denial carries a status");
            (r.response.uid, status.code, status.message)
        }
        other => panic!("expected a denial review, got {other:?}"),
    }
}

#[tokio::test]
async fn unreadable_bodies_get_http_400_with_the_reason() {
    for body in [
        &b""[..],
        b"not json",
        b"[]",
        b"{\"kind\":\"AdmissionReview\"}",
        b"{\"request\":{\"uid\":\"\"}}",
    ] {
        match answer(body).await {
            Answer::BadRequest(msg) => assert!(msg.contains("not an AdmissionReview"), "{msg}"),
            other => panic!(
                "{:?}: expected 400, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
}

#[tokio::test]
async fn wrong_api_version_or_kind_is_denied_echoing_the_uid() {
    let mut review = fixture("deployment_pod.json");
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (uid, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(code, 400);
    assert!(msg.contains("admission.k8s.io/v1beta1"), "{msg}");

    review["apiVersion"] = json!("admission.k8s.io/v1");
    review["kind"] = json!("Pod");
    let (_, code, _) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
}

#[tokio::test]
async fn a_pod_that_does_not_deserialize_is_denied_as_invalid() {
    let review = fixture("deployment_pod.json");
    for bad in [
        json!("a string"),
        json!({"spec": {"containers": "web"}}),
        json!(null),
    ] {
        let (_, code, msg) = denial(answer(&with_pod(&review, bad.clone())).await);
        assert_eq!(code, 400, "{bad}");
        assert!(msg.contains("Pod") || msg.contains("object"), "{msg}");
    }
    let mut missing = review.clone();
    missing["request"].as_object_mut().unwrap().remove("object");
    let (_, code, msg) = denial(answer(&serde_json::to_vec(&missing).unwrap()).await);
    assert_eq!(
        (code, msg.as_str()),
        (400, "AdmissionReview request has no object")
    );
}

#[tokio::test]
async fn a_malformed_request_section_is_denied() {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "request": {"uid": "u-1", "kind": "Pod"}});
    let (uid, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!((uid.as_str(), code), ("u-1", 400));
    assert!(msg.contains("malformed"), "{msg}");
}

#[tokio::test]
async fn non_create_operations_and_other_kinds_are_allowed_untouched() {
    let mut review = fixture("deployment_pod.json");
    review["request"]["operation"] = json!("UPDATE");
    match answer(&serde_json::to_vec(&review).unwrap()).await {
        Answer::Review(r, label) => {
            assert_eq!(label, "ignored");
            assert!(r.response.allowed && r.response.patch.is_none());
        }
        other => panic!("{other:?}"),
    }
    review["request"]["operation"] = json!("CREATE");
    review["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert!(
        matches!(answer(&serde_json::to_vec(&review).unwrap()).await, Answer::Review(r, "ignored") if r.response.allowed)
    );
}

#[tokio::test]
async fn bad_skip_annotation_denies_with_the_annotation_named() {
    let mut review = fixture("deployment_pod.json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"meshlite.io/skip-outbound-ports": "postgres"});
    let (_, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
    assert!(
        msg.contains("meshlite.io/skip-outbound-ports") && msg.contains("postgres"),
        "{msg}"
    );
}

#[tokio::test]
async fn bad_client_address_annotation_denies_naming_both_values() {
    let mut review = fixture("deployment_pod.json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"meshlite.io/client-address": "keep"});
    let (_, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
    for part in ["meshlite.io/client-address", "keep", "preserve", "proxy"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
}

#[tokio::test]
async fn reserved_volume_name_is_denied() {
    let mut review = fixture("deployment_pod.json");
    review["request"]["object"]["spec"]["volumes"] =
        json!([{"name": "meshlite-token", "emptyDir": {}}]);
    let (_, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
    assert!(msg.contains("meshlite-token"), "{msg}");
}

#[tokio::test]
async fn unknown_namespace_denies_instead_of_guessing_the_mode() {
    let mut review = fixture("deployment_pod.json");
    review["request"]["namespace"] = json!("nowhere");
    let (_, code, msg) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 503);
    assert!(msg.contains("nowhere"), "{msg}");
}

#[tokio::test]
async fn pod_without_namespace_anywhere_is_denied() {
    let mut review = fixture("deployment_pod.json");
    review["request"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    review["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let (_, code, _) = denial(answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
}

#[tokio::test]
async fn native_sidecars_forced_on_an_old_server_refuse_pods_naming_meshlite_but_pass_opt_outs() {
    let mut cfg = InjectorConfig::from_text("legacyMode: false", "t").unwrap();
    let refusal = cfg
        .resolve_legacy_mode((1, 24))
        .expect("1.24 has no native sidecars");
    let mut hook = webhook(cfg);
    hook.refusal = Some(refusal.into());
    let review = fixture("deployment_pod.json");
    let (_, code, msg) = denial(hook.answer(&serde_json::to_vec(&review).unwrap()).await);
    assert_eq!(code, 400);
    assert!(
        msg.contains("meshlite") && msg.contains("legacyMode") && msg.contains("meshlite-config"),
        "{msg}"
    );
    let opted_out = fixture("opted_out_pod.json");
    assert!(matches!(
        hook.answer(&serde_json::to_vec(&opted_out).unwrap()).await,
        Answer::Review(r, _) if r.response.allowed
    ));
}
