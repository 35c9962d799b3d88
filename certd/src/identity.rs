//! Who is asking: the workload identity derived from a TokenReview answer.
//!
//! Pure: the Kubernetes reviewer fetches the [`TokenReviewStatus`], this module
//! decides what it means. Identity comes from the token alone, never from the CSR.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use meshlite_contract::{SpiffeId, TrustDomain};

use crate::ApiError;

/// The `extra` key under which the API server names the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SA_PREFIX: &str = "system:serviceaccount:";

/// An authenticated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: SpiffeId,
    /// The pod the token is bound to, when the token says.
    pub pod: Option<String>,
}

/// Parses `system:serviceaccount:<ns>:<sa>` into an identity.
pub fn identity_from_username(td: &TrustDomain, username: &str) -> Result<SpiffeId, ApiError> {
    let not_sa = || ApiError::NotServiceAccount(username.to_string());
    let rest = username.strip_prefix(SA_PREFIX).ok_or_else(not_sa)?;
    let (ns, sa) = rest.split_once(':').ok_or_else(not_sa)?;
    SpiffeId::new(td.clone(), ns, sa).map_err(|_| not_sa())
}

/// Decides what a TokenReview answer means for a request made with `audience`.
pub fn caller_from_review(
    td: &TrustDomain,
    audience: &str,
    status: Option<&TokenReviewStatus>,
) -> Result<Caller, ApiError> {
    let status =
        status.ok_or_else(|| ApiError::Unauthenticated("empty TokenReview status".into()))?;
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(ApiError::Unauthenticated(why));
    }
    // An empty status.audiences means "valid for the API server itself": the
    // reviewer was not audience-aware, so the token is not proven to be ours.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(ApiError::WrongAudience(audience.to_string()));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| ApiError::Unauthenticated("no user in TokenReview status".into()))?;
    let username = user.username.as_deref().unwrap_or_default();
    let id = identity_from_username(td, username)?;
    let pod = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|names| names.first())
        .filter(|name| meshlite_contract::identity::is_dns1123_subdomain(name))
        .cloned();
    Ok(Caller { id, pod })
}

#[cfg(test)]
mod tests;
