//! `Status` answers and the resource → kind table.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Kind of each resource the fake serves.
pub fn kind_of(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "certificatesigningrequests" => "CertificateSigningRequest",
        "tokenreviews" => "TokenReview",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "namespaces" => "Namespace",
        "mutatingwebhookconfigurations" => "MutatingWebhookConfiguration",
        "serviceaccounts" => "ServiceAccount",
        "pods" => "Pod",
        "services" => "Service",
        "endpointslices" => "EndpointSlice",
        _ => return None,
    })
}

/// `apiVersion` for a group and version (`v1` for the core group).
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// A `kind: Status` failure answer, as the API server writes it.
pub fn failure(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

pub fn details(group: &str, resource: &str, name: &str) -> Value {
    json!({ "name": name, "group": group, "kind": resource })
}

pub fn not_found(group: &str, resource: &str, name: &str) -> Response {
    let what = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{what} \"{name}\" not found"),
        details(group, resource, name),
    )
}

pub fn already_exists(group: &str, resource: &str, name: &str) -> Response {
    failure(
        StatusCode::CONFLICT,
        "AlreadyExists",
        format!("{resource} \"{name}\" already exists"),
        details(group, resource, name),
    )
}

pub fn conflict(group: &str, resource: &str, name: &str) -> Response {
    failure(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        details(group, resource, name),
    )
}

pub fn invalid(group: &str, resource: &str, name: &str, why: String) -> Response {
    failure(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{resource} \"{name}\" is invalid: {why}"),
        details(group, resource, name),
    )
}

pub fn bad_request(why: String) -> Response {
    failure(StatusCode::BAD_REQUEST, "BadRequest", why, json!({}))
}

pub fn unavailable() -> Response {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the fake API server is down".into(),
        json!({}),
    )
}
