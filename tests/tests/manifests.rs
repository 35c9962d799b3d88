//! The `deploy/` manifests, checked without a cluster.
//!
//! Every document of every file that `deploy/kustomization.yaml` lists, and of
//! `deploy/examples/`, is parsed into its typed k8s-openapi object and
//! serialised back. The typed parse silently drops fields it does not know, so
//! the round trip must give back exactly the YAML: a misspelt or misplaced
//! field fails here instead of being pruned (or refused) by a real API server.
//!
//! The rest checks the manifests against what they must agree with:
//! - names, ports, labels and settings against `meshlite_contract`;
//! - the webhook against the documented admission settings;
//! - the RBAC rules against the API calls each component makes (kept here as a
//!   table, and cross-checked against the components' source);
//! - the Deployments' replication, hardening, probes and image;
//! - the injector's and certd's arguments against their real flags, and the
//!   injector's config file against its real parser;
//! - the injector's real mutation, with the shipped config, on the demo's pods,
//!   and certd's real `caBundle` patch on the shipped webhook;
//! - the injector's serving-certificate Secret against what certd, with the
//!   shipped arguments, maintains (name, namespace, the Service's DNS names);
//! - the Dockerfile, and `deploy/install.yaml` against the output of
//!   `deploy/render.sh`.
//!
//! Helpers live in `manifests/support.rs`; the RBAC table and its checks in
//! `manifests/rbac.rs`. Needs `bash` on PATH.
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[path = "manifests/rbac.rs"]
mod rbac;
#[path = "manifests/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshlite_certd::config::{Args as CertdArgs, Mode as CertdMode};
use meshlite_certd::kube::webhook_cert::{INJECTOR_SECRET, INJECTOR_SERVICE};
use meshlite_contract as contract;
use serde_json::Value;
use support::*;

// ---------------------------------------------------------------------------
// Round trip

