//! The pure mutation, table-tested on typed pods: which pods are skipped, and
//! how pod annotations, namespace annotations and config combine.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use meshlite_contract::{INJECT_LABEL, MODE_ANNOTATION, Mode, PROXY_CONTAINER, env};
use meshlite_injector::config::Resources;
use meshlite_injector::mutate::MutateError;
use meshlite_injector::{Decision, InjectorConfig, SkipReason, mutate};
use serde_json::Value;

fn pod(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> Pod {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    let mut p = Pod::default();
    p.metadata.generate_name = Some("web-".into());
    p.metadata.annotations = map(annotations);
    p.metadata.labels = map(labels);
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "web".into(),
            image: Some("web:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Applies the mutation and returns the resulting pod.
fn injected(p: &Pod, namespace: &BTreeMap<String, String>, cfg: &InjectorConfig) -> Pod {
    let Decision::Inject(patch) = mutate(p, namespace, cfg).unwrap() else {
        panic!("expected injection")
    };
    let mut json = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut json, &patch).unwrap();
    serde_json::from_value(json).unwrap()
}

fn proxy_env(p: &Pod, name: &str) -> Option<String> {
    let spec = p.spec.as_ref().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)?;
    proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[test]
fn opted_out_host_network_and_injected_pods_are_skipped_others_injected() {
    let mut host = pod(&[], &[]);
    host.spec.as_mut().unwrap().host_network = Some(true);
    let mut has_proxy = pod(&[], &[]);
    has_proxy.spec.as_mut().unwrap().containers.push(Container {
        name: PROXY_CONTAINER.into(),
        ..Default::default()
    });
    let cases = [
        (
            "annotation disabled",
            pod(&[(INJECT_LABEL, "disabled")], &[]),
            Some(SkipReason::OptedOut),
        ),
        (
            "label disabled",
            pod(&[], &[(INJECT_LABEL, "disabled")]),
            Some(SkipReason::OptedOut),
        ),
        ("hostNetwork", host, Some(SkipReason::HostNetwork)),
        (
            "annotated",
            pod(&[("meshlite.io/injected", "0.0.1")], &[]),
            Some(SkipReason::AlreadyInjected),
        ),
        (
            "proxy container present",
            has_proxy,
            Some(SkipReason::AlreadyInjected),
        ),
        (
            "inject enabled on pod",
            pod(&[(INJECT_LABEL, "enabled")], &[]),
            None,
        ),
        ("plain pod", pod(&[], &[]), None),
    ];
    for (name, p, want) in cases {
        let got = match mutate(&p, &ns(&[]), &InjectorConfig::default()).unwrap() {
            Decision::Skip(r) => Some(r),
            Decision::Inject(_) => None,
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn mode_comes_from_pod_then_namespace_then_config() {
    let strict_cfg = InjectorConfig {
        default_mode: Mode::Strict,
        ..InjectorConfig::default()
    };
    let cases = [
        (
            "pod wins",
            pod(&[(MODE_ANNOTATION, "permissive")], &[]),
            ns(&[(MODE_ANNOTATION, "strict")]),
            InjectorConfig::default(),
            "permissive",
        ),
        (
            "namespace",
            pod(&[], &[]),
            ns(&[(MODE_ANNOTATION, "strict")]),
            InjectorConfig::default(),
            "strict",
        ),
        (
            "config default",
            pod(&[], &[]),
            ns(&[]),
            strict_cfg,
            "strict",
        ),
        (
            "built-in default",
            pod(&[], &[]),
            ns(&[]),
            InjectorConfig::default(),
            "permissive",
        ),
    ];
    for (name, p, namespace, cfg, want) in cases {
        let out = injected(&p, &namespace, &cfg);
        assert_eq!(proxy_env(&out, env::MODE).as_deref(), Some(want), "{name}");
    }
}

#[test]
fn pod_without_annotations_gets_the_map_created_first() {
    let Decision::Inject(patch) =
        mutate(&pod(&[], &[]), &ns(&[]), &InjectorConfig::default()).unwrap()
    else {
        panic!()
    };
    let PatchOperation::Add(first) = &patch.0[0] else {
        panic!("{:?}", patch.0[0])
    };
    assert_eq!(first.path.as_str(), "/metadata/annotations");
    assert_eq!(first.value, Value::Object(Default::default()));
    // And volumes, absent on this pod, are added as a whole array.
    assert!(
        patch
            .0
            .iter()
            .any(|op| matches!(op, PatchOperation::Add(a) if a.path.as_str() == "/spec/volumes"))
    );
}

/// Found by fuzzing (fuzz/corpus/admission_review/no_spec): the patch for a pod
/// without a spec added under `/spec`, which the API server cannot apply.
#[test]
fn a_pod_without_a_spec_is_refused_rather_than_given_a_patch_that_cannot_apply() {
    let mut p = pod(&[], &[]);
    p.spec = None;
    let got = mutate(&p, &ns(&[]), &InjectorConfig::default());
    assert!(matches!(got, Err(MutateError::NoSpec)), "{got:?}");
}

#[test]
fn config_image_resources_and_trust_domain_reach_the_containers() {
    let cfg = InjectorConfig {
        image: "registry.example/meshlite-proxy:dev".into(),
        image_pull_policy: Some("Always".into()),
        trust_domain: "example.org".into(),
        proxy_resources: Resources {
            requests: [("cpu".to_string(), "200m".to_string())].into(),
            limits: BTreeMap::new(),
        },
        ..InjectorConfig::default()
    };
    let out = injected(&pod(&[], &[]), &ns(&[]), &cfg);
    let spec = out.spec.as_ref().unwrap();
    for c in spec.init_containers.iter().flatten() {
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/meshlite-proxy:dev")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    }
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    let requests = proxy.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "200m");
    assert_eq!(proxy.resources.as_ref().unwrap().limits, None);
    assert_eq!(
        proxy_env(&out, env::TRUST_DOMAIN).as_deref(),
        Some("example.org")
    );
}

#[test]
fn injected_volumes_are_token_trust_bundle_and_annotations() {
    let out = injected(&pod(&[], &[]), &ns(&[]), &InjectorConfig::default());
    let vols = out.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let token = vols[0]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(
        token.audience.as_deref(),
        Some(meshlite_contract::TOKEN_AUDIENCE)
    );
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(
        vols[1].config_map.as_ref().unwrap().name,
        meshlite_contract::TRUST_BUNDLE_CONFIGMAP
    );
    let item = &vols[2]
        .downward_api
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        item.field_ref.as_ref().unwrap().field_path,
        "metadata.annotations"
    );
    let proxy = &out.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1];
    let mounts: Vec<_> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        [env::TOKEN_DIR, env::TRUST_BUNDLE_DIR, env::PODINFO_DIR]
    );
}

#[test]
fn legacy_mode_rewrites_probes_at_their_original_index_before_inserting_the_proxy() {
    use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut p = pod(&[], &[]);
    let spec = p.spec.as_mut().unwrap();
    spec.containers.push(Container {
        name: "api".into(),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(9000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let cfg = InjectorConfig {
        legacy_mode: meshlite_injector::config::LegacyMode::On,
        ..InjectorConfig::default()
    };
    let out = injected(&p, &ns(&[]), &cfg);
    let names: Vec<_> = out
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, [PROXY_CONTAINER, "web", "api"]);
    let api = &out.spec.as_ref().unwrap().containers[2];
    let get = api
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-health/api/readyz"));
    assert_eq!(get.port, IntOrString::Int(15020));
    let probes = proxy_env(&out, env::APP_PROBES).unwrap();
    assert!(
        probes.contains(r#""/app-health/api/readyz":{"httpGet":{"port":9000,"path":"/ready"}"#),
        "{probes}"
    );
}

#[test]
fn pods_that_cannot_work_meshed_are_refused_naming_the_conflict() {
    use k8s_openapi::api::core::v1::{ContainerPort, PodSecurityContext, SecurityContext};
    let as_user = |uid: i64| {
        Some(SecurityContext {
            run_as_user: Some(uid),
            ..Default::default()
        })
    };
    let cfg = InjectorConfig::default();
    // (pod, what the message must name)
    let mut cases: Vec<(Pod, &str)> = Vec::new();
    let mut p = pod(&[], &[]);
    p.spec.as_mut().unwrap().containers[0].security_context = as_user(2102);
    cases.push((p, "\"web\" runs as UID 2102"));
    let mut p = pod(&[], &[]);
    p.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
        run_as_user: Some(2102),
        ..Default::default()
    });
    cases.push((p, "\"web\" runs as UID 2102"));
    let mut p = pod(&[], &[]);
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "migrate".into(),
        security_context: as_user(2102),
        ..Default::default()
    }]);
    cases.push((p, "\"migrate\" runs as UID 2102"));
    for (port, what) in [(15001, "outbound"), (15006, "inbound"), (15020, "admin")] {
        let mut p = pod(&[], &[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
            ContainerPort {
                container_port: 8080,
                ..Default::default()
            },
            ContainerPort {
                container_port: port,
                ..Default::default()
            },
        ]);
        let needle: &'static str = match what {
            "outbound" => "port 15001, which meshlite's proxy listens on (outbound)",
            "inbound" => "port 15006, which meshlite's proxy listens on (inbound)",
            _ => "port 15020, which meshlite's proxy listens on (admin)",
        };
        cases.push((p, needle));
    }
    for (p, needle) in cases {
        let err = mutate(&p, &ns(&[]), &cfg).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should name {needle:?}");
        assert!(err.contains("meshlite.io/inject: disabled"), "{err}");
    }

    // A container's own runAsUser overrides the pod's: only the effective UID counts.
    let mut p = pod(&[], &[]);
    let spec = p.spec.as_mut().unwrap();
    spec.security_context = Some(PodSecurityContext {
        run_as_user: Some(2102),
        ..Default::default()
    });
    spec.containers[0].security_context = as_user(1000);
    assert!(matches!(
        mutate(&p, &ns(&[]), &cfg),
        Ok(Decision::Inject(_))
    ));
    // An opted-out pod may do as it likes: it is not meshed.
    let mut p = pod(&[(INJECT_LABEL, "disabled")], &[]);
    p.spec.as_mut().unwrap().containers[0].security_context = as_user(2102);
    assert_eq!(
        mutate(&p, &ns(&[]), &cfg).unwrap(),
        Decision::Skip(SkipReason::OptedOut)
    );
}

