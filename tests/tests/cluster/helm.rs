//! The Helm chart on the real cluster: `helm install` of deploy/helm/meshlite
//! as its README says, after the kustomize install is gone. The chart's render
//! equals the kustomize one (tests/tests/helm.rs), so this proves what only a
//! cluster can: that helm itself installs and uninstalls it, and that the
//! install meshes pods.

use super::{
    Cluster, ca_bundle_set, eventually, id, meshlite_left, metric, stored_as_applied,
    uninstall_steps,
};
use serde::Deserialize as _;
use serde_json::Value;
use std::process::Command;

/// The helm that tests/cluster/build.sh links beside kubectl, with its own
/// config and cache directories.
struct Helm<'a> {
    c: &'a Cluster,
    home: tempfile::TempDir,
}

/// The longest any one helm command may take. None of them waits for
/// readiness (the scenario does, with kubectl's bounded waits); this bounds a
/// hung API call, which helm's own --timeout does not cover.
const HELM_DEADLINE_SECS: u32 = 300;

impl Helm<'_> {
    /// helm with `args`, killed after HELM_DEADLINE_SECS; panics unless it
    /// succeeds.
    fn run(&self, args: &[&str]) -> String {
        let bin = self.c.kubectl.with_file_name("helm");
        assert!(
            bin.is_file(),
            "{} is missing: tests/cluster/build.sh links helm beside kubectl",
            bin.display()
        );
        let home = self.home.path();
        // coreutils timeout: exit status 124 when it had to kill helm.
        let out = Command::new("timeout")
            .arg(HELM_DEADLINE_SECS.to_string())
            .arg(&bin)
            .args(args)
            .env("KUBECONFIG", &self.c.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .unwrap_or_else(|e| panic!("running timeout {}: {e}", bin.display()));
        assert_ne!(
            out.status.code(),
            Some(124),
            "helm {} did not finish within {HELM_DEADLINE_SECS} s",
            args.join(" ")
        );
        assert!(
            out.status.success(),
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

const NS: &str = "helm-mesh";

/// `helm install` with the default values (the image the kustomize install
/// used, meshlite:dev), a labelled namespace with a server and a client, the
/// client's call answered over mTLS with both identities in the proxies'
/// metrics, then `helm uninstall` leaves nothing of meshlite and no release.
pub(super) fn helm_install_meshes_two_pods(c: &Cluster) {
    let helm = Helm {
        c,
        home: tempfile::tempdir().unwrap(),
    };
    let chart = c.repo.join("deploy/helm/meshlite");
    let chart = chart.to_str().unwrap();
    helm.run(&[
        "install",
        "meshlite",
        chart,
        "--namespace",
        "meshlite-system",
        "--create-namespace",
    ]);
    // Every object helm applied is stored as rendered, and helm owns it.
    let manifest = helm.run(&[
        "get",
        "manifest",
        "meshlite",
        "--namespace",
        "meshlite-system",
    ]);
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    stored_as_applied(c, &objects);
    let certd = c.json(&["-n", "meshlite-system", "get", "deploy", "meshlite-certd"]);
    assert_eq!(
        certd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
        "{}",
        certd["metadata"]
    );
    assert_eq!(
        certd["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "meshlite"
    );
    assert_eq!(
        certd["spec"]["template"]["spec"]["containers"][0]["image"],
        "meshlite:dev"
    );
    let ns = c.json(&["get", "namespace", "meshlite-system"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "the chart's Namespace object applied over --create-namespace's: {}",
        ns["metadata"]
    );
    for d in ["deploy/meshlite-certd", "deploy/meshlite-injector"] {
        c.rollout_status("meshlite-system", d);
    }
    ca_bundle_set(c, "certd patches the webhook's caBundle");

    // A labelled namespace; a server and a client pod, each with its own
    // ServiceAccount, so each identity is its own.
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: {{meshlite.io/inject: enabled}}}}\n"
    );
    for sa in ["server", "client"] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {NS}}}\n"
        ));
    }
    yaml.push_str(&format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}}}
spec:
  serviceAccountName: server
  containers:
    - {{name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never, env: [{{name: POD_NAME, value: server}}],
       ports: [{{containerPort: 8080}}], readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 2}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}}}
spec:
  serviceAccountName: client
  containers:
    - {{name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never}}
"#
    ));
    // The injector's pods are Ready, but the API server calls the webhook
    // through its Service, which kube-proxy may not route yet (a run saw
    // `connect: connection refused` here): only that refusal is retried.
    eventually(
        "the injector's webhook answers through its Service",
        60,
        || match c.try_apply(&yaml) {
            Err(e) if e.contains("failed calling webhook") => Err(e),
            Err(e) => panic!("kubectl apply refused:\n{yaml}\n{e}"),
            Ok(()) => Ok(()),
        },
    );
    c.wait_ready(NS, &["server", "client"]);
    let pod = c.json(&["-n", NS, "get", "pod", "client"]);
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|i| {
            i.iter()
                .find(|i| i["name"] == meshlite_contract::PROXY_CONTAINER)
        })
        .unwrap_or_else(|| panic!("the chart's injector injected no proxy: {}", pod["spec"]));
    assert_eq!(proxy["image"], "meshlite:dev", "{proxy}");

    let target = format!("{}:8080", c.pod_ip(NS, "server"));
    let answer = c
        .call(NS, "client", &target, "helm-mesh")
        .unwrap_or_else(|e| panic!("client -> server: {e}"));
    assert!(answer.contains("got=helm-mesh"), "{answer}");
    let (client_id, server_id) = (id(NS, "client"), id(NS, "server"));
    for (pod, direction, peer) in [
        ("server", "inbound", &client_id),
        ("client", "outbound", &server_id),
    ] {
        let text = c.metrics(NS, pod);
        let seen = metric(
            &text,
            "meshlite_mtls_connections_total",
            &[
                &format!("direction=\"{direction}\""),
                &format!("peer_identity=\"{peer}\""),
            ],
        );
        assert!(
            seen >= 1.0,
            "the {pod}'s proxy counted no {direction} mTLS connection with {peer}:\n{text}"
        );
    }

    // The chart's README's uninstall (no --wait: see there).
    uninstall_steps(c, &[NS], || {
        helm.run(&[
            "uninstall",
            "meshlite",
            "--namespace",
            "meshlite-system",
            "--timeout=240s",
        ]);
    });
    eventually("helm uninstall leaves nothing of meshlite", 180, || {
        meshlite_left(c)?;
        // helm v4 has no --all: name every state a release record can be in.
        let releases = helm.run(&[
            "list",
            "--all-namespaces",
            "--deployed",
            "--failed",
            "--pending",
            "--superseded",
            "--uninstalled",
            "--uninstalling",
            "-q",
        ]);
        match releases.trim() {
            "" => Ok(()),
            left => Err(format!("helm still lists releases: {left}")),
        }
    });
    println!(
        "helm: installed {} objects with the default values (meshlite:dev), {client_id} -> {server_id} over mTLS, uninstalled; nothing left",
        objects.len()
    );
}
