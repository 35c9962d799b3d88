//! Probe rewriting, proxy side: the admin port runs the application's original
//! HTTP and TCP probes against the app locally.
//!
//! The injector rewrites an app container's HTTP/TCP probe to `GET
//! /app-health/<container>/<livez|readyz|startupz>` on the admin port, because in
//! strict mode the kubelet's plaintext probe would be refused, and puts the
//! original probe into `MESHLITE_APP_PROBES`:
//!
//! ```json
//! {"/app-health/web/livez": {"httpGet": {"port": 8080, "path": "/healthz",
//!                            "headers": [{"name": "X-Probe", "value": "1"}]},
//!                            "timeoutSeconds": 1},
//!  "/app-health/db/readyz": {"tcpSocket": {"port": 5432}, "timeoutSeconds": 1}}
//! ```
//!
//! [`AppProbes::check`] runs it against the app on loopback (IPv4, then IPv6)
//! and answers like the kubelet judges: HTTP 200-399 or a TCP connect is healthy
//! (200), anything else unhealthy (503), with the reason in the body. The
//! proxy runs as its own UID, so these connections are not redirected.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// The application's original probes, parsed from `MESHLITE_APP_PROBES`.
#[derive(Debug, Default, Clone)]
pub struct AppProbes {
    by_path: BTreeMap<String, AppProbe>,
}

/// One original probe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(flatten)]
    pub action: ProbeAction,
    /// The kubelet's timeout; the check gives up a little before it.
    #[serde(default = "one_second")]
    pub timeout_seconds: u32,
}

fn one_second() -> u32 {
    1
}

/// What to run against the app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    HttpGet {
        port: u16,
        path: String,
        #[serde(default)]
        headers: Vec<ProbeHeader>,
    },
    TcpSocket {
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

/// Why a probe failed; the text goes into the 503 body.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connecting to the app on port {port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("HTTP exchange with the app failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid probe request: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl AppProbes {
    /// Parses the JSON the injector writes into `MESHLITE_APP_PROBES`.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        Ok(AppProbes {
            by_path: serde_json::from_str(json)?,
        })
    }

    /// The probe registered under `path`, if any.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.by_path.get(path)
    }

    /// Runs the probe registered under `path` on the admin port. `None` when no
    /// probe has that path (the admin server then answers 404).
    pub async fn check(&self, path: &str) -> Option<(http::StatusCode, String)> {
        let probe = self.by_path.get(path)?;
        let timeout = deadline(probe.timeout_seconds);
        let outcome = match tokio::time::timeout(timeout, run(&probe.action, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout(timeout)),
        };
        Some(match outcome {
            Ok(healthy) => healthy,
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app unhealthy: {e}\n"),
            ),
        })
    }
}

/// Slightly under the kubelet's own timeout so our answer arrives before it gives up.
fn deadline(timeout_seconds: u32) -> Duration {
    let kubelet = Duration::from_secs(u64::from(timeout_seconds.max(1)));
    kubelet.saturating_sub(Duration::from_millis(100))
}

async fn run(action: &ProbeAction, timeout: Duration) -> Result<(StatusCode, String), ProbeError> {
    match action {
        ProbeAction::TcpSocket { port } => {
            connect(*port).await?;
            Ok((
                StatusCode::OK,
                format!("app healthy: TCP port {port} accepts connections\n"),
            ))
        }
        ProbeAction::HttpGet {
            port,
            path,
            headers,
        } => {
            let status = http_get(*port, path, headers, timeout).await?;
            let verdict = if (200..400).contains(&status.as_u16()) {
                (StatusCode::OK, "healthy")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            };
            Ok((
                verdict.0,
                format!(
                    "app {}: GET {path} on port {port} answered {status}\n",
                    verdict.1
                ),
            ))
        }
    }
}

/// Connects to the app on loopback, IPv4 first; an IPv6-only app listens on ::1.
async fn connect(port: u16) -> Result<TcpStream, ProbeError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect(v4).await {
        Ok(s) => Ok(s),
        Err(first) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| ProbeError::Connect {
                port,
                source: first,
            }),
    }
}

async fn http_get(
    port: u16,
    path: &str,
    headers: &[ProbeHeader],
    timeout: Duration,
) -> Result<StatusCode, ProbeError> {
    let stream = connect(port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::USER_AGENT, "meshlite-probe");
    for h in headers {
        // Like the kubelet: a probe header replaces the default of the same name.
        match h.name.parse::<http::HeaderName>() {
            Ok(name) => {
                if let Some(map) = req.headers_mut() {
                    map.remove(&name);
                }
                req = req.header(name, h.value.as_str());
            }
            Err(e) => return Err(ProbeError::Request(e.into())),
        }
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let result = tokio::time::timeout(timeout, sender.send_request(req)).await;
    driver.abort();
    match result {
        Ok(resp) => Ok(resp?.status()),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app whose `/healthz` answers `status`; returns its port.
    async fn app(status: u16) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if head.starts_with("GET /healthz ") && head.contains("x-probe: 1") {
                    status
                } else {
                    404
                };
                let resp =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        port
    }

    fn probes(json: String) -> AppProbes {
        AppProbes::parse(&json).unwrap()
    }

    fn http_probe(port: u16) -> AppProbes {
        probes(format!(
            r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {port}, "path": "/healthz",
                "headers": [{{"name": "X-Probe", "value": "1"}}]}}, "timeoutSeconds": 2}}}}"#
        ))
    }

    #[tokio::test]
    async fn healthy_http_app_reports_200() {
        let p = http_probe(app(204).await);
        let (status, body) = p.check("/app-health/web/livez").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("204"), "{body}");
    }

    #[tokio::test]
    async fn failing_http_app_reports_503_with_its_status() {
        let p = http_probe(app(500).await);
        let (status, body) = p.check("/app-health/web/livez").await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("500"), "{body}");
    }

    #[tokio::test]
    async fn tcp_probe_follows_whether_the_port_accepts() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap().port();
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = probes(format!(
            r#"{{"/a/readyz": {{"tcpSocket": {{"port": {open}}}, "timeoutSeconds": 1}},
                "/b/readyz": {{"tcpSocket": {{"port": {closed}}}}}}}"#
        ));
        assert_eq!(p.check("/a/readyz").await.unwrap().0, StatusCode::OK);
        let (status, body) = p.check("/b/readyz").await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(&closed.to_string()), "{body}");
    }

    #[tokio::test]
    async fn a_hanging_app_times_out_as_unhealthy() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // Accepts and never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let p = probes(format!(
            r#"{{"/x": {{"httpGet": {{"port": {port}, "path": "/"}}}}}}"#
        ));
        let (status, body) = p.check("/x").await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no answer"), "{body}");
    }

    #[test]
    fn unknown_paths_and_bad_json() {
        let p = AppProbes::parse("{}").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(p.check("/app-health/none/livez")), None);
        assert!(AppProbes::parse(r#"{"/x": {"exec": {}}}"#).is_err());
        assert!(AppProbes::parse("not json").is_err());
    }

    #[test]
    fn parses_what_the_injector_writes() {
        // The injector's test asserts it writes exactly this file for its probes fixture.
        let json = include_str!("../../injector/fixtures/app_probes.json");
        let p = AppProbes::parse(json).unwrap();
        assert_eq!(
            p.get("/app-health/web/readyz").map(|p| &p.action),
            Some(&ProbeAction::TcpSocket { port: 8080 })
        );
        assert!(matches!(
            p.get("/app-health/web/livez").map(|p| &p.action),
            Some(ProbeAction::HttpGet { port: 8080, .. })
        ));
    }
}
