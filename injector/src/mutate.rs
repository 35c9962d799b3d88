//! The mutation: pod + namespace annotations + config → JSON Patch.
//!
//! A pure function, so every case is a table row in the tests; the webhook's
//! async shell only fetches the namespace and wraps the result in a review.
//! The patch is built from explicit `add`/`replace` operations on typed values
//! rather than a diff, so it only touches what injection adds and stays valid
//! when another webhook has changed unrelated fields.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use meshlite_contract::{
    INIT_CONTAINER, INJECT_DISABLED, INJECT_LABEL, INJECTED_ANNOTATION, PROXY_CONTAINER,
};
use serde::Serialize;

use crate::config::InjectorConfig;
use crate::probes::{self, AppProbes};
use crate::settings::{self, Annotations, PodSettings, SettingsError};
use crate::sidecar;

/// Value of [`INJECTED_ANNOTATION`]: the injector's version.
pub const INJECTED_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Allow unchanged.
    Skip(SkipReason),
    /// Allow with this patch.
    Inject(Patch),
}

/// Why a pod is allowed without a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `meshlite.io/inject: disabled` as an annotation or a label.
    OptedOut,
    /// The pod shares the node's network namespace; iptables there would hijack the node.
    HostNetwork,
    /// Already carries our annotation or containers (reinvocation, or a copied spec).
    AlreadyInjected,
}

impl SkipReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "skipped_opted_out",
            SkipReason::HostNetwork => "skipped_host_network",
            SkipReason::AlreadyInjected => "skipped_already_injected",
        }
    }
}

/// A pod that cannot be injected; the webhook denies it with this message.
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A patch would add under `/spec`, which the pod lacks, so the API server
    /// could not apply it (found by fuzz/, target `admission_review`).
    #[error("the pod has no spec")]
    NoSpec,
    #[error("volume name {0:?} is reserved for meshlite; rename the pod's volume")]
    VolumeConflict(String),
    #[error(
        "container {container:?} runs as UID {uid}, the UID of meshlite's proxy, which the \
         pod's iptables rules exempt from redirection: its traffic would bypass the mesh \
         unencrypted; run it as another runAsUser, or opt the pod out with {label}: disabled",
        uid = meshlite_contract::PROXY_UID,
        label = INJECT_LABEL
    )]
    ProxyUid { container: String },
    #[error(
        "container {container:?} declares port {port}, which meshlite's proxy listens on \
         ({what}) in the pod's network namespace: one of the two could not bind; move the \
         application to another port, or opt the pod out with {label}: disabled",
        label = INJECT_LABEL
    )]
    PortConflict {
        container: String,
        port: i32,
        what: &'static str,
    },
    #[error("building the patch: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Why a pod should be left alone, if it should; needs nothing but the pod.
pub fn skip_reason(pod: &Pod) -> Option<SkipReason> {
    let meta = &pod.metadata;
    let disabled = |m: &Option<Annotations>| {
        m.as_ref()
            .and_then(|m| m.get(INJECT_LABEL))
            .is_some_and(|v| v.trim() == INJECT_DISABLED)
    };
    if disabled(&meta.annotations) || disabled(&meta.labels) {
        return Some(SkipReason::OptedOut);
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Some(SkipReason::HostNetwork);
    }
    let annotated = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    let has_ours = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == INIT_CONTAINER || c.name == PROXY_CONTAINER)
    });
    if annotated || has_ours {
        return Some(SkipReason::AlreadyInjected);
    }
    None
}