#[test]
fn every_manifest_round_trips_through_its_typed_api_object() {
    let docs: Vec<Doc> = control_plane().into_iter().chain(example_docs()).collect();
    let mut failures = Vec::new();
    for doc in &docs {
        match typed_round_trip(doc) {
            Ok(back) => {
                let mut diffs = Vec::new();
                differences("", &doc.value, &back, &mut diffs);
                failures.extend(diffs.into_iter().map(|d| format!("{}: {d}", doc.what())));
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "manifests that do not survive a typed round trip:\n{}",
        failures.join("\n")
    );
    assert!(docs.len() >= 15, "only {} documents found", docs.len());
}

// ---------------------------------------------------------------------------
// Files, render.sh and install.yaml

#[test]
fn every_kustomization_resource_exists_and_every_manifest_is_listed() {
    let listed = kustomization_resources();
    let missing: Vec<&String> = listed
        .iter()
        .filter(|f| !deploy_dir().join(f).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/kustomization.yaml lists files that do not exist: {missing:?} \
         (deploy/rbac-certd.yaml, certd's ServiceAccount and RBAC, is written with certd)"
    );
    let mut on_disk: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml" && f != "install.yaml")
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        on_disk, sorted,
        "every manifest in deploy/ is a kustomization resource"
    );
}

#[test]
fn install_yaml_is_what_render_sh_produces() {
    let out = std::process::Command::new("bash")
        .arg(deploy_dir().join("render.sh"))
        .arg("--stdout")
        .output()
        .expect("running bash deploy/render.sh --stdout");
    assert!(
        out.status.success(),
        "deploy/render.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let committed = read(&deploy_dir().join("install.yaml"));
    assert!(
        rendered == committed,
        "deploy/install.yaml is out of date: run deploy/render.sh"
    );
    // And it is the kustomization's resources, in order, document for document.
    let installed: Vec<Value> = parse_docs("deploy/install.yaml", &committed)
        .into_iter()
        .map(|d| d.value)
        .collect();
    let sources: Vec<Value> = control_plane().into_iter().map(|d| d.value).collect();
    assert_eq!(installed, sources);
}

// ---------------------------------------------------------------------------
// Namespaces, names and the contract

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
];

#[test]
fn control_plane_objects_live_in_the_system_namespace_which_is_never_injected() {
    let docs = control_plane();
    for doc in &docs {
        if CLUSTER_SCOPED.contains(&doc.kind()) {
            assert_eq!(doc.namespace(), None, "{} is cluster-scoped", doc.what());
        } else {
            assert_eq!(
                doc.namespace(),
                Some(contract::SYSTEM_NAMESPACE),
                "{} must name its namespace (the kustomization sets none)",
                doc.what()
            );
        }
    }
    let ns: Namespace = find(&docs, "Namespace", contract::SYSTEM_NAMESPACE).typed();
    let labels = ns.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get(contract::INJECT_LABEL).map(String::as_str),
        Some(contract::INJECT_DISABLED),
        "the control plane's namespace opts out of injection"
    );
    // certd and the injector are hardened enough for the strictest standard.
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
}

#[test]
fn names_labels_and_annotations_are_valid_kubernetes_values() {
    let docs: Vec<Doc> = control_plane().into_iter().chain(example_docs()).collect();
    for doc in &docs {
        let name = doc.name();
        assert!(
            name.len() <= 253 && name.split('.').all(is_dns_label),
            "{}: name {name:?} is not a DNS-1123 subdomain",
            doc.what()
        );
        if matches!(doc.kind(), "Service" | "Namespace") {
            assert!(
                is_dns_label(name),
                "{}: name must be a DNS-1123 label",
                doc.what()
            );
        }
        for meta in [
            &doc.value["metadata"],
            &doc.value["spec"]["template"]["metadata"],
        ] {
            for (key, value) in meta["labels"].as_object().into_iter().flatten() {
                let value = value
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: label {key} is not a string", doc.what()));
                let ok = value.is_empty()
                    || (value.len() <= 63
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        && value.as_bytes()[0].is_ascii_alphanumeric()
                        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric());
                assert!(
                    ok,
                    "{}: label {key}={value:?} is not a valid label value",
                    doc.what()
                );
            }
            for (key, value) in meta["annotations"].as_object().into_iter().flatten() {
                assert!(
                    value.is_string(),
                    "{}: annotation {key} is not a string",
                    doc.what()
                );
            }
        }
    }
}

#[test]
fn webhook_matches_the_contract_and_the_documented_settings() {
    let docs = control_plane();
    let cfg: MutatingWebhookConfiguration = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    )
    .typed();
    let hooks = cfg.webhooks.unwrap_or_default();
    assert_eq!(hooks.len(), 1, "one webhook");
    let hook = &hooks[0];
    assert_eq!(
        hook.name.split('.').count(),
        3,
        "a fully qualified webhook name"
    );
    assert_eq!(hook.admission_review_versions, vec!["v1".to_string()]);
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
    let timeout = hook.timeout_seconds.expect("timeoutSeconds is explicit");
    assert!(
        (1..=30).contains(&timeout),
        "the API allows 1..=30 seconds, got {timeout}"
    );

    // Pod CREATE only.
    let rules = hook.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.operations, Some(vec!["CREATE".to_string()]));
    assert_eq!(rule.api_groups, Some(vec![String::new()]));
    assert_eq!(rule.api_versions, Some(vec!["v1".to_string()]));
    assert_eq!(rule.resources, Some(vec!["pods".to_string()]));

    // Labelled namespaces only, never the control plane's own.
    let ns_sel = hook
        .namespace_selector
        .clone()
        .expect("a namespaceSelector");
    assert_eq!(
        ns_sel.match_labels,
        Some(BTreeMap::from([(
            contract::INJECT_LABEL.to_string(),
            contract::INJECT_ENABLED.to_string()
        )]))
    );
    let excluded = ns_sel.match_expressions.unwrap_or_default();
    assert!(
        excluded
            .iter()
            .any(|e| e.key == "kubernetes.io/metadata.name"
                && e.operator == "NotIn"
                && e.values
                    .iter()
                    .flatten()
                    .any(|v| v == contract::SYSTEM_NAMESPACE)),
        "the namespaceSelector excludes {} by name",
        contract::SYSTEM_NAMESPACE
    );

    // Pods labelled inject=disabled are not sent (the label may be absent).
    let obj_sel = hook.object_selector.clone().expect("an objectSelector");
    assert_eq!(obj_sel.match_labels, None);
    let exprs = obj_sel.match_expressions.unwrap_or_default();
    assert_eq!(exprs.len(), 1);
    assert_eq!(exprs[0].key, contract::INJECT_LABEL);
    assert_eq!(exprs[0].operator, "NotIn");
    assert_eq!(
        exprs[0].values,
        Some(vec![contract::INJECT_DISABLED.to_string()])
    );

    // certd fills in the caBundle; the manifest leaves it out so that
    // re-applying does not clear it.
    assert_eq!(hook.client_config.ca_bundle, None);
    assert_eq!(hook.client_config.url, None);
    let svc_ref = hook
        .client_config
        .service
        .clone()
        .expect("a Service reference");
    assert_eq!(svc_ref.namespace, contract::SYSTEM_NAMESPACE);
    assert_eq!(svc_ref.path.as_deref(), Some("/mutate"));
    let port = svc_ref.port.unwrap_or(443);

    // That Service reaches the injector's webhook port on the injector's pods.
    let svc: Service = find(&docs, "Service", &svc_ref.name).typed();
    let injector = deployment(&docs, "meshlite-injector");
    assert_eq!(
        service_for(&docs, &injector).metadata.name,
        svc.metadata.name
    );
    let svc_port = svc
        .spec
        .unwrap()
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("Service {} has no port {port}", svc_ref.name));
    assert_eq!(
        svc_port.target_port,
        Some(IntOrString::Int(i32::from(contract::INJECTOR_PORT)))
    );
}

