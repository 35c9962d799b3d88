//! A small client for certd's API, for tests and tools: POST a CSR over HTTPS
//! and get the [`CertificateResponse`] or the refusal.
//!
//! The proxy has its own client (it must not depend on this crate's kube
//! dependencies); this one exists so tests drive certd exactly as a proxy does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use meshlite_contract::api::{CertificateRequest, CertificateResponse, ErrorBody};
use meshlite_contract::naming::{NamingRequest, NamingResponse};
use meshlite_contract::{CERTIFICATES_PATH, NAMING_PATH};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// Largest answer read.
const MAX_RESPONSE: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where certd listens and how to verify it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The name to verify certd's certificate for (e.g. `localhost`).
    pub server_name: String,
    /// PEM roots (the trust bundle).
    pub roots_pem: String,
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Bytes,
}

/// Why no certificate came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("certd refused ({status}): {} ({})", body.message, body.error)]
    Refused {
        status: u16,
        body: ErrorBody,
        retry_after: Option<String>,
    },
    #[error("talking to certd: {0}")]
    Transport(String),
}

impl ClientError {
    /// The status and body of a refusal; `None` for transport errors.
    pub fn refusal(&self) -> Option<(u16, &ErrorBody)> {
        match self {
            ClientError::Refused { status, body, .. } => Some((*status, body)),
            ClientError::Transport(_) => None,
        }
    }
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// A 200 answer decoded as `T`, or the refusal's ErrorBody.
fn decode<T: serde::de::DeserializeOwned>(raw: RawResponse) -> Result<T, ClientError> {
    if raw.status != 200 {
        let body = serde_json::from_slice::<ErrorBody>(&raw.body).map_err(|e| {
            transport(format!(
                "status {} with a non-ErrorBody answer: {e}",
                raw.status
            ))
        })?;
        return Err(ClientError::Refused {
            status: raw.status,
            body,
            retry_after: raw.retry_after,
        });
    }
    serde_json::from_slice(&raw.body).map_err(transport)
}

/// POSTs `csr_pem` with `token` and decodes the answer.
pub async fn request_certificate(
    target: &Target,
    token: &str,
    csr_pem: &str,
) -> Result<CertificateResponse, ClientError> {
    let body = serde_json::to_vec(&CertificateRequest {
        csr: csr_pem.to_string(),
    })
    .map_err(transport)?;
    let raw = post_raw(target, Some(token), body).await?;
    decode(raw)
}

/// Asks certd's naming API who may answer at `addr`.
pub async fn request_naming(
    target: &Target,
    token: &str,
    addr: SocketAddr,
) -> Result<NamingResponse, ClientError> {
    let body = serde_json::to_vec(&NamingRequest { addr }).map_err(transport)?;
    let raw = send(target, http::Method::POST, NAMING_PATH, Some(token), body).await?;
    decode(raw)
}

/// POSTs arbitrary bytes to the certificates path (for malformed-input tests).
pub async fn post_raw(
    target: &Target,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<RawResponse, ClientError> {
    send(target, http::Method::POST, CERTIFICATES_PATH, token, body).await
}

/// GETs `path` (e.g. `/healthz`, `/readyz`, `/metrics`).
pub async fn get_raw(target: &Target, path: &str) -> Result<RawResponse, ClientError> {
    send(target, http::Method::GET, path, None, Vec::new()).await
}

async fn send(
    target: &Target,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<RawResponse, ClientError> {
    let roots = CertificateDer::pem_slice_iter(target.roots_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(transport)?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(transport)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(transport)?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from(target.server_name.clone()).map_err(transport)?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(transport)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(transport)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, target.server_name.as_str())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(transport)?;
        let resp = sender.send_request(req).await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        Ok(RawResponse {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| transport("timed out"))?
}