/// Decides and builds the patch for `pod` given its namespace's annotations.
pub fn mutate(
    pod: &Pod,
    namespace: &Annotations,
    cfg: &InjectorConfig,
) -> Result<Decision, MutateError> {
    let empty = Annotations::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if let Some(reason) = skip_reason(pod) {
        if reason == SkipReason::OptedOut {
            settings::check_opt_out(pod_annotations, namespace, cfg.default_mode)?;
        }
        return Ok(Decision::Skip(reason));
    }
    let settings = PodSettings::resolve(pod_annotations, namespace, cfg.default_mode)?;
    let spec = pod.spec.clone().ok_or(MutateError::NoSpec)?;
    check_conflicts(&spec)?;
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| sidecar::VOLUMES.contains(&v.name.as_str()))
    {
        return Err(MutateError::VolumeConflict(v.name.clone()));
    }

    let mut ops = Vec::new();

    // Mark the pod first: the annotation is what makes reinvocation a no-op.
    if pod.metadata.annotations.is_none() {
        ops.push(add(&["metadata", "annotations"], &Annotations::new())?);
    }
    ops.push(add(
        &["metadata", "annotations", INJECTED_ANNOTATION],
        &INJECTED_VERSION,
    )?);

    // Probes first, since the proxy's env carries the originals.
    let mut app_probes = AppProbes::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for rw in probes::rewrite_container(c) {
            let index = i.to_string();
            ops.push(replace(
                &["spec", "containers", &index, rw.kind.field()],
                &rw.probe,
            )?);
            app_probes.insert(rw.path, rw.original);
        }
    }

    let init = sidecar::init_container(cfg, &settings);
    let proxy = sidecar::proxy_container(cfg, &settings, &app_probes);
    // meshlite-init runs first so every later container's traffic is redirected;
    // the native sidecar comes right after it so the app's own init containers
    // already have a working proxy.
    let mut front = vec![init];
    if cfg.legacy() {
        ops.push(add(&["spec", "containers", "0"], &proxy)?);
    } else {
        front.push(proxy);
    }
    if spec.init_containers.is_none() {
        ops.push(add(&["spec", "initContainers"], &front)?);
    } else {
        for (i, c) in front.iter().enumerate() {
            ops.push(add(&["spec", "initContainers", &i.to_string()], c)?);
        }
    }

    let volumes = sidecar::volumes(cfg);
    if spec.volumes.is_none() {
        ops.push(add(&["spec", "volumes"], &volumes)?);
    } else {
        for v in &volumes {
            ops.push(add(&["spec", "volumes", "-"], v)?);
        }
    }
    Ok(Decision::Inject(Patch(ops)))
}

/// The proxy's ports, which nothing else in the pod may listen on.
const PROXY_PORTS: [(u16, &str); 3] = [
    (meshlite_contract::OUTBOUND_PORT, "outbound"),
    (meshlite_contract::INBOUND_PORT, "inbound"),
    (meshlite_contract::ADMIN_PORT, "admin"),
];

/// Refuses pods that cannot work meshed: a container (app or init) whose
/// effective `runAsUser` is the proxy's UID, and a declared port the proxy
/// owns. Both are refused rather than warned about: the first would leave the
/// container's traffic silently unencrypted, the second fails at runtime, and
/// a warning on a pod created by a controller reaches nobody. A UID set only by
/// the image (no `runAsUser`) cannot be seen here; the docs say so.
fn check_conflicts(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), MutateError> {
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid);
        if uid == Some(i64::from(meshlite_contract::PROXY_UID)) {
            return Err(MutateError::ProxyUid {
                container: c.name.clone(),
            });
        }
        for p in c.ports.iter().flatten() {
            if let Some((_, what)) = PROXY_PORTS
                .iter()
                .find(|(port, _)| i32::from(*port) == p.container_port)
            {
                return Err(MutateError::PortConflict {
                    container: c.name.clone(),
                    port: p.container_port,
                    what,
                });
            }
        }
    }
    Ok(())
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add<T: Serialize>(path: &[&str], value: &T) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Add(AddOperation {
        path: pointer(path),
        value: serde_json::to_value(value)?,
    }))
}

fn replace<T: Serialize>(path: &[&str], value: &T) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Replace(ReplaceOperation {
        path: pointer(path),
        value: serde_json::to_value(value)?,
    }))
}