#[test]
fn injector_runs_with_its_real_flags_config_and_serving_secret() {
    let docs = control_plane();
    let d = deployment(&docs, "meshlite-injector");
    let c = only_container(&d);
    assert_eq!(c.command, Some(vec!["meshlite-injector".to_string()]));
    assert_eq!(container_ports(c), vec![i32::from(contract::INJECTOR_PORT)]);
    assert_https_get(&c.liveness_probe, contract::INJECTOR_PORT, "/healthz");
    // Ready only while its webhook configuration exists (a half install).
    assert_https_get(&c.readiness_probe, contract::INJECTOR_PORT, "/readyz");
    // A terminating replica keeps answering until its endpoint is gone: the
    // kubelet's sleep action, as the image has no `sleep` to exec.
    let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    assert!(
        pre_stop
            .is_some_and(|h| h.sleep.as_ref().is_some_and(|s| s.seconds > 0) && h.exec.is_none()),
        "the injector has a preStop sleep action: {pre_stop:?}"
    );

    let flags = flags(c);
    let main = read(&repo_root().join("injector/src/main.rs"));
    for flag in flags.keys() {
        assert!(
            main.contains(&format!("    {}:", flag.replace('-', "_"))),
            "meshlite-injector has no flag --{flag} (injector/src/main.rs)"
        );
    }
    // The serving certificate and key come from one kubernetes.io/tls Secret.
    let spec = pod_spec(&d);
    let (cert_vol, cert_file) = mounted(spec, c, &flags["tls-cert"]);
    let (key_vol, key_file) = mounted(spec, c, &flags["tls-key"]);
    assert_eq!(cert_vol, key_vol);
    assert_eq!(
        (cert_file.as_str(), key_file.as_str()),
        ("tls.crt", "tls.key")
    );
    let secret = volume(spec, &cert_vol)
        .secret
        .clone()
        .expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some(INJECTOR_SECRET));
    // The config file is the ConfigMap's injector.yaml, and parses.
    let (cfg_vol, cfg_file) = mounted(spec, c, &flags["config"]);
    let cm = volume(spec, &cfg_vol)
        .config_map
        .clone()
        .expect("a ConfigMap volume");
    assert_eq!(cm.name, config_map_name(&docs));
    let item = cm
        .items
        .unwrap_or_default()
        .into_iter()
        .find(|i| i.path == cfg_file)
        .expect("the config file is a ConfigMap item");
    assert_eq!(item.key, "injector.yaml");
    let cfg = injector_config(&docs);
    assert_eq!(
        cfg.legacy_mode,
        meshlite_injector::config::LegacyMode::Auto,
        "the sidecar mode follows the server by default"
    );
}

