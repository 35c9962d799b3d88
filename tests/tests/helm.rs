//! The Helm chart `deploy/helm/meshlite`, checked without a cluster.
//!
//! The chart's templates restate `deploy/*.yaml` with values in place of some
//! fields, so this file is what keeps the two installs one install:
//! - with its default values, `helm template` renders the same set of objects
//!   as `kubectl kustomize deploy/`, field for field (a difference names the
//!   object and the field);
//! - each value of `values.yaml` changes exactly the fields it is documented
//!   to change and nothing else, every value is in that table and in the
//!   chart's README with its default, and the injector's config file the
//!   chart renders parses with the injector's own parser;
//! - invalid values are refused by `helm template`, with a message that names
//!   the value (certd's lifetime bounds are checked against certd's own).
//!
//! helm and kubectl are the ones `tests/cluster/build.sh` builds from their
//! Go modules and caches (the first test to need them runs it, as the
//! real-cluster tier does; on a warm cache it builds nothing); when they cannot
//! be built the tests fail and say so, they never skip. The real install is a scenario of the
//! real-cluster tier (tests/tests/cluster/helm.rs).
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meshlite_injector::InjectorConfig;
use meshlite_injector::config::LegacyMode;
use serde::Deserialize as _;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The tools and the two renders

struct Tools {
    kubectl: PathBuf,
    helm: PathBuf,
    /// HELM_*_HOME and KUBECONFIG point here: rendering reads no user config.
    home: tempfile::TempDir,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/meshlite")
}

/// The binaries `tests/cluster/build.sh` builds (once, if its cache lacks
/// them) and prints the directory of.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = repo_root().join("tests/cluster/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("running bash {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "tests/cluster/build.sh could not build helm and kubectl (it needs go, see \
             tests/cluster/README.md):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let tools = Tools {
            kubectl: dir.join("kubectl"),
            helm: dir.join("helm"),
            home: tempfile::tempdir().unwrap(),
        };
        for bin in [&tools.kubectl, &tools.helm] {
            assert!(
                bin.is_file(),
                "{} is missing: run tests/cluster/build.sh",
                bin.display()
            );
        }
        tools
    })
}

