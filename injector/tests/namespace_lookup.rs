//! The real namespace lookup (`KubeNamespaces`) against a fake API server that
//! answers the real REST path, so the webhook's only Kubernetes call is tested
//! without a cluster.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use meshlite_injector::NamespaceLookup;
use meshlite_injector::webhook::KubeNamespaces;

mod support;

/// Serves `GET /api/v1/namespaces/payments`; everything else is a Status 404.
async fn fake_api() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/api/v1/namespaces/payments" {
                        (
                            200,
                            serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "payments", "labels": {"meshlite.io/inject": "enabled"},
                                     "annotations": {"meshlite.io/mode": "strict"}}}),
                        )
                    } else {
                        (
                            404,
                            serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "message": "namespaces \"gone\" not found", "reason": "NotFound", "code": 404}),
                        )
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    format!("http://{addr}")
}

async fn lookup() -> KubeNamespaces {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = kube::Config::new(fake_api().await.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    KubeNamespaces(kube::Api::<Namespace>::all(client))
}

#[tokio::test]
async fn reads_the_namespace_annotations_from_the_api_server() {
    let ns = lookup().await;
    let annotations = ns.annotations("payments").await.unwrap();
    assert_eq!(
        annotations.get("meshlite.io/mode").map(String::as_str),
        Some("strict")
    );
}

#[tokio::test]
async fn a_missing_namespace_is_an_error_naming_it() {
    let ns = lookup().await;
    let err = ns.annotations("gone").await.unwrap_err();
    assert_eq!(err.namespace, "gone");
    assert!(err.to_string().contains("not found"), "{err}");
}

/// An API server that accepts connections and reads requests but never
/// answers, like one stuck behind a dead etcd.
async fn hung_api() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_hung_namespace_read_is_a_denial_with_a_reason_within_the_api_timeout() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (url, _server) = hung_api().await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let mut hook = support::webhook(meshlite_injector::InjectorConfig::default());
    hook.namespaces = std::sync::Arc::new(KubeNamespaces(kube::Api::<Namespace>::all(client)));
    hook.api_timeout = std::time::Duration::from_millis(300);
    let body = serde_json::to_vec(&support::fixture("deployment_pod.json")).unwrap();
    // Without the bound the answer never comes; 60 s is only this test's own
    // guard against hanging, not a timing assertion.
    let (review, label) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        support::review(&hook, &body),
    )
    .await
    .expect("the webhook answered");
    assert_eq!(label, "error");
    assert!(!review.response.allowed);
    let status = review.response.status.as_ref().unwrap();
    assert_eq!(status.code, 503);
    assert!(status.message.contains("--api-timeout"), "{status:?}");
}
