//! certd in embedded mode: the same HTTPS API with the signer in-process and a
//! static token file, configured through the real command line; and the
//! API's HTTP limits (a slowloris, bodies over the limit).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use clap::Parser as _;
use meshlite_certd::api::MAX_BODY;
use meshlite_certd::app::{self, CA_DIR_CERT, CA_DIR_KEY};
use meshlite_certd::ca::verify_workload_chain;
use meshlite_certd::client::{ClientError, Target, get_raw, request_certificate};
use meshlite_certd::config::{Args, Mode};
use meshlite_contract::SpiffeId;
use meshlite_https::testing::{Client, Framing};
use meshlite_tests::fake_apiserver::certd::csr_for;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::time::Duration;

async fn start(dir: &std::path::Path, extra: &[&str]) -> app::Running {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "# token namespace serviceaccount [pod]\ncart-token shop cart cart-0\n",
    )
    .unwrap();
    let ca_dir = dir.join("ca");
    let mut argv = vec![
        "meshlite-certd".to_string(),
        "embedded".into(),
        "--tokens-file".into(),
        tokens.display().to_string(),
        "--ca-dir".into(),
        ca_dir.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let settings = Args::try_parse_from(argv).unwrap().settings().unwrap();
    let Mode::Embedded(embedded) = &settings.mode else {
        panic!("embedded mode")
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    app::start_embedded(&settings, embedded, listener)
        .await
        .unwrap()
}

fn cart() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

#[tokio::test]
async fn embedded_mode_issues_from_a_generated_ca_written_for_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let certd = start(dir.path(), &["--lifetime-seconds", "600"]).await;
    let bundle_file = std::fs::read_to_string(dir.path().join("ca").join(CA_DIR_CERT)).unwrap();
    assert_eq!(bundle_file, certd.bundle_pem());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca").join(CA_DIR_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
    // certd is verified by IP and by localhost, with the bundle file alone.
    for server_name in ["127.0.0.1", "localhost"] {
        let target = Target {
            addr: certd.addr,
            server_name: server_name.into(),
            roots_pem: bundle_file.clone(),
        };
        let (_k, pem) = csr_for(&cart());
        let answer = request_certificate(&target, "cart-token", &pem)
            .await
            .unwrap();
        assert_eq!(answer.spiffe_id, cart().to_uri());
        assert_eq!(answer.trust_bundle, bundle_file);
        let now = time::OffsetDateTime::now_utc();
        let uris = verify_workload_chain(&answer.certificate_chain, &bundle_file, now).unwrap();
        assert_eq!(uris, vec![cart().to_uri()]);
    }
    assert_eq!(certd.metrics.requests("issued"), 2);

    // Health, readiness and metrics on the same HTTPS port.
    let target = Target {
        addr: certd.addr,
        server_name: "localhost".into(),
        roots_pem: bundle_file,
    };
    assert_eq!(get_raw(&target, "/healthz").await.unwrap().status, 200);
    assert_eq!(get_raw(&target, "/readyz").await.unwrap().status, 200);
    // Wrong paths and methods still get a JSON ErrorBody.
    let missing = get_raw(&target, "/v2/nothing").await.unwrap();
    let body: meshlite_contract::api::ErrorBody = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!((missing.status, body.error.as_str()), (404, "not_found"));
    let wrong = get_raw(&target, meshlite_contract::CERTIFICATES_PATH)
        .await
        .unwrap();
    let body: meshlite_contract::api::ErrorBody = serde_json::from_slice(&wrong.body).unwrap();
    assert_eq!(
        (wrong.status, body.error.as_str()),
        (405, "method_not_allowed")
    );
    let metrics = get_raw(&target, "/metrics").await.unwrap();
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("meshlite_certd_requests_total{result=\"issued\"} 2"),
        "{text}"
    );
    let not_after: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("meshlite_certd_ca_not_after_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(not_after, certd.ca.get().not_after().unix_timestamp());
}

