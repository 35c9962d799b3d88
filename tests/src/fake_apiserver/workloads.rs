//! Workload objects as the cluster writes them, for secure-naming tests: a Pod
//! is created, then the kubelet's part (phase and IP) is set through
//! `/status`; a Service comes with the EndpointSlice its controller would write.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use meshlite_contract::{INIT_CONTAINER, PROXY_CONTAINER};
use serde_json::json;

use super::FakeApiServer;

/// Creates a running pod `ns/name` under ServiceAccount `sa` at `ip`, with the
/// injector's containers if `injected`.
pub async fn create_pod(
    fake: &FakeApiServer,
    ns: &str,
    name: &str,
    sa: &str,
    ip: &str,
    injected: bool,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(fake.client(), ns);
    let init = if injected {
        json!([{ "name": INIT_CONTAINER, "image": "meshlite:dev" },
               { "name": PROXY_CONTAINER, "image": "meshlite:dev", "restartPolicy": "Always" }])
    } else {
        json!([])
    };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": { "serviceAccountName": sa, "initContainers": init,
                  "containers": [{ "name": "app", "image": "testapp" }] },
    }))
    .map_err(kube::Error::SerdeError)?;
    let mut pod = api.create(&PostParams::default(), &pod).await?;
    pod.status = Some(
        serde_json::from_value(
            json!({ "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] }),
        )
        .map_err(kube::Error::SerdeError)?,
    );
    api.replace_status(name, &PostParams::default(), &pod).await
}

/// Creates Service `ns/name` at ClusterIP `ip`, port 80 (`http`) to target
/// port 8080, and its EndpointSlice with `backends` ready.
pub async fn create_service(
    fake: &FakeApiServer,
    ns: &str,
    name: &str,
    ip: &str,
    backends: &[&str],
) -> Result<(), kube::Error> {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": { "clusterIP": ip, "clusterIPs": [ip],
                  "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 }] },
    }))
    .map_err(kube::Error::SerdeError)?;
    Api::<Service>::namespaced(fake.client(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let endpoints: Vec<_> = backends
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } }))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{name}-x1"),
                      "labels": { "kubernetes.io/service-name": name } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    }))
    .map_err(kube::Error::SerdeError)?;
    Api::<EndpointSlice>::namespaced(fake.client(), ns)
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}
