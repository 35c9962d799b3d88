//! The decisions around a Kubernetes CSR object, as pure functions: what
//! lifetime to ask for, the approval condition to write, and what a CSR's
//! status means (issued, denied, failed, or still pending).

use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};

use crate::identity::Caller;

/// Shortest lifetime: the CSR API's minimum `expirationSeconds`.
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// Longest lifetime: a day; leaves should stay too short-lived to matter.
pub const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
/// Default leaf lifetime (DESIGN: one hour).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The usages every workload certificate carries.
pub const USAGES: [&str; 3] = ["digital signature", "client auth", "server auth"];
/// Reason on the Approved condition certd writes.
pub const APPROVED_REASON: &str = "MeshliteCertdApproved";

/// A leaf lifetime inside [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(Duration);

/// A lifetime outside the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lifetime {0}s is outside 600..=86400 seconds (the CSR API's minimum to one day)")]
pub struct LifetimeError(pub u64);

impl Lifetime {
    pub fn from_secs(secs: u64) -> Result<Self, LifetimeError> {
        let d = Duration::from_secs(secs);
        if (MIN_LIFETIME..=MAX_LIFETIME).contains(&d) {
            Ok(Lifetime(d))
        } else {
            Err(LifetimeError(secs))
        }
    }

    /// Tests only: a lifetime below the CSR API's ten-minute minimum, so that
    /// renewal and rotation can be exercised in seconds. Only embedded mode
    /// honours it; the Kubernetes CSR API would reject it.
    #[cfg(feature = "test-util")]
    pub fn for_tests(d: Duration) -> Self {
        Lifetime(d)
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// For `spec.expirationSeconds` (always fits: at most 86400).
    pub fn as_expiration_seconds(self) -> i32 {
        i32::try_from(self.0.as_secs()).unwrap_or(i32::MAX)
    }
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime(DEFAULT_LIFETIME)
    }
}

/// What a CSR object's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    /// `status.certificate` is set (PEM bytes).
    Issued(Vec<u8>),
    /// An approver denied it.
    Denied(String),
    /// The signer gave up on it.
    Failed(String),
    /// Not decided yet.
    Pending,
}

fn is_true(c: &CertificateSigningRequestCondition, kind: &str) -> bool {
    c.type_ == kind && c.status == "True"
}

fn reason(c: &CertificateSigningRequestCondition) -> String {
    match (&c.reason, &c.message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => c.type_.clone(),
    }
}

/// Reads a CSR status. Denied or Failed win over a certificate: a signer that
/// failed after writing something has not issued anything we should hand out.
pub fn state(status: Option<&CertificateSigningRequestStatus>) -> CsrState {
    let Some(status) = status else {
        return CsrState::Pending;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| is_true(c, "Denied")) {
        return CsrState::Denied(reason(c));
    }
    if let Some(c) = conditions.iter().find(|c| is_true(c, "Failed")) {
        return CsrState::Failed(reason(c));
    }
    match &status.certificate {
        Some(cert) if !cert.0.is_empty() => CsrState::Issued(cert.0.clone()),
        _ => CsrState::Pending,
    }
}

/// The Approved condition for a request whose identity certd has verified.
pub fn approval_condition(caller: &Caller) -> CertificateSigningRequestCondition {
    let pod = caller
        .pod
        .as_deref()
        .map(|p| format!(" (pod {p})"))
        .unwrap_or_default();
    CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some(APPROVED_REASON.into()),
        message: Some(format!(
            "meshlite-certd verified the service account token for {}{pod}",
            caller.id
        )),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn cond(kind: &str, status: &str) -> CertificateSigningRequestCondition {
        CertificateSigningRequestCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some("R".into()),
            ..Default::default()
        }
    }

    fn status(
        conds: Vec<CertificateSigningRequestCondition>,
        cert: Option<&[u8]>,
    ) -> CertificateSigningRequestStatus {
        CertificateSigningRequestStatus {
            conditions: Some(conds),
            certificate: cert.map(|c| ByteString(c.to_vec())),
        }
    }

    #[test]
    fn lifetime_accepts_the_csr_api_range_only() {
        assert!(Lifetime::from_secs(599).is_err());
        assert!(Lifetime::from_secs(86_401).is_err());
        assert_eq!(
            Lifetime::from_secs(600).unwrap().as_expiration_seconds(),
            600
        );
        assert_eq!(Lifetime::default().as_duration(), DEFAULT_LIFETIME);
    }

    #[test]
    fn csr_state_reads_certificate_denial_failure_and_pending() {
        assert_eq!(state(None), CsrState::Pending);
        assert_eq!(
            state(Some(&status(vec![cond("Approved", "True")], None))),
            CsrState::Pending
        );
        assert_eq!(
            state(Some(&status(vec![cond("Approved", "True")], Some(b"PEM")))),
            CsrState::Issued(b"PEM".to_vec())
        );
        assert_eq!(
            state(Some(&status(vec![cond("Denied", "True")], None))),
            CsrState::Denied("R".into())
        );
        assert_eq!(
            state(Some(&status(
                vec![cond("Approved", "True"), cond("Failed", "True")],
                Some(b"x")
            ))),
            CsrState::Failed("R".into())
        );
        // A condition that is not True does not count.
        assert_eq!(
            state(Some(&status(vec![cond("Denied", "False")], None))),
            CsrState::Pending
        );
        assert_eq!(state(Some(&status(vec![], Some(b"")))), CsrState::Pending);
    }

    #[test]
    fn the_approval_names_the_verified_identity_and_pod() {
        let caller = Caller {
            id: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
            pod: Some("p-1".into()),
        };
        let c = approval_condition(&caller);
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Approved", "True"));
        assert_eq!(c.reason.as_deref(), Some(APPROVED_REASON));
        assert!(c.message.unwrap().contains("ns/a/sa/b (pod p-1)"));
    }
}