#[test]
fn certd_runs_with_its_real_flags_and_the_contract_settings() {
    let docs = control_plane();
    let d = deployment(&docs, "meshlite-certd");
    let c = only_container(&d);
    assert_eq!(c.command, Some(vec!["meshlite-certd".to_string()]));
    assert_eq!(container_ports(c), vec![i32::from(contract::CERTD_PORT)]);
    assert_https_get(&c.liveness_probe, contract::CERTD_PORT, "/healthz");
    assert_https_get(&c.readiness_probe, contract::CERTD_PORT, "/readyz");

    // Every flag, subcommand and env var is one certd declares.
    let config_rs = read(&repo_root().join("certd/src/config.rs"));
    for arg in c.args.iter().flatten() {
        match arg.strip_prefix("--") {
            Some(flag) => {
                let field = flag.split('=').next().unwrap().replace('-', "_");
                assert!(
                    config_rs.contains(&format!("pub {field}:")),
                    "meshlite-certd has no flag --{flag} (certd/src/config.rs)"
                );
            }
            None => {
                let mut variant = arg.clone();
                variant[..1].make_ascii_uppercase();
                assert!(
                    config_rs.contains(&format!("    {variant},")),
                    "meshlite-certd has no subcommand {arg} (certd/src/config.rs)"
                );
            }
        }
    }
    for var in c.env.iter().flatten() {
        assert!(
            config_rs.contains(&format!("env = \"{}\"", var.name)),
            "meshlite-certd reads no env {} (certd/src/config.rs)",
            var.name
        );
    }
    assert_eq!(
        env_value(&docs, c, "CERTD_SIGNER_NAME"),
        contract::SIGNER_NAME
    );
    assert_eq!(
        env_value(&docs, c, "CERTD_AUDIENCE"),
        contract::TOKEN_AUDIENCE
    );
    assert_eq!(env_value(&docs, c, "CERTD_CA_SECRET"), contract::CA_SECRET);
    assert_eq!(
        env_value(&docs, c, "CERTD_CA_NAMESPACE"),
        contract::SYSTEM_NAMESPACE
    );
    let lifetime: u64 = env_value(&docs, c, "CERTD_LIFETIME_SECONDS")
        .parse()
        .unwrap();
    assert!(
        (600..=86_400).contains(&lifetime),
        "lifetime {lifetime}s is outside 10 minutes to 24 hours"
    );
    let pod_ns = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAMESPACE")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .expect("POD_NAMESPACE from the downward API");
    assert_eq!(pod_ns.field_path, "metadata.namespace");

    // The proxies find certd where the injector tells them, and both agree
    // on the trust domain.
    let svc = service_for(&docs, &d);
    let svc_name = svc.metadata.name.clone().unwrap();
    let ports = svc.spec.unwrap().ports.unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, i32::from(contract::CERTD_PORT));
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::Int(i32::from(contract::CERTD_PORT)))
    );
    assert!(
        c.args
            .iter()
            .flatten()
            .any(|a| a == &format!("--service-name={svc_name}")),
        "certd's serving certificate names its Service"
    );
    let cfg = injector_config(&docs);
    assert_eq!(
        cfg.certd_url,
        format!(
            "https://{svc_name}.{}.svc:{}",
            contract::SYSTEM_NAMESPACE,
            contract::CERTD_PORT
        )
    );
    assert_eq!(cfg.trust_domain, env_value(&docs, c, "CERTD_TRUST_DOMAIN"));
    assert_eq!(cfg.trust_domain, contract::DEFAULT_TRUST_DOMAIN);
    assert_eq!(
        pod_spec(&d).service_account_name.as_deref(),
        Some("meshlite-certd")
    );
}

