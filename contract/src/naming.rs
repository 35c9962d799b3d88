//! Secure naming on the wire: who may answer at an address.
//!
//! `POST /v1/naming` (see [`NAMING_PATH`](crate::NAMING_PATH)) with
//! `Authorization: Bearer <projected SA token>` and a [`NamingRequest`] body.
//! Success is `200` with a [`NamingResponse`]; failures are a non-2xx status
//! with an [`ErrorBody`](crate::api::ErrorBody), as for certificates.
//!
//! An answer holds for [`NamingResponse::ttl_seconds`]; the proxy asks again
//! after that, so a pod IP that moves to another workload never keeps the old
//! identity for longer than one TTL.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// How long an answer is valid unless certd says otherwise. Short, so a reused
/// pod IP is re-asked within seconds; long enough that a busy client asks a
/// few times a minute per destination, not per connection.
pub const DEFAULT_TTL_SECONDS: u32 = 10;

/// The request body: the destination the proxy is about to connect to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamingRequest {
    /// `IP:port` (IPv6 as `[ip]:port`): a pod IP or a ClusterIP.
    pub addr: SocketAddr,
}

/// What is at an address.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Meshed {
    /// Every ready backend runs the proxy: mTLS is required, and the server
    /// must be one of the answered identities.
    Meshed,
    /// No backend runs the proxy (or the port is skipped by the proxy).
    Unmeshed,
    /// A Service with both meshed and unmeshed ready backends. A meshed answer
    /// must still be one of the identities; see SECURITY.md for the risk.
    Mixed,
    /// certd does not know the address (outside the cluster, no ready backend,
    /// or certd runs without a cluster).
    Unknown,
}

impl Meshed {
    pub fn as_str(self) -> &'static str {
        match self {
            Meshed::Meshed => "meshed",
            Meshed::Unmeshed => "unmeshed",
            Meshed::Mixed => "mixed",
            Meshed::Unknown => "unknown",
        }
    }
}

/// certd's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamingResponse {
    pub meshed: Meshed,
    /// The SPIFFE IDs that may answer at the address (the meshed backends'),
    /// sorted and without duplicates. Empty unless `meshed` or `mixed`.
    pub identities: Vec<SpiffeId>,
    /// How long the answer may be used, in seconds.
    pub ttl_seconds: u32,
    /// certd's index version the answer came from (it only grows while one
    /// certd runs); for logs and debugging.
    pub version: u64,
}

impl NamingResponse {
    /// An answer of `unknown`, with the default TTL.
    pub fn unknown(version: u64) -> Self {
        NamingResponse {
            meshed: Meshed::Unknown,
            identities: Vec::new(),
            ttl_seconds: DEFAULT_TTL_SECONDS,
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_in_camel_case() {
        let req: NamingRequest = serde_json::from_str(r#"{"addr":"[fd00::1]:8080"}"#).unwrap();
        assert_eq!(req.addr, "[fd00::1]:8080".parse().unwrap());
        assert!(serde_json::from_str::<NamingRequest>(r#"{"addr":"10.0.0.1"}"#).is_err());
        assert!(serde_json::from_str::<NamingRequest>(r#"{"addr":"10.0.0.1:1","x":1}"#).is_err());
        let answer = NamingResponse {
            meshed: Meshed::Meshed,
            identities: vec!["spiffe://cluster.local/ns/a/sa/b".parse().unwrap()],
            ttl_seconds: 10,
            version: 7,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            text,
            r#"{"meshed":"meshed","identities":["spiffe://cluster.local/ns/a/sa/b"],"ttlSeconds":10,"version":7}"#
        );
        assert_eq!(
            serde_json::from_str::<NamingResponse>(&text).unwrap(),
            answer
        );
    }
}
