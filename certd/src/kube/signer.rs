//! The CSR flow against `certificates.k8s.io/v1`: create the
//! CertificateSigningRequest, approve it through `/approval`, then either sign
//! it ourselves through `/status` (built-in signer) or wait, bounded, for an
//! external signer; finally delete it unless asked to keep it.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec, CertificateSigningRequestStatus,
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use meshlite_contract::{CSR_NAMESPACE_LABEL, CSR_POD_LABEL, CSR_SERVICE_ACCOUNT_LABEL};
use time::OffsetDateTime;

use super::{api_error, is_code};
use crate::ApiError;
use crate::approval::{self, CsrState, Lifetime};
use crate::ca::Issued;
use crate::signer::{SharedCa, SignRequest, SigningBackend};

/// Name prefix of the CSR objects certd creates.
pub const CSR_GENERATE_NAME: &str = "meshlite-";
/// How often a conflicting `/approval` or `/status` write is retried.
const CONFLICT_RETRIES: usize = 3;

/// Who signs approved requests.
#[derive(Debug, Clone)]
pub enum Signing {
    /// certd signs with the CA from its Secret.
    BuiltIn(SharedCa),
    /// Someone else signs; certd waits at most this long.
    External { wait: Duration },
}

/// Signs through the Kubernetes CSR API.
#[derive(Clone)]
pub struct KubeSigner {
    api: Api<CertificateSigningRequest>,
    signer_name: String,
    lifetime: Lifetime,
    signing: Signing,
    keep_csrs: bool,
    /// The trust bundle handed out (the CA Secret's roots).
    bundle: SharedCa,
}

impl std::fmt::Debug for KubeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSigner")
            .field("signer_name", &self.signer_name)
            .field("signing", &self.signing)
            .field("keep_csrs", &self.keep_csrs)
            .finish_non_exhaustive()
    }
}

impl KubeSigner {
    pub fn new(
        client: kube::Client,
        signer_name: String,
        lifetime: Lifetime,
        signing: Signing,
        keep_csrs: bool,
        bundle: SharedCa,
    ) -> Self {
        KubeSigner {
            api: Api::all(client),
            signer_name,
            lifetime,
            signing,
            keep_csrs,
            bundle,
        }
    }

    fn object(&self, req: &SignRequest) -> CertificateSigningRequest {
        let id = &req.caller.id;
        let mut labels = std::collections::BTreeMap::from([
            (CSR_NAMESPACE_LABEL.to_string(), id.namespace().to_string()),
            (
                CSR_SERVICE_ACCOUNT_LABEL.to_string(),
                id.service_account().to_string(),
            ),
        ]);
        if let Some(pod) = &req.caller.pod {
            labels.insert(CSR_POD_LABEL.to_string(), pod.clone());
        }
        // Label values are at most 63 characters; a long service account or pod
        // name would make the create fail, so such labels are left out.
        labels.retain(|_, v| v.len() <= 63);
        CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some(CSR_GENERATE_NAME.to_string()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(req.csr.pem.clone().into_bytes()),
                signer_name: self.signer_name.clone(),
                expiration_seconds: Some(self.lifetime.as_expiration_seconds()),
                usages: Some(approval::USAGES.iter().map(|u| u.to_string()).collect()),
                ..Default::default()
            },
            status: None,
        }
    }

    /// PUTs the CSR to `subresource` after `edit`; on a 409 (someone wrote in
    /// between, e.g. a controller adding an annotation) re-reads it and
    /// applies `edit` again, a bounded number of times.
    async fn write_subresource(
        &self,
        subresource: &'static str,
        mut csr: CertificateSigningRequest,
        edit: impl Fn(&mut CertificateSigningRequest),
    ) -> Result<CertificateSigningRequest, ApiError> {
        let name = csr.metadata.name.clone().unwrap_or_default();
        for _ in 0..CONFLICT_RETRIES {
            edit(&mut csr);
            match self
                .api
                .replace_subresource(subresource, &name, &PostParams::default(), &csr)
                .await
            {
                Ok(written) => return Ok(written),
                Err(e) if is_code(&e, 409) => {
                    csr = self
                        .api
                        .get(&name)
                        .await
                        .map_err(|e| api_error("CSR get", e))?;
                }
                Err(e) => return Err(api_error(&format!("CSR {subresource}"), e)),
            }
        }
        Err(ApiError::Unavailable(format!(
            "CSR {subresource} kept conflicting"
        )))
    }

    async fn approve(
        &self,
        csr: CertificateSigningRequest,
        req: &SignRequest,
    ) -> Result<CertificateSigningRequest, ApiError> {
        self.write_subresource("approval", csr, |csr| {
            csr.status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new)
                .push(approval::approval_condition(&req.caller));
        })
        .await
    }

    async fn sign_builtin(
        &self,
        ca: &SharedCa,
        csr: CertificateSigningRequest,
        req: &SignRequest,
    ) -> Result<Issued, ApiError> {
        let issued = ca
            .get()
            .issue_workload(
                &req.csr,
                &req.caller.id,
                self.lifetime.as_duration(),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let chain = ByteString(issued.chain_pem.clone().into_bytes());
        self.write_subresource("status", csr, |csr| {
            csr.status
                .get_or_insert_with(CertificateSigningRequestStatus::default)
                .certificate = Some(chain.clone());
        })
        .await?;
        Ok(issued)
    }

    /// Waits for an external signer: re-reads the object, then watches it from
    /// that resourceVersion until it is decided or `wait` runs out.
    async fn wait_external(
        &self,
        csr: CertificateSigningRequest,
        req: &SignRequest,
        wait: Duration,
    ) -> Result<Issued, ApiError> {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + wait;
        let mut current = csr;
        loop {
            if let Some(done) = decided(&current, req) {
                return done;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ApiError::SignerTimeout(wait));
            }
            let rv = current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(u32::try_from(remaining.as_secs().clamp(1, 290)).unwrap_or(290));
            let watched = tokio::time::timeout(remaining, async {
                let stream = match self.api.watch(&params, &rv).await {
                    Ok(stream) => stream,
                    // 410 Gone: our resourceVersion was compacted away; re-read.
                    Err(e) if is_code(&e, 410) => return Ok(None),
                    Err(e) => return Err(api_error("CSR watch", e)),
                };
                let mut stream = stream.boxed();
                while let Some(event) = stream
                    .try_next()
                    .await
                    .map_err(|e| api_error("CSR watch", e))?
                {
                    match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                            if decided(&o, req).is_some() {
                                return Ok(Some(o));
                            }
                        }
                        WatchEvent::Deleted(_) => {
                            return Err(ApiError::SignerFailed(
                                "the CSR object was deleted".into(),
                            ));
                        }
                        // 410 Gone and friends: fall through to a fresh read.
                        WatchEvent::Error(_) => break,
                        WatchEvent::Bookmark(_) => {}
                    }
                }
                Ok(None)
            })
            .await;
            match watched {
                Ok(Ok(Some(o))) => current = o,
                Ok(Ok(None)) => {
                    current = self
                        .api
                        .get(&name)
                        .await
                        .map_err(|e| api_error("CSR get", e))?;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ApiError::SignerTimeout(wait)),
            }
        }
    }
}