// ---------------------------------------------------------------------------
// Deployments

#[test]
fn deployments_are_replicated_spread_hardened_probed_and_share_one_image() {
    let docs = control_plane();
    let deployments: Vec<Deployment> = all_of(&docs, "Deployment");
    let names: BTreeSet<String> = deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "meshlite-certd".to_string(),
            "meshlite-injector".to_string()
        ])
    );
    let cfg = injector_config(&docs);
    let pdbs: Vec<PodDisruptionBudget> = all_of(&docs, "PodDisruptionBudget");
    let accounts: Vec<String> = all_of::<ServiceAccount>(&docs, "ServiceAccount")
        .into_iter()
        .map(|sa| sa.metadata.name.unwrap())
        .collect();

    for d in &deployments {
        let name = d.metadata.name.clone().unwrap();
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2), "{name}: two replicas");
        let labels = pod_labels(d);
        assert!(
            selector_matches(&spec.selector, &labels),
            "{name}: selector"
        );
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("a rolling update");
        assert_eq!(
            rolling.max_unavailable,
            Some(IntOrString::Int(0)),
            "{name}: a rollout never drops below two ready replicas"
        );

        let pod = pod_spec(d);
        let sa = pod.service_account_name.clone().expect("a ServiceAccount");
        assert_eq!(sa, name, "{name} runs as its own ServiceAccount");
        if !accounts.contains(&sa) {
            assert!(
                !deploy_dir().join("rbac-certd.yaml").is_file(),
                "{name}: ServiceAccount {sa} is not in the manifests"
            );
        }
        let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
        assert!(
            spread
                .iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname"
                    && t.label_selector
                        .as_ref()
                        .is_some_and(|s| selector_matches(s, &labels))),
            "{name}: replicas are spread across nodes"
        );

        let psc = pod.security_context.clone().unwrap_or_default();
        assert_eq!(psc.run_as_non_root, Some(true), "{name}: pod runAsNonRoot");
        assert!(
            psc.run_as_user.is_some_and(|u| u != 0),
            "{name}: a non-root UID"
        );
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert!(pod.host_network.is_none() && pod.init_containers.is_none());

        let c = only_container(d);
        let sc = c
            .security_context
            .clone()
            .expect("a container securityContext");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.run_as_non_root, Some(true), "{name}");
        assert_eq!(sc.privileged, None, "{name}");
        let caps = sc.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{name}");
        assert_eq!(caps.add, None, "{name}: no capability added");
        assert_eq!(
            sc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );

        for (kind, probe) in [
            ("startup", &c.startup_probe),
            ("liveness", &c.liveness_probe),
            ("readiness", &c.readiness_probe),
        ] {
            assert!(probe.is_some(), "{name}: a {kind} probe");
        }
        let res = c.resources.clone().expect("resources");
        let requests = res.requests.unwrap_or_default();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        assert!(res.limits.unwrap_or_default().contains_key("memory"));

        // One image for the control plane and for what the injector injects.
        assert_eq!(
            c.image.as_deref(),
            Some(cfg.image.as_str()),
            "{name}: image"
        );
        assert_eq!(c.image_pull_policy, cfg.image_pull_policy, "{name}");

        // A disruption budget keeps one replica through drains.
        let pdb = pdbs
            .iter()
            .find(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| selector_matches(s, &labels))
            })
            .unwrap_or_else(|| panic!("{name}: no PodDisruptionBudget selects its pods"));
        let pdb_spec = pdb.spec.as_ref().unwrap();
        assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)), "{name}");
        assert_eq!(pdb_spec.max_unavailable, None);
    }
    assert_eq!(pdbs.len(), deployments.len());
}

// ---------------------------------------------------------------------------
// Examples

