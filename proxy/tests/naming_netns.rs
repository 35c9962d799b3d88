//! An attacker on the path between two meshed pods, for real: two network
//! namespaces joined by a veth pair, the real `meshlite-proxy` binary in the
//! client pod pinned to the server's identity (`--outbound-expect-identity`),
//! and, at the server's address, a host that resets our handshake, answers
//! with non-TLS bytes, or presents a certificate from another CA. A packet
//! capture on the wire shows that not one application byte left the client
//! proxy, and the proxy's metrics give each refusal its reason. Needs root,
//! `ip`, `setpriv` and `tcpdump`; fails loudly otherwise.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::ALPN;
use meshlite_proxy::testing::netns::{self, Netns, link, require_root_and, write_creds};
use meshlite_proxy::testing::{LeafSpec, TestCa};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// The application's request; it must never appear on the wire.
const SECRET: &[u8] = b"POST /transfer HTTP/1.1\r\nX-Secret: correct-horse-battery\r\n\r\n";
/// Sent in plaintext on purpose, to prove the capture sees payloads.
const CONTROL: &[u8] = b"capture-control-marker-7f3a";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn other_ca_server(ca: &TestCa) -> Arc<rustls::ServerConfig> {
    let leaf = ca.leaf(&LeafSpec::spiffe(SERVER_ID, Duration::from_secs(3600)));
    let mut cfg = rustls::ServerConfig::builder_with_provider(meshlite_proxy::tls::provider())
        .with_protocol_versions(meshlite_proxy::tls::VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(cfg)
}

#[test]
fn an_attacker_at_a_meshed_address_gets_no_plaintext_byte_and_each_attempt_is_refused() {
    require_root_and(&["ip", "setpriv", "tcpdump"]);
    meshlite_proxy::tls::install_provider();
    let a = Netns::new("na");
    let b = Netns::new("nb");
    link(&a, &["10.213.9.1/24"], &b, &["10.213.9.2/24"]);

    let ca = TestCa::new("mesh root");
    let dir = tempfile::tempdir().unwrap();
    netns::sh(&format!("chmod a+rx {}", dir.path().display()));
    write_creds(&ca, &dir.path().join("a"), CLIENT_ID);
    // Permissive outbound: without secure naming this is where detection
    // would fall back to plaintext.
    let _proxy = netns::spawn_proxy(
        &a,
        env!("CARGO_BIN_EXE_meshlite-proxy"),
        &dir.path().join("a"),
        &[
            "--no-inbound",
            "--outbound-mode",
            "permissive",
            "--outbound-listen",
            "127.0.0.1:15001",
            "--outbound-upstream",
            "10.213.9.2:8080",
            "--outbound-expect-identity",
            SERVER_ID,
        ],
    );

    // The capture, on the wire next to the attacker. Immediate mode: packets
    // reach the file as they arrive, not when a kernel buffer block fills.
    let pcap = dir.path().join("wire.pcap");
    let mut capture = b
        .command("tcpdump")
        .args([
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        // tcpdump says "listening on eth0" once it captures.
        let mut err = capture.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !contains(&seen, b"listening on") {
            let n = err.read(&mut buf).unwrap();
            assert!(n > 0, "tcpdump exited: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    let capture = netns::Child(capture);

    // The attacker owns the server's address. It answers three connections
    // three ways, then takes the control connection.
    let tls = other_ca_server(&TestCa::new("attacker root"));
    let attacker = b.spawn(move || {
        let l = TcpListener::bind(("10.213.9.2", 8080)).unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        for attack in ["reset", "not_tls", "other_ca", "control"] {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match attack {
                "reset" => {
                    let n = s.read(&mut buf).unwrap_or(0);
                    received.extend_from_slice(&buf[..n]);
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
                "not_tls" => {
                    let n = s.read(&mut buf).unwrap_or(0);
                    received.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.extend_from_slice(&buf[..n]);
                    }
                }
                "other_ca" => {
                    let conn = rustls::ServerConnection::new(tls.clone()).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    // Decrypted application data, if the client ever sent any.
                    while let Ok(n) = tls.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.extend_from_slice(&buf[..n]);
                    }
                }
                _ => {
                    let n = s.read(&mut buf).unwrap_or(0);
                    received.extend_from_slice(&buf[..n]);
                }
            }
        }
        received
    });
    a.wait_proxy_ready();

    // The application in pod A sends its request three times.
    for _ in 0..3 {
        let answer = a.run(|| {
            let mut s = TcpStream::connect(("127.0.0.1", 15001)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(SECRET);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        });
        assert!(answer.is_empty(), "a refused connection answers nothing");
    }
    // The control: plaintext straight to the address, not through the proxy.
    a.run(|| {
        let mut s = TcpStream::connect(("10.213.9.2", 8080)).unwrap();
        s.write_all(CONTROL).unwrap();
    });
    let received = attacker.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM, so tcpdump flushes and closes the file.
    netns::sh(&format!("kill -TERM {}", capture.0.id()));
    let mut capture = capture;
    let _ = capture.0.wait();

    let wire = std::fs::read(&pcap).unwrap();
    assert!(
        contains(&wire, CONTROL),
        "the capture sees plaintext payloads"
    );
    assert!(
        !contains(&wire, SECRET),
        "no application byte went on the wire"
    );
    assert!(!contains(&wire, b"correct-horse-battery"));
    assert!(contains(&received, CONTROL));
    assert!(
        !contains(&received, b"correct-horse-battery"),
        "the attacker got nothing"
    );

    let m = a.admin_get("/metrics");
    for reason in ["reset", "not_tls", "unknown_ca"] {
        assert_eq!(
            metric(
                &m,
                "meshlite_tls_handshake_failures_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}:\n{m}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "meshlite_refused_connections_total",
            "reason=\"mesh_handshake_failed\""
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "meshlite_plaintext_connections_total", ""),
        0.0,
        "{m}"
    );
}
