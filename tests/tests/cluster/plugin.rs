//! `kubectl meshlite` on the real cluster, found by kubectl on PATH as a user
//! installs it: `check` passes on the healthy install, and fails with the
//! right line, hint and exit code when each part is broken in turn; `check
//! --proxy` and `identity` read the proxies through the API server; `ca
//! rotate` runs all four steps while a client opens a new mTLS connection to
//! a server every second.

use super::{Cluster, eventually, id};
use base64::Engine as _;
use meshlite_contract::{
    CA_SECRET, SYSTEM_NAMESPACE, TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, WEBHOOK_CONFIGURATION,
};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

/// What `check` prints for each part of the install, in order.
const CHECKS: [&str; 7] = [
    "control-plane",
    "ca",
    "webhook",
    "trust-bundle",
    "rbac",
    "sidecar-mode",
    "pods",
];

/// One run of the plugin.
pub struct Run {
    pub code: i32,
    pub out: String,
}

impl Run {
    /// The status, message and hint of check `name`'s first line.
    fn line(&self, name: &str) -> Option<(String, String, String)> {
        let lines: Vec<&str> = self.out.lines().collect();
        lines.iter().enumerate().find_map(|(i, l)| {
            let (status, rest) = l.split_at_checked(6)?;
            let msg = rest.trim_start().strip_prefix(name)?.strip_prefix(": ")?;
            let hint = lines
                .get(i + 1)
                .and_then(|h| h.trim_start().strip_prefix("hint: "))
                .unwrap_or_default();
            Some((status.to_string(), msg.to_string(), hint.to_string()))
        })
    }

    /// Asserts check `name` failed, its message holds `msg` and its hint `hint`.
    fn failed(&self, name: &str, msg: &str, hint: &str) {
        assert_eq!(self.code, 1, "a failed check exits 1:\n{}", self.out);
        let (status, m, h) = self
            .line(name)
            .unwrap_or_else(|| panic!("no `{name}` line:\n{}", self.out));
        assert_eq!(status, "[FAIL]", "{name}:\n{}", self.out);
        assert!(
            m.contains(msg),
            "{name}: want `{msg}` in the message:\n{}",
            self.out
        );
        assert!(
            h.contains(hint),
            "{name}: want `{hint}` in the hint:\n{}",
            self.out
        );
    }

    fn ok(&self, name: &str) -> bool {
        self.line(name).is_some_and(|(s, _, _)| s == "[ok]  ")
    }
}

impl Cluster {
    /// `kubectl meshlite ARGS`: kubectl finds `kubectl-meshlite` on PATH.
    pub fn meshlite(&self, args: &[&str]) -> Run {
        let path = format!(
            "{}:{}",
            self.bins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = self
            .command()
            .arg("meshlite")
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    fn healthy(&self, what: &str) -> Run {
        eventually(what, 120, || {
            let run = self.meshlite(&["check"]);
            (run.code == 0 && CHECKS.iter().all(|c| run.ok(c)))
                .then_some(())
                .ok_or(run.out)
        });
        self.meshlite(&["check"])
    }

    fn patch_secret(&self, data: &serde_json::Value) {
        self.kubectl(&[
            "-n",
            SYSTEM_NAMESPACE,
            "patch",
            "secret",
            CA_SECRET,
            "--type=merge",
            "-p",
            &serde_json::json!({ "data": data }).to_string(),
        ]);
    }

    fn reapply(&self, file: &str) {
        let path = self.repo.join("deploy").join(file);
        self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=meshlite-install",
            "-f",
            path.to_str().unwrap(),
        ]);
    }
}

