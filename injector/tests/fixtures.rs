//! Real AdmissionReview fixtures through the webhook: the patch for each, the
//! pod it produces, and that a second pass changes nothing.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod support;

use k8s_openapi::api::core::v1::{Container, Pod};
use meshlite_contract::{INIT_CONTAINER, INJECTED_ANNOTATION, PROXY_CONTAINER, env};
use meshlite_injector::InjectorConfig;
use serde_json::Value;
use support::*;

/// Injects `name`, checks the patch against its golden file and the result
/// against the original, and returns the patched pod.
async fn inject(name: &str, config: InjectorConfig) -> (Value, Pod) {
    let golden = format!("{}.patch.json", name.trim_end_matches(".json"));
    inject_as(name, &golden, config).await
}

async fn inject_as(name: &str, golden: &str, config: InjectorConfig) -> (Value, Pod) {
    let hook = webhook(config);
    let review_json = fixture(name);
    let (resp, label) = review(&hook, &serde_json::to_vec(&review_json).unwrap()).await;
    assert_eq!(label, "injected");
    assert_eq!(resp.api_version, "admission.k8s.io/v1");
    assert_eq!(resp.kind, "AdmissionReview");
    assert_eq!(resp.response.uid, review_json["request"]["uid"]);
    assert!(resp.response.allowed);
    assert_eq!(resp.response.patch_type.as_deref(), Some("JSONPatch"));
    assert_eq!(resp.response.status, None);

    let patch = resp.decoded_patch().unwrap().unwrap();
    assert_golden(golden, &serde_json::to_value(&patch).unwrap());

    let original = pod_of(&review_json);
    let patched = apply(&original, &resp);
    let typed: Pod = serde_json::from_value(patched.clone()).expect("patched pod is a valid Pod");
    assert_only_injection_added(&original, &patched);

    // Reinvocation (reinvocationPolicy: IfNeeded) must be a no-op.
    let (again, label) = review(&hook, &with_pod(&review_json, patched.clone())).await;
    assert_eq!(label, "skipped_already_injected");
    assert!(again.response.allowed);
    assert_eq!(again.response.patch, None);
    assert_eq!(again.response.patch_type, None);
    (patched, typed)
}

/// Removing exactly what injection adds (and restoring rewritten probes from the
/// proxy's env) gives back the original pod.
fn assert_only_injection_added(original: &Value, patched: &Value) {
    let mut undone = patched.clone();
    let ann = undone["metadata"]["annotations"].as_object_mut().unwrap();
    assert!(ann.remove(INJECTED_ANNOTATION).is_some());
    if ann.is_empty() && original["metadata"].get("annotations").is_none() {
        undone["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
    }
    let spec = undone["spec"].as_object_mut().unwrap();
    let ours = |c: &Value| c["name"] == INIT_CONTAINER || c["name"] == PROXY_CONTAINER;
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            cs.retain(|c| !ours(c));
        }
    }
    if spec["initContainers"].as_array().is_some_and(Vec::is_empty)
        && original["spec"].get("initContainers").is_none()
    {
        spec.remove("initContainers");
    }
    let vols = spec["volumes"].as_array_mut().unwrap();
    let before = vols.len();
    vols.retain(|v| !v["name"].as_str().unwrap().starts_with("meshlite-"));
    assert_eq!(before - vols.len(), 3, "exactly three volumes added");
    // Probes differ only where rewritten to the admin port.
    for (i, c) in spec["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        for field in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if c[field]["httpGet"]["port"] == 15020 {
                c[field] = original["spec"]["containers"][i][field].clone();
            }
        }
    }
    assert_eq!(
        &undone, original,
        "injection changed something besides its additions"
    );
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn deployment_pod_gets_init_native_sidecar_volumes_and_annotation() {
    let (_, pod) = inject("deployment_pod.json", InjectorConfig::default()).await;
    let spec = pod.spec.as_ref().unwrap();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(spec.containers.len(), 1);
    let proxy = container(&pod, PROXY_CONTAINER);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert!(proxy.startup_probe.is_some());
    assert_eq!(env_value(proxy, env::MODE).as_deref(), Some("permissive"));
    assert_eq!(env_value(proxy, env::APP_PROBES), None);
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let init = container(&pod, INIT_CONTAINER);
    assert_eq!(init.args.as_deref(), Some(&["init".to_string()][..]));
    let caps = init
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get(INJECTED_ANNOTATION).map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn job_pod_uses_the_native_sidecar_so_the_job_can_complete() {
    let (_, pod) = inject("job_pod.json", InjectorConfig::default()).await;
    assert_eq!(
        pod.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Never")
    );
    assert_eq!(
        container(&pod, PROXY_CONTAINER).restart_policy.as_deref(),
        Some("Always")
    );
}

#[tokio::test]
async fn existing_init_containers_run_after_ours_with_skip_ports_passed_to_init() {
    let (_, pod) = inject("init_containers_pod.json", InjectorConfig::default()).await;
    let inits: Vec<_> = pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, PROXY_CONTAINER, "wait-for-db"]);
    let init = container(&pod, INIT_CONTAINER);
    assert_eq!(
        init.args.clone().unwrap(),
        ["init", "--skip-outbound-ports", "5432"]
    );
}

