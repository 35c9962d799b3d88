//! The webhook's serving certificate, reloaded when its files change.
//!
//! certd (or cert-manager) rotates the Secret behind the mounted files; polling
//! their modification times is enough at this rate and needs no inotify. A
//! failed reload keeps the previous certificate and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("reading private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("building TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads a PEM chain and key into a [`CertifiedKey`].
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key_der)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Loads the files once; fails if they are unusable now.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&cert, &key)?;
        Ok(Arc::new(ReloadingCert {
            cert,
            key,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Re-reads the files; on error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load(&self.cert, &self.key)?);
        // A poisoned lock only means a reader panicked; the Arc inside is intact.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.cert)?, m(&self.key)?))
    }

    /// Polls the files every `every` and reloads when either changed.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut last = self.stamp();
        loop {
            tokio::time::sleep(every).await;
            let now = self.stamp();
            if now != last {
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "reloaded serving certificate")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the previous serving certificate")
                    }
                }
                last = now;
            }
        }
    }

    /// A TLS 1.3-only server config using this resolver (the HTTPS loop's
    /// shared policy). The API server's Go client has spoken TLS 1.3 since
    /// Kubernetes 1.13, so nothing older is needed.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        Ok(meshlite_https::server_config(self.clone())?)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
