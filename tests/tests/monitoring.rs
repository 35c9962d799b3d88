//! `deploy/monitoring/` checked against the code, without Prometheus or Grafana.
//!
//! The list of exported metrics is derived from the code: each component's
//! metrics registry is built and encoded (Prometheus text), and its `# TYPE`
//! lines give every family's name and type. Then:
//! - `alerts.yaml` parses as a rule file, every rule has what Alertmanager and
//!   the on-call need, and each alert the docs promise exists and watches the
//!   metric it is about;
//! - every panel of `dashboard.json` has a query;
//! - every metric named in a rule or a panel query is a series the code exports
//!   (names are read out of the PromQL by [`promql_refs`]);
//! - the README's metric table lists exactly the exported families, with their
//!   type, component and label names, so the docs cannot drift from the code;
//! - with promtool, the rules' unit tests (`alerts_test.yaml`) pass and every
//!   dashboard query parses.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

#[path = "monitoring/exported.rs"]
mod exported;
#[path = "monitoring/promql.rs"]
mod promql;

use exported::{exported, exported_series};
use promql::promql_refs;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn read(name: &str) -> String {
    let path = monitoring_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Asserts that every metric the queries name is exported, listing every
/// unknown name with where it is used.
fn assert_only_exported(what: &str, queries: &[(String, String)]) {
    let exported = exported_series();
    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in queries {
        let refs = promql_refs(expr).unwrap_or_else(|e| panic!("{what}, {place}: {e}\n{expr}"));
        assert!(
            !refs.metrics.is_empty(),
            "{what}, {place}: the query names no metric:\n{expr}"
        );
        for name in refs.metrics {
            if !exported.contains(&name) {
                unknown.entry(name).or_default().push(place.clone());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} uses metrics the code does not export:\n{}\nexported series:\n  {}",
        unknown
            .iter()
            .map(|(name, places)| format!("  {name} (in {})", places.join(", ")))
            .collect::<Vec<_>>()
            .join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

// alerts.yaml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<(String, Rule)> {
    let file: RuleFile = serde_yaml::from_str(&read("alerts.yaml"))
        .unwrap_or_else(|e| panic!("alerts.yaml is not a Prometheus rule file: {e}"));
    assert!(!file.groups.is_empty(), "alerts.yaml has no groups");
    file.groups
        .into_iter()
        .flat_map(|g| {
            assert!(!g.rules.is_empty(), "group {} has no rules", g.name);
            if let Some(i) = &g.interval {
                assert!(is_duration(i), "group {}: interval {i:?}", g.name);
            }
            let name = g.name;
            g.rules.into_iter().map(move |r| (name.clone(), r))
        })
        .collect()
}

/// A Prometheus duration: one or more `<number><unit>`, e.g. `10m`, `1h30m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// The alerts issue 12 asks for, each with the metric it must watch.
const REQUIRED_ALERTS: &[(&str, &str)] = &[
    (
        "MeshliteCAExpiringSoon",
        "meshlite_certd_ca_not_after_seconds",
    ),
    (
        "MeshliteCAExpiryImminent",
        "meshlite_certd_ca_not_after_seconds",
    ),
    (
        "MeshliteProxyCertificateNotRenewed",
        "meshlite_identity_cert_not_after_timestamp_seconds",
    ),
    (
        "MeshliteCertdIssuanceFailing",
        "meshlite_certd_issuance_duration_seconds_count",
    ),
    (
        "MeshliteTLSHandshakeFailures",
        "meshlite_tls_handshake_failures_total",
    ),
    ("MeshlitePolicyDenials", "meshlite_policy_denials_total"),
];

#[test]
fn every_alert_rule_has_an_expression_a_severity_and_a_summary() {
    let rules = rules();
    let mut names = BTreeSet::new();
    for (group, r) in &rules {
        let at = format!("{group}/{}", r.alert);
        assert!(
            r.alert.starts_with("Meshlite") && r.alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{at}: alert names are MeshliteCamelCase"
        );
        assert!(
            names.insert(r.alert.clone()),
            "{at}: a second alert of that name"
        );
        assert!(!r.expr.trim().is_empty(), "{at}: empty expr");
        if let Some(f) = &r.for_ {
            assert!(is_duration(f), "{at}: `for: {f}` is not a duration");
        }
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("info" | "warning" | "critical")),
            "{at}: labels.severity must be info, warning or critical, not {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                r.annotations.get(key).is_some_and(|s| !s.trim().is_empty()),
                "{at}: annotations.{key} is missing"
            );
        }
    }
}

