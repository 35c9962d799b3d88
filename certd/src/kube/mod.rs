//! Everything that talks to the Kubernetes API: TokenReview, the CSR flow,
//! the CA Secret bootstrap, the trust-bundle reconcile loop and the
//! injector's serving-certificate Secret it maintains.
//!
//! Each piece fetches and applies; the decisions live in the pure modules
//! ([`crate::identity`], [`crate::approval`], [`crate::csr`]).

pub mod bootstrap;
pub mod signer;
pub mod trust;
pub mod webhook_cert;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use meshlite_contract::TrustDomain;

use crate::ApiError;
use crate::identity::{Caller, caller_from_review};
use crate::review::TokenReviewer;

pub use signer::KubeSigner;

/// Maps a Kubernetes client error to a refusal: anything that looks like the
/// API server being unreachable or overloaded is retryable (503); an API
/// answer we did not expect (RBAC, validation) is our fault (500).
pub fn api_error(what: &str, e: kube::Error) -> ApiError {
    match &e {
        kube::Error::Api(status) if status.code >= 500 || status.code == 429 => {
            ApiError::Unavailable(format!("{what}: {e}"))
        }
        kube::Error::Api(_) => ApiError::Internal(format!("{what}: {e}")),
        _ => ApiError::Unavailable(format!("{what}: {e}")),
    }
}

/// Whether `e` is an API answer with `code`.
pub fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Reviews tokens with `authentication.k8s.io/v1` TokenReview.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client, audience: String, trust_domain: TrustDomain) -> Self {
        KubeTokenReviewer {
            api: Api::all(client),
            audience,
            trust_domain,
        }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ApiError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            let answer = self
                .api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| api_error("TokenReview", e))?;
            caller_from_review(&self.trust_domain, &self.audience, answer.status.as_ref())
        })
    }
}
