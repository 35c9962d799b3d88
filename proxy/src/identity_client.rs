//! The proxy's certificate client: gets and renews the workload certificate
//! from certd (cluster mode).
//!
//! - The private key is generated in memory for every request and never leaves
//!   the process; only the CSR (public key + SPIFFE ID) is sent.
//! - The projected ServiceAccount token is read from its file for every request,
//!   because the kubelet rotates it.
//! - Renewal happens at about half the certificate's lifetime, with jitter so a
//!   fleet of proxies started together does not renew together. When certd
//!   fails, the client retries with capped exponential backoff while the current
//!   certificate stays in use.
//! - The trust bundle comes from certd's answer, and also from the mounted
//!   ConfigMap file, which is re-read so a CA rotation reaches running proxies.
//!   A file that cannot be used (unreadable, no certificates, or a block that
//!   is not a certificate) is logged and counted by its path, and the last
//!   good bundle stays in use, for renewal too: certd is verified with it.
//!
//! Scheduling is decided by the pure functions [`refresh_in`] and [`backoff`].

use crate::metrics::{Metrics, ResultLabels};
use crate::tls::{CredStore, Credentials};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use meshlite_contract::api::{CertificateRequest, CertificateResponse, ErrorBody};
use meshlite_contract::{CERTIFICATES_PATH, SpiffeId};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Largest certd answer accepted (a chain and a bundle of a few roots).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// First retry delay after a failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where and as whom to ask for certificates.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// certd's base URL, `https://host:port`.
    pub url: http::Uri,
    /// The projected ServiceAccount token file.
    pub token_file: PathBuf,
    /// The mounted trust bundle (PEM): used to verify certd, and re-read.
    pub bundle_file: PathBuf,
    /// The identity this workload expects (from its namespace and service account).
    pub identity: SpiffeId,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Why a certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the trust bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the trust bundle {0} holds no certificates")]
    EmptyBundle(PathBuf),
    #[error("the trust bundle {path} is not valid: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("invalid certd URL {0}: expected https://host[:port]")]
    Url(String),
    #[error("generating the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("connecting to certd: {0}")]
    Connect(std::io::Error),
    #[error("HTTP to certd: {0}")]
    Http(String),
    #[error("certd timed out")]
    Timeout,
    #[error("certd refused ({status}): {} ({})", body.message, body.error)]
    Refused {
        status: u16,
        body: ErrorBody,
        retry_after: Option<Duration>,
    },
    #[error("certd's answer is malformed: {0}")]
    Decode(String),
    #[error("certd issued {got}, but this workload is {want}")]
    WrongIdentity { got: String, want: String },
    #[error(transparent)]
    Invalid(#[from] crate::tls::CredError),
}

impl RequestError {
    /// A short metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::Token { .. } => "token_unreadable",
            RequestError::Bundle { .. }
            | RequestError::EmptyBundle(_)
            | RequestError::BadBundle { .. } => "bundle_unreadable",
            RequestError::Url(_) | RequestError::Csr(_) => "config",
            RequestError::Connect(_) | RequestError::Http(_) | RequestError::Timeout => {
                "unreachable"
            }
            RequestError::Refused { status: 401, .. } => "unauthenticated",
            RequestError::Refused { status: 403, .. } => "denied",
            RequestError::Refused { .. } => "refused",
            RequestError::Decode(_) | RequestError::WrongIdentity { .. } => "bad_response",
            RequestError::Invalid(_) => "invalid_certificate",
        }
    }
}

/// When to renew a certificate valid from `start` to `not_after`, seen at
/// `now`: at half its lifetime, shifted by `jitter` (in -1.0..=1.0) times a
/// tenth of the lifetime. Never negative. `start` is the later of notBefore and
/// the moment the certificate arrived, since signers backdate notBefore to
/// absorb clock skew.
pub fn refresh_in(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        // A certificate that ends before it starts is useless: replace it now.
        return Duration::ZERO;
    };
    let jitter = jitter.clamp(-1.0, 1.0);
    let offset = lifetime.as_secs_f64() * (0.5 + 0.1 * jitter);
    let at = not_before + Duration::from_secs_f64(offset.max(0.0));
    at.duration_since(now).unwrap_or_default()
}

/// The delay before retry number `attempt` (0-based), doubling from one second
/// up to a minute, never shorter than what certd asked for with `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16));
    exp.min(BACKOFF_MAX)
        .max(retry_after.unwrap_or_default().min(BACKOFF_MAX))
}