fn templates(docs: &[Doc]) -> Vec<(String, PodTemplateSpec)> {
    let mut out = Vec::new();
    for doc in docs {
        match doc.kind() {
            "Deployment" => {
                out.push((doc.what(), doc.typed::<Deployment>().spec.unwrap().template))
            }
            "Job" => out.push((doc.what(), doc.typed::<Job>().spec.unwrap().template)),
            _ => {}
        }
    }
    out
}

#[test]
fn examples_opt_in_and_show_strict_mode_an_allow_list_an_opt_out_and_a_job() {
    let docs = example_docs();
    let namespaces: Vec<Namespace> = all_of(&docs, "Namespace");
    assert_eq!(namespaces.len(), 1);
    let ns = namespaces[0].metadata.name.clone().unwrap();
    assert_ne!(ns, contract::SYSTEM_NAMESPACE);
    assert_eq!(
        namespaces[0]
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get(contract::INJECT_LABEL)
            .map(String::as_str),
        Some(contract::INJECT_ENABLED)
    );
    // The init container's NET_ADMIN needs the privileged Pod Security level.
    assert_eq!(
        namespaces[0]
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    for doc in docs.iter().filter(|d| d.kind() != "Namespace") {
        assert_eq!(doc.namespace(), Some(ns.as_str()), "{}", doc.what());
    }
    let accounts: BTreeSet<String> = all_of::<ServiceAccount>(&docs, "ServiceAccount")
        .into_iter()
        .map(|sa| sa.metadata.name.unwrap())
        .collect();
    let td = contract::TrustDomain::new(contract::DEFAULT_TRUST_DOMAIN).unwrap();
    let id = |sa: &str| contract::SpiffeId::new(td.clone(), &ns, sa).unwrap();

    let (mut strict, mut allow, mut opt_out) = (0, 0, 0);
    for (what, t) in templates(&docs) {
        let meta = t.metadata.clone().unwrap_or_default();
        let annotations = meta.annotations.unwrap_or_default();
        let labels = meta.labels.unwrap_or_default();
        let sa = t.spec.as_ref().unwrap().service_account_name.clone();
        if let Some(sa) = &sa {
            assert!(
                accounts.contains(sa),
                "{what}: ServiceAccount {sa} is in the example"
            );
        }
        if let Some(mode) = annotations.get(contract::MODE_ANNOTATION) {
            let mode: contract::Mode = mode.parse().unwrap();
            strict += usize::from(mode == contract::Mode::Strict);
        }
        if let Some(value) = annotations.get(contract::ALLOW_ANNOTATION) {
            let list = contract::AllowList::parse(value).unwrap();
            allow += 1;
            // The client may connect; the namespace's default account may not.
            assert!(list.allows(&id("demo-client"), &td), "{what}: {value}");
            assert!(!list.allows(&id("default"), &td), "{what}: {value}");
        }
        if labels.get(contract::INJECT_LABEL).map(String::as_str) == Some(contract::INJECT_DISABLED)
        {
            opt_out += 1;
            assert_eq!(
                sa, None,
                "{what}: the opt-out pod runs as the default account"
            );
        }
    }
    assert!(strict >= 1 && allow >= 1 && opt_out >= 1);
    assert!(accounts.contains("demo-client"));
    assert!(
        !all_of::<Job>(&docs, "Job").is_empty(),
        "a Job shows completion"
    );
}

// ---------------------------------------------------------------------------
// The image and the injector's certificate

#[test]
fn dockerfile_builds_every_binary_the_manifests_and_the_injector_run() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    // The injector's containers carry only `args`, so the proxy is the entrypoint.
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/meshlite-proxy\"]"),
        "meshlite-proxy is the image's ENTRYPOINT"
    );
    let docs = control_plane();
    let mut binaries = vec!["meshlite-proxy".to_string()];
    for d in all_of::<Deployment>(&docs, "Deployment") {
        let command = only_container(&d).command.clone().unwrap_or_default();
        assert_eq!(
            command.len(),
            1,
            "{:?}: command is the binary",
            d.metadata.name
        );
        binaries.push(command[0].clone());
    }
    for bin in &binaries {
        assert!(
            dockerfile.contains(&format!("-p {bin}"))
                && dockerfile.contains(&format!("target/release/{bin}")),
            "deploy/Dockerfile builds and copies {bin}"
        );
    }
    // The documented build and load commands produce the image the manifests use.
    let image = injector_config(&docs).image;
    for doc in [&dockerfile, &read(&deploy_dir().join("README.md"))] {
        for command in [
            format!("docker build -f deploy/Dockerfile -t {image} ."),
            format!("kind load docker-image {image}"),
            format!("k3d image import {image}"),
        ] {
            assert!(doc.contains(&command), "the docs say `{command}`");
        }
    }
    // Both iptables backends for `meshlite-proxy init`.
    assert!(
        dockerfile.contains("iptables-nft --version")
            && dockerfile.contains("iptables-legacy --version")
    );
    // The build image matches the workspace's Rust version.
    let workspace = read(&repo_root().join("Cargo.toml"));
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace declares rust-version");
    assert!(
        dockerfile.contains(&format!("rust:{rust_version}-bookworm")),
        "deploy/Dockerfile builds with rust:{rust_version}"
    );
}

