//! Loading the `deploy/` manifests, the typed round trip, and helpers for
//! reading Deployments, Services and the ConfigMap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshlite_injector::InjectorConfig;
use serde::Deserialize as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Loading

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

pub(crate) fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One YAML document and the file it came from.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    pub(crate) file: String,
    pub(crate) value: Value,
}

impl Doc {
    pub(crate) fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub(crate) fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    pub(crate) fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }

    pub(crate) fn what(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }

    pub(crate) fn typed<K: DeserializeOwned>(&self) -> K {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: not a valid {}: {e}", self.what(), self.kind()))
    }
}

/// Every non-empty document of a (multi-document) YAML text.
pub(crate) fn parse_docs(file: &str, text: &str) -> Vec<Doc> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, de)| {
            let value =
                Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: YAML document {i}: {e}"));
            Doc {
                file: file.to_string(),
                value,
            }
        })
        .filter(|d| !d.value.is_null())
        .collect()
}

/// The `resources:` of `deploy/kustomization.yaml`, in order.
pub(crate) fn kustomization_resources() -> Vec<String> {
    let path = deploy_dir().join("kustomization.yaml");
    let docs = parse_docs("deploy/kustomization.yaml", &read(&path));
    assert_eq!(docs.len(), 1, "kustomization.yaml holds one document");
    let k = &docs[0].value;
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    k["resources"]
        .as_array()
        .expect("kustomization.yaml has a resources list")
        .iter()
        .map(|r| r.as_str().expect("resources are file names").to_string())
        .collect()
}

/// Documents of the control plane: every listed file that exists (a missing
/// one is reported by `every_kustomization_resource_exists_and_every_manifest_is_listed`).
pub(crate) fn control_plane() -> Vec<Doc> {
    kustomization_resources()
        .iter()
        .filter(|f| deploy_dir().join(f).is_file())
        .flat_map(|f| parse_docs(&format!("deploy/{f}"), &read(&deploy_dir().join(f))))
        .collect()
}

pub(crate) fn example_docs() -> Vec<Doc> {
    let dir = deploy_dir().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/examples/ holds no YAML");
    files
        .iter()
        .flat_map(|p| {
            let label = format!(
                "deploy/examples/{}",
                p.file_name().unwrap().to_string_lossy()
            );
            parse_docs(&label, &read(p))
        })
        .collect()
}

pub(crate) fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} named {name:?} in the manifests"))
}

pub(crate) fn all_of<K: DeserializeOwned>(docs: &[Doc], kind: &str) -> Vec<K> {
    docs.iter()
        .filter(|d| d.kind() == kind)
        .map(Doc::typed)
        .collect()
}

// ---------------------------------------------------------------------------
// Round trip

pub(crate) fn round_trip<K: Serialize + DeserializeOwned>(doc: &Doc) -> Value {
    let typed: K = doc.typed();
    serde_json::to_value(&typed).unwrap()
}

/// The document parsed into its typed object and serialised back.
pub(crate) fn typed_round_trip(doc: &Doc) -> Result<Value, String> {
    Ok(match doc.kind() {
        "Namespace" => round_trip::<Namespace>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "Deployment" => round_trip::<Deployment>(doc),
        "Service" => round_trip::<Service>(doc),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(doc),
        "ConfigMap" => round_trip::<ConfigMap>(doc),
        "MutatingWebhookConfiguration" => round_trip::<MutatingWebhookConfiguration>(doc),
        "Job" => round_trip::<Job>(doc),
        other => return Err(format!("{}: unexpected kind {other:?}", doc.what())),
    })
}

/// Paths at which `got` differs from `want`.
pub(crate) fn differences(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => differences(&format!("{path}.{k}"), va, vb, out),
                    None => out.push(format!("{path}.{k}: dropped (not a field of this type?)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: {want} came back as {got}")),
    }
}

/// A DNS-1123 label: what Services, Namespaces and label values (without the
/// dots) must be.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "the manifests select pods by matchLabels only"
    );
    let want = selector.match_labels.clone().unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    template(d)
        .metadata
        .clone()
        .unwrap()
        .labels
        .unwrap_or_default()
}

