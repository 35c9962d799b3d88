//! The webhook's async shell: read the review, fetch the namespace, call the
//! pure [`mutate`](crate::mutate::mutate), answer. Also the HTTP routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Namespace;

use crate::config::InjectorConfig;
use crate::metrics::Metrics;
use crate::mutate::{Decision, MutateError, SkipReason, mutate, skip_reason};
use crate::review::{self, AdmissionReviewResponse, ReviewError};
use crate::settings::Annotations;

/// Largest request body accepted. The API server caps an object at about 1.5 MiB
/// in etcd (3 MiB per request); a review wraps at most two copies.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// A failed namespace lookup.
#[derive(Debug, thiserror::Error)]
#[error("reading namespace {namespace}: {reason}")]
pub struct LookupError {
    pub namespace: String,
    pub reason: String,
}

/// Boxed future returned by [`NamespaceLookup`].
pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Annotations, LookupError>> + Send + 'a>>;

/// Where the webhook reads a namespace's annotations; tests pass a map.
pub trait NamespaceLookup: Send + Sync + 'static {
    fn annotations<'a>(&'a self, namespace: &'a str) -> LookupFuture<'a>;
}

/// The real lookup: `GET /api/v1/namespaces/{name}`.
#[derive(Clone)]
pub struct KubeNamespaces(pub kube::Api<Namespace>);

impl std::fmt::Debug for KubeNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeNamespaces")
    }
}

impl NamespaceLookup for KubeNamespaces {
    fn annotations<'a>(&'a self, namespace: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            let ns = self.0.get(namespace).await.map_err(|e| LookupError {
                namespace: namespace.to_string(),
                reason: e.to_string(),
            })?;
            Ok(ns.metadata.annotations.unwrap_or_default())
        })
    }
}

/// A fixed map of namespace → annotations; unknown namespaces fail like a 404.
#[derive(Debug, Clone, Default)]
pub struct StaticNamespaces(pub std::collections::BTreeMap<String, Annotations>);

impl NamespaceLookup for StaticNamespaces {
    fn annotations<'a>(&'a self, namespace: &'a str) -> LookupFuture<'a> {
        let found = self.0.get(namespace).cloned().ok_or_else(|| LookupError {
            namespace: namespace.to_string(),
            reason: "not found".into(),
        });
        Box::pin(std::future::ready(found))
    }
}

/// What the webhook needs to answer.
#[derive(Clone)]
pub struct Webhook {
    pub config: Arc<InjectorConfig>,
    pub namespaces: Arc<dyn NamespaceLookup>,
    pub metrics: Arc<Metrics>,
    /// Set when the configuration cannot work on this cluster (see
    /// [`InjectorConfig::resolve_legacy_mode`]): every pod it would inject is
    /// refused with this message rather than created broken.
    pub refusal: Option<Arc<str>>,
    /// Whether the MutatingWebhookConfiguration that sends pods here exists
    /// (see [`watch_installed`]). Without it pods in labelled namespaces are
    /// created unmeshed, so `/readyz` fails and the install shows as not done.
    pub installed: Arc<AtomicBool>,
    /// Bound on each Kubernetes API call made while answering (the namespace
    /// read). Below the request timeout and the webhook's `timeoutSeconds`, so
    /// a hung read becomes a denial with a reason instead of the API server
    /// giving up on the webhook.
    pub api_timeout: std::time::Duration,
}

/// Default of [`Webhook::api_timeout`] (`--api-timeout`).
pub const DEFAULT_API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The answer to one POST: HTTP status and JSON or text body, plus its metric label.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Review(AdmissionReviewResponse, &'static str),
    BadRequest(String),
}

