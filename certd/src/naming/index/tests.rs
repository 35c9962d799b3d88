use super::*;
use serde_json::json;

fn pod(ns: &str, name: &str, sa: &str, ip: &str, injected: bool) -> Pod {
    let mut init = vec![];
    if injected {
        init.push(json!({ "name": INIT_CONTAINER, "image": "meshlite" }));
        init.push(
            json!({ "name": PROXY_CONTAINER, "image": "meshlite", "restartPolicy": "Always" }),
        );
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "creationTimestamp": "2026-12-01T00:00:00Z" },
        "spec": {
            "serviceAccountName": sa,
            "initContainers": init,
            "containers": [{ "name": "app", "image": "app" }],
        },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
    }))
    .unwrap()
}

fn service(ns: &str, name: &str, ip: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "clusterIP": ip, "clusterIPs": [ip],
                  "ports": [{ "name": "http", "port": port, "protocol": "TCP", "targetPort": 8080 }] },
    }))
    .unwrap()
}

fn slice(ns: &str, svc: &str, backends: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = backends
        .iter()
        .map(|(ip, ready)| json!({ "addresses": [ip], "conditions": { "ready": ready } }))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{svc}-abc"), "namespace": ns,
                      "labels": { SERVICE_NAME_LABEL: svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TrustDomain::default(), ns, sa).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn index(pods: &[Pod], svcs: &[Service], slices: &[EndpointSlice]) -> Index {
    Index::build(pods, svcs, slices, &TrustDomain::default(), 1)
}

#[test]
fn a_meshed_pod_ip_answers_its_service_account_identity() {
    let idx = index(&[pod("shop", "cart-0", "cart", "10.1.0.5", true)], &[], &[]);
    let a = idx.answer(addr("10.1.0.5:8080"));
    assert_eq!(a.meshed, Meshed::Meshed);
    assert_eq!(a.identities, vec![id("shop", "cart")]);
    assert_eq!(a.ttl_seconds, DEFAULT_TTL_SECONDS);
}

#[test]
fn an_uninjected_pod_and_a_skipped_port_are_unmeshed() {
    let mut skipping = pod("shop", "db-0", "db", "10.1.0.7", true);
    skipping.metadata.annotations = Some(
        [(
            SKIP_INBOUND_PORTS_ANNOTATION.to_string(),
            "5432, 9000".to_string(),
        )]
        .into(),
    );
    let idx = index(
        &[pod("shop", "legacy", "legacy", "10.1.0.6", false), skipping],
        &[],
        &[],
    );
    assert_eq!(idx.answer(addr("10.1.0.6:80")).meshed, Meshed::Unmeshed);
    assert_eq!(idx.answer(addr("10.1.0.7:5432")).meshed, Meshed::Unmeshed);
    assert_eq!(idx.answer(addr("10.1.0.7:8080")).meshed, Meshed::Meshed);
    assert!(idx.answer(addr("10.1.0.6:80")).identities.is_empty());
}

#[test]
fn an_address_nobody_owns_is_unknown() {
    let idx = index(&[pod("shop", "cart-0", "cart", "10.1.0.5", true)], &[], &[]);
    assert_eq!(idx.answer(addr("192.0.2.1:443")).meshed, Meshed::Unknown);
}

#[test]
fn a_cluster_ip_answers_the_union_of_its_ready_meshed_backends() {
    let pods = [
        pod("shop", "web-a", "web", "10.1.0.10", true),
        pod("shop", "web-b", "web-canary", "10.1.0.11", true),
        pod("shop", "web-c", "legacy", "10.1.0.12", false),
    ];
    let idx = index(
        &pods,
        &[service("shop", "web", "10.96.0.20", 80)],
        // The unmeshed pod is not ready: it does not count.
        &[slice(
            "shop",
            "web",
            &[
                ("10.1.0.10", true),
                ("10.1.0.11", true),
                ("10.1.0.12", false),
            ],
        )],
    );
    let a = idx.answer(addr("10.96.0.20:80"));
    assert_eq!(a.meshed, Meshed::Meshed);
    assert_eq!(
        a.identities,
        vec![id("shop", "web"), id("shop", "web-canary")]
    );
    // Another port of the ClusterIP is not a service port.
    assert_eq!(idx.answer(addr("10.96.0.20:81")).meshed, Meshed::Unknown);
}

#[test]
fn a_service_with_meshed_and_unmeshed_ready_backends_is_mixed() {
    let pods = [
        pod("shop", "web-a", "web", "10.1.0.10", true),
        pod("shop", "web-c", "legacy", "10.1.0.12", false),
    ];
    let svc = [service("shop", "web", "10.96.0.20", 80)];
    let idx = index(
        &pods,
        &svc,
        &[slice(
            "shop",
            "web",
            &[("10.1.0.10", true), ("10.1.0.12", true)],
        )],
    );
    let a = idx.answer(addr("10.96.0.20:80"));
    assert_eq!(a.meshed, Meshed::Mixed);
    assert_eq!(a.identities, vec![id("shop", "web")]);
    // An endpoint that is no pod we know (a selectorless Service) is unmeshed.
    let idx = index(
        &pods[..1],
        &svc,
        &[slice(
            "shop",
            "web",
            &[("10.1.0.10", true), ("203.0.113.9", true)],
        )],
    );
    assert_eq!(idx.answer(addr("10.96.0.20:80")).meshed, Meshed::Mixed);
    let idx = index(&[], &svc, &[slice("shop", "web", &[("203.0.113.9", true)])]);
    assert_eq!(idx.answer(addr("10.96.0.20:80")).meshed, Meshed::Unmeshed);
    let idx = index(&[], &svc, &[]);
    assert_eq!(idx.answer(addr("10.96.0.20:80")).meshed, Meshed::Unknown);
}

#[test]
fn a_reused_ip_belongs_to_the_live_pod_not_the_terminating_one() {
    let old = {
        let mut p = pod("a", "old", "x", "10.1.0.9", true);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T00:00:05Z".parse().unwrap(),
        ));
        p
    };
    let new = pod("b", "new", "y", "10.1.0.9", true);
    for pods in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
        let a = index(&pods, &[], &[]).answer(addr("10.1.0.9:8080"));
        assert_eq!(a.identities, vec![id("b", "y")]);
    }
    let mut finished = pod("a", "done", "x", "10.1.0.9", true);
    finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let a = index(&[finished], &[], &[]).answer(addr("10.1.0.9:8080"));
    assert_eq!(a.meshed, Meshed::Unknown);
}

#[test]
fn host_network_pods_are_not_indexed() {
    let mut p = pod("kube-system", "node-agent", "agent", "192.168.1.10", false);
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        index(&[p], &[], &[]).answer(addr("192.168.1.10:22")).meshed,
        Meshed::Unknown
    );
}
