//! Network namespaces for tests that need real iptables and `SO_ORIGINAL_DST`.
//!
//! Each namespace is named uniquely per test process and deleted on drop, even
//! when the test panics. Code runs inside a namespace in two ways: a child
//! process under `ip netns exec`, or a thread that joins the namespace with
//! `setns(2)`, so that sockets it creates live there.
//!
//! These tests need root. They panic with a clear message when they are not
//! root or a tool is missing; they never skip.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the process is root and every tool in `tools` is on PATH; the
/// error names what is missing. For callers that report errors rather than
/// panic (the client-address benchmark); tests use [`require_root_and`].
pub fn check_root_and(tools: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err("needs root (network namespaces and iptables)".into());
    }
    for tool in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("needs `{tool}` on PATH"));
        }
    }
    Ok(())
}

/// Panics unless the process is root and every tool in `tools` is on PATH.
pub fn require_root_and(tools: &[&str]) {
    if let Err(e) = check_root_and(tools) {
        panic!("this test {e}; CI runs it as root, and .ci/run installs the tools");
    }
}

/// Runs a command and panics with its output if it fails.
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("spawning `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `ml<tag><pid><seq>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "ml{tag}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &str) -> Output {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    /// Spawns `f` on a thread in this namespace and returns its handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name);
            f()
        })
    }
}

/// Joins the calling thread to the namespace named `name`, for good: sockets
/// it creates from then on live there (for a runtime's `on_thread_start`).
pub fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Field `name` (with its colon, e.g. `"Uid:"`, `"CapEff:"`) of
/// `/proc/PID/status`, trimmed: how the netns tests and the client-address
/// benchmark check the user and capabilities a proxy ended up with.
pub fn proc_status_field(pid: u32, name: &str) -> Result<String, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {name} in {path}"))
}

/// Connects two namespaces with a veth pair named `eth0` in both, addressed
/// `a_addr` and `b_addr` (CIDR notation, IPv4 or IPv6, one or more each).
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let (va, vb) = (
        format!("va{}x{n}", std::process::id()),
        format!("vb{}x{n}", std::process::id()),
    );
    sh(&format!("ip link add {va} type veth peer name {vb}"));
    sh(&format!("ip link set {va} netns {}", a.name));
    sh(&format!("ip link set {vb} netns {}", b.name));
    for (ns, dev, addrs) in [(a, &va, a_addrs), (b, &vb, b_addrs)] {
        ns.exec(&format!("ip link set {dev} name eth0"));
        for addr in addrs {
            // nodad: IPv6 addresses are usable at once, without duplicate detection.
            let extra = if addr.contains(':') { " nodad" } else { "" };
            ns.exec(&format!("ip addr add {addr} dev eth0{extra}"));
        }
        ns.exec("ip link set eth0 up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Netns {
    /// GETs a path from the proxy admin port inside this namespace; the whole
    /// HTTP response, or "" if nothing answers.
    pub fn admin_get(&self, path: &'static str) -> String {
        use std::io::{Read, Write};
        self.run(move || {
            let mut s =
                std::net::TcpStream::connect(("127.0.0.1", meshlite_contract::ADMIN_PORT)).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap_or_default()
    }

    /// Waits (up to 30 s) until the proxy in this namespace reports ready.
    pub fn wait_proxy_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.admin_get("/ready").starts_with("HTTP/1.1 200") {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy in {} never became ready",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Writes `id`'s certificate, key and the bundle of `ca` into `dir`, readable
/// by the proxy UID (test-only permissions).
pub fn write_creds(ca: &super::TestCa, dir: &std::path::Path, id: &str) {
    std::fs::create_dir_all(dir).expect("creating the credentials directory");
    ca.write_files(dir, id).expect("writing test credentials");
    sh(&format!("chmod -R a+rX {}", dir.display()));
}

/// The proxy's PEM credential flags for the credentials in `creds` (see
/// [`write_creds`]).
pub fn creds_args(creds: &std::path::Path) -> Vec<String> {
    [
        ("--cert", "cert.pem"),
        ("--key", "key.pem"),
        ("--trust-bundle", "bundle.pem"),
    ]
    .into_iter()
    .flat_map(|(flag, file)| [flag.to_string(), creds.join(file).display().to_string()])
    .collect()
}

/// `setpriv <privs> bin run` in `ns`, with PEM credentials from `creds`, the
/// admin port on 15020, and `extra` flags; stdout discarded, stderr inherited.
fn setpriv_run(
    ns: &Netns,
    privs: &[&str],
    bin: &str,
    creds: &std::path::Path,
    extra: &[&str],
) -> Command {
    let mut cmd = ns.command("setpriv");
    cmd.args(privs)
        .args([bin, "run", "--admin-listen", "0.0.0.0:15020"])
        .args(creds_args(creds))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    cmd
}

/// `bin run` in `ns` as the proxy UID (see [`setpriv_run`]).
pub fn proxy_command(ns: &Netns, bin: &str, creds: &std::path::Path, extra: &[&str]) -> Command {
    let uid = meshlite_contract::PROXY_UID;
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    setpriv_run(ns, &[&reuid, &regid, "--clear-groups"], bin, creds, extra)
}

/// `bin run` in `ns` as the injector starts it with client address
/// preservation on: root, bounding set NET_RAW + SETUID + SETGID, no
/// inheritable capabilities, no_new_privs (the proxy then switches itself to
/// the proxy UID). Otherwise as [`proxy_command`].
pub fn container_root_command(
    ns: &Netns,
    bin: &str,
    creds: &std::path::Path,
    extra: &[&str],
) -> Command {
    let privs = [
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all,+net_raw,+setuid,+setgid",
    ];
    setpriv_run(ns, &privs, bin, creds, extra)
}

/// Runs the proxy binary `bin` in `ns` as the proxy UID ([`proxy_command`]),
/// logging at debug.
pub fn spawn_proxy(ns: &Netns, bin: &str, creds: &std::path::Path, extra: &[&str]) -> Child {
    let mut cmd = proxy_command(ns, bin, creds, extra);
    cmd.env("RUST_LOG", "meshlite_proxy=debug");
    Child(cmd.spawn().expect("spawning the proxy"))
}
