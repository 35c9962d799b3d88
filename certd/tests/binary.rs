//! The real `meshlite-certd` binary in embedded mode: the command line from
//! the README starts a server that issues certificates.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshlite_certd::client::{Target, request_certificate};
use rcgen::{CertificateParams, KeyPair, SanType};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_embedded_command_line_issues_certificates() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cr3t-cart shop cart cart-0\n").unwrap();
    // A free port: bind, note it, release it for the child.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let ca_dir = dir.path().join("ca");
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_meshlite-certd"))
            .args(["embedded", "--listen", &listen, "--tokens-file"])
            .arg(&tokens)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let id = "spiffe://cluster.local/ns/shop/sa/cart";
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let mut last = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(roots_pem) = std::fs::read_to_string(ca_dir.join("ca.pem")) else {
            continue;
        };
        let target = Target {
            addr: listen.parse().unwrap(),
            server_name: "localhost".into(),
            roots_pem,
        };
        match request_certificate(&target, "s3cr3t-cart", &csr).await {
            Ok(answer) => {
                assert_eq!(answer.spiffe_id, id);
                return;
            }
            Err(e) => last = e.to_string(),
        }
    }
    panic!("the binary never issued a certificate: {last}");
}
