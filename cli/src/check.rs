//! `kubectl meshlite check`: is the install whole and healthy?
//!
//! Each check fetches what it needs and hands it to a pure function that
//! decides the line (unit-tested below); the real-cluster tier breaks each
//! item in turn and checks the line and the exit code.

use crate::kubeapi::{Settings, has_proxy, labelled_namespaces, namespace_bundle, proxy_ready};
use crate::pem::{relative, same_certs};
use crate::report::{Line, Report};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use meshlite_certd::kube::bootstrap::{CaSecretRef, ca_from_secret};
use meshlite_certd::rbac::{Names, Permission, required};
use meshlite_contract::{INJECT_DISABLED, INJECT_LABEL, WEBHOOK_CONFIGURATION};
use meshlite_injector::config::{InjectorConfig, LegacyMode, NATIVE_SIDECAR_MINOR};
use time::OffsetDateTime;

/// The CA fails the check with less than this left.
pub const CA_FAIL_DAYS: i64 = 7;
/// The CA warns with less than this left.
pub const CA_WARN_DAYS: i64 = 60;

const REAPPLY: &str = "re-apply the install: kubectl apply -k deploy/ (or helm upgrade --install)";
const CERTD_LOGS: &str = "certd rewrites it every 30 s; if it stays wrong, read certd's log: \
                          kubectl -n meshlite-system logs deploy/meshlite-certd";

/// A Deployment of the control plane: present, and how many replicas are ready.
pub fn deployment_line(name: &str, found: Option<(i32, i32)>) -> Line {
    let check = "control-plane";
    match found {
        None => Line::fail(check, format!("deployment {name} not found"), REAPPLY),
        Some((_, 0)) => Line::fail(
            check,
            format!("{name}: no replica is ready"),
            format!(
                "kubectl -n meshlite-system describe deploy/{name}; kubectl -n meshlite-system logs deploy/{name}"
            ),
        ),
        Some((want, ready)) if ready < want => Line::warn(
            check,
            format!("{name}: {ready} of {want} replicas ready"),
            format!("kubectl -n meshlite-system get pods -l app.kubernetes.io/name={name}"),
        ),
        Some((want, ready)) => Line::ok(check, format!("{name}: {ready}/{want} replicas ready")),
    }
}

/// The CA's remaining validity against the thresholds.
pub fn ca_expiry_line(not_after: OffsetDateTime, now: OffsetDateTime) -> Line {
    let check = "ca";
    let left = not_after - now;
    let when = format!(
        "{} ({})",
        crate::pem::rfc3339(not_after),
        relative(not_after, now)
    );
    let rotate = "rotate it with overlap: kubectl meshlite ca rotate (see its --dry-run)";
    if left.whole_days() < CA_FAIL_DAYS {
        Line::fail(
            check,
            format!("the CA expires {when}: under {CA_FAIL_DAYS} days"),
            rotate,
        )
    } else if left.whole_days() < CA_WARN_DAYS {
        Line::warn(
            check,
            format!("the CA expires {when}: under {CA_WARN_DAYS} days"),
            rotate,
        )
    } else {
        Line::ok(check, format!("the CA is valid and expires {when}"))
    }
}

/// The webhook configuration: present, and every `caBundle` is the trust bundle.
pub fn webhook_line(hook: Option<&MutatingWebhookConfiguration>, bundle: Option<&str>) -> Line {
    let check = "webhook";
    let Some(hook) = hook else {
        return Line::fail(
            check,
            format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} not found: no pod is injected (the install stopped halfway?)"
            ),
            REAPPLY,
        );
    };
    let hooks = hook.webhooks.as_deref().unwrap_or_default();
    if hooks.is_empty() {
        return Line::fail(
            check,
            format!("{WEBHOOK_CONFIGURATION} has no webhooks"),
            REAPPLY,
        );
    }
    let Some(bundle) = bundle else {
        return Line::fail(
            check,
            "cannot compare the caBundle: the trust bundle is unknown (see the ca check)",
            "fix the CA Secret first",
        );
    };
    let stale: Vec<&str> = hooks
        .iter()
        .filter(|h| {
            let ca = h
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            !ca.is_some_and(|ca| same_certs(&ca, bundle))
        })
        .map(|h| h.name.as_str())
        .collect();
    if stale.is_empty() {
        Line::ok(
            check,
            format!(
                "{WEBHOOK_CONFIGURATION}: {} webhook(s), caBundle is the trust bundle",
                hooks.len()
            ),
        )
    } else {
        Line::fail(
            check,
            format!(
                "the caBundle of {} is not the trust bundle: the API server cannot verify the injector",
                stale.join(", ")
            ),
            CERTD_LOGS,
        )
    }
}