fn parse_objects(what: &str, text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, de)| {
            Value::deserialize(de).unwrap_or_else(|e| panic!("{what}: YAML document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize() -> Vec<Value> {
    let t = tools();
    let out = Command::new(&t.kubectl)
        .arg("kustomize")
        .arg(repo_root().join("deploy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_objects(
        "kubectl kustomize deploy/",
        &String::from_utf8(out.stdout).unwrap(),
    )
}

/// helm with `args`: its standard output, or its error message.
fn helm(args: &[&str]) -> Result<String, String> {
    let t = tools();
    let home = t.home.path();
    let out = Command::new(&t.helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", home.join("kubeconfig"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The release namespace the chart's README installs into; the chart refuses
/// any other.
const RELEASE_NS: &str = meshlite_contract::SYSTEM_NAMESPACE;

/// `helm template` of the chart with `args` (`--set ...`), released in
/// meshlite-system as its README says: its objects, or helm's error message.
fn helm_template(args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_dir();
    let mut all = vec!["template", "meshlite", chart.to_str().unwrap()];
    all.extend(["--namespace", RELEASE_NS]);
    all.extend(args);
    let text = helm(&all)?;
    Ok(parse_objects(&format!("helm template {args:?}"), &text))
}

fn render(args: &[&str]) -> Vec<Value> {
    helm_template(args).unwrap_or_else(|e| panic!("helm template {args:?} refused: {e}"))
}

/// What identifies an object in a cluster.
type Key = (String, String, String, String);

fn key(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&o["apiVersion"]),
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn show(k: &Key) -> String {
    let (api, kind, ns, name) = k;
    if ns.is_empty() {
        format!("{kind} {name} ({api})")
    } else {
        format!("{kind} {ns}/{name} ({api})")
    }
}

/// The objects by key. A ConfigMap's `*.yaml` entries are config files, so
/// they are compared as what they parse to: their comments and layout are not
/// what the injector reads.
fn by_key(what: &str, objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for mut o in objects {
        if o["kind"] == "ConfigMap"
            && let Some(data) = o.get_mut("data").and_then(Value::as_object_mut)
        {
            for (k, v) in data.iter_mut().filter(|(k, _)| k.ends_with(".yaml")) {
                let text = v.as_str().unwrap_or_default().to_string();
                *v = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what}: ConfigMap data {k} is not YAML: {e}"));
            }
        }
        let k = key(&o);
        assert!(
            map.insert(k.clone(), o).is_none(),
            "{what}: {} twice",
            show(&k)
        );
    }
    map
}

// ---------------------------------------------------------------------------
// Differences

/// One field that differs between two renders: where, and its value in each
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
struct Change {
    object: Key,
    path: String,
    before: Option<Value>,
    after: Option<Value>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: &Option<Value>| v.as_ref().map_or("(absent)".to_string(), Value::to_string);
        write!(
            f,
            "{} {}: {} -> {}",
            show(&self.object),
            if self.path.is_empty() {
                "(the object)"
            } else {
                self.path.as_str()
            },
            v(&self.before),
            v(&self.after)
        )
    }
}

/// `.key`, or `["key"]` where the key has dots or slashes (label names).
fn field(path: &str, k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{path}.{k}")
    } else {
        format!("{path}[{k:?}]")
    }
}

/// The leaf fields in which `after` differs from `before`. Lists of equal
/// length are compared element by element, others as a whole.
fn compare(object: &Key, path: &str, before: &Value, after: &Value, out: &mut Vec<Change>) {
    let change = |b: Option<&Value>, a: Option<&Value>| Change {
        object: object.clone(),
        path: path.to_string(),
        before: b.cloned(),
        after: a.cloned(),
    };
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                let p = field(path, k);
                match (b.get(k), a.get(k)) {
                    (Some(vb), Some(va)) => compare(object, &p, vb, va, out),
                    (vb, va) => out.push(Change {
                        path: p,
                        ..change(vb, va)
                    }),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (vb, va)) in b.iter().zip(a).enumerate() {
                compare(object, &format!("{path}[{i}]"), vb, va, out);
            }
        }
        _ if before == after => {}
        _ => out.push(change(Some(before), Some(after))),
    }
}

/// Every difference between two sets of objects; a missing object is one
/// change at the empty path.
fn changes(before: &BTreeMap<Key, Value>, after: &BTreeMap<Key, Value>) -> Vec<Change> {
    let keys: BTreeSet<&Key> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        match (before.get(k), after.get(k)) {
            (Some(b), Some(a)) => compare(k, "", b, a, &mut out),
            (b, a) => out.push(Change {
                object: k.clone(),
                path: String::new(),
                before: b.map(|_| json!("present")),
                after: a.map(|_| json!("present")),
            }),
        }
    }
    out
}

