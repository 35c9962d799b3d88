//! The whole mesh on one machine: three "pods" (network namespaces) on a bridge,
//! the real `meshlite-proxy init` rules, the real proxy binary running as the
//! proxy UID, and certd (embedded mode) handing out certificates over its real
//! API to the proxies' own certificate client.
//!
//! - A: meshed client, B: meshed server, C: unmeshed.
//! - Every address exists only inside the namespaces this test creates.
//! - Needs root (CI is root); fails loudly otherwise. Namespaces and processes
//!   are cleaned up on drop, also when an assertion fails.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use meshlite_certd::app::Running;
use meshlite_contract::TrustDomain;
use meshlite_proxy::testing::netns::{Child, Netns, require_root_and, sh};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const HUB_IP: &str = "10.214.0.1";
const A_IP: &str = "10.214.0.2";
const B_IP: &str = "10.214.0.3";
const C_IP: &str = "10.214.0.4";
const APP_PORT: u16 = 8080;
const CERTD_PORT: u16 = meshlite_contract::CERTD_PORT;
/// A payload that must never appear in clear on the bridge.
const CERT_LIFETIME: Duration = Duration::from_secs(8);
const MARKER: &str = "MESHLITE-SECRET-PAYLOAD-7f3a9c";

fn proxy_bin() -> PathBuf {
    // target/debug/deps/mesh_e2e-... -> target/debug/meshlite-proxy
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("meshlite-proxy");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo test --workspace` does, or `cargo build -p meshlite-proxy`)",
        bin.display()
    );
    bin
}

/// The bridge "host" and the three pods.
struct Mesh {
    hub: Netns,
    a: Netns,
    b: Netns,
    c: Netns,
    dir: tempfile::TempDir,
    certd: Option<Running>,
}

fn attach(hub: &Netns, pod: &Netns, ip: &str, n: u32) {
    let (outer, inner) = (
        format!("eh{}x{n}", std::process::id()),
        format!("ep{}x{n}", std::process::id()),
    );
    sh(&format!("ip link add {outer} type veth peer name {inner}"));
    sh(&format!("ip link set {outer} netns {}", hub.name));
    sh(&format!("ip link set {inner} netns {}", pod.name));
    hub.exec(&format!(
        "ip link set {outer} master br0 && ip link set {outer} up"
    ));
    pod.exec(&format!(
        "ip link set {inner} name eth0 && ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
    ));
}

impl Mesh {
    fn new() -> Mesh {
        require_root_and(&["ip", "iptables", "iptables-restore", "setpriv", "tcpdump"]);
        let hub = Netns::new("hub");
        hub.exec(&format!(
            "ip link add br0 type bridge && ip addr add {HUB_IP}/24 dev br0 && ip link set br0 up"
        ));
        let (a, b, c) = (Netns::new("pa"), Netns::new("pb"), Netns::new("pc"));
        attach(&hub, &a, A_IP, 1);
        attach(&hub, &b, B_IP, 2);
        attach(&hub, &c, C_IP, 3);
        let dir = tempfile::tempdir().unwrap();
        sh(&format!("chmod a+rx {}", dir.path().display()));
        std::fs::write(
            dir.path().join("tokens"),
            "token-a shop client\ntoken-b shop server\n",
        )
        .unwrap();
        for (who, token) in [("a", "token-a"), ("b", "token-b")] {
            std::fs::write(dir.path().join(format!("{who}.token")), token).unwrap();
        }
        Mesh {
            hub,
            a,
            b,
            c,
            dir,
            certd: None,
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Starts embedded certd inside the hub namespace, on the bridge address.
    async fn start_certd(&mut self) {
        use meshlite_certd::config::{EmbeddedCa, EmbeddedSettings, Mode, Settings};
        let std_listener = self
            .hub
            .run(move || std::net::TcpListener::bind((HUB_IP, CERTD_PORT)).unwrap());
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let embedded = EmbeddedSettings {
            ca: EmbeddedCa::Dir(self.ca_dir()),
            tokens_file: self.dir.path().join("tokens"),
            dns_names: vec![],
            ips: vec![HUB_IP.parse().unwrap()],
        };
        let settings = Settings {
            listen: (HUB_IP.parse::<std::net::IpAddr>().unwrap(), CERTD_PORT).into(),
            limits: meshlite_certd::config::default_limits(),
            trust_domain: TrustDomain::default(),
            // Eight-second certificates: the proxies renew every few seconds,
            // so the test sees rotations under traffic.
            lifetime: meshlite_certd::approval::Lifetime::for_tests(CERT_LIFETIME),
            mode: Mode::Embedded(embedded.clone()),
        };
        let running = meshlite_certd::app::start_embedded(&settings, &embedded, listener)
            .await
            .unwrap();
        sh(&format!("chmod -R a+rX {}", self.ca_dir().display()));
        // The CA key stays private to root; proxies read only the bundle.
        sh(&format!(
            "chmod 600 {}",
            self.ca_dir().join("ca-key.pem").display()
        ));
        self.certd = Some(running);
    }

    /// Runs `meshlite-proxy init` in `pod`, then the proxy as the proxy UID.
    fn start_proxy(&self, pod: &Netns, who: &str, sa: &str, extra: &[&str]) -> Child {
        let bin = proxy_bin();
        pod.exec(&format!("{} init", bin.display()));
        let mut cmd = pod.command("setpriv");
        let uid = meshlite_contract::PROXY_UID;
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(&bin)
        .args([
            "run",
            "--certd-url",
            &format!("https://{HUB_IP}:{CERTD_PORT}"),
        ])
        .arg("--trust-bundle")
        .arg(self.ca_dir().join("ca.pem"))
        .arg("--token-file")
        .arg(self.dir.path().join(format!("{who}.token")))
        .args(["--namespace", "shop", "--service-account", sa])
        .args(["--reload-interval", "200ms", "--detect-timeout", "300ms"])
        .args(extra)
        .env("RUST_LOG", "meshlite_proxy=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let child = Child(cmd.spawn().unwrap());
        pod.wait_proxy_ready();
        child
    }
}

/// An echo app listening on `ip:8080` inside `ns`, for the life of the test.
fn start_app(ns: &Netns, ip: &'static str) {
    let l = ns.run(move || std::net::TcpListener::bind((ip, APP_PORT)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Sends `msg` from inside `ns` to `dst:8080` and returns the echo ("" if refused).
fn call(ns: &Netns, dst: &'static str, msg: String) -> String {
    ns.run(move || {
        let addr: SocketAddr = format!("{dst}:{APP_PORT}").parse().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(msg.as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; msg.len()];
        match s.read_exact(&mut buf) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(_) => String::new(),
        }
    })
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const A_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const B_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

fn write_allow(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("meshlite.io/allow=\"{value}\"\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    sh(&format!("chmod a+r {}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_mesh_on_one_machine() {
    let mut mesh = Mesh::new();
    mesh.start_certd().await;
    tokio::task::block_in_place(|| scenario(&mut mesh));
}

fn scenario(mesh: &mut Mesh) {
    start_app(&mesh.b, B_IP);
    start_app(&mesh.c, C_IP);
    let _pa = mesh.start_proxy(&mesh.a, "a", "client", &[]);
    let mut pb = mesh.start_proxy(&mesh.b, "b", "server", &[]);

    // 1. A -> B is mTLS, and the bridge never sees the payload in clear.
    let pcap = mesh.dir.path().join("bridge.pcap");
    let mut tcpdump = mesh.hub.command("tcpdump");
    tcpdump
        // A's port on the bridge: frames forwarded between bridge ports are not
        // visible on br0 itself.
        .args(["-i", &format!("eh{}x1", std::process::id())])
        .args(["-U", "-n", "-Z", "root", "--immediate-mode", "-w"])
        .arg(&pcap)
        .args(["tcp", "port", &APP_PORT.to_string()]);
    let (child, stderr) = meshlite_tests::start_tcpdump(tcpdump);
    let mut capture = Child(child);
    for i in 0..3 {
        let msg = format!("{MARKER}-{i}");
        assert_eq!(call(&mesh.a, B_IP, msg.clone()), msg, "A -> B");
    }
    // tcpdump writes each packet as it sees it (-U); give it time under load.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).map_or(0, |m| m.len()) < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(capture.0.id() as i32, libc::SIGINT) };
    let _ = capture.0.wait();
    let tcpdump_said = stderr.join().unwrap();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        bytes.len() > 1000,
        "the capture saw the traffic ({} bytes); tcpdump: {tcpdump_said}",
        bytes.len()
    );
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the payload crossed the bridge in plaintext"
    );
    assert!(
        bytes.windows(3).any(|w| w == [0x17, 0x03, 0x03]),
        "no TLS application-data records on the bridge"
    );
    let ma = mesh.a.admin_get("/metrics");
    let mb = mesh.b.admin_get("/metrics");
    assert!(
        metric(
            &ma,
            "meshlite_mtls_connections_total",
            &[&format!("peer_identity=\"{B_ID}\"")]
        ) >= 3.0,
        "A saw B:\n{ma}"
    );
    assert!(
        metric(
            &mb,
            "meshlite_mtls_connections_total",
            &[&format!("peer_identity=\"{A_ID}\"")]
        ) >= 3.0,
        "B saw A:\n{mb}"
    );

    // 2. C (unmeshed) -> B works in permissive mode.
    assert_eq!(call(&mesh.c, B_IP, "from C".into()), "from C");
    // 3. A -> C works: the outbound side falls back for an unmeshed destination.
    assert_eq!(call(&mesh.a, C_IP, "to C".into()), "to C");
    let ma = mesh.a.admin_get("/metrics");
    assert_eq!(
        metric(
            &ma,
            "meshlite_plaintext_connections_total",
            &["direction=\"outbound\"", "reason=\"not_meshed\""]
        ),
        1.0,
        "{ma}"
    );

    // 4. B in strict mode with an allow list that excludes A.
    let annotations = mesh.dir.path().join("b-annotations");
    write_allow(&annotations, "ns/shop/sa/nobody");
    drop(pb);
    pb = mesh.start_proxy(
        &mesh.b,
        "b",
        "server",
        &[
            "--mode",
            "strict",
            "--annotations-file",
            annotations.to_str().unwrap(),
        ],
    );
    assert_eq!(
        call(&mesh.c, B_IP, "from C".into()),
        "",
        "strict mode refuses plaintext"
    );
    assert_eq!(
        call(&mesh.a, B_IP, "from A".into()),
        "",
        "the allow list refuses A"
    );
    let mb = mesh.b.admin_get("/metrics");
    assert_eq!(
        metric(&mb, "meshlite_policy_denials_total", &[]),
        1.0,
        "{mb}"
    );
    assert_eq!(
        metric(
            &mb,
            "meshlite_refused_connections_total",
            &["reason=\"strict_mode_plaintext\""]
        ),
        1.0,
        "{mb}"
    );
    // Changing the allow list lets A in, with nothing restarted.
    write_allow(&annotations, "ns/shop/sa/nobody, ns/shop/sa/client");
    eventually("A is allowed after the allow list changed", || {
        call(&mesh.a, B_IP, "from A".into()) == "from A"
    });

    // 5. A long-lived A -> B stream survives certificate rotations on both
    //    sides, and new connections keep working throughout.
    let renewals = |ns: &Netns| {
        metric(
            &ns.admin_get("/metrics"),
            "meshlite_certificate_renewals_total",
            &["result=\"ok\""],
        )
    };
    let (ra, rb) = (renewals(&mesh.a), renewals(&mesh.b));
    let long = long_lived(&mesh.a, 30);
    eventually("both sides renewed twice", || {
        assert_eq!(
            call(&mesh.a, B_IP, "during rotation".into()),
            "during rotation"
        );
        renewals(&mesh.a) >= ra + 2.0 && renewals(&mesh.b) >= rb + 2.0
    });
    assert_eq!(
        long.finish(),
        30,
        "the long-lived stream survived the rotations"
    );

    // 6. certd goes away: established and new connections keep working while
    //    the certificates are valid; certd comes back and nothing breaks.
    let long = long_lived(&mesh.a, 10);
    mesh.certd.take();
    assert_eq!(call(&mesh.a, B_IP, "certd down".into()), "certd down");
    assert!(
        mesh.a.admin_get("/ready").starts_with("HTTP/1.1 200"),
        "still ready with a valid certificate"
    );
    let rt = tokio::runtime::Handle::current();
    rt.block_on(mesh.start_certd());
    assert_eq!(call(&mesh.a, B_IP, "certd back".into()), "certd back");
    assert_eq!(
        long.finish(),
        10,
        "the long-lived stream kept going throughout"
    );
    drop(pb);
}

/// A connection from `ns` to B that sends a message every 300 ms, `ticks`
/// times, across whatever the test does meanwhile; it counts the echoes.
struct LongLived(std::thread::JoinHandle<usize>);

fn long_lived(ns: &Netns, ticks: usize) -> LongLived {
    LongLived(ns.spawn(move || {
        let addr: SocketAddr = format!("{B_IP}:{APP_PORT}").parse().unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 5];
        let mut echoed = 0;
        for _ in 0..ticks {
            if s.write_all(b"tick!").is_err() || s.read_exact(&mut buf).is_err() {
                break;
            }
            echoed += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        echoed
    }))
}

impl LongLived {
    fn finish(self) -> usize {
        self.0.join().unwrap()
    }
}
