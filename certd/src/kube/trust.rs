//! Trust distribution: keeps the trust bundle where workloads and the API
//! server read it.
//!
//! Every pass (at start and then periodically) it re-reads the CA Secret, so
//! a rotation done by editing the Secret reaches certd, then makes sure that
//! ConfigMap `meshlite-trust-bundle` holds the current bundle in every
//! namespace labelled for injection, that every webhook in the injector's
//! MutatingWebhookConfiguration carries it as `caBundle`, and that the
//! injector's serving certificate is current ([`super::webhook_cert`]).
//!
//! Replicas run this concurrently: writes carry the resourceVersion they were
//! based on, and a conflict means "re-read and try again", never "overwrite".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use meshlite_contract::{INJECT_ENABLED, INJECT_LABEL, TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY};

use super::bootstrap::{self, CaSecretRef};
use super::is_code;
use super::webhook_cert::{WebhookCert, WebhookCertError};
use crate::metrics::Metrics;
use crate::signer::SharedCa;

/// Attempts per object when writes conflict.
const CONFLICT_RETRIES: usize = 3;

/// Why a reconcile pass did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("Kubernetes API ({what}): {source}")]
    Api { what: String, source: kube::Error },
    #[error("{0} kept conflicting")]
    Conflicts(String),
    #[error("building the caBundle patch: {0}")]
    Patch(String),
    #[error("injector serving certificate: {0}")]
    WebhookCert(#[from] WebhookCertError),
}

fn api_failed(what: impl Into<String>) -> impl FnOnce(kube::Error) -> TrustError {
    let what = what.into();
    move |source| TrustError::Api { what, source }
}

/// What one pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub ca_reloaded: bool,
    /// Namespaces whose ConfigMap was created or updated.
    pub configmaps_written: Vec<String>,
    pub webhook_patched: bool,
    /// The injector's serving-certificate Secret was created or updated.
    pub injector_cert_written: bool,
}

/// Keeps the trust bundle distributed.
#[derive(Clone)]
pub struct TrustDistributor {
    pub client: kube::Client,
    pub ca_ref: CaSecretRef,
    pub ca: SharedCa,
    pub metrics: Arc<Metrics>,
    pub webhook: String,
    pub injector_cert: WebhookCert,
}

impl std::fmt::Debug for TrustDistributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustDistributor")
            .field("ca_ref", &self.ca_ref)
            .field("webhook", &self.webhook)
            .field("injector_cert", &self.injector_cert)
            .finish_non_exhaustive()
    }
}

