//! The objects injection adds, built as typed Kubernetes values: the
//! `meshlite-init` container, the proxy container and the three volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceFieldSelector, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshlite_contract::{
    ADMIN_PORT, INIT_CONTAINER, PROXY_CONTAINER, PROXY_UID, TOKEN_AUDIENCE, TRUST_BUNDLE_CONFIGMAP,
    TRUST_BUNDLE_KEY, env,
};

use crate::config::{InjectorConfig, Resources};
use crate::probes::AppProbes;
use crate::settings::PodSettings;

/// Names of the volumes injection adds; a pod already using one is refused.
pub const TOKEN_VOLUME: &str = "meshlite-token";
pub const TRUST_BUNDLE_VOLUME: &str = "meshlite-trust-bundle";
pub const PODINFO_VOLUME: &str = "meshlite-podinfo";
pub const VOLUMES: [&str; 3] = [TOKEN_VOLUME, TRUST_BUNDLE_VOLUME, PODINFO_VOLUME];

/// The init container: installs the iptables redirect, then exits.
pub fn init_container(cfg: &InjectorConfig, settings: &PodSettings) -> Container {
    let mut args = vec!["init".to_string()];
    let mut list = |flag: &str, items: Vec<String>| {
        if !items.is_empty() {
            args.push(flag.to_string());
            args.push(items.join(","));
        }
    };
    list(
        "--skip-inbound-ports",
        settings
            .skip_inbound_ports
            .iter()
            .map(u16::to_string)
            .collect(),
    );
    list(
        "--skip-outbound-ports",
        settings
            .skip_outbound_ports
            .iter()
            .map(u16::to_string)
            .collect(),
    );
    list(
        "--skip-outbound-cidrs",
        settings.skip_outbound_cidrs.clone(),
    );
    if settings.preserve_client_address {
        args.push("--preserve-client-address".into());
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        args: Some(args),
        resources: Some(resources(&cfg.init_resources)),
        security_context: Some(SecurityContext {
            // iptables needs root in the pod's user namespace plus these two
            // capabilities; nothing else, and this container exits before the app runs.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables takes its lock under /run/xtables.lock.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How long a legacy-mode proxy still accepts after SIGTERM (`--drain-accept`).
pub const LEGACY_DRAIN_ACCEPT: &str = "5s";

/// The proxy: a native sidecar, or in legacy mode a regular container.
pub fn proxy_container(
    cfg: &InjectorConfig,
    settings: &PodSettings,
    app_probes: &AppProbes,
) -> Container {
    let mut c = Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        // In legacy mode the proxy is stopped together with the app: it keeps
        // accepting, not ready, while the endpoint's removal spreads to every
        // node (a native sidecar is only stopped after the app has exited, so
        // it needs no window).
        args: Some(if cfg.legacy() {
            vec![
                "run".into(),
                "--drain-accept".into(),
                LEGACY_DRAIN_ACCEPT.into(),
            ]
        } else {
            vec!["run".into()]
        }),
        env: Some(env_vars(cfg, settings, app_probes)),
        resources: Some(resources(&cfg.proxy_resources)),
        security_context: Some(proxy_security_context(settings.preserve_client_address)),
        volume_mounts: Some(vec![
            mount(TOKEN_VOLUME, env::TOKEN_DIR),
            mount(TRUST_BUNDLE_VOLUME, env::TRUST_BUNDLE_DIR),
            mount(PODINFO_VOLUME, env::PODINFO_DIR),
        ]),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        readiness_probe: Some(admin_probe("/ready", 5, 3)),
        ..Default::default()
    };
    if cfg.legacy() {
        // Before 1.29 there is no startup ordering for sidecars, but the kubelet
        // starts containers in order and waits for each postStart hook: the
        // proxy goes first and its hook returns once it is ready.
        c.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["meshlite-proxy".into(), "wait-ready".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    } else {
        c.restart_policy = Some("Always".into());
        // Holds the app containers until the proxy has its first certificate:
        // up to 2 minutes, polled every second.
        c.startup_probe = Some(admin_probe("/ready", 1, 120));
    }
    c
}

/// The proxy's securityContext. By default it runs as UID 2102 with no
/// capability at all. Preserving client addresses needs `CAP_NET_RAW` for
/// `IP_TRANSPARENT` on every inbound connection, and Kubernetes can hand a
/// capability only to a root process (no ambient capabilities, and
/// `allowPrivilegeEscalation: false` rules out file capabilities), so the
/// container starts as UID 0 with exactly NET_RAW, SETUID and SETGID; the proxy
/// switches itself to UID 2102 keeping only NET_RAW before it reads any input
/// (proxy/src/privs.rs), and refuses to start if it cannot.
fn proxy_security_context(preserve_client_address: bool) -> SecurityContext {
    let (uid, add) = if preserve_client_address {
        (
            0,
            Some(vec!["NET_RAW".into(), "SETUID".into(), "SETGID".into()]),
        )
    } else {
        (i64::from(PROXY_UID), None)
    };
    SecurityContext {
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(uid != 0),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add,
            drop: Some(vec!["ALL".into()]),
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The three volumes the proxy mounts.
pub fn volumes(cfg: &InjectorConfig) -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(cfg.token_expiration_seconds),
                        path: env::TOKEN_FILE_NAME.into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_BUNDLE_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: TRUST_BUNDLE_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: env::ANNOTATIONS_FILE_NAME.into(),
                    field_ref: Some(field("metadata.annotations")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn env_vars(cfg: &InjectorConfig, settings: &PodSettings, app_probes: &AppProbes) -> Vec<EnvVar> {
    let from_field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(field(path)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        ..Default::default()
    };
    let mut vars = vec![
        from_field(env::POD_NAME, "metadata.name"),
        from_field(env::POD_NAMESPACE, "metadata.namespace"),
        from_field(env::POD_IP, "status.podIP"),
        from_field(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
        value(env::MODE, settings.mode.to_string()),
        value(env::TRUST_DOMAIN, cfg.trust_domain.clone()),
        value(env::CERTD_URL, cfg.certd_url.clone()),
        value(
            env::TOKEN_FILE,
            format!("{}/{}", env::TOKEN_DIR, env::TOKEN_FILE_NAME),
        ),
        value(
            env::TRUST_BUNDLE_FILE,
            format!("{}/{}", env::TRUST_BUNDLE_DIR, TRUST_BUNDLE_KEY),
        ),
        value(
            env::ANNOTATIONS_FILE,
            format!("{}/{}", env::PODINFO_DIR, env::ANNOTATIONS_FILE_NAME),
        ),
        // The proxy sizes its connection limit to fit this, so it refuses
        // connections before the OOM killer acts. Without a limit the kubelet
        // gives the node's allocatable memory.
        EnvVar {
            name: env::MEMORY_LIMIT.into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(PROXY_CONTAINER.into()),
                    resource: "limits.memory".into(),
                    divisor: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if settings.preserve_client_address {
        vars.push(value(env::PRESERVE_CLIENT_ADDRESS, "true".into()));
    }
    if !app_probes.is_empty() {
        // A BTreeMap of plain strings and integers always serialises.
        let json = serde_json::to_string(app_probes).unwrap_or_default();
        vars.push(value(env::APP_PROBES, json));
    }
    vars
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        field_path: path.into(),
        api_version: None,
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn resources(r: &Resources) -> ResourceRequirements {
    let q = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: q(&r.requests),
        limits: q(&r.limits),
        ..Default::default()
    }
}
