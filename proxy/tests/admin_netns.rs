//! Who can change the proxy's state through the admin port: a pod's network
//! namespace runs the proxy with its admin server on 0.0.0.0:15020, as
//! deployed; a second namespace, joined by a veth pair, plays another host.
//! From there the read-only endpoints answer and `POST /shutdown` is refused;
//! from loopback inside the pod it stops the proxy. Needs root and `ip`
//! (CI is root); fails loudly otherwise, never skips.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::{ADMIN_PORT, TrustDomain};
use meshlite_proxy::Proxy;
use meshlite_proxy::config::Config;
use meshlite_proxy::testing::netns::{Netns, link, require_root_and};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const POD_IP: &str = "10.99.0.1";
const OTHER_IP: &str = "10.99.0.2";

/// One HTTP/1.1 request from inside `ns` to `to`; the whole answer, or the
/// connection error.
fn http(ns: &Netns, to: SocketAddr, method: &str, path: &str) -> Result<String, String> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// Stops the proxy if the test ends before `/shutdown` did.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[test]
fn admin_shutdown_is_refused_from_another_netns_and_accepted_from_loopback() {
    require_root_and(&["ip"]);
    let pod = Netns::new("adm");
    let other = Netns::new("ado");
    link(
        &pod,
        &[&format!("{POD_IP}/24")],
        &other,
        &[&format!("{OTHER_IP}/24")],
    );

    // The proxy, admin only, bound to every address in the pod's namespace.
    let stop = CancellationToken::new();
    let _guard = StopOnDrop(stop.clone());
    let proxy = pod.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            meshlite_proxy::tls::install_provider();
            let mut cfg = Config::explicit(TrustDomain::default(), None, None);
            cfg.admin = Some(([0, 0, 0, 0], ADMIN_PORT).into());
            let bound = Proxy::new(cfg).bind().await.unwrap();
            bound.run(stop.cancelled_owned()).await;
        });
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    while !pod.admin_get("/live").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the admin server never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin: SocketAddr = format!("{POD_IP}:{ADMIN_PORT}").parse().unwrap();

    // From another host: the read-only endpoints answer...
    for path in ["/live", "/metrics"] {
        let answer = http(&other, admin, "GET", path).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
    }
    // ...and a shutdown is refused, counted, and changes nothing.
    let answer = http(&other, admin, "POST", "/shutdown").unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!proxy.is_finished(), "the proxy kept running");
    let metrics = http(&other, admin, "GET", "/metrics").unwrap();
    assert!(
        metrics.contains(r#"meshlite_admin_refusals_total{reason="not_loopback"} 1"#),
        "{metrics}"
    );
    assert!(pod.admin_get("/live").starts_with("HTTP/1.1 200"));

    // From loopback inside the pod, the same request stops the proxy.
    let lo: SocketAddr = ([127, 0, 0, 1], ADMIN_PORT).into();
    let answer = http(&pod, lo, "POST", "/shutdown").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not stop after /shutdown from loopback"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.join().unwrap();
}
