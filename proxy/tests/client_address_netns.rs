//! Client address preservation for real: a client "pod" and a server "pod" (network
//! namespaces joined by a veth pair), the server's rules installed by the real
//! `meshlite-proxy init --preserve-client-address` (nft and legacy backends), and
//! the real proxy binary started as root with only NET_RAW, SETUID and SETGID in
//! its bounding set and `no_new_privs`, as the injector's securityContext starts
//! it; the proxy switches itself to UID 2102 keeping only NET_RAW.
//!
//! The server app answers each connection with the peer address it sees. With
//! preservation on, that is the client pod's address, over mesh mTLS and over
//! permissive plaintext, IPv4 and IPv6; with it off, the server pod's own. Needs
//! root and the tools named in [`tools`]; fails loudly otherwise, never skips.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_contract::{OUTBOUND_PORT, PROXY_UID};
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::testing::netns::{self, Child, Netns, link, require_root_and, write_creds};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_meshlite-proxy");
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";
/// Reached through the client pod's outbound proxy: mesh mTLS.
const MESH_PORT: u16 = 8080;
/// Reached directly from the client pod: plaintext, permissive mode.
const PLAIN_PORT: u16 = 8081;

fn tools(backend: &str) -> Vec<String> {
    let mut t: Vec<String> = ["ip", "setpriv", "iptables", "ip6tables"]
        .map(String::from)
        .into();
    for fam in ["iptables", "ip6tables"] {
        for op in ["save", "restore"] {
            t.push(format!("{fam}-{backend}-{op}"));
        }
    }
    t
}

/// The two pods, their addresses and the credentials directory.
struct Pods {
    client: Netns,
    server: Netns,
    client_ips: [IpAddr; 2],
    server_ips: [IpAddr; 2],
    creds: tempfile::TempDir,
}

fn pods(tag: &str, subnet: u8) -> Pods {
    let client = Netns::new(&format!("{tag}c"));
    let server = Netns::new(&format!("{tag}s"));
    let c4 = format!("10.214.{subnet}.1");
    let s4 = format!("10.214.{subnet}.2");
    let c6 = format!("fd00:214:{subnet}::1");
    let s6 = format!("fd00:214:{subnet}::2");
    link(
        &client,
        &[&format!("{c4}/24"), &format!("{c6}/64")],
        &server,
        &[&format!("{s4}/24"), &format!("{s6}/64")],
    );
    let ca = TestCa::new("mesh root");
    let creds = tempfile::tempdir().unwrap();
    netns::sh(&format!("chmod a+rx {}", creds.path().display()));
    write_creds(&ca, &creds.path().join("client"), CLIENT_ID);
    write_creds(&ca, &creds.path().join("server"), SERVER_ID);
    Pods {
        client,
        server,
        client_ips: [c4.parse().unwrap(), c6.parse().unwrap()],
        server_ips: [s4.parse().unwrap(), s6.parse().unwrap()],
        creds,
    }
}

fn init(ns: &Netns, args: &str) -> String {
    let out = ns.exec(&format!("{BIN} init {args}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The proxy started as the injector starts it with preservation on
/// ([`netns::container_root_command`]).
fn spawn_as_container_root(ns: &Netns, creds: &Path, extra: &[&str]) -> Child {
    let mut cmd = netns::container_root_command(ns, BIN, creds, extra);
    cmd.env("RUST_LOG", "meshlite_proxy=debug");
    Child(cmd.spawn().expect("spawning the proxy"))
}

/// The server app: on both ports and families, answers each connection with
/// `peer=<addr> local=<addr>` and then echoes lines until the client closes.
fn start_app(pods: &Pods) {
    for ip in pods.server_ips {
        for port in [MESH_PORT, PLAIN_PORT] {
            let l = pods
                .server
                .run(move || TcpListener::bind((ip, port)).unwrap());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(s) = s else { continue };
                    std::thread::spawn(move || {
                        let mut w = s.try_clone().unwrap();
                        let mut lines = BufReader::new(s);
                        let mut line = String::new();
                        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                            let peer = w.peer_addr().unwrap();
                            let local = w.local_addr().unwrap();
                            if w.write_all(
                                format!("peer={peer} local={local} got={line}").as_bytes(),
                            )
                            .is_err()
                            {
                                break;
                            }
                            line.clear();
                        }
                    });
                }
            });
        }
    }
}