pub(crate) fn template(d: &Deployment) -> &PodTemplateSpec {
    &d.spec.as_ref().unwrap().template
}

pub(crate) fn pod_spec(d: &Deployment) -> &PodSpec {
    template(d).spec.as_ref().unwrap()
}

pub(crate) fn deployment(docs: &[Doc], name: &str) -> Deployment {
    find(docs, "Deployment", name).typed()
}

/// The one container of a control-plane Deployment.
pub(crate) fn only_container(d: &Deployment) -> &Container {
    let containers = &pod_spec(d).containers;
    assert_eq!(containers.len(), 1, "{:?}: one container", d.metadata.name);
    &containers[0]
}

/// The Service that selects the Deployment's pods.
pub(crate) fn service_for(docs: &[Doc], d: &Deployment) -> Service {
    let labels = pod_labels(d);
    let matching: Vec<Service> = all_of::<Service>(docs, "Service")
        .into_iter()
        .filter(|s| {
            let sel = s
                .spec
                .as_ref()
                .unwrap()
                .selector
                .clone()
                .unwrap_or_default();
            !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one Service selects {:?}",
        d.metadata.name
    );
    matching.into_iter().next().unwrap()
}

pub(crate) fn config_map(docs: &[Doc]) -> BTreeMap<String, String> {
    let cms: Vec<ConfigMap> = all_of(docs, "ConfigMap");
    assert_eq!(
        cms.len(),
        1,
        "one ConfigMap holds the control plane's config"
    );
    cms[0].data.clone().unwrap_or_default()
}

pub(crate) fn config_map_name(docs: &[Doc]) -> String {
    docs.iter()
        .find(|d| d.kind() == "ConfigMap")
        .unwrap()
        .name()
        .to_string()
}

pub(crate) fn injector_config(docs: &[Doc]) -> InjectorConfig {
    let text = config_map(docs)
        .get("injector.yaml")
        .cloned()
        .expect("the ConfigMap has key injector.yaml");
    InjectorConfig::from_text(&text, "ConfigMap key injector.yaml")
        .unwrap_or_else(|e| panic!("the injector would refuse its config: {e}"))
}

/// The value of a container env var: literal, or through a ConfigMap key.
pub(crate) fn env_value(docs: &[Doc], c: &Container, name: &str) -> String {
    let var = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("container {} has no env {name}", c.name));
    if let Some(v) = &var.value {
        return v.clone();
    }
    let key_ref = var
        .value_from
        .as_ref()
        .and_then(|f| f.config_map_key_ref.as_ref())
        .unwrap_or_else(|| panic!("env {name}: neither a value nor a ConfigMap key"));
    assert_eq!(key_ref.name, config_map_name(docs), "env {name}");
    config_map(docs)
        .get(&key_ref.key)
        .cloned()
        .unwrap_or_else(|| panic!("env {name}: the ConfigMap has no key {}", key_ref.key))
}

pub(crate) fn container_ports(c: &Container) -> Vec<i32> {
    c.ports.iter().flatten().map(|p| p.container_port).collect()
}

pub(crate) fn assert_https_get(probe: &Option<Probe>, port: u16, path: &str) {
    let get = probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("an httpGet probe");
    assert_eq!(get.port, IntOrString::Int(i32::from(port)));
    assert_eq!(get.path.as_deref(), Some(path));
    assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
}

/// `--flag=value` arguments as a map.
pub(crate) fn flags(c: &Container) -> BTreeMap<String, String> {
    c.args
        .iter()
        .flatten()
        .map(|a| {
            let (k, v) = a
                .strip_prefix("--")
                .and_then(|f| f.split_once('='))
                .unwrap_or_else(|| panic!("{}: argument {a:?} is not --flag=value", c.name));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The volume and file name under which `path` is mounted in `c`.
pub(crate) fn mounted(spec: &PodSpec, c: &Container, path: &str) -> (String, String) {
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("{path} is not under a volume mount of {}", c.name));
    assert_eq!(
        mount.read_only,
        Some(true),
        "{} is mounted read-only",
        mount.mount_path
    );
    volume(spec, &mount.name);
    (mount.name.clone(), file.to_string())
}

pub(crate) fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a k8s_openapi::api::core::v1::Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}
