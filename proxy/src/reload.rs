//! Polling file sources: credentials and the allow list.
//!
//! Polling (rather than inotify) is deliberate: Kubernetes updates ConfigMap,
//! Secret and downward-API volumes by swapping a symlink, which inotify watches
//! on the file miss. Reading a few small files every couple of seconds is cheap.

use crate::config::PolicySource;
use crate::metrics::{Metrics, ResultLabels};
use crate::policy::{PolicyError, PolicyStore, allow_list_from_annotations};
use crate::tls::{CredStore, Credentials};
use meshlite_contract::AllowList;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why credential files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Invalid(#[from] crate::tls::CredError),
}

impl LoadError {
    fn label(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "read_error",
            LoadError::Pem { .. } => "bad_pem",
            LoadError::Invalid(e) => e.label(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses PEM credential files into [`Credentials`].
pub fn parse_credentials(
    cert_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    paths: [&Path; 3],
) -> Result<Credentials, LoadError> {
    let certs = |pem: &[u8], path: &Path| {
        let list: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect();
        if list.is_empty() {
            Err(LoadError::Pem {
                path: path.to_path_buf(),
                what: "certificate",
            })
        } else {
            Ok(list)
        }
    };
    let chain = certs(cert_pem, paths[0])?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| LoadError::Pem {
        path: paths[1].to_path_buf(),
        what: "private key",
    })?;
    let roots = certs(bundle_pem, paths[2])?;
    Ok(Credentials { chain, key, roots })
}

pub fn record_cert(metrics: &Metrics, not_after: SystemTime) {
    let secs = not_after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    metrics
        .cert_not_after
        .set(i64::try_from(secs).unwrap_or(i64::MAX));
}

/// Publishes credentials and records the result in metrics and logs.
pub fn publish(store: &CredStore, metrics: &Metrics, creds: Credentials) -> bool {
    match store.publish(creds) {
        Ok(cfg) => {
            record_cert(metrics, cfg.not_after);
            metrics
                .cred_reloads
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            tracing::info!(identity = %cfg.identity, not_after = ?cfg.not_after, "loaded workload credentials");
            true
        }
        Err(e) => {
            metrics
                .cred_reloads
                .get_or_create(&ResultLabels { result: e.label() })
                .inc();
            tracing::warn!(error = %e, "refused new workload credentials; keeping the current ones");
            false
        }
    }
}

/// Watches the credential files and publishes every valid change.
pub async fn watch_credentials(
    paths: [PathBuf; 3],
    store: CredStore,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut last: Option<[Vec<u8>; 3]> = None;
    loop {
        let contents =
            (|| Ok::<_, LoadError>([read(&paths[0])?, read(&paths[1])?, read(&paths[2])?]))();
        match contents {
            Ok(c) if last.as_ref() != Some(&c) => {
                let parsed =
                    parse_credentials(&c[0], &c[1], &c[2], [&paths[0], &paths[1], &paths[2]]);
                match parsed {
                    Ok(creds) => {
                        publish(&store, &metrics, creds);
                    }
                    Err(e) => {
                        metrics
                            .cred_reloads
                            .get_or_create(&ResultLabels { result: e.label() })
                            .inc();
                        tracing::warn!(error = %e, "could not load workload credentials");
                    }
                }
                // Remember even a failed version, so a bad file is reported once,
                // not every poll; a rewrite of it is picked up.
                last = Some(c);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "credential files not readable yet"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Loads the allow list from its source.
pub fn load_policy(source: &PolicySource) -> Result<AllowList, PolicyLoadError> {
    match source {
        PolicySource::None => Ok(AllowList::AnyInTrustDomain),
        PolicySource::Static(v) => Ok(AllowList::parse(v).map_err(PolicyError::from)?),
        PolicySource::File(p) => {
            let text = std::fs::read_to_string(p).map_err(PolicyLoadError::Read)?;
            Ok(AllowList::parse(&text).map_err(PolicyError::from)?)
        }
        PolicySource::Annotations(p) => {
            let text = std::fs::read_to_string(p).map_err(PolicyLoadError::Read)?;
            Ok(allow_list_from_annotations(&text)?)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("reading the allow list: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Applies the allow list once; an invalid one denies everybody.
pub fn apply_policy(source: &PolicySource, store: &PolicyStore, metrics: &Metrics) {
    match load_policy(source) {
        Ok(list) => {
            metrics
                .policy_reloads
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            if *store.get() != list {
                tracing::info!(?list, "allow list updated");
            }
            store.set(list);
        }
        Err(e) => {
            metrics
                .policy_reloads
                .get_or_create(&ResultLabels { result: "error" })
                .inc();
            tracing::error!(error = %e, "allow list is invalid or unreadable; denying every inbound mTLS peer until it is fixed");
            store.set(AllowList::Only(Vec::new()));
        }
    }
}

/// Re-reads a file-based allow list whenever its contents change.
pub async fn watch_policy(
    source: PolicySource,
    store: PolicyStore,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let path = match &source {
        PolicySource::File(p) | PolicySource::Annotations(p) => p.clone(),
        PolicySource::None | PolicySource::Static(_) => return,
    };
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(interval).await;
        let now = std::fs::read(&path).ok();
        if now != last {
            apply_policy(&source, &store, &metrics);
            last = now;
        }
    }
}
