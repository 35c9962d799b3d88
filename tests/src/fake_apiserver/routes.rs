//! Request routing: turns a REST path and method into a store operation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::special;
use super::status::{self, api_version, kind_of};
use super::store::{Key, matches_fields, matches_labels, rv_of};
use super::{Recorded, Shared, lock};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// A parsed request path.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn key(&self, name: &str) -> Key {
        Key {
            group: self.group.clone(),
            version: self.version.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            name: name.to_string(),
        }
    }
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, more @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*r];
            v.extend_from_slice(more);
            v
        }),
        other => (None, other.to_vec()),
    };
    let resource = rest.first()?.to_string();
    Some(Target {
        group: group.into(),
        version: version.into(),
        namespace,
        resource,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return status::unavailable();
    }
    let Some(target) = parse_path(uri.path()) else {
        return status::failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
            json!({}),
        );
    };
    let q = query(&uri);
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => {
            return status::failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", uri.path()),
                json!({}),
            );
        }
    };
    // A create names its object in the body; record that name so tests can
    // tell creates apart (RBAC still cannot restrict a create by name).
    let name = match verb {
        "create" => serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
            b.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        }),
        _ => target.name.clone(),
    };
    lock(&shared.requests).push(Recorded {
        verb: verb.into(),
        group: target.group.clone(),
        resource: target.resource.clone(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name,
    });
    if take_conflict(&shared, verb, &target) {
        return status::conflict(
            &target.group,
            &target.resource,
            target.name.as_deref().unwrap_or(""),
        );
    }
    let Some(kind) = kind_of(&target.resource) else {
        return status::not_found(
            &target.group,
            &target.resource,
            target.name.as_deref().unwrap_or(""),
        );
    };
    let name = target.name.clone().unwrap_or_default();
    // `None` when the body is not a JSON object (answered 400 below).
    let parsed = || -> Option<Value> {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
    };
    let not_object = || status::bad_request("the body is not a JSON object".into());
    match verb {
        "watch" => super::watch::watch_response(&shared, &target, &q),
        "list" => list(&shared, &target, kind, &q),
        "get" => match lock(&shared.store).objects.get(&target.key(&name)) {
            Some(obj) => (StatusCode::OK, axum::Json(obj.clone())).into_response(),
            None => status::not_found(&target.group, &target.resource, &name),
        },
        "create" => match parsed() {
            None => not_object(),
            Some(obj) if target.resource == "tokenreviews" => special::token_review(&shared, obj),
            Some(obj) => create(&shared, &target, kind, obj),
        },
        "update" => match parsed() {
            None => not_object(),
            Some(obj) => update(&shared, &target, &name, obj),
        },
        "patch" => patch(&shared, &target, &name, &headers, &body),
        _ => delete(&shared, &target, &name),
    }
}

