//! Shared helpers for the injector's tests: fixtures, a webhook with a fixed
//! namespace table, and patch application.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use meshlite_injector::metrics::Metrics;
use meshlite_injector::review::AdmissionReviewResponse;
use meshlite_injector::webhook::Answer;
use meshlite_injector::{InjectorConfig, StaticNamespaces, Webhook};
use serde_json::Value;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Compares `actual` with the golden file `name`; `MESHLITE_BLESS=1` rewrites it.
pub fn assert_golden(name: &str, actual: &Value) {
    let path = fixture_path(name);
    let pretty = serde_json::to_string_pretty(actual).expect("a Value always serialises") + "\n";
    if std::env::var_os("MESHLITE_BLESS").is_some() {
        std::fs::write(&path, &pretty).expect("golden file is writable");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with MESHLITE_BLESS=1",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&expected).expect("golden file is JSON");
    assert_eq!(
        &expected, actual,
        "{name} differs; if the change is intended, rerun with MESHLITE_BLESS=1 and review the diff"
    );
}

/// Namespaces the tests know: `shop` (no annotations), `payments` (strict).
pub fn namespaces() -> StaticNamespaces {
    let mut map = BTreeMap::new();
    map.insert("shop".to_string(), BTreeMap::new());
    map.insert(
        "payments".to_string(),
        [(
            meshlite_contract::MODE_ANNOTATION.to_string(),
            "strict".to_string(),
        )]
        .into(),
    );
    StaticNamespaces(map)
}

pub fn webhook(config: InjectorConfig) -> Webhook {
    Webhook {
        config: Arc::new(config),
        namespaces: Arc::new(namespaces()),
        metrics: Arc::new(Metrics::default()),
        refusal: None,
        installed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        api_timeout: meshlite_injector::webhook::DEFAULT_API_TIMEOUT,
    }
}

/// Runs the webhook on a body, expecting a review.
pub async fn review(hook: &Webhook, body: &[u8]) -> (AdmissionReviewResponse, &'static str) {
    match hook.answer(body).await {
        Answer::Review(r, label) => (r, label),
        other => panic!("expected a review, got {other:?}"),
    }
}

/// The pod inside a review fixture.
pub fn pod_of(review: &Value) -> Value {
    review["request"]["object"].clone()
}

/// Applies the review's patch to `pod`.
pub fn apply(pod: &Value, resp: &AdmissionReviewResponse) -> Value {
    let patch = resp
        .decoded_patch()
        .expect("a patch")
        .expect("patch decodes");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("patch applies to the pod");
    out
}

/// A review fixture with its pod replaced.
pub fn with_pod(review: &Value, pod: Value) -> Vec<u8> {
    let mut r = review.clone();
    r["request"]["object"] = pod;
    serde_json::to_vec(&r).expect("a Value always serialises")
}