#[test]
fn the_alerts_operators_need_exist_and_watch_their_metric() {
    let rules = rules();
    for (alert, metric) in REQUIRED_ALERTS {
        let Some((_, rule)) = rules.iter().find(|(_, r)| r.alert == *alert) else {
            panic!(
                "alerts.yaml has no {alert}; it has {:?}",
                rules.iter().map(|(_, r)| &r.alert).collect::<Vec<_>>()
            );
        };
        let refs = promql_refs(&rule.expr).unwrap();
        assert!(
            refs.metrics.contains(*metric),
            "{alert} should watch {metric}, but its expr names {:?}",
            refs.metrics
        );
    }
}

#[test]
fn the_alert_rules_use_only_metrics_the_code_exports() {
    let queries: Vec<(String, String)> = rules()
        .into_iter()
        .map(|(_, r)| (r.alert, r.expr))
        .collect();
    assert_only_exported("alerts.yaml", &queries);
}

/// The series the unit tests of `alerts_test.yaml` feed the rules.
fn unit_test_series() -> Vec<(String, String)> {
    let doc: Value = serde_yaml::from_str(&read("alerts_test.yaml"))
        .unwrap_or_else(|e| panic!("alerts_test.yaml is not YAML: {e}"));
    assert_eq!(
        doc["rule_files"],
        serde_json::json!(["alerts.yaml"]),
        "alerts_test.yaml tests alerts.yaml"
    );
    let tests = doc["tests"].as_array().expect("alerts_test.yaml has tests");
    let mut series = Vec::new();
    for (i, t) in tests.iter().enumerate() {
        for s in t["input_series"].as_array().into_iter().flatten() {
            let selector = s["series"].as_str().expect("input_series[].series");
            series.push((format!("test {i}"), selector.to_string()));
        }
    }
    series
}

#[test]
fn the_alert_unit_tests_feed_only_series_the_code_exports() {
    assert_only_exported("alerts_test.yaml", &unit_test_series());
}

/// Runs `promtool <args>` in `dir` and panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs `promtool` on PATH (.ci/run installs Debian's \
                 prometheus package): {e}"
            )
        });
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_unit_tests_pass_under_promtool() {
    promtool(&monitoring_dir(), &["test", "rules", "alerts_test.yaml"]);
}

// dashboard.json

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboard.json"))
        .unwrap_or_else(|e| panic!("dashboard.json is not JSON: {e}"))
}

/// Each panel query as (`panel title / refId`, expr), asserting every
/// non-row panel has at least one query and every query an expr.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for t in targets {
            let ref_id = t["refId"].as_str().unwrap_or("?");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?} target {ref_id} has no expr"
            );
            queries.push((format!("{title} / {ref_id}"), expr.to_string()));
        }
    }
    queries
}

#[test]
fn the_dashboard_is_a_grafana_model_whose_every_panel_has_a_query() {
    let d = dashboard();
    for key in ["uid", "title"] {
        assert!(d[key].as_str().is_some_and(|s| !s.is_empty()), "no {key}");
    }
    assert!(d["schemaVersion"].is_u64(), "no schemaVersion");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        assert!(p["id"].is_u64(), "panel {title:?} has no numeric id");
        assert!(ids.insert(p["id"].as_u64()), "panel id {} twice", p["id"]);
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "panel {title:?}: gridPos.{k}");
        }
    }
    assert!(dashboard_queries(&d).len() >= 10);
}

