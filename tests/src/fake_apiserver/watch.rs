//! `?watch=true`: a stream of JSON-lines WatchEvents from a resourceVersion,
//! ending after `timeoutSeconds` (or when the watcher falls too far behind,
//! which a real server reports as 410 Gone; either way the client re-reads).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::routes::{Target, in_scope, selected};
use super::{Shared, lock};

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": obj })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub(crate) fn watch_response(
    shared: &Shared,
    target: &Target,
    q: &HashMap<String, String>,
) -> Response {
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let target = target.clone();
    let q = q.clone();
    // Under the lock: the backlog and the subscription see the same history.
    let (backlog, rx, last) = {
        let store = lock(&shared.store);
        let backlog: VecDeque<Bytes> = if from.is_empty() || from == "0" {
            store
                .objects
                .iter()
                .filter(|(k, v)| in_scope(&target, k) && selected(v, &q))
                .map(|(_, v)| watch_line("ADDED", v))
                .collect()
        } else {
            let from: u64 = from.parse().unwrap_or(0);
            store
                .history
                .iter()
                .filter(|e| e.rv > from && in_scope(&target, &e.key) && selected(&e.object, &q))
                .map(|e| watch_line(e.kind, &e.object))
                .collect()
        };
        (backlog, store.events.subscribe(), store.rv)
    };
    let stream = futures::stream::unfold(
        (backlog, rx, last),
        move |(mut backlog, mut rx, mut last)| {
            let target = target.clone();
            let q = q.clone();
            async move {
                if let Some(line) = backlog.pop_front() {
                    return Some((Ok::<_, std::convert::Infallible>(line), (backlog, rx, last)));
                }
                loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Ok(e)) => {
                            if e.rv > last && in_scope(&target, &e.key) && selected(&e.object, &q) {
                                last = e.rv;
                                return Some((
                                    Ok(watch_line(e.kind, &e.object)),
                                    (backlog, rx, last),
                                ));
                            }
                        }
                        // Lagged or timed out: the stream ends; the watcher re-lists or re-watches.
                        Ok(Err(_)) | Err(_) => return None,
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