fn list(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| format!("  {c}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The default render is the kustomize render

#[test]
fn default_values_render_exactly_the_kustomize_objects() {
    let kustomized = by_key("kubectl kustomize deploy/", kustomize());
    let helm = by_key("helm template", render(&[]));
    let diff = changes(&kustomized, &helm);
    assert!(
        diff.is_empty(),
        "helm template (default values) differs from kubectl kustomize deploy/ \
         (kustomize -> helm); fix deploy/helm/meshlite/templates/ or deploy/*.yaml:\n{}",
        list(&diff)
    );
    assert!(
        kustomized.len() >= 15,
        "only {} objects rendered",
        kustomized.len()
    );
}

#[test]
fn the_chart_passes_helm_lint_strict() {
    let chart = chart_dir();
    if let Err(e) = helm(&[
        "lint",
        "--strict",
        "--namespace",
        RELEASE_NS,
        chart.to_str().unwrap(),
    ]) {
        panic!("helm lint --strict deploy/helm/meshlite:\n{e}");
    }
}

#[test]
fn a_release_outside_meshlite_system_is_refused() {
    // The objects always go to meshlite-system; a release stored elsewhere
    // would be apart from what it installs.
    let chart = chart_dir();
    for ns in ["default", "mesh"] {
        match helm(&[
            "template",
            "meshlite",
            chart.to_str().unwrap(),
            "--namespace",
            ns,
        ]) {
            Ok(_) => panic!("helm template --namespace {ns} rendered"),
            Err(e) => assert!(
                e.contains(&format!("--namespace {RELEASE_NS}")),
                "refused without saying which namespace to use: {e}"
            ),
        }
    }
}

#[test]
fn helm_template_itself_adds_no_labels_or_annotations() {
    // Equality above already implies it; this names the usual culprits.
    for o in render(&[]) {
        let meta = &o["metadata"];
        for k in meta["labels"]
            .as_object()
            .into_iter()
            .chain(meta["annotations"].as_object())
            .flat_map(|m| m.keys())
        {
            assert!(
                !k.starts_with("helm.sh/") && !k.starts_with("meta.helm.sh/"),
                "{}: {k}",
                show(&key(&o))
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Each value changes its fields, and only those

fn obj(kind: &str, name: &str) -> Key {
    let (api, namespaced) = match kind {
        "Deployment" => ("apps/v1", true),
        "ConfigMap" => ("v1", true),
        "PodDisruptionBudget" => ("policy/v1", true),
        "Namespace" => ("v1", false),
        other => panic!("no key for {other}"),
    };
    let ns = if namespaced { "meshlite-system" } else { "" };
    (api.into(), kind.into(), ns.into(), name.into())
}

const CERTD: &str = "meshlite-certd";
const INJECTOR: &str = "meshlite-injector";
const CONFIG: &str = "meshlite-config";
const CONTAINER: &str = ".spec.template.spec.containers[0]";

/// A field of the injector's config file inside the ConfigMap.
fn injector_cfg(path: &str) -> (Key, String) {
    (
        obj("ConfigMap", CONFIG),
        format!(r#".data["injector.yaml"]{path}"#),
    )
}

fn deploy_field(name: &str, path: &str) -> (Key, String) {
    (obj("Deployment", name), format!("{CONTAINER}{path}"))
}

/// One documented value: the `helm template` arguments that set it, and the
/// fields that must change (to the given value; `None`: removed), nothing else.
struct Case {
    value: &'static str,
    args: Vec<&'static str>,
    want: Vec<((Key, String), Option<Value>)>,
}

fn cases() -> Vec<Case> {
    let image = |img: &str| {
        vec![
            (deploy_field(CERTD, ".image"), Some(json!(img))),
            (deploy_field(INJECTOR, ".image"), Some(json!(img))),
            (injector_cfg(".image"), Some(json!(img))),
        ]
    };
    let args = |extra: &str| {
        let mut a = vec!["cluster", "--service-name=meshlite-certd"];
        a.push(if extra == "keep" {
            "--keep-csrs"
        } else {
            "--no-builtin-signer"
        });
        (deploy_field(CERTD, ".args"), Some(json!(a)))
    };
    let gone = |kind: &str, name: &str| ((obj(kind, name), String::new()), None);
    // 3 replicas change the count; 1 also drops the disruption budget.
    let replicas = [
        (
            "certd.replicas",
            CERTD,
            ["certd.replicas=3", "certd.replicas=1"],
        ),
        (
            "injector.replicas",
            INJECTOR,
            ["injector.replicas=3", "injector.replicas=1"],
        ),
    ]
    .into_iter()
    .flat_map(|(value, name, [three, one])| {
        let count = |n: u32| {
            (
                (obj("Deployment", name), ".spec.replicas".to_string()),
                Some(json!(n)),
            )
        };
        [
            Case {
                value,
                args: vec!["--set", three],
                want: vec![count(3)],
            },
            Case {
                value,
                args: vec!["--set", one],
                want: vec![count(1), gone("PodDisruptionBudget", name)],
            },
        ]
    });
    replicas
        .chain([
            Case {
                value: "image.repository",
                args: vec!["--set", "image.repository=registry.example.com/meshlite"],
                want: image("registry.example.com/meshlite:dev"),
            },
            Case {
                value: "image.tag",
                args: vec!["--set", "image.tag=0.2.0"],
                want: image("meshlite:0.2.0"),
            },
            Case {
                value: "image.pullPolicy",
                args: vec!["--set", "image.pullPolicy=Always"],
                want: vec![
                    (
                        deploy_field(CERTD, ".imagePullPolicy"),
                        Some(json!("Always")),
                    ),
                    (
                        deploy_field(INJECTOR, ".imagePullPolicy"),
                        Some(json!("Always")),
                    ),
                    (injector_cfg(".imagePullPolicy"), Some(json!("Always"))),
                ],
            },
            Case {
                value: "trustDomain",
                args: vec!["--set", "trustDomain=prod.example.com"],
                want: vec![
                    (
                        (obj("ConfigMap", CONFIG), ".data.CERTD_TRUST_DOMAIN".into()),
                        Some(json!("prod.example.com")),
                    ),
                    (
                        injector_cfg(".trustDomain"),
                        Some(json!("prod.example.com")),
                    ),
                ],
            },
            Case {
                value: "certd.leafLifetimeSeconds",
                args: vec!["--set", "certd.leafLifetimeSeconds=600"],
                want: vec![(
                    (
                        obj("ConfigMap", CONFIG),
                        ".data.CERTD_LIFETIME_SECONDS".into(),
                    ),
                    Some(json!("600")),
                )],
            },
            Case {
                value: "certd.keepCsrs",
                args: vec!["--set", "certd.keepCsrs=true"],
                want: vec![args("keep")],
            },
            Case {
                value: "certd.builtinSigner",
                args: vec!["--set", "certd.builtinSigner=false"],
                want: vec![args("external")],
            },
            Case {
                value: "certd.resources",
                args: vec![
                    "--set",
                    "certd.resources.limits.memory=1Gi",
                    "--set",
                    "certd.resources.limits.cpu=2",
                ],
                want: vec![
                    (
                        deploy_field(CERTD, ".resources.limits.memory"),
                        Some(json!("1Gi")),
                    ),
                    (deploy_field(CERTD, ".resources.limits.cpu"), Some(json!(2))),
                ],
            },
            Case {
                value: "injector.resources",
                args: vec!["--set", "injector.resources.requests.memory=64Mi"],
                want: vec![(
                    deploy_field(INJECTOR, ".resources.requests.memory"),
                    Some(json!("64Mi")),
                )],
            },
            Case {
                value: "proxy.sidecarMode",
                args: vec!["--set", "proxy.sidecarMode=legacy"],
                want: vec![(injector_cfg(".legacyMode"), Some(json!(true)))],
            },
            Case {
                value: "proxy.sidecarMode",
                args: vec!["--set", "proxy.sidecarMode=native"],
                want: vec![(injector_cfg(".legacyMode"), Some(json!(false)))],
            },
            Case {
                value: "proxy.defaultMode",
                args: vec!["--set", "proxy.defaultMode=strict"],
                want: vec![(injector_cfg(".defaultMode"), Some(json!("strict")))],
            },
            Case {
                value: "proxy.tokenExpirationSeconds",
                args: vec!["--set", "proxy.tokenExpirationSeconds=7200"],
                want: vec![(injector_cfg(".tokenExpirationSeconds"), Some(json!(7200)))],
            },
            Case {
                value: "proxy.resources",
                // A number becomes a string: the injector's parser takes strings.
                args: vec![
                    "--set",
                    "proxy.resources.limits.memory=256Mi",
                    "--set",
                    "proxy.resources.limits.cpu=1",
                ],
                want: vec![
                    (
                        injector_cfg(".proxyResources.limits.memory"),
                        Some(json!("256Mi")),
                    ),
                    (injector_cfg(".proxyResources.limits.cpu"), Some(json!("1"))),
                ],
            },
            Case {
                value: "proxy.initResources",
                args: vec!["--set", "proxy.initResources.requests.cpu=20m"],
                want: vec![(
                    injector_cfg(".initResources.requests.cpu"),
                    Some(json!("20m")),
                )],
            },
            Case {
                value: "namespace.create",
                args: vec!["--set", "namespace.create=false"],
                want: vec![gone("Namespace", "meshlite-system")],
            },
        ])
        .collect()
}

/// The documented values: the leaves of values.yaml, a `resources` map
/// counting as one value.
fn documented_values() -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v.as_object() {
            Some(m)
                if !matches!(
                    prefix.rsplit('.').next(),
                    Some("resources" | "initResources")
                ) =>
            {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let path = chart_dir().join("values.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let values: Value = serde_yaml::from_str(&text).unwrap();
    let mut out = BTreeMap::new();
    walk("", &values, &mut out);
    out
}

/// The injector's config file as the chart renders it, through the
/// injector's own parser.
fn injector_config(objects: &[Value]) -> InjectorConfig {
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == CONFIG)
        .expect("the chart renders ConfigMap meshlite-config");
    let text = cm["data"]["injector.yaml"].as_str().unwrap();
    InjectorConfig::from_text(text, "the chart's injector.yaml")
        .unwrap_or_else(|e| panic!("the injector refuses the chart's config: {e}\n{text}"))
}

#[test]
fn each_value_changes_exactly_its_documented_fields() {
    let defaults = by_key("helm template", render(&[]));
    let mut failures = Vec::new();
    for case in cases() {
        let objects = render(&case.args);
        injector_config(&objects);
        let got = changes(&defaults, &by_key("helm template", objects));
        let want = &case.want;
        let got_set: Vec<((Key, String), Option<Value>)> = got
            .iter()
            .map(|c| ((c.object.clone(), c.path.clone()), c.after.clone()))
            .map(|(k, after)| {
                // A removed object is `None`, not "present".
                if k.1.is_empty() {
                    (k, None)
                } else {
                    (k, after)
                }
            })
            .collect();
        let missing: Vec<_> = want.iter().filter(|w| !got_set.contains(w)).collect();
        let extra: Vec<&Change> = got
            .iter()
            .zip(&got_set)
            .filter(|(_, g)| !want.contains(g))
            .map(|(c, _)| c)
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            failures.push(format!(
                "{} ({}):\n  wanted but not changed: {missing:?}\n  changed but not wanted:\n{}",
                case.value,
                case.args.join(" "),
                list(&extra.into_iter().cloned().collect::<Vec<_>>())
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_value_is_tested_and_documented_with_its_default() {
    let values = documented_values();
    let tested: BTreeSet<&str> = cases().iter().map(|c| c.value).collect();
    let untested: Vec<&String> = values
        .keys()
        .filter(|v| !tested.contains(v.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "values.yaml has values no case in tests/tests/helm.rs sets: {untested:?}"
    );
    let unknown: Vec<&&str> = tested
        .iter()
        .filter(|v| !values.contains_key(**v))
        .collect();
    assert!(
        unknown.is_empty(),
        "cases for values that do not exist: {unknown:?}"
    );

    // The README's table: | `value` | `default` | what |
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    let rows: BTreeMap<String, String> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), default.to_string()))
        })
        .collect();
    for (name, default) in &values {
        let shown = match default {
            Value::String(s) => s.clone(),
            other => serde_json::to_string(other).unwrap(),
        };
        let row = rows
            .get(name)
            .unwrap_or_else(|| panic!("deploy/helm/meshlite/README.md does not document {name}"));
        let documented = if row.starts_with('{') {
            // A resources map, written as JSON.
            serde_json::from_str::<Value>(row)
                .map(|v| v == *default)
                .unwrap_or(false)
        } else {
            *row == shown
        };
        assert!(
            documented,
            "README.md gives {name} the default `{row}`, values.yaml `{shown}`"
        );
    }
    let stale: Vec<&String> = rows.keys().filter(|r| !values.contains_key(*r)).collect();
    assert!(
        stale.is_empty(),
        "README.md documents values that do not exist: {stale:?}"
    );
}

#[test]
fn sidecar_mode_reaches_the_injector_as_its_legacy_mode() {
    for (mode, want) in [
        ("auto", LegacyMode::Auto),
        ("native", LegacyMode::Off),
        ("legacy", LegacyMode::On),
    ] {
        let arg = format!("proxy.sidecarMode={mode}");
        let cfg = injector_config(&render(&["--set", &arg]));
        assert_eq!(cfg.legacy_mode, want, "{mode}");
    }
    // The defaults, through the injector's parser, are the injector's own.
    let cfg = injector_config(&render(&[]));
    let shipped = InjectorConfig::default();
    assert_eq!(cfg.trust_domain, shipped.trust_domain);
    assert_eq!(cfg.certd_url, shipped.certd_url);
    assert_eq!(cfg.proxy_resources, shipped.proxy_resources);
    assert_eq!(cfg.init_resources, shipped.init_resources);
}

// ---------------------------------------------------------------------------
// Invalid values

#[test]
fn invalid_values_are_refused_with_a_message_naming_the_value() {
    use meshlite_certd::approval::{MAX_LIFETIME, MIN_LIFETIME};
    let (min, max) = (MIN_LIFETIME.as_secs(), MAX_LIFETIME.as_secs());
    // certd's own bounds are accepted...
    for secs in [min, max] {
        render(&["--set", &format!("certd.leafLifetimeSeconds={secs}")]);
    }
    // ... and one second outside them refused, like everything below.
    let below = format!("certd.leafLifetimeSeconds={}", min - 1);
    let above = format!("certd.leafLifetimeSeconds={}", max + 1);
    let refused: Vec<(&str, &str)> = vec![
        (below.as_str(), "leafLifetimeSeconds"),
        (above.as_str(), "leafLifetimeSeconds"),
        ("certd.leafLifetimeSeconds=1h", "leafLifetimeSeconds"),
        ("proxy.sidecarMode=sidecar", "sidecarMode"),
        ("proxy.sidecarMode=true", "sidecarMode"),
        ("certd.replicas=0", "replicas"),
        ("injector.replicas=0", "replicas"),
        ("certd.replicas=two", "replicas"),
        ("trustDomain=Example.COM", "trustDomain"),
        ("trustDomain=", "trustDomain"),
        ("proxy.defaultMode=open", "defaultMode"),
        ("proxy.tokenExpirationSeconds=60", "tokenExpirationSeconds"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("image.tag=", "tag"),
        ("proxy.resources.limits.memory=lots", "memory"),
        ("certd.resources.limit.memory=1Gi", "limit"),
        // A misspelt value is refused, not ignored.
        ("certd.replica=3", "replica"),
        ("namespace.create=maybe", "create"),
    ];
    let mut accepted = Vec::new();
    for (set, needle) in refused {
        match helm_template(&["--set", set]) {
            Ok(_) => accepted.push(format!("{set}: rendered")),
            Err(e) if !e.contains(needle) => {
                accepted.push(format!("{set}: refused without naming {needle}: {e}"));
            }
            Err(_) => {}
        }
    }
    assert!(
        accepted.is_empty(),
        "invalid values not refused clearly:\n{}",
        accepted.join("\n")
    );
}