/// A self-signed CA certificate and key, PEM; expired when `expired`.
fn root(expired: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshlite tests: not the mesh CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// When the RBAC scenario took certd's permissions away, as Unix seconds:
/// certd's requests in this window are expected to be refused.
pub struct RbacOutage {
    pub from: f64,
    pub to: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `check` on the healthy install, then each part broken in turn and put back.
pub fn check_catches_each_break(c: &Cluster) -> RbacOutage {
    let run = c.healthy("kubectl meshlite check passes on the healthy install");
    println!("kubectl meshlite check (healthy):\n{}", run.out);

    // An expired CA in the Secret. certd refuses to load it and keeps signing
    // with the CA it has; check must fail on it, whatever certd does.
    let secret = c.json(&["-n", SYSTEM_NAMESPACE, "get", "secret", CA_SECRET]);
    let saved = serde_json::json!({
        "tls.crt": secret["data"]["tls.crt"],
        "tls.key": secret["data"]["tls.key"],
    });
    let (crt, key) = root(true);
    c.patch_secret(&serde_json::json!({ "tls.crt": b64(&crt), "tls.key": b64(&key) }));
    let run = c.meshlite(&["check"]);
    c.patch_secret(&saved);
    run.failed("ca", "expired", "kubectl meshlite ca rotate");
    println!("check: expired CA -> exit 1, ca: FAIL");

    // A trust bundle that is not the current one (an extra root): certd
    // rewrites it within its reconcile interval, so the check may race it.
    let current = c.kubectl(&[
        "-n",
        "mesh",
        "get",
        "configmap",
        TRUST_BUNDLE_CONFIGMAP,
        "-o",
        &format!(
            "jsonpath={{.data.{}}}",
            TRUST_BUNDLE_KEY.replace('.', "\\.")
        ),
    ]);
    assert!(current.contains("BEGIN CERTIFICATE"), "{current}");
    let stale = format!("{current}{}", root(false).0);
    let run = eventually("check sees the stale trust bundle", 60, || {
        c.kubectl(&[
            "-n",
            "mesh",
            "patch",
            "configmap",
            TRUST_BUNDLE_CONFIGMAP,
            "--type=merge",
            "-p",
            &serde_json::json!({ "data": { TRUST_BUNDLE_KEY: stale } }).to_string(),
        ]);
        let run = c.meshlite(&["check"]);
        (!run.ok("trust-bundle"))
            .then_some(run)
            .ok_or(String::new())
    });
    run.failed("trust-bundle", "mesh", "certd rewrites it");
    println!("check: stale bundle in mesh -> exit 1, trust-bundle: FAIL");
    c.healthy("certd restores the trust bundle");

    // An install that stopped halfway: no webhook. A pod created meanwhile in
    // a labelled namespace is not injected.
    c.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
    ]);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: uninjected, namespace: mesh}
spec:
  serviceAccountName: client
  containers:
    - {name: app, image: meshlite.io/testapp:dev, imagePullPolicy: Never}
"#,
    );
    c.wait_ready("mesh", &["uninjected"]);
    let run = c.meshlite(&["check"]);
    run.failed("webhook", "not found", "kubectl apply");
    run.failed("pods", "mesh/uninjected", "recreate");
    println!("check: no webhook -> exit 1, webhook: FAIL, pods: FAIL (mesh/uninjected)");

    // The webhook back (certd fills its caBundle): only the uninjected pod is left.
    c.reapply("webhook.yaml");
    let run = eventually("the webhook is back and current", 90, || {
        let run = c.meshlite(&["check"]);
        run.ok("webhook")
            .then_some(run)
            .ok_or_else(|| "webhook".into())
    });
    run.failed("pods", "mesh/uninjected", "recreate");
    assert!(
        CHECKS.iter().filter(|n| **n != "pods").all(|n| run.ok(n)),
        "{}",
        run.out
    );
    println!("check: an uninjected pod -> exit 1, pods: FAIL");
    c.kubectl(&[
        "-n",
        "mesh",
        "delete",
        "pod",
        "uninjected",
        "--grace-period=1",
        "--wait=true",
    ]);
    c.healthy("check passes with the webhook back");

    // certd's namespaced permissions gone: SubjectAccessReview says so.
    let from = unix_now();
    c.kubectl(&[
        "-n",
        SYSTEM_NAMESPACE,
        "delete",
        "rolebinding",
        "meshlite-certd",
    ]);
    let run = eventually("check sees the missing RoleBinding", 30, || {
        let run = c.meshlite(&["check"]);
        (!run.ok("rbac")).then_some(run).ok_or(String::new())
    });
    c.reapply("rbac-certd.yaml");
    run.failed("rbac", "certd may not", "deploy/rbac-certd.yaml");
    let run = c.healthy("check passes with the RBAC back");
    let to = unix_now();
    println!(
        "check: no RoleBinding -> exit 1, rbac: FAIL; all put back:\n{}",
        run.out
    );
    RbacOutage { from, to }
}