/// A connection from the client pod, optionally from a fixed local port.
struct Conn {
    lines: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(pods: &Pods, from: Option<SocketAddr>, to: SocketAddr) -> Conn {
        let s = pods.client.run(move || {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            if let Some(from) = from {
                sock.bind(&from.into()).unwrap();
            }
            sock.connect_timeout(&to.into(), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
            TcpStream::from(sock)
        });
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            lines: BufReader::new(s),
        }
    }

    /// Sends a line; returns the peer address the app saw.
    fn ask(&mut self) -> SocketAddr {
        self.w.write_all(b"hi\n").unwrap();
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        let peer = line
            .strip_prefix("peer=")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected answer {line:?}"));
        peer.parse().unwrap()
    }
}

/// The peer address the app sees for one connection from the client pod to
/// `server_ip:port`.
fn seen(pods: &Pods, server_ip: IpAddr, port: u16) -> SocketAddr {
    Conn::open(pods, None, SocketAddr::new(server_ip, port)).ask()
}

/// Capabilities and user of a process, from /proc.
fn status(pid: u32) -> (String, String) {
    let field = |name: &str| netns::proc_status_field(pid, name).unwrap();
    (field("Uid:"), field("CapEff:"))
}

/// The client pod: its outbound proxy, reached by redirecting MESH_PORT only,
/// so PLAIN_PORT goes out as plaintext.
fn client_proxy(pods: &Pods) -> Child {
    for ipt in ["iptables", "ip6tables"] {
        pods.client.exec(&format!(
            "{ipt} -t nat -A OUTPUT -p tcp -o eth0 --dport {MESH_PORT} -m owner ! --uid-owner {PROXY_UID} -j REDIRECT --to-ports {OUTBOUND_PORT}"
        ));
    }
    let p = netns::spawn_proxy(
        &pods.client,
        BIN,
        &pods.creds.path().join("client"),
        &["--no-inbound", "--outbound-mode", "strict"],
    );
    pods.client.wait_proxy_ready();
    p
}