/// Every labelled namespace has the current bundle.
pub fn bundles_line(namespaces: &[(String, Option<String>)], bundle: Option<&str>) -> Line {
    let check = "trust-bundle";
    if namespaces.is_empty() {
        return Line::ok(
            check,
            "no namespace is labelled meshlite.io/inject=enabled yet",
        );
    }
    let Some(bundle) = bundle else {
        return Line::fail(
            check,
            "the trust bundle is unknown (see the ca check)",
            "fix the CA Secret first",
        );
    };
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (ns, found) in namespaces {
        match found {
            None => missing.push(ns.as_str()),
            Some(b) if !same_certs(b, bundle) => stale.push(ns.as_str()),
            Some(_) => {}
        }
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing in {}", missing.join(", ")));
    }
    if !stale.is_empty() {
        problems.push(format!("stale in {}", stale.join(", ")));
    }
    if problems.is_empty() {
        Line::ok(
            check,
            format!("current in all {} labelled namespace(s)", namespaces.len()),
        )
    } else {
        Line::fail(
            check,
            format!(
                "ConfigMap meshlite-trust-bundle {}: proxies there trust other roots than the CA's",
                problems.join("; ")
            ),
            CERTD_LOGS,
        )
    }
}

/// Whether the configured sidecar mode suits the API server.
pub fn sidecar_line(mode: LegacyMode, server: (u32, u32)) -> Line {
    let check = "sidecar-mode";
    let native = server >= (1, NATIVE_SIDECAR_MINOR);
    let v = format!("v{}.{}", server.0, server.1);
    match (mode, native) {
        (LegacyMode::Auto, true) => Line::ok(check, format!("auto: native sidecars on {v}")),
        (LegacyMode::Auto, false) => Line::ok(
            check,
            format!("auto: legacy mode on {v}, which has no native sidecars"),
        ),
        (LegacyMode::Off, true) => Line::ok(check, format!("native sidecars on {v}")),
        (LegacyMode::Off, false) => Line::fail(
            check,
            format!(
                "legacyMode is false (native sidecars), but {v} has none (they need 1.{NATIVE_SIDECAR_MINOR}): every pod is refused"
            ),
            "set legacyMode: auto in ConfigMap meshlite-system/meshlite-config (injector.yaml), then kubectl -n meshlite-system rollout restart deploy/meshlite-injector",
        ),
        (LegacyMode::On, true) => Line::warn(
            check,
            format!(
                "legacy mode on {v}, which has native sidecars: Jobs need the /shutdown call and start-up ordering is weaker"
            ),
            "set legacyMode: auto in ConfigMap meshlite-system/meshlite-config (injector.yaml)",
        ),
        (LegacyMode::On, false) => Line::ok(check, format!("legacy mode on {v}")),
    }
}

/// What a pod in a labelled namespace is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodMesh {
    Meshed {
        ready: bool,
    },
    Uninjected,
    /// Not expected to be meshed, with the reason.
    Exempt(&'static str),
}

pub fn pod_mesh(pod: &Pod) -> PodMesh {
    let opted_out = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(INJECT_LABEL))
            .is_some_and(|v| v == INJECT_DISABLED)
    };
    let meta = &pod.metadata;
    if opted_out(meta.annotations.as_ref()) || opted_out(meta.labels.as_ref()) {
        return PodMesh::Exempt("opted out");
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return PodMesh::Exempt("hostNetwork");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if crate::kubeapi::finished(pod) {
        return PodMesh::Exempt("finished");
    }
    if has_proxy(pod) {
        // A pod still starting has no ready proxy yet; a Pending one is not a fault.
        let ready = proxy_ready(pod) || phase == Some("Pending");
        return PodMesh::Meshed { ready };
    }
    PodMesh::Uninjected
}

