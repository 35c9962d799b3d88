//! Probe rewriting, injector side.
//!
//! In `strict` mode the proxy refuses the kubelet's plaintext probes, so HTTP and
//! TCP probes of app containers are pointed at the proxy's admin port instead, at
//! `/app-health/<container>/<livez|readyz|startupz>`. The original probe goes into
//! the proxy's `MESHLITE_APP_PROBES` env as [`AppProbes`] JSON, and the proxy runs it
//! against the app over loopback (`proxy/src/probe.rs` reads the same format).
//!
//! Left alone, because the proxy could not run them faithfully: exec and gRPC
//! probes (they do not cross the proxy), probes with an explicit `host` (not
//! local), HTTPS probes (the app's own TLS passes through the proxy as
//! non-mesh traffic), and named ports the container does not declare.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshlite_contract::ADMIN_PORT;
use serde::{Deserialize, Serialize};

/// Path prefix of rewritten probes on the admin port.
pub use meshlite_contract::APP_HEALTH_PREFIX;

/// The JSON in `MESHLITE_APP_PROBES`: admin-port path → original probe.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// One original probe, as the proxy needs it to run it locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(flatten)]
    pub action: ProbeAction,
    /// The kubelet's timeout for the probe; the proxy must answer within it.
    pub timeout_seconds: u32,
}

/// What to run against the app on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    /// HTTP GET; 200-399 is healthy, as for the kubelet.
    HttpGet {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<ProbeHeader>,
    },
    /// TCP connect; success is healthy.
    TcpSocket { port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

/// Which of a container's three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Liveness,
        ProbeKind::Readiness,
        ProbeKind::Startup,
    ];

    /// The field name in the Container JSON, used in patch paths.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
        }
    }

    pub fn get(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
            ProbeKind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// The admin-port path a rewritten probe uses.
pub fn admin_path(container: &str, kind: ProbeKind) -> String {
    format!("{APP_HEALTH_PREFIX}{container}/{}", kind.suffix())
}

/// A probe to replace: the new probe for the kubelet and the original for the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub kind: ProbeKind,
    pub path: String,
    pub probe: Probe,
    pub original: AppProbe,
}

/// The rewrites for one container's probes (those that can be rewritten).
pub fn rewrite_container(c: &Container) -> Vec<Rewrite> {
    ProbeKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let probe = kind.get(c)?;
            let action = original_action(c, probe)?;
            let path = admin_path(&c.name, kind);
            let original = AppProbe {
                action,
                // The kubelet's default timeout is 1 second.
                timeout_seconds: probe
                    .timeout_seconds
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(1),
            };
            let probe = Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: IntOrString::Int(i32::from(ADMIN_PORT)),
                    scheme: Some("HTTP".into()),
                    ..Default::default()
                }),
                tcp_socket: None,
                // Timing and thresholds are the app's, unchanged.
                ..probe.clone()
            };
            Some(Rewrite {
                kind,
                path,
                probe,
                original,
            })
        })
        .collect()
}

fn original_action(c: &Container, probe: &Probe) -> Option<ProbeAction> {
    if let Some(http) = &probe.http_get {
        let scheme_ok = http
            .scheme
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case("HTTP"));
        if http.host.as_deref().is_some_and(|h| !h.is_empty()) || !scheme_ok {
            return None;
        }
        let headers = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| ProbeHeader {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect();
        return Some(ProbeAction::HttpGet {
            port: resolve_port(c, &http.port)?,
            path: http
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        return Some(ProbeAction::TcpSocket {
            port: resolve_port(c, &tcp.port)?,
        });
    }
    None
}

/// A numeric port, or a named one looked up in the container's ports.
fn resolve_port(c: &Container, port: &IntOrString) -> Option<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))?
                    .container_port
            }
        },
    };
    u16::try_from(number).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests;