fn metric(ns: &Netns, series: &str) -> f64 {
    let text = ns.admin_get("/metrics");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn app_sees_the_client_address(backend: &str, subnet: u8) {
    let tools = tools(backend);
    require_root_and(&tools.iter().map(String::as_str).collect::<Vec<_>>());
    let pods = pods(&format!("ca{}", &backend[..1]), subnet);
    let args = format!("--iptables-backend {backend} --ipv6 on --preserve-client-address");
    let first = init(&pods.server, &args);
    // Idempotent: a second run keeps one set of rules, one policy rule, one route.
    let second = init(&pods.server, &args);
    assert!(first.contains("rule added, route added"), "{first}");
    assert!(second.contains("rule kept, route kept"), "{second}");
    for fam in ["-4", "-6"] {
        let rules = pods.server.exec(&format!("ip {fam} rule show"));
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert_eq!(rules.matches("lookup 2102").count(), 1, "{rules}");
        let routes = pods.server.exec(&format!("ip {fam} route show table 2102"));
        assert!(
            String::from_utf8_lossy(&routes.stdout).starts_with("local default dev lo"),
            "{fam}: {}",
            String::from_utf8_lossy(&routes.stdout)
        );
    }
    for fam in ["iptables", "ip6tables"] {
        let saved = pods.server.exec(&format!("{fam}-{backend}-save"));
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert_eq!(
            saved.matches("-A OUTPUT -p tcp -j MESHLITE_RAW").count(),
            1,
            "{saved}"
        );
        assert_eq!(
            saved.matches("-A OUTPUT -p tcp -j MESHLITE_MANGLE").count(),
            1,
            "{saved}"
        );
        assert_eq!(saved.matches("CT --zone-orig 2102").count(), 1, "{saved}");
    }

    let server = spawn_as_container_root(
        &pods.server,
        &pods.creds.path().join("server"),
        &["--no-outbound", "--preserve-client-address"],
    );
    start_app(&pods);
    pods.server.wait_proxy_ready();
    // The proxy runs as the proxy UID with exactly CAP_NET_RAW (bit 13).
    let (uid, cap_eff) = status(server.0.id());
    assert_eq!(
        uid,
        format!("{PROXY_UID}\t{PROXY_UID}\t{PROXY_UID}\t{PROXY_UID}")
    );
    assert_eq!(cap_eff, "0000000000002000");
    let _client = client_proxy(&pods);

    for (client_ip, server_ip) in pods.client_ips.into_iter().zip(pods.server_ips) {
        for port in [MESH_PORT, PLAIN_PORT] {
            let peer = seen(&pods, server_ip, port);
            assert_eq!(peer.ip(), client_ip, "to {server_ip} port {port}");
        }
        // The collision case: a client connection whose source port is the
        // one the kernel picked for another live proxy leg from this client.
        // Without the proxy leg's own conntrack zone, the two share a tuple.
        let to = SocketAddr::new(server_ip, PLAIN_PORT);
        let mut a = Conn::open(&pods, None, to);
        let leg = a.ask();
        let mut b = Conn::open(&pods, Some(SocketAddr::new(client_ip, leg.port())), to);
        let b_leg = b.ask();
        assert_eq!(b_leg.ip(), client_ip);
        assert_ne!(
            b_leg.port(),
            leg.port(),
            "two live legs cannot share a port"
        );
        assert_eq!(a.ask(), leg, "the first connection still works");
        assert_eq!(b.ask(), b_leg);
    }
    // 2 families x (2 ports + 2 collision connections), all preserved.
    let preserved = metric(
        &pods.server,
        "meshlite_client_address_connections_total{result=\"preserved\"}",
    );
    assert_eq!(preserved, 8.0);
    let mtls = pods.server.admin_get("/metrics");
    assert!(
        mtls.contains(&format!("peer_identity=\"{CLIENT_ID}\"")),
        "{mtls}"
    );
}

#[test]
fn nft_the_app_sees_the_client_address_over_mtls_and_plaintext() {
    app_sees_the_client_address("nft", 1);
}

#[test]
fn legacy_the_app_sees_the_client_address_over_mtls_and_plaintext() {
    app_sees_the_client_address("legacy", 2);
}

#[test]
fn without_preservation_the_app_sees_the_pods_own_address() {
    let tools = tools("nft");
    require_root_and(&tools.iter().map(String::as_str).collect::<Vec<_>>());
    let pods = pods("cao", 3);
    init(&pods.server, "--iptables-backend nft --ipv6 on");
    let rules = pods.server.exec("ip rule show");
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("2102"));
    // Started the same way, without the flag: the proxy drops to 2102 with nothing.
    let server = spawn_as_container_root(
        &pods.server,
        &pods.creds.path().join("server"),
        &["--no-outbound"],
    );
    start_app(&pods);
    pods.server.wait_proxy_ready();
    let (uid, cap_eff) = status(server.0.id());
    assert!(uid.starts_with(&format!("{PROXY_UID}\t")), "{uid}");
    assert_eq!(cap_eff, "0000000000000000");
    let _client = client_proxy(&pods);
    for server_ip in pods.server_ips {
        for port in [MESH_PORT, PLAIN_PORT] {
            assert_eq!(seen(&pods, server_ip, port).ip(), server_ip);
        }
    }
}

#[test]
fn a_proxy_without_net_raw_refuses_to_start_and_says_why() {
    let tools = tools("nft");
    require_root_and(&tools.iter().map(String::as_str).collect::<Vec<_>>());
    let pods = pods("caf", 4);
    init(
        &pods.server,
        "--iptables-backend nft --ipv6 on --preserve-client-address",
    );
    // Started directly as UID 2102: no capability at all. Fail closed: the
    // proxy must exit, never serve from the pod's own address.
    let creds = pods.creds.path().join("server");
    let mut cmd = pods.server.command("setpriv");
    cmd.args([
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
        BIN,
        "run",
        "--admin-listen",
        "0.0.0.0:15020",
        "--no-outbound",
        "--preserve-client-address",
    ]);
    cmd.args(netns::creds_args(&creds));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy kept running without CAP_NET_RAW");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{text}");
    assert!(text.contains("IP_TRANSPARENT is refused"), "{text}");
    assert!(text.contains("CAP_NET_RAW"), "{text}");
}