/// The pods of the labelled namespaces.
pub fn pods_line(pods: &[Pod]) -> Line {
    let check = "pods";
    let name = |p: &Pod| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or(""),
            p.metadata.name.as_deref().unwrap_or("")
        )
    };
    let mut meshed = 0;
    let mut uninjected = Vec::new();
    let mut not_ready = Vec::new();
    for p in pods {
        match pod_mesh(p) {
            PodMesh::Meshed { ready: true } => meshed += 1,
            PodMesh::Meshed { ready: false } => not_ready.push(name(p)),
            PodMesh::Uninjected => uninjected.push(name(p)),
            PodMesh::Exempt(_) => {}
        }
    }
    if !uninjected.is_empty() {
        return Line::fail(
            check,
            format!(
                "not injected: {} (their traffic is not meshed)",
                uninjected.join(", ")
            ),
            "they were created before the namespace was labelled or while the webhook was down; \
             recreate them: kubectl -n <ns> rollout restart deploy/<name>, or delete the pod",
        );
    }
    if !not_ready.is_empty() {
        return Line::fail(
            check,
            format!("proxy not ready: {}", not_ready.join(", ")),
            "kubectl -n <ns> logs <pod> -c meshlite-proxy; kubectl meshlite check --proxy -n <ns>",
        );
    }
    Line::ok(check, format!("{meshed} meshed pod(s), every proxy ready"))
}

/// The permissions certd lacks.
pub fn rbac_line(denied: &[(&Permission, String)], total: usize) -> Line {
    let check = "rbac";
    if denied.is_empty() {
        return Line::ok(
            check,
            format!("certd's ServiceAccount has all {total} permissions it needs"),
        );
    }
    let list: Vec<String> = denied
        .iter()
        .map(|(p, why)| {
            let res = if p.subresource.is_empty() {
                p.resource.to_string()
            } else {
                format!("{}/{}", p.resource, p.subresource)
            };
            let name = p
                .name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            let ns = p
                .namespace
                .as_deref()
                .map(|n| format!(" in {n}"))
                .unwrap_or_default();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            };
            format!("{} {res}{name}{ns} ({}{why})", p.verb, p.used_for)
        })
        .collect();
    Line::fail(
        check,
        format!("certd may not: {}", list.join("; ")),
        "re-apply deploy/rbac-certd.yaml (kubectl apply -f deploy/rbac-certd.yaml)",
    )
}

async fn sar(
    client: &kube::Client,
    user: &str,
    ns: &str,
    p: &Permission,
) -> anyhow::Result<(bool, String)> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(p.verb.into()),
                group: Some(p.group.into()),
                resource: Some(p.resource.into()),
                subresource: (!p.subresource.is_empty()).then(|| p.subresource.into()),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await?;
    let status = answer.status.unwrap_or_default();
    Ok((status.allowed, status.reason.unwrap_or_default()))
}

