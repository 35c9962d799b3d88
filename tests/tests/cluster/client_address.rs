//! Client address preservation on the real cluster: a server pod annotated
//! `meshlite.io/client-address: preserve` sees each client pod's own IP, over
//! mesh mTLS and over permissive plaintext, while a default pod keeps seeing
//! its own address. The injected securityContext starts the proxy as root with
//! NET_RAW, SETUID and SETGID only, and the running proxy (read from the
//! host's /proc, where the node's containers run) is UID 2102 holding only
//! CAP_NET_RAW.

use super::{Cluster, id, metric};
use meshlite_proxy::testing::netns::proc_status_field;
use serde_json::Value;

/// The preserving server, applied with the other workloads.
pub const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: preserver
  namespace: mesh
  annotations: {meshlite.io/client-address: preserve}
spec:
  serviceAccountName: server
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
      env: [{name: POD_NAME, value: preserver}]
      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
"#;

/// `CAP_NET_RAW` as a bit of /proc's `CapEff`.
const NET_RAW: u64 = 1 << 13;

pub fn app_sees_the_client(c: &Cluster) {
    injected_for_preservation(c);
    let target = format!("{}:8080", c.pod_ip("mesh", "preserver"));
    let from = |ns: &str, pod: &str, target: &str| -> String {
        let answer = c
            .call(ns, pod, target, "whoami")
            .unwrap_or_else(|e| panic!("{ns}/{pod} -> {target}: {e}"));
        seen_ip(&answer)
    };

    // Through the client's proxy, so over mTLS: the client pod's own IP.
    let client_ip = c.pod_ip("mesh", "client");
    assert_eq!(
        from("mesh", "client", &target),
        client_ip,
        "over mTLS the app must see the client pod's address"
    );
    // From an unmeshed pod, plaintext in permissive mode: that pod's IP.
    let outsider_ip = c.pod_ip("plain", "outsider");
    assert_eq!(
        from("plain", "outsider", &target),
        outsider_ip,
        "over plaintext the app must see the outsider's address"
    );
    // The default is unchanged: a server without the annotation sees its own.
    let server = &c.pods("mesh", "app=server")[0];
    let server_ip = c.pod_ip("mesh", server);
    assert_eq!(
        from("mesh", "client", &format!("{server_ip}:8080")),
        server_ip,
        "a default pod's app sees its own address"
    );

    let text = c.metrics("mesh", "preserver");
    let preserved = metric(
        &text,
        "meshlite_client_address_connections_total",
        &["result=\"preserved\""],
    );
    assert!(
        preserved >= 2.0,
        "preserved connections {preserved}:\n{text}"
    );
    let refused: f64 = ["refused_no_capability", "refused_bind_failed"]
        .iter()
        .map(|r| {
            metric(
                &text,
                "meshlite_client_address_connections_total",
                &[&format!("result=\"{r}\"")],
            )
        })
        .sum();
    assert_eq!(refused, 0.0, "refused connections:\n{text}");
    let mtls = metric(
        &text,
        "meshlite_mtls_connections_total",
        &[
            "direction=\"inbound\"",
            &format!("peer_identity=\"{}\"", id("mesh", "client")),
        ],
    );
    assert!(mtls >= 1.0, "the mTLS call reached the preserver:\n{text}");

    let (uid, cap_eff) = proxy_process("mesh", "preserver");
    assert!(
        uid.split_whitespace().all(|u| u == "2102"),
        "the proxy runs as {uid}"
    );
    assert_eq!(cap_eff, NET_RAW, "the proxy's effective capabilities");
    println!(
        "client address: preserver saw client {client_ip} (mTLS) and outsider {outsider_ip} \
         (plaintext); default server saw itself {server_ip}; {preserved} preserved, proxy uid \
         {uid}, CapEff {cap_eff:#x}"
    );
}

/// The injector's part: init installs the rules, the proxy is told to
/// preserve and starts as root with exactly the three capabilities.
fn injected_for_preservation(c: &Cluster) {
    let pod = c.json(&["-n", "mesh", "get", "pod", "preserver"]);
    let inits = pod["spec"]["initContainers"].as_array().expect("injected");
    let named = |n: &str| -> &Value {
        inits
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {inits:?}"))
    };
    let init = named(meshlite_contract::INIT_CONTAINER);
    assert!(
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--preserve-client-address"),
        "{init}"
    );
    let proxy = named(meshlite_contract::PROXY_CONTAINER);
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_RAW", "SETUID", "SETGID"]),
        "{sc}"
    );
    assert!(
        proxy["env"].as_array().unwrap().iter().any(|e| {
            e["name"] == meshlite_contract::env::PRESERVE_CLIENT_ADDRESS && e["value"] == "true"
        }),
        "{proxy}"
    );
}

/// The IP in a testapp answer `<name> from=<ip:port> got=<line>`.
fn seen_ip(answer: &str) -> String {
    let addr = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("from="))
        .unwrap_or_else(|| panic!("no from= in {answer:?}"));
    let addr: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("from={addr} in {answer:?}: {e}"));
    addr.ip().to_string()
}

/// The `Uid:` line and `CapEff` of the pod's proxy process, found on this host
/// (the node) by its downward-API environment.
fn proxy_process(ns: &str, pod: &str) -> (String, u64) {
    let want = [
        format!("{}={pod}", meshlite_contract::env::POD_NAME),
        format!("{}={ns}", meshlite_contract::env::POD_NAMESPACE),
    ];
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim() != "meshlite-proxy" {
            continue;
        }
        let Ok(environ) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if want.iter().all(|w| vars.contains(&w.as_bytes())) {
            found.extend(
                entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok()),
            );
        }
    }
    assert_eq!(
        found.len(),
        1,
        "proxy processes of {ns}/{pod}: pids {found:?}"
    );
    let field = |name: &str| proc_status_field(found[0], name).unwrap();
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    (field("Uid:"), cap_eff)
}
