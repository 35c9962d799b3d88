//! The admin server (port 15020): `/live`, `/ready`, `/metrics`, `/shutdown`,
//! and the application's rewritten probes under `/app-health/`.
//!
//! `/ready` is true only while the proxy holds a valid workload certificate and
//! is not draining. `/shutdown` (POST) starts a graceful shutdown: that is how a
//! Job's last container ends the proxy in legacy (non-native-sidecar) mode.

use crate::probe::AppProbes;
use crate::proxy::Ctx;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the proxy should receive traffic.
pub(crate) fn ready(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.draining.load(Ordering::SeqCst) {
        return Err("draining");
    }
    if ctx.creds.current().is_none() {
        return Err("no valid workload certificate");
    }
    Ok(())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

async fn route(
    req: Request<Incoming>,
    ctx: &Ctx,
    probes: &AppProbes,
    shutdown: &CancellationToken,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => match ready(ctx) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, ctx.metrics.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, "/shutdown") => {
            tracing::info!("shutdown requested through the admin port");
            shutdown.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (&Method::GET, p) if p.starts_with(meshlite_contract::APP_HEALTH_PREFIX) => {
            match probes.check(p).await {
                Some((status, body)) => text(status, body),
                None => text(StatusCode::NOT_FOUND, "no such probe\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin API until `shutdown` is cancelled by the proxy.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let probes = match ctx.config.app_probes.as_deref().map(AppProbes::parse) {
        None => AppProbes::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            tracing::error!(error = %e, "invalid application probe config; app probes will answer 404");
            AppProbes::default()
        }
    };
    let probes = Arc::new(probes);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let probes = probes.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let probes = probes.clone();
                let shutdown = shutdown.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(route(req, &ctx, &probes, &shutdown).await)
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}