/// Consumes one injected conflict matching this request, if any.
fn take_conflict(shared: &Shared, verb: &str, target: &Target) -> bool {
    let mut conflicts = lock(&shared.conflicts);
    let hit = conflicts.iter_mut().find(|c| {
        c.left > 0
            && c.verb == verb
            && c.resource == target.resource
            && c.subresource == target.subresource
    });
    match hit {
        Some(c) => {
            c.left -= 1;
            true
        }
        None => false,
    }
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn create(shared: &Shared, target: &Target, kind: &str, mut obj: Value) -> Response {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if meta.get("resourceVersion").is_some_and(|v| !v.is_null()) {
        return status::invalid(
            &target.group,
            &target.resource,
            "",
            "metadata.resourceVersion: Invalid value: resourceVersion should not be set on objects to be created".into(),
        );
    }
    let name = match (
        meta.get("name").and_then(Value::as_str),
        meta.get("generateName").and_then(Value::as_str),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
        _ => {
            return status::invalid(
                &target.group,
                &target.resource,
                "",
                "metadata.name: Required value: name or generateName is required".into(),
            );
        }
    };
    if let Err(why) = special::validate_create(target, &mut obj) {
        return status::invalid(&target.group, &target.resource, &name, why);
    }
    let key = target.key(&name);
    let mut store = lock(&shared.store);
    if store.objects.contains_key(&key) {
        return status::already_exists(&target.group, &target.resource, &name);
    }
    obj["apiVersion"] = json!(api_version(&target.group, &target.version));
    obj["kind"] = json!(kind);
    let m = &mut obj["metadata"];
    if !m.is_object() {
        *m = json!({});
    }
    m["name"] = json!(name);
    if let Some(ns) = &target.namespace {
        m["namespace"] = json!(ns);
    }
    m["uid"] = json!(format!("{:032x}", rand::random::<u128>()));
    m["creationTimestamp"] = json!(now());
    let stored = store.put(key, obj, "ADDED");
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

fn list(shared: &Shared, target: &Target, kind: &str, q: &HashMap<String, String>) -> Response {
    let store = lock(&shared.store);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, v)| in_scope(target, k) && selected(v, q))
        .map(|(_, v)| v.clone())
        .collect();
    let body = json!({
        "apiVersion": api_version(&target.group, &target.version),
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": store.rv.to_string() },
        "items": items,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub(crate) fn in_scope(target: &Target, key: &Key) -> bool {
    key.group == target.group
        && key.resource == target.resource
        && (target.namespace.is_none() || key.namespace == target.namespace)
}

pub(crate) fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| matches_labels(obj, s))
        && q.get("fieldSelector")
            .is_none_or(|s| matches_fields(obj, s))
}

fn update(shared: &Arc<Shared>, target: &Target, name: &str, mut obj: Value) -> Response {
    let key = target.key(name);
    let mut store = lock(&shared.store);
    let Some(existing) = store.objects.get(&key).cloned() else {
        return status::not_found(&target.group, &target.resource, name);
    };
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return status::bad_request("the name in the body does not match the URL".into());
    }
    // Optimistic concurrency: a stated resourceVersion must be the current one.
    let stated = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if stated.is_some_and(|rv| rv.parse::<u64>().ok() != Some(rv_of(&existing))) {
        return status::conflict(&target.group, &target.resource, name);
    }
    let new = match target.subresource.as_deref() {
        None => {
            // The main resource never changes status; identity fields are the server's.
            if let Some(s) = existing.get("status") {
                obj["status"] = s.clone();
            }
            for field in ["uid", "creationTimestamp", "namespace", "name"] {
                if let Some(v) = existing["metadata"].get(field) {
                    obj["metadata"][field] = v.clone();
                }
            }
            obj["apiVersion"] = existing["apiVersion"].clone();
            obj["kind"] = existing["kind"].clone();
            Ok(obj)
        }
        Some("status") => special::status_update(target, existing, &obj),
        Some("approval") if target.resource == "certificatesigningrequests" => {
            special::approval_update(existing, &obj)
        }
        Some(other) => Err(format!("subresource {other} is not supported")),
    };
    let new = match new {
        Ok(n) => n,
        Err(why) => return status::invalid(&target.group, &target.resource, name, why),
    };
    let stored = store.put(key.clone(), new, "MODIFIED");
    drop(store);
    if target.resource == "certificatesigningrequests" {
        special::run_external_signer(shared.clone(), key);
    }
    (StatusCode::OK, axum::Json(stored)).into_response()
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let key = target.key(name);
    let mut store = lock(&shared.store);
    let Some(existing) = store.objects.get(&key).cloned() else {
        return status::not_found(&target.group, &target.resource, name);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut doc = existing.clone();
    let applied = if content_type.starts_with("application/json-patch+json") {
        // As kube-apiserver: an undecodable patch is 400, one that does not
        // apply (including a failed `test`) is 422.
        let Ok(p) = serde_json::from_slice::<json_patch::Patch>(body) else {
            return status::bad_request("invalid JSON patch".into());
        };
        json_patch::patch(&mut doc, &p).map_err(|e| e.to_string())
    } else if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json")
    {
        // Strategic merge is treated as a plain merge: enough for maps, not for keyed lists.
        let Ok(p) = serde_json::from_slice::<Value>(body) else {
            return status::bad_request("invalid merge patch".into());
        };
        json_patch::merge(&mut doc, &p);
        Ok(())
    } else {
        return status::failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({content_type})"
            ),
            json!({}),
        );
    };
    if let Err(why) = applied {
        return status::invalid(&target.group, &target.resource, name, why);
    }
    doc["metadata"]["name"] = existing["metadata"]["name"].clone();
    let stored = store.put(key, doc, "MODIFIED");
    (StatusCode::OK, axum::Json(stored)).into_response()
}

fn delete(shared: &Shared, target: &Target, name: &str) -> Response {
    match lock(&shared.store).remove(&target.key(name)) {
        None => status::not_found(&target.group, &target.resource, name),
        Some(obj) => {
            let body = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": target.group,
                    "kind": target.resource,
                    "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}
