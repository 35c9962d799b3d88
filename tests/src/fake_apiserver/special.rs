//! Resource-specific behaviour: CSR validation and subresources, the external
//! signer, and TokenReview.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::routes::Target;
use super::store::Key;
use super::{ExternalSigner, Shared, lock};

const CSR: &str = "certificatesigningrequests";
/// What the API server reports for a token reviewed without audiences.
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn decode_b64(v: Option<&Value>) -> Option<Vec<u8>> {
    STANDARD.decode(v?.as_str()?).ok()
}

/// Create-time validation, mirroring the API server's for CSRs; status is
/// dropped on create, as the real server does.
pub(crate) fn validate_create(target: &Target, obj: &mut Value) -> Result<(), String> {
    // As kube-apiserver's create strategies: a Pod's or Service's status is the
    // server's (the kubelet, the controllers), written through `/status`.
    if matches!(target.resource.as_str(), "pods" | "services") {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
        return Ok(());
    }
    if target.resource != CSR {
        return Ok(());
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    let spec = obj.get("spec").ok_or("spec: Required value")?;
    let request = decode_b64(spec.get("request")).ok_or("spec.request: Required value")?;
    if !String::from_utf8_lossy(&request).contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(
            "spec.request: Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST"
                .into(),
        );
    }
    let signer = spec
        .get("signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer
        .split_once('/')
        .is_none_or(|(d, p)| d.is_empty() || p.is_empty())
    {
        return Err(format!(
            "spec.signerName: Invalid value: {signer:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'"
        ));
    }
    if let Some(secs) = spec.get("expirationSeconds").and_then(Value::as_i64)
        && secs < 600
    {
        {
            return Err(format!(
                "spec.expirationSeconds: Invalid value: {secs}: may not specify a duration less than 600 seconds (10 minutes)"
            ));
        }
    }
    for usage in spec
        .get("usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let u = usage.as_str().unwrap_or_default();
        if !KNOWN_USAGES.contains(&u) {
            return Err(format!("spec.usages: Unsupported value: {u:?}"));
        }
    }
    // The API server records who asked; certd's tests only need it to be set.
    obj["spec"]["username"] = json!("system:serviceaccount:meshlite-system:meshlite-certd");
    Ok(())
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_approval_type(c: &Value) -> bool {
    matches!(
        c.get("type").and_then(Value::as_str),
        Some("Approved" | "Denied")
    )
}

fn has_true(conds: &[Value], kind: &str) -> bool {
    conds
        .iter()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// `/status`: everything in status may change except the Approved/Denied
/// conditions, which only `/approval` writes; a certificate needs approval.
pub(crate) fn status_update(
    target: &Target,
    existing: Value,
    body: &Value,
) -> Result<Value, String> {
    let mut new = existing.clone();
    let mut status = body.get("status").cloned().unwrap_or_else(|| json!({}));
    if target.resource == CSR {
        let kept: Vec<Value> = conditions(&existing)
            .into_iter()
            .filter(is_approval_type)
            .collect();
        let mut conds: Vec<Value> = conditions(body)
            .into_iter()
            .filter(|c| !is_approval_type(c))
            .collect();
        conds.extend(kept);
        let approved = has_true(&conds, "Approved");
        let cert = status.get("certificate").cloned();
        if let Some(cert) = &cert {
            let pem =
                decode_b64(Some(cert)).ok_or("status.certificate: Invalid value: not base64")?;
            if !pem.is_empty() {
                if !approved {
                    return Err("status.certificate: Forbidden: certificate can only be set on approved requests".into());
                }
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err("status.certificate: Invalid value: must contain at least one CERTIFICATE PEM block".into());
                }
                let old = existing.pointer("/status/certificate");
                if old.is_some_and(|o| o != cert && o.as_str() != Some("")) {
                    return Err("status.certificate: Forbidden: updates may not modify existing certificate content".into());
                }
            }
        }
        status["conditions"] = Value::Array(conds);
    }
    new["status"] = status;
    Ok(new)
}

/// `/approval`: only the Approved/Denied conditions change.
pub(crate) fn approval_update(existing: Value, body: &Value) -> Result<Value, String> {
    let mut conds: Vec<Value> = conditions(&existing)
        .into_iter()
        .filter(|c| !is_approval_type(c))
        .collect();
    let approvals: Vec<Value> = conditions(body)
        .into_iter()
        .filter(is_approval_type)
        .collect();
    if has_true(&approvals, "Approved") && has_true(&approvals, "Denied") {
        return Err("status.conditions: Invalid value: Approved and Denied conditions are mutually exclusive".into());
    }
    for c in &approvals {
        if c.get("status").and_then(Value::as_str) != Some("True") {
            return Err("status.conditions[].status: Unsupported value: Approved and Denied conditions must be True".into());
        }
    }
    conds.extend(approvals);
    let mut new = existing;
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = json!({});
    }
    new["status"]["conditions"] = Value::Array(conds);
    Ok(new)
}

/// Lets the external signer for the CSR's signerName act on it, shortly after
/// the write that made it approved (a real signer is another process).
pub(crate) fn run_external_signer(shared: Arc<Shared>, key: Key) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut store = lock(&shared.store);
        let Some(obj) = store.objects.get(&key).cloned() else {
            return;
        };
        let signer_name = obj
            .pointer("/spec/signerName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(signer) = lock(&shared.signers).get(signer_name).cloned() else {
            return;
        };
        let conds = conditions(&obj);
        let has_cert = obj
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty());
        if !has_true(&conds, "Approved") || has_true(&conds, "Failed") || has_cert {
            return;
        }
        let failed = |message: String| {
            let mut new = obj.clone();
            let mut conds = conds.clone();
            conds.push(json!({
                "type": "Failed", "status": "True", "reason": "SignerFailed", "message": message,
            }));
            new["status"]["conditions"] = Value::Array(conds);
            new
        };
        let new = match signer {
            ExternalSigner::Never => return,
            ExternalSigner::Fail(message) => failed(message),
            ExternalSigner::Sign(sign) => {
                let request = decode_b64(obj.pointer("/spec/request")).unwrap_or_default();
                match sign(&String::from_utf8_lossy(&request)) {
                    Ok(chain) => {
                        let mut new = obj.clone();
                        new["status"]["certificate"] = json!(STANDARD.encode(chain));
                        new
                    }
                    Err(message) => failed(message),
                }
            }
        };
        store.put(key, new, "MODIFIED");
    });
}