/// Runs every check of the install and prints each line as it is decided.
pub async fn check_install(
    client: &kube::Client,
    system_ns: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let settings = Settings::load(client, system_ns).await?;
    if !settings.found {
        report.push(Line::fail(
            "config",
            format!("ConfigMap {system_ns}/meshlite-config not found"),
            REAPPLY,
        ));
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), system_ns);
    for name in ["meshlite-certd", "meshlite-injector"] {
        let found = deployments.get_opt(name).await?.map(|d| {
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (want, ready)
        });
        report.push(deployment_line(name, found));
    }

    // The trust bundle, from the CA Secret: what everything else is compared with.
    let at = CaSecretRef {
        namespace: settings.ca_namespace.clone(),
        name: settings.ca_secret.clone(),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let bundle = match secrets.get_opt(&at.name).await? {
        None => {
            report.push(Line::fail(
                "ca",
                format!("Secret {}/{} not found", at.namespace, at.name),
                "certd creates it at its first start: is certd running? (see control-plane)",
            ));
            None
        }
        Some(secret) => match ca_from_secret(&secret, &at) {
            Ok(ca) => {
                report.push(ca_expiry_line(ca.not_after(), now));
                Some(ca.bundle_pem().to_string())
            }
            Err(e) => {
                report.push(Line::fail(
                    "ca",
                    format!("the CA Secret is unusable: {e}"),
                    "certd keeps signing with the CA it loaded last, until it restarts; \
                     restore the Secret, or rotate: kubectl meshlite ca rotate",
                ));
                None
            }
        },
    };

    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hook = hooks.get_opt(WEBHOOK_CONFIGURATION).await?;
    report.push(webhook_line(hook.as_ref(), bundle.as_deref()));

    let namespaces = labelled_namespaces(client).await?;
    let mut found = Vec::new();
    for ns in &namespaces {
        found.push((ns.clone(), namespace_bundle(client, ns).await?));
    }
    report.push(bundles_line(&found, bundle.as_deref()));

    let names = Names {
        signer: settings.signer.clone(),
        ca_namespace: settings.ca_namespace.clone(),
        ca_secret: settings.ca_secret.clone(),
        ..Names::default()
    };
    let needed = required(&names);
    let user = format!("system:serviceaccount:{system_ns}:meshlite-certd");
    let mut denied = Vec::new();
    for p in &needed {
        let (allowed, reason) = sar(client, &user, system_ns, p).await?;
        if !allowed {
            denied.push((p, reason));
        }
    }
    report.push(rbac_line(&denied, needed.len()));

    let version = client.apiserver_version().await?;
    let server = meshlite_injector::config::parse_server_version(&version.major, &version.minor);
    let mode = match settings
        .injector_yaml
        .as_deref()
        .map(|t| InjectorConfig::from_text(t, "meshlite-config/injector.yaml"))
    {
        None => Ok(LegacyMode::Auto),
        Some(Ok(c)) => Ok(c.legacy_mode),
        Some(Err(e)) => Err(e.to_string()),
    };
    match (mode, server) {
        (Ok(mode), Some(server)) => report.push(sidecar_line(mode, server)),
        (Err(e), _) => report.push(Line::fail(
            "sidecar-mode",
            format!("the injector's configuration is invalid: {e}"),
            "fix injector.yaml in ConfigMap meshlite-system/meshlite-config",
        )),
        (_, None) => report.push(Line::warn(
            "sidecar-mode",
            format!(
                "cannot read the server version {}.{}",
                version.major, version.minor
            ),
            "check that the API server answers /version",
        )),
    }

    let mut pods = Vec::new();
    for ns in &namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.extend(api.list(&ListParams::default()).await?.items);
    }
    report.push(pods_line(&pods));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;
    use meshlite_certd::ca::Ca;

    fn at(days: i64) -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        (
            now + time::Duration::days(days) + time::Duration::hours(1),
            now,
        )
    }

    #[test]
    fn the_ca_warns_under_60_days_and_fails_under_7() {
        let status = |d| {
            let (na, now) = at(d);
            ca_expiry_line(na, now).status
        };
        assert_eq!(status(400), Status::Ok);
        assert_eq!(status(60), Status::Ok);
        assert_eq!(status(59), Status::Warn);
        assert_eq!(status(7), Status::Warn);
        assert_eq!(status(6), Status::Fail);
        assert_eq!(status(-3), Status::Fail);
        let (na, now) = at(6);
        assert!(ca_expiry_line(na, now).hint.unwrap().contains("ca rotate"));
    }

    #[test]
    fn a_missing_or_stale_webhook_fails_with_a_hint() {
        let a = Ca::generate_root("cluster.local").unwrap();
        let b = Ca::generate_root("cluster.local").unwrap();
        let hook = |ca: &str| -> MutatingWebhookConfiguration {
            use base64::Engine as _;
            let ca = base64::engine::general_purpose::STANDARD.encode(ca);
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "meshlite-injector"},
                "webhooks": [{"name": "inject.meshlite.io", "admissionReviewVersions": ["v1"],
                    "sideEffects": "None", "clientConfig": {"caBundle": ca}}]
            }))
            .unwrap()
        };
        let missing = webhook_line(None, Some(a.bundle_pem()));
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.message.contains("not found"), "{missing}");
        assert!(missing.hint.unwrap().contains("kubectl apply -k deploy/"));
        assert_eq!(
            webhook_line(Some(&hook(a.bundle_pem())), Some(a.bundle_pem())).status,
            Status::Ok
        );
        let stale = webhook_line(Some(&hook(b.bundle_pem())), Some(a.bundle_pem()));
        assert_eq!(stale.status, Status::Fail);
        assert!(stale.message.contains("inject.meshlite.io"), "{stale}");
    }

    #[test]
    fn every_labelled_namespace_needs_the_current_bundle() {
        let a = Ca::generate_root("cluster.local").unwrap();
        let b = Ca::generate_root("cluster.local").unwrap();
        let ns = |n: &str, b: Option<&str>| (n.to_string(), b.map(str::to_string));
        let ok = bundles_line(&[ns("shop", Some(a.bundle_pem()))], Some(a.bundle_pem()));
        assert_eq!(ok.status, Status::Ok);
        let bad = bundles_line(
            &[
                ns("shop", Some(b.bundle_pem())),
                ns("web", None),
                ns("ok", Some(a.bundle_pem())),
            ],
            Some(a.bundle_pem()),
        );
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.message.contains("missing in web"), "{bad}");
        assert!(bad.message.contains("stale in shop"), "{bad}");
        assert!(!bad.message.contains("ok"), "{bad}");
        assert_eq!(bundles_line(&[], None).status, Status::Ok);
    }

    #[test]
    fn the_sidecar_mode_must_suit_the_server() {
        assert_eq!(sidecar_line(LegacyMode::Auto, (1, 36)).status, Status::Ok);
        assert_eq!(sidecar_line(LegacyMode::Auto, (1, 28)).status, Status::Ok);
        assert_eq!(sidecar_line(LegacyMode::Off, (1, 28)).status, Status::Fail);
        assert_eq!(sidecar_line(LegacyMode::Off, (1, 29)).status, Status::Ok);
        assert_eq!(sidecar_line(LegacyMode::On, (1, 36)).status, Status::Warn);
        assert_eq!(sidecar_line(LegacyMode::On, (1, 27)).status, Status::Ok);
    }

    #[test]
    fn uninjected_pods_fail_and_exempt_ones_do_not() {
        let pod = |v: serde_json::Value| serde_json::from_value::<Pod>(v).unwrap();
        let app = serde_json::json!([{"name": "app"}]);
        let plain = pod(
            serde_json::json!({"metadata": {"name": "plain", "namespace": "shop"},
            "spec": {"containers": app}, "status": {"phase": "Running"}}),
        );
        let opted = pod(
            serde_json::json!({"metadata": {"name": "o", "namespace": "shop",
            "annotations": {"meshlite.io/inject": "disabled"}}, "spec": {"containers": app}}),
        );
        let host = pod(serde_json::json!({"metadata": {"name": "h"},
            "spec": {"containers": app, "hostNetwork": true}}));
        let done = pod(serde_json::json!({"metadata": {"name": "d"},
            "spec": {"containers": app}, "status": {"phase": "Succeeded"}}));
        let meshed = pod(
            serde_json::json!({"metadata": {"name": "m", "namespace": "shop"},
            "spec": {"containers": [{"name": "app"}, {"name": "meshlite-proxy"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "meshlite-proxy",
                "ready": true, "image": "i", "imageID": "", "restartCount": 0}]}}),
        );
        assert_eq!(pod_mesh(&plain), PodMesh::Uninjected);
        assert_eq!(pod_mesh(&opted), PodMesh::Exempt("opted out"));
        assert_eq!(pod_mesh(&host), PodMesh::Exempt("hostNetwork"));
        assert_eq!(pod_mesh(&done), PodMesh::Exempt("finished"));
        assert_eq!(pod_mesh(&meshed), PodMesh::Meshed { ready: true });
        let fine = pods_line(&[opted.clone(), host, done, meshed.clone()]);
        assert_eq!(fine.status, Status::Ok, "{fine}");
        let bad = pods_line(&[meshed, plain, opted]);
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.message.contains("shop/plain"), "{bad}");
        assert!(bad.hint.unwrap().contains("rollout restart"));
    }

    #[test]
    fn missing_permissions_are_named_with_what_they_are_for() {
        let needed = required(&Names::default());
        assert_eq!(rbac_line(&[], needed.len()).status, Status::Ok);
        let tr = needed
            .iter()
            .find(|p| p.resource == "tokenreviews")
            .unwrap();
        let sec = needed
            .iter()
            .find(|p| {
                p.resource == "secrets"
                    && p.verb == "get"
                    && p.name.as_deref() == Some("meshlite-ca")
            })
            .unwrap();
        let line = rbac_line(
            &[(tr, String::new()), (sec, "no RBAC policy matched".into())],
            needed.len(),
        );
        assert_eq!(line.status, Status::Fail);
        assert!(
            line.message
                .contains("create tokenreviews (verifying proxies' tokens)"),
            "{line}"
        );
        assert!(
            line.message
                .contains("get secrets meshlite-ca in meshlite-system"),
            "{line}"
        );
        assert!(line.hint.unwrap().contains("rbac-certd.yaml"));
    }
}
