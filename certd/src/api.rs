//! The HTTP API: `POST /v1/certificates`, `POST /v1/naming`, `/healthz`,
//! `/readyz`, `/metrics`.
//!
//! One handler for both modes. It reads the request, asks the
//! [`TokenReviewer`] who is calling, validates the CSR against that identity,
//! and hands it to the [`SigningBackend`]. Every refusal is a JSON
//! [`ErrorBody`](meshlite_contract::api::ErrorBody), logged and counted by reason;
//! every certificate request is also timed by [`Issuance`] class, and every
//! failed token review counted by reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use meshlite_contract::api::{CertificateRequest, CertificateResponse};
use meshlite_contract::identity::TrustDomain;
use meshlite_contract::naming::{NamingRequest, NamingResponse};
use meshlite_contract::{CERTIFICATES_PATH, NAMING_PATH};
use serde::de::DeserializeOwned;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use crate::ApiError;
use crate::csr;
use crate::identity::Caller;
use crate::metrics::{Issuance, Metrics};
use crate::naming::NamingSource;
use crate::review::{ReviewCache, TokenReviewer};
use crate::signer::{SignRequest, SigningBackend};

/// Largest request body read; a CSR request is about 1 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub reviewer: Arc<dyn TokenReviewer>,
    pub signer: Arc<dyn SigningBackend>,
    /// Who may answer at an address (secure naming).
    pub naming: Arc<dyn NamingSource>,
    /// Tokens recently reviewed for naming requests.
    pub naming_reviews: ReviewCache,
    pub metrics: Arc<Metrics>,
    pub trust_domain: TrustDomain,
    /// False until the CA is loaded; `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
    /// Bound on the review and signing of one request (`None`: unbounded, for
    /// the in-process backends that cannot hang).
    pub deadline: Option<Duration>,
}

/// The router for both modes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(CERTIFICATES_PATH, post(issue))
        .route(NAMING_PATH, post(naming))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { plain_error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .method_not_allowed_fallback(|| async {
            plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST for /v1/certificates and /v1/naming, and GET for the others",
            )
        })
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn issue(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let arrived = std::time::Instant::now();
    let answer = handle(&s, &headers, body).await;
    let result = answer
        .as_ref()
        .map_or_else(ApiError::issuance, |_| Issuance::Issued);
    s.metrics.issuance(result, arrived.elapsed());
    match answer {
        Ok(answer) => {
            s.metrics.request("issued");
            tracing::info!(identity = %answer.spiffe_id, not_after = %answer.not_after, "issued");
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Err(e) => {
            s.metrics.request(e.label());
            tracing::warn!(reason = e.label(), error = %e, "refused");
            error_response(&e)
        }
    }
}

async fn naming(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match handle_naming(&s, &headers, body).await {
        Ok((req, answer)) => {
            s.metrics.naming(answer.meshed.as_str());
            tracing::debug!(addr = %req.addr, meshed = answer.meshed.as_str(), identities = answer.identities.len(), "naming answered");
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Err(e) => {
            s.metrics.naming(e.label());
            tracing::warn!(reason = e.label(), error = %e, "naming request refused");
            error_response(&e)
        }
    }
}

/// Only a workload with a valid token (the projected token of an injected
/// pod, audience meshlite-certd) may ask: the answers describe the mesh. A
/// token reviewed in the last minute is not reviewed again ([`ReviewCache`]).
async fn handle_naming(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(NamingRequest, NamingResponse), ApiError> {
    let token = bearer(headers)?;
    let bytes = read_body(headers, body).await?;
    let request: NamingRequest = parse_request(&bytes)?;
    if !s.naming_reviews.fresh(token, std::time::Instant::now()) {
        review(s, token, Instant::now()).await?;
        s.naming_reviews.remember(token, std::time::Instant::now());
    }
    let answer = s.naming.answer(request.addr).ok_or_else(|| {
        ApiError::Unavailable("secure naming has not listed the cluster yet".into())
    })?;
    Ok((request, answer))
}

/// A JSON ErrorBody for answers that are not certificate refusals.
fn plain_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = meshlite_contract::api::ErrorBody {
        error: error.to_string(),
        message: message.to_string(),
    };
    (status, axum::Json(body)).into_response()
}

/// The HTTP answer for a refusal: status, JSON body, and `Retry-After` on 503.
pub fn error_response(e: &ApiError) -> Response {
    let mut resp = (e.status(), axum::Json(e.body())).into_response();
    if let Some(after) = e.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
    }
    resp
}

/// The refusal when the Kubernetes API calls of one request outlast `limit`.
fn over_budget(limit: Duration) -> ApiError {
    ApiError::Unavailable(format!(
        "no answer from the Kubernetes API within {limit:?}"
    ))
}

/// Reviews `token` within what is left of the request's budget (which began
/// at `started`), counting every failure by reason; `timeout` means the
/// budget ran out before the reviewer answered.
async fn review(s: &AppState, token: &str, started: Instant) -> Result<Caller, ApiError> {
    let review = s.reviewer.review(token);
    let answer = match s.deadline {
        Some(limit) => match tokio::time::timeout_at(started + limit, review).await {
            Ok(answer) => answer,
            Err(_) => {
                s.metrics.tokenreview_failure("timeout");
                return Err(over_budget(limit));
            }
        },
        None => review.await,
    };
    if let Err(e) = &answer {
        s.metrics.tokenreview_failure(e.label());
    }
    answer
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::MissingToken)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(ApiError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    Ok(token)
}

/// Reads a JSON request body, a [`CertificateRequest`] or a [`NamingRequest`].
/// Apart from the handlers so that it can be fuzzed on its own (`fuzz/`).
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedRequest(e.to_string()))
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    meshlite_https::read_limited(headers, body, MAX_BODY)
        .await
        .map_err(|e| match e {
            meshlite_https::BodyError::TooLarge(limit) => ApiError::TooLarge(limit),
            e @ meshlite_https::BodyError::Read(_) => ApiError::MalformedRequest(e.to_string()),
        })
}