#[test]
fn certd_maintains_the_secret_the_injector_mounts_for_the_webhook_service() {
    let docs = control_plane();
    let injector = deployment(&docs, "meshlite-injector");
    let secret = pod_spec(&injector)
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref()?.secret_name.clone())
        .expect("the injector mounts a Secret");
    assert_eq!(
        secret, INJECTOR_SECRET,
        "the default of certd's --injector-secret"
    );
    let svc = service_for(&docs, &injector).metadata.name.unwrap();
    assert_eq!(
        svc, INJECTOR_SERVICE,
        "the default of certd's --injector-service"
    );

    // certd, with the shipped arguments, writes that Secret in its CA
    // namespace (where the injector runs) for the injector Service's names.
    let certd = deployment(&docs, "meshlite-certd");
    let c = only_container(&certd);
    let ca_namespace = env_value(&docs, c, "CERTD_CA_NAMESPACE");
    assert_eq!(
        injector.metadata.namespace.as_deref(),
        Some(ca_namespace.as_str())
    );
    let mut argv = vec!["meshlite-certd".to_string()];
    argv.extend(c.args.iter().flatten().cloned());
    argv.push(format!("--ca-namespace={ca_namespace}"));
    let settings = <CertdArgs as clap::Parser>::try_parse_from(argv)
        .unwrap()
        .settings()
        .unwrap();
    let CertdMode::Cluster(cluster) = settings.mode else {
        panic!("certd runs in cluster mode");
    };
    assert_eq!(cluster.injector_secret, secret);
    assert_eq!(
        cluster.injector_dns_names,
        vec![
            format!("{svc}.{ca_namespace}.svc"),
            format!("{svc}.{ca_namespace}.svc.cluster.local"),
        ]
    );
}

// ---------------------------------------------------------------------------
// certd and the webhook