impl Webhook {
    /// Answers one request body. Never panics on input.
    pub async fn answer(&self, body: &[u8]) -> Answer {
        let request = match review::parse(body) {
            Ok(r) => r,
            Err((None, e)) => return Answer::BadRequest(e.to_string()),
            Err((Some(uid), e)) => {
                return Answer::Review(
                    AdmissionReviewResponse::deny(&uid, 400, e.to_string()),
                    "invalid",
                );
            }
        };
        let uid = request.uid.as_str();
        if !request.is_pod_create() {
            // Not ours to judge: the webhook configuration should not send these.
            return Answer::Review(AdmissionReviewResponse::allow(uid), "ignored");
        }
        let pod = match request.pod() {
            Ok(p) => p,
            Err(e) => {
                return Answer::Review(
                    AdmissionReviewResponse::deny(uid, 400, e.to_string()),
                    "invalid",
                );
            }
        };
        // Allowed without reading the namespace, except an opt-out, which a
        // namespace enforcing strict mode forbids (settings.rs).
        let skip = skip_reason(&pod);
        if let Some(reason) = skip.filter(|r| *r != SkipReason::OptedOut) {
            return Answer::Review(AdmissionReviewResponse::allow(uid), reason.label());
        }
        if let Some(refusal) = self.refusal.as_ref().filter(|_| skip.is_none()) {
            return Answer::Review(
                AdmissionReviewResponse::deny(uid, 400, refusal.to_string()),
                "misconfigured",
            );
        }
        let Some(namespace) = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .filter(|n| !n.is_empty())
        else {
            let e = ReviewError::BadRequest("no namespace in request or pod".into());
            return Answer::Review(
                AdmissionReviewResponse::deny(uid, 400, e.to_string()),
                "invalid",
            );
        };
        let lookup =
            tokio::time::timeout(self.api_timeout, self.namespaces.annotations(&namespace));
        let ns_annotations = match lookup.await.unwrap_or_else(|_| {
            Err(LookupError {
                namespace: namespace.clone(),
                reason: format!(
                    "no answer from the API server within {:?} (--api-timeout)",
                    self.api_timeout
                ),
            })
        }) {
            Ok(a) => a,
            Err(e) => {
                // Deny rather than guess: a namespace in strict mode must not get a
                // permissive proxy because the API server hiccupped. The pod's
                // controller retries the create.
                tracing::warn!(%namespace, error = %e, "namespace lookup failed");
                return Answer::Review(
                    AdmissionReviewResponse::deny(uid, 503, e.to_string()),
                    "error",
                );
            }
        };
        match mutate(&pod, &ns_annotations, &self.config) {
            Ok(Decision::Skip(reason)) => {
                Answer::Review(AdmissionReviewResponse::allow(uid), reason.label())
            }
            Ok(Decision::Inject(patch)) => match AdmissionReviewResponse::patch(uid, &patch) {
                Ok(r) => Answer::Review(r, "injected"),
                Err(e) => Answer::Review(
                    AdmissionReviewResponse::deny(uid, 500, e.to_string()),
                    "error",
                ),
            },
            Err(e @ MutateError::Serialize(_)) => Answer::Review(
                AdmissionReviewResponse::deny(uid, 500, e.to_string()),
                "error",
            ),
            Err(e) => Answer::Review(
                AdmissionReviewResponse::deny(uid, 400, e.to_string()),
                "denied",
            ),
        }
    }

    /// The HTTP routes: `POST /mutate`, `GET /healthz` (liveness), `GET
    /// /readyz` (the webhook configuration exists), `GET /metrics`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/mutate", post(mutate_handler))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz_handler))
            .route("/metrics", get(metrics_handler))
            .with_state(self)
    }
}

async fn mutate_handler(State(hook): State<Webhook>, headers: HeaderMap, body: Body) -> Response {
    let body = match meshlite_https::read_limited(&headers, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            // No review can be read, so no uid to answer; JSON all the same,
            // so the API server logs a reason rather than a bare status.
            let (status, outcome) = match e {
                meshlite_https::BodyError::TooLarge(_) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
                }
                meshlite_https::BodyError::Read(_) => (StatusCode::BAD_REQUEST, "unreadable"),
            };
            hook.metrics.review(outcome);
            tracing::warn!(outcome, error = %e, "refused an admission request");
            let body = meshlite_contract::api::ErrorBody {
                error: outcome.to_string(),
                message: e.to_string(),
            };
            return (status, axum::Json(body)).into_response();
        }
    };
    let answer = hook.answer(&body).await;
    match answer {
        Answer::Review(review, label) => {
            hook.metrics.review(label);
            match serde_json::to_vec(&review) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        Answer::BadRequest(msg) => {
            hook.metrics.review("unreadable");
            (StatusCode::BAD_REQUEST, msg).into_response()
        }
    }
}

async fn readyz_handler(State(hook): State<Webhook>) -> Response {
    if hook.installed.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, NOT_INSTALLED).into_response()
    }
}

/// Why the injector is not ready while its webhook configuration is missing.
pub const NOT_INSTALLED: &str = concat!(
    "MutatingWebhookConfiguration meshlite-injector does not exist, so pods in labelled ",
    "namespaces are created without the proxy: the install is incomplete; re-run ",
    "`kubectl apply -k deploy/` and read its errors"
);

/// Keeps `installed` current: every `every`, whether the webhook
/// configuration exists. A failed read keeps the last answer (false at start).
pub async fn watch_installed(
    client: kube::Client,
    installed: Arc<AtomicBool>,
    every: std::time::Duration,
) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api = kube::Api::<MutatingWebhookConfiguration>::all(client);
    loop {
        match api.get_opt(meshlite_contract::WEBHOOK_CONFIGURATION).await {
            Ok(found) => {
                let now = found.is_some();
                if installed.swap(now, Ordering::Relaxed) != now || !now {
                    if now {
                        tracing::info!("webhook configuration present; ready");
                    } else {
                        tracing::error!("{NOT_INSTALLED}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the webhook configuration; keeping the last answer")
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn metrics_handler(State(hook): State<Webhook>) -> Response {
    match hook.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
