//! RBAC: the API calls each component makes, kept as a table, checked against
//! the ClusterRoles/Roles bound to its ServiceAccount (exactly, no wildcards)
//! and against the component's source.

use super::support::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use meshlite_certd::kube::webhook_cert::INJECTOR_SECRET;
use meshlite_contract as contract;

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Cluster,
    /// The control plane's namespace only (a Role).
    System,
}

/// One API call a component makes: verbs on a resource (or subresource),
/// optionally restricted to named objects.
#[derive(Debug)]
struct Call {
    scope: Scope,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    names: &'static [&'static str],
}

/// The injector reads the namespace of the pod under review, and checks that
/// its webhook configuration exists (its readiness).
const INJECTOR_CALLS: &[Call] = &[
    Call {
        scope: Scope::Cluster,
        group: "",
        resource: "namespaces",
        verbs: &["get"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get"],
        names: &["meshlite-injector"],
    },
];

/// certd (DESIGN.md, "Certificates"; certd/src/kube/).
const CERTD_CALLS: &[Call] = &[
    // TokenReview with audience meshlite-certd.
    Call {
        scope: Scope::Cluster,
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        names: &[],
    },
    // Create the CSR, read it back, watch it (by name) for an external signer,
    // delete it. DESIGN.md also lists `list`, but certd never lists CSRs.
    Call {
        scope: Scope::Cluster,
        group: "certificates.k8s.io",
        resource: "certificatesigningrequests",
        verbs: &["create", "get", "watch", "delete"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "certificates.k8s.io",
        resource: "certificatesigningrequests/approval",
        verbs: &["update"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "certificates.k8s.io",
        resource: "certificatesigningrequests/status",
        verbs: &["update"],
        names: &[],
    },
    // The API server checks these on approval and on signing.
    Call {
        scope: Scope::Cluster,
        group: "certificates.k8s.io",
        resource: "signers",
        verbs: &["approve", "sign"],
        names: &[contract::SIGNER_NAME],
    },
    // Find the labelled namespaces; keep their trust-bundle ConfigMap current.
    Call {
        scope: Scope::Cluster,
        group: "",
        resource: "namespaces",
        verbs: &["list"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "",
        resource: "configmaps",
        verbs: &["get", "create", "update"],
        names: &[],
    },
    // Keep the webhook's caBundle current.
    Call {
        scope: Scope::Cluster,
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        names: &[contract::WEBHOOK_CONFIGURATION],
    },
    // Load the CA Secret every pass, and check the injector's serving
    // certificate Secret (certd/src/kube/webhook_cert.rs) every pass.
    Call {
        scope: Scope::System,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        names: &[contract::CA_SECRET, INJECTOR_SECRET],
    },
    // Re-issue the injector's certificate; the CA Secret is never updated.
    Call {
        scope: Scope::System,
        group: "",
        resource: "secrets",
        verbs: &["update"],
        names: &[INJECTOR_SECRET],
    },
    // Secure naming (certd/src/naming/): reflectors list, then watch.
    Call {
        scope: Scope::Cluster,
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        names: &[],
    },
    Call {
        scope: Scope::Cluster,
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        names: &[],
    },
    // Create the CA Secret on first start and the injector's Secret when it
    // is absent (a create cannot be restricted by name).
    Call {
        scope: Scope::System,
        group: "",
        resource: "secrets",
        verbs: &["create"],
        names: &[],
    },
];

/// (scope, group, resource, verb, resourceName)
type Grant = (Scope, String, String, String, Option<String>);

fn expected_grants(calls: &[Call]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for call in calls {
        for verb in call.verbs {
            let names: Vec<Option<String>> = if call.names.is_empty() {
                vec![None]
            } else {
                call.names.iter().map(|n| Some(n.to_string())).collect()
            };
            for name in names {
                out.insert((
                    call.scope,
                    call.group.to_string(),
                    call.resource.to_string(),
                    verb.to_string(),
                    name,
                ));
            }
        }
    }
    out
}

fn expand_rules(what: &str, scope: Scope, rules: &[PolicyRule], out: &mut BTreeSet<Grant>) {
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{what}: no nonResourceURLs"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "{what}: a rule names groups, resources and verbs"
        );
        let names: Vec<Option<String>> = match &rule.resource_names {
            Some(n) if !n.is_empty() => n.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for text in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert!(!text.contains('*'), "{what}: wildcard {text:?}");
        }
        for name in names.iter().flatten() {
            assert!(
                !name.contains('*'),
                "{what}: wildcard resourceName {name:?}"
            );
        }
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for n in &names {
                        out.insert((scope, g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
}

/// Everything the bindings in `docs` grant to ServiceAccount `sa` of the
/// control plane's namespace.
fn granted_to(docs: &[Doc], sa: &str) -> BTreeSet<Grant> {
    let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref() == Some(contract::SYSTEM_NAMESPACE)
        })
    };
    let mut out = BTreeSet::new();
    for b in all_of::<ClusterRoleBinding>(docs, "ClusterRoleBinding") {
        if !is_subject(&b.subjects) {
            continue;
        }
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role: ClusterRole = find(docs, "ClusterRole", &b.role_ref.name).typed();
        assert!(role.aggregation_rule.is_none());
        let what = format!("ClusterRole {}", b.role_ref.name);
        expand_rules(
            &what,
            Scope::Cluster,
            &role.rules.unwrap_or_default(),
            &mut out,
        );
    }
    for b in all_of::<RoleBinding>(docs, "RoleBinding") {
        if !is_subject(&b.subjects) {
            continue;
        }
        assert_eq!(
            b.metadata.namespace.as_deref(),
            Some(contract::SYSTEM_NAMESPACE),
            "RoleBindings only in the control plane's namespace"
        );
        let rules = match b.role_ref.kind.as_str() {
            "Role" => {
                let role: Role = find(docs, "Role", &b.role_ref.name).typed();
                assert_eq!(role.metadata.namespace, b.metadata.namespace);
                role.rules.unwrap_or_default()
            }
            "ClusterRole" => find(docs, "ClusterRole", &b.role_ref.name)
                .typed::<ClusterRole>()
                .rules
                .unwrap_or_default(),
            other => panic!("RoleBinding to a {other}"),
        };
        let what = format!("{} {}", b.role_ref.kind, b.role_ref.name);
        expand_rules(&what, Scope::System, &rules, &mut out);
    }
    out
}

fn assert_exact_grants(component: &str, granted: &BTreeSet<Grant>, calls: &[Call]) {
    let expected = expected_grants(calls);
    let extra: Vec<&Grant> = granted.difference(&expected).collect();
    let missing: Vec<&Grant> = expected.difference(granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{component}'s RBAC differs from the API calls it makes\n  granted but not needed: {extra:#?}\n  needed but not granted: {missing:#?}"
    );
}

#[test]
fn injector_rbac_grants_exactly_its_api_calls() {
    let docs = control_plane();
    let granted = granted_to(&docs, "meshlite-injector");
    assert_exact_grants("the injector", &granted, INJECTOR_CALLS);
}

#[test]
fn certd_rbac_grants_exactly_its_api_calls() {
    let path = deploy_dir().join("rbac-certd.yaml");
    assert!(
        path.is_file(),
        "deploy/rbac-certd.yaml is missing: certd's ServiceAccount and RBAC \
         (written with certd) must exist before its grants can be checked"
    );
    let docs = control_plane();
    let accounts: Vec<Doc> = parse_docs("deploy/rbac-certd.yaml", &read(&path))
        .into_iter()
        .filter(|d| d.kind() == "ServiceAccount")
        .collect();
    assert!(
        accounts
            .iter()
            .any(|d| d.name() == "meshlite-certd"
                && d.namespace() == Some(contract::SYSTEM_NAMESPACE)),
        "rbac-certd.yaml defines ServiceAccount meshlite-certd in {}",
        contract::SYSTEM_NAMESPACE
    );
    let granted = granted_to(&docs, "meshlite-certd");
    assert_exact_grants("certd", &granted, CERTD_CALLS);
}

/// Non-test Rust source of a crate: every `.rs` under `src/` except `tests.rs`
/// files, each cut at its `#[cfg(test)]` module.
fn crate_source(dir: &str) -> String {
    source_under(&repo_root().join(dir).join("src"))
}

/// Non-test Rust source under `root` (see [`crate_source`]).
fn source_under(root: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                let text = read(&p);
                out.push_str(text.split("#[cfg(test)]").next().unwrap_or(""));
            }
        }
    }
    let mut out = String::new();
    walk(root, &mut out);
    out
}