#[tokio::test]
async fn http_and_tcp_probes_are_rewritten_and_exec_is_left_alone() {
    let (_, pod) = inject("probes_pod.json", InjectorConfig::default()).await;
    let web = container(&pod, "web");
    let live = web
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/app-health/web/livez"));
    let ready = web.readiness_probe.as_ref().unwrap();
    assert_eq!(ready.tcp_socket, None);
    assert_eq!(
        ready.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/web/readyz")
    );
    assert!(web.startup_probe.as_ref().unwrap().exec.is_some());
    // The originals travel in the proxy's env, in the format the proxy parses
    // (proxy/src/probe.rs reads the same file).
    let json = env_value(container(&pod, PROXY_CONTAINER), env::APP_PROBES).unwrap();
    let expected = std::fs::read_to_string(fixture_path("app_probes.json")).unwrap();
    assert_eq!(json, expected.trim());
}

#[tokio::test]
async fn named_pod_in_strict_namespace_gets_strict_mode_and_skip_lists() {
    let (_, pod) = inject("named_pod_strict_namespace.json", InjectorConfig::default()).await;
    let proxy = container(&pod, PROXY_CONTAINER);
    assert_eq!(env_value(proxy, env::MODE).as_deref(), Some("strict"));
    let init = container(&pod, INIT_CONTAINER);
    assert_eq!(
        init.args.clone().unwrap(),
        [
            "init",
            "--skip-inbound-ports",
            "9090",
            "--skip-outbound-cidrs",
            "169.254.169.254/32"
        ]
    );
}

#[tokio::test]
async fn legacy_mode_adds_the_proxy_first_among_containers_with_a_poststart_wait() {
    let config = InjectorConfig {
        legacy_mode: meshlite_injector::config::LegacyMode::On,
        ..InjectorConfig::default()
    };
    let (_, pod) = inject_as("job_pod.json", "job_pod.legacy.patch.json", config).await;
    let spec = pod.spec.as_ref().unwrap();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER]);
    assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
    assert_eq!(spec.containers[0].restart_policy, None);
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.clone().unwrap(),
        ["meshlite-proxy", "wait-ready"]
    );
}

#[tokio::test]
async fn already_injected_fixture_is_skipped_without_a_patch() {
    // The stored review is deployment_pod.json's, carrying the pod as injected.
    let (patched, _) = inject("deployment_pod.json", InjectorConfig::default()).await;
    let mut stored = fixture("deployment_pod.json");
    stored["request"]["uid"] = "e5a1c0de-0000-4000-8000-00000000a11d".into();
    stored["request"]["object"] = patched;
    assert_golden("already_injected_pod.json", &stored);

    let hook = webhook(InjectorConfig::default());
    let body = std::fs::read(fixture_path("already_injected_pod.json")).unwrap();
    let (resp, label) = review(&hook, &body).await;
    assert_eq!(label, "skipped_already_injected");
    assert_eq!(resp.response.uid, "e5a1c0de-0000-4000-8000-00000000a11d");
    assert!(resp.response.allowed && resp.response.patch.is_none());
}

#[tokio::test]
async fn opted_out_and_host_network_pods_are_allowed_unchanged() {
    let hook = webhook(InjectorConfig::default());
    for (name, label) in [
        ("opted_out_pod.json", "skipped_opted_out"),
        ("opted_out_label_pod.json", "skipped_opted_out"),
        ("host_network_pod.json", "skipped_host_network"),
    ] {
        let body = std::fs::read(fixture_path(name)).unwrap();
        let (resp, got) = review(&hook, &body).await;
        assert_eq!(got, label, "{name}");
        let json = serde_json::to_value(&resp).unwrap();
        let uid = fixture(name)["request"]["uid"].clone();
        assert_eq!(
            json,
            serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": {"uid": uid, "allowed": true}}),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_pod_preserving_client_addresses_gets_a_root_start_with_net_raw_and_the_rules() {
    let (_, pod) = inject("client_address_pod.json", InjectorConfig::default()).await;
    let init = container(&pod, INIT_CONTAINER);
    assert_eq!(
        init.args.clone().unwrap(),
        ["init", "--preserve-client-address"]
    );
    let proxy = container(&pod, PROXY_CONTAINER);
    assert_eq!(
        env_value(proxy, env::PRESERVE_CLIENT_ADDRESS).as_deref(),
        Some("true")
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(0), Some(0)));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.clone().unwrap(),
        ["NET_RAW", "SETUID", "SETGID"].map(String::from)
    );
    assert_eq!(caps.drop.clone().unwrap(), ["ALL"]);

    // Without the annotation nothing of this appears.
    let (_, plain) = inject("deployment_pod.json", InjectorConfig::default()).await;
    let proxy = container(&plain, PROXY_CONTAINER);
    assert_eq!(env_value(proxy, env::PRESERVE_CLIENT_ADDRESS), None);
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
}
