//! Signing backends: who turns a validated CSR into a certificate.
//!
//! [`SigningBackend`] has two implementations: the Kubernetes CSR API
//! ([`crate::kube::KubeSigner`]) and the in-process CA of embedded mode
//! ([`EmbeddedSigner`]). Both share [`SharedCa`], the CA that can be swapped
//! live when its Secret or files change.

use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use time::OffsetDateTime;

use crate::ApiError;
use crate::approval::Lifetime;
use crate::ca::{Ca, Issued};
use crate::csr::ValidCsr;
use crate::identity::Caller;

/// A request that passed authentication and CSR validation.
#[derive(Debug, Clone)]
pub struct SignRequest {
    pub caller: Caller,
    pub csr: ValidCsr,
}

/// Gets a validated request signed.
pub trait SigningBackend: Send + Sync + std::fmt::Debug {
    fn sign<'a>(&'a self, req: &'a SignRequest) -> BoxFuture<'a, Result<Issued, ApiError>>;

    /// PEM of every root workloads should trust right now.
    fn trust_bundle(&self) -> String;
}

/// The current CA, replaceable while requests are in flight.
#[derive(Debug, Clone)]
pub struct SharedCa(Arc<RwLock<Arc<Ca>>>);

impl SharedCa {
    pub fn new(ca: Ca) -> Self {
        SharedCa(Arc::new(RwLock::new(Arc::new(ca))))
    }

    pub fn get(&self) -> Arc<Ca> {
        // A poisoned lock means a writer panicked mid-swap; the Arc inside is intact.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, ca: Ca) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ca);
    }
}

/// Signs with the CA in process: embedded mode, no Kubernetes API.
#[derive(Debug, Clone)]
pub struct EmbeddedSigner {
    ca: SharedCa,
    lifetime: Lifetime,
}

impl EmbeddedSigner {
    pub fn new(ca: SharedCa, lifetime: Lifetime) -> Self {
        EmbeddedSigner { ca, lifetime }
    }
}

impl SigningBackend for EmbeddedSigner {
    fn sign<'a>(&'a self, req: &'a SignRequest) -> BoxFuture<'a, Result<Issued, ApiError>> {
        let result = self
            .ca
            .get()
            .issue_workload(
                &req.csr,
                &req.caller.id,
                self.lifetime.as_duration(),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| ApiError::Internal(e.to_string()));
        Box::pin(async move { result })
    }

    fn trust_bundle(&self) -> String {
        self.ca.get().bundle_pem().to_string()
    }
}