/// The `T` of every `Api<T>` / `Api::<T>` in the source.
fn api_types(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pat in ["Api<", "Api::<"] {
        for (i, _) in source.match_indices(pat) {
            let rest = &source[i + pat.len()..];
            let ty: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let ty = ty.rsplit("::").next().unwrap().to_string();
            if !ty.is_empty() {
                out.insert(ty);
            }
        }
    }
    out
}

/// The API resource of a k8s-openapi type the components use.
fn resource_of(ty: &str) -> &'static str {
    match ty {
        "Namespace" => "namespaces",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "TokenReview" => "tokenreviews",
        "CertificateSigningRequest" => "certificatesigningrequests",
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations",
        "Pod" => "pods",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        other => panic!(
            "the source uses Api<{other}>: add its resource here and its calls to the RBAC table"
        ),
    }
}

fn base_resources(calls: &[Call]) -> BTreeSet<&'static str> {
    calls
        .iter()
        .map(|c| c.resource.split('/').next().unwrap())
        .filter(|r| *r != "signers")
        .collect()
}

#[test]
fn injector_source_makes_only_the_listed_api_calls() {
    let source = crate_source("injector");
    let used: BTreeSet<&str> = api_types(&source).iter().map(|t| resource_of(t)).collect();
    assert_eq!(used, base_resources(INJECTOR_CALLS));
    // The one Api<Namespace> is only ever read by name.
    let webhook = read(&repo_root().join("injector/src/webhook.rs"));
    let start = webhook
        .find("impl NamespaceLookup for KubeNamespaces")
        .expect("injector/src/webhook.rs implements NamespaceLookup for KubeNamespaces");
    let body = &webhook[start..];
    let body = &body[..body[1..].find("\nimpl ").map_or(body.len(), |i| i + 1)];
    let calls: Vec<&str> = body
        .match_indices("self.0.")
        .map(|(i, _)| {
            let rest = &body[i + "self.0.".len()..];
            &rest[..rest.find('(').unwrap_or(rest.len())]
        })
        .collect();
    assert_eq!(calls, vec!["get"], "KubeNamespaces calls only get");
}

