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