/// Reads the mounted trust bundle and checks every certificate in it, so a
/// bad file is named as such rather than surfacing later as a TLS error.
pub(crate) fn read_bundle(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, RequestError> {
    let pem = std::fs::read(path).map_err(|source| RequestError::Bundle {
        path: path.clone(),
        source,
    })?;
    let bad = |reason: String| RequestError::BadBundle {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(RequestError::EmptyBundle(path.clone()));
    }
    for (i, cert) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| bad(format!("certificate {}: {e:?}", i + 1)))?;
    }
    Ok(certs)
}

/// The `reason` label of a rejected trust-bundle file.
fn bundle_reason(e: &RequestError) -> &'static str {
    match e {
        RequestError::Bundle { .. } => "unreadable",
        RequestError::EmptyBundle(_) => "no_certificates",
        _ => "invalid_certificate",
    }
}

/// The mounted trust bundle if it is good, remembered as the last good one;
/// otherwise the last good one, with the bad file logged and counted. Only
/// a proxy that never had a good bundle fails here.
fn current_bundle(
    path: &PathBuf,
    last_good: &mut Option<Vec<CertificateDer<'static>>>,
    metrics: &Metrics,
) -> Result<Vec<CertificateDer<'static>>, RequestError> {
    match read_bundle(path) {
        Ok(roots) => {
            *last_good = Some(roots.clone());
            Ok(roots)
        }
        Err(e) => {
            metrics.bundle_file_rejected(path, bundle_reason(&e));
            match last_good {
                Some(roots) => {
                    tracing::warn!(file = %path.display(), error = %e,
                        "ignoring the mounted trust bundle; keeping the last good one");
                    Ok(roots.clone())
                }
                None => Err(e),
            }
        }
    }
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, RequestError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| RequestError::Decode(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(RequestError::Decode(format!(
            "{what} holds no certificates"
        )));
    }
    Ok(certs)
}