/// `check --proxy` and `identity` through the API server's pod proxy.
pub fn proxies_and_identity(c: &Cluster) {
    let run = c.meshlite(&["check", "--proxy", "-n", "mesh"]);
    assert_eq!(run.code, 0, "{}", run.out);
    for pod in ["client", "strict-server", "holder"] {
        let (status, msg, _) = run
            .line(&format!("proxy {pod}"))
            .unwrap_or_else(|| panic!("no line for {pod}:\n{}", run.out));
        assert_eq!(status, "[ok]  ", "{}", run.out);
        assert!(msg.contains("expires"), "{}", run.out);
    }
    println!("kubectl meshlite check --proxy -n mesh:\n{}", run.out);

    let run = c.meshlite(&["identity", "client", "-n", "mesh"]);
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(
        run.out
            .contains(&format!("spiffe id   {}", id("mesh", "client"))),
        "{}",
        run.out
    );
    // The serial the proxy reports is the certificate's, as its metrics have it.
    let serial = run
        .out
        .lines()
        .find_map(|l| l.strip_prefix("serial"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no serial:\n{}", run.out));
    assert!(
        serial.len() >= 16 && serial.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
        "serial {serial}"
    );
    assert!(run.out.contains("notAfter"), "{}", run.out);
    println!("kubectl meshlite identity client -n mesh:\n{}", run.out);

    let run = c.meshlite(&["identity", "opted-out", "-n", "mesh"]);
    assert_eq!(run.code, 1, "{}", run.out);
    assert!(run.out.contains("hint:"), "{}", run.out);
}

/// A rotation in progress, with its traffic.
pub struct Rotation {
    started: Instant,
    old_bundle: String,
    runs: JoinHandle<Vec<Run>>,
}

fn ca_bundle(c: &Cluster) -> String {
    let secret = c.json(&["-n", SYSTEM_NAMESPACE, "get", "secret", CA_SECRET]);
    let b = secret["data"]["ca.crt"]
        .as_str()
        .or(secret["data"]["tls.crt"].as_str())
        .unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

/// Starts `ca rotate` (re-run while it stops at a wait, as a user would) and
/// a client that opens a new mTLS connection every second meanwhile.
pub fn start_rotation(c: &Cluster) -> Rotation {
    let plan = c.meshlite(&["ca", "rotate", "--dry-run"]);
    assert_eq!(plan.code, 0, "{}", plan.out);
    for step in [
        "[next   ] 1.",
        "[pending] 2.",
        "[pending] 3.",
        "[pending] 4.",
    ] {
        assert!(plan.out.contains(step), "{step}:\n{}", plan.out);
    }
    assert!(
        c.json(&["-n", SYSTEM_NAMESPACE, "get", "secrets"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["metadata"]["name"] != format!("{CA_SECRET}-next")),
        "--dry-run changed nothing"
    );
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: repeater, namespace: mesh}
spec:
  serviceAccountName: client
  restartPolicy: Never
  containers:
    - name: app
      image: meshlite.io/testapp:dev
      imagePullPolicy: Never
      args: [repeat, "server.mesh.svc.cluster.local:8080", "3600"]
"#,
    );
    c.wait_ready("mesh", &["repeater"]);
    let old_bundle = ca_bundle(c);
    let kubectl = c.kubectl.clone();
    let kubeconfig = c.kubeconfig.clone();
    let bins = c.bins.clone();
    let runs = std::thread::spawn(move || {
        let mut runs = Vec::new();
        // One run is expected to do it all (its wait for the old leaves is
        // 600 s + 30 s + 60 s); one that stops early is resumed, as a user
        // would, within a bound on the whole rotation.
        let deadline = Instant::now() + std::time::Duration::from_secs(30 * 60);
        while Instant::now() < deadline {
            let out = Command::new(&kubectl)
                .env("KUBECONFIG", &kubeconfig)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bins.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .args(["meshlite", "ca", "rotate", "--timeout", "20m"])
                .output()
                .unwrap();
            let run = Run {
                code: out.status.code().unwrap_or(-1),
                out: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            };
            // 3: stopped at a wait; 2: the API server could not be used (a
            // transient error): both resume where the rotation is.
            let again = run.code == 3 || run.code == 2;
            runs.push(run);
            if !again {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
        runs
    });
    println!("rotation: started (kubectl meshlite ca rotate), with a new connection every second");
    Rotation {
        started: Instant::now(),
        old_bundle,
        runs,
    }
}

/// Waits until the rotation signs with the new root (step 3): from there
/// until step 4, 690 s later, it only waits, so the install may be broken
/// and repaired meanwhile (check_catches_each_break) without racing it.
pub fn await_new_signer(c: &Cluster) {
    let next = format!("{CA_SECRET}-next");
    let since = eventually("the rotation signs with the new root", 300, || {
        let s = c.json(&["-n", SYSTEM_NAMESPACE, "get", "secret", &next]);
        s["metadata"]["annotations"]["meshlite.io/rotation-signing-since"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| s["metadata"]["annotations"].to_string())
    });
    println!("rotation: signing with the new root since {since}");
}

/// Waits for the rotation to end and checks it, and that no connection failed.
pub fn finish_rotation(c: &Cluster, r: Rotation) {
    let runs = r.runs.join().expect("the rotation thread");
    let all: String = runs.iter().map(|r| r.out.as_str()).collect();
    let last = runs.last().unwrap();
    assert_eq!(last.code, 0, "the rotation did not complete:\n{all}");
    for step in [
        "step 1/4",
        "step 2/4",
        "step 3/4",
        "step 4/4",
        "rotation complete",
    ] {
        assert!(all.contains(step), "{step}:\n{all}");
    }
    let took = r.started.elapsed();
    let new_bundle = ca_bundle(c);
    let count = |b: &str| b.matches("BEGIN CERTIFICATE").count();
    assert_eq!(count(&new_bundle), 1, "{new_bundle}");
    assert!(
        !r.old_bundle.contains(new_bundle.trim()),
        "the root changed"
    );

    // The traffic: a new connection every second, through all four steps.
    let logs = c.kubectl(&["-n", "mesh", "logs", "repeater", "-c", "app"]);
    let failures: Vec<&str> = logs.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failures.is_empty(),
        "connections failed during the rotation:\n{logs}"
    );
    let ok = logs
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("repeat: ")?
                .split(" ok")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in the repeater's log:\n{logs}"));
    assert!(
        ok + 30 >= took.as_secs(),
        "{ok} connections in {} s:\n{logs}",
        took.as_secs()
    );
    c.kubectl(&["-n", "mesh", "delete", "pod", "repeater", "--wait=false"]);

    // Everything on the new root: the proxies renewed, the check passes.
    let run = c.meshlite(&["check", "--proxy", "-n", "mesh"]);
    assert_eq!(run.code, 0, "{}", run.out);
    c.healthy("check passes after the rotation");
    println!(
        "rotation: all 4 steps in {} s ({} runs of ca rotate); {ok} new connections, 0 failed",
        took.as_secs(),
        runs.len()
    );
}
