//! certd's HTTP API, as both sides see it on the wire.
//!
//! `POST /v1/certificates` with `Authorization: Bearer <projected SA token>` and a
//! [`CertificateRequest`] body. Success is `200` with a [`CertificateResponse`];
//! every failure is a non-2xx status with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// The request body: a PEM-encoded PKCS#10 CSR.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    pub csr: String,
}

/// The answer to a successful request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The SPIFFE ID the certificate was issued for.
    pub spiffe_id: String,
    /// PEM: the leaf first, then any intermediates.
    pub certificate_chain: String,
    /// PEM: every root the workload should trust (more than one during rotation).
    pub trust_bundle: String,
    /// The leaf's notAfter, RFC 3339 in UTC.
    pub not_after: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// A stable, machine-readable reason, also used as a metric label.
    pub error: String,
    /// A human-readable explanation.
    pub message: String,
}

/// The proxy admin port's `GET /identity` (port 15020): the workload
/// certificate the proxy presents now, and the roots it trusts. Everything in
/// it is public material; the key never leaves the proxy. `kubectl meshlite`
/// reads it through the API server's pod proxy subresource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyIdentity {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub spiffe_id: String,
    /// The leaf's serial number, lowercase hex without separators.
    pub serial: String,
    /// The leaf's issuer, as an RFC 4514 string.
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    /// PEM: the leaf first, then any intermediates.
    pub certificate_chain: String,
    /// PEM: every root the proxy accepts peers from.
    pub trust_bundle: String,
}

/// Admin path of [`ProxyIdentity`].
pub const PROXY_IDENTITY_PATH: &str = "/identity";
