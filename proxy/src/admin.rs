//! The admin server (port 15020): `/live`, `/ready`, `/metrics`, `/identity`
//! (the certificate presented now and the roots trusted, as JSON),
//! `/shutdown`, and the application's rewritten probes under `/app-health/`.
//!
//! `/ready` is true only while the proxy holds a valid workload certificate and
//! is not draining. `/shutdown` (POST) starts a graceful shutdown: that is how a
//! Job's last container ends the proxy in legacy (non-native-sidecar) mode.
//!
//! Who can reach what: the port listens on every address and is exempt from
//! the redirect, so anyone who can reach the pod can read `/live`, `/ready`,
//! `/metrics` and the `/app-health/` probes (the kubelet probes from the
//! node). Anything else, `/shutdown` and any future state-changing request,
//! is answered only for a peer on loopback, which in the pod's network
//! namespace means a container of the pod; others get 403, logged and counted
//! as `meshlite_admin_refusals_total{reason="not_loopback"}`.
//!
//! The server runs under its own [`Gate`] (header-read and request timeouts,
//! a connection cap): shedding admin clients never touches the data plane.

use crate::probe::AppProbes;
use crate::proxy::Ctx;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use meshlite_https::Gate;
use std::net::SocketAddr;
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

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = text(status, body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `GET /identity`: the certificate the proxy presents now and the roots it
/// trusts, all public.
fn identity(configs: &crate::tls::TlsConfigs) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf = configs.chain.first().ok_or("the chain is empty")?;
    let (_, x509) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the leaf does not parse: {e}"))?;
    let serial: String = x509
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pems = |certs: &[rustls::pki_types::CertificateDer<'static>]| -> String {
        certs.iter().map(|c| pem("CERTIFICATE", c)).collect()
    };
    let body = meshlite_contract::api::ProxyIdentity {
        spiffe_id: configs.identity.to_uri(),
        serial,
        issuer: x509.issuer().to_string(),
        not_before: rfc3339(configs.not_before),
        not_after: rfc3339(configs.not_after),
        certificate_chain: pems(&configs.chain),
        trust_bundle: pems(&configs.roots),
    };
    serde_json::to_string_pretty(&body).map_err(|e| e.to_string())
}

/// Whether a request may be served to `peer`: reading is open to everyone,
/// anything else only to the pod itself.
fn allowed(method: &Method, peer: SocketAddr) -> bool {
    matches!(*method, Method::GET | Method::HEAD) || peer.ip().to_canonical().is_loopback()
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: &Ctx,
    probes: &AppProbes,
    shutdown: &CancellationToken,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !allowed(req.method(), peer) {
        ctx.metrics.admin_refusals.inc("not_loopback");
        tracing::warn!(%peer, method = %req.method(), path, reason = "not_loopback",
            "refused an admin request that changes state from outside the pod");
        return text(
            StatusCode::FORBIDDEN,
            "only GET and HEAD are served to peers outside the pod\n",
        );
    }
    // HEAD is answered like GET; hyper sends the headers without the body.
    let method = if req.method() == Method::HEAD {
        &Method::GET
    } else {
        req.method()
    };
    match (method, path) {
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
        (&Method::GET, meshlite_contract::api::PROXY_IDENTITY_PATH) => match ctx.creds.current() {
            Some(configs) => match identity(&configs) {
                Ok(body) => json(StatusCode::OK, body),
                Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
            },
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no valid workload certificate\n",
            ),
        },
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
    let gate = Gate::new(ctx.config.admin_limits, ctx.metrics.admin_refusals.clone());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((tcp, slot)) = gate.admit(tcp, peer) else {
            continue;
        };
        let ctx = ctx.clone();
        let probes = probes.clone();
        let shutdown = shutdown.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let probes = probes.clone();
                let shutdown = shutdown.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        route(req, peer, &ctx, &probes, &shutdown).await,
                    )
                }
            });
            gate.serve_http1(tcp, peer, svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_served_to_peers_outside_the_pod() {
        let outside: SocketAddr = ([10, 0, 0, 7], 40000).into();
        let inside: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().expect("static address");
        assert!(allowed(&Method::GET, outside));
        assert!(allowed(&Method::HEAD, outside));
        assert!(!allowed(&Method::POST, outside));
        assert!(!allowed(&Method::PUT, outside));
        assert!(allowed(&Method::POST, inside));
        assert!(allowed(&Method::POST, mapped));
        assert!(allowed(
            &Method::POST,
            "[::1]:1".parse().expect("static address")
        ));
    }
}
