//! The injector on arbitrary AdmissionReview bodies: `review::parse`, the pod
//! in the request, `skip_reason` and `mutate`, under the default config and a
//! legacy-mode one, in a namespace without annotations and a strict one.
//!
//! A patch is only useful if the API server can apply it, so for every patch:
//! it applies cleanly to the pod's JSON, the result is still a Pod, and that
//! Pod is seen as injected (a reinvocation changes nothing).
#![no_main]

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use meshlite_injector::config::LegacyMode;
use meshlite_injector::mutate::skip_reason;
use meshlite_injector::review::{self, AdmissionReviewResponse};
use meshlite_injector::settings::Annotations;
use meshlite_injector::{Decision, InjectorConfig, SkipReason, mutate};

static CONFIGS: LazyLock<[InjectorConfig; 2]> = LazyLock::new(|| {
    let legacy = InjectorConfig {
        legacy_mode: LegacyMode::On,
        ..InjectorConfig::default()
    };
    [InjectorConfig::default(), legacy]
});

static NAMESPACES: LazyLock<[Annotations; 2]> = LazyLock::new(|| {
    let strict = Annotations::from([(
        meshlite_contract::MODE_ANNOTATION.to_string(),
        "strict".to_string(),
    )]);
    [Annotations::new(), strict]
});

fuzz_target!(|body: &[u8]| {
    let Ok(request) = review::parse(body) else {
        return;
    };
    let _ = request.is_pod_create();
    let Ok(pod) = request.pod() else {
        return;
    };
    let skip = skip_reason(&pod);
    for cfg in CONFIGS.iter() {
        for namespace in NAMESPACES.iter() {
            match mutate(&pod, namespace, cfg) {
                Ok(Decision::Skip(reason)) => assert_eq!(Some(reason), skip),
                Ok(Decision::Inject(patch)) => {
                    assert_eq!(skip, None);
                    check_patch(&pod, &patch, namespace, cfg);
                }
                Err(_) => assert_eq!(skip, None),
            }
        }
    }
});

fn check_patch(
    pod: &Pod,
    patch: &json_patch::Patch,
    namespace: &Annotations,
    cfg: &InjectorConfig,
) {
    let review = AdmissionReviewResponse::patch("uid", patch).expect("a patch serializes");
    let decoded = review.decoded_patch().expect("a patch is attached");
    assert_eq!(decoded.as_ref(), Ok(patch), "the review carries the patch");

    let mut json = serde_json::to_value(pod).expect("a Pod serializes");
    if let Err(e) = json_patch::patch(&mut json, patch) {
        panic!("the patch does not apply: {e}\npatch: {patch:?}");
    }
    let injected: Pod = match serde_json::from_value(json) {
        Ok(p) => p,
        Err(e) => panic!("the patched pod is not a Pod: {e}"),
    };
    assert_eq!(skip_reason(&injected), Some(SkipReason::AlreadyInjected));
    match mutate(&injected, namespace, cfg) {
        Ok(Decision::Skip(SkipReason::AlreadyInjected)) => {}
        other => panic!("reinvocation changed something: {other:?}"),
    }
}
