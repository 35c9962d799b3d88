use super::*;
use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, HTTPHeader, TCPSocketAction};

fn container(probe: Probe) -> Container {
    Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        liveness_probe: Some(probe),
        ..Default::default()
    }
}

fn http(port: IntOrString) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port,
            http_headers: Some(vec![HTTPHeader {
                name: "X-Probe".into(),
                value: "1".into(),
            }]),
            ..Default::default()
        }),
        period_seconds: Some(7),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}

#[test]
fn http_probe_moves_to_admin_port_keeping_timing() {
    let rw = rewrite_container(&container(http(IntOrString::Int(8080))));
    assert_eq!(rw.len(), 1);
    let get = rw[0].probe.http_get.as_ref().unwrap();
    assert_eq!(get.port, IntOrString::Int(15020));
    assert_eq!(get.path.as_deref(), Some("/app-health/web/livez"));
    assert_eq!(get.http_headers, None);
    assert_eq!(rw[0].probe.period_seconds, Some(7));
    assert_eq!(rw[0].probe.timeout_seconds, Some(3));
    assert_eq!(
        rw[0].original,
        AppProbe {
            action: ProbeAction::HttpGet {
                port: 8080,
                path: "/healthz".into(),
                headers: vec![ProbeHeader {
                    name: "X-Probe".into(),
                    value: "1".into()
                }],
            },
            timeout_seconds: 3,
        }
    );
}

#[test]
fn named_port_resolves_from_the_container_ports() {
    let rw = rewrite_container(&container(http(IntOrString::String("http".into()))));
    assert!(matches!(
        rw[0].original.action,
        ProbeAction::HttpGet { port: 8080, .. }
    ));
}

#[test]
fn tcp_probe_becomes_http_on_admin_port() {
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(5432),
            host: None,
        }),
        ..Default::default()
    };
    let rw = rewrite_container(&container(probe));
    assert_eq!(rw[0].probe.tcp_socket, None);
    assert!(rw[0].probe.http_get.is_some());
    assert_eq!(rw[0].original.action, ProbeAction::TcpSocket { port: 5432 });
    assert_eq!(rw[0].original.timeout_seconds, 1);
}

#[test]
fn exec_https_remote_host_and_unknown_named_port_are_left_alone() {
    let exec = Probe {
        exec: Some(ExecAction {
            command: Some(vec!["true".into()]),
        }),
        ..Default::default()
    };
    let mut https = http(IntOrString::Int(8443));
    https.http_get.as_mut().unwrap().scheme = Some("HTTPS".into());
    let mut remote = http(IntOrString::Int(80));
    remote.http_get.as_mut().unwrap().host = Some("example.com".into());
    let unknown = http(IntOrString::String("metrics".into()));
    for probe in [exec, https, remote, unknown] {
        assert!(
            rewrite_container(&container(probe.clone())).is_empty(),
            "{probe:?}"
        );
    }
}

#[test]
fn app_probe_json_shape_is_stable() {
    let probe = AppProbe {
        action: ProbeAction::TcpSocket { port: 1 },
        timeout_seconds: 2,
    };
    assert_eq!(
        serde_json::to_string(&probe).unwrap(),
        r#"{"tcpSocket":{"port":1},"timeoutSeconds":2}"#
    );
}
