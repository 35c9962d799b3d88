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
use meshlite_https::Limits;
use meshlite_https::testing::{Client, Framing};
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
    metrics: Arc<meshlite_injector::metrics::Metrics>,
}

/// The injector's default flags: --header-read-timeout 5s,
/// --request-timeout 8s, --max-connections 256.
const DEFAULT_LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(8),
    max_connections: 256,
};

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
    start_with(DEFAULT_LIMITS).await
}

async fn start_with(limits: Limits) -> Server {
    start_hook(webhook(InjectorConfig::default()), limits).await
}

async fn start_hook(hook: meshlite_injector::Webhook, limits: Limits) -> Server {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let der = write_cert(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let cert = ReloadingCert::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let tls = cert.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = hook.metrics.clone();
    let gate = metrics.gate(limits);
    tokio::spawn(meshlite_https::serve(
        listener,
        tls,
        hook.router(),
        gate,
        std::future::pending(),
    ));
    Server {
        addr,
        roots,
        cert,
        dir,
        metrics,
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

fn raw_client(server: &Server) -> Client {
    Client::tls(server.addr, server.roots.clone(), "localhost")
}

fn metrics_text(server: &Server) -> String {
    server.metrics.encode().unwrap()
}

/// A body over the limit, sent whole without `Expect`: the client reads a
/// JSON 413 (not a reset), and the refusal is counted.
async fn oversized_body_gets_a_json_413(framing: Framing) {
    let server = start().await;
    let body = vec![b' '; MAX_BODY_BYTES + 512 * 1024];
    let answer = raw_client(&server)
        .request(
            "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
            &body,
            Some(framing),
        )
        .await
        .expect("the client reads an answer, not a reset");
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(
        answer.head.contains("content-type: application/json"),
        "{}",
        answer.head
    );
    let json = answer.json();
    assert_eq!(json["error"], "too_large");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_BODY_BYTES.to_string())
    );
    let text = metrics_text(&server);
    assert!(
        text.contains(r#"meshlite_injector_reviews_total{outcome="too_large"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn an_oversized_body_with_a_content_length_gets_a_json_413_the_client_reads() {
    oversized_body_gets_a_json_413(Framing::ContentLength).await;
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_a_json_413_the_client_reads() {
    oversized_body_gets_a_json_413(Framing::Chunked).await;
}

#[tokio::test]
async fn a_slowloris_neither_starves_the_webhook_nor_outlives_the_header_timeout() {
    // The connection cap sits above the slow clients here, so this shows the
    // header timeout at work; the cap itself is the gate's own test.
    let server = start_with(Limits {
        header_read_timeout: Duration::from_secs(2),
        max_connections: 1024,
        ..DEFAULT_LIMITS
    })
    .await;
    let client = raw_client(&server);
    let slow = client.slowloris(300, Duration::from_secs(60)).await;
    assert_eq!(slow.open, 300, "every slow client got its half header in");
    // While they hold their connections, a good client is served.
    let body = std::fs::read(fixture_path("deployment_pod.json")).unwrap();
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(20),
        request(&server, "POST", "/mutate", body),
    )
    .await
    .expect("the good client is answered during the slowloris")
    .unwrap();
    assert_eq!(status, 200);
    // The header timeout closes every slow connection, and counts it.
    assert_eq!(slow.closed_by_server().await, 300);
    let text = metrics_text(&server);
    assert!(
        text.contains(r#"meshlite_injector_http_refusals_total{reason="header_timeout"} 300"#),
        "{text}"
    );
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
    let server = start_hook(hook, DEFAULT_LIMITS).await;
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
