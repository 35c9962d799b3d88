//! `meshlite-proxy init` in real network namespaces, with both iptables backends.
//!
//! Needs root, `ip`, `setpriv`, `bash` and the nft and legacy iptables tools; it
//! panics with the reason when any is missing rather than skipping, because a
//! skipped test here would hide a broken redirect.
//!
//! Sockets are put into a namespace by creating them on a thread that has
//! joined it with `setns(CLONE_NEWNET)`; the socket stays in that namespace
//! whichever thread uses it later.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshlite-proxy");

/// Panics unless this process is root and every tool the tests drive exists.
fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "init_netns tests must run as root (they create network namespaces and iptables rules)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in [
        "ip",
        "setpriv",
        "bash",
        "iptables-nft-restore",
        "iptables-nft-save",
        "iptables-legacy-restore",
        "iptables-legacy-save",
        "ip6tables-nft-restore",
        "ip6tables-legacy-restore",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
        "iptables-legacy",
    ] {
        let found = std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        assert!(
            found,
            "init_netns tests need `{tool}` in PATH (install iproute2, util-linux and iptables)"
        );
    }
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    check(out, &format!("{program} {}", args.join(" ")))
}

/// A named network namespace, deleted on drop (also when a test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mlinit-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: a valid namespace fd; CLONE_NEWNET only moves this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn init(&self, args: &[&str]) {
        let mut all = vec![BIN, "init"];
        all.extend_from_slice(args);
        check(
            self.exec(&all),
            &format!("meshlite-proxy init in {}", self.name),
        );
    }

    /// Our rules as `save` prints them, per family.
    fn rules(&self, backend: &str) -> (String, String) {
        let save = |p: &str| {
            let out = check(self.exec(&[&format!("{p}-{backend}-save"), "-t", "nat"]), p);
            out.lines()
                .filter(|l| l.contains("MESHLITE"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        (save("iptables"), save("ip6tables"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn listen(addr: &str) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    l
}

/// Accepts within 3 s, or None.
fn accept(l: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                return Some(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
}

fn pending(l: &TcpListener) -> bool {
    !matches!(l.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn read_all(mut s: TcpStream) -> String {
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

fn orig_dst(s: &TcpStream) -> SocketAddr {
    socket2::SockRef::from(s)
        .original_dst_v4()
        .unwrap()
        .as_socket()
        .unwrap()
}

/// A pod namespace with local addresses 10.99.0.1 (redirected) and 10.99.1.1 (in a skipped CIDR).
fn pod_ns() -> Netns {
    let ns = Netns::new();
    // A veth pair inside the namespace stands in for the pod's eth0 (the
    // dummy driver is not always available).
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d1", "up"]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "d0"]);
    ns.ip(&["addr", "add", "10.99.1.1/24", "dev", "d0"]);
    ns.ip(&["link", "set", "d0", "up"]);
    ns
}

const SKIPS: [&str; 6] = [
    "--skip-outbound-ports",
    "5432",
    "--skip-outbound-cidrs",
    "10.99.1.0/24,fd00:99::/64",
    "--skip-inbound-ports",
    "9000",
];

fn outbound_is_redirected_except_proxy_uid_and_skips(backend: &str) {
    require_root_and_tools();
    let ns = pod_ns();
    let mut args = vec!["--iptables-backend", backend];
    args.extend_from_slice(&SKIPS);
    ns.init(&args);

    let name = ns.name.clone();
    ns.run(move || {
        let proxy = listen("127.0.0.1:15001");
        let app = listen("10.99.0.1:8080");
        let skipped_port = listen("10.99.0.1:5432");
        let skipped_cidr = listen("10.99.1.1:8080");
        let local = listen("127.0.0.1:8081");

        // An app connection lands on the proxy, which can read where it was going.
        let mut c = TcpStream::connect("10.99.0.1:8080").unwrap();
        c.write_all(b"hello").unwrap();
        drop(c);
        let got = accept(&proxy).expect("app connection redirected to 15001");
        assert_eq!(orig_dst(&got), "10.99.0.1:8080".parse().unwrap());
        assert_eq!(read_all(got), "hello");
        assert!(
            !pending(&app),
            "redirected connection must not reach the app directly"
        );

        // Skipped port, skipped CIDR and loopback go straight through.
        for (dst, listener) in [
            ("10.99.0.1:5432", &skipped_port),
            ("10.99.1.1:8080", &skipped_cidr),
            ("127.0.0.1:8081", &local),
        ] {
            let _c = TcpStream::connect(dst).unwrap();
            assert!(accept(listener).is_some(), "{dst} should not be redirected");
            assert!(!pending(&proxy), "{dst} must not reach the proxy");
        }

        // The proxy's own UID reaches the real destination.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "setpriv",
                "--reuid",
                "2102",
                "--regid",
                "2102",
                "--clear-groups",
            ])
            .args([
                "bash",
                "-c",
                "exec 3<>/dev/tcp/10.99.0.1/8080 && printf uid2102 >&3",
            ])
            .output()
            .unwrap();
        check(out, "connect as uid 2102");
        let got = accept(&app).expect("uid 2102 reaches 10.99.0.1:8080 itself");
        assert_eq!(read_all(got), "uid2102");
        assert!(!pending(&proxy), "uid 2102 must not be redirected");
    });
}

fn ipv6_outbound_is_redirected_except_skipped_cidrs(backend: &str) {
    require_root_and_tools();
    let ns = pod_ns();
    // nodad: usable at once, without duplicate address detection's delay.
    ns.ip(&["addr", "add", "fd00:98::1/64", "dev", "d0", "nodad"]);
    ns.ip(&["addr", "add", "fd00:99::1/64", "dev", "d0", "nodad"]);
    let mut args = vec!["--iptables-backend", backend, "--ipv6", "on"];
    args.extend_from_slice(&SKIPS);
    ns.init(&args);
    ns.run(|| {
        let proxy = listen("[::1]:15001");
        let skipped = listen("[fd00:99::1]:8080");
        let _c = TcpStream::connect("[fd00:98::1]:8080").unwrap();
        let got = accept(&proxy).expect("IPv6 app connection redirected to [::1]:15001");
        let dst = socket2::SockRef::from(&got)
            .original_dst_v6()
            .unwrap()
            .as_socket()
            .unwrap();
        assert_eq!(dst, "[fd00:98::1]:8080".parse().unwrap());
        let _c = TcpStream::connect("[fd00:99::1]:8080").unwrap();
        assert!(
            accept(&skipped).is_some(),
            "skipped IPv6 CIDR should not be redirected"
        );
        assert!(!pending(&proxy));
    });
}

fn inbound_is_redirected_except_admin_and_skipped_ports(backend: &str) {
    require_root_and_tools();
    let pod = Netns::new();
    let peer = Netns::new();
    let (a, b) = (
        format!("va{}", &pod.name[7..]),
        format!("vb{}", &pod.name[7..]),
    );
    sh(
        "ip",
        &[
            "link", "add", &a, "netns", &pod.name, "type", "veth", "peer", "name", &b, "netns",
            &peer.name,
        ],
    );
    pod.ip(&["addr", "add", "10.98.0.1/24", "dev", &a]);
    pod.ip(&["link", "set", &a, "up"]);
    peer.ip(&["addr", "add", "10.98.0.2/24", "dev", &b]);
    peer.ip(&["link", "set", &b, "up"]);
    let mut args = vec!["--iptables-backend", backend];
    args.extend_from_slice(&SKIPS);
    pod.init(&args);

    let (inbound, admin, skipped) = pod.run(|| {
        (
            listen("0.0.0.0:15006"),
            listen("10.98.0.1:15020"),
            listen("10.98.0.1:9000"),
        )
    });
    let app = pod.run(|| listen("10.98.0.1:8080"));
    peer.run(|| {
        TcpStream::connect("10.98.0.1:8080")
            .unwrap()
            .write_all(b"in")
            .unwrap()
    });
    let got = accept(&inbound).expect("inbound connection redirected to 15006");
    assert_eq!(orig_dst(&got), "10.98.0.1:8080".parse().unwrap());
    assert_eq!(read_all(got), "in");
    assert!(!pending(&app));

    for (port, listener) in [(15020, &admin), (9000, &skipped)] {
        let _c = peer.run(move || TcpStream::connect(("10.98.0.1", port)).unwrap());
        assert!(
            accept(listener).is_some(),
            "port {port} should not be redirected"
        );
        assert!(
            !pending(&inbound),
            "port {port} must not reach the inbound listener"
        );
    }
}

fn running_twice_leaves_one_set_of_rules(backend: &str) {
    require_root_and_tools();
    let ns = pod_ns();
    let mut args = vec!["--iptables-backend", backend, "--ipv6", "on"];
    args.extend_from_slice(&SKIPS);
    ns.init(&args);
    let first = ns.rules(backend);
    ns.init(&args);
    let second = ns.rules(backend);
    assert_eq!(first, second);
    for text in [&first.0, &first.1] {
        assert_eq!(text.matches("-j MESHLITE_OUTPUT").count(), 1, "{text}");
        assert_eq!(text.matches("-j MESHLITE_INBOUND").count(), 1, "{text}");
        assert!(text.contains("--uid-owner 2102 -j RETURN"), "{text}");
    }
    assert!(first.0.contains("-d 10.99.1.0/24 -j RETURN"), "{}", first.0);
    assert!(first.1.contains("-d fd00:99::/64 -j RETURN"), "{}", first.1);
    assert!(first.1.contains("-d ::1/128 -j RETURN"), "{}", first.1);
}

#[test]
fn nft_outbound_is_redirected_except_proxy_uid_and_skips() {
    outbound_is_redirected_except_proxy_uid_and_skips("nft");
}

#[test]
fn legacy_outbound_is_redirected_except_proxy_uid_and_skips() {
    outbound_is_redirected_except_proxy_uid_and_skips("legacy");
}

#[test]
fn nft_ipv6_outbound_is_redirected_except_skipped_cidrs() {
    ipv6_outbound_is_redirected_except_skipped_cidrs("nft");
}

#[test]
fn legacy_ipv6_outbound_is_redirected_except_skipped_cidrs() {
    ipv6_outbound_is_redirected_except_skipped_cidrs("legacy");
}

#[test]
fn nft_inbound_is_redirected_except_admin_and_skipped_ports() {
    inbound_is_redirected_except_admin_and_skipped_ports("nft");
}

#[test]
fn legacy_inbound_is_redirected_except_admin_and_skipped_ports() {
    inbound_is_redirected_except_admin_and_skipped_ports("legacy");
}

#[test]
fn nft_running_twice_leaves_one_set_of_rules() {
    running_twice_leaves_one_set_of_rules("nft");
}

#[test]
fn legacy_running_twice_leaves_one_set_of_rules() {
    running_twice_leaves_one_set_of_rules("legacy");
}

#[test]
fn auto_backend_follows_the_backend_that_already_has_rules() {
    require_root_and_tools();
    let ns = pod_ns();
    // Someone (say, a CNI plugin) already uses legacy iptables in this pod.
    check(
        ns.exec(&[
            "iptables-legacy",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "RETURN",
        ]),
        "seed legacy rule",
    );
    ns.init(&["--iptables-backend", "auto"]);
    assert!(ns.rules("legacy").0.contains("MESHLITE_OUTPUT"));
    assert_eq!(
        ns.rules("nft").0,
        "",
        "nothing may land in the other backend"
    );
}

#[test]
fn dry_run_prints_rules_and_changes_nothing() {
    require_root_and_tools();
    let ns = pod_ns();
    let out = check(
        ns.exec(&[BIN, "init", "--dry-run", "--ipv6", "on"]),
        "dry run",
    );
    assert!(
        out.contains("-A MESHLITE_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
        "{out}"
    );
    assert!(
        out.contains("-A MESHLITE_OUTPUT -d ::1/128 -j RETURN"),
        "{out}"
    );
    assert_eq!(ns.rules("nft"), (String::new(), String::new()));
    assert_eq!(ns.rules("legacy"), (String::new(), String::new()));
}

#[test]
fn missing_capability_is_reported_clearly() {
    require_root_and_tools();
    let ns = pod_ns();
    // Root without CAP_NET_ADMIN, as in a pod whose securityContext lacks it.
    let out = ns.exec(&[
        "setpriv",
        "--bounding-set",
        "-net_admin",
        "--inh-caps",
        "-all",
        BIN,
        "init",
        "--iptables-backend",
        "nft",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NET_ADMIN"), "{err}");
}
