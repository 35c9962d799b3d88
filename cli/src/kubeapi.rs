//! The API calls every command shares: the client from the user's
//! kubeconfig, meshlite's settings as the install has them, and a proxy's
//! `/identity` through the API server's pod proxy subresource.

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use meshlite_contract::api::{PROXY_IDENTITY_PATH, ProxyIdentity};
use meshlite_contract::{
    ADMIN_PORT, CA_SECRET, INJECT_ENABLED, INJECT_LABEL, PROXY_CONTAINER, SYSTEM_NAMESPACE,
    TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The ConfigMap certd and the injector read their settings from.
pub const CONFIG_MAP: &str = "meshlite-config";
/// certd's leaf lifetime when the ConfigMap does not set one.
const DEFAULT_LIFETIME_SECONDS: u64 = 3600;

/// How to reach the cluster: kubectl's own flags and `KUBECONFIG`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Connect {
    /// Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config,
    /// then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// meshlite's namespace.
    #[arg(long, global = true, default_value = SYSTEM_NAMESPACE)]
    pub system_namespace: String,
}

impl Connect {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        // KUBECONFIG may list several files, as for kubectl.
        let config = match &self.kubeconfig {
            Some(paths) => {
                let mut merged: Option<Kubeconfig> = None;
                for path in std::env::split_paths(paths) {
                    let one = Kubeconfig::read_from(&path)
                        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                    merged = Some(match merged {
                        None => one,
                        Some(m) => m.merge(one).context("merging kubeconfigs")?,
                    });
                }
                let Some(merged) = merged else {
                    bail!("--kubeconfig names no file");
                };
                kube::Config::from_custom_kubeconfig(merged, &options).await
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => Ok(c),
                Err(e) => kube::Config::incluster().map_err(|_| e),
            },
        }
        .context("loading the kubeconfig")?;
        let mut config = config;
        // kube retries 429/503/504 with backoff up to 1000 s by default; the
        // pod proxy answers 503 at once for a pod with no proxy listening, and
        // a check must say so then, not minutes later. Every command is run
        // again by its user (or, for `ca rotate`, polls) instead.
        config.default_retry = false;
        config.read_timeout = Some(Duration::from_secs(30));
        config.connect_timeout = Some(Duration::from_secs(10));
        kube::Client::try_from(config).context("building the Kubernetes client")
    }
}

/// What the install's ConfigMap says, with certd's defaults for what it omits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub system_namespace: String,
    pub ca_namespace: String,
    pub ca_secret: String,
    pub signer: String,
    pub trust_domain: String,
    pub lifetime: Duration,
    /// The injector's configuration file (`injector.yaml`), if present.
    pub injector_yaml: Option<String>,
    /// Whether the ConfigMap exists.
    pub found: bool,
}

impl Settings {
    pub fn from_data(system_namespace: &str, data: Option<&BTreeMap<String, String>>) -> Settings {
        let empty = BTreeMap::new();
        let found = data.is_some();
        let d = data.unwrap_or(&empty);
        let get = |k: &str, default: &str| d.get(k).cloned().unwrap_or_else(|| default.to_string());
        Settings {
            system_namespace: system_namespace.to_string(),
            ca_namespace: get("CERTD_CA_NAMESPACE", system_namespace),
            ca_secret: get("CERTD_CA_SECRET", CA_SECRET),
            signer: get("CERTD_SIGNER_NAME", meshlite_contract::SIGNER_NAME),
            trust_domain: get(
                "CERTD_TRUST_DOMAIN",
                meshlite_contract::DEFAULT_TRUST_DOMAIN,
            ),
            lifetime: Duration::from_secs(
                d.get("CERTD_LIFETIME_SECONDS")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(DEFAULT_LIFETIME_SECONDS),
            ),
            injector_yaml: d.get("injector.yaml").cloned(),
            found,
        }
    }

    pub async fn load(client: &kube::Client, system_namespace: &str) -> anyhow::Result<Settings> {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
        let map = maps
            .get_opt(CONFIG_MAP)
            .await
            .with_context(|| format!("reading ConfigMap {system_namespace}/{CONFIG_MAP}"))?;
        Ok(Settings::from_data(
            system_namespace,
            map.as_ref().and_then(|m| m.data.as_ref()),
        ))
    }
}

