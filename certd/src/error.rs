//! Every way a certificate request can be refused, with its HTTP status and
//! the stable reason that appears in the [`ErrorBody`] and in metrics.

use std::time::Duration;

use http::StatusCode;
use meshlite_contract::api::ErrorBody;

use crate::metrics::Issuance;

/// How long a client should wait before retrying after a 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A refused certificate request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the token was not accepted: {0}")]
    Unauthenticated(String),
    #[error("the token is not valid for audience {0:?}")]
    WrongAudience(String),
    #[error("the token does not belong to a service account: {0}")]
    NotServiceAccount(String),
    #[error("the CSR asks for {requested}, but the token is for {derived}")]
    IdentityMismatch { requested: String, derived: String },
    #[error("the CSR may only carry the workload's SPIFFE URI SAN, not {0}")]
    UnexpectedSan(String),
    #[error("the request body is not valid: {0}")]
    MalformedRequest(String),
    #[error("the CSR is not valid: {0}")]
    MalformedCsr(String),
    #[error("the CSR's self-signature does not verify")]
    BadCsrSignature,
    #[error("unsupported key: {0} (use ECDSA P-256 or Ed25519)")]
    UnsupportedKey(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the certificate request was denied: {0}")]
    Denied(String),
    #[error("the signer failed the certificate request: {0}")]
    SignerFailed(String),
    #[error("no certificate was issued within {0:?}")]
    SignerTimeout(Duration),
    #[error("the Kubernetes API is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingToken | Unauthenticated(_) | WrongAudience(_) => StatusCode::UNAUTHORIZED,
            NotServiceAccount(_) | IdentityMismatch { .. } | Denied(_) | SignerFailed(_) => {
                StatusCode::FORBIDDEN
            }
            UnexpectedSan(_) | MalformedRequest(_) | MalformedCsr(_) | BadCsrSignature
            | UnsupportedKey(_) => StatusCode::BAD_REQUEST,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            SignerTimeout(_) | Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable reason (ErrorBody `error`, metric label).
    pub fn label(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingToken => "missing_token",
            Unauthenticated(_) => "unauthenticated",
            WrongAudience(_) => "wrong_audience",
            NotServiceAccount(_) => "not_service_account",
            IdentityMismatch { .. } => "identity_mismatch",
            UnexpectedSan(_) => "unexpected_san",
            MalformedRequest(_) => "malformed_request",
            MalformedCsr(_) => "malformed_csr",
            BadCsrSignature => "bad_csr_signature",
            UnsupportedKey(_) => "unsupported_key",
            TooLarge(_) => "too_large",
            Denied(_) => "denied",
            SignerFailed(_) => "signer_failed",
            SignerTimeout(_) => "signer_timeout",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }

    /// The class operators alert on ([`Issuance`]); [`Self::label`] keeps the detail.
    pub fn issuance(&self) -> Issuance {
        use ApiError::*;
        match self {
            MissingToken
            | Unauthenticated(_)
            | WrongAudience(_)
            | NotServiceAccount(_)
            | IdentityMismatch { .. }
            | UnexpectedSan(_)
            | MalformedRequest(_)
            | MalformedCsr(_)
            | BadCsrSignature
            | UnsupportedKey(_)
            | TooLarge(_) => Issuance::Rejected,
            Denied(_) => Issuance::Denied,
            SignerFailed(_) | SignerTimeout(_) | Unavailable(_) | Internal(_) => Issuance::Failed,
        }
    }

    /// `Retry-After` for transient failures, `None` for final answers.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.label().to_string(),
            message: self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_ask_for_a_retry() {
        assert_eq!(
            ApiError::Unavailable("x".into()).retry_after(),
            Some(RETRY_AFTER)
        );
        assert_eq!(
            ApiError::SignerTimeout(Duration::from_secs(1)).retry_after(),
            Some(RETRY_AFTER)
        );
        assert_eq!(ApiError::Denied("x".into()).retry_after(), None);
        assert_eq!(ApiError::MissingToken.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn only_certd_or_its_dependencies_failing_counts_as_a_failed_issuance() {
        assert_eq!(ApiError::MissingToken.issuance(), Issuance::Rejected);
        assert_eq!(ApiError::BadCsrSignature.issuance(), Issuance::Rejected);
        assert_eq!(ApiError::Denied("x".into()).issuance(), Issuance::Denied);
        for failed in [
            ApiError::SignerFailed("x".into()),
            ApiError::SignerTimeout(Duration::from_secs(1)),
            ApiError::Unavailable("x".into()),
            ApiError::Internal("x".into()),
        ] {
            assert_eq!(failed.issuance(), Issuance::Failed, "{failed}");
        }
    }

    #[test]
    fn the_body_carries_the_label_and_the_reason() {
        let body = ApiError::WrongAudience("meshlite-certd".into()).body();
        assert_eq!(body.error, "wrong_audience");
        assert!(body.message.contains("meshlite-certd"));
    }
}