impl TrustDistributor {
    /// One pass; errors on one object do not stop the others.
    pub async fn reconcile_once(&self) -> Result<Summary, TrustError> {
        let mut summary = Summary::default();
        match bootstrap::load(&self.client, &self.ca_ref).await {
            Ok(Some(ca)) => {
                let current = self.ca.get();
                if ca.cert_pem() != current.cert_pem() || ca.bundle_pem() != current.bundle_pem() {
                    tracing::info!("the CA Secret changed; using the new CA");
                    self.ca.set(ca);
                    summary.ca_reloaded = true;
                }
            }
            // Keep signing with what we have; a deleted or broken Secret is an operator error.
            Ok(None) => tracing::warn!("the CA Secret is gone; keeping the loaded CA"),
            Err(e) => {
                tracing::warn!(error = %e, "reloading the CA Secret failed; keeping the loaded CA")
            }
        }
        let ca = self.ca.get();
        self.metrics
            .set_ca_not_after(ca.not_after().unix_timestamp());
        let bundle = ca.bundle_pem().to_string();

        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selector = format!("{INJECT_LABEL}={INJECT_ENABLED}");
        let list = namespaces
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_failed("list namespaces"))?;
        let mut first_error = None;
        for ns in list.items {
            let Some(name) = ns.metadata.name else {
                continue;
            };
            match self.ensure_configmap(&name, &bundle).await {
                Ok(true) => summary.configmaps_written.push(name),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "trust bundle ConfigMap not updated");
                    first_error.get_or_insert(e);
                }
            }
        }
        match self.patch_webhook(&bundle).await {
            Ok(patched) => summary.webhook_patched = patched,
            Err(e) => {
                tracing::warn!(error = %e, "webhook caBundle not updated");
                first_error.get_or_insert(e);
            }
        }
        match self
            .injector_cert
            .reconcile(&self.client, &ca, &self.metrics)
            .await
        {
            Ok(outcome) => summary.injector_cert_written = outcome.wrote(),
            Err(e) => {
                tracing::warn!(error = %e, "injector serving certificate not updated");
                first_error.get_or_insert(e.into());
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// Runs passes every `interval` until `shutdown` resolves.
    pub async fn run(self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            match self.reconcile_once().await {
                Ok(s) if s != Summary::default() => tracing::info!(?s, "trust bundle reconciled"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "trust bundle reconcile failed; retrying"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Creates or updates the namespace's ConfigMap; true if it wrote.
    async fn ensure_configmap(&self, namespace: &str, bundle: &str) -> Result<bool, TrustError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        for _ in 0..CONFLICT_RETRIES {
            let existing = api
                .get_opt(TRUST_BUNDLE_CONFIGMAP)
                .await
                .map_err(api_err(namespace, "get ConfigMap"))?;
            let result = match existing {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(TRUST_BUNDLE_CONFIGMAP.to_string()),
                            namespace: Some(namespace.to_string()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "meshlite-certd".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([(
                            TRUST_BUNDLE_KEY.to_string(),
                            bundle.to_string(),
                        )])),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &cm).await
                }
                Some(cm) if bundle_of(&cm) == Some(bundle) => return Ok(false),
                Some(mut cm) => {
                    // replace() sends the resourceVersion we read: a concurrent
                    // writer makes this 409 rather than being overwritten.
                    cm.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert(TRUST_BUNDLE_KEY.to_string(), bundle.to_string());
                    api.replace(TRUST_BUNDLE_CONFIGMAP, &PostParams::default(), &cm)
                        .await
                }
            };
            match result {
                Ok(_) => return Ok(true),
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => return Err(api_err(namespace, "write ConfigMap")(e)),
            }
        }
        Err(TrustError::Conflicts(format!(
            "ConfigMap {namespace}/{TRUST_BUNDLE_CONFIGMAP}"
        )))
    }

    /// Sets every webhook's caBundle; false if nothing changed or the
    /// configuration does not exist (the injector may not be installed yet).
    async fn patch_webhook(&self, bundle: &str) -> Result<bool, TrustError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        for _ in 0..CONFLICT_RETRIES {
            let Some(config) = api
                .get_opt(&self.webhook)
                .await
                .map_err(api_failed("get MutatingWebhookConfiguration"))?
            else {
                return Ok(false);
            };
            let Some(patch) = ca_bundle_patch(&config, bundle)? else {
                return Ok(false);
            };
            match api
                .patch(
                    &self.webhook,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
            {
                Ok(_) => return Ok(true),
                // The `test` op on resourceVersion failed or a writer got in first.
                Err(e) if is_code(&e, 409) || is_code(&e, 422) => continue,
                Err(e) => return Err(api_failed("patch MutatingWebhookConfiguration")(e)),
            }
        }
        Err(TrustError::Conflicts(format!(
            "MutatingWebhookConfiguration {}",
            self.webhook
        )))
    }
}

fn api_err(namespace: &str, what: &str) -> impl FnOnce(kube::Error) -> TrustError {
    api_failed(format!("{what} in {namespace}"))
}

fn bundle_of(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(TRUST_BUNDLE_KEY).map(String::as_str)
}

/// A JSON patch setting `caBundle` on every webhook that lacks the bundle,
/// guarded by a `test` of the resourceVersion so indices cannot shift under
/// it. `None` when every webhook is current.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    bundle: &str,
) -> Result<Option<json_patch::Patch>, TrustError> {
    let want = ByteString(bundle.as_bytes().to_vec());
    let encoded = serde_json::to_value(&want).map_err(|e| TrustError::Patch(e.to_string()))?;
    let mut ops = vec![serde_json::json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": config.metadata.resource_version.clone().unwrap_or_default(),
    })];
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook.client_config.ca_bundle.as_ref() != Some(&want) {
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": encoded,
            }));
        }
    }
    if ops.len() == 1 {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::Array(ops))
        .map(Some)
        .map_err(|e| TrustError::Patch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn hook(name: &str, ca: Option<&str>) -> MutatingWebhook {
        MutatingWebhook {
            name: name.into(),
            client_config: WebhookClientConfig {
                ca_bundle: ca.map(|c| ByteString(c.as_bytes().to_vec())),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_patch_sets_only_stale_ca_bundles_and_guards_the_resource_version() {
        let config = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                ..Default::default()
            },
            webhooks: Some(vec![
                hook("a", Some("NEW")),
                hook("b", Some("OLD")),
                hook("c", None),
            ]),
        };
        let patch = ca_bundle_patch(&config, "NEW").unwrap().unwrap();
        let json = serde_json::to_value(&patch).unwrap();
        let ops = json.as_array().unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["value"], "7");
        assert_eq!(ops[1]["path"], "/webhooks/1/clientConfig/caBundle");
        assert_eq!(ops[2]["path"], "/webhooks/2/clientConfig/caBundle");
        assert_eq!(ops[1]["value"], "TkVX", "base64 of NEW");
    }

    #[test]
    fn no_patch_when_every_webhook_is_current() {
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![hook("a", Some("B"))]),
            ..Default::default()
        };
        assert!(ca_bundle_patch(&config, "B").unwrap().is_none());
    }
}