async fn handle(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<CertificateResponse, ApiError> {
    // Cheap checks first, so junk never costs a TokenReview.
    let token = bearer(headers)?;
    let bytes = read_body(headers, body).await?;
    let request: CertificateRequest = parse_request(&bytes)?;
    let started = Instant::now();
    let work = async {
        let caller = review(s, token, started).await?;
        if caller.id.trust_domain() != &s.trust_domain {
            return Err(ApiError::Internal(
                "reviewer used another trust domain".into(),
            ));
        }
        let csr = csr::validate(&request.csr, &caller.id)?;
        let req = SignRequest { caller, csr };
        let issued = s.signer.sign(&req).await?;
        Ok((req, issued))
    };
    let (req, issued) = match s.deadline {
        // The Kubernetes client retries 429/503 with backoff for a long time;
        // the proxy is better served by a prompt 503 and its own retry.
        Some(limit) => tokio::time::timeout_at(started + limit, work)
            .await
            .map_err(|_| over_budget(limit))??,
        None => work.await?,
    };
    let not_after = issued
        .not_after
        .format(&Rfc3339)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(CertificateResponse {
        spiffe_id: req.caller.id.to_uri(),
        certificate_chain: issued.chain_pem,
        trust_bundle: s.signer.trust_bundle(),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn the_bearer_token_is_taken_from_the_authorization_header_only() {
        assert_eq!(bearer(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(&headers("Basic abc")), Err(ApiError::MissingToken));
        assert_eq!(bearer(&headers("Bearer ")), Err(ApiError::MissingToken));
        assert_eq!(bearer(&HeaderMap::new()), Err(ApiError::MissingToken));
    }

    #[test]
    fn a_request_body_that_is_not_the_json_shape_is_malformed() {
        let ok: CertificateRequest = parse_request(br#"{"csr":"x"}"#).unwrap();
        assert_eq!(ok.csr, "x");
        for junk in [&b""[..], b"{", b"{\"csr\":1}", b"[]", b"\xff"] {
            let got = parse_request::<CertificateRequest>(junk);
            assert!(matches!(got, Err(ApiError::MalformedRequest(_))), "{got:?}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_even_without_a_content_length() {
        let big = Body::from(vec![b'x'; MAX_BODY + 1]);
        assert_eq!(
            read_body(&HeaderMap::new(), big).await,
            Err(ApiError::TooLarge(MAX_BODY))
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(MAX_BODY as u64 + 1),
        );
        assert_eq!(
            read_body(&h, Body::empty()).await,
            Err(ApiError::TooLarge(MAX_BODY))
        );
    }

    #[test]
    fn a_503_carries_retry_after_and_a_json_body() {
        let resp = error_response(&ApiError::Unavailable("down".into()));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