/// Deletes a CSR object in the background when dropped.
struct DeleteOnDrop {
    api: Api<CertificateSigningRequest>,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let api = self.api.clone();
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the request's task, so a runtime is present; if it
        // is shutting down the object is simply left for an operator.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                    // Not fatal: the answer is given; the object only costs etcd space.
                    tracing::warn!(csr = %name, error = %e, "deleting the CSR object failed");
                }
            });
        }
    }
}

/// `Some` once the object is decided: the issued chain (checked), or the refusal.
fn decided(csr: &CertificateSigningRequest, req: &SignRequest) -> Option<Result<Issued, ApiError>> {
    match approval::state(csr.status.as_ref()) {
        CsrState::Pending => None,
        CsrState::Denied(why) => Some(Err(ApiError::Denied(why))),
        CsrState::Failed(why) => Some(Err(ApiError::SignerFailed(why))),
        CsrState::Issued(pem) => Some(
            crate::ca::check_issued(&pem, &req.csr, &req.caller.id).map_err(|e| {
                ApiError::Internal(format!("the signer issued an unusable certificate: {e}"))
            }),
        ),
    }
}

impl SigningBackend for KubeSigner {
    fn sign<'a>(&'a self, req: &'a SignRequest) -> BoxFuture<'a, Result<Issued, ApiError>> {
        Box::pin(async move {
            let created = self
                .api
                .create(&PostParams::default(), &self.object(req))
                .await
                .map_err(|e| api_error("CSR create", e))?;
            let name = created.metadata.name.clone().unwrap_or_default();
            // Deleted when this future ends, however it ends (answered, refused,
            // or cancelled by the request deadline): the object is only a record.
            let _cleanup = (!self.keep_csrs).then(|| DeleteOnDrop {
                api: self.api.clone(),
                name: name.clone(),
            });
            // `_cleanup` lives until this whole block is done.
            async {
                let approved = self.approve(created, req).await?;
                match &self.signing {
                    Signing::BuiltIn(ca) => self.sign_builtin(ca, approved, req).await,
                    Signing::External { wait } => self.wait_external(approved, req, *wait).await,
                }
            }
            .await
        })
    }

    fn trust_bundle(&self) -> String {
        self.bundle.get().bundle_pem().to_string()
    }
}