/// The namespaces labelled for injection.
pub async fn labelled_namespaces(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{INJECT_LABEL}={INJECT_ENABLED}")))
        .await
        .context("listing labelled namespaces")?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// The trust bundle a namespace's proxies read, if it has one.
pub async fn namespace_bundle(client: &kube::Client, ns: &str) -> anyhow::Result<Option<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let map = api
        .get_opt(TRUST_BUNDLE_CONFIGMAP)
        .await
        .with_context(|| format!("reading ConfigMap {ns}/{TRUST_BUNDLE_CONFIGMAP}"))?;
    Ok(map.and_then(|m| m.data?.get(TRUST_BUNDLE_KEY).cloned()))
}

/// Whether the pod has meshlite's proxy (native sidecar or legacy container).
pub fn has_proxy(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER)
}

/// Whether the pod has finished (Succeeded or Failed): its proxy is gone
/// with it, and nothing about it needs fixing.
pub fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the proxy container reports ready.
pub fn proxy_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER && c.ready)
}

/// The pod's SPIFFE ID as certd would issue it.
pub fn expected_identity(pod: &Pod, trust_domain: &str) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
}

/// The meshed pods of a namespace that have not finished.
pub async fn meshed_pods(client: &kube::Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing pods in {ns}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| has_proxy(p) && !finished(p))
        .collect())
}

/// `GET /identity` on the pod's proxy admin port, through the API server
/// (`pods/<name>:15020/proxy`), so no port-forward or network path is needed.
pub async fn proxy_identity(
    client: &kube::Client,
    ns: &str,
    pod: &str,
) -> anyhow::Result<ProxyIdentity> {
    let path =
        format!("/api/v1/namespaces/{ns}/pods/{pod}:{ADMIN_PORT}/proxy{PROXY_IDENTITY_PATH}");
    let req = http::Request::get(&path)
        .body(Vec::new())
        .context("building the request")?;
    let text = client
        .request_text(req)
        .await
        .with_context(|| format!("GET {path}"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the answer of GET {path} is not an identity: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_fall_back_to_certd_defaults() {
        let s = Settings::from_data("meshlite-system", None);
        assert!(!s.found);
        assert_eq!(s.ca_secret, "meshlite-ca");
        assert_eq!(s.lifetime, Duration::from_secs(3600));
        let data: BTreeMap<String, String> = [
            ("CERTD_LIFETIME_SECONDS", "600"),
            ("CERTD_CA_SECRET", "other"),
            ("CERTD_TRUST_DOMAIN", "example.org"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let s = Settings::from_data("meshlite-system", Some(&data));
        assert_eq!(s.lifetime, Duration::from_secs(600));
        assert_eq!(s.ca_secret, "other");
        assert_eq!(s.ca_namespace, "meshlite-system");
        assert_eq!(s.trust_domain, "example.org");
    }

    #[test]
    fn a_pod_is_meshed_by_its_proxy_container_in_either_mode() {
        let pod = |json| serde_json::from_value::<Pod>(json).unwrap();
        let native = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"serviceAccountName": "cart",
                     "initContainers": [{"name": "meshlite-proxy", "restartPolicy": "Always"}],
                     "containers": [{"name": "app"}]},
            "status": {"initContainerStatuses": [{"name": "meshlite-proxy", "ready": true,
                "image": "i", "imageID": "", "restartCount": 0}]}
        }));
        assert!(has_proxy(&native) && proxy_ready(&native));
        assert_eq!(
            expected_identity(&native, "cluster.local"),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        let legacy = pod(serde_json::json!({
            "metadata": {"name": "b", "namespace": "shop"},
            "spec": {"containers": [{"name": "app"}, {"name": "meshlite-proxy"}]},
            "status": {"containerStatuses": [{"name": "meshlite-proxy", "ready": false,
                "image": "i", "imageID": "", "restartCount": 0}]}
        }));
        assert!(has_proxy(&legacy) && !proxy_ready(&legacy));
        assert_eq!(
            expected_identity(&legacy, "cluster.local"),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
        let plain = pod(serde_json::json!({"spec": {"containers": [{"name": "app"}]}}));
        assert!(!has_proxy(&plain));
        for (phase, done) in [
            ("Pending", false),
            ("Running", false),
            ("Succeeded", true),
            ("Failed", true),
        ] {
            let p = pod(serde_json::json!({"status": {"phase": phase}}));
            assert_eq!(finished(&p), done, "{phase}");
        }
    }
}
