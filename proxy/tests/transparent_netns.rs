//! Transparent mode for real: two network namespaces ("pods") joined by a veth
//! pair, real iptables REDIRECT rules, the real `meshlite-proxy` binary running
//! as the proxy UID, and `SO_ORIGINAL_DST` read by the kernel's answer, over
//! IPv4 and IPv6. Needs root (CI is root); fails loudly otherwise.
//!
//! The rules here are written by the test itself, in the shape `meshlite-proxy
//! init` produces; `init` has its own namespace tests.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::{INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::testing::netns::{self, Child, Netns, link, require_root_and, write_creds};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";
const APP_PORT: u16 = 8080;

fn spawn_proxy(ns: &Netns, creds: &Path, extra: &[&str]) -> Child {
    netns::spawn_proxy(ns, env!("CARGO_BIN_EXE_meshlite-proxy"), creds, extra)
}

#[test]
fn transparent_redirect_carries_app_traffic_over_mtls_using_the_original_destination() {
    require_root_and(&["ip", "iptables", "ip6tables", "setpriv"]);
    let a = Netns::new("ta");
    let b = Netns::new("tb");
    link(
        &a,
        &["10.213.7.1/24", "fd00:213::1/64"],
        &b,
        &["10.213.7.2/24", "fd00:213::2/64"],
    );

    // Pod A: the app's outbound TCP goes to the proxy, except the proxy's own.
    for ipt in ["iptables", "ip6tables"] {
        a.exec(&format!(
            "{ipt} -t nat -A OUTPUT -p tcp -o eth0 -m owner ! --uid-owner {PROXY_UID} -j REDIRECT --to-ports {OUTBOUND_PORT}"
        ));
        // Pod B: inbound TCP to the app port goes to the inbound proxy.
        b.exec(&format!(
            "{ipt} -t nat -A PREROUTING -p tcp -i eth0 --dport {APP_PORT} -j REDIRECT --to-ports {INBOUND_PORT}"
        ));
    }

    let ca = TestCa::new("mesh root");
    let dir = tempfile::tempdir().unwrap();
    meshlite_proxy::testing::netns::sh(&format!("chmod a+rx {}", dir.path().display()));
    write_creds(&ca, &dir.path().join("a"), CLIENT_ID);
    write_creds(&ca, &dir.path().join("b"), SERVER_ID);
    let _pa = spawn_proxy(
        &a,
        &dir.path().join("a"),
        &["--no-inbound", "--outbound-mode", "strict"],
    );
    let _pb = spawn_proxy(
        &b,
        &dir.path().join("b"),
        &["--no-outbound", "--mode", "strict"],
    );

    // Pod B's app: answers with the local address the connection arrived on.
    let app = b.spawn(|| {
        let v4 = TcpListener::bind(("10.213.7.2", APP_PORT)).unwrap();
        let v6 = TcpListener::bind(("fd00:213::2", APP_PORT)).unwrap();
        for l in [v4, v6] {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            let reply = format!(
                "{} via {}",
                String::from_utf8_lossy(&buf[..n]),
                s.local_addr().unwrap()
            );
            s.write_all(reply.as_bytes()).unwrap();
        }
    });
    a.wait_proxy_ready();
    b.wait_proxy_ready();

    for (dst, want_local) in [
        ("10.213.7.2:8080", "10.213.7.2:8080"),
        ("[fd00:213::2]:8080", "[fd00:213::2]:8080"),
    ] {
        let dst: SocketAddr = dst.parse().unwrap();
        let reply = a.run(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        assert_eq!(reply, format!("hello via {want_local}"), "through {dst}");
    }
    app.join().unwrap();

    // Both connections were mTLS, and each side saw the other's identity:
    // strict mode on both ends means there was no other way through.
    let ma = a.admin_get("/metrics");
    let mb = b.admin_get("/metrics");
    assert!(
        ma.contains(&format!("meshlite_mtls_connections_total{{direction=\"outbound\",peer_identity=\"{SERVER_ID}\",resumed=\"false\"}} 2")),
        "pod A metrics:\n{ma}"
    );
    assert!(
        mb.contains(&format!("peer_identity=\"{CLIENT_ID}\"")),
        "pod B metrics:\n{mb}"
    );
}

#[test]
fn the_proxy_uid_is_not_redirected() {
    require_root_and(&["ip", "iptables", "setpriv"]);
    let a = Netns::new("ua");
    let b = Netns::new("ub");
    link(&a, &["10.213.8.1/24"], &b, &["10.213.8.2/24"]);
    a.exec(&format!(
        "iptables -t nat -A OUTPUT -p tcp -o eth0 -m owner ! --uid-owner {PROXY_UID} -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
    let server = b.spawn(|| {
        let l = TcpListener::bind(("10.213.8.2", APP_PORT)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"direct").unwrap();
    });
    // Nothing listens on 15001 in pod A, so a redirected connection would fail;
    // the proxy UID's connection must reach pod B directly.
    std::thread::sleep(Duration::from_millis(100));
    let out = a.exec(&format!(
        "setpriv --reuid={PROXY_UID} --regid={PROXY_UID} --clear-groups bash -c 'exec 3<>/dev/tcp/10.213.8.2/{APP_PORT}; head -c 6 <&3'"
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "direct");
    server.join().unwrap();
    // And any other UID is redirected (to nothing, so it is refused).
    let other = a
        .command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/10.213.8.2/{APP_PORT}")])
        .output()
        .unwrap();
    assert!(
        !other.status.success(),
        "a non-proxy UID escaped the redirect"
    );
}