#[test]
fn an_enforced_strict_namespace_refuses_opt_outs_and_weaker_pods() {
    use meshlite_contract::{MODE_ENFORCED_ANNOTATION, SKIP_INBOUND_PORTS_ANNOTATION};
    let cfg = InjectorConfig::default();
    let enforced = ns(&[
        (MODE_ANNOTATION, "strict"),
        (MODE_ENFORCED_ANNOTATION, "true"),
    ]);
    for p in [
        pod(&[(INJECT_LABEL, "disabled")], &[]),
        pod(&[], &[(INJECT_LABEL, "disabled")]),
        pod(&[(MODE_ANNOTATION, "permissive")], &[]),
        pod(&[(SKIP_INBOUND_PORTS_ANNOTATION, "8080")], &[]),
    ] {
        let err = mutate(&p, &enforced, &cfg).unwrap_err().to_string();
        assert!(err.contains(MODE_ENFORCED_ANNOTATION), "{err}");
    }
    let strict = injected(&pod(&[], &[]), &enforced, &cfg);
    assert_eq!(proxy_env(&strict, env::MODE).as_deref(), Some("strict"));
    // Without enforcement the same pods are allowed as before.
    let plain = ns(&[(MODE_ANNOTATION, "strict")]);
    assert_eq!(
        mutate(&pod(&[(INJECT_LABEL, "disabled")], &[]), &plain, &cfg).unwrap(),
        Decision::Skip(SkipReason::OptedOut)
    );
    let weaker = injected(&pod(&[(MODE_ANNOTATION, "permissive")], &[]), &plain, &cfg);
    assert_eq!(proxy_env(&weaker, env::MODE).as_deref(), Some("permissive"));
}
