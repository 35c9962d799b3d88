//! The webhook over real HTTPS on loopback: TLS with a generated certificate,
//! the three routes, the body limit, and certificate reload.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshlite_injector::InjectorConfig;
use meshlite_injector::tls::ReloadingCert;
use meshlite_injector::webhook::MAX_BODY_BYTES;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;

struct Server {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    cert: Arc<ReloadingCert>,
    dir: tempfile::TempDir,
}

fn write_cert(dir: &std::path::Path) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

async fn start() -> Server {
    start_with(webhook(InjectorConfig::default())).await
}

async fn start_with(hook: meshlite_injector::Webhook) -> Server {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let der = write_cert(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let cert = ReloadingCert::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let tls = cert.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = hook.router();
    tokio::spawn(meshlite_https::serve(
        listener,
        tls,
        router,
        std::future::pending(),
    ));
    Server {
        addr,
        roots,
        cert,
        dir,
    }
}

/// One HTTPS request; returns status and body.
async fn request(
    server: &Server,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(server.roots.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

#[tokio::test]
async fn mutate_over_https_returns_a_patch_review() {
    let server = start().await;
    let body = std::fs::read(fixture_path("deployment_pod.json")).unwrap();
    let (status, resp) = request(&server, "POST", "/mutate", body).await.unwrap();
    assert_eq!(status, 200);
    let review: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    assert!(
        review["response"]["patch"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );

    let (status, text) = request(&server, "GET", "/metrics", vec![]).await.unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(r#"meshlite_injector_reviews_total{outcome="injected"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn healthz_answers_ok_and_garbage_gets_400() {
    let server = start().await;
    assert_eq!(
        request(&server, "GET", "/healthz", vec![]).await.unwrap(),
        (200, b"ok".to_vec())
    );
    let (status, body) = request(&server, "POST", "/mutate", b"{nope".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"));
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let server = start().await;
    let (status, _) = request(&server, "POST", "/mutate", vec![b' '; MAX_BODY_BYTES + 1])
        .await
        .unwrap();
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_reload() {
    let server = start().await;
    let new = write_cert(server.dir.path());
    server.cert.reload().unwrap();
    // The old root no longer verifies; the new one does.
    assert!(request(&server, "GET", "/healthz", vec![]).await.is_err());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(new).unwrap();
    let rotated = Server { roots, ..server };
    let ok = tokio::time::timeout(
        Duration::from_secs(5),
        request(&rotated, "GET", "/healthz", vec![]),
    )
    .await;
    assert_eq!(ok.unwrap().unwrap().0, 200);
}

#[tokio::test]
async fn readyz_fails_naming_the_missing_webhook_configuration_until_it_exists() {
    use std::sync::atomic::Ordering;
    let hook = webhook(InjectorConfig::default());
    hook.installed.store(false, Ordering::Relaxed);
    let installed = hook.installed.clone();
    let server = start_with(hook).await;
    let (code, body) = request(&server, "GET", "/readyz", vec![]).await.unwrap();
    let body = String::from_utf8(body).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("MutatingWebhookConfiguration meshlite-injector")
            && body.contains("kubectl apply"),
        "{body}"
    );
    // Liveness does not depend on it.
    assert_eq!(
        request(&server, "GET", "/healthz", vec![]).await.unwrap().0,
        200
    );
    installed.store(true, Ordering::Relaxed);
    assert_eq!(
        request(&server, "GET", "/readyz", vec![]).await.unwrap().0,
        200
    );
}