#[test]
fn the_dashboard_shows_what_operators_look_at() {
    let d = dashboard();
    let used: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|(_, e)| promql_refs(e).unwrap().metrics)
        .collect();
    for metric in [
        "meshlite_tcp_connections_opened_total",
        "meshlite_tcp_bytes_total",
        "meshlite_tls_handshake_failures_total",
        "meshlite_refused_connections_total",
        "meshlite_policy_denials_total",
        "meshlite_identity_cert_not_after_timestamp_seconds",
        "meshlite_certd_ca_not_after_seconds",
        "meshlite_certd_issuance_duration_seconds_count",
        "meshlite_certd_issuance_duration_seconds_bucket",
        "meshlite_certd_tokenreview_failures_total",
        "meshlite_injector_reviews_total",
    ] {
        assert!(used.contains(metric), "no dashboard panel queries {metric}");
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    // promtool parses PromQL in rule files only: each query becomes a
    // recording rule, with Grafana's interval variable given a value.
    let rules: Vec<Value> = dashboard_queries(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            serde_json::json!({
                "record": format!("dashboard:query{i}"),
                "expr": expr.replace("$__rate_interval", "5m"),
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML.
    std::fs::write(dir.path().join("queries.yaml"), file.to_string()).unwrap();
    promtool(dir.path(), &["check", "rules", "queries.yaml"]);
}

#[test]
fn the_dashboard_uses_only_metrics_the_code_exports() {
    assert_only_exported("dashboard.json", &dashboard_queries(&dashboard()));
}

// README.md

/// One row of the README's metric table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Documented {
    component: String,
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

/// The label names in a labels cell: `; `-separated, each part starting with
/// the backticked label name (`` `direction`: `inbound`, `outbound`; `tls` ``).
fn cell_labels(cell: &str) -> BTreeSet<String> {
    cell.split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let name = part
                .strip_prefix('`')
                .and_then(|p| p.split('`').next())
                .unwrap_or_else(|| panic!("labels cell part does not start with `name`: {part:?}"));
            name.to_string()
        })
        .collect()
}

/// The rows of the README's metric table.
fn readme_table() -> BTreeSet<Documented> {
    let text = read("README.md");
    let section = text
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README.md has a `## Metrics` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [component, name, kind, labels, _meaning] = cells.as_slice() else {
            panic!("README.md metric table: expected 5 columns in {line:?}");
        };
        if *component == "component" || component.starts_with("---") {
            continue;
        }
        let name = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .unwrap_or_else(|| panic!("README.md: the metric name is not in backticks: {line:?}"));
        let row = Documented {
            component: component.to_string(),
            name: name.to_string(),
            kind: kind.to_string(),
            labels: cell_labels(labels),
        };
        assert!(rows.insert(row), "README.md lists {name} twice");
    }
    rows
}

#[test]
fn the_readme_table_lists_exactly_the_exported_metrics_with_their_labels() {
    let documented = readme_table();
    let exported: BTreeSet<Documented> = exported()
        .iter()
        .map(|f| Documented {
            component: f.component.to_string(),
            name: f.documented(),
            kind: f.kind.clone(),
            labels: f.labels.clone(),
        })
        .collect();
    let missing: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "deploy/monitoring/README.md's table and the code disagree:\n  \
         exported, but not so in the table: {missing:#?}\n  \
         in the table, but not so exported: {stale:#?}"
    );
}

#[test]
fn kubectl_apply_k_deploy_leaves_monitoring_out() {
    // Prometheus' CRDs may be absent; the control plane must install anyway.
    let kustomization = std::fs::read_to_string(monitoring_dir().join("../kustomization.yaml"))
        .expect("deploy/kustomization.yaml");
    let doc: Value = serde_yaml::from_str(&kustomization).unwrap();
    for r in doc["resources"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(!r.contains("monitoring"), "kustomization lists {r}");
    }
}

#[test]
fn a_labels_cell_names_the_label_that_starts_each_part() {
    let names = cell_labels("`direction`: `inbound`, `outbound`; `tls` as above; ");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["direction", "tls"]);
    assert!(cell_labels("").is_empty());
}