#[tokio::test]
async fn embedded_mode_reuses_the_ca_in_its_directory_and_refuses_unknown_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]).await;
    let bundle = first.bundle_pem();
    drop(first);
    let certd = start(dir.path(), &[]).await;
    assert_eq!(
        certd.bundle_pem(),
        bundle,
        "a restart keeps the CA proxies already trust"
    );
    let target = Target {
        addr: certd.addr,
        server_name: "localhost".into(),
        roots_pem: bundle,
    };
    let (_k, pem) = csr_for(&cart());
    match request_certificate(&target, "guessed", &pem).await {
        Err(ClientError::Refused { status, body, .. }) => {
            assert_eq!((status, body.error.as_str()), (401, "unauthenticated"));
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // The token file stands in for TokenReview, and is counted the same way.
    assert_eq!(certd.metrics.tokenreview_failures("unauthenticated"), 1);
    let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap();
    let (_k, pem) = csr_for(&other);
    let err = request_certificate(&target, "cart-token", &pem)
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal().map(|(s, b)| (s, b.error.clone())),
        Some((403, "identity_mismatch".into()))
    );
}

fn raw_client(certd: &app::Running) -> Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certd.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Client::tls(certd.addr, roots, "localhost")
}

fn target(certd: &app::Running) -> Target {
    Target {
        addr: certd.addr,
        server_name: "localhost".into(),
        roots_pem: certd.bundle_pem(),
    }
}

#[tokio::test]
async fn a_slowloris_neither_starves_certd_nor_outlives_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // The connection cap sits above the slow clients, so this shows the
    // header timeout at work (the cap is the gate's own test).
    let certd = start(
        dir.path(),
        &[
            "--header-read-timeout-seconds",
            "2",
            "--max-connections",
            "1024",
        ],
    )
    .await;
    let slow = raw_client(&certd)
        .slowloris(300, Duration::from_secs(60))
        .await;
    assert_eq!(slow.open, 300, "every slow client got its half header in");
    // While they hold their connections, a proxy still gets its certificate.
    let (_key, pem) = csr_for(&cart());
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        request_certificate(&target(&certd), "cart-token", &pem),
    )
    .await
    .expect("the good client is answered during the slowloris")
    .unwrap();
    assert_eq!(answer.spiffe_id, cart().to_uri());
    // The header timeout closes every slow connection, and counts it.
    assert_eq!(slow.closed_by_server().await, 300);
    assert_eq!(certd.metrics.http_refusals("header_timeout"), 300);
    let text = certd.metrics.encode().unwrap();
    assert!(
        text.contains(r#"meshlite_certd_http_refusals_total{reason="header_timeout"} 300"#),
        "{text}"
    );
}

/// A body over the limit, sent whole without `Expect`: the client reads the
/// JSON 413 (not a reset), and the refusal is counted.
async fn oversized_body_gets_a_json_413(framing: Framing) {
    let dir = tempfile::tempdir().unwrap();
    let certd = start(dir.path(), &[]).await;
    let body = vec![b' '; 1024 * 1024];
    let answer = raw_client(&certd)
        .request(
            "POST /v1/certificates HTTP/1.1\r\nHost: localhost\r\n\
             Authorization: Bearer cart-token\r\nContent-Type: application/json\r\n",
            &body,
            Some(framing),
        )
        .await
        .expect("the client reads an answer, not a reset");
    assert_eq!(answer.status, 413, "{}", answer.head);
    let json = answer.json();
    assert_eq!(json["error"], "too_large");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_BODY.to_string())
    );
    assert_eq!(certd.metrics.requests("too_large"), 1);
}

#[tokio::test]
async fn an_oversized_body_with_a_content_length_gets_a_json_413_the_client_reads() {
    oversized_body_gets_a_json_413(Framing::ContentLength).await;
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_a_json_413_the_client_reads() {
    oversized_body_gets_a_json_413(Framing::Chunked).await;
}
