//! The CA Secret: load it, or create a self-signed root when it is absent.
//!
//! Several replicas may start at once. Each generates a root and tries to
//! `create` the Secret; the API server lets exactly one create succeed and
//! answers the others 409 AlreadyExists, so they re-read and use the winner's.
//!
//! Secret layout (`kubernetes.io/tls`): `tls.crt` the signing certificate and
//! its issuers, `tls.key` its key, optional `ca.crt` the roots to trust (for
//! an intermediate, or several roots during a rotation).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::is_code;
use crate::ca::{Ca, CaError};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("Kubernetes API ({what}): {source}")]
    Api {
        what: &'static str,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name}: key {key} is missing or not UTF-8")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    Invalid {
        namespace: String,
        name: String,
        source: CaError,
    },
    #[error("generating a root: {0}")]
    Generate(CaError),
}

/// Where the CA Secret lives.
#[derive(Debug, Clone)]
pub struct CaSecretRef {
    pub namespace: String,
    pub name: String,
}

/// Builds the CA from a Secret's data.
pub fn ca_from_secret(secret: &Secret, at: &CaSecretRef) -> Result<Ca, BootstrapError> {
    let data = secret.data.clone().unwrap_or_default();
    let get =
        |key: &'static str| -> Result<Option<String>, BootstrapError> {
            match data.get(key) {
                None => Ok(None),
                Some(b) => String::from_utf8(b.0.clone()).map(Some).map_err(|_| {
                    BootstrapError::MissingKey {
                        namespace: at.namespace.clone(),
                        name: at.name.clone(),
                        key,
                    }
                }),
            }
        };
    let missing = |key| BootstrapError::MissingKey {
        namespace: at.namespace.clone(),
        name: at.name.clone(),
        key,
    };
    let cert = get(TLS_CRT)?.ok_or_else(|| missing(TLS_CRT))?;
    let key = get(TLS_KEY)?.ok_or_else(|| missing(TLS_KEY))?;
    let bundle = get(CA_CRT)?;
    Ca::from_pem(&cert, &key, bundle.as_deref()).map_err(|source| BootstrapError::Invalid {
        namespace: at.namespace.clone(),
        name: at.name.clone(),
        source,
    })
}

/// The Secret for a CA certd generated.
pub fn secret_for(ca: &Ca, at: &CaSecretRef) -> Secret {
    let data = BTreeMap::from([
        (
            TLS_CRT.to_string(),
            ByteString(ca.cert_pem().as_bytes().to_vec()),
        ),
        (
            TLS_KEY.to_string(),
            ByteString(ca.key_pem().as_bytes().to_vec()),
        ),
        (
            CA_CRT.to_string(),
            ByteString(ca.bundle_pem().as_bytes().to_vec()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(at.name.clone()),
            namespace: Some(at.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "meshlite-certd".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Reads the CA Secret; `None` when it does not exist.
pub async fn load(client: &kube::Client, at: &CaSecretRef) -> Result<Option<Ca>, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let secret = api
        .get_opt(&at.name)
        .await
        .map_err(|source| BootstrapError::Api {
            what: "get CA Secret",
            source,
        })?;
    secret.map(|s| ca_from_secret(&s, at)).transpose()
}

/// Loads the CA, creating a self-signed root if the Secret is absent.
pub async fn ensure(
    client: &kube::Client,
    at: &CaSecretRef,
    trust_domain: &str,
) -> Result<Ca, BootstrapError> {
    if let Some(ca) = load(client, at).await? {
        return Ok(ca);
    }
    let ca = Ca::generate_root(trust_domain).map_err(BootstrapError::Generate)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    match api
        .create(&PostParams::default(), &secret_for(&ca, at))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %at.name, namespace = %at.namespace, "created a self-signed root CA");
            Ok(ca)
        }
        Err(e) if is_code(&e, 409) => {
            // Another replica won the race: use its root, never ours.
            tracing::info!(secret = %at.name, "another replica created the CA first; using it");
            load(client, at).await?.ok_or(BootstrapError::Api {
                what: "re-read CA Secret after AlreadyExists",
                source: e,
            })
        }
        Err(source) => Err(BootstrapError::Api {
            what: "create CA Secret",
            source,
        }),
    }
}