#[test]
fn certd_ca_bundle_patch_applies_to_the_shipped_webhook_and_settles() {
    let docs = control_plane();
    // certd patches the configuration its --webhook-configuration names; the
    // Deployment leaves that at its default, the contract's name.
    let certd = deployment(&docs, "meshlite-certd");
    assert!(
        !only_container(&certd)
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--webhook-configuration")),
        "certd patches the default configuration, {}",
        contract::WEBHOOK_CONFIGURATION
    );
    let mut stored = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    )
    .value
    .clone();
    // As the API server stores it.
    stored["metadata"]["resourceVersion"] = "42".into();
    let bundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    let config: MutatingWebhookConfiguration = serde_json::from_value(stored.clone()).unwrap();
    let patch = meshlite_certd::kube::trust::ca_bundle_patch(&config, bundle)
        .unwrap()
        .expect("the shipped webhook has no caBundle, so certd patches it");
    json_patch::patch(&mut stored, &patch).unwrap_or_else(|e| {
        panic!("certd's caBundle patch does not apply to deploy/webhook.yaml: {e}")
    });
    let patched: MutatingWebhookConfiguration = serde_json::from_value(stored).unwrap();
    for hook in patched.webhooks.iter().flatten() {
        assert_eq!(
            hook.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice()),
            Some(bundle.as_bytes()),
            "webhook {}",
            hook.name
        );
    }
    // Once set, certd leaves it alone.
    assert!(
        meshlite_certd::kube::trust::ca_bundle_patch(&patched, bundle)
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------
// The injector, configured as shipped, on the demo's pods

#[test]
fn the_shipped_injector_config_meshes_the_demo_pods_with_the_shipped_image() {
    use k8s_openapi::api::core::v1::Pod;
    use meshlite_injector::{Decision, SkipReason};

    let cfg = injector_config(&control_plane());
    let examples = example_docs();
    let ns: Namespace = examples
        .iter()
        .find(|d| d.kind() == "Namespace")
        .unwrap()
        .typed();
    let ns_annotations = ns.metadata.annotations.unwrap_or_default();
    let (mut meshed, mut skipped, mut rewritten) = (0, 0, 0);
    for (what, t) in templates(&examples) {
        let pod = Pod {
            metadata: t.metadata.clone().unwrap_or_default(),
            spec: t.spec.clone(),
            ..Default::default()
        };
        let decision = meshlite_injector::mutate(&pod, &ns_annotations, &cfg)
            .unwrap_or_else(|e| panic!("{what}: the injector denies the pod: {e}"));
        let patch = match decision {
            Decision::Skip(reason) => {
                assert_eq!(reason, SkipReason::OptedOut, "{what}");
                skipped += 1;
                continue;
            }
            Decision::Inject(patch) => patch,
        };
        meshed += 1;
        let mut value = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        let pod: Pod = serde_json::from_value(value).unwrap();
        let spec = pod.spec.unwrap();
        let inits = spec.init_containers.unwrap_or_default();
        let names: Vec<&str> = inits.iter().take(2).map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [contract::INIT_CONTAINER, contract::PROXY_CONTAINER],
            "{what}: native sidecar order"
        );
        for (c, subcommand) in inits.iter().zip(["init", "run"]) {
            // No command: the image's ENTRYPOINT (meshlite-proxy) runs the args.
            assert_eq!(c.command, None, "{what}: {}", c.name);
            assert_eq!(
                c.args.as_ref().and_then(|a| a.first()).map(String::as_str),
                Some(subcommand)
            );
            assert_eq!(c.image.as_deref(), Some(cfg.image.as_str()));
        }
        let proxy = &inits[1];
        let certd_url = proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == contract::env::CERTD_URL)
            .and_then(|e| e.value.clone());
        assert_eq!(certd_url.as_deref(), Some(cfg.certd_url.as_str()));
        let volumes = spec.volumes.unwrap_or_default();
        assert!(volumes.iter().any(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == contract::TRUST_BUNDLE_CONFIGMAP)
        }));
        assert!(volumes.iter().any(|v| {
            v.projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .any(|s| {
                    s.service_account_token
                        .as_ref()
                        .is_some_and(|t| t.audience.as_deref() == Some(contract::TOKEN_AUDIENCE))
                })
        }));
        // In strict mode the plaintext readiness probe now goes to the proxy.
        let strict = t
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(contract::MODE_ANNOTATION))
            .is_some_and(|m| m == contract::Mode::Strict.as_str());
        for c in &spec.containers {
            if let (true, Some(get)) = (
                strict,
                c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()),
            ) {
                assert_eq!(
                    get.port,
                    IntOrString::Int(i32::from(contract::ADMIN_PORT)),
                    "{what}"
                );
                rewritten += 1;
            }
        }
    }
    assert!(
        meshed >= 3 && skipped == 1 && rewritten >= 1,
        "meshed {meshed}, skipped {skipped}, strict probes rewritten {rewritten}"
    );
}