#[test]
fn certd_source_uses_the_listed_resources_and_verbs() {
    let source = crate_source("certd");
    let used: BTreeSet<&str> = api_types(&source).iter().map(|t| resource_of(t)).collect();
    assert_eq!(
        used,
        base_resources(CERTD_CALLS),
        "the resources certd's code touches and the RBAC table name the same set"
    );
    let table = expected_grants(CERTD_CALLS);
    let grants = |resource: &str, verb: &str| {
        table
            .iter()
            .any(|(_, _, r, v, _)| r == resource && v == verb)
    };
    // kube::Api methods and the (sub)resource and verb each needs.
    let methods: &[(&str, &str, &str)] = &[
        // Both CSR subresources are PUT through one conflict-retrying
        // helper, `write_subresource`, which calls `.replace_subresource(`.
        (
            "write_subresource(\"approval\"",
            "certificatesigningrequests/approval",
            "update",
        ),
        (
            "write_subresource(\"status\"",
            "certificatesigningrequests/status",
            "update",
        ),
        (".watch(", "certificatesigningrequests", "watch"),
        (".delete(", "certificatesigningrequests", "delete"),
        (".list(", "namespaces", "list"),
        (".replace(", "configmaps", "update"),
        (".replace(", "secrets", "update"),
        (".patch(", "mutatingwebhookconfigurations", "patch"),
    ];
    assert!(
        source.contains(".replace_subresource(subresource"),
        "write_subresource PUTs to the subresource it is given"
    );
    assert!(
        !source.contains(".replace_status("),
        "status is written only through write_subresource"
    );
    for (method, resource, verb) in methods {
        assert_eq!(
            source.contains(method),
            grants(resource, verb),
            "certd's code and the table disagree on {method} ({verb} {resource})"
        );
    }
    // Pods, Services and EndpointSlices are only ever read through a
    // reflector's watcher (list + watch), and only in certd/src/naming/.
    // Without whitespace, so rustfmt's line breaks do not matter.
    let naming: String = source_under(&repo_root().join("certd/src/naming"))
        .split_whitespace()
        .collect();
    for ty in ["Pod", "Service", "EndpointSlice"] {
        let api = format!("watcher(Api::<{ty}>::all(");
        assert!(
            naming.contains(&api),
            "certd/src/naming/ watches {ty}s with {api}"
        );
        assert_eq!(
            source.matches(&format!("Api::<{ty}>")).count()
                + source.matches(&format!("Api<{ty}>")).count(),
            1,
            "one Api<{ty}> in certd, the naming watch"
        );
    }
    // The API calls live in mod.rs (index.rs is pure): one watcher, no other verb.
    let calls = read(&repo_root().join("certd/src/naming/mod.rs"));
    for other in [
        ".get(",
        ".list(",
        ".watch(",
        ".create(",
        ".replace(",
        ".patch(",
        ".delete(",
    ] {
        assert!(
            !calls.contains(other),
            "certd/src/naming/mod.rs makes no {other} call"
        );
    }
    for verb in ["list", "watch"] {
        for resource in ["pods", "services", "endpointslices"] {
            assert!(grants(resource, verb), "{verb} {resource} is in the table");
        }
    }
}

/// `kubectl meshlite check` asks the API server about each permission in
/// certd's `rbac::required`: that list must be exactly what rbac-certd.yaml
/// grants, or the check would pass an install that breaks, or fail a good one.
#[test]
fn the_plugins_rbac_check_asks_for_exactly_what_certd_is_granted() {
    use meshlite_certd::rbac::{Names, required};
    let asked: BTreeSet<Grant> = required(&Names::default())
        .into_iter()
        .map(|p| {
            let scope = match p.namespace.as_deref() {
                None => Scope::Cluster,
                Some(ns) => {
                    assert_eq!(ns, contract::SYSTEM_NAMESPACE, "{p:?}");
                    Scope::System
                }
            };
            let resource = if p.subresource.is_empty() {
                p.resource.to_string()
            } else {
                format!("{}/{}", p.resource, p.subresource)
            };
            (
                scope,
                p.group.to_string(),
                resource,
                p.verb.to_string(),
                p.name,
            )
        })
        .collect();
    let granted = granted_to(&control_plane(), "meshlite-certd");
    let not_asked: Vec<&Grant> = granted.difference(&asked).collect();
    let not_granted: Vec<&Grant> = asked.difference(&granted).collect();
    assert!(
        not_asked.is_empty() && not_granted.is_empty(),
        "rbac::required and deploy/rbac-certd.yaml differ\n  granted, not checked: {not_asked:#?}\n  checked, not granted: {not_granted:#?}"
    );
}