/// `authentication.k8s.io/v1` TokenReview, with the documented audience rules:
/// the answer's audiences are the intersection of the requested ones and the
/// token's; none requested means the API server's own audience.
pub(crate) fn token_review(shared: &Shared, mut review: Value) -> Response {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let requested: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_SERVER_AUDIENCE.to_string()]);
    let entry = lock(&shared.tokens).get(&token).cloned();
    let status = match entry {
        None => {
            json!({ "authenticated": false, "error": "[invalid bearer token, token lookup failed]" })
        }
        Some(e) if e.expired => json!({
            "authenticated": false,
            "error": "[invalid bearer token, service account token has expired]",
        }),
        Some(e) => {
            let common: Vec<&String> = requested
                .iter()
                .filter(|a| e.audiences.contains(a))
                .collect();
            if common.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", e.audiences, requested),
                })
            } else {
                let mut groups = vec!["system:authenticated".to_string()];
                let mut extra = json!({});
                if let Some(ns) = e
                    .username
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|r| r.split(':').next())
                {
                    groups.push("system:serviceaccounts".into());
                    groups.push(format!("system:serviceaccounts:{ns}"));
                }
                if let Some(pod) = &e.pod {
                    extra["authentication.kubernetes.io/pod-name"] = json!([pod]);
                    extra["authentication.kubernetes.io/pod-uid"] =
                        json!(["00000000-0000-0000-0000-000000000001"]);
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": e.username,
                        "uid": "00000000-0000-0000-0000-0000000000aa",
                        "groups": groups,
                        "extra": extra,
                    },
                    "audiences": common,
                })
            }
        }
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    review["metadata"] = json!({ "creationTimestamp": null });
    review["status"] = status;
    (StatusCode::CREATED, axum::Json(review)).into_response()
}
