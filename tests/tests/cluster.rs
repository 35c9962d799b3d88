//! The real-cluster tier: meshlite installed with kubectl on a one-node
//! Kubernetes built from its Go modules (tests/cluster/README.md), and used as a
//! platform team would use it.
//!
//! One cluster serves every scenario, in order, so the tier costs one start-up:
//! install and its fidelity, the control plane under Pod Security `restricted`,
//! injection as a native sidecar, mTLS by pod IP, ClusterIP and DNS name with a
//! capture, strict mode, `kubectl meshlite` (check against each break, the
//! proxies' identities, and a CA rotation in its four steps under traffic that
//! runs meanwhile), Jobs, a certd restart during issuance, a certificate
//! rotation under a live connection, uninstall, and then the same control
//! plane installed with the Helm chart (`cluster/helm.rs`).
//!
//! `harness = false`: what it prints (the Kubernetes version, the capture
//! summary) reaches CI's log even when it passes. It needs root and the tools
//! that tests/cluster/README.md lists; when one is missing it fails, it never
//! skips. `MESHLITE_CLUSTER_KEEP=1` leaves the cluster up afterwards.

// Test code: a failed step should panic right there, with its context.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Without the path, this crate root's `mod helm;` would load tests/helm.rs,
// the chart's template tests (a test crate of their own).
#[path = "cluster/client_address.rs"]
mod client_address;
#[path = "cluster/helm.rs"]
mod helm;
#[path = "cluster/plugin.rs"]
mod plugin;

use serde::Deserialize as _;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "MESHLITE-CLUSTER-MARKER-51c2e8";
const TRUST_DOMAIN: &str = "cluster.local";
/// certd's shortest lifetime: the CSR API's minimum `expirationSeconds`.
const SHORTEST_LIFETIME: u64 = 600;
/// Longer than the latest renewal (60% of the lifetime) plus start-up.
const HOLD_SECS: u64 = 420;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("real_cluster: test");
        return;
    }
    // `cargo test -- NAME` and `-- --skip NAME` reach every test binary: honour
    // them as libtest would.
    let skipped = args
        .windows(2)
        .any(|w| w[0] == "--skip" && "real_cluster".contains(w[1].as_str()));
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--skip"))
        .map(|(_, a)| a)
        .collect();
    if skipped
        || (!filters.is_empty() && !filters.iter().any(|f| "real_cluster".contains(f.as_str())))
    {
        println!("real_cluster: filtered out");
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::up();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenarios(&cluster)));
    if result.is_err() {
        cluster.diagnose();
    }
    drop(cluster);
    match result {
        Ok(()) => println!(
            "test real_cluster ... ok ({} s)",
            started.elapsed().as_secs()
        ),
        Err(_) => {
            println!("test real_cluster ... FAILED");
            std::process::exit(1);
        }
    }
}