/// A TLS 1.3 client config that trusts `roots` for talking to certd.
fn certd_tls(roots: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, RequestError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| RequestError::Decode(format!("trust bundle: {e}")))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(crate::tls::VERSIONS)
        .map_err(|e| RequestError::Http(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// POSTs `body` (JSON) to certd's `path` with the workload's token, over
/// TLS 1.3 verified against `roots`, within `timeout`. Answers the status,
/// any `Retry-After`, and the body (at most [`MAX_RESPONSE_BYTES`]). The
/// certificate and the naming client share it.
pub(crate) async fn post(
    cfg: &ClientConfig,
    roots: &[CertificateDer<'static>],
    path: &'static str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(http::StatusCode, Option<Duration>, Bytes), RequestError> {
    let token = std::fs::read_to_string(&cfg.token_file).map_err(|source| RequestError::Token {
        path: cfg.token_file.clone(),
        source,
    })?;
    let host = cfg
        .url
        .host()
        .ok_or_else(|| RequestError::Url(cfg.url.to_string()))?;
    if cfg.url.scheme_str() != Some("https") {
        return Err(RequestError::Url(cfg.url.to_string()));
    }
    let port = cfg.url.port_u16().unwrap_or(443);
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(bare_host.to_string())
        .map_err(|_| RequestError::Url(cfg.url.to_string()))?;
    let tls = certd_tls(roots)?;

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((bare_host, port))
            .await
            .map_err(RequestError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(RequestError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RequestError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RequestError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| RequestError::Http(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| RequestError::Http(e.to_string()))?
            .to_bytes();
        Ok::<_, RequestError>((status, retry_after, bytes))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RequestError::Timeout)?
}

/// A non-2xx answer as a [`RequestError::Refused`].
pub(crate) fn refused(
    status: http::StatusCode,
    retry_after: Option<Duration>,
    bytes: &[u8],
) -> RequestError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        error: "unknown".into(),
        message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
    });
    RequestError::Refused {
        status: status.as_u16(),
        body,
        retry_after,
    }
}

/// Asks certd, verified against `roots`, for one certificate with a fresh
/// in-memory key.
pub async fn request(
    cfg: &ClientConfig,
    roots: &[CertificateDer<'static>],
) -> Result<Credentials, RequestError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(cfg.identity.to_uri().as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::to_vec(&CertificateRequest { csr })
        .map_err(|e| RequestError::Http(e.to_string()))?;
    let (status, retry_after, bytes) =
        post(cfg, roots, CERTIFICATES_PATH, body, cfg.timeout).await?;

    if !status.is_success() {
        return Err(refused(status, retry_after, &bytes));
    }
    let answer: CertificateResponse =
        serde_json::from_slice(&bytes).map_err(|e| RequestError::Decode(e.to_string()))?;
    if answer.spiffe_id != cfg.identity.to_uri() {
        return Err(RequestError::WrongIdentity {
            got: answer.spiffe_id,
            want: cfg.identity.to_uri(),
        });
    }
    Ok(Credentials {
        chain: pem_certs(&answer.certificate_chain, "certificateChain")?,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        roots: pem_certs(&answer.trust_bundle, "trustBundle")?,
    })
}

/// Gets the first certificate, then keeps it renewed, forever.
pub async fn run(
    cfg: ClientConfig,
    store: CredStore,
    metrics: Arc<Metrics>,
    bundle_poll: Duration,
) {
    let mut attempt = 0u32;
    // The last issued chain and key, to re-publish with a new bundle.
    let mut last: Option<(Vec<CertificateDer<'static>>, Vec<u8>)> = None;
    let mut last_bundle = std::fs::read(&cfg.bundle_file).ok();
    let mut good_roots = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = tokio::time::sleep(bundle_poll) => {
                // A new mounted trust bundle reaches running proxies without
                // waiting for the next renewal.
                let now = std::fs::read(&cfg.bundle_file).ok();
                if now != last_bundle {
                    last_bundle = now;
                    let fresh = read_bundle(&cfg.bundle_file);
                    if let Err(e) = &fresh {
                        metrics.bundle_file_rejected(&cfg.bundle_file, bundle_reason(e));
                        tracing::warn!(file = %cfg.bundle_file.display(), error = %e,
                            "the mounted trust bundle changed to something unusable; keeping the last good one");
                    }
                    if let (Some((chain, key)), Ok(roots)) = (&last, fresh) {
                        good_roots = Some(roots.clone());
                        let creds = Credentials {
                            chain: chain.clone(),
                            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
                            roots,
                        };
                        crate::reload::publish(&store, &metrics, creds);
                    }
                }
                continue;
            }
        }
        let roots = current_bundle(&cfg.bundle_file, &mut good_roots, &metrics);
        let requested = match roots {
            Ok(roots) => request(&cfg, &roots).await,
            Err(e) => Err(e),
        };
        match requested.and_then(|creds| {
            let chain = creds.chain.clone();
            let key = match &creds.key {
                PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                _ => Vec::new(),
            };
            store
                .publish(creds)
                .map(|c| (c, chain, key))
                .map_err(RequestError::from)
        }) {
            Ok((issued, chain, key)) => {
                attempt = 0;
                last = Some((chain, key));
                crate::reload::record_cert(&metrics, issued.not_after);
                metrics
                    .renewals
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                let wait = refresh_in(
                    issued.not_before.max(SystemTime::now()),
                    issued.not_after,
                    SystemTime::now(),
                    rand::random_range(-1.0..=1.0),
                );
                tracing::info!(identity = %issued.identity, not_after = ?issued.not_after, renew_in = ?wait, "workload certificate issued");
                next = tokio::time::Instant::now() + wait;
            }
            Err(e) => {
                metrics
                    .renewals
                    .get_or_create(&ResultLabels { result: e.label() })
                    .inc();
                let retry_after = match &e {
                    RequestError::Refused { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = backoff(attempt, retry_after);
                attempt = attempt.saturating_add(1);
                let remaining = store.remaining();
                tracing::warn!(error = %e, retry_in = ?wait, current_cert_valid_for = ?remaining, "certificate request failed");
                next = tokio::time::Instant::now() + wait;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn renewal_is_at_half_the_lifetime_within_the_jitter() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + HOUR;
        assert_eq!(refresh_in(nb, na, nb, 0.0), Duration::from_secs(1800));
        assert_eq!(refresh_in(nb, na, nb, 1.0), Duration::from_secs(2160));
        assert_eq!(refresh_in(nb, na, nb, -1.0), Duration::from_secs(1440));
        // Out-of-range jitter is clamped; a late start shortens the wait.
        assert_eq!(refresh_in(nb, na, nb, 7.0), Duration::from_secs(2160));
        assert_eq!(
            refresh_in(nb, na, nb + Duration::from_secs(1000), 0.0),
            Duration::from_secs(800)
        );
    }

    #[test]
    fn renewal_is_immediate_when_past_due_or_nonsensical() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            refresh_in(nb, nb + HOUR, nb + 2 * HOUR, 0.0),
            Duration::ZERO
        );
        assert_eq!(refresh_in(nb + HOUR, nb, nb, 0.0), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_honours_retry_after() {
        let secs: Vec<u64> = (0..9).map(|a| backoff(a, None).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(40, None), BACKOFF_MAX);
        assert_eq!(
            backoff(0, Some(Duration::from_secs(10))),
            Duration::from_secs(10)
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(3600))), BACKOFF_MAX);
    }
}
