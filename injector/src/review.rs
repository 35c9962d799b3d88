//! AdmissionReview v1 on the wire: parsing the request and writing the answer.
//!
//! Own types rather than `kube::core::admission`, so the answer is exactly the
//! documented shape: `apiVersion`, `kind`, and a `response` with the request's
//! `uid`, `allowed`, and `patchType: JSONPatch` plus a base64 `patch` only when
//! there is a patch; `status` only on a denial.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The parts of `request` the injector uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl AdmissionRequest {
    /// A core/v1 Pod CREATE: the only request the injector changes.
    pub fn is_pod_create(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.version == "v1"
            && self.kind.kind == "Pod"
            && self.operation == "CREATE"
    }

    /// The pod in the request.
    pub fn pod(&self) -> Result<Pod, ReviewError> {
        let object = self.object.clone().ok_or(ReviewError::NoObject)?;
        serde_json::from_value(object).map_err(|e| ReviewError::BadPod(e.to_string()))
    }
}

/// Why a request could not be used. `Unreadable` gets an HTTP 400 (there is no
/// uid to answer); every other case gets a review that denies with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not an AdmissionReview: {0}")]
    Unreadable(String),
    #[error(
        "unsupported AdmissionReview {api_version}/{kind}: only {API_VERSION}/{KIND} is served"
    )]
    WrongVersion { api_version: String, kind: String },
    #[error("AdmissionReview request is malformed: {0}")]
    BadRequest(String),
    #[error("AdmissionReview request has no object")]
    NoObject,
    #[error("object is not a valid Pod: {0}")]
    BadPod(String),
}

/// Parses a request body. On error, also returns the uid when it could be read,
/// so the answer can still be a review.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, (Option<String>, ReviewError)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| (None, ReviewError::Unreadable(e.to_string())))?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .ok_or_else(|| (None, ReviewError::Unreadable("no request.uid".into())))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != API_VERSION || kind != KIND {
        return Err((Some(uid), ReviewError::WrongVersion { api_version, kind }));
    }
    let request = value.get("request").cloned().unwrap_or_default();
    serde_json::from_value(request).map_err(|e| (Some(uid), ReviewError::BadRequest(e.to_string())))
}

/// The review the webhook returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    pub api_version: String,
    pub kind: String,
    pub response: AdmissionResponse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSON Patch array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// The `metav1.Status` subset shown to the user on a denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub code: u16,
    pub message: String,
}

impl AdmissionReviewResponse {
    fn new(response: AdmissionResponse) -> Self {
        AdmissionReviewResponse {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            response,
        }
    }

    /// Allowed, unchanged.
    pub fn allow(uid: &str) -> Self {
        Self::new(AdmissionResponse {
            uid: uid.into(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
        })
    }

    /// Allowed with a patch.
    pub fn patch(uid: &str, patch: &json_patch::Patch) -> Result<Self, serde_json::Error> {
        let bytes = serde_json::to_vec(patch)?;
        Ok(Self::new(AdmissionResponse {
            uid: uid.into(),
            allowed: true,
            status: None,
            patch_type: Some("JSONPatch".into()),
            patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }))
    }

    /// Denied; `code` is shown as the HTTP-like status of the failure.
    pub fn deny(uid: &str, code: u16, message: impl Into<String>) -> Self {
        Self::new(AdmissionResponse {
            uid: uid.into(),
            allowed: false,
            status: Some(Status {
                code,
                message: message.into(),
            }),
            patch_type: None,
            patch: None,
        })
    }

    /// The decoded JSON Patch, if any (for tests and tools).
    pub fn decoded_patch(&self) -> Option<Result<json_patch::Patch, String>> {
        let b64 = self.response.patch.as_ref()?;
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string())),
        )
    }
}