fn scenarios(c: &Cluster) {
    image_matches_dockerfile(c);
    let applied = install(c);
    control_plane_ready(c);
    half_install_is_not_ready(c);
    // certd's shortest lifetime, so that rotation happens within the test.
    c.kubectl(&[
        "-n",
        "meshlite-system",
        "patch",
        "configmap",
        "meshlite-config",
        "--type=merge",
        "-p",
        &format!(r#"{{"data":{{"CERTD_LIFETIME_SECONDS":"{SHORTEST_LIFETIME}"}}}}"#),
    ]);
    c.rollout("meshlite-system", "deploy/meshlite-certd");

    workloads(c);
    let holder_started = Instant::now();
    injected_as_native_sidecars(c);
    untouched(c);
    client_address::app_sees_the_client(c);
    plugin::proxies_and_identity(c);
    // The CA rotation runs from here to finish_rotation, under the traffic of
    // the scenarios between and of a client that connects every second.
    let rotation = plugin::start_rotation(c);
    mtls_with_capture(c);
    strict_mode(c);
    admission_refusals(c);
    secure_naming(c);
    plugin::await_new_signer(c);
    let rbac_outage = plugin::check_catches_each_break(c);
    job_completes(c);
    certd_restart_loses_no_issuance(c);
    rotation_keeps_the_connection(c, holder_started);
    plugin::finish_rotation(c, rotation);
    no_rbac_denials(&rbac_outage);
    uninstall(c, &applied);
    // The same control plane from the Helm chart, on the now empty cluster.
    helm::helm_install_meshes_two_pods(c);
}

// --- the harness --------------------------------------------------------------

struct Cluster {
    repo: PathBuf,
    /// Where cargo put the workspace's binaries (kubectl-meshlite among them).
    bins: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    keep: bool,
}

impl Cluster {
    fn up() -> Cluster {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the real-cluster tier needs root (CI runs it as root)"
        );
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let scripts = repo.join("tests/cluster");
        // target/debug/deps/cluster-... -> target/debug
        let exe = std::env::current_exe().unwrap();
        let bins = exe.parent().unwrap().parent().unwrap().to_path_buf();
        for b in [
            "meshlite-proxy",
            "meshlite-certd",
            "meshlite-injector",
            "meshlite-testapp",
            "kubectl-meshlite",
        ] {
            assert!(
                bins.join(b).exists(),
                "{} is missing: `cargo test --workspace` builds it; alone, run `cargo build --workspace --bins` first",
                bins.join(b).display()
            );
        }
        let built = Command::new(scripts.join("build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/cluster/build.sh");
        assert!(built.status.success(), "tests/cluster/build.sh failed");
        let kube_bin = PathBuf::from(String::from_utf8(built.stdout).unwrap().trim().to_string());
        let status = Command::new(scripts.join("up.sh"))
            .arg(&kube_bin)
            .arg(&bins)
            .status()
            .expect("run tests/cluster/up.sh");
        let cluster = Cluster {
            repo,
            bins,
            kubectl: kube_bin.join("kubectl"),
            kubeconfig: PathBuf::from("/var/lib/meshlite-cluster/admin.kubeconfig"),
            keep: std::env::var_os("MESHLITE_CLUSTER_KEEP").is_some_and(|v| v == "1"),
        };
        if !status.success() {
            drop(cluster);
            panic!("tests/cluster/up.sh failed; its logs are printed above");
        }
        let version = cluster.json(&["version"]);
        println!(
            "real-cluster tier: Kubernetes {} (kubectl {})",
            version["serverVersion"]["gitVersion"].as_str().unwrap(),
            version["clientVersion"]["gitVersion"].as_str().unwrap()
        );
        cluster
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.command().args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    /// kubectl with `input` on its standard input.
    fn with_stdin(&self, args: &[&str], input: &str) -> std::process::Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `kubectl apply --server-side` of a manifest given inline.
    fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml) {
            panic!("kubectl apply refused:\n{yaml}\n{e}");
        }
    }

    /// [`Cluster::apply`], returning kubectl's error instead of failing.
    fn try_apply(&self, yaml: &str) -> Result<(), String> {
        let args = [
            "apply",
            "--server-side",
            "--field-manager=meshlite-tests",
            "--validate=strict",
            "-f",
            "-",
        ];
        let out = self.with_stdin(&args, yaml);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl create --dry-run=server` of a manifest: the object as the API
    /// server would store it, admission webhooks included, or its refusal.
    fn dry_run(&self, yaml: &str) -> Result<Value, String> {
        let out = self.with_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            yaml,
        );
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn rollout(&self, ns: &str, what: &str) {
        self.kubectl(&["-n", ns, "rollout", "restart", what]);
        self.rollout_status(ns, what);
    }

    fn rollout_status(&self, ns: &str, what: &str) {
        self.kubectl(&["-n", ns, "rollout", "status", what, "--timeout=240s"]);
    }

    fn wait_ready(&self, ns: &str, pods: &[&str]) {
        let mut args = vec!["-n", ns, "wait", "--for=condition=Ready", "--timeout=240s"];
        let names: Vec<String> = pods.iter().map(|p| format!("pod/{p}")).collect();
        args.extend(names.iter().map(String::as_str));
        self.kubectl(&args);
    }

    /// `kubectl exec` into a pod's app container.
    fn exec(&self, ns: &str, pod: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["-n", ns, "exec", pod, "-c", "app", "--"];
        args.extend(cmd);
        self.try_kubectl(&args)
    }

    /// `meshlite-testapp call TARGET MSG` from a pod: its answer line.
    fn call(&self, ns: &str, pod: &str, target: &str, msg: &str) -> Result<String, String> {
        self.exec(ns, pod, &["meshlite-testapp", "call", target, msg])
    }

    /// A pod's proxy metrics, through the API server's pod proxy.
    fn metrics(&self, ns: &str, pod: &str) -> String {
        self.kubectl(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/{ns}/pods/{pod}:{}/proxy/metrics",
                meshlite_contract::ADMIN_PORT
            ),
        ])
    }

    fn pod_ip(&self, ns: &str, pod: &str) -> String {
        self.kubectl(&[
            "-n",
            ns,
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.podIP}",
        ])
    }

    fn pods(&self, ns: &str, selector: &str) -> Vec<String> {
        let list = self.json(&["-n", ns, "get", "pods", "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// What a failure needs to be understood: the pods, the events, the
    /// control plane's logs.
    fn diagnose(&self) {
        println!("--- diagnostics");
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            &[
                "-n",
                "meshlite-system",
                "logs",
                "-l",
                "app.kubernetes.io/part-of=meshlite",
                "--all-containers",
                "--tail=40",
                "--prefix",
            ][..],
        ] {
            match self.try_kubectl(args) {
                Ok(out) | Err(out) => println!("$ kubectl {}\n{out}", args.join(" ")),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "MESHLITE_CLUSTER_KEEP=1: the cluster stays up; KUBECONFIG={} {} get pods -A; tests/cluster/down.sh stops it",
                self.kubeconfig.display(),
                self.kubectl.display()
            );
            return;
        }
        let status = Command::new(self.repo.join("tests/cluster/down.sh")).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("tests/cluster/down.sh failed");
        }
    }
}

/// Polls `f` until it gives a value, or fails with its last error.
fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what} within {secs} s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The sum of a metric's samples whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

// --- the scenarios ------------------------------------------------------------

/// The packed meshlite:dev has deploy/Dockerfile's entrypoint, user, binaries
/// and both iptables variants.
fn image_matches_dockerfile(c: &Cluster) {
    let dockerfile = std::fs::read_to_string(c.repo.join("deploy/Dockerfile")).unwrap();
    let directive = |name: &str| -> String {
        dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("deploy/Dockerfile has no {name}"))
            .trim()
            .to_string()
    };
    let entrypoint: Vec<String> = serde_json::from_str(&directive("ENTRYPOINT ")).unwrap();
    let user = directive("USER ");
    assert!(directive("COPY --from=build ").ends_with("/usr/local/bin/"));

    let archive = PathBuf::from("/var/lib/meshlite-cluster/images/meshlite_dev.oci.tar");
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success(), "unpack {}", archive.display());
    let blob = |digest: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let read_json =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read_json(dir.path().join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = read_json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let packed_entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    assert_eq!(packed_entrypoint, entrypoint, "ENTRYPOINT");
    assert_eq!(config["config"]["User"].as_str().unwrap(), user, "USER");

    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(blob(manifest["layers"][0]["digest"].as_str().unwrap()))
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let files: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    // The binaries the Dockerfile copies to /out/, and the variants its
    // `--version` checks require.
    let copied = dockerfile
        .split("cp ")
        .nth(1)
        .and_then(|s| s.split("/out/").next())
        .unwrap();
    let mut wanted: Vec<String> = copied
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(|b| format!("usr/local/bin/{b}"))
        .collect();
    assert_eq!(wanted.len(), 3, "the Dockerfile copies three binaries");
    wanted.extend(["usr/sbin/iptables-nft", "usr/sbin/iptables-legacy"].map(String::from));
    for want in &wanted {
        assert!(
            files.contains(&want.as_str()),
            "meshlite:dev lacks {want}, which deploy/Dockerfile installs"
        );
    }
    println!(
        "meshlite:dev agrees with deploy/Dockerfile: entrypoint {entrypoint:?}, user {user}, {wanted:?}"
    );
}

/// `kubectl apply --server-side -k deploy/` under strict field validation; the
/// server stores every field that was applied. Returns the applied objects.
fn install(c: &Cluster) -> Vec<Value> {
    let deploy = c.repo.join("deploy");
    let deploy = deploy.to_str().unwrap();
    let rendered = c.kubectl(&["kustomize", deploy]);
    let applied: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    c.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=meshlite-install",
        "--validate=strict",
        "-k",
        deploy,
    ]);
    stored_as_applied(c, &applied);
    println!(
        "install: {} objects applied with --server-side --validate=strict; each stored as applied",
        applied.len()
    );
    applied
}

/// Every field of every applied object is stored as it was applied (nothing
/// pruned or changed by the server).
fn stored_as_applied(c: &Cluster, applied: &[Value]) {
    for object in applied {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let group = object["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .map_or("", |(g, _)| g);
        let resource = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut args = vec!["get", resource.as_str(), name];
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        let stored = c.json(&args);
        if let Err(path) = contained(object, &stored, String::new()) {
            panic!("the server did not store what was applied for {kind}/{name}: {path}");
        }
    }
}

/// Whether every field of `applied` is in `stored` with the same value.
fn contained(applied: &Value, stored: &Value, path: String) -> Result<(), String> {
    match (applied, stored) {
        (Value::Object(a), Value::Object(s)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                contained(v, s.get(k).ok_or_else(|| format!("{p} was pruned"))?, p)?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(s)) if a.len() == s.len() => a
            .iter()
            .zip(s)
            .enumerate()
            .try_for_each(|(i, (a, s))| contained(a, s, format!("{path}[{i}]"))),
        (a, s) if a == s => Ok(()),
        // YAML gives numbers where the server keeps the same number as a
        // string (quantities such as `cpu: 1`), and vice versa.
        (a, s) if a.to_string().trim_matches('"') == s.to_string().trim_matches('"') => Ok(()),
        (a, s) => Err(format!("{path}: applied {a}, stored {s}")),
    }
}

fn control_plane_ready(c: &Cluster) {
    for d in ["deploy/meshlite-certd", "deploy/meshlite-injector"] {
        c.rollout_status("meshlite-system", d);
    }
    // certd writes the injector's serving certificate and the webhook's caBundle.
    let tls = c.json(&[
        "-n",
        "meshlite-system",
        "get",
        "secret",
        "meshlite-injector-tls",
    ]);
    assert!(
        tls["data"]["tls.crt"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let ca_bundle = ca_bundle_set(c, "certd patches the webhook's caBundle");
    let ns = c.json(&["get", "namespace", "meshlite-system"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    println!(
        "control plane: certd and injector Ready under Pod Security restricted; caBundle {} bytes",
        ca_bundle.len()
    );
}

/// Waits up to a minute for certd to have written the webhook's caBundle.
fn ca_bundle_set(c: &Cluster, what: &str) -> String {
    eventually(what, 60, || {
        let hook = c.json(&["get", "mutatingwebhookconfiguration", "meshlite-injector"]);
        match hook["webhooks"][0]["clientConfig"]["caBundle"].as_str() {
            Some(b) if !b.is_empty() => Ok(b.to_string()),
            _ => Err(format!("caBundle is empty: {hook}")),
        }
    })
}

/// An install that stopped before the webhook (as one did on 1.24, when the
/// server refused the PodDisruptionBudgets) must not look done: the injector
/// is not Ready while its webhook configuration is missing.
fn half_install_is_not_ready(c: &Cluster) {
    c.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        "meshlite-injector",
    ]);
    c.kubectl(&[
        "-n",
        "meshlite-system",
        "wait",
        "--for=condition=Ready=false",
        "pod",
        "-l",
        "app.kubernetes.io/name=meshlite-injector",
        "--timeout=120s",
    ]);
    let deploy = c.repo.join("deploy");
    c.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=meshlite-install",
        "-k",
        deploy.to_str().unwrap(),
    ]);
    c.kubectl(&[
        "-n",
        "meshlite-system",
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app.kubernetes.io/name=meshlite-injector",
        "--timeout=120s",
    ]);
    ca_bundle_set(c, "certd restores the webhook's caBundle");
    println!(
        "half install: without its webhook configuration the injector is not Ready; re-applied, Ready"
    );
}

fn workloads(c: &Cluster) {
    c.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {meshlite.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: mesh}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: mesh}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: mesh}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      serviceAccountName: server
      containers:
        - name: app
          image: meshlite.io/testapp:dev
          imagePullPolicy: Never
          env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
          ports: [{containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: mesh}
spec:
  selector: {app: server}
  ports: [{port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh}
spec:
  serviceAccountName: client
  containers:
    - {name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never}
---
apiVersion: v1
kind: Pod
metadata:
  name: strict-server
  namespace: mesh
  annotations: {meshlite.io/mode: strict}
spec:
  serviceAccountName: server
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
      env: [{name: POD_NAME, value: strict-server}]
      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
      livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 5}
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: mesh
  annotations: {meshlite.io/inject: disabled}
spec:
  containers:
    - {name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain}
spec:
  containers:
    - {name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never}
"#,
    );
    c.rollout_status("mesh", "deploy/server");
    // A long-lived connection from its first second: it fails unless the proxy
    // was ready before the app started, and it must outlive a rotation.
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: holder, namespace: mesh}}
spec:
  serviceAccountName: client
  restartPolicy: Never
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
      args: [hold, "server.mesh.svc.cluster.local:8080", "{HOLD_SECS}"]
"#
    ));
    c.apply(client_address::POD);
    c.wait_ready(
        "mesh",
        &[
            "client",
            "strict-server",
            "opted-out",
            "holder",
            "preserver",
        ],
    );
    c.wait_ready("plain", &["outsider"]);
}

/// The default mode on a current cluster: the proxy is a native sidecar
/// (an init container with restartPolicy Always and a startupProbe), and the
/// app started only after it.
fn injected_as_native_sidecars(c: &Cluster) {
    let pod = c.json(&["-n", "mesh", "get", "pod", "client"]);
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    let names: Vec<&str> = inits.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            meshlite_contract::INIT_CONTAINER,
            meshlite_contract::PROXY_CONTAINER
        ]
    );
    let proxy = &inits[1];
    assert_eq!(proxy["restartPolicy"], "Always", "{proxy}");
    assert_eq!(
        proxy["startupProbe"]["httpGet"]["path"], "/ready",
        "{proxy}"
    );
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(containers, ["app"]);
    let started = |statuses: &Value, name: &str| -> String {
        statuses
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"]["running"]["startedAt"].as_str())
            .unwrap_or_else(|| panic!("{name} is not running: {statuses}"))
            .to_string()
    };
    let proxy_at = started(
        &pod["status"]["initContainerStatuses"],
        meshlite_contract::PROXY_CONTAINER,
    );
    let app_at = started(&pod["status"]["containerStatuses"], "app");
    // RFC 3339 UTC timestamps of one format order as strings.
    assert!(proxy_at <= app_at, "proxy {proxy_at}, app {app_at}");
    println!("injection: native sidecar; proxy started {proxy_at}, app {app_at}");
}

/// Opted-out pods and pods of unlabelled namespaces get no proxy.
fn untouched(c: &Cluster) {
    for (ns, pod) in [("mesh", "opted-out"), ("plain", "outsider")] {
        let spec = c.json(&["-n", ns, "get", "pod", pod]);
        assert!(
            spec["spec"]["initContainers"].is_null(),
            "{ns}/{pod} was injected: {}",
            spec["spec"]
        );
        assert!(
            spec["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| !v["name"].as_str().unwrap().starts_with("meshlite"))
        );
    }
}

/// Pod IP, ClusterIP and DNS name: mTLS, nothing in clear on the wire, and the
/// peers' identities in the proxies' metrics.
fn mtls_with_capture(c: &Cluster) {
    let servers = c.pods("mesh", "app=server");
    let pod_ip = c.pod_ip("mesh", &servers[0]);
    let cluster_ip = c.kubectl(&[
        "-n",
        "mesh",
        "get",
        "service",
        "server",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let targets = [
        ("pod IP", format!("{pod_ip}:8080")),
        ("ClusterIP", format!("{cluster_ip}:8080")),
        ("DNS name", "server.mesh.svc.cluster.local:8080".to_string()),
    ];
    let capture = Capture::start();
    for (i, (what, target)) in targets.iter().enumerate() {
        let msg = format!("{MARKER}-{i}");
        let answer = c
            .call("mesh", "client", target, &msg)
            .unwrap_or_else(|e| panic!("client -> server by {what}: {e}"));
        assert!(answer.contains(&format!("got={msg}")), "{what}: {answer}");
    }
    let summary = capture.stop();
    assert_eq!(
        summary.marker_copies, 0,
        "the marker crossed the wire in clear"
    );
    assert!(
        summary.tls_records >= targets.len() * 2,
        "TLS records on the wire: {summary:?}"
    );
    println!(
        "capture (host netns, every pod veth, tcp port 8080): {} packets, {} TLS application-data records, marker copies {}",
        summary.packets, summary.tls_records, summary.marker_copies
    );

    let client = c.metrics("mesh", "client");
    let server_id = id("mesh", "server");
    assert!(
        metric(
            &client,
            "meshlite_mtls_connections_total",
            &[
                "direction=\"outbound\"",
                &format!("peer_identity=\"{server_id}\"")
            ]
        ) >= 3.0,
        "the client's proxy saw the server's identity:\n{client}"
    );
    let client_id = id("mesh", "client");
    let seen: f64 = servers
        .iter()
        .map(|s| {
            metric(
                &c.metrics("mesh", s),
                "meshlite_mtls_connections_total",
                &[
                    "direction=\"inbound\"",
                    &format!("peer_identity=\"{client_id}\""),
                ],
            )
        })
        .sum();
    assert!(
        seen >= 3.0,
        "the servers' proxies saw the client's identity ({seen})"
    );
    println!("metrics: client saw {server_id}; servers saw {client_id} {seen} times");
}

/// A strict pod stays Ready through its rewritten probes, and refuses an
/// unmeshed client, counted.
fn strict_mode(c: &Cluster) {
    let pod = c.json(&["-n", "mesh", "get", "pod", "strict-server"]);
    let app = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            app[probe]["httpGet"]["port"],
            meshlite_contract::ADMIN_PORT,
            "{probe} is rewritten to the proxy's admin port: {}",
            app[probe]
        );
    }
    let ip = c.pod_ip("mesh", "strict-server");
    let target = format!("{ip}:8080");
    // Meshed clients get through...
    let answer = c.call("mesh", "client", &target, "meshed").unwrap();
    assert!(answer.contains("got=meshed"), "{answer}");
    // ... an unmeshed one does not.
    let refused = c.call("plain", "outsider", &target, "plain");
    assert!(
        refused.is_err(),
        "strict mode answered plaintext: {refused:?}"
    );
    let m = c.metrics("mesh", "strict-server");
    let count = metric(
        &m,
        "meshlite_refused_connections_total",
        &["direction=\"inbound\"", "reason=\"strict_mode_plaintext\""],
    );
    assert!(count >= 1.0, "the refusal is counted:\n{m}");
    // The outsider still reaches a permissive pod in plaintext.
    let servers = c.pods("mesh", "app=server");
    let permissive = format!("{}:8080", c.pod_ip("mesh", &servers[0]));
    let answer = c.call("plain", "outsider", &permissive, "plain").unwrap();
    assert!(answer.contains("got=plain"), "{answer}");
    println!("strict: Ready with rewritten probes; unmeshed client refused ({count} counted)");
}

/// What the injector refuses, as the API server reports it: pods that a
/// namespace enforcing strict mode forbids, and pods that cannot work meshed.
/// Also that the proxy's connection limit follows its memory limit.
fn admission_refusals(c: &Cluster) {
    c.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: enforced
  labels: {meshlite.io/inject: enabled}
  annotations: {meshlite.io/mode: strict, meshlite.io/mode-enforced: "true"}
"#,
    );
    let pod = |ns: &str, annotations: &str, extra: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: probe, namespace: {ns}, annotations: {{{annotations}}}}}
spec:
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
{extra}"#
        )
    };
    let refusals = [
        (
            "enforced",
            "meshlite.io/inject: disabled",
            "",
            "meshlite.io/mode-enforced",
        ),
        (
            "enforced",
            "meshlite.io/mode: permissive",
            "",
            "meshlite.io/mode-enforced",
        ),
        (
            "enforced",
            "meshlite.io/skip-inbound-ports: '8080'",
            "",
            "meshlite.io/mode-enforced",
        ),
        (
            "mesh",
            "",
            "      securityContext: {runAsUser: 2102}",
            "runs as UID 2102",
        ),
        (
            "mesh",
            "",
            "      ports: [{containerPort: 15020}]",
            "declares port 15020",
        ),
    ];
    for (ns, annotations, extra, needle) in refusals {
        let yaml = pod(ns, annotations, extra);
        let err = c.dry_run(&yaml).expect_err(&format!("admitted:\n{yaml}"));
        assert!(
            err.contains("admission webhook") && err.contains(needle),
            "refused for the wrong reason (want {needle:?}):\n{err}"
        );
    }
    // The same namespace admits a pod that keeps to its floor, in strict mode.
    let stored = c.dry_run(&pod("enforced", "", "")).unwrap();
    let proxy = stored["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == meshlite_contract::PROXY_CONTAINER)
        .expect("the proxy is injected");
    let mode = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == meshlite_contract::env::MODE)
        .unwrap();
    assert_eq!(mode["value"], "strict");
    c.kubectl(&["delete", "namespace", "enforced", "--wait=false"]);

    // 128Mi (the injector's default limit) holds 3,328 connections at 24 MiB
    // plus 32 KiB each; the kubelet hands the limit over through the downward
    // API. The descriptor limit the runtime gives may bind first (2 each,
    // 128 spare), so the expected value uses the one the proxy logged.
    let log = c.kubectl(&[
        "-n",
        "mesh",
        "logs",
        "client",
        "-c",
        meshlite_contract::PROXY_CONTAINER,
    ]);
    let line = log
        .lines()
        .map(strip_ansi)
        .find(|l| l.contains("connection limit derived from the memory limit"))
        .unwrap_or_else(|| panic!("the proxy derived its limit from the memory limit:\n{log}"));
    let line = line.as_str();
    let field = |key: &str| -> f64 {
        let text = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} in {line}"));
        text.parse().unwrap_or_else(|_| panic!("{key} in {line}"))
    };
    assert_eq!(field("memory_limit_mib"), 128.0, "{line}");
    let expected = 3328f64.min(((field("nofile") - 128.0) / 2.0).floor());
    let m = c.metrics("mesh", "client");
    let limit = metric(&m, "meshlite_max_connections", &[]);
    assert_eq!(limit, expected, "{line}\n{m}");
    println!(
        "admission: 5 refusals with their reasons; enforced strict applied; max_connections {limit}"
    );
}

/// certd names who may answer: a Service with two meshed backends under
/// different ServiceAccounts gets mTLS to both, a Service with a meshed and an
/// unmeshed backend still works in permissive mode, and every answer the
/// client's proxy used came from certd (no detection fallback).
fn secure_naming(c: &Cluster) {
    let pod = |name: &str, sa: &str, app: &str, extra: &str| {
        format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: mesh
  labels: {{app: {app}}}
  annotations: {{{extra}}}
spec:
  serviceAccountName: {sa}
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
      env: [{{name: POD_NAME, value: {name}}}]
      readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 2}}
"#
        )
    };
    let service = |name: &str| {
        format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: mesh}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 8080, targetPort: 8080}}]
"#
        )
    };
    let manifest = [
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: alt, namespace: mesh}\n"
            .to_string(),
        pod("duo-a", "server", "duo", ""),
        pod("duo-b", "alt", "duo", ""),
        service("duo"),
        pod("mixed-meshed", "server", "mixed", ""),
        pod(
            "mixed-plain",
            "default",
            "mixed",
            "meshlite.io/inject: disabled",
        ),
        service("mixed"),
    ]
    .concat();
    c.apply(&manifest);
    c.wait_ready("mesh", &["duo-a", "duo-b", "mixed-meshed", "mixed-plain"]);
    let mut answered_by = std::collections::BTreeSet::new();
    for service in ["duo", "mixed"] {
        let target = format!("{service}.mesh.svc.cluster.local:8080");
        // The Service is as new as its pods: kube-proxy and certd's naming
        // index learn it shortly after the pods are Ready, and until then a
        // connection through the client's proxy is refused (one cold CI run
        // saw `Connection reset by peer` on the first call). Wait for one
        // answer; the 16 counted calls below must then all succeed.
        eventually(&format!("{service} answers a first call"), 30, || {
            c.call("mesh", "client", &target, "naming-warmup")
        });
        // Both backends must have answered: with kube-proxy's random choice,
        // 16 calls miss one of two with probability 2^-15.
        for i in 0..16 {
            let answer = c
                .call("mesh", "client", &target, &format!("naming-{i}"))
                .unwrap_or_else(|e| panic!("client -> {service}: {e}"));
            answered_by.insert(
                answer
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    for want in ["duo-a", "duo-b", "mixed-meshed", "mixed-plain"] {
        assert!(
            answered_by.contains(want),
            "{want} never answered: {answered_by:?}"
        );
    }
    let m = c.metrics("mesh", "client");
    for sa in ["server", "alt"] {
        assert!(
            metric(
                &m,
                "meshlite_mtls_connections_total",
                &[
                    "direction=\"outbound\"",
                    &format!("peer_identity=\"{}\"", id("mesh", sa))
                ]
            ) >= 1.0,
            "mTLS to the {sa} backend:\n{m}"
        );
    }
    let asked = metric(&m, "meshlite_naming_lookups_total", &["result=\"asked\""]);
    assert!(asked >= 3.0, "the client's proxy asked certd:\n{m}");
    for reason in ["certd_error", "not_configured"] {
        let fallback = metric(
            &m,
            "meshlite_naming_fallback_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert_eq!(fallback, 0.0, "fallback to detection ({reason}):\n{m}");
    }
    println!(
        "secure naming: duo (two ServiceAccounts) and mixed Services answered by {answered_by:?}; {asked} answers asked of certd, no fallback"
    );
}

/// A Job's pod completes with no extra step: the native sidecar stops with it.
fn job_completes(c: &Cluster) {
    c.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: oneshot, namespace: mesh}
spec:
  backoffLimit: 0
  template:
    spec:
      serviceAccountName: client
      restartPolicy: Never
      containers:
        - name: app
          image: meshlite.io/testapp:dev
          imagePullPolicy: Never
          args: [call, "server:8080", job]
"#,
    );
    c.kubectl(&[
        "-n",
        "mesh",
        "wait",
        "--for=condition=Complete",
        "job/oneshot",
        "--timeout=240s",
    ]);
    let pods = c.json(&["-n", "mesh", "get", "pods", "-l", "job-name=oneshot"]);
    let pod = &pods["items"][0];
    eventually("the Job's pod terminates", 60, || {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let phase = c.kubectl(&[
            "-n",
            "mesh",
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.phase}",
        ]);
        (phase == "Succeeded").then_some(()).ok_or(phase)
    });
    println!("job: completed, its pod Succeeded");
}

/// New pods get their certificates while certd rolls.
fn certd_restart_loses_no_issuance(c: &Cluster) {
    c.kubectl(&[
        "-n",
        "meshlite-system",
        "rollout",
        "restart",
        "deploy/meshlite-certd",
    ]);
    c.kubectl(&["-n", "mesh", "scale", "deploy/server", "--replicas=4"]);
    c.rollout_status("meshlite-system", "deploy/meshlite-certd");
    c.rollout_status("mesh", "deploy/server");
    let servers = c.pods("mesh", "app=server");
    assert_eq!(servers.len(), 4);
    for s in &servers {
        let m = c.metrics("mesh", s);
        let ok = metric(
            &m,
            "meshlite_certificate_renewals_total",
            &["result=\"ok\""],
        );
        assert!(ok >= 1.0, "{s} got its certificate:\n{m}");
    }
    println!("certd rollout restart: 4 server pods issued and Ready");

    // The injector's preStop is the kubelet's sleep action: the image has no
    // `sleep` to exec, so an exec hook would fail at every termination.
    c.rollout("meshlite-system", "deploy/meshlite-injector");
    let failed = c.kubectl(&[
        "-n",
        "meshlite-system",
        "get",
        "events",
        "--field-selector",
        "reason=FailedPreStopHook",
        "-o",
        "name",
    ]);
    assert!(failed.trim().is_empty(), "preStop hooks failed: {failed}");
    let logs = c.kubectl(&["-n", "meshlite-system", "logs", "deploy/meshlite-injector"]);
    assert!(
        logs.contains("sidecar mode chosen") && logs.contains("native"),
        "legacyMode: auto chooses native sidecars on this server: {logs}"
    );
    println!(
        "injector rollout restart: no failed preStop hook; legacyMode auto chose native sidecars"
    );
}

/// At certd's shortest lifetime the proxies renew while the holder's
/// connection stays up.
fn rotation_keeps_the_connection(c: &Cluster, started: Instant) {
    let m = c.metrics("mesh", "holder");
    let not_after = metric(
        &m,
        "meshlite_identity_cert_not_after_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        not_after - now <= SHORTEST_LIFETIME as f64,
        "certificates are issued for {SHORTEST_LIFETIME} s: notAfter in {} s",
        not_after - now
    );
    let left = (HOLD_SECS + 120).saturating_sub(started.elapsed().as_secs());
    let renewed = eventually("the holder's proxy renews", left, || {
        let m = c.metrics("mesh", "holder");
        let ok = metric(
            &m,
            "meshlite_certificate_renewals_total",
            &["result=\"ok\""],
        );
        (ok >= 2.0).then_some(ok).ok_or(format!("renewals ok {ok}"))
    });
    let left = (HOLD_SECS + 180).saturating_sub(started.elapsed().as_secs());
    let phase = eventually("the holder finishes", left, || {
        let phase = c.kubectl(&[
            "-n",
            "mesh",
            "get",
            "pod",
            "holder",
            "-o",
            "jsonpath={.status.phase}",
        ]);
        match phase.as_str() {
            "Succeeded" | "Failed" => Ok(phase),
            _ => Err(phase),
        }
    });
    let logs = c.kubectl(&["-n", "mesh", "logs", "holder", "-c", "app"]);
    assert_eq!(
        phase, "Succeeded",
        "the long-lived connection broke: {logs}"
    );
    assert!(
        logs.contains(&format!("answered {HOLD_SECS} of {HOLD_SECS}")),
        "{logs}"
    );
    println!(
        "rotation: lifetime {SHORTEST_LIFETIME} s, holder's certificate issued {renewed} times; connection held {HOLD_SECS} s"
    );
}

/// The audit log shows no request of meshlite's ServiceAccounts refused by
/// RBAC, but certd's while the plugin's check had its RoleBinding deleted.
fn no_rbac_denials(outage: &plugin::RbacOutage) {
    let log = std::fs::read_to_string("/var/lib/meshlite-cluster/logs/audit.log").unwrap();
    let mut requests = 0;
    let mut denied = Vec::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let user = event["user"]["username"].as_str().unwrap_or_default();
        if !user.starts_with("system:serviceaccount:meshlite-system:") {
            continue;
        }
        requests += 1;
        let at = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(0.0, |t| t.unix_timestamp_nanos() as f64 / 1e9);
        let expected = user == "system:serviceaccount:meshlite-system:meshlite-certd"
            && (outage.from - 1.0..=outage.to + 10.0).contains(&at);
        if event["responseStatus"]["code"] == 403 && !expected {
            denied.push(format!(
                "{user} {} {}",
                event["verb"].as_str().unwrap_or_default(),
                event["requestURI"].as_str().unwrap_or_default()
            ));
        }
    }
    assert!(requests > 0, "the audit log has meshlite's requests");
    assert!(denied.is_empty(), "RBAC denied meshlite: {denied:#?}");
    println!("audit: {requests} requests by meshlite's ServiceAccounts, 0 denied");
}

/// `kubectl delete -k deploy/` and the README's uninstall steps leave nothing.
fn uninstall(c: &Cluster, applied: &[Value]) {
    let deploy = c.repo.join("deploy");
    uninstall_steps(c, &["mesh", "plain"], || {
        c.kubectl(&["delete", "-k", deploy.to_str().unwrap(), "--timeout=240s"]);
    });
    eventually("nothing of meshlite is left", 120, || meshlite_left(c));
    println!(
        "uninstall: {} applied objects deleted, nothing left",
        applied.len()
    );
}

/// The README's uninstall, with `remove` (kubectl delete -k, or helm
/// uninstall) for the control plane: the meshed workloads' namespaces first,
/// then the control plane, then what certd created outside its namespace.
fn uninstall_steps(c: &Cluster, workload_namespaces: &[&str], remove: impl FnOnce()) {
    let mut args = vec!["delete", "namespace"];
    args.extend(workload_namespaces);
    args.push("--timeout=240s");
    c.kubectl(&args);
    remove();
    c.kubectl(&[
        "delete",
        "configmap",
        "-A",
        "-l",
        "app.kubernetes.io/managed-by=meshlite-certd",
    ]);
    c.kubectl(&["delete", "csr", "-l", "meshlite.io/namespace"]);
}

/// Every object whose name has "meshlite" in it, of the kinds an install or
/// certd creates (a Helm release's Secret included), or `Ok` if none is left.
fn meshlite_left(c: &Cluster) -> Result<(), String> {
    let mut left = Vec::new();
    for kind in [
        "namespaces",
        "clusterroles",
        "clusterrolebindings",
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "certificatesigningrequests",
        "configmaps",
        "secrets",
    ] {
        let names = c.kubectl(&["get", kind, "-A", "-o", "name"]);
        left.extend(
            names
                .lines()
                .filter(|n| n.contains("meshlite"))
                .map(String::from),
        );
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("{left:?}"))
    }
}

// --- the capture --------------------------------------------------------------

/// tcpdump in the host's network namespace on every interface: the pods'
/// veths carry all traffic between pods (and to ClusterIPs, DNATed here).
struct Capture {
    child: std::process::Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
    stderr: std::thread::JoinHandle<String>,
}

#[derive(Debug)]
struct Summary {
    packets: usize,
    tls_records: usize,
    marker_copies: usize,
}

impl Capture {
    fn start() -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.pcap");
        let mut tcpdump = Command::new("tcpdump");
        tcpdump
            .args([
                "-i",
                "any",
                "-U",
                "-n",
                "-Z",
                "root",
                "--immediate-mode",
                "-w",
            ])
            .arg(&file)
            .args(["tcp", "port", "8080"]);
        let (child, stderr) = meshlite_tests::start_tcpdump(tcpdump);
        Capture {
            child,
            file,
            _dir: dir,
            stderr,
        }
    }

    fn stop(mut self) -> Summary {
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let said = self.stderr.join().unwrap();
        let bytes = std::fs::read(&self.file).unwrap();
        let payloads = pcap_tcp_payloads(&bytes).unwrap_or_else(|e| panic!("{e}; tcpdump: {said}"));
        Summary {
            packets: payloads.len(),
            tls_records: payloads
                .iter()
                .filter(|p| p.starts_with(&[0x17, 0x03, 0x03]))
                .count(),
            marker_copies: bytes
                .windows(MARKER.len())
                .filter(|w| *w == MARKER.as_bytes())
                .count(),
        }
    }
}

/// The TCP payloads of a pcap file of IPv4 packets (link types Linux cooked
/// v1 and v2, which `tcpdump -i any` writes).
fn pcap_tcp_payloads(file: &[u8]) -> Result<Vec<&[u8]>, String> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    if file.len() < 24 || u32_at(file, 0) != 0xa1b2_c3d4 {
        return Err(format!(
            "not a little-endian pcap file ({} bytes)",
            file.len()
        ));
    }
    let link_header = match u32_at(file, 20) {
        113 => 16,
        276 => 20,
        other => return Err(format!("link type {other}")),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32_at(file, at + 8) as usize;
        let packet = &file[at + 16..(at + 16 + len).min(file.len())];
        at += 16 + len;
        let Some(ip) = packet.get(link_header..) else {
            continue;
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let tcp = &ip[usize::from(ip[0] & 0x0f) * 4..total];
        if tcp.len() < 20 {
            continue;
        }
        let payload = &tcp[usize::from(tcp[12] >> 4) * 4..];
        if !payload.is_empty() {
            out.push(payload);
        }
    }
    Ok(out)
}
